"""Meter event streams, v2: sessions (/v2/billing/meter_event_session), batches of events
validated asynchronously (/v2/billing/meter_event_stream), the thin events reporting the refused
ones (/v2/core/events), and the record of every meter-event call (v1 and v2)."""

from __future__ import annotations

import secrets
import time
import urllib.parse
from datetime import UTC, datetime

from .common import MAX_IDENTIFIER_LENGTH, ApiError, Json, new_id
from .meters import Meters
from .params import invalid, missing

STREAM_PATH = "/v2/billing/meter_event_stream"
DEFAULT_SESSION_TTL = 15 * 60.0
MAX_STREAM_EVENTS = 100
ERROR_REPORT = "v1.billing.meter.error_report_triggered"
NO_METER = "v1.billing.meter.no_meter_found"
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
            now = self.now()
            return {
                "session_ttl": self.session_ttl,
                "error_report_delay": self.error_report_delay,
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
        """Accept a batch: record the valid events now, report the others in a thin event.

        A duplicate identifier (within the emulator's life) is ignored, not reported: the
        error codes Stripe reports asynchronously have none for it.
        """
        events = self.stream_events_of(p)
        with self.lock:
            now = self.now()
            refused: dict[str | None, list[tuple[str, str, str]]] = {}
            for ev in events:
                identifier = ev["identifier"] or new_id("mtrev")
                if identifier in self.identifiers:
                    continue
                try:
                    meter, customer, value, timestamp = self.check_meter_event(
                        ev["event_name"], ev["payload"], ev["timestamp"], now
                    )
                except ApiError as err:
                    meter_obj = self._meter_for_event(ev["event_name"])
                    key = meter_obj["id"] if meter_obj is not None else None
                    refused.setdefault(key, []).append(
                        (err.code or "invalid", err.message, identifier)
                    )
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
            for meter_id, errors in refused.items():
                self._report(meter_id, errors, now, idempotency_key)
        return {}

    def _report(
        self,
        meter_id: str | None,
        errors: list[tuple[str, str, str]],
        now: float,
        idempotency_key: str | None,
    ) -> None:
        """One thin event per meter and request, listing every refused event (Stripe lists
        samples over a window; listing them all lets a client account for each)."""
        by_code: dict[str, list[tuple[str, str]]] = {}
        for code, message, identifier in errors:
            by_code.setdefault(code, []).append((message, identifier))
        event: Json = {
            "id": new_id("evt"),
            "object": "v2.core.event",
            "type": ERROR_REPORT if meter_id else NO_METER,
            "created": iso(now),
            "livemode": False,
            "context": None,
            "reason": {
                "type": "request",
                "request": {"id": new_id("req"), "idempotency_key": idempotency_key or ""},
            },
            "data": {
                "developer_message_summary": f"{len(errors)} meter events were not recorded.",
                "reason": {
                    "error_count": len(errors),
                    "error_types": [
                        {
                            "code": code,
                            "error_count": len(items),
                            "sample_errors": [
                                {"error_message": message, "request": {"identifier": ident}}
                                for message, ident in items
                            ],
                        }
                        for code, items in by_code.items()
                    ],
                },
                "validation_start": iso(now),
                "validation_end": iso(now),
            },
        }
        if meter_id:
            event["related_object"] = {
                "id": meter_id,
                "type": "billing.meter",
                "url": f"/v1/billing/meters/{meter_id}",
            }
        self.thin_events.append({"visible_at": now + self.error_report_delay, "event": event})

    # ---- thin events: /v2/core/events ----------------------------------------------------------

    def _visible_events(self) -> list[Json]:
        with self.lock:
            now = self.now()
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
