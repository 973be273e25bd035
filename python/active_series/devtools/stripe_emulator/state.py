"""The emulator's whole state: every resource, on one store and one lock."""

from __future__ import annotations

from .billing import Billing


class EmulatorState(Billing):
    """Customers, meters and meter events, products, prices, subscriptions and invoices
    (each in its module, built on :class:`~.store.Store`), guarded by one lock."""
