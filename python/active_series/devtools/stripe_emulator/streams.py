"""Meter event streams, v2: sessions (/v2/billing/meter_event_session), batches of events
validated asynchronously (/v2/billing/meter_event_stream); the error reports of the events a
meter refused after their request was answered (v1 and v2), as thin events (/v2/core/events);
and the record of every meter-event call (v1 and v2)."""

from __future__ import annotations

import secrets
import time
import urllib.parse
import uuid
from datetime import UTC, datetime

from .common import MAX_IDENTIFIER_LENGTH, ApiError, Json, new_id
from .meters import Meters
from .params import invalid, missing

STREAM_PATH = "/v2/billing/meter_event_stream"
DEFAULT_SESSION_TTL = 15 * 60.0
MAX_STREAM_EVENTS = 100
ERROR_REPORT = "v1.billing.meter.error_report_triggered"
NO_METER = "v1.billing.meter.no_meter_found"
#: sample errors an error report lists per error type (Stripe does not publish its number)
DEFAULT_REPORT_SAMPLES = 5
_TOKEN_PREFIX = "ek_test_"


def iso(ts: float) -> str:
    """Stripe's v2 timestamps: ISO 8601 in UTC with milliseconds."""
    moment = datetime.fromtimestamp(ts, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def parse_iso(text: str) -> float:
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def session_expired() -> ApiError:
    return ApiError(
        401,
        "The meter event session's authentication token has expired or is not valid. "
        "Create a new meter event session.",
        type_="temporary_session_expired",
        code="billing_meter_event_session_expired",
    )


class Streams(Meters):
    def reset(self) -> None:
        with self.lock:
            super().reset()
            self.session_ttl = DEFAULT_SESSION_TTL
            self.error_report_delay = 0.0
            self.error_report_window = 0.0
            self.error_report_samples = DEFAULT_REPORT_SAMPLES
            # per meter (None: events of no meter), the report window still open
            self.report_windows: dict[str | None, Json] = {}
            self.sessions: dict[str, Json] = {}
            self.thin_events: list[Json] = []
            self.calls: list[Json] = []

    # ---- sessions ------------------------------------------------------------------------------

    def create_session(self, api_key: str) -> Json:
        with self.lock:
            now = self.now()
            session: Json = {
                "id": new_id("mtrses"),
                "object": "v2.billing.meter_event_session",
                "authentication_token": _TOKEN_PREFIX + secrets.token_urlsafe(24),
                "created": iso(now),
                "expires_at": iso(now + self.session_ttl),
                "livemode": False,
            }
            self.sessions[session["authentication_token"]] = {
                "expires": now + self.session_ttl,
                "api_key": api_key,
                "session": session,
            }
            return session

    def is_session_token(self, token: str) -> bool:
        return token.startswith(_TOKEN_PREFIX)

    def session_scope(self, token: str) -> str:
        """The API key that created the session of ``token`` (the stream's idempotency scope);
        Stripe's ``temporary_session_expired`` error for an expired or unknown token."""
        with self.lock:
            entry = self.sessions.get(token)
            if entry is None or self.now() >= entry["expires"]:
                raise session_expired()
            return str(entry["api_key"])

    def configure_streams(self, body: Json) -> Json:
        with self.lock:
            if body.get("session_ttl") is not None:
                self.session_ttl = float(body["session_ttl"])
            if body.get("error_report_delay") is not None:
                self.error_report_delay = float(body["error_report_delay"])
            if body.get("error_report_window") is not None:
                self.error_report_window = float(body["error_report_window"])
            if body.get("error_report_samples") is not None:
                samples = int(body["error_report_samples"])
                if samples < 1:
                    raise ValueError("error_report_samples must be at least 1")
                self.error_report_samples = samples
            now = self.now()
            return {
                "session_ttl": self.session_ttl,
                "error_report_delay": self.error_report_delay,
                "error_report_window": self.error_report_window,
                "error_report_samples": self.error_report_samples,
                "sessions": len(self.sessions),
                "live_sessions": sum(1 for s in self.sessions.values() if s["expires"] > now),
            }

    # ---- the stream ----------------------------------------------------------------------------

    def stream_events_of(self, p: Json) -> list[Json]:
        """The request's events, checked as Stripe checks them synchronously (their shape)."""
        events = p.get("events")
        if events is None or events == []:
            raise missing("events")
        if not isinstance(events, list):
            raise invalid("events", "events must be an array of meter events.")
        if len(events) > MAX_STREAM_EVENTS:
            raise invalid(
                "events",
                f"A request holds at most {MAX_STREAM_EVENTS} events (got {len(events)}).",
                "array_too_long",
            )
        out = []
        for i, event in enumerate(events):
            where = f"events[{i}]"
            if not isinstance(event, dict):
                raise invalid(where, f"{where} must be an object.")
            name = event.get("event_name")
            if not isinstance(name, str) or not name:
                raise missing(f"{where}.event_name")
            payload = event.get("payload")
            if not isinstance(payload, dict) or not payload:
                raise missing(f"{where}.payload")
            if not all(isinstance(v, str) for v in payload.values()):
                raise invalid(f"{where}.payload", "payload values must be strings.")
            identifier = event.get("identifier")
            if identifier is not None and (
                not isinstance(identifier, str) or len(identifier) > MAX_IDENTIFIER_LENGTH
            ):
                raise invalid(
                    f"{where}.identifier",
                    f"identifier must be a string of at most {MAX_IDENTIFIER_LENGTH} characters",
                    "parameter_invalid_string_too_long",
                )
            stamp = event.get("timestamp")
            timestamp = None
            if stamp is not None:
                try:
                    timestamp = int(parse_iso(str(stamp)))
                except ValueError:
                    raise invalid(
                        f"{where}.timestamp", f"{where}.timestamp must be an ISO 8601 date-time."
                    ) from None
            out.append(
                {
                    "event_name": name,
                    "payload": payload,
                    "identifier": identifier,
                    "timestamp": timestamp,
                }
            )
        return out

    def stream_meter_events(self, p: Json, idempotency_key: str | None) -> Json:
        """Accept a batch: record the valid events now, note the others for their meter's
        error report (:meth:`refuse_later`), under the request's idempotency key.

        A duplicate identifier (within the emulator's life) is ignored, not reported: the
        error codes Stripe reports asynchronously have none for it.
        """
        events = self.stream_events_of(p)
        with self.lock:
            now = self.now()
            request_key = idempotency_key or str(uuid.uuid4())
            for ev in events:
                identifier = ev["identifier"] or new_id("mtrev")
                if identifier in self.identifiers:
                    continue
                try:
                    meter, customer, value, timestamp = self.check_meter_event(
                        ev["event_name"], ev["payload"], ev["timestamp"], now
                    )
                except ApiError as err:
                    self.refuse_later(ev["event_name"], err, request_key, now, last=False)
                    continue
                self.record_meter_event(
                    meter,
                    ev["event_name"],
                    identifier,
                    customer,
                    value,
                    timestamp,
                    ev["payload"],
                    idempotency_key,
                )
            self.close_report_windows(now, request_end=True)
        return {}

    # ---- error reports -------------------------------------------------------------------------

    def refuse_later(
        self,
        event_name: str,
        err: ApiError,
        request_key: str | None,
        now: float,
        *,
        last: bool = True,
    ) -> None:
        """Count a refused event in its meter's open report window (opened now if none is),
        keeping up to ``error_report_samples`` samples per error type, each naming the
        request's idempotency key (a generated one for a request without a key). With a
        window of 0 the report holds the request's refusals: it closes with the request's
        ``last`` refusal."""
        with self.lock:
            meter = self._meter_for_event(event_name)
            meter_id = meter["id"] if meter is not None else None
            window = self.report_windows.get(meter_id)
            if window is None:
                window = {"start": now, "count": 0, "types": {}}
                self.report_windows[meter_id] = window
            window["count"] += 1
            kind = window["types"].setdefault(err.code or "invalid", {"count": 0, "samples": []})
            kind["count"] += 1
            if len(kind["samples"]) < self.error_report_samples:
                kind["samples"].append(
                    {
                        "error_message": err.message,
                        "request": {"identifier": request_key or str(uuid.uuid4())},
                    }
                )
            if last:
                self.close_report_windows(now, request_end=True)

    def close_report_windows(self, now: float, *, request_end: bool = False) -> None:
        """Turn every report window that is over into its thin event: one ending
        ``error_report_window`` seconds after it opened, or, with a window of 0, at the end of
        the request that opened it. The event is created at the window's end and visible
        ``error_report_delay`` seconds later."""
        with self.lock:
            for meter_id, window in list(self.report_windows.items()):
                if self.error_report_window > 0:
                    end = window["start"] + self.error_report_window
                    if end > now:
                        continue
                elif request_end:
                    end = now
                else:
                    continue
                del self.report_windows[meter_id]
                self._report(meter_id, window, end)

    def _report(self, meter_id: str | None, window: Json, end: float) -> None:
        """The thin event of one closed report window."""
        count = window["count"]
        event: Json = {
            "id": new_id("evt"),
            "object": "v2.core.event",
            "type": ERROR_REPORT if meter_id else NO_METER,
            "created": iso(end),
            "livemode": False,
            "context": None,
            "reason": None,
            "data": {
                "developer_message_summary": f"{count} meter events were not recorded.",
                "reason": {
                    "error_count": count,
                    "error_types": [
                        {
                            "code": code,
                            "error_count": kind["count"],
                            "sample_errors": kind["samples"],
                        }
                        for code, kind in window["types"].items()
                    ],
                },
                "validation_start": iso(window["start"]),
                "validation_end": iso(end),
            },
        }
        if meter_id:
            event["related_object"] = {
                "id": meter_id,
                "type": "billing.meter",
                "url": f"/v1/billing/meters/{meter_id}",
            }
        self.thin_events.append({"visible_at": end + self.error_report_delay, "event": event})

    # ---- thin events: /v2/core/events ----------------------------------------------------------

    def _visible_events(self) -> list[Json]:
        with self.lock:
            now = self.now()
            self.close_report_windows(now)
            return [e["event"] for e in reversed(self.thin_events) if e["visible_at"] <= now]

    def list_thin_events(self, p: Json, path: str) -> Json:
        """Newest first; filters ``object_id``, ``types``, ``created[gt|gte|lt|lte]``; pages
        of ``limit`` (default 20) linked by ``next_page_url``."""
        object_id = p.get("object_id")
        types = p.get("types")
        if isinstance(types, str):
            types = [types]
        created = p.get("created") if isinstance(p.get("created"), dict) else {}
        assert isinstance(created, dict)
        bounds = {op: parse_iso(str(v)) for op, v in created.items() if v}
        limit = int(p.get("limit") or 20)
        if not 1 <= limit <= 100:
            raise invalid("limit", "limit must be between 1 and 100.")
        page = int(p.get("page") or 0)

        def wanted(ev: Json) -> bool:
            if object_id and (ev.get("related_object") or {}).get("id") != object_id:
                return False
            if types and ev["type"] not in types:
                return False
            at = parse_iso(ev["created"])
            return (
                at > bounds.get("gt", float("-inf"))
                and at >= bounds.get("gte", float("-inf"))
                and at < bounds.get("lt", float("inf"))
                and at <= bounds.get("lte", float("inf"))
            )

        chosen = [e for e in self._visible_events() if wanted(e)]
        data = chosen[page * limit : (page + 1) * limit]
        next_url = None
        if len(chosen) > (page + 1) * limit:
            query = [(k, v) for k, v in (("object_id", object_id), ("limit", limit)) if v]
            query += [(f"types[{i}]", t) for i, t in enumerate(types or [])]
            query += [(f"created[{op}]", str(v)) for op, v in created.items() if v]
            query.append(("page", page + 1))
            next_url = f"{path}?{urllib.parse.urlencode(query)}"
        return {"data": data, "next_page_url": next_url, "previous_page_url": None}

    def get_thin_event(self, event_id: str) -> Json:
        for event in self._visible_events():
            if event["id"] == event_id:
                return event
        raise ApiError(404, f"No such event: '{event_id}'", code="resource_missing", param="id")

    # ---- the record of meter-event calls -------------------------------------------------------

    def customers_of_stream(self, p: Json) -> list[str]:
        """The customers a v2 stream request carries (its events' payloads, by their meters)."""
        events = p.get("events")
        found: set[str] = set()
        for event in events if isinstance(events, list) else []:
            if isinstance(event, dict):
                found.add(self.customer_of_event(event))
        return sorted(found)

    def begin_record(self, method: str, path: str, customers: list[str], events: int) -> Json:
        with self.lock:
            call: Json = {
                "seq": len(self.calls) + 1,
                "method": method,
                "path": path,
                "customers": customers,
                "events": events,
                "start": time.monotonic(),
                "finish": None,
                "status": None,
            }
            self.calls.append(call)
            return call

    def finish_record(self, call: Json, status: int | str | None) -> None:
        with self.lock:
            call["finish"] = time.monotonic()
            call["status"] = status

    def calls_json(self, customer: str | None) -> Json:
        with self.lock:
            data = [dict(c) for c in self.calls if customer is None or customer in c["customers"]]
        return {"object": "list", "data": data}
