"""Shared plumbing for the azure-eventhub interop scripts.

Protocol with the Rust runner (tests/src/python.rs):
- arguments arrive as ONE JSON object on stdin (never on the command line: connection
  strings carry keys);
- the script prints exactly ONE JSON line on stdout (the result) and exits 0; anything else
  (SDK logs, tracebacks) goes to stderr;
- an unexpected exception prints {"ok": false, "error": {...}} and exits 1;
- a watchdog ends the script with exit 3 at `_deadline_s`, printing what it was doing.

A connection ("conn") object is one of
  {"mode": "tls", "connection_string": "...", "endpoint": "127.0.0.1:PORT", "ca_pem": "/path/ca.pem"}
  {"mode": "emulator", "connection_string": "...;UseDevelopmentEmulator=true"}
  {"mode": "websocket", "connection_string": "...", "endpoint": "127.0.0.1:PORT", "ca_pem": "...",
   "http_proxy"?: {"proxy_hostname": "127.0.0.1", "proxy_port": N, "username"?, "password"?}}
and, instead of "connection_string", a conn may carry an Entra ID token credential:
  "namespace": "localhost:PORT", "eventhub": "tcpulse",
  "credential": {"kind": "client_secret", "token_url": "http://127.0.0.1:P/<tenant>/oauth2/v2.0/token",
                 "client_id": "...", "client_secret": "..."}
(the clients are then built with fully_qualified_namespace, eventhub_name and
credential=LoopbackClientSecretCredential; see tests/src/entra/).
"""

import base64
import datetime
import json
import os
import socket
import sys
import threading
import time
import traceback

# --- stdout discipline: the result line is the only thing on the real stdout ---------------
_RESULT_OUT = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
sys.stdout = sys.stderr
_RESULT_LOCK = threading.Lock()
_RESULT_WRITTEN = False


def emit(result, code=0):
    """Print the one result line and exit the process with `code`."""
    global _RESULT_WRITTEN
    with _RESULT_LOCK:
        if not _RESULT_WRITTEN:
            _RESULT_WRITTEN = True
            _RESULT_OUT.write(json.dumps(result, default=_json_default, separators=(",", ":")) + "\n")
            _RESULT_OUT.flush()
    sys.stderr.flush()
    os._exit(code)


def _json_default(value):
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return {"base64": base64.b64encode(value).decode("ascii")}
    if isinstance(value, datetime.datetime):
        return to_ms(value)
    return repr(value)


# TCPULSE_PY_LOG=DEBUG|INFO|WARNING: SDK logs on stderr (quoted in the runner's errors).
if os.environ.get("TCPULSE_PY_LOG"):
    import logging

    logging.basicConfig(
        stream=sys.stderr,
        level=getattr(logging, os.environ["TCPULSE_PY_LOG"].upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


# --- the pyamqp TCP_MAXSEG workaround (reference: "Client-side test caveat") --------------
def _patch_socket_options():
    """pyamqp reads every TCP option and writes it back, TCP_MAXSEG included; on some kernels
    setsockopt(TCP_MAXSEG) fails with EINVAL and the SDK reports a ConnectError. Ignore
    failures of individual options instead."""
    from azure.eventhub._pyamqp import _transport as pt

    def _set_socket_options(self, socket_settings):
        tcp_opts = self._get_tcp_socket_defaults(self.sock)
        if socket_settings:
            tcp_opts.update(socket_settings)
        for opt, val in tcp_opts.items():
            try:
                self.sock.setsockopt(pt.SOL_TCP, opt, val)
            except OSError:
                pass

    pt._AbstractTransport._set_socket_options = _set_socket_options


_patch_socket_options()

import azure.eventhub  # noqa: E402  (after the patch on purpose)
from azure.eventhub import (  # noqa: E402
    EventData,
    EventHubConsumerClient,
    EventHubProducerClient,
    TransportType,
)

SDK_VERSION = azure.eventhub.__version__


# --- consumer open observation -------------------------------------------------------------
# EventHubConsumer.receive() swallows exceptions raised while its link opens ("if not
# self.running: return", SDK issue #27137), and each receive() call starts its retry count
# afresh, so a link that attaches and is then detached with an error (e.g. a Send-only key
# on a receiver: amqp:unauthorized-access) is reopened forever without on_error being
# called; only amqp:link:stolen and management errors reliably reach on_error. Wrap _open
# (to learn when the link really attached) and _handle_exception (to record every error the
# consumer raised internally), per reader thread.
_OPEN_HOOKS = {}


def _wrap_consumer_open():
    from azure.eventhub import _consumer

    original = _consumer.EventHubConsumer._open

    def _open(self):
        hooks = _OPEN_HOOKS.get(threading.current_thread().name)
        try:
            result = original(self)
        except Exception as exc:
            if hooks:
                hooks["error"](exc)
            raise
        if hooks and getattr(self, "running", False):
            hooks["opened"]()
        return result

    _consumer.EventHubConsumer._open = _open

    original_handle = _consumer.EventHubConsumer._handle_exception

    def _handle_exception(self, exception, **kwargs):
        # Every exception inside receive() passes here, including the ones it then swallows.
        hooks = _OPEN_HOOKS.get(threading.current_thread().name)
        if hooks:
            hooks["error"](exception)
        return original_handle(self, exception, **kwargs)

    _consumer.EventHubConsumer._handle_exception = _handle_exception


_wrap_consumer_open()

# Small, finite retry and timeouts everywhere: a broken hub must fail a test, never hang it.
CLIENT_KWARGS = {
    "retry_total": 1,
    "retry_backoff_factor": 0.2,
    "retry_backoff_max": 1,
    "auth_timeout": 15,
}


def read_args():
    """The JSON argument object from stdin; arms the watchdog from `_deadline_s`."""
    raw = sys.stdin.read()
    args = json.loads(raw) if raw.strip() else {}
    deadline = args.get("_deadline_s")
    if deadline:
        watchdog(float(deadline))
    return args


_PHASE = {"phase": "start"}


def phase(name):
    """Record what the script is doing, for the watchdog's report."""
    _PHASE["phase"] = name
    print(f"[{time.strftime('%H:%M:%S')}] phase: {name}", file=sys.stderr, flush=True)


def watchdog(seconds):
    def fire():
        emit(
            {
                "ok": False,
                "error": {
                    "type": "ScriptTimeout",
                    "message": f"script deadline of {seconds:.0f}s passed during phase '{_PHASE['phase']}'",
                },
            },
            code=3,
        )

    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    timer.start()


def client_kwargs(conn, extra=None):
    kw = dict(CLIENT_KWARGS)
    mode = conn.get("mode")
    if mode == "tls":
        kw["custom_endpoint_address"] = "sb://" + conn["endpoint"]
        kw["transport_type"] = TransportType.Amqp
        kw["connection_verify"] = conn["ca_pem"]
    elif mode == "websocket":
        # wss://<endpoint>/$servicebus/websocket, subprotocol AMQPWSB10 (pyamqp's).
        kw["custom_endpoint_address"] = "sb://" + conn["endpoint"]
        kw["transport_type"] = TransportType.AmqpOverWebsocket
        kw["connection_verify"] = conn["ca_pem"]
        if conn.get("http_proxy"):
            kw["http_proxy"] = dict(conn["http_proxy"])
    elif mode != "emulator":
        raise ValueError(f"unknown conn mode {mode!r}")
    if extra:
        kw.update(extra)
    return kw


# --- Entra ID token credential --------------------------------------------------------------
CREDENTIAL_CALLS = []


class LoopbackClientSecretCredential:
    """An azure-core TokenCredential (the protocol: get_token(*scopes, **kwargs) ->
    AccessToken(token, expires_on)) doing the client-credentials flow with a client secret
    against the tests' loopback token endpoint, as azure-identity's ClientSecretCredential
    does against login.microsoftonline.com. Records each call's scopes in CREDENTIAL_CALLS
    (reported in the result as "credential_calls")."""

    def __init__(self, spec):
        self._url = spec["token_url"]
        self._client_id = spec["client_id"]
        self._secret = spec["client_secret"]

    def get_token(self, *scopes, **kwargs):
        import urllib.error
        import urllib.parse
        import urllib.request

        from azure.core.credentials import AccessToken
        from azure.core.exceptions import ClientAuthenticationError

        CREDENTIAL_CALLS.append(list(scopes))
        body = urllib.parse.urlencode({
            "grant_type": "client_credentials",
            "client_id": self._client_id,
            "client_secret": self._secret,
            "scope": " ".join(scopes),
        }).encode()
        request = urllib.request.Request(
            self._url, data=body, method="POST",
            headers={"Content-Type": "application/x-www-form-urlencoded"})
        try:
            with urllib.request.urlopen(request, timeout=10) as resp:
                data = json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            raise ClientAuthenticationError(
                message=f"token endpoint answered {exc.code}: {exc.read().decode(errors='replace')}")
        return AccessToken(data["access_token"], int(time.time()) + int(data["expires_in"]))

    def close(self):
        pass


def _credential_args(conn):
    spec = conn["credential"]
    if spec.get("kind") != "client_secret":
        raise ValueError(f"unknown credential kind {spec.get('kind')!r}")
    return {
        "fully_qualified_namespace": conn["namespace"],
        "eventhub_name": conn["eventhub"],
        "credential": LoopbackClientSecretCredential(spec),
    }


def producer(conn, **extra):
    if conn.get("credential"):
        return EventHubProducerClient(**_credential_args(conn), **client_kwargs(conn, extra))
    return EventHubProducerClient.from_connection_string(
        conn["connection_string"], **client_kwargs(conn, extra)
    )


def consumer(conn, consumer_group="$Default", **extra):
    if conn.get("credential"):
        return EventHubConsumerClient(
            consumer_group=consumer_group, **_credential_args(conn), **client_kwargs(conn, extra)
        )
    return EventHubConsumerClient.from_connection_string(
        conn["connection_string"], consumer_group=consumer_group, **client_kwargs(conn, extra)
    )


# --- values ------------------------------------------------------------------------------
def to_ms(dt):
    if dt is None:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=datetime.timezone.utc)
    return int(round(dt.timestamp() * 1000))


def from_ms(ms):
    return datetime.datetime.fromtimestamp(ms / 1000.0, tz=datetime.timezone.utc)


def plain(value):
    """bytes → str (utf-8) recursively, so results are JSON with the types the SDK gave."""
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return {"base64": base64.b64encode(value).decode("ascii")}
    if isinstance(value, dict):
        return {plain(k) if not isinstance(k, str) else k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, datetime.datetime):
        return to_ms(value)
    return value


def make_event(spec):
    """EventData from {"body": str | {"base64": ...} | {"size": n, "fill": "x"}, "properties": {...},
    "content_type", "correlation_id", "message_id"}."""
    body = spec.get("body", "")
    if isinstance(body, dict) and "base64" in body:
        body = base64.b64decode(body["base64"])
    elif isinstance(body, dict) and "size" in body:
        body = (body.get("fill", "x") * body["size"])[: body["size"]].encode()
    event = EventData(body)
    if spec.get("properties"):
        event.properties = dict(spec["properties"])
    for attr in ("content_type", "correlation_id", "message_id"):
        if spec.get(attr) is not None:
            setattr(event, attr, spec[attr])
    return event


def describe_event(partition_id, event, compact=False):
    if compact:
        return {
            "p": partition_id,
            "seq": event.sequence_number,
            "off": event.offset,
            "body": event.body_as_str(encoding="utf-8"),
        }
    raw = b"".join(event.body) if not isinstance(event.body, (bytes, str)) else event.body
    try:
        body = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    except UnicodeDecodeError:
        body = {"base64": base64.b64encode(raw).decode("ascii")}
    sys_props = event.system_properties or {}
    return {
        "partition_id": partition_id,
        "body": body,
        "sequence_number": event.sequence_number,
        "offset": event.offset,
        "offset_type": type(event.offset).__name__,
        "enqueued_time_ms": to_ms(event.enqueued_time),
        "partition_key": plain(event.partition_key),
        "properties": plain(event.properties or {}),
        "property_types": {plain(k): type(v).__name__ for k, v in (event.properties or {}).items()},
        "content_type": plain(event.content_type),
        "correlation_id": plain(event.correlation_id),
        "message_id": plain(event.message_id),
        "system_property_keys": sorted(str(plain(k)) for k in sys_props.keys()),
    }


def describe_error(exc):
    """Type, class chain, message and the AMQP condition (if any) of an SDK exception."""
    condition = None
    seen = set()
    stack = [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        cond = getattr(e, "condition", None)
        if cond is not None and condition is None:
            cond = getattr(cond, "value", cond)
            condition = plain(cond)
        for arg in getattr(e, "args", ()):
            if isinstance(arg, BaseException):
                stack.append(arg)
        stack.append(getattr(e, "__cause__", None))
        stack.append(getattr(e, "__context__", None))
    return {
        "type": type(exc).__name__,
        "classes": [c.__name__ for c in type(exc).__mro__],
        "message": str(exc)[:2000],
        "error": getattr(exc, "error", None),
        "condition": condition,
    }


def starting_position(spec):
    """(starting_position, inclusive) from {"kind": "earliest"|"latest"|"offset"|"sequence"|"time",
    "value": ..., "inclusive": bool}."""
    kind = spec.get("kind", "earliest")
    inclusive = bool(spec.get("inclusive", False))
    if kind == "earliest":
        return "-1", inclusive
    if kind == "latest":
        return "@latest", inclusive
    if kind == "offset":
        return str(spec["value"]), inclusive
    if kind == "sequence":
        return int(spec["value"]), inclusive
    if kind == "time":
        return from_ms(int(spec["value"])), inclusive
    raise ValueError(f"unknown starting position kind {kind!r}")


# --- sending -----------------------------------------------------------------------------
def generated_events(gen):
    """Bodies "<prefix>-<i:06d>" padded with '.' to `size` bytes, for i in [start, start+count)."""
    prefix = gen.get("prefix", "ev")
    size = int(gen.get("size", 0))
    start = int(gen.get("start", 0))
    for i in range(start, start + int(gen["count"])):
        body = f"{prefix}-{i:06d}"
        if len(body) < size:
            body = body + "." * (size - len(body))
        yield i, body


def send_op(client, op):
    """One send operation; returns {"ok": bool, "error"?: ..., "elapsed_ms": ...}.

    op = {"how": "batch"|"list"|"event", "partition_id"?, "partition_key"?, "events": [spec...]}
    - batch: create_batch(partition_id/partition_key) + add + send_batch (format 0x80013700)
    - list:  send_batch([...], partition_id/partition_key)
    - event: send_event(e, partition_id/partition_key) per event (plain message, format 0)
    """
    t0 = time.monotonic()
    how = op.get("how", "batch")
    routing = {}
    if op.get("partition_id") is not None:
        routing["partition_id"] = str(op["partition_id"])
    if op.get("partition_key") is not None:
        routing["partition_key"] = op["partition_key"]
    timeout = op.get("timeout_s", 30)
    try:
        events = [make_event(e) for e in op.get("events", [])]
        if how == "batch":
            batch = client.create_batch(**routing)
            for e in events:
                batch.add(e)
            client.send_batch(batch, timeout=timeout)
        elif how == "list":
            client.send_batch(events, timeout=timeout, **routing)
        elif how == "event":
            for e in events:
                client.send_event(e, timeout=timeout, **routing)
        else:
            raise ValueError(f"unknown send how {how!r}")
        if op.get("pause_ms"):
            time.sleep(op["pause_ms"] / 1000.0)
        return {"ok": True, "elapsed_ms": int((time.monotonic() - t0) * 1000)}
    except Exception as exc:  # noqa: BLE001 - the caller asserts on it
        traceback.print_exc(file=sys.stderr)
        return {"ok": False, "error": describe_error(exc), "elapsed_ms": int((time.monotonic() - t0) * 1000)}


def run_sends(conn, ops):
    phase("send: open producer")
    results = []
    client = producer(conn)
    try:
        for n, op in enumerate(ops):
            phase(f"send op {n} ({op.get('how', 'batch')})")
            results.append(send_op(client, op))
    finally:
        phase("send: close producer")
        client.close()
    return results


# --- receiving ---------------------------------------------------------------------------
class PartitionReader:
    """One EventHubConsumerClient.receive(partition_id=...) running in a thread.

    `attached` is set once the consumer link is open (see _wrap_consumer_open) or the first
    event arrived. `errors` are what on_error got; `open_errors` what the SDK raised (and
    swallowed) while opening the link."""

    def __init__(self, conn, partition_id, position, *, consumer_group="$Default",
                 owner_level=None, prefetch=300, compact=False, sink=None, name=None):
        self.conn = conn
        self.partition_id = str(partition_id)
        self.position = position
        self.consumer_group = consumer_group
        self.owner_level = owner_level
        self.prefetch = prefetch
        self.compact = compact
        self.name = name or f"p{partition_id}"
        self.events = []
        self.errors = []
        self.open_errors = []
        self.attached = threading.Event()
        self.attached_at = None
        self.first_event_at = None
        self.last_event_at = None
        self.sink = sink  # optional callable(event_dict) for shared counting
        self._lock = threading.Lock()
        self._client = consumer(conn, consumer_group=consumer_group)
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        _OPEN_HOOKS[self.name] = {"opened": self._mark_attached, "error": self._on_open_error}

    def start(self):
        self.started_at = time.monotonic()
        self._thread.start()
        return self

    def _mark_attached(self):
        if not self.attached.is_set():
            self.attached_at = time.monotonic()
            self.attached.set()

    def _on_open_error(self, exc):
        print(f"[{self.name}] link open failed: {exc!r}", file=sys.stderr, flush=True)
        with self._lock:
            if len(self.open_errors) < 20:
                self.open_errors.append(describe_error(exc))

    def _on_event(self, ctx, event):
        if event is None:
            return
        self._mark_attached()
        now = time.monotonic()
        if self.first_event_at is None:
            self.first_event_at = now
        self.last_event_at = now
        d = describe_event(self.partition_id, event, compact=self.compact)
        with self._lock:
            self.events.append(d)
        if self.sink:
            self.sink(d)

    def _on_error(self, ctx, err):
        print(f"[{self.name}] on_error: {err!r}", file=sys.stderr, flush=True)
        with self._lock:
            self.errors.append(describe_error(err))

    def _run(self):
        pos, inclusive = starting_position(self.position)
        kwargs = dict(
            partition_id=self.partition_id,
            starting_position=pos,
            starting_position_inclusive=inclusive,
            max_wait_time=0.3,
            prefetch=self.prefetch,
            on_error=self._on_error,
        )
        if self.owner_level is not None:
            kwargs["owner_level"] = int(self.owner_level)
        try:
            self._client.receive(self._on_event, **kwargs)
        except Exception as exc:  # noqa: BLE001
            with self._lock:
                self.errors.append(describe_error(exc))

    def close(self, join_s=10):
        try:
            self._client.close()
        except Exception as exc:  # noqa: BLE001
            print(f"[{self.name}] close failed: {exc!r}", file=sys.stderr)
        self._thread.join(join_s)

    def summary(self):
        with self._lock:
            return {
                "partition_id": self.partition_id,
                "attached": self.attached.is_set(),
                "attach_s": None if self.attached_at is None else round(self.attached_at - self.started_at, 3),
                "events": list(self.events),
                "errors": list(self.errors),
                "open_errors": list(self.open_errors),
            }


def wait_until(pred, timeout_s, step=0.05):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step)
    return pred()


def partition_ids(conn):
    phase("get_partition_ids")
    client = consumer(conn)
    try:
        return [str(p) for p in client.get_partition_ids()]
    finally:
        client.close()


def main(fn):
    """Run `fn(args) -> dict` and emit its result; unexpected exceptions exit 1 with details."""
    try:
        args = read_args()
        result = fn(args)
        result.setdefault("ok", True)
        if CREDENTIAL_CALLS:
            result["credential_calls"] = list(CREDENTIAL_CALLS)
        emit(result, 0)
    except SystemExit:
        raise
    except BaseException as exc:  # noqa: BLE001 - report everything to the runner
        traceback.print_exc(file=sys.stderr)
        err = describe_error(exc)
        err["phase"] = _PHASE["phase"]
        emit({"ok": False, "error": err}, 1)


__all__ = [
    "EventData",
    "PartitionReader",
    "partition_ids",
    "run_sends",
    "generated_events",
    "wait_until",
    "SDK_VERSION",
    "consumer",
    "describe_error",
    "describe_event",
    "emit",
    "main",
    "make_event",
    "phase",
    "plain",
    "producer",
    "socket",
    "starting_position",
    "to_ms",
]
