"""The emulator's whole state: every resource, on one store and one lock."""

from __future__ import annotations

from .billing import Billing
from .streams import Streams


class EmulatorState(Billing, Streams):
    """Customers, meters and meter events, meter event streams (v2) and their error reports,
    products, prices, subscriptions and invoices (each in its module, built on
    :class:`~.store.Store`), guarded by one lock."""
