"""What Stripe holds, read from the meter's event summaries: the part of the relay that reads
them (:class:`SummaryReads`, a base of :class:`~active_series.relay.claim.Relay`), and the
records a claim works with (:class:`Claim`, :class:`Period`).

A claim looks up the confirmation state of its periods with a read due and of those to
finalize (:meth:`SummaryReads._confirm`); the reads of periods to finalize are made in the
claim, after its posts. The others are made off the posting path: the drains hand out the
due reads that need no claim (:meth:`SummaryReads.hand_out_reads`), each leased in
``_relay_confirmation`` and read by reader threads that take only spare tokens of the rate
limit, and record their results (:meth:`SummaryReads.collect_reads`).
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

import psycopg
import stripe
from psycopg.rows import class_row, dict_row

from active_series.ratelimit import backoff
from active_series.relay import queries as q
from active_series.relay.config import READS_QUEUED, RelayConfig
from active_series.relay.observe import Log
from active_series.relay.posting import Call, Poster
from active_series.relay.rows import Waiting
from active_series.relay.stripe_api import Outcome, classify

Conn = psycopg.Connection[Any]


class ClaimOutcome(StrEnum):
    """What one claim of one organization came to."""

    LOCKED = "locked"  # another worker holds it
    DONE = "done"  # every period in sync, closed or finalized as due
    POSTED = "posted"
    DEFERRED = "deferred"  # a post must wait for its timestamp
    PARKED = "parked"
    RATE_LIMITED = "rate_limited"
    PAUSED = "paused"  # Stripe refused our credentials
    RETRY = "retry"


@dataclass(frozen=True)
class Claim:
    """One claimed organization as its claim read it."""

    org: int
    customer: str | None
    billed: bool
    max_outbox: int | None  # the newest outbox row this claim accounts for
    oldest_change: float | None  # when the oldest of those was written (Unix seconds)


@dataclass(frozen=True)
class Period:
    """One row of ``_relay_plan``."""

    org: int
    start: datetime
    end: datetime
    phase: str  # open, ended, closing, closed, final
    usage: int
    held: int  # what Stripe holds per the ledger (0: nothing)
    held_status: str | None
    next_ts: int | None  # None: in a tail too short to post in, waiting for its final post
    due: int | None  # the second from which next_ts may be posted
    first_second: int
    last_second: int
    now: int


@dataclass(frozen=True)
class SummaryState:
    """One row of ``CONFIRM_STATE`` (and of ``CONFIRM_PICK``): a period's last post per the
    ledger (``held_*``; ``held_sent``: when its status was last written, Unix seconds), the
    summary window that holds exactly its events with the value the ledger expects over it,
    the period's last read (``has_row``: it has a row in ``_relay_confirmation``; ``due``;
    ``read_*``: the post it confirmed, what the summary and the ledger held, when), and
    whether a later period's post shares the window (``shared``)."""

    org: int
    start: datetime
    held_ts: int | None
    held_value: int | None
    held_status: str | None
    held_sent: float | None
    window_start: int | None
    window_end: int | None
    expected: int | None
    has_row: bool
    due: bool
    read_ts: int | None
    read_stripe: int | None
    read_ledger: int | None
    read_at: float | None
    reposts: int
    now: float
    shared: bool


# a period to post now: the claim, the period and its event timestamp
Post = tuple[Claim, Period, int]
# a summary read due: the period and its confirmation state
Read = tuple[Period, SummaryState]


@dataclass(frozen=True)
class Held:
    """What the meter's event summary says of one period, for this claim: ``repost`` when
    Stripe holds another value than the ledger's last post (read once the post had
    settled: lost, not lagging), ``billed`` the value read for a period to finalize."""

    repost: bool = False
    billed: int | None = None


@dataclass
class Reading:
    """A summary read made off the claims (:meth:`Relay._read_later`): what to record its
    result with, and the lease it holds on its period's read."""

    claim: Claim
    period: Period
    row: SummaryState
    lease: datetime
    future: futures.Future[int | stripe.StripeError | None]


class SummaryReads:
    """The summary reads of :class:`~active_series.relay.claim.Relay` (its base): what the
    relay provides them is declared here."""

    cfg: RelayConfig
    log: Log
    poster: Poster
    stop: threading.Event
    awaiting: set[tuple[int, datetime]] | None
    read_failures: dict[tuple[int, datetime], int]
    readers: futures.ThreadPoolExecutor
    readers_stop: threading.Event
    reading: dict[tuple[int, datetime], Reading]
    on_read: Callable[[], None] | None

    @property
    def ledger(self) -> Conn:
        raise NotImplementedError

    def drain(self, *, only_close: bool = False, organization: int | None = None) -> int:
        raise NotImplementedError

    def check_meter(self) -> dict[str, Any]:
        raise NotImplementedError

    def _failed(self, conn: Conn, org: int, outcome: Outcome, reason: str) -> ClaimOutcome:
        raise NotImplementedError

    def await_confirmations(
        self, *, only_close: bool = False, organization: int | None = None
    ) -> int:
        """After the drain of ``--once`` or close-period: wait for the summary reads that
        its own posts scheduled (:attr:`awaiting`), draining again as each falls due, as the
        running worker would (a read that differs posts again and schedules another), so the
        command ends with those periods in sync when Stripe confirms them. Waits at most
        :meth:`RelayConfig.confirm_wait` from now; the periods still confirming then (a read
        not yet due, one that kept failing, a post made again) are logged
        ``confirmations_pending`` and left to the next run. Parked organizations are not
        waited for. Returns the claims made."""
        if not self.awaiting:
            return 0
        pairs = sorted(self.awaiting)
        args = ([org for org, _ in pairs], [start for _, start in pairs])
        deadline = time.monotonic() + self.cfg.confirm_wait(len(pairs))
        handled, drained = 0, False
        while not self.stop.is_set():
            self.collect_reads(block=True)
            counted = (
                self.ledger.cursor(row_factory=class_row(Waiting))
                .execute(q.CONFIRM_WAITING, args)
                .fetchone()
            )
            waiting = int(counted.waiting) if counted else 0
            if not waiting or counted is None:
                break
            wait = max(float(counted.next_in or 0.0), 0.0)
            if drained:
                wait = max(wait, 0.1)  # (a due read another worker holds: not a busy loop)
            if time.monotonic() + wait > deadline:
                self.log("info", "confirmations_pending", periods=waiting, next_in=round(wait, 3))
                break
            if self.stop.wait(wait):
                break
            handled += self.drain(only_close=only_close, organization=organization)
            drained = True
        return handled

    def _confirm(
        self,
        conn: Conn,
        claims: dict[int, Claim],
        plan: dict[int, list[Period]],
        outcomes: dict[int, ClaimOutcome],
    ) -> tuple[dict[tuple[int, datetime], Held], list[Read]]:
        """Step 3b: what Stripe holds, read from the meter's event summary (never inferred
        from the ledger), for the periods whose read is due: once the ledger says the
        period's last post is sent and equal to its usage, ``confirm_after`` seconds after
        that post (a summary is eventually consistent), again shortly before the invoice
        grace ends (``prefinal_lead``), and when a period is finalized without a read of its
        last post since then. One call per such period. Most reads need no claim: the
        drains hand them out first (:meth:`hand_out_reads`); a claim looks only at its
        periods with a read due (one statement when none is) and at those to finalize.

        The window read: Stripe wants minute-aligned bounds, and a period's bounds need not
        be (an anniversary subscription starts at any second). It runs from the minute of
        the period's first second to the minute after the period's last post. With ``last``
        aggregation the summary is the value of the window's latest event: an earlier
        period's events in its first minute are older than this period's posts, so they
        never decide it, and it ends before any later period's event unless that period
        posted within the same minute as this period's last post (periods under two hours,
        whose posts after the end may reach their last minute). Such a period is not read
        (the summary cannot tell its value; relay_periods keeps it ``confirming``) and is
        finalized with the ledger's value. The value compared is the ledger's last event in
        the same window: this period's last post.

        Agreeing: recorded (what Stripe held, when, for which post). Differing once the post
        has settled: recorded, due again at once, and the next claim posts the period again
        (``Held.repost``: a new event after the last one, so a new identifier), to be read
        again once that post settles; differing sooner: lag, read again later. A failed read
        (5xx, timeout) confirms nothing and is read again with backoff, the organization's
        posts going on meanwhile; only a period to finalize holds its organization back (it
        is finalized with what Stripe held, never with what the ledger says).

        Returns what the recorded reads say per period, and the reads due now: those are
        made after the claim's posts (:meth:`_read_summaries`), so a claim's posts never
        wait for its reads; a read that differs is acted on by the next claim (its period is
        due again at once), and the reads of periods to finalize decide ``billed_value``
        in this claim (the others are made off the claim: :meth:`_read_later`)."""
        held: dict[tuple[int, datetime], Held] = {}
        every = [p for periods in plan.values() for p in periods]
        if not every:
            return held, []
        # one statement per claim: which periods have a read due (what a claim with nothing
        # to confirm costs); only those, and periods to finalize, are looked at further
        due = {
            (int(org), start)
            for org, start in self.ledger.execute(
                q.CONFIRM_DUE, ([p.org for p in every], [p.start for p in every], list(claims))
            )
        }
        look = [
            p
            for p in every
            if p.org not in outcomes
            and claims[p.org].billed
            and claims[p.org].customer
            and (p.phase == "final" or (p.org, p.start) in due)
        ]
        if not look:
            return held, []
        rows = (
            conn.cursor(row_factory=class_row(SummaryState))
            .execute(
                q.CONFIRM_STATE,
                (
                    [p.org for p in look],
                    [p.start for p in look],
                    [p.end for p in look],
                    [claims[p.org].customer for p in look],
                ),
            )
            .fetchall()
        )
        lead = self.cfg.prefinal_lead()
        reads: list[Read] = []
        not_due: list[Period] = []
        for p, row in zip(look, rows, strict=True):
            assert (row.org, row.start) == (p.org, p.start), "CONFIRM_STATE keeps the order given"
            if row.held_ts is None:  # nothing posted: Stripe holds nothing of ours
                if row.due:
                    not_due.append(p)
                continue
            if row.shared:
                # a later period posted after this one's last post within its last minute
                # (periods under two hours): a minute-aligned summary cannot tell this
                # period's value, so it is not read; finalized with the ledger's value
                if row.due:
                    not_due.append(p)
                    self.log("debug", "summary_shared", org=p.org, period=p.start)
                continue
            # the last read was of the last post
            current = row.read_ts is not None and row.read_ts == row.held_ts
            prefinal = p.end.timestamp() + self.cfg.invoice_grace - lead
            if p.phase == "final":
                if current and row.read_at is not None and row.read_at >= prefinal:
                    held[(p.org, p.start)] = Held(billed=int(row.read_stripe or 0))
                    if row.due:
                        not_due.append(p)
                else:
                    reads.append((p, row))
            elif current and row.read_stripe != row.read_ledger:
                held[(p.org, p.start)] = Held(repost=True)  # read differing, not posted yet
                if row.due:
                    not_due.append(p)
            elif row.due:
                if int(row.held_value or 0) == p.usage and row.held_status == "sent":
                    reads.append((p, row))
                else:
                    not_due.append(p)  # a post is due first; it schedules its own read
        if not_due:
            self.ledger.execute(
                q.CONFIRM_NOT_DUE, ([p.org for p in not_due], [p.start for p in not_due])
            )
        return held, reads

    def _read_summaries(
        self,
        conn: Conn,
        claims: dict[int, Claim],
        reads: list[Read],
        held: dict[tuple[int, datetime], Held],
        outcomes: dict[int, ClaimOutcome],
        calls: list[Call],
    ) -> None:
        """The summary reads :meth:`_confirm` found due, once the claim's posts are made:
        those of periods to finalize in the claim, one call per period on the posting pool,
        each paced by the rate limit; the others handed to the readers (:meth:`_read_later`,
        spare tokens only: no post waits for them). An
        organization whose post failed in this claim is not read (its reads stay due), nor a
        window a post of this claim entered after the period's last post (a later period's,
        in the same minute: the next claim sees the window shared)."""
        posted: dict[int, list[int]] = defaultdict(list)
        for call in calls:
            posted[call.org].append(call.timestamp)
        reads = [
            (p, row)
            for p, row in reads
            if p.org not in outcomes
            and not any(
                int(row.held_ts or 0) < ts < int(row.window_end or 0)
                for ts in posted.get(p.org, ())
            )
        ]
        if not reads:
            return
        meter_id = self.poster.prices.meter_id or str(self.check_meter()["id"])
        self._read_later(meter_id, claims, [r for r in reads if r[0].phase != "final"])
        final = [r for r in reads if r[0].phase == "final"]
        if not final:
            return
        lead = self.cfg.prefinal_lead()

        def read(item: Read) -> int | stripe.StripeError | None:
            p, row = item
            customer = claims[p.org].customer or ""
            try:
                return self.poster.meter.summary(
                    meter_id, customer, int(row.window_start or 0), int(row.window_end or 0)
                )
            except stripe.StripeError as exc:
                return exc

        for (p, row), got in zip(final, self.poster.pool.map(read, final), strict=True):
            assert got is not None
            self._read(conn, claims[p.org], p, row, got, lead, held, outcomes)

    def _read_later(self, meter_id: str, claims: dict[int, Claim], reads: list[Read]) -> None:
        """The reads of periods not to finalize, made off the claim: each leased (not due
        for :meth:`RelayConfig.read_lease`, for this worker or another) and handed to the
        summary readers, which take only spare tokens of the rate limit (the posts come
        first) and whose results the drains record (:meth:`collect_reads`)."""
        if not reads:
            return
        leases = {
            (int(org), start): lease
            for org, start, lease in self.ledger.execute(
                q.CONFIRM_LEASE,
                (self.cfg.read_lease, [p.org for p, _ in reads], [p.start for p, _ in reads]),
            )
        }
        for p, row in reads:
            lease = leases.get((p.org, p.start))
            if lease is not None:
                self._submit_read(meter_id, claims[p.org], p, row, lease)

    def hand_out_reads(self) -> None:
        """The summary reads due that need no claim (CONFIRM_PICK: the period's last post
        sent, not to finalize, not read differing), leased and handed to the readers without
        claiming their organizations: no lock, no subscription read, no post waits for
        them. The others (a post pending or to make again first, a period to finalize) are
        left to the claims. At most READS_QUEUED reads are handed out at a time."""
        room = READS_QUEUED - len(self.reading)
        if room <= 0:
            return
        rows = (
            self.ledger.cursor(row_factory=dict_row)
            .execute(
                q.CONFIRM_PICK,
                {
                    "invoice_grace": self.cfg.invoice_grace,
                    "limit": room,
                    "lease": self.cfg.read_lease,
                },
            )
            .fetchall()
        )
        if not rows:
            return
        meter_id = self.poster.prices.meter_id or str(self.check_meter()["id"])
        for row in rows:
            end, customer, lease = row.pop("period_end"), row.pop("customer"), row.pop("lease")
            state = SummaryState(**row)
            claim = Claim(state.org, customer, True, None, None)
            period = Period(state.org, state.start, end, "open", 0, 0, None, None, None, 0, 0, 0)
            self._submit_read(meter_id, claim, period, state, lease)

    def _submit_read(
        self, meter_id: str, claim: Claim, p: Period, row: SummaryState, lease: datetime
    ) -> None:
        """Hand one leased read to the readers (spare tokens of the rate limit only)."""
        customer = claim.customer or ""
        window = (int(row.window_start or 0), int(row.window_end or 0))

        def read() -> int | stripe.StripeError | None:
            try:
                return self.poster.meter.summary(
                    meter_id, customer, *window, spare=self.readers_stop
                )
            except stripe.StripeError as exc:
                return exc

        future = self.readers.submit(read)
        # (a read still in flight for the period from an earlier lease is left to end: its
        # result is not recorded)
        self.reading[(p.org, p.start)] = Reading(claim, p, row, lease, future)
        future.add_done_callback(self._read_ended)

    def _read_ended(self, _future: futures.Future[Any]) -> None:
        if self.on_read is not None:
            self.on_read()

    def reads_ready(self) -> bool:
        """Whether a summary read made off the claims has ended, its result not recorded."""
        return any(r.future.done() for r in self.reading.values())

    def collect_reads(self, *, block: bool = False) -> int:
        """Record the summary reads made off the claims that have ended (with ``block``, all
        of them, once they end): what each says, as :meth:`_read` does in a claim, unless
        a post made since rescheduled its period (its lease is gone: the read was of an
        earlier post). Returns how many were recorded or dropped."""
        if not self.reading:
            return 0
        if block:
            futures.wait([r.future for r in self.reading.values()])
        done = [(key, r) for key, r in self.reading.items() if r.future.done()]
        lead = self.cfg.prefinal_lead()
        for key, r in done:
            del self.reading[key]
            got = r.future.result()
            if got is None:
                continue  # stopped before reading: its lease ends, and it falls due again
            self._read(self.ledger, r.claim, r.period, r.row, got, lead, {}, {}, lease=r.lease)
        return len(done)

    def _read(
        self,
        conn: Conn,
        claim: Claim,
        p: Period,
        row: SummaryState,
        got: int | stripe.StripeError,
        lead: float,
        held: dict[tuple[int, datetime], Held],
        outcomes: dict[int, ClaimOutcome],
        *,
        lease: datetime | None = None,
    ) -> None:
        """Record one summary read of :meth:`_confirm` and what it leads to; a read made off
        the claim (``lease``) only while its lease holds."""
        h_ts, h_sent, w_start, w_end = row.held_ts, row.held_sent, row.window_start, row.window_end
        reposts, now = int(row.reposts), float(row.now)
        if not row.has_row:
            self.ledger.execute(q.CONFIRM_NEW, (p.org, p.start, p.end, claim.customer))
        if isinstance(got, stripe.StripeError):
            outcome, reason = classify(got)
            if outcome == Outcome.PERMANENT:
                outcome = Outcome.TRANSIENT  # a read refused is retried, never parks
            self.poster._outcome(outcome, reason)  # a 429 or refused key pauses every call
            # read again with backoff; the organization's posts go on meanwhile
            failures = self.read_failures.get((p.org, p.start), 0)
            self.read_failures[(p.org, p.start)] = failures + 1
            again = now + backoff(failures, self.cfg.retry_min, self.cfg.retry_max)
            self.ledger.execute(
                q.CONFIRM_FAILED,
                {
                    "org": p.org,
                    "start": p.start,
                    "end": p.end,
                    "customer": claim.customer,
                    "due": again,
                    "error": reason,
                    "lease": lease,
                },
            )
            self.log(
                "warning",
                "summary_unreadable",
                org=p.org,
                period=p.start,
                reason=reason,
                retry_in=round(again - now, 3),
            )
            if p.phase == "final" and p.org not in outcomes:
                # finalized only with what Stripe held: the organization waits for the read
                outcomes[p.org] = self._failed(conn, p.org, outcome, reason)
            return
        self.read_failures.pop((p.org, p.start), None)
        expected = int(row.expected or 0)
        final = p.phase == "final"
        prefinal = p.end.timestamp() + self.cfg.invoice_grace - lead
        fields = {
            "org": p.org,
            "period": p.start,
            "stripe": got,
            "ledger": expected,
            "window": f"{w_start}-{w_end}",
        }
        if got == expected:
            after = None if final or now >= prefinal else prefinal
            record = (got, expected, h_ts, w_start, w_end, 0, after)
            event, extra = "stripe_confirmed", {}
        elif final or now - float(h_sent or 0.0) >= self.cfg.confirm_after:
            # settled, and Stripe holds another value: lost (or refused after it was
            # accepted); posted again unless the invoice is final (billing_drift shows it)
            # (due again at once: the next claim posts it again, this one has posted)
            record = (
                got, expected, h_ts, w_start, w_end, reposts + (not final),
                None if final else now,
            )  # fmt: skip
            action = "finalize" if final else "repost"
            event, extra = "stripe_differs", {"action": action, "reposts": reposts}
        else:
            # read before the post settled (its lag allowance): not a difference yet
            again = float(h_sent or 0.0) + self.cfg.confirm_after
            record = (got, expected, None, w_start, w_end, reposts, again)
            event, extra = "stripe_lagging", {}
        cur = self.ledger.execute(q.CONFIRM_READ, (*record, p.org, p.start, lease))
        if lease is not None and cur.rowcount == 0:
            # a post made since the read was handed out rescheduled it: of an earlier post
            self.log("debug", "summary_superseded", **fields)
            return
        level = "warning" if event == "stripe_differs" else "info"
        self.log(level, event, **extra, **fields)
        if final:
            held[(p.org, p.start)] = Held(billed=got)
