"""Hub and partition properties through the SDK's $management READ.

args: {"conn": {...}, "client": "producer"|"consumer" (default producer),
       "expect_error": bool (report the first error instead of failing)}
result: {"hub": {name, created_at (ms), partition_ids}, "partitions": {id: {...}},
         "types": {id: {field: python type}}} or {"raised": {...}, "elapsed_s": ...}
"""
import time

from _common import consumer, describe_error, main, phase, plain, producer


def run(args):
    conn = args["conn"]
    kind = args.get("client", "producer")
    t0 = time.monotonic()
    client = producer(conn) if kind == "producer" else consumer(conn)
    try:
        try:
            phase("get_eventhub_properties")
            hub = client.get_eventhub_properties()
            parts, types = {}, {}
            for pid in hub["partition_ids"]:
                phase(f"get_partition_properties {pid}")
                props = client.get_partition_properties(pid)
                types[pid] = {k: type(v).__name__ for k, v in props.items()}
                parts[pid] = plain(props)
        except Exception as exc:  # noqa: BLE001
            if not args.get("expect_error"):
                raise
            return {"raised": describe_error(exc), "elapsed_s": round(time.monotonic() - t0, 3)}
    finally:
        client.close()
    return {
        "hub": plain(hub),
        "hub_types": {k: type(v).__name__ for k, v in hub.items()},
        "partitions": parts,
        "types": types,
        "elapsed_s": round(time.monotonic() - t0, 3),
    }


if __name__ == "__main__":
    main(run)
