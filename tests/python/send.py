"""Send events with EventHubProducerClient.

args: {"conn": {...},
       "sends": [{"how": "batch"|"list"|"event", "partition_id"?, "partition_key"?,
                  "events": [{"body", "properties", "content_type", "correlation_id", "message_id"}]}],
       "generate"?: {"count", "start", "size", "prefix", "batch_size", "routing": "mixed"|"partition_id"|
                     "key"|"none", "partitions": n}}
result: {"results": [{"ok", "error"?, "elapsed_ms"}], "generated"?: {"sent", "batches", "failures", "elapsed_s"}}
Per-operation errors are reported, never raised: the caller asserts on them.
"""
import time

from _common import generated_events, main, phase, producer, run_sends, send_op


def generate(conn, gen):
    batch_size = int(gen.get("batch_size", 100))
    routing = gen.get("routing", "none")
    partitions = int(gen.get("partitions", 4))
    t0 = time.monotonic()
    client = producer(conn)
    sent, batches, failures = 0, 0, []
    try:
        pending = []

        def flush():
            nonlocal sent, batches
            n = batches
            op = {"how": "batch", "events": [{"body": b} for _, b in pending]}
            mode = routing if routing != "mixed" else ("partition_id", "key", "none")[n % 3]
            if mode == "partition_id":
                op["partition_id"] = str(n % partitions)
            elif mode == "key":
                op["partition_key"] = f"key-{n}"
            phase(f"generate: batch {n} ({len(pending)} events, {mode})")
            res = send_op(client, op)
            batches += 1
            if res["ok"]:
                sent += len(pending)
            else:
                failures.append({"batch": n, "first": pending[0][1][:20], "error": res["error"]})
            pending.clear()

        for i, body in generated_events(gen):
            pending.append((i, body))
            if len(pending) >= batch_size:
                flush()
        if pending:
            flush()
    finally:
        client.close()
    return {"sent": sent, "batches": batches, "failures": failures,
            "elapsed_s": round(time.monotonic() - t0, 3)}


def run(args):
    conn = args["conn"]
    out = {}
    if args.get("sends"):
        out["results"] = run_sends(conn, args["sends"])
    else:
        out["results"] = []
    if args.get("generate"):
        out["generated"] = generate(conn, args["generate"])
    return out


if __name__ == "__main__":
    main(run)
