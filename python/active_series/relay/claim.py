"""Relaying organizations in batches: :class:`Relay` claims them and posts what is due.

How a batch of organizations is relayed (a *claim*), in one transaction on the claim
connection, which holds each claimed organization's ``_relay_state`` row lock (``FOR UPDATE
SKIP LOCKED``) until it commits or the worker dies, so at most one Stripe call per customer
is in flight across all workers:

1. lock the organizations another worker does not hold; read their billing accounts and
   newest outbox ids (``_relay_claim``);
2. resend every ``pending`` ledger row as it was (same identifier, value and timestamp;
   a fresh idempotency key, as Stripe replays a key's first answer, a 500 included): the
   outcome of that call is unknown (a worker was killed, or Stripe kept failing);
3. align billing periods with the Stripe subscriptions (when the known one ended);
4. read every unfinalized period of each organization (``_relay_plan``): its exact usage,
   what Stripe holds for it per the ledger, the timestamp of its next post and its phase.
   Every period whose usage differs from what Stripe holds is posted, whatever the other
   periods do: a new period is posted as soon as it changes, and an ended one keeps
   taking corrections until its invoice is final. Timestamps increase strictly within
   each period (``_relay_timestamp``), which is all ``last`` aggregation needs;
5. close the periods whose grace is over once Stripe holds their final value, and
   finalize those whose invoice grace is over (``billing_drift`` shows any difference
   from then on);
6. delete the outbox rows up to the ids read in 1 and commit.

The calls of one organization are made one after the other; those of different
organizations run at once on a pool of ``concurrency`` threads (:mod:`.posting`); the
database work stays on this thread, a few statements per batch. Every post is written
``pending`` on a second, autocommit connection and committed before its call (on v2
streams request by request, so the rows of one request are written while the previous
request is in flight), then marked ``sent`` (a duplicate identifier counts as sent),
``failed`` (a permanent refusal, which parks the organization) or left pending (no answer:
resent by the next claim).
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

import psycopg
import stripe

from active_series.install import check_version
from active_series.ratelimit import backoff
from active_series.relay import queries as q
from active_series.relay.config import (
    CONFIRM_AFTER_MAX,
    MAX_EVENT_AGE,
    READS_QUEUED,
    RelayConfig,
    worker_conninfo,
)
from active_series.relay.observe import Log, Metrics
from active_series.relay.posting import (
    STREAM_BATCH,
    Call,
    Poster,
    Results,
    SentPost,
    Stopping,
    by_org,
    pack,
)

__all__ = ["ClaimOutcome", "Relay", "Stopping"]
from active_series.relay.stripe_api import MeterError, Outcome, classify

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


# a period to post now: the claim, the period and its event timestamp
Post = tuple[Claim, Period, int]
# a summary read due: the period and its row of CONFIRM_STATE
Read = tuple[Period, tuple[Any, ...]]


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
    row: tuple[Any, ...]
    lease: datetime
    future: futures.Future[int | stripe.StripeError | None]


class Relay:
    """Relays organizations; owns the claim and ledger connections and the posting pool."""

    def __init__(
        self,
        cfg: RelayConfig,
        log: Log,
        metrics: Metrics,
        stop: threading.Event | None = None,
    ) -> None:
        self.cfg = cfg
        self.log = log
        self.metrics = metrics
        self.stop = stop or threading.Event()
        self.poster = Poster(cfg, log, metrics, self.note_attempts)
        self.claim_conn: Conn | None = None
        self.ledger_conn: Conn | None = None
        self.wake_reason = "start"
        self.refusals_due = 0.0  # when the Events API is read for refusals next (monotonic)
        self.claims = 0  # claims begun (and reads of refusals): the meter is reread once each
        self.meter_read: tuple[int, bool] = (-1, False)  # (claim, whether it could be read)
        # with --once and close-period: the periods whose posts scheduled a summary read
        # (await_confirmations waits for those reads); None: not collected (a running worker)
        self.awaiting: set[tuple[int, datetime]] | None = None
        # failed summary reads in a row per period, for their backoff (not the organization's)
        self.read_failures: dict[tuple[int, datetime], int] = {}
        # the summary reads made off the claims, by period, until a drain records them; their
        # threads wait for spare tokens of the rate limit, and stop waiting at shutdown
        self.readers = futures.ThreadPoolExecutor(
            max_workers=max(1, cfg.concurrency), thread_name_prefix="summary-read"
        )
        self.readers_stop = threading.Event()
        self.reading: dict[tuple[int, datetime], Reading] = {}
        # called (on a reader's thread) when a read ends: the daemon wakes up to record it
        self.on_read: Callable[[], None] | None = None

    # ------------------------------------------------------------------ connections
    def connect(self) -> None:
        self.close()
        self.ledger_conn = psycopg.connect(
            worker_conninfo(self.cfg.dsn),
            autocommit=True,
            connect_timeout=10,
            application_name="active-series-worker-ledger",
        )
        check_version(self.ledger_conn)
        self.claim_conn = psycopg.connect(
            worker_conninfo(self.cfg.dsn),
            autocommit=False,
            connect_timeout=10,
            application_name="active-series-worker-claim",
        )

    def close(self) -> None:
        for conn in (self.claim_conn, self.ledger_conn):
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.close()
        self.claim_conn = self.ledger_conn = None

    def shutdown(self) -> None:
        self.close()
        self.readers_stop.set()
        self.readers.shutdown(wait=False, cancel_futures=True)
        self.poster.shutdown()

    @property
    def ledger(self) -> Conn:
        assert self.ledger_conn is not None, "not connected"
        return self.ledger_conn

    @property
    def claim(self) -> Conn:
        assert self.claim_conn is not None, "not connected"
        return self.claim_conn

    # ------------------------------------------------------------------ drains
    def drain(self, *, only_close: bool = False, organization: int | None = None) -> int:
        """Relay every organization with work due until none is left; returns how many
        claims were made. Organizations another worker holds are left to it. Raises
        SchemaVersionError once the schema is no longer this program's (upgraded under a
        running worker): a worker never relays with another version's rules."""
        check_version(self.ledger)
        leave: set[int] = set()
        rounds: dict[int, int] = defaultdict(int)
        handled = 0
        while not self.stop.is_set():
            self.collect_reads()  # a read that differs makes its organization's work due
            if not only_close:
                self.hand_out_reads()  # (before WORK: a read that needs no claim gets none)
            graces = (self.cfg.grace, self.cfg.invoice_grace)
            orgs = [r[0] for r in self.ledger.execute(q.WORK, graces).fetchall()]
            if organization is not None:
                orgs = [o for o in orgs if o == organization]
            todo = [o for o in orgs if o not in leave]
            if not todo:
                break
            size = self.cfg.claim_batch
            for i in range(0, len(todo), size):
                if self.stop.is_set():
                    break
                self.poster.wait_pause(self.stop)
                batch = todo[i : i + size]
                outcomes = self.process(batch, only_close=only_close)
                for org in batch:
                    outcome = outcomes.get(org, ClaimOutcome.LOCKED)
                    handled += outcome != ClaimOutcome.LOCKED
                    rounds[org] += 1
                    # locked: another worker has it; close-only leaves the outbox alone; a
                    # stream of changes must not starve the other organizations
                    if outcome == ClaimOutcome.LOCKED or only_close or rounds[org] >= 20:
                        leave.add(org)
        # after the claims: a burst's posts do not wait for this read of the Events API
        self.record_refusals()
        self.update_gauges()
        return handled

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
            row = self.ledger.execute(q.CONFIRM_WAITING, args).fetchone()
            waiting = int(row[0]) if row else 0
            if not waiting:
                break
            wait = max(float(row[1] or 0.0) if row else 0.0, 0.0)
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

    def update_gauges(self) -> None:
        row = self.ledger.execute(q.GAUGES).fetchone()
        if row:
            self.metrics.outbox_depth.set(row[0])
            self.metrics.oldest_change_age.set(row[1] or 0.0)
            self.metrics.parked.set(row[2])
            self.metrics.drift.set(row[3])

    def next_wakeup(self) -> float | None:
        graces = (self.cfg.grace, self.cfg.invoice_grace)
        row = self.ledger.execute(q.NEXT_WAKEUP, graces).fetchone()
        return None if row is None or row[0] is None else float(row[0])

    def note_attempts(self, calls: list[Call]) -> None:
        """The posts each request about to be made carries, by its idempotency key
        (``_post_attempt``, committed before the request): Stripe's error reports name a
        refused event by its request's key."""
        keys = [c.key for c in calls if c.key]
        if keys:
            self.ledger.execute(q.ATTEMPTS_NEW, (keys, [c.identifier for c in calls if c.key]))

    def record_refusals(self) -> None:
        """Posts Stripe refused after accepting them (it validates meter events later, in
        both APIs): the samples of its error reports name requests by idempotency key, and
        the posts those carried (:meth:`Poster.refused_posts`) are marked failed, their
        organizations parked with the reason (relay_failures shows both; relay_status is not
        in sync). Read at most once per poll interval: drains can follow each other
        closely."""
        now = time.monotonic()
        if now < self.refusals_due:
            return
        self.refusals_due = now + self.cfg.poll_interval
        self.ledger.execute(q.ATTEMPTS_PRUNE)
        refusals = self.poster.refusals()
        if not refusals:
            return
        keys = sorted({r.key for r in refusals if r.key})
        posts = [
            SentPost(key, org, ident, cus, int(ts), float(at))
            for key, org, ident, cus, ts, at in self.ledger.execute(q.ATTEMPTS_POSTS, (keys,))
        ]
        for key in sorted(set(keys) - {p.key for p in posts}):
            code = next(r.code for r in refusals if r.key == key)
            self.log("info", "refusal_unmatched", key=key, code=code)
        refused = self.poster.refused_posts(refusals, posts)
        if not refused:
            return
        rows = self.ledger.execute(
            q.LEDGER_REFUSED_LATER, ([i for i, _ in refused], [r for _, r in refused])
        ).fetchall()
        self.claims += 1
        if rows and not self.meter_still_fits(rows[0][0], rows[0][2]):
            return  # the meter could not be read: not parked (posted again at their next change)
        parked: set[int] = set()
        for org, ident, reason in rows:
            self.log("error", "refused_later", org=org, identifier=ident, reason=reason)
            if org not in parked:
                parked.add(org)
                self.ledger.execute(q.STATE_PARK, (reason, org))
                self.metrics.posts.labels("parked").inc()

    # ------------------------------------------------------------------ one batch
    def process(self, orgs: list[int], *, only_close: bool = False) -> dict[int, ClaimOutcome]:
        """One claim of a batch of organizations; returns what happened to each claimed."""
        conn = self.claim
        posted: list[dict[str, Any]] = []
        self.claims += 1
        try:
            return self._claim(conn, orgs, only_close, posted)
        finally:
            # written once the claim's transaction ended: a burst's hundreds of lines do not
            # hold back the commit that shows its organizations in sync
            for fields in posted:
                self.log("info", "posted", **fields)

    def _claim(
        self, conn: Conn, orgs: list[int], only_close: bool, posted: list[dict[str, Any]]
    ) -> dict[int, ClaimOutcome]:
        with conn.transaction():
            claims = {
                org: Claim(org, cus, billed, max_id, oldest)
                for org, cus, billed, max_id, oldest in conn.execute(q.CLAIM, (orgs,))
            }
            if not claims:
                return {}
            outcomes: dict[int, ClaimOutcome] = {}
            self._resend_pending(conn, claims, outcomes)
            billed = [c for c in claims.values() if c.billed and c.org not in outcomes]
            if self.cfg.sync_subscriptions:
                self.poster.sync_subscriptions(self.ledger, billed)
            # the subscriptions' recorded edges, whichever worker read them last
            self.poster.load_edges(self.ledger, billed)
            plan: dict[int, list[Period]] = defaultdict(list)
            rows = conn.execute(q.PLAN, (list(claims), self.cfg.grace, self.cfg.invoice_grace))
            for row in rows.fetchall():
                org, start, end, phase, usage, held, status, ts, due, first, last, now = row
                period = Period(
                    org, start, end, phase, int(usage), int(held or 0), status,
                    None if ts is None else int(ts), None if due is None else int(due),
                    int(first), int(last), int(now),
                )  # fmt: skip
                plan[period.org].append(period)
            self.poster.bill_windows(self.ledger, claims, plan)
            unpostable: set[tuple[int, datetime]] = set()
            held, reads = self._confirm(conn, claims, plan, outcomes)
            posts = self._posts(claims, plan, outcomes, only_close, unpostable, held)
            calls, results = self._post(posts)
            self._record(conn, results)
            for org, org_calls in by_org(calls, lambda call: call.org).items():
                failed = [
                    results[c.identifier]
                    for c in org_calls
                    if not results[c.identifier][0].accepted
                ]
                if failed:
                    outcomes[org] = self._failed(conn, org, *failed[0])
            # the summaries read after the posts: no post waits for a read
            self._read_summaries(conn, claims, reads, held, outcomes, calls)
            self._finish(conn, claims, plan, calls, outcomes, only_close, unpostable, posted, held)
            return outcomes

    def _resend_pending(
        self, conn: Conn, claims: dict[int, Claim], outcomes: dict[int, ClaimOutcome]
    ) -> None:
        """Step 2: resend the posts whose outcome is unknown, whatever the organization's
        plan is now; an organization whose resend fails goes no further in this claim."""
        rows = conn.execute(q.PENDING_POSTS, (list(claims),)).fetchall()
        if not rows:
            return
        # a call of a worker whose claim a promotion or a restart took (it may be alive) may
        # still be in flight: its organization waits for that call's deadline
        busy: dict[int, float] = {}
        for org, *_, until in rows:
            if until is not None:
                busy[org] = max(until, busy.get(org, until))
        if busy:
            conn.execute(q.STATE_DEFER_UNTIL, (list(busy), [math.ceil(t) for t in busy.values()]))
            for org, until in busy.items():
                outcomes[org] = ClaimOutcome.DEFERRED
                self.log("info", "call_in_flight_elsewhere", org=org, until=until)
        resend = [row[:5] for row in rows if row[0] not in busy]
        if not resend:
            return
        deadlines = self._leases([org for org, *_ in resend], [ident for *_, ident in resend])
        calls = [
            Call(org, cus, value, ts, ident, deadlines[org], resend=True)
            for org, cus, value, ts, ident in resend
        ]
        results = self.poster.post(calls)
        self._record(conn, results)
        for org, org_calls in by_org(calls, lambda call: call.org).items():
            for call in org_calls:
                outcome, reason = results[call.identifier]
                if not outcome.accepted:
                    outcomes[org] = self._failed(conn, org, outcome, reason)
                    break
                self.log(
                    "info",
                    "resent",
                    org=org,
                    customer=call.customer,
                    value=call.value,
                    timestamp=call.timestamp,
                )

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
        rows = conn.execute(
            q.CONFIRM_STATE,
            (
                [p.org for p in look],
                [p.start for p in look],
                [p.end for p in look],
                [claims[p.org].customer for p in look],
            ),
        ).fetchall()
        lead = self.cfg.prefinal_lead()
        reads: list[Read] = []
        not_due: list[Period] = []
        for p, row in zip(look, rows, strict=True):
            assert (row[0], row[1]) == (p.org, p.start), "CONFIRM_STATE keeps the order given"
            _, _, h_ts, h_value, h_status, _, _, _, _, has_row, due, c_ts, c_stripe = row[:13]
            c_ledger, c_read = row[13], row[14]
            if h_ts is None:  # nothing posted: Stripe holds nothing of ours
                if due:
                    not_due.append(p)
                continue
            if row[17]:
                # a later period posted after this one's last post within its last minute
                # (periods under two hours): a minute-aligned summary cannot tell this
                # period's value, so it is not read; finalized with the ledger's value
                if due:
                    not_due.append(p)
                    self.log("debug", "summary_shared", org=p.org, period=p.start)
                continue
            current = c_ts is not None and c_ts == h_ts  # the last read was of the last post
            prefinal = p.end.timestamp() + self.cfg.invoice_grace - lead
            if p.phase == "final":
                if current and c_read is not None and c_read >= prefinal:
                    held[(p.org, p.start)] = Held(billed=int(c_stripe))
                    if due:
                        not_due.append(p)
                else:
                    reads.append((p, row))
            elif current and c_stripe != c_ledger:
                held[(p.org, p.start)] = Held(repost=True)  # read differing, not posted yet
                if due:
                    not_due.append(p)
            elif due:
                if int(h_value) == p.usage and h_status == "sent":
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
            and not any(int(row[2]) < ts < int(row[7]) for ts in posted.get(p.org, ()))
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
                return self.poster.meter.summary(meter_id, customer, int(row[6]), int(row[7]))
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
        rows = self.ledger.execute(
            q.CONFIRM_PICK,
            {
                "invoice_grace": self.cfg.invoice_grace,
                "limit": room,
                "lease": self.cfg.read_lease,
            },
        ).fetchall()
        if not rows:
            return
        meter_id = self.poster.prices.meter_id or str(self.check_meter()["id"])
        for org, start, end, customer, lease, *state in rows:
            claim = Claim(int(org), customer, True, None, None)
            period = Period(int(org), start, end, "open", 0, 0, None, None, None, 0, 0, 0)
            self._submit_read(meter_id, claim, period, (org, start, *state), lease)

    def _submit_read(
        self, meter_id: str, claim: Claim, p: Period, row: tuple[Any, ...], lease: datetime
    ) -> None:
        """Hand one leased read to the readers (spare tokens of the rate limit only)."""
        customer = claim.customer or ""
        window = (int(row[6]), int(row[7]))

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
        row: tuple[Any, ...],
        got: int | stripe.StripeError,
        lead: float,
        held: dict[tuple[int, datetime], Held],
        outcomes: dict[int, ClaimOutcome],
        *,
        lease: datetime | None = None,
    ) -> None:
        """Record one summary read of :meth:`_confirm` and what it leads to; a read made off
        the claim (``lease``) only while its lease holds."""
        h_ts, h_sent, w_start, w_end, expected = row[2], row[5], row[6], row[7], row[8]
        has_row, reposts, now = row[9], int(row[15]), float(row[16])
        if not has_row:
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
        expected = int(expected or 0)
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
        elif final or now - float(h_sent) >= self.cfg.confirm_after:
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
            again = float(h_sent) + self.cfg.confirm_after
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

    def _posts(
        self,
        claims: dict[int, Claim],
        plan: dict[int, list[Period]],
        outcomes: dict[int, ClaimOutcome],
        only_close: bool,
        unpostable: set[tuple[int, datetime]],
        held: dict[tuple[int, datetime], Held],
    ) -> list[Post]:
        """Step 4: the periods to post now (those Stripe's summary showed to differ from
        the ledger's last post included: posted again). Records values that no timestamp
        is left for as failed ledger rows (in ``unpostable``) and defers organizations
        whose next timestamp is still ahead."""
        posts: list[Post] = []
        defer: dict[int, int] = {}
        for org, periods in plan.items():
            claim = claims[org]
            if org in outcomes or not claim.billed:
                continue
            ended = self.poster.ended.get(org)
            for p in periods:
                # final: never posted again; ended: waits for its final post at end + grace
                if p.phase in ("final", "ended") or (only_close and p.phase != "closing"):
                    continue
                if ended is not None and (p.next_ts is None or p.next_ts >= ended):
                    # the subscription was canceled: Stripe bills nothing after its end, and
                    # what it held then was its final invoice's; closed as it is
                    unpostable.add((org, p.start))
                    continue
                check = held.get((org, p.start))
                lost = check is not None and check.repost
                if p.held == p.usage and p.held_status != "pending" and not lost:
                    continue
                if p.next_ts is None or p.due is None:
                    continue  # no second of the tail to post in: waits for the final post
                ts = p.next_ts
                if ts > p.last_second or ts < p.now - MAX_EVENT_AGE:
                    self._unpostable(claim, p, ts)
                    unpostable.add((org, p.start))
                elif p.due > p.now:
                    defer[org] = max(p.due, defer.get(org, p.due))
                    outcomes[org] = ClaimOutcome.DEFERRED
                else:
                    posts.append((claim, p, ts))
        if defer:
            self.claim.execute(q.STATE_DEFER_UNTIL, (list(defer), list(defer.values())))
        return [post for post in posts if post[0].org not in outcomes]

    def _unpostable(self, claim: Claim, p: Period, ts: int) -> None:
        assert claim.customer is not None
        reason = (
            "cannot post this value: no timestamp inside the period is left after the last "
            f"event ({ts - 1}) within Stripe's 35 days"
        )
        ident = self._identifier(claim.customer, ts, p.usage)
        self.ledger.execute(
            q.LEDGER_FAILED_NEW,
            (claim.org, claim.customer, p.start, p.end, p.usage, ts, ident, reason),
        )
        self.log("error", "unpostable", org=claim.org, period=p.start, value=p.usage)

    def _post(self, posts: list[Post]) -> tuple[list[Call], Results]:
        """Write the posts pending and make their calls. On v2 streams each request's rows
        are written, committed, and the request handed to the pool before the next
        request's rows are written: the rows of one overlap the Stripe call of another."""
        if self.poster.stream is None:
            calls = self._write_pending(posts)
            return calls, self.poster.post(calls)
        groups = list(by_org(posts, lambda post: post[0].org).values())
        calls, requests = [], []
        try:
            for request in pack(groups, STREAM_BATCH):
                written = self._write_pending(request)
                calls += written
                requests.append(self.poster.submit(written))
        except BaseException:
            # (the database failed mid-way) no call of this claim outlives it: the next
            # claim resends the pending posts, and must not while these are in flight
            futures.wait(requests)
            raise
        return calls, self.poster.collect(requests)

    def _write_pending(self, posts: list[Post]) -> list[Call]:
        """Every post of the batch written pending, committed before any call: a worker
        killed during a call resends exactly that post."""
        if not posts:
            return []
        columns: list[list[Any]] = [[], [], [], [], [], []]
        for claim, p, ts in posts:
            for column, value in zip(
                columns,
                (claim.org, claim.customer, p.start, p.end, p.usage, ts),
                strict=True,
            ):
                column.append(value)
        columns.append(self._lease_seconds(columns[0]))
        written = time.monotonic()  # before the row: its deadline is no earlier than the call's
        idents = [str(r[0]) for r in self.ledger.execute(q.LEDGER_PENDING, columns).fetchall()]
        return [
            Call(
                claim.org,
                claim.customer or "",
                p.usage,
                ts,
                ident,
                written + lease,
                period_start=p.start,
            )
            for (claim, p, ts), ident, lease in zip(posts, idents, columns[6], strict=True)
        ]

    def _leases(self, orgs: list[int], idents: list[str]) -> dict[int, float]:
        """Give pending posts about to be resent their deadline (committed before the
        calls); returns each organization's, in ``time.monotonic()`` seconds."""
        leases = self._lease_seconds(orgs)
        written = time.monotonic()
        self.ledger.execute(q.LEDGER_IN_FLIGHT, (idents, leases))
        return {org: written + lease for org, lease in zip(orgs, leases, strict=True)}

    def _lease_seconds(self, orgs: list[int]) -> list[float]:
        """Per post (given by its organization): seconds from writing it to its deadline,
        from how many calls its organization makes in this round."""
        calls = Counter(orgs)
        return [self.cfg.lease(calls[org]) for org in orgs]

    def _record(self, conn: Conn, results: Results) -> None:
        """The ledger outcome of every call of a round, in one statement: sent, failed
        (refused for good) or still pending (no answer, or not made; resent by a later
        claim). No call of the round is in flight any more. The periods of the posts sent
        get their summary read once the posts have settled (``--confirm-after``)."""
        if not results:
            return
        rows = list(results.items())
        sent = [i for i, (o, _) in rows if o.accepted]
        self.ledger.execute(
            q.LEDGER_OUTCOMES,
            (
                [i for i, _ in rows],
                [o != Outcome.NOT_SENT for _, (o, _) in rows],
                [
                    "sent" if o.accepted else "failed" if o == Outcome.PERMANENT else "pending"
                    for _, (o, _) in rows
                ],
                [r or None for _, (_, r) in rows],
            ),
        )
        if sent:
            scheduled = self.ledger.execute(
                q.CONFIRM_SCHEDULE,
                {
                    "idents": sent,
                    "after": self.cfg.confirm_after,
                    "longest": CONFIRM_AFTER_MAX,
                },
            ).fetchall()
            if self.awaiting is not None:
                self.awaiting.update((int(org), start) for org, start in scheduled)

    def _finish(
        self,
        conn: Conn,
        claims: dict[int, Claim],
        plan: dict[int, list[Period]],
        calls: list[Call],
        outcomes: dict[int, ClaimOutcome],
        only_close: bool,
        unpostable: set[tuple[int, datetime]],
        log_posted: list[dict[str, Any]],
        checks: dict[tuple[int, datetime], Held],
    ) -> None:
        """Steps 5 and 6 for the organizations that got this far. A period whose final
        value cannot be posted is closed all the same (relay_failures shows why). Each
        organization posted gets its log line's fields in ``log_posted``."""
        posted = {c.org: c for c in calls}
        last_ts: dict[int, int] = {}
        for c in calls:
            last_ts[c.org] = max(c.timestamp, last_ts.get(c.org, c.timestamp))
        sent: dict[tuple[int, datetime | None], int] = {
            (c.org, c.period_start): c.value for c in calls
        }
        done_orgs, done_ts, outbox_orgs, outbox_ids = [], [], [], []
        for org, claim in claims.items():
            if org in outcomes:
                continue
            for p in plan.get(org, []):
                held = sent.get((org, p.start), p.held)
                final_known = held == p.usage or (org, p.start) in unpostable
                if p.phase == "closing" and (final_known or not claim.billed):
                    conn.execute(q.CLOSE_PERIOD, (org, p.start))
                    self.metrics.periods_closed.inc()
                    self.log("info", "period_closed", org=org, period=p.start, value=held)
                elif p.phase == "final":
                    check = checks.get((org, p.start))
                    if check is not None and check.billed is not None:
                        held = check.billed  # what Stripe held, read from its summary
                    billed = held if claim.billed else None
                    ended = self.poster.ended.get(org)
                    if ended is not None and p.first_second >= ended:
                        billed = None  # begun after the subscription ended: billed to no one
                    conn.execute(
                        q.FINALIZE_PERIOD, {"billed": billed, "org": org, "start": p.start}
                    )
                    self.log(
                        "info",
                        "period_finalized",
                        org=org,
                        period=p.start,
                        billed=billed,
                        usage=p.usage,
                    )
            outcomes[org] = ClaimOutcome.POSTED if org in posted else ClaimOutcome.DONE
            done_orgs.append(org)
            done_ts.append(last_ts.get(org))
            if claim.max_outbox is not None and not only_close:
                outbox_orgs.append(org)
                outbox_ids.append(claim.max_outbox)
            if org in posted:
                call = posted[org]
                if claim.oldest_change is not None:
                    self.metrics.lag.set(max(0.0, time.time() - claim.oldest_change))
                log_posted.append(
                    {
                        "org": org,
                        "customer": call.customer,
                        "period": call.period_start,
                        "value": call.value,
                        "timestamp": call.timestamp,
                        "wake": self.wake_reason,
                    }
                )
        if outbox_orgs:
            conn.execute(q.NOTE_DRIFT, (outbox_orgs,))
            conn.execute(q.DELETE_OUTBOX, (outbox_orgs, outbox_ids))
        if done_orgs:
            conn.execute(q.STATE_DONE, (done_orgs, done_ts))

    def _failed(self, conn: Conn, org: int, outcome: Outcome, reason: str) -> ClaimOutcome:
        """Record a failed call on the organization's state (in the claim transaction)."""
        now = time.time()
        if outcome == Outcome.PERMANENT and not self.meter_still_fits(org, reason):
            outcome = Outcome.TRANSIENT  # the meter could not be read: retried, not parked
        if outcome == Outcome.PERMANENT:
            conn.execute(q.STATE_PARK, (reason, org))
            self.metrics.posts.labels("parked").inc()
            self.log("error", "parked", org=org, reason=reason)
            return ClaimOutcome.PARKED
        if outcome in (Outcome.RATE_LIMITED, Outcome.GLOBAL, Outcome.NOT_SENT):
            conn.execute(q.STATE_DEFER, (max(self.poster.pause_until, now + 1.0), org))
            paused = outcome != Outcome.RATE_LIMITED
            return ClaimOutcome.PAUSED if paused else ClaimOutcome.RATE_LIMITED
        row = conn.execute(q.STATE_COUNT_ATTEMPT, (org,)).fetchone()
        attempts = row[0] if row else 1
        retry_at = now + backoff(attempts - 1, self.cfg.retry_min, self.cfg.retry_max)
        conn.execute(q.STATE_DEFER, (retry_at, org))
        self.metrics.posts.labels("retried").inc()
        self.log(
            "warning",
            "retry_later",
            org=org,
            attempts=attempts,
            reason=reason,
            retry_in=retry_at - now,
        )
        return ClaimOutcome.RETRY

    # ------------------------------------------------------------------ the meter
    def check_meter(self) -> dict[str, Any]:
        """Read the meter the worker posts to; returns it if it fits (formula ``last``, the
        configured payload keys). Raises MeterError, or stripe.StripeError when it cannot
        be read."""
        meter = self.poster.meter.meter()
        self.poster.prices.meter_id = str(meter["id"])
        return meter

    def meter_still_fits(self, org: int, reason: str) -> bool:
        """Before parking an organization for a permanent refusal: read the meter again (once
        per claim), as the refusal may be the meter's doing (deactivated, or replaced by one
        with another formula or other payload keys) rather than the organization's. One that
        no longer fits stops the worker (MeterError, exit 8) without parking anyone: a claim's
        transaction rolls back, and the refused posts, recorded failed, are posted again
        once the meter is fixed and the worker started again (refusals read after their claim
        ended: at the organization's next change, or its period's close). False: the meter
        could not be read (the organization is retried rather than parked)."""
        claim, readable = self.meter_read
        if claim == self.claims:
            return readable
        try:
            meter = self.check_meter()
        except MeterError as exc:
            self.log("error", "refused_by_meter", org=org, reason=reason, meter=str(exc))
            raise
        except stripe.StripeError as exc:
            self.meter_read = (self.claims, False)
            self.log("warning", "meter_unreadable", org=org, reason=classify(exc)[1])
            return False
        self.meter_read = (self.claims, True)
        self.log("info", "meter_fits", org=org, meter=meter["id"], refusal=reason)
        return True

    def _identifier(self, customer: str, ts: int, value: int) -> str:
        """A post's identifier, as the schema defines it (``_relay_identifier``)."""
        row = self.ledger.execute(q.IDENTIFIER, (customer, ts, value)).fetchone()
        assert row is not None
        return str(row[0])
