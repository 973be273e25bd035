"""Customers: /v1/customers, and their search (Stripe's search query language, in part)."""

from __future__ import annotations

import re
from typing import Any

from .common import Json, new_id
from .params import as_int, as_str, invalid, metadata_of, no_such
from .store import Store


class Customers(Store):
    # ---- customers ---------------------------------------------------------------------------

    def create_customer(self, p: Json) -> Json:
        with self.lock:
            cus: Json = {
                "id": new_id("cus"),
                "object": "customer",
                "created": self.now_int(),
                "email": as_str(p, "email"),
                "name": as_str(p, "name"),
                "description": as_str(p, "description"),
                "metadata": metadata_of(p),
                "livemode": False,
                "currency": None,
                "balance": 0,
                "delinquent": False,
            }
            self.customers[cus["id"]] = cus
            return cus

    def _lookup(self, store: dict[str, Any], kind: str, ident: str) -> Any:
        """The object ``ident`` of ``store``, or Stripe's resource_missing error."""
        with self.lock:
            if ident not in store:
                raise no_such(kind, ident)
            return store[ident]

    def get_customer(self, cid: str) -> Json:
        return self._lookup(self.customers, "customer", cid)

    def list_customers(self, p: Json) -> list[Json]:
        email = as_str(p, "email")
        with self.lock:
            return [
                c for c in reversed(self.customers.values()) if not email or c["email"] == email
            ]

    def search_customers(self, p: Json, url: str) -> Json:
        """``GET /v1/customers/search``: ``query`` (clauses on ``email``, ``name``, ``phone``
        or ``metadata['key']`` with ``:`` (exact) or ``~`` (substring), optionally negated
        with ``-``, joined by spaces, ``AND`` or ``OR``), ``limit``, ``page``. Unlike Stripe's
        search, it sees a customer as soon as it is created."""
        query = as_str(p, "query", required=True)
        assert query is not None
        match = _query_matcher(query)
        limit = as_int(p, "limit") or 10
        if not 1 <= limit <= 100:
            raise invalid("limit", "limit must be between 1 and 100.")
        page = as_str(p, "page")
        start = 0
        if page is not None:
            if not re.fullmatch(r"page_[0-9]+", page):
                raise invalid("page", f"Invalid page: {page}")
            start = int(page[5:])
        with self.lock:
            found = [c for c in reversed(self.customers.values()) if match(c)]
        data = found[start : start + limit]
        more = len(found) > start + limit
        return {
            "object": "search_result",
            "data": data,
            "has_more": more,
            "next_page": f"page_{start + limit}" if more else None,
            "url": url,
        }


_CLAUSE = re.compile(
    r"""(-?)(email|name|phone|metadata\[(?:'[^']*'|"[^"]*")\])\s*([:~])\s*('[^']*'|"[^"]*")"""
)
_SEARCH_FIELDS = "email, name, phone or metadata['key']"


def _query_matcher(query: str) -> Any:
    """A predicate on customers for a search query; a query outside the part of the
    language the emulator knows is refused (400), never half understood."""
    clauses: list[tuple[bool, str, str, str]] = []
    joins: set[str] = set()
    rest = query.strip()
    while True:
        hit = _CLAUSE.match(rest)
        if hit is None:
            raise invalid(
                "query",
                f"Unsupported search query {query!r}: the emulator knows clauses on "
                f"{_SEARCH_FIELDS} with ':' or '~' and a quoted value, joined by AND or OR.",
            )
        negated, field, operator, value = hit.groups()
        clauses.append((bool(negated), field, operator, value[1:-1]))
        rest = rest[hit.end() :].strip()
        if not rest:
            break
        join = re.match(r"(AND|OR)\s+", rest, re.IGNORECASE)
        if join is not None:
            joins.add(join.group(1).upper())
            rest = rest[join.end() :]
        else:
            joins.add("AND")
    if len(joins) > 1:
        raise invalid("query", "AND and OR cannot be combined in one search query.")

    def holds(customer: Json, clause: tuple[bool, str, str, str]) -> bool:
        negated, field, operator, value = clause
        if field.startswith("metadata["):
            got = customer.get("metadata", {}).get(field[10:-2])
        else:
            got = customer.get(field)
        if operator == ":":
            found = got is not None and str(got).lower() == value.lower()
        else:
            found = len(value) >= 3 and got is not None and value.lower() in str(got).lower()
        return found != negated

    combine = any if joins == {"OR"} else all
    return lambda customer: combine(holds(customer, c) for c in clauses)
