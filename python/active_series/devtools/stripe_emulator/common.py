"""What every part of the emulator shares: limits, Stripe's error shape, form parsing and
parameter checks, answers and list pages."""

from __future__ import annotations

import calendar
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

DEFAULT_RATE_LIMIT = 25.0
MAX_EVENT_AGE_SECONDS = 35 * 24 * 3600
MAX_EVENT_FUTURE_SECONDS = 5 * 60
MAX_IDENTIFIER_LENGTH = 100
PERIOD_SECONDS_METADATA_KEY = "emulator_period_seconds"
FAULT_KINDS = (
    "error",
    "delay",
    "delay_after",
    "drop_before",
    "drop_after",
    "rate_limit",
    "html",
    "truncated_json",
    "close_mid_response",
)
RANDOM_KINDS = (
    "error",
    "timeout",
    "timeout_after",
    "drop_before",
    "drop_after",
    "rate_limit",
    "html",
    "truncated_json",
    "close_mid_response",
)
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


def missing(param: str) -> ApiError:
    return ApiError(400, f"Missing required param: {param}.", code="parameter_missing", param=param)


def invalid(param: str, message: str, code: str = "parameter_invalid") -> ApiError:
    return ApiError(400, message, code=code, param=param)


def no_such(kind: str, ident: str, param: str = "id") -> ApiError:
    return ApiError(404, f"No such {kind}: '{ident}'", code="resource_missing", param=param)


def new_id(prefix: str) -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
    return prefix + "_" + "".join(secrets.choice(alphabet) for _ in range(24))


def parse_form(pairs: Iterable[tuple[str, str]]) -> Json:
    """Turn Stripe's bracketed form keys (``a[b][0][c]=v``) into nested dicts and lists."""
    root: Json = {}
    key_re = re.compile(r"^([^\[\]]+)((?:\[[^\[\]]*\])*)$")
    for key, value in pairs:
        match = key_re.match(key)
        if match is None:
            root[key] = value
            continue
        path = [match.group(1), *re.findall(r"\[([^\[\]]*)\]", match.group(2))]
        node: Json = root
        for i, part in enumerate(path):
            name = str(len(node)) if part == "" else part
            if i == len(path) - 1:
                node[name] = value
            else:
                child = node.get(name)
                if not isinstance(child, dict):
                    child = {}
                    node[name] = child
                node = child
    return listify(root)


def listify(node: Any) -> Any:
    if not isinstance(node, dict):
        return node
    converted = {k: listify(v) for k, v in node.items()}
    if converted and all(k.isdigit() for k in converted):
        return [converted[k] for k in sorted(converted, key=int)]
    return converted


def as_int(
    params: Json, name: str, *, required: bool = False, label: str | None = None
) -> int | None:
    label = label or name
    raw = params.get(name)
    if raw is None or raw == "":
        if required:
            raise missing(label)
        return None
    if isinstance(raw, int):
        return raw
    if isinstance(raw, str) and re.fullmatch(r"-?[0-9]+", raw.strip()):
        return int(raw)
    raise invalid(label, f"Invalid integer: {raw}", "parameter_invalid_integer")


def as_str(
    params: Json, name: str, *, required: bool = False, label: str | None = None
) -> str | None:
    label = label or name
    raw = params.get(name)
    if raw is None or raw == "":
        if required:
            raise missing(label)
        return None
    if not isinstance(raw, str):
        raise invalid(label, f"Invalid string: {raw!r}")
    return raw


def as_dict(params: Json, name: str) -> Json:
    raw = params.get(name)
    if raw is None or raw == "":
        return {}
    if isinstance(raw, list):
        return {str(i): v for i, v in enumerate(raw)}
    if not isinstance(raw, dict):
        raise invalid(name, f"Invalid object: {name}")
    return raw


def metadata_of(params: Json) -> dict[str, str]:
    return {k: str(v) for k, v in as_dict(params, "metadata").items() if v != ""}


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


def paginate(items: Sequence[Json], p: Json, url: str) -> Json:
    limit = as_int(p, "limit") or 10
    if not 1 <= limit <= 100:
        raise invalid("limit", "limit must be between 1 and 100.")
    ids = [i.get("id") for i in items]
    after = as_str(p, "starting_after")
    before = as_str(p, "ending_before")
    if after is not None:
        if after not in ids:
            raise invalid("starting_after", f"No such object: '{after}'", "resource_missing")
        rest = items[ids.index(after) + 1 :]
        page, more = rest[:limit], len(rest) > limit
    elif before is not None:
        if before not in ids:
            raise invalid("ending_before", f"No such object: '{before}'", "resource_missing")
        rest = items[: ids.index(before)]
        page, more = rest[-limit:], len(rest) > limit
    else:
        page, more = items[:limit], len(items) > limit
    return {"object": "list", "data": list(page), "has_more": more, "url": url}


def rate_limit_error() -> ApiError:
    return ApiError(
        429,
        "Request rate limit exceeded. You can learn more about rate limits here "
        "https://stripe.com/docs/rate-limits.",
        code="rate_limit",
    )
