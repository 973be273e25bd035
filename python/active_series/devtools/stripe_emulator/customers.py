"""Customers: /v1/customers."""

from __future__ import annotations

from typing import Any

from .common import Json, new_id
from .params import as_str, metadata_of, no_such
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
