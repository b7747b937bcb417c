"""Epoch (owner-level) receivers on one partition.

Steps:
 1. reader A (owner_level=1) attaches;
 2. reader B (owner_level=2) attaches: A must be disconnected (link stolen);
 3. one event is sent to the partition: B must get it, A must not;
 4. reader C (owner_level=1, lower than B) tries to attach: C must get an error;
 5. reader D (no owner level) tries to attach while B holds the partition: D must get an error.

args: {"conn": listen conn, "send_conn": send conn, "partition_id": "0", "body": str,
       "step_timeout_s": float}
result: {"a": summary, "b": summary, "c": summary, "d": summary, "sent": [...]}
"""
import time

from _common import PartitionReader, main, phase, run_sends, wait_until


def run(args):
    conn = args["conn"]
    pid = str(args.get("partition_id", "0"))
    step = float(args.get("step_timeout_s", 15))
    latest = {"kind": "latest"}
    a = PartitionReader(conn, pid, latest, owner_level=1, name="A")
    b = PartitionReader(conn, pid, latest, owner_level=2, name="B")
    c = PartitionReader(conn, pid, latest, owner_level=1, name="C")
    d = PartitionReader(conn, pid, latest, owner_level=None, name="D")
    sent = []
    try:
        phase("epoch: A attaches (owner_level 1)")
        a.start()
        wait_until(lambda: a.attached.is_set() or a.errors, step)
        phase("epoch: B attaches (owner_level 2)")
        b.start()
        wait_until(lambda: b.attached.is_set() or b.errors, step)
        phase("epoch: wait for A's error")
        wait_until(lambda: bool(a.errors), step)
        phase("epoch: send one event")
        sent = run_sends(args["send_conn"], [{"how": "batch", "partition_id": pid,
                                              "events": [{"body": args.get("body", "epoch-event")}]}])
        wait_until(lambda: len(b.events) >= 1, step)
        phase("epoch: C attaches (owner_level 1, lower)")
        c.start()
        wait_until(lambda: bool(c.errors), step)
        phase("epoch: D attaches (no owner level)")
        d.start()
        wait_until(lambda: bool(d.errors), step)
        time.sleep(0.5)
    finally:
        phase("epoch: close")
        for r in (a, b, c, d):
            r.close()
    return {"a": a.summary(), "b": b.summary(), "c": c.summary(), "d": d.summary(), "sent": sent}


if __name__ == "__main__":
    main(run)
