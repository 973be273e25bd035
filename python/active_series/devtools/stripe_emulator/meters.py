"""Billing meters, meter events, adjustments and event summaries: /v1/billing/..."""

from __future__ import annotations

import hashlib
import re
import uuid

from .common import (
    MAX_EVENT_AGE_SECONDS,
    MAX_EVENT_FUTURE_SECONDS,
    MAX_IDENTIFIER_LENGTH,
    ApiError,
    Json,
    new_id,
)
from .customers import Customers
from .params import as_dict, as_int, as_str, invalid, missing


class Meters(Customers):
    # ---- meters ------------------------------------------------------------------------------

    def create_meter(self, p: Json) -> Json:
        display_name = as_str(p, "display_name", required=True)
        event_name = as_str(p, "event_name", required=True)
        assert event_name is not None
        agg = as_dict(p, "default_aggregation")
        formula = as_str(agg, "formula", required=True, label="default_aggregation[formula]")
        if formula not in ("sum", "count", "last"):
            raise invalid(
                "default_aggregation[formula]",
                "Invalid default_aggregation[formula]: must be one of count, last, or sum",
            )
        if len(event_name) > 100:
            raise invalid("event_name", "event_name must be at most 100 characters.")
        mapping = as_dict(p, "customer_mapping")
        mapping_type = as_str(mapping, "type") or "by_id"
        if mapping_type != "by_id":
            raise invalid("customer_mapping[type]", "customer_mapping[type] must be by_id.")
        customer_key = as_str(mapping, "event_payload_key") or "stripe_customer_id"
        value_key = as_str(as_dict(p, "value_settings"), "event_payload_key") or "value"
        window = as_str(p, "event_time_window")
        if window not in (None, "day", "hour"):
            raise invalid("event_time_window", "event_time_window must be day or hour.")
        with self.lock:
            self._check_event_name_free(event_name)
            now = self.now_int()
            meter: Json = {
                "id": new_id("mtr"),
                "object": "billing.meter",
                "created": now,
                "updated": now,
                "customer_mapping": {"event_payload_key": customer_key, "type": "by_id"},
                "default_aggregation": {"formula": formula},
                "display_name": display_name,
                "event_name": event_name,
                "event_time_window": window,
                "livemode": False,
                "status": "active",
                "status_transitions": {"deactivated_at": None},
                "value_settings": {"event_payload_key": value_key},
            }
            self.meters[meter["id"]] = meter
            return meter

    def _check_event_name_free(self, event_name: str) -> None:
        for other in self.meters.values():
            if other["event_name"] == event_name and other["status"] == "active":
                raise invalid(
                    "event_name",
                    f"An active meter with event_name '{event_name}' already exists.",
                    "meter_event_name_in_use",
                )

    def get_meter(self, mid: str) -> Json:
        return self._lookup(self.meters, "billing.meter", mid)

    def list_meters(self, p: Json) -> list[Json]:
        status = as_str(p, "status")
        with self.lock:
            return [
                m for m in reversed(self.meters.values()) if not status or m["status"] == status
            ]

    def set_meter_status(self, mid: str, active: bool) -> Json:
        with self.lock:
            meter = self.get_meter(mid)
            if active and meter["status"] != "active":
                self._check_event_name_free(meter["event_name"])
            now = self.now_int()
            meter["status"] = "active" if active else "inactive"
            meter["status_transitions"] = {"deactivated_at": None if active else now}
            meter["updated"] = now
            return meter

    # ---- meter events --------------------------------------------------------------------------

    def customer_of_event(self, p: Json) -> str:
        """The customer a meter-event call is for (used for concurrency tracking)."""
        payload = p.get("payload") if isinstance(p.get("payload"), dict) else {}
        assert isinstance(payload, dict)
        key = "stripe_customer_id"
        with self.lock:
            meter = self._meter_for_event(str(p.get("event_name", "")))
            if meter is not None:
                key = meter["customer_mapping"]["event_payload_key"]
        return str(payload.get(key) or "(none)")

    def _meter_for_event(self, event_name: str) -> Json | None:
        inactive = None
        for meter in self.meters.values():
            if meter["event_name"] == event_name:
                if meter["status"] == "active":
                    return meter
                inactive = meter
        return inactive

    def create_meter_event(self, p: Json, idempotency_key: str | None) -> Json:
        """Record a meter event, or accept it and report it later: as Stripe, only the
        request's shape (and a duplicate identifier) is refused at once; what the meter
        refuses (no meter, an inactive one, an unknown customer, a bad value, a timestamp out
        of range) is answered 200 like an accepted event, kept out of the meter, and reported
        by an error report (streams.py) naming the request's idempotency key."""
        event_name = as_str(p, "event_name", required=True)
        assert event_name is not None
        if len(event_name) > 100:
            raise invalid("event_name", "event_name must be at most 100 characters.")
        payload = p.get("payload")
        if payload is None or payload == "" or payload == {}:
            raise missing("payload")
        if not isinstance(payload, dict):
            raise invalid("payload", "Invalid object: payload")
        identifier = as_str(p, "identifier")
        if identifier is not None and len(identifier) > MAX_IDENTIFIER_LENGTH:
            raise invalid(
                "identifier",
                f"Invalid identifier: must be at most {MAX_IDENTIFIER_LENGTH} characters",
                "parameter_invalid_string_too_long",
            )
        timestamp = as_int(p, "timestamp")
        with self.lock:
            now = self.now()
            if identifier is not None and identifier in self.identifiers:
                raise ApiError(
                    400,
                    f"An event already exists with identifier {identifier}",
                    param="identifier",
                    should_retry=False,
                )
            answer: Json = {
                "object": "billing.meter_event",
                "created": int(now),
                "event_name": event_name,
                "livemode": False,
            }
            try:
                meter, customer, value, timestamp = self.check_meter_event(
                    event_name, payload, timestamp, now
                )
            except ApiError as err:
                self.refuse_later(event_name, err, idempotency_key, now)
                return {
                    **answer,
                    "identifier": identifier or str(uuid.uuid4()),
                    "payload": {str(k): str(v) for k, v in payload.items()},
                    "timestamp": int(now) if timestamp is None else timestamp,
                }
            record = self.record_meter_event(
                meter, event_name, identifier, customer, value, timestamp, payload, idempotency_key
            )
            return {
                **answer,
                "identifier": record["identifier"],
                "payload": record["payload"],
                "timestamp": timestamp,
            }

    def refuse_later(
        self,
        event_name: str,
        err: ApiError,
        request_key: str | None,
        now: float,
        *,
        last: bool = True,
    ) -> None:
        """Note an event the meter refused after its request was answered, for the error
        report of its meter (streams.py); ``last``: the request's last refusal."""
        raise NotImplementedError

    def check_meter_event(
        self, event_name: str, payload: Json, timestamp: int | None, now: float
    ) -> tuple[Json, str, int, int]:
        """(meter, customer, value, timestamp) of a meter event, or an ApiError with the code
        Stripe reports for it later (one of the ``v1.billing.meter.error_report_triggered``
        event's codes; the status is never sent)."""
        with self.lock:
            meter = self._meter_for_event(event_name)
            if meter is None:
                raise ApiError(
                    400,
                    f"No active meter was found for event_name '{event_name}'.",
                    code="no_meter",
                    param="event_name",
                )
            if meter["status"] != "active":
                raise ApiError(
                    400,
                    f"The meter {meter['id']} for event_name '{event_name}' is inactive.",
                    code="archived_meter",
                    param="event_name",
                )
            customer_key = meter["customer_mapping"]["event_payload_key"]
            value_key = meter["value_settings"]["event_payload_key"]
            customer = payload.get(customer_key)
            if not isinstance(customer, str) or not customer:
                raise ApiError(
                    400,
                    f"The payload has no customer under '{customer_key}'.",
                    code="meter_event_no_customer_defined",
                    param=f"payload[{customer_key}]",
                )
            raw_value = payload.get(value_key)
            if not isinstance(raw_value, str) or not re.fullmatch(r"[0-9]{1,19}", raw_value):
                raise ApiError(
                    400,
                    f"The payload's '{value_key}' must be a whole number (got {raw_value!r}).",
                    code="meter_event_invalid_value",
                    param=f"payload[{value_key}]",
                )
            if timestamp is None:
                timestamp = int(now)
            if timestamp < now - MAX_EVENT_AGE_SECONDS:
                raise ApiError(
                    400,
                    "The timestamp must be within the past 35 calendar days.",
                    code="timestamp_too_far_in_past",
                    param="timestamp",
                )
            if timestamp > now + MAX_EVENT_FUTURE_SECONDS:
                raise ApiError(
                    400,
                    "The timestamp must be at most 5 minutes in the future.",
                    code="timestamp_in_future",
                    param="timestamp",
                )
            if self.require_known_customer and customer not in self.customers:
                raise ApiError(
                    400,
                    f"No such customer: '{customer}'",
                    code="meter_event_customer_not_found",
                    param=f"payload[{customer_key}]",
                )
            return meter, customer, int(raw_value), timestamp

    def record_meter_event(
        self,
        meter: Json,
        event_name: str,
        identifier: str | None,
        customer: str,
        value: int,
        timestamp: int,
        payload: Json,
        idempotency_key: str | None,
    ) -> Json:
        """Record an accepted event (v1 or v2: the same record) and its identifier."""
        with self.lock:
            if identifier is None:
                identifier = str(uuid.uuid4())
            self.identifiers.add(identifier)
            record = {
                "seq": len(self.events) + 1,
                "received_at": self.now(),
                "event_name": event_name,
                "meter": meter["id"],
                "identifier": identifier,
                "customer": customer,
                "value": value,
                "timestamp": timestamp,
                "payload": {str(k): str(v) for k, v in payload.items()},
                "idempotency_key": idempotency_key,
                "canceled": False,
            }
            self.events.append(record)
            return record

    def adjust_meter_event(self, p: Json) -> Json:
        """Cancel one event by identifier (``type=cancel``), within 24 hours of its receipt."""
        event_name = as_str(p, "event_name", required=True)
        kind = as_str(p, "type") or "cancel"
        if kind != "cancel":
            raise invalid("type", "type must be cancel.")
        cancel = as_dict(p, "cancel")
        identifier = as_str(cancel, "identifier", required=True, label="cancel[identifier]")
        with self.lock:
            now = self.now()
            found = [
                e
                for e in self.events
                if e["identifier"] == identifier and e["event_name"] == event_name
            ]
            if not found:
                raise ApiError(
                    400,
                    f"No meter event with identifier {identifier} for event_name '{event_name}'.",
                    code="resource_missing",
                    param="cancel[identifier]",
                )
            event = found[0]
            if now - event["received_at"] > 24 * 3600:
                raise invalid(
                    "cancel[identifier]",
                    "Meter events can only be canceled within 24 hours of their receipt.",
                )
            event["canceled"] = True
            return {
                "object": "billing.meter_event_adjustment",
                "cancel": {"identifier": identifier},
                "event_name": event_name,
                "livemode": False,
                "status": "complete",
                "type": "cancel",
            }

    def aggregate(
        self,
        meter_id: str,
        customer: str,
        start: float,
        end: float,
        received_before: float | None = None,
    ) -> int:
        """The meter's formula over the customer's events with ``start <= timestamp < end``
        (and, with ``received_before``, received before then: an invoice made at that time, or
        what a lagging summary sees).

        ``last`` is the value of the event with the greatest timestamp; among events with the same
        timestamp the one that arrived last wins.
        """
        with self.lock:
            meter = self.get_meter(meter_id)
            formula = meter["default_aggregation"]["formula"]
            chosen = [
                e
                for e in self.events
                if e["meter"] == meter_id
                and e["customer"] == customer
                and start <= e["timestamp"] < end
                and not e["canceled"]
                and (received_before is None or e["received_at"] < received_before)
            ]
        if formula == "count":
            return len(chosen)
        if formula == "sum":
            return sum(e["value"] for e in chosen)
        if not chosen:
            return 0
        return max(chosen, key=lambda e: (e["timestamp"], e["seq"]))["value"]

    def event_summaries(self, mid: str, p: Json) -> list[Json]:
        """What the meter bills the customer for each window: the same aggregation as the
        invoices (accepted events only, canceled ones left out; ``last``: the window's latest
        event). Summaries are eventually consistent: with ``summary_lag`` set (seconds, the
        control API's ``/_emulator/event_summaries``), events received less than that long
        ago do not count yet."""
        customer = as_str(p, "customer", required=True)
        start = as_int(p, "start_time", required=True)
        end = as_int(p, "end_time", required=True)
        assert customer is not None and start is not None and end is not None
        window = as_str(p, "value_grouping_window")
        if window not in (None, "hour", "day"):
            raise invalid("value_grouping_window", "value_grouping_window must be hour or day.")
        if end <= start:
            raise invalid("end_time", "end_time must be after start_time.")
        if self.minute_aligned_summaries:
            for name, value in (("start_time", start), ("end_time", end)):
                if value % 60:
                    raise invalid(name, f"{name} must be aligned with minute boundaries.")
        self.get_meter(mid)
        if window is None:
            buckets = [(start, end)]
        else:
            size = 3600 if window == "hour" else 86400
            buckets = []
            edge = start - start % size
            while edge < end:
                buckets.append((max(edge, start), min(edge + size, end)))
                edge += size
        with self.lock:
            lag = float(getattr(self, "summary_lag", 0.0))
            seen = self.now() - lag if lag > 0 else None
            has_events = {
                e["timestamp"]
                for e in self.events
                if e["meter"] == mid
                and e["customer"] == customer
                and not e["canceled"]
                and (seen is None or e["received_at"] < seen)
            }
        summaries = []
        for b_start, b_end in buckets:
            if window is not None and not any(b_start <= t < b_end for t in has_events):
                continue
            digest = hashlib.sha1(f"{mid}/{customer}/{b_start}/{b_end}".encode()).hexdigest()
            summaries.append(
                {
                    "id": "mtrusum_" + digest[:24],
                    "object": "billing.meter_event_summary",
                    "aggregated_value": self.aggregate(mid, customer, b_start, b_end, seen),
                    "start_time": b_start,
                    "end_time": b_end,
                    "livemode": False,
                    "meter": mid,
                }
            )
        return summaries

    def meter_events_json(self, customer: str | None, event_name: str | None) -> Json:
        with self.lock:
            data = [
                dict(e)
                for e in self.events
                if (customer is None or e["customer"] == customer)
                and (event_name is None or e["event_name"] == event_name)
            ]
        return {"object": "list", "data": data}
