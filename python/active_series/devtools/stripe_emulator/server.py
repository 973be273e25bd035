"""The emulator's HTTP server: request plumbing, API keys, the rate limit, injected faults
and idempotency around the route tables (:mod:`.routes`)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import select
import socket
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from .common import HTML_ERROR_PAGE, Answer, ApiError, Json, new_id, rate_limit_error
from .params import check_expand_depth, expand_paths, parse_form, unexpanded
from .routes import route_control, route_stripe
from .state import EmulatorState
from .streams import STREAM_PATH

SESSION_PATH = "/v2/billing/meter_event_session"
V1_EVENTS_PATH = "/v1/billing/meter_events"
NO_API_KEY = (
    "You did not provide an API key. You need to provide your API key in the Authorization "
    "header, using Bearer auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY'). See "
    "https://stripe.com/docs/api#authentication for details, or we can help at "
    "https://support.stripe.com/."
)


def api_key_of(authorization: str) -> str:
    """The API key of an ``Authorization`` header, as Stripe takes it: HTTP Basic auth with
    the key as the user name and no password (``curl -u sk_test_...:``), or a Bearer token.
    Anything else is no key."""
    scheme, _, credentials = authorization.strip().partition(" ")
    credentials = credentials.strip()
    if scheme.lower() == "bearer":
        return credentials
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(credentials, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return ""
        return decoded.partition(":")[0]
    return ""


def masked_key(key: str) -> str:
    """A key as Stripe's error quotes it: its prefix and last four characters."""
    prefix = "_".join(key.split("_")[:2]) + "_" if key.count("_") >= 2 else ""
    rest = key[len(prefix) :]
    if len(rest) <= 4:
        return prefix + "*" * len(rest)
    return prefix + "*" * (len(rest) - 4) + rest[-4:]


class StripeEmulatorServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    # socketserver's default listen backlog is 5: a worker opening more connections than that
    # at once (its posting threads) saw some refused and retried by TCP a second later
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], state: EmulatorState, quiet: bool = False):
        self.state = state
        self.quiet = quiet
        super().__init__(address, _Handler)

    @property
    def base_url(self) -> str:
        host, port = self.server_address[:2]
        host_text = host.decode() if isinstance(host, bytes) else str(host)
        return f"http://{host_text}:{port}"


class _ClientGone(Exception):
    """The client closed its connection while we were delaying the answer."""


class _Handler(BaseHTTPRequestHandler):
    server: StripeEmulatorServer
    # keep-alive, as Stripe: a client's connection serves its next request (every answer has a
    # Content-Length; a fault that breaks the connection closes it)
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out as two writes: no 40 ms ACK wait
    server_version = "active-series-stripe-emulator"
    _status: int | str | None = None  # the answer's status (or how it failed), for the call record
    # ends a meter-event call's record and in-flight count; run as its answer starts to go out
    # (the client may send its next call as soon as it has the answer)
    _on_reply: Callable[[], None] | None = None

    # ---- plumbing ---------------------------------------------------------------------------

    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        self._handle("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._handle("POST")

    def do_DELETE(self) -> None:  # noqa: N802
        self._handle("DELETE")

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        return

    def _log(
        self, method: str, path: str, status: int | str, started: float, note: str = ""
    ) -> None:
        if self.server.quiet:
            return
        ms = (time.monotonic() - started) * 1000
        extra = f" [{note}]" if note else ""
        sys.stderr.write(f"stripe-emulator {method} {path} {status} {ms:.1f}ms{extra}\n")

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _replying(self) -> None:
        hook, self._on_reply = self._on_reply, None
        if hook is not None:
            hook()

    def _send(self, answer: Answer) -> None:
        self._status = answer.status
        self._replying()
        data = json.dumps(answer.body).encode()
        self.send_response(answer.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Request-Id", new_id("req"))
        for name, value in answer.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _send_raw(
        self, status: int, content_type: str, data: bytes, length: int | None = None
    ) -> None:
        """An answer with an arbitrary body (faults): ``length`` may promise more than sent."""
        self._status = status
        self._replying()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data) if length is None else length))
        self.send_header("Request-Id", new_id("req"))
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    def _drop(self) -> None:
        self._status = "dropped"
        self._replying()
        self.close_connection = True
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _client_gone(self) -> bool:
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            if not readable:
                return False
            return self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def _sleep(self, seconds: float) -> None:
        """Wait, but stop as soon as the client hangs up (the socket turns readable at EOF)."""
        deadline = time.monotonic() + seconds
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            try:
                readable, _, _ = select.select([self.connection], [], [], left)
            except (OSError, ValueError):
                raise _ClientGone from None
            if readable and self._client_gone():
                raise _ClientGone
            if readable:  # unexpected extra bytes from the client: keep waiting, politely
                time.sleep(min(0.01, left))

    def _handle(self, method: str) -> None:
        started = time.monotonic()
        self._status = None
        self._on_reply = None
        url = urllib.parse.urlsplit(self.path)
        path = url.path
        try:
            raw = self._read_body()
            if path.startswith("/_emulator"):
                answer = self._control(method, path, url.query, raw)
                self._send(answer)
                self._log(method, path, answer.status, started)
                return
            self._stripe(method, path, url.query, raw, started)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
            self._status = "client-gone"
            self._log(method, path, "client-gone", started)

    # ---- Stripe API -------------------------------------------------------------------------

    def _stripe(self, method: str, path: str, query: str, raw: bytes, started: float) -> None:
        state = self.server.state
        with state.lock:
            state.request_counts[path] = state.request_counts.get(path, 0) + 1
        state.count_version(self.headers.get("Stripe-Version"))
        pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
        if method == "POST" and path.startswith("/v2/"):
            try:
                params = _json_object(raw)
            except ValueError as exc:
                err = ApiError(400, f"The request body is not a JSON object: {exc}")
                self._send(Answer(400, err.body()))
                self._log(method, path, 400, started)
                return
        else:
            if method == "POST":
                pairs += urllib.parse.parse_qsl(
                    raw.decode("utf-8", "replace"), keep_blank_values=True
                )
            params = parse_form(pairs)
        # meter-event calls: per-customer concurrency (v1) and the call record (v1 and v2)
        customers: list[str] = []
        if method == "POST" and path == V1_EVENTS_PATH:
            customers = [state.customer_of_event(params)]
        elif method == "POST" and path == STREAM_PATH:
            customers = state.customers_of_stream(params)
        call = None
        if method == "POST" and path in (V1_EVENTS_PATH, STREAM_PATH):
            events = params.get("events") if path == STREAM_PATH else [params]
            count = len(events) if isinstance(events, list) else 0
            call = state.begin_record(method, path, customers, count)
        alone = True
        for customer in customers:
            alone = state.begin_call(customer, self, lambda: not self._client_gone()) and alone

        def done() -> None:
            for customer in customers:
                state.end_call(customer, self)
            if call is not None:
                state.finish_record(call, self._status)

        self._on_reply = done
        try:
            if path == V1_EVENTS_PATH and not alone and state.enforce_customer_concurrency:
                answer = Answer(
                    429,
                    ApiError(
                        429,
                        "Too many concurrent requests for this customer.",
                        code="rate_limit",
                    ).body(),
                )
                self._send(answer)
                self._log(method, path, 429, started, "concurrent")
                return
            self._stripe_inner(method, path, params, raw, started)
        finally:
            self._replying()  # no answer went out (abandoned, session refused early, ...)

    def _stripe_inner(
        self, method: str, path: str, params: Json, raw: bytes, started: float
    ) -> None:
        state = self.server.state
        api_key = api_key_of(self.headers.get("Authorization", ""))
        scope = api_key
        if path == STREAM_PATH:
            # the stream takes a session's token, never an API key
            try:
                scope = state.session_scope(api_key)
            except ApiError as expired:
                self._send(Answer(expired.status, expired.body(), expired.headers()))
                self._log(method, path, expired.status, started, "session")
                return
        elif not api_key:
            self._send(Answer(401, ApiError(401, NO_API_KEY).body()))
            self._log(method, path, 401, started)
            return
        elif state.is_session_token(api_key) or (
            state.api_key is not None and api_key != state.api_key
        ):
            err = ApiError(401, f"Invalid API Key provided: {masked_key(api_key)}")
            self._send(Answer(401, err.body()))
            self._log(method, path, 401, started)
            return
        if not state.take_token():
            state.count_fault("bucket_429")
            self._send(Answer(429, rate_limit_error().body()))
            self._log(method, path, 429, started, "rate limited")
            return
        fault = state.choose_fault(method, path)
        injected: ApiError | None = None
        if fault is not None:
            state.count_fault(fault.kind)
            if fault.kind == "drop_before":
                self._drop()
                self._log(method, path, "dropped", started, "fault drop_before")
                return
            if fault.kind == "error":
                # Stripe failed while executing: that answer is the request's, stored for its
                # idempotency key like any other (_execute)
                injected = ApiError(
                    fault.status,
                    "An unknown error occurred (injected by the emulator).",
                    type_="api_error",
                )
            if fault.kind == "rate_limit":
                self._send(Answer(429, rate_limit_error().body()))
                self._log(method, path, 429, started, "fault rate_limit")
                return
            if fault.kind == "html":
                # a proxy's error page, not executed; status from the rule (random: 502)
                self._send_raw(fault.status, "text/html; charset=utf-8", HTML_ERROR_PAGE)
                self._log(method, path, fault.status, started, "fault html")
                return
            if fault.kind == "delay":
                try:
                    self._sleep(fault.seconds)
                except _ClientGone:
                    self._status = "abandoned"
                    state.count_fault("abandoned")
                    self._log(method, path, "abandoned", started, "client left during delay")
                    return
        answer = self._execute(method, path, params, raw, scope, injected)
        if fault is not None and fault.kind == "drop_after":
            self._drop()
            self._log(method, path, "dropped", started, f"fault drop_after ({answer.status})")
            return
        if fault is not None and fault.kind in ("truncated_json", "close_mid_response"):
            data = json.dumps(answer.body).encode()
            if fault.kind == "truncated_json":
                # a complete HTTP answer whose JSON body is cut in half
                self._send_raw(answer.status, "application/json", data[: len(data) // 2])
            else:
                # the headers announce the whole body; half of it comes, then the connection closes
                self._send_raw(
                    answer.status, "application/json", data[: len(data) // 2], length=len(data)
                )
                self._drop()
            self._log(method, path, answer.status, started, f"fault {fault.kind}")
            return
        if fault is not None and fault.kind == "delay_after":
            try:
                self._sleep(fault.seconds)
            except _ClientGone:
                self._status = "abandoned"
                self._log(method, path, "abandoned", started, "client left after processing")
                return
        self._send(answer)
        self._log(method, path, answer.status, started, f"fault {fault.kind}" if fault else "")

    def _execute(
        self,
        method: str,
        path: str,
        params: Json,
        raw: bytes,
        scope: str,
        injected: ApiError | None = None,
    ) -> Answer:
        """Run the route (or answer ``injected``, an injected failure of the execution);
        ``scope`` is the API key (for the stream, the one that created the session):
        idempotency keys are the account's.

        Idempotency as Stripe documents it for API v1: the first answer to a key is stored
        once the endpoint has begun executing, successes and 5xx alike, and replayed to every
        later request with that key and the same parameters; a request refused by its
        parameters (4xx) stores nothing. On v2 paths only successes are replayed (Stripe
        carries a failed v2 request out again on a retry).
        """
        state = self.server.state
        try:
            check_expand_depth(expand_paths(params))
        except ApiError as err:
            return Answer(err.status, err.body(), err.headers())
        key = self.headers.get("Idempotency-Key") if method == "POST" else None
        if key:
            fingerprint = hashlib.sha256(f"{method} {path} ".encode() + raw).hexdigest()
            try:
                stored = state.idempotency_begin(scope, key, fingerprint)
            except ApiError as err:
                return Answer(err.status, err.body(), err.headers())
            if stored is not None:
                return Answer(
                    stored["status"],
                    stored["body"],
                    {**stored["headers"], "Idempotent-Replayed": "true"},
                )
        try:
            if injected is not None:
                raise injected
            if method == "POST" and path == SESSION_PATH:
                body = state.create_session(scope)
            else:
                body = route_stripe(state, method, path, params, key)
            answer = Answer(200, unexpanded(body, expand_paths(params)))
        except ApiError as err:
            answer = Answer(err.status, err.body(), err.headers())
        except Exception as exc:  # noqa: BLE001 - an emulator bug must still answer like Stripe
            answer = Answer(
                500, ApiError(500, f"emulator error: {exc!r}", type_="api_error").body()
            )
        if key:
            keep = 200 <= answer.status < 300 or (
                answer.status >= 500 and not path.startswith("/v2/")
            )
            state.idempotency_finish(
                scope,
                key,
                {"status": answer.status, "body": answer.body, "headers": answer.headers}
                if keep
                else None,
            )
        if "Idempotency-Key" in self.headers:
            answer.headers.setdefault("Idempotency-Key", self.headers["Idempotency-Key"])
        return answer

    # ---- control API ------------------------------------------------------------------------

    def _control(self, method: str, path: str, query: str, raw: bytes) -> Answer:
        state = self.server.state
        q = dict(urllib.parse.parse_qsl(query))
        try:
            body = json.loads(raw) if raw.strip() else {}
        except json.JSONDecodeError:
            return Answer(400, {"error": {"message": "control bodies are JSON"}})
        if not isinstance(body, dict):
            return Answer(400, {"error": {"message": "control bodies are JSON objects"}})
        try:
            return Answer(200, route_control(state, method, path, q, body))
        except ApiError as err:
            return Answer(err.status, err.body())
        except (ValueError, TypeError, KeyError) as exc:
            return Answer(400, {"error": {"message": f"bad control request: {exc!r}"}})


def _json_object(raw: bytes) -> Json:
    """A v2 request's JSON body (an object; empty means ``{}``)."""
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(str(exc)) from None
    if not isinstance(body, dict):
        raise ValueError("expected an object")
    return body


def make_server(
    host: str = "127.0.0.1", port: int = 0, *, quiet: bool = False, **opts: Any
) -> StripeEmulatorServer:
    """Create (but do not start) a server; ``opts`` go to :class:`EmulatorState`."""
    return StripeEmulatorServer((host, port), EmulatorState(**opts), quiet=quiet)


def run_in_thread(
    port: int = 0, host: str = "127.0.0.1", *, quiet: bool = True, **opts: Any
) -> tuple[StripeEmulatorServer, str]:
    """Start the emulator on a daemon thread; returns the server and its base URL.

    Stop it with ``server.shutdown(); server.server_close()``.
    """
    server = make_server(host, port, quiet=quiet, **opts)
    thread = threading.Thread(target=server.serve_forever, name="stripe-emulator", daemon=True)
    thread.start()
    return server, server.base_url
