"""Receive-only throughput of the official SDK over every partition (collector_e2e bench).

One EventHubConsumerClient per partition, each in its own thread running receive_batch from
the earliest event; the callback only counts (no decoding, no processing, nothing kept), so
memory stays flat however many events the hub holds.

args: {"conn": {...}, "consumer_group": "$Default", "partitions": ["0", ...] | null (= all),
       "expect": int (stop once this many events arrived in total),
       "max_seconds": float (give up waiting after this long),
       "prefetch"?: int (default 300, the SDK default), "max_batch_size"?: int (default 300)}
result: {"events", "seconds" (start of the readers → last event), "first_to_last_s",
         "milestones": {"10": s, "50": s, "90": s, "100": s} (seconds since start at which
         that share of `expect` had arrived), "per_partition": {pid: n}, "errors": [...],
         "sdk_version", "complete": bool}
"""
import threading
import time

from _common import SDK_VERSION, consumer, describe_error, main, partition_ids, phase

MILESTONES = (10, 50, 90, 100)


def run(args):
    conn = args["conn"]
    group = args.get("consumer_group", "$Default")
    pids = args.get("partitions") or partition_ids(conn)
    expect = int(args["expect"])
    prefetch = int(args.get("prefetch", 300))
    max_batch = int(args.get("max_batch_size", 300))

    counts = {pid: 0 for pid in pids}
    lock = threading.Lock()
    state = {"total": 0, "first": None, "last": None, "next": 0}
    marks = {}
    errors = []
    done = threading.Event()
    clients = {pid: consumer(conn, consumer_group=group) for pid in pids}
    t0 = time.monotonic()

    def on_batch_for(pid):
        def on_batch(_ctx, events):
            n = len(events) if events else 0
            if n == 0:
                return
            now = time.monotonic()
            with lock:
                counts[pid] += n
                state["total"] += n
                if state["first"] is None:
                    state["first"] = now
                state["last"] = now
                total = state["total"]
                while state["next"] < len(MILESTONES) and total * 100 >= MILESTONES[state["next"]] * expect:
                    marks[str(MILESTONES[state["next"]])] = round(now - t0, 3)
                    state["next"] += 1
                if total >= expect:
                    done.set()

        return on_batch

    def on_error(_ctx, err):
        with lock:
            if len(errors) < 20:
                errors.append(describe_error(err))

    def reader(pid):
        try:
            clients[pid].receive_batch(
                on_batch_for(pid),
                partition_id=pid,
                starting_position="-1",
                starting_position_inclusive=False,
                prefetch=prefetch,
                max_batch_size=max_batch,
                max_wait_time=1.0,
                on_error=on_error,
            )
        except Exception as exc:  # noqa: BLE001 - reported in the result
            with lock:
                errors.append(describe_error(exc))

    phase(f"receive_count: {len(pids)} partitions, expecting {expect}")
    threads = [threading.Thread(target=reader, args=(pid,), name=f"p{pid}", daemon=True) for pid in pids]
    for t in threads:
        t.start()
    done.wait(float(args.get("max_seconds", 600)))
    phase("receive_count: close")
    for c in clients.values():
        try:
            c.close()
        except Exception as exc:  # noqa: BLE001
            errors.append(describe_error(exc))
    for t in threads:
        t.join(10)
    with lock:
        total, first, last = state["total"], state["first"], state["last"]
    return {
        "events": total,
        "complete": total >= expect,
        "seconds": None if last is None else round(last - t0, 3),
        "first_to_last_s": None if last is None or first is None else round(last - first, 3),
        "milestones": marks,
        "per_partition": counts,
        "errors": errors,
        "sdk_version": SDK_VERSION,
    }


if __name__ == "__main__":
    main(run)
