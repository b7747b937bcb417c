"""Receive with EventHubConsumerClient, one receive(partition_id=...) thread per partition.

args: {"conn": {...}, "consumer_group": "$Default",
       "partitions": ["0", ...] | null (= all, via get_partition_ids),
       "position": {"kind": "earliest"|"latest"|"offset"|"sequence"|"time", "value", "inclusive"},
       "owner_level"?: int, "prefetch"?: int, "compact"?: bool,
       "expect": int (stop once this many events arrived in total),
       "max_seconds": float (give up waiting for `expect` after this long),
       "settle_seconds": float (keep listening after `expect` to catch extras/duplicates),
       "stop_on_error": bool (stop as soon as any reader reports an error or a failed open),
       "idle_seconds"?: float (with expect null: stop once no event arrived for this long),
       "attach_timeout_s": float,
       "then_send"?: {"conn": {...}, "sends": [...]}   (sent once every reader is attached)}
result: {"partitions": [{"partition_id", "attached", "attach_s", "events": [...], "errors": [...]}],
         "total": n, "sent": [...], "receive_s": seconds from all-attached to last event}
"""
import threading
import time

from _common import PartitionReader, main, partition_ids, phase, run_sends, wait_until


def run(args):
    conn = args["conn"]
    pids = args.get("partitions") or partition_ids(conn)
    expect = args.get("expect")
    total = {"n": 0}
    lock = threading.Lock()

    def count(_):
        with lock:
            total["n"] += 1

    readers = [
        PartitionReader(
            conn,
            pid,
            args.get("position", {"kind": "earliest"}),
            consumer_group=args.get("consumer_group", "$Default"),
            owner_level=args.get("owner_level"),
            prefetch=int(args.get("prefetch", 300)),
            compact=bool(args.get("compact", False)),
            sink=count,
        )
        for pid in pids
    ]
    stop_on_error = bool(args.get("stop_on_error", False))

    def any_error():
        return any(r.errors or r.open_errors for r in readers)

    sent = []
    t_attached = None
    try:
        phase("receive: start readers")
        for r in readers:
            r.start()
        phase("receive: wait for attach")
        wait_until(
            lambda: all(r.attached.is_set() for r in readers) or (stop_on_error and any_error()),
            float(args.get("attach_timeout_s", 30)),
        )
        t_attached = time.monotonic()
        all_attached = all(r.attached.is_set() for r in readers)
        if args.get("then_send") and all_attached:
            phase("receive: then_send")
            ts = args["then_send"]
            sent = run_sends(ts.get("conn", conn), ts["sends"])
        if all_attached and not (stop_on_error and any_error()):
            phase(f"receive: wait for {expect} events")
            if expect is not None:
                wait_until(
                    lambda: total["n"] >= expect or (stop_on_error and any_error()),
                    float(args.get("max_seconds", 30)),
                )
            elif args.get("idle_seconds"):
                idle = float(args["idle_seconds"])
                seen = {"n": -1, "at": time.monotonic()}

                def idle_for():
                    if total["n"] != seen["n"]:
                        seen["n"], seen["at"] = total["n"], time.monotonic()
                    return time.monotonic() - seen["at"] >= idle

                wait_until(idle_for, float(args.get("max_seconds", 30)))
            settle = float(args.get("settle_seconds", 1.0))
            if settle > 0:
                time.sleep(settle)
    finally:
        phase("receive: close readers")
        for r in readers:
            r.close()
    summaries = [r.summary() for r in readers]
    lasts = [r.last_event_at for r in readers if r.last_event_at is not None]
    firsts = [r.first_event_at for r in readers if r.first_event_at is not None]
    return {
        "partitions": summaries,
        "total": sum(len(s["events"]) for s in summaries),
        "sent": sent,
        "receive_s": round(max(lasts) - t_attached, 3) if lasts and t_attached else None,
        "first_to_last_s": round(max(lasts) - min(firsts), 3) if lasts else None,
    }


if __name__ == "__main__":
    main(run)
