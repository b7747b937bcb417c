"""The official SDK's event processor with its Blob checkpoint store, sharing a consumer group
and container with tcpulse collectors (tests/tests/collector_ha.rs).

An EventHubConsumerClient with azure-eventhub-checkpointstoreblob's BlobCheckpointStore
receives every partition it can claim, checkpoints after every event, and stops after
`run_seconds` (close() releases its ownerships). Before it stops it lists the ownership and
checkpoint blobs through the store, as the SDK parses them (tcpulse's included).

args: {"conn": {...}, "blob_connection_string": str, "container": str,
       "consumer_group": "$Default", "run_seconds": float,
       "load_balancing_interval": float, "ownership_expiration": float}
result: {"owner_id", "owned_at_end": [pid], "owned_ever": [pid],
         "first_seq": {pid: n}, "last_seq": {pid: n}, "events": {pid: n},
         "ownership": {pid: owner_id}, "checkpoints": {pid: {"sequence_number", "offset"}} (listed
         before the close), "checkpoints_after_close": {pid: sequence_number},
         "namespace", "eventhub", "sdk_version"}
"""
import threading
import time

from azure.eventhub.extensions.checkpointstoreblob import BlobCheckpointStore

from _common import SDK_VERSION, client_kwargs, main, phase
from azure.eventhub import EventHubConsumerClient


def run(args):
    conn = args["conn"]
    group = args.get("consumer_group", "$Default")
    store = BlobCheckpointStore.from_connection_string(args["blob_connection_string"], args["container"])
    client = EventHubConsumerClient.from_connection_string(
        conn["connection_string"],
        consumer_group=group,
        checkpoint_store=store,
        load_balancing_interval=float(args.get("load_balancing_interval", 1.0)),
        partition_ownership_expiration_interval=float(args.get("ownership_expiration", 6.0)),
        **client_kwargs(conn),
    )
    lock = threading.Lock()
    owned, owned_ever = set(), set()
    first, last, events = {}, {}, {}

    def on_init(ctx):
        with lock:
            owned.add(ctx.partition_id)
            owned_ever.add(ctx.partition_id)

    def on_close(ctx, _reason):
        with lock:
            owned.discard(ctx.partition_id)

    def on_event(ctx, event):
        if event is None:
            return
        pid = ctx.partition_id
        with lock:
            first.setdefault(pid, event.sequence_number)
            last[pid] = event.sequence_number
            events[pid] = events.get(pid, 0) + 1
        ctx.update_checkpoint(event)

    phase("processor: receive")
    worker = threading.Thread(
        target=client.receive,
        kwargs={
            "on_event": on_event,
            "on_partition_initialize": on_init,
            "on_partition_close": on_close,
            "starting_position": "-1",
        },
        daemon=True,
    )
    worker.start()
    time.sleep(float(args["run_seconds"]))
    with lock:
        owned_at_end = sorted(owned)
    namespace = client._address.hostname  # what the processor names its blobs with
    eventhub = client.eventhub_name
    phase("processor: list the store")
    ownership = {o["partition_id"]: o["owner_id"] for o in store.list_ownership(namespace, eventhub, group)}
    checkpoints = {
        c["partition_id"]: {"sequence_number": c["sequence_number"], "offset": c["offset"]}
        for c in store.list_checkpoints(namespace, eventhub, group)
    }
    processors = list(getattr(client, "_event_processors", {}).values())
    owner_id = processors[0]._id if processors else None
    phase("processor: close")
    client.close()
    worker.join(20)
    after_close = {
        c["partition_id"]: c["sequence_number"] for c in store.list_checkpoints(namespace, eventhub, group)
    }
    with lock:
        return {
            "owner_id": owner_id,
            "owned_at_end": owned_at_end,
            "owned_ever": sorted(owned_ever),
            "first_seq": first,
            "last_seq": last,
            "events": events,
            "ownership": ownership,
            "checkpoints": checkpoints,
            "checkpoints_after_close": after_close,
            "namespace": namespace,
            "eventhub": eventhub,
            "sdk_version": SDK_VERSION,
        }


if __name__ == "__main__":
    main(run)
