"""Throughput of the official SDK against the hub (used by the hub_throughput bench).

args: {"send_conn": {...}, "listen_conn": {...}, "partition_id": "0", "count": int,
       "size": bytes per event, "batch_size": 1 | N}
- into the hub: batch_size 1 sends each event with send_event (plain message); larger sizes
  fill EventDataBatch objects of `batch_size` events (message format 0x80013700).
- out of the hub: receive (batch_size 1, one callback per event) or receive_batch
  (max_batch_size = batch_size) from the sequence number before the send, until `count`
  events arrived.
result: {"send": {"events", "seconds", "eps", "cpu_s"}, "receive": {"events", "seconds", "eps",
         "seconds_incl_connect", "cpu_s"}}; cpu_s is this process's CPU time (all threads) over
the phase, connect and credit waits included for receive.
"""
import threading
import time

from _common import EventData, consumer, main, phase, producer


def run(args):
    send_conn, listen_conn = args["send_conn"], args["listen_conn"]
    pid = str(args.get("partition_id", "0"))
    count = int(args["count"])
    size = int(args.get("size", 1024))
    batch_size = int(args.get("batch_size", 1))
    body = b"x" * size

    client = producer(send_conn)
    try:
        phase("bench: partition properties")
        before = client.get_partition_properties(pid)["last_enqueued_sequence_number"]
        # Warm up the partition sender link (connection + CBS + attach) outside the timing.
        client.send_event(EventData(b"warmup"), partition_id=pid)
        before += 1
        phase(f"bench: send {count} x {size} B, batch {batch_size}")
        t0 = time.monotonic()
        c0 = time.process_time()
        if batch_size == 1:
            for _ in range(count):
                client.send_event(EventData(body), partition_id=pid, timeout=30)
        else:
            left = count
            while left > 0:
                batch = client.create_batch(partition_id=pid)
                for _ in range(min(batch_size, left)):
                    batch.add(EventData(body))
                client.send_batch(batch, timeout=30)
                left -= len(batch)
        send_s = time.monotonic() - t0
        send_cpu = time.process_time() - c0
    finally:
        client.close()

    phase("bench: receive")
    got = {"n": 0, "first": None, "last": None}
    done = threading.Event()

    def on_events(ctx, events):
        if events is None:
            return
        if not isinstance(events, list):
            events = [events]
        if not events:
            return
        now = time.monotonic()
        if got["first"] is None:
            got["first"] = now
        got["n"] += len(events)
        got["last"] = now
        if got["n"] >= count:
            done.set()

    cons = consumer(listen_conn)
    kwargs = dict(partition_id=pid, starting_position=int(before), starting_position_inclusive=False,
                  prefetch=max(300, batch_size), max_wait_time=1.0)
    if batch_size == 1:
        target, kw = cons.receive, kwargs
    else:
        target, kw = cons.receive_batch, dict(kwargs, max_batch_size=batch_size)
    t1 = time.monotonic()
    c1 = time.process_time()
    th = threading.Thread(target=target, args=(on_events,), kwargs=kw, daemon=True)
    th.start()
    done.wait(float(args.get("receive_timeout_s", 120)))
    t2 = time.monotonic()
    recv_cpu = time.process_time() - c1
    cons.close()
    th.join(10)
    recv_s = (got["last"] - got["first"]) if got["first"] is not None and got["n"] > 1 else None
    return {
        "send": {"events": count, "seconds": round(send_s, 3), "eps": round(count / send_s, 1),
                 "cpu_s": round(send_cpu, 3)},
        "receive": {
            "events": got["n"],
            "seconds": None if recv_s is None else round(recv_s, 3),
            "eps": None if not recv_s else round((got["n"] - 1) / recv_s, 1),
            "seconds_incl_connect": round(t2 - t1, 3),
            "cpu_s": round(recv_cpu, 3),
        },
    }


if __name__ == "__main__":
    main(run)
