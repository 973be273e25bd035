"""Request parameters: Stripe's form encoding, and the checks each resource applies."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

from .common import MAX_EXPAND_DEPTH, ApiError, Json


def missing(param: str) -> ApiError:
    return ApiError(400, f"Missing required param: {param}.", code="parameter_missing", param=param)


def invalid(param: str, message: str, code: str = "parameter_invalid") -> ApiError:
    return ApiError(400, message, code=code, param=param)


def no_such(kind: str, ident: str, param: str = "id") -> ApiError:
    return ApiError(404, f"No such {kind}: '{ident}'", code="resource_missing", param=param)


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


def _given(params: Json, name: str, required: bool, label: str) -> Any:
    """The parameter's raw value; None when absent or empty (an error when required)."""
    raw = params.get(name)
    if raw is None or raw == "":
        if required:
            raise missing(label)
        return None
    return raw


def as_int(
    params: Json, name: str, *, required: bool = False, label: str | None = None
) -> int | None:
    label = label or name
    raw = _given(params, name, required, label)
    if raw is None or isinstance(raw, int):
        return raw
    if isinstance(raw, str) and re.fullmatch(r"-?[0-9]+", raw.strip()):
        return int(raw)
    raise invalid(label, f"Invalid integer: {raw}", "parameter_invalid_integer")


def as_str(
    params: Json, name: str, *, required: bool = False, label: str | None = None
) -> str | None:
    label = label or name
    raw = _given(params, name, required, label)
    if raw is None:
        return None
    if not isinstance(raw, str):
        raise invalid(label, f"Invalid string: {raw!r}")
    return raw


def as_bool(params: Json, name: str, *, required: bool = False, label: str | None = None) -> bool:
    """A boolean parameter (form-encoded ``true`` or ``false``); absent is false."""
    label = label or name
    raw = _given(params, name, required, label)
    if raw is None or isinstance(raw, bool):
        return bool(raw)
    if raw in ("true", "false"):
        return raw == "true"
    raise invalid(label, f"Invalid boolean: {raw}")


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


def expand_paths(params: Json) -> set[str]:
    """The ``expand[]`` paths of a request (``data.`` prefixed for lists, as Stripe's)."""
    raw = params.get("expand") or []
    if isinstance(raw, str):
        raw = [raw]
    return {str(x) for x in raw} if isinstance(raw, list) else set()


def check_expand_depth(paths: Iterable[str]) -> None:
    """Refuse, as Stripe does, an expansion of more than four levels (``data`` counts)."""
    for path in paths:
        if len(path.split(".")) > MAX_EXPAND_DEPTH:
            raise ApiError(
                400,
                f"You cannot expand more than {MAX_EXPAND_DEPTH} levels of a property.",
                param="expand",
            )


def unexpanded(node: Any, expand: set[str], path: str = "") -> Any:
    """A copy of an answer without what Stripe includes only when expanded: a price's
    ``tiers`` (``expand[]=tiers`` on a price, ``items.data.price.tiers`` on a subscription;
    on a list of subscriptions that would take five levels, which Stripe refuses) and its
    ``currency_options`` (shown whole once expanded)."""
    if isinstance(node, list):
        return [unexpanded(v, expand, path) for v in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        where = f"{path}.{key}" if path else key
        if (
            key in ("tiers", "currency_options")
            and node.get("object") == "price"
            and where not in expand
        ):
            continue
        out[key] = unexpanded(value, expand, where)
    return out
