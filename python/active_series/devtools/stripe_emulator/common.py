"""What every part of the emulator shares: limits, Stripe's error shape, form parsing and
parameter checks, answers and list pages."""

from __future__ import annotations

import calendar
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

DEFAULT_RATE_LIMIT = 25.0
MAX_EVENT_AGE_SECONDS = 35 * 24 * 3600
MAX_EVENT_FUTURE_SECONDS = 5 * 60
MAX_IDENTIFIER_LENGTH = 100
#: Stripe refuses ``expand[]`` paths of more than four properties (a list's ``data`` counts).
MAX_EXPAND_DEPTH = 4
#: Stripe prunes an idempotency key at the earliest 24 hours after its first request.
IDEMPOTENCY_KEY_SECONDS = 24 * 3600
PERIOD_SECONDS_METADATA_KEY = "emulator_period_seconds"
# faults that change how (or whether) an answer arrives, by rule or at random
_ANSWER_FAULTS = (
    "drop_before",
    "drop_after",
    "rate_limit",
    "html",
    "truncated_json",
    "close_mid_response",
)
FAULT_KINDS = ("error", "delay", "delay_after", *_ANSWER_FAULTS)
RANDOM_KINDS = ("error", "timeout", "timeout_after", *_ANSWER_FAULTS)
#: What a proxy in front of an API answers when the API is down (fault kind "html").
HTML_ERROR_PAGE = (
    b"<!DOCTYPE html>\n<html><head><title>502 Bad Gateway</title></head>\n"
    b"<body><h1>Bad Gateway</h1><p>The upstream server did not answer.</p></body></html>\n"
)

Json = dict[str, Any]


class ApiError(Exception):
    """A Stripe-style error answer: ``{"error": {type, message, code, param}}``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type_: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        should_retry: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.code = code
        self.param = param
        self.should_retry = should_retry

    def body(self) -> Json:
        err: Json = {"type": self.type, "message": self.message}
        if self.code is not None:
            err["code"] = self.code
            err["doc_url"] = f"https://stripe.com/docs/error-codes/{self.code.replace('_', '-')}"
        if self.param is not None:
            err["param"] = self.param
        return {"error": err}

    def headers(self) -> dict[str, str]:
        if self.should_retry is None:
            return {}
        return {"Stripe-Should-Retry": "true" if self.should_retry else "false"}


def new_id(prefix: str) -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
    return prefix + "_" + "".join(secrets.choice(alphabet) for _ in range(24))


def add_months(ts: int, months: int) -> int:
    moment = datetime.fromtimestamp(ts, UTC)
    total = moment.month - 1 + months
    year, month = moment.year + total // 12, total % 12 + 1
    day = min(moment.day, calendar.monthrange(year, month)[1])
    return int(moment.replace(year=year, month=month, day=day).timestamp())


@dataclass
class Answer:
    status: int
    body: Json
    headers: dict[str, str] = field(default_factory=dict)


def rate_limit_error() -> ApiError:
    return ApiError(
        429,
        "Request rate limit exceeded. You can learn more about rate limits here "
        "https://stripe.com/docs/rate-limits.",
        code="rate_limit",
    )
