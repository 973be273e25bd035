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
from datetime import datetime
from typing import Any

import psycopg
import stripe
from psycopg.rows import class_row

from active_series.install import check_version
from active_series.ratelimit import backoff
from active_series.relay import queries as q
from active_series.relay.config import (
    CONFIRM_AFTER_MAX,
    MAX_EVENT_AGE,
    RelayConfig,
    worker_conninfo,
)
from active_series.relay.confirm import (
    Claim,
    ClaimOutcome,
    Conn,
    Held,
    Period,
    Post,
    Reading,
    SummaryReads,
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
from active_series.relay.rows import Gauges, PendingPost, Refused
from active_series.relay.stripe_api import MeterError, Outcome, classify

__all__ = ["ClaimOutcome", "Relay", "Stopping"]


class Relay(SummaryReads):
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
        rechecked: set[int] = set()
        handled = 0
        while not self.stop.is_set():
            self.collect_reads()  # a read that differs makes its organization's work due
            if not only_close:
                self.hand_out_reads()  # (before WORK: a read that needs no claim gets none)
            graces = (self.cfg.grace, self.cfg.invoice_grace)
            orgs = [r[0] for r in self.ledger.execute(q.WORK, graces).fetchall()]
            if organization is None and not only_close:
                # subscriptions unread for --subscription-recheck: claimed once a drain,
                # after the organizations with work
                due = self.poster.rechecks(self.ledger, self.cfg.claim_batch)
                due = [o for o in due if o not in rechecked and o not in orgs]
                rechecked.update(due)
                orgs += due
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

    def update_gauges(self) -> None:
        row = self.ledger.cursor(row_factory=class_row(Gauges)).execute(q.GAUGES).fetchone()
        if row:
            self.metrics.outbox_depth.set(row.outbox_depth)
            self.metrics.oldest_change_age.set(row.oldest_change_age or 0.0)
            self.metrics.parked.set(row.parked)
            self.metrics.drift.set(row.drift)

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
        posts = (
            self.ledger.cursor(row_factory=class_row(SentPost))
            .execute(q.ATTEMPTS_POSTS, (keys,))
            .fetchall()
        )
        for key in sorted(set(keys) - {p.key for p in posts}):
            code = next(r.code for r in refusals if r.key == key)
            self.log("info", "refusal_unmatched", key=key, code=code)
        refused = self.poster.refused_posts(refusals, posts)
        if not refused:
            return
        rows = (
            self.ledger.cursor(row_factory=class_row(Refused))
            .execute(q.LEDGER_REFUSED_LATER, ([i for i, _ in refused], [r for _, r in refused]))
            .fetchall()
        )
        self.claims += 1
        if rows and not self.meter_still_fits(rows[0].org, rows[0].reason):
            return  # the meter could not be read: not parked (posted again at their next change)
        parked: set[int] = set()
        for org, ident, reason in ((r.org, r.identifier, r.reason) for r in rows):
            self.log("error", "refused_later", org=org, identifier=ident, reason=reason)
            if org not in parked:
                parked.add(org)
                self.ledger.execute(q.STATE_PARK, (org, reason))
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
                c.org: c
                for c in conn.cursor(row_factory=class_row(Claim)).execute(q.CLAIM, (orgs,))
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
            rows = conn.cursor(row_factory=class_row(Period)).execute(
                q.PLAN, (list(claims), self.cfg.grace, self.cfg.invoice_grace)
            )
            for period in rows.fetchall():
                plan[period.org].append(period)
            self.poster.finalize_before_start(conn, claims, plan)
            self.poster.bill_windows(self.ledger, claims, plan)
            self.poster.finalize_at_end(conn, claims, plan, outcomes)
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
        rows = (
            conn.cursor(row_factory=class_row(PendingPost))
            .execute(q.PENDING_POSTS, (list(claims),))
            .fetchall()
        )
        if not rows:
            return
        # a call of a worker whose claim a promotion or a restart took (it may be alive) may
        # still be in flight: its organization waits for that call's deadline
        busy: dict[int, float] = {}
        for row in rows:
            until = row.in_flight_until
            if until is not None:
                busy[row.org] = max(until, busy.get(row.org, until))
        if busy:
            conn.execute(q.STATE_DEFER_UNTIL, (list(busy), [math.ceil(t) for t in busy.values()]))
            for org, until in busy.items():
                outcomes[org] = ClaimOutcome.DEFERRED
                self.log("info", "call_in_flight_elsewhere", org=org, until=until)
        resend = [row for row in rows if row.org not in busy]
        if not resend:
            return
        deadlines = self._leases([r.org for r in resend], [r.identifier for r in resend])
        calls = [
            Call(
                r.org, r.customer, r.value, r.timestamp, r.identifier, deadlines[r.org], resend=True
            )
            for r in resend
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
        self.ledger.execute(
            q.LEDGER_FAILED_NEW, (claim.org, claim.customer, p.start, p.end, p.usage, ts, reason)
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
            conn.execute(q.STATE_PARK, (org, reason))
            self.metrics.posts.labels("parked").inc()
            self.log("error", "parked", org=org, reason=reason)
            return ClaimOutcome.PARKED
        if outcome in (Outcome.RATE_LIMITED, Outcome.GLOBAL, Outcome.NOT_SENT):
            conn.execute(q.STATE_DEFER, (org, max(self.poster.pause_until, now + 1.0)))
            paused = outcome != Outcome.RATE_LIMITED
            return ClaimOutcome.PAUSED if paused else ClaimOutcome.RATE_LIMITED
        row = conn.execute(q.STATE_COUNT_ATTEMPT, (org,)).fetchone()
        attempts = row[0] if row and row[0] is not None else 1
        retry_at = now + backoff(attempts - 1, self.cfg.retry_min, self.cfg.retry_max)
        conn.execute(q.STATE_DEFER, (org, retry_at))
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
