"""A small client of the emulator's ``/_emulator/`` control endpoints, for tests."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from typing import Any

from .common import RANDOM_KINDS, Json


class EmulatorControl:
    """A small client for the ``/_emulator/`` control endpoints."""

    def __init__(self, base_url: str, timeout: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout

    def _call(self, method: str, path: str, body: Json | None = None, **query: Any) -> Json:
        url = self.base_url + path
        params = {k: v for k, v in query.items() if v is not None}
        if params:
            url += "?" + urllib.parse.urlencode(params)
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(url, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"{method} {path}: {exc.code} {exc.read().decode()}") from exc

    # state
    def health(self) -> bool:
        return bool(self._call("GET", "/_emulator/health").get("ok"))

    def reset(self) -> None:
        self._call("POST", "/_emulator/reset", {})

    # clock
    def now(self) -> float:
        return float(self._call("GET", "/_emulator/clock")["now"])

    def set_clock_offset(self, seconds: float) -> float:
        return float(self._call("POST", "/_emulator/clock", {"offset": seconds})["now"])

    def set_now(self, timestamp: float) -> float:
        return float(self._call("POST", "/_emulator/clock", {"now": timestamp})["now"])

    def advance_clock(self, seconds: float) -> float:
        return float(self._call("POST", "/_emulator/clock", {"advance": seconds})["now"])

    # faults
    def add_fault(
        self,
        kind: str,
        count: int = 1,
        *,
        path_prefix: str | None = None,
        method: str | None = None,
        status: int = 500,
        seconds: float = 0.0,
    ) -> Json:
        body = {
            "kind": kind,
            "count": count,
            "path_prefix": path_prefix,
            "method": method,
            "status": status,
            "seconds": seconds,
        }
        return self._call("POST", "/_emulator/faults", body)

    def fail_next(
        self, count: int = 1, *, status: int = 500, path_prefix: str | None = None
    ) -> Json:
        return self.add_fault("error", count, status=status, path_prefix=path_prefix)

    def delay_next(
        self, count: int, seconds: float, *, after: bool = False, path_prefix: str | None = None
    ) -> Json:
        kind = "delay_after" if after else "delay"
        return self.add_fault(kind, count, seconds=seconds, path_prefix=path_prefix)

    def drop_next(
        self, count: int = 1, *, after: bool = False, path_prefix: str | None = None
    ) -> Json:
        kind = "drop_after" if after else "drop_before"
        return self.add_fault(kind, count, path_prefix=path_prefix)

    def rate_limit_next(self, count: int = 1, *, path_prefix: str | None = None) -> Json:
        return self.add_fault("rate_limit", count, path_prefix=path_prefix)

    def random_failures(
        self,
        ratio: float,
        *,
        seed: int = 0,
        kinds: dict[str, float] | Sequence[str] | None = None,
        timeout_seconds: float = 2.0,
        path_prefix: str | None = None,
    ) -> Json:
        body = {
            "ratio": ratio,
            "seed": seed,
            "kinds": dict(kinds) if isinstance(kinds, dict) else list(kinds or RANDOM_KINDS),
            "timeout_seconds": timeout_seconds,
            "path_prefix": path_prefix,
        }
        return self._call("POST", "/_emulator/faults/random", body)

    def clear_faults(self) -> None:
        self._call("POST", "/_emulator/faults/clear", {})

    def faults(self) -> Json:
        return self._call("GET", "/_emulator/faults")

    def fault_counts(self) -> dict[str, int]:
        return dict(self.faults()["counts"])

    def set_rate_limit(self, rate: float | None, burst: float | None = None) -> Json:
        return self._call("POST", "/_emulator/rate_limit", {"rate": rate, "burst": burst})

    # observations
    def meter_events(
        self, customer: str | None = None, event_name: str | None = None
    ) -> list[Json]:
        return list(
            self._call("GET", "/_emulator/meter_events", customer=customer, event_name=event_name)[
                "data"
            ]
        )

    def concurrency(self) -> Json:
        return self._call("GET", "/_emulator/concurrency")

    def max_concurrency(self, customer: str | None = None) -> int:
        info = self.concurrency()
        if customer is None:
            return int(info["max_overall"])
        return int(info["max_in_flight"].get(customer, 0))

    def calls(self, customer: str | None = None) -> list[Json]:
        """The record of meter-event calls (v1 and v2), oldest first: ``seq``, ``method``,
        ``path``, ``customers``, ``events``, ``start``/``finish`` (the server's monotonic clock;
        ``finish`` None while in flight) and ``status``."""
        return list(self._call("GET", "/_emulator/calls", customer=customer)["data"])

    def configure_stream(
        self,
        *,
        session_ttl: float | None = None,
        error_report_delay: float | None = None,
        error_report_window: float | None = None,
        error_report_samples: int | None = None,
    ) -> Json:
        """Meter event streams and error reports (v1 and v2): sessions' lifetime, how long a
        meter's report window stays open (0: one report per request) and how late its report
        becomes visible, in seconds of the emulator's clock, and how many sample errors a
        report lists per error type (None keeps the setting); answers the settings and
        session counts."""
        body = {
            "session_ttl": session_ttl,
            "error_report_delay": error_report_delay,
            "error_report_window": error_report_window,
            "error_report_samples": error_report_samples,
        }
        return self._call("POST", "/_emulator/meter_event_stream", body)

    def set_summary_lag(self, seconds: float) -> float:
        """Make event summaries lag: an event counts in them only ``seconds`` (emulator clock)
        after it was received (0: at once, the default)."""
        return float(self._call("POST", "/_emulator/event_summaries", {"lag": seconds})["lag"])

    def stats(self) -> Json:
        return self._call("GET", "/_emulator/stats")

    def aggregate(self, meter: str, customer: str, start: float, end: float) -> int:
        answer = self._call(
            "GET", "/_emulator/aggregate", meter=meter, customer=customer, start=start, end=end
        )
        return int(answer["value"])

    # subscriptions
    def subscription_state(self, subscription: str) -> Json:
        return self._call("GET", f"/_emulator/subscriptions/{subscription}")

    def advance_subscription(self, subscription: str, at: str = "now") -> Json:
        return self._call("POST", f"/_emulator/subscriptions/{subscription}/advance", {"at": at})

    def set_subscription_period(
        self,
        subscription: str,
        start: int,
        end: int,
        period_seconds: int | None = None,
        *,
        item: str | None = None,
    ) -> Json:
        body = {"start": start, "end": end, "period_seconds": period_seconds, "item": item}
        return self._call("POST", f"/_emulator/subscriptions/{subscription}/period", body)
