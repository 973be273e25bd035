"""The records the relay's statements return, read by name (``psycopg.rows.class_row``):
each statement of :mod:`.queries` names its columns as the fields of the record it is read
into. The claim's own records (a claim, a period of the plan, a period's confirmation state)
are in :mod:`.confirm`."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class PendingPost:
    """One row of ``PENDING_POSTS``: a post whose outcome is unknown, resent as it was, and
    until when a call of it may still be in flight elsewhere (Unix seconds; None: not)."""

    org: int
    customer: str
    value: int
    timestamp: int
    identifier: str
    in_flight_until: float | None


@dataclass(frozen=True)
class Gauges:
    """``GAUGES``: outbox rows, the age of the oldest (seconds), parked organizations and
    periods in ``billing_drift``."""

    outbox_depth: int
    oldest_change_age: float | None
    parked: int
    drift: int


@dataclass(frozen=True)
class Refused:
    """A row of ``LEDGER_REFUSED_LATER``: a post Stripe refused after accepting it."""

    org: int
    identifier: str
    reason: str


@dataclass(frozen=True)
class Bounds:
    """``CURRENT_BOUNDS``: the organization's current period (Unix seconds)."""

    start: float
    end: float


@dataclass(frozen=True)
class HeldPost:
    """``HELD_WITHIN``: the newest post not refused within a span of a period."""

    value: int
    status: str
    timestamp: int


@dataclass(frozen=True)
class NextTimestamp:
    """``NEXT_TIMESTAMP`` (``_relay_timestamp``): the next post's timestamp and the second it
    is due (both None: in a tail too short to post in)."""

    event_timestamp: int | None
    due_second: int | None


@dataclass(frozen=True)
class Unbilled:
    """A row of ``SKIP_BEFORE_SUBSCRIPTION`` (``_relay_finalize_unbilled``): a period no
    invoice bills, finalized unbilled, with its usage."""

    period_start: datetime
    period_end: datetime
    usage: int


@dataclass(frozen=True)
class Waiting:
    """``CONFIRM_WAITING``: how many reads are still awaited, and the seconds to the nearest
    moment one may be made."""

    waiting: int
    next_in: float | None
