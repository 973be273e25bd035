"""``active-series demo``: the whole pipeline, live, on this machine.

1. starts the embedded PostgreSQL cluster (``.active-series/db``; as the postgres user when
   root) and installs the schema into a fresh database ``active_series_demo``;
2. starts the Stripe emulator (a thread of this process) and creates, through the ``stripe``
   SDK, a meter (formula ``last``), a tiered graduated Pro price (a flat base fee for the
   first series, then per-series step-ups) and one customer and subscription per
   organization, with short billing periods (``metadata[emulator_period_seconds]``);
3. starts ``active-series worker`` as a subprocess (:mod:`.worker_process`);
4. simulates organizations reporting benchmark results with plain SQL ``INSERT``s, so that
   period rollover, period close and the final posts happen live;
5. prints, per organization and period: the exact count (``period_usage``), the value
   Stripe holds (the meter's aggregate over the period) and the invoice amount from the
   tiered price; writes ``summary.json`` and a PNG chart of active series over time: per
   period, the count and what Stripe holds post by post, until the final post made after
   the period's end, with the worker's tail shaded (its data in ``chart.json``).

Everything it started (worker, emulator, cluster) is stopped on the way out, also on
Ctrl-C or SIGTERM; the worker also gets SIGTERM if this process dies.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import stripe
from psycopg import sql

from active_series import billing_setup
from active_series.devtools import demo_queries as q
from active_series.devtools.cluster import Cluster
from active_series.devtools.localdb import cluster_call, embedded_cluster, ensure_database
from active_series.devtools.localdb import data_dir as default_data_dir
from active_series.devtools.stripe_emulator import (
    EmulatorControl,
    StripeEmulatorServer,
    run_in_thread,
)
from active_series.devtools.worker_process import WorkerProcess
from active_series.errors import CommandError, ExitCode
from active_series.relay.stripe_api import STRIPE_API_VERSION
from active_series.text import table_lines

API_KEY = "sk_test_active_series_demo"
EVENT_NAME = "active_series"
DEMO_DB = "active_series_demo"
DEFAULT_OUT = ".active-series/demo"
GRACE = 1.0  # seconds after a period's end before its final value is posted

# (testbed, benchmark, measure) of series number i: testbeds fill up first
TESTBEDS = ["linux-x86", "macos-arm"]
BENCHMARKS = [f"bench_{name}" for name in ("parse", "lex", "plan", "sort", "join", "hash")]
BENCHMARKS += [f"bench_{name}" for name in ("scan", "index", "vacuum", "copy")]
MEASURES = ["latency", "throughput"]
SERIES = len(TESTBEDS) * len(BENCHMARKS) * len(MEASURES)

# Pro: $29 for up to 10 series, then $1.00 per series up to 25, then $0.50 each
TIERS: list[dict[str, Any]] = [
    {"up_to": 10, "flat_amount": 2900, "unit_amount": 0},
    {"up_to": 25, "unit_amount": 100},
    {"up_to": "inf", "unit_amount": 50},
]


def tail_of(first_second: int, last_second: int) -> tuple[int, int]:
    """The worker's tail of the period made of the seconds ``first_second..last_second``
    (the rule of ``active_series._relay_timestamp``, README section Worker): the second its
    tail starts (its last min(1 hour, half the period, at least 1 s) seconds, where time
    runs at half speed) and the first second kept for the posts after the period's end (the
    tail's second half; all of a tail under a minute, where a change waits for the final
    post)."""
    reserve = max(1, min(3600, (last_second - first_second + 1) // 2))
    tail = last_second - reserve + 1
    return tail, tail + (reserve // 2 if reserve >= 60 else 0)


def held_over_time(events: list[dict[str, Any]]) -> list[tuple[dict[str, Any], int]]:
    """Per meter event of one period, in the order Stripe received them: the event and the
    value Stripe holds for the period once it has it (``last``: the value of the greatest
    timestamp; of events with the same timestamp, the one received last)."""
    out: list[tuple[dict[str, Any], int]] = []
    best: dict[str, Any] | None = None
    for event in sorted(events, key=lambda e: int(e["seq"])):
        if best is None or int(event["timestamp"]) >= int(best["timestamp"]):
            best = event
        out.append((event, int(best["value"])))
    return out


def _growing(period: int, progress: float) -> int:
    """A team that adds benchmarks every period: 6, 12, 18, ... series, reached gradually."""
    return max(1, math.ceil((6 + 6 * period) * min(1.0, progress + 0.2)))


def _steady(period: int, progress: float) -> int:
    return 12


def _spiky(period: int, progress: float) -> int:
    """A sweep over every benchmark in odd periods, a handful otherwise."""
    return 30 if period % 2 else 4


@dataclass
class Org:
    name: str
    scenario: Callable[[int, float], int]
    offset: int = 0  # the steady team rotates which series it reports
    id: int = 0
    customer: str = ""
    subscription: str = ""
    testbeds: list[int] = field(default_factory=list)
    benchmarks: list[int] = field(default_factory=list)
    measures: list[int] = field(default_factory=list)
    project: int = 0
    first_start: float = 0.0


def organizations() -> list[Org]:
    return [Org("acme", _growing), Org("globex", _steady, offset=4), Org("initech", _spiky)]


# ------------------------------------------------------------------------------ processes


def start_worker(dsn: str, api_base: str, log_path: Path) -> WorkerProcess:
    """``active-series worker`` for the demo, in its own session, logging to a file."""
    return WorkerProcess(
        dsn,
        api_base,
        "--meter-event-name",
        EVENT_NAME,
        "--grace",
        str(GRACE),
        "--poll-interval",
        "1",
        "--debounce",
        "0.1",
        "--shutdown-timeout",
        "5",
        api_key=API_KEY,
        log_path=log_path,
        fresh_log=True,
        detach=True,
    ).start()


class Interrupted:
    """Set once SIGINT, SIGTERM or SIGHUP arrived (an error raised while a database call
    was being interrupted is then part of the interruption, not a failure)."""

    signum: int | None = None


@contextlib.contextmanager
def _signals_interrupt() -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP unwind like Ctrl-C, so every finally block runs."""

    def interrupt(signum: int, _frame: Any) -> None:
        Interrupted.signum = signum
        raise KeyboardInterrupt

    watched = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    saved = {s: signal.signal(s, interrupt) for s in watched}
    try:
        yield
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)


def _reachable_by_server(path: Path) -> bool:
    """Whether the postgres system user can reach ``path`` (only a question when root)."""
    if os.geteuid() != 0:
        return True
    probe = path
    while not probe.exists():
        probe = probe.parent
    runuser = "/usr/sbin/runuser" if Path("/usr/sbin/runuser").exists() else "runuser"
    try:
        done = subprocess.run(
            [runuser, "-u", "postgres", "--", "test", "-x", str(probe)],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            check=False,
        )
    except OSError:
        return True  # let the cluster report what is wrong
    return done.returncode == 0


def _data_dir(args: argparse.Namespace) -> Path:
    path = default_data_dir(args)
    if args.data_dir or _reachable_by_server(path):
        return path
    # root, and the postgres user cannot enter the project directory (e.g. under /root)
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:10]
    base = Path(tempfile.gettempdir()) / f"active-series-demo-{digest}"
    base.mkdir(exist_ok=True)
    base.chmod(0o711)
    say(f"note: the postgres user cannot reach {path}; using {base / 'db'} instead")
    return base / "db"


def say(text: str) -> None:
    print(text, flush=True)


# ------------------------------------------------------------------------------ the demo


class Demo:
    def __init__(self, args: argparse.Namespace) -> None:
        self.short = bool(args.short)
        self.period = int(args.period_seconds or (10 if self.short else 25))
        self.periods = int(args.periods or (3 if self.short else 5))
        if self.period < 4 or self.periods < 1:
            raise CommandError(
                "--period-seconds must be at least 4 and --periods at least 1", ExitCode.USAGE
            )
        self.out = Path(args.out or DEFAULT_OUT).absolute()
        self.data_dir_path = _data_dir(args)
        self.orgs = organizations()
        self.samples: list[dict[str, Any]] = []
        self.started = time.time()
        self.server: StripeEmulatorServer | None = None
        self.worker: WorkerProcess | None = None
        self.cluster: Cluster | None = None
        self.stop_cluster = False
        self.conn: psycopg.Connection[Any] | None = None
        self.closed_seen: set[tuple[int, datetime]] = set()

    # -- setup ---------------------------------------------------------------------------

    def start_database(self) -> str:
        self.out.mkdir(parents=True, exist_ok=True)
        gitignore = self.out.parent / ".gitignore"
        if self.out.parent.name == ".active-series" and not gitignore.exists():
            gitignore.write_text("*\n")
        cluster = self.cluster = embedded_cluster(self.data_dir_path)
        marker = self.out / "cluster.pid"
        running = cluster.pid
        # ours: not running yet, or left running by a demo that was killed
        ours = running is None or (marker.exists() and marker.read_text().strip() == str(running))
        cluster_call(cluster.start, cluster.log_file)
        self.stop_cluster = ours
        if ours:
            marker.write_text(f"{cluster.pid}\n")
        say(f"PostgreSQL: {cluster.data_dir} (port {cluster.port})")
        with psycopg.connect(cluster.dsn("postgres"), autocommit=True) as admin:
            ident = sql.Identifier(DEMO_DB)
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident))
        dsn = ensure_database(cluster, DEMO_DB)
        say(f"schema active_series installed in database {DEMO_DB}: {dsn}")
        self.conn = psycopg.connect(dsn, autocommit=True)
        return dsn

    def start_stripe(self) -> tuple[stripe.StripeClient, EmulatorControl, str]:
        self.server, url = run_in_thread(rate_limit=None)
        say(f"Stripe emulator: {url}")
        client = stripe.StripeClient(
            API_KEY,
            base_addresses={"api": url},
            stripe_version=STRIPE_API_VERSION,
            max_network_retries=2,
        )
        return client, EmulatorControl(url), url

    def create_billing(self, client: stripe.StripeClient) -> str:
        """The organizations in the database, then the Stripe side as ``active-series stripe
        setup`` makes it (the same code), with the demo's short periods."""
        for org in self.orgs:
            self._create_org(org)
        linked = billing_setup.setup(
            client,
            self._conn(),
            billing_setup.Plan(
                event_name=EVENT_NAME,
                tiers=TIERS,
                organizations=[org.id for org in self.orgs],
                subscription_metadata={"emulator_period_seconds": str(self.period)},
            ),
            say=lambda line: say(f"  {line}"),
        )
        for org in self.orgs:
            link = linked.organizations[org.id]
            org.customer, org.subscription = link.customer, link.subscription.id
            item = link.subscription["items"]["data"][0]
            org.first_start = float(item["current_period_start"])
            # the subscription's period, as the worker would align it
            self._conn().execute(
                q.SET_BILLING_PERIOD,
                (org.id, item["current_period_start"], item["current_period_end"]),
            )
            say(f"  {org.name}: organization {org.id}, {self.period}-second periods")
        return str(linked.meter.id)

    def _create_org(self, org: Org) -> None:
        conn = self._conn()

        def one(query: str, params: tuple[Any, ...]) -> int:
            row = conn.execute(query, params).fetchone()
            assert row is not None
            return int(row[0])

        org.id = one(q.NEW_ORGANIZATION, (org.name,))
        org.project = one(q.NEW_PROJECT, (org.id, f"{org.name}-app"))
        for table, names, ids in (
            ("testbed", TESTBEDS, org.testbeds),
            ("benchmark", BENCHMARKS, org.benchmarks),
            ("measure", MEASURES, org.measures),
        ):
            for name in names:
                ids.append(
                    one(
                        sql.SQL(q.NEW_NAMED).format(sql.Identifier(table)).as_string(conn),
                        (org.project, name),
                    )
                )

    def _conn(self) -> psycopg.Connection[Any]:
        assert self.conn is not None
        return self.conn

    # -- ingest --------------------------------------------------------------------------

    def report(self, org: Org, count: int) -> None:
        """One ingest transaction: a report per testbed, metrics for series 0..count-1
        (rotated by the organization's offset), as an application would INSERT them."""
        chosen = sorted({(org.offset + i) % SERIES for i in range(min(count, SERIES))})
        per_testbed: dict[int, list[int]] = {}
        for i in chosen:
            per_testbed.setdefault(i // (len(BENCHMARKS) * len(MEASURES)), []).append(i)
        conn = self._conn()
        with conn.transaction():
            for tb, series in per_testbed.items():
                row = conn.execute(q.NEW_REPORT, (org.project, org.testbeds[tb])).fetchone()
                assert row is not None
                report_id = row[0]
                benchmarks = sorted({(i // len(MEASURES)) % len(BENCHMARKS) for i in series})
                rb: dict[int, int] = {}
                for b in benchmarks:
                    got = conn.execute(
                        q.NEW_REPORT_BENCHMARK, (report_id, org.benchmarks[b])
                    ).fetchone()
                    assert got is not None
                    rb[b] = got[0]
                with conn.cursor() as cur:
                    cur.executemany(
                        q.NEW_METRIC,
                        [
                            (
                                rb[(i // len(MEASURES)) % len(BENCHMARKS)],
                                org.measures[i % len(MEASURES)],
                                1.0 + (i * 7919 % 97) / 10,
                            )
                            for i in series
                        ],
                    )

    def current(self, org: Org) -> tuple[datetime, datetime, int]:
        row = self._conn().execute(q.CURRENT, (org.id, org.id)).fetchone()
        assert row is not None
        return row[0], row[1], int(row[2])

    def simulate(self, ctl: EmulatorControl, meter: str) -> None:
        """Report every second: whole periods, then half of the last one, which is still
        current when the table is printed (so it shows Stripe's invoice preview)."""
        last = self.periods - 1
        end_of_activity = max(o.first_start for o in self.orgs) + self.period * (last + 0.5)
        last_index = {org.id: 0 for org in self.orgs}
        say(
            f"simulating {len(self.orgs)} organizations for {self.periods} periods of "
            f"{self.period} s (one report per organization per second)"
        )
        while True:
            now = time.time()
            for org in self.orgs:
                elapsed = now - org.first_start
                index = int(elapsed // self.period)
                progress = (elapsed % self.period) / self.period
                if index < last or (index == last and progress < 0.5):
                    self.report(org, org.scenario(index, progress))
                if index != last_index[org.id] and index <= last:
                    last_index[org.id] = index
                    say(f"  +{now - self.started:5.1f}s {org.name}: period {index + 1} begins")
            self.sample(ctl, meter)
            self._announce_closed()
            if now >= end_of_activity:
                break
            time.sleep(max(0.0, 1.0 - (time.time() - now)))

    def sample(self, ctl: EmulatorControl, meter: str) -> None:
        at = time.time() - self.started
        for org in self.orgs:
            start, end, usage = self.current(org)
            held = ctl.aggregate(meter, org.customer, start.timestamp(), end.timestamp())
            self.samples.append(
                {
                    "t": round(at, 2),
                    "org": org.name,
                    "period_start": start.isoformat(),
                    "database": usage,
                    "stripe": held,
                }
            )

    def _announce_closed(self) -> None:
        seen = self.closed_seen
        rows = self._conn().execute(q.CLOSED_PERIODS).fetchall()
        names = {o.id: o.name for o in self.orgs}
        for org_id, start, value in rows:
            if (org_id, start) not in seen:
                seen.add((org_id, start))
                say(
                    f"  +{time.time() - self.started:5.1f}s {names.get(org_id, org_id)}: "
                    f"period from {start:%H:%M:%S} closed, final value {value} posted"
                )

    def settle(self, ctl: EmulatorControl, meter: str, timeout: float = 60.0) -> bool:
        """Wait until every ended period is closed and Stripe holds every period's count."""
        deadline = time.time() + timeout
        while True:
            self.sample(ctl, meter)
            self._announce_closed()
            if self._settled(ctl, meter):
                return True
            if time.time() > deadline or not (self.worker and self.worker.alive()):
                return False
            time.sleep(0.5)

    def _settled(self, ctl: EmulatorControl, meter: str) -> bool:
        row = self._conn().execute(q.UNSETTLED).fetchone()
        if row is None or row[0] != 0:
            return False
        return all(r["database"] == r["stripe"] for r in self.table(ctl, meter, invoices=None))

    # -- results -------------------------------------------------------------------------

    def table(
        self, ctl: EmulatorControl, meter: str, invoices: stripe.StripeClient | None
    ) -> list[dict[str, Any]]:
        rows = []
        for org in self.orgs:
            periods = self._conn().execute(q.PERIODS, (org.id,)).fetchall()
            amounts: dict[int, tuple[int, bool]] = {}
            preview = None
            if invoices is not None:
                state = ctl.subscription_state(org.subscription)
                amounts = {
                    int(p["start"]): (int(p["amount"]), p["current"]) for p in state["periods"]
                }
                preview = invoices.v1.invoices.create_preview(
                    params={"customer": org.customer, "subscription": org.subscription}
                )
            for start, end, usage in periods:
                held = ctl.aggregate(meter, org.customer, start.timestamp(), end.timestamp())
                row: dict[str, Any] = {
                    "organization": org.name,
                    "organization_id": org.id,
                    "customer": org.customer,
                    "period_start": start.isoformat(),
                    "period_end": end.isoformat(),
                    "database": int(usage),
                    "stripe": held,
                }
                if invoices is not None:
                    amount, current = amounts.get(int(start.timestamp()), (None, False))
                    if current and preview is not None:
                        amount = int(preview["amount_due"])
                    # the invoice as the database prices it (price_preview, from the price the
                    # worker read with the subscription), next to Stripe's own
                    row["invoice_cents"] = self._price(org.id, start)
                    row["stripe_invoice_cents"] = amount
                    row["current"] = bool(current)
                rows.append(row)
        return rows

    def _price(self, org: int, start: datetime) -> int | None:
        row = (
            self._conn()
            .execute("SELECT amount FROM active_series.price_preview(%s, %s)", (org, start))
            .fetchone()
        )
        return None if row is None or row[0] is None else int(row[0])

    def print_table(self, rows: list[dict[str, Any]]) -> None:
        names = ["organization", "period", "database", "stripe", "invoice", "match"]
        cells = []
        for r in rows:
            start = datetime.fromisoformat(r["period_start"])
            end = datetime.fromisoformat(r["period_end"])
            amount = r.get("invoice_cents")
            invoice = "-" if amount is None else f"${amount / 100:,.2f}"
            if amount != r.get("stripe_invoice_cents"):
                stripe_amount = r.get("stripe_invoice_cents")
                invoice += (
                    " (Stripe: "
                    + ("-" if stripe_amount is None else f"${stripe_amount / 100:,.2f}")
                    + ")"
                )
            if r.get("current"):
                invoice += " (preview, current)"
            cells.append(
                [
                    r["organization"],
                    f"{start:%H:%M:%S}-{end:%H:%M:%S}",
                    str(r["database"]),
                    str(r["stripe"]),
                    invoice,
                    "yes" if r["database"] == r["stripe"] else "NO",
                ]
            )
        say("\n".join(["", *table_lines(names, cells), ""]))

    def _t(self, unix: float) -> float:
        """Seconds since the demo started: the time axis of the samples and the chart."""
        return round(unix - self.started, 3)

    def chart_data(self, ctl: EmulatorControl, meter: str) -> dict[str, Any]:
        """What the chart draws, per organization and period (times in seconds since the
        demo started): the exact count while the period was current (the samples); every
        post Stripe received for the period, when it arrived, the timestamp it carries and
        the value Stripe holds once it has it, including the posts made after the period's
        end; the worker's tail; and the period's final value: the final post made after the
        end, or, where Stripe already held the count, the close (null: not closed yet)."""
        conn = self._conn()
        now = time.time()
        periods = []
        for org in self.orgs:
            closes = dict(conn.execute(q.PERIOD_CLOSES, (org.id,)).fetchall())
            events = [
                e
                for e in ctl.meter_events(customer=org.customer, event_name=EVENT_NAME)
                if e["meter"] == meter and not e["canceled"]
            ]
            for start, end, usage in conn.execute(q.PERIODS, (org.id,)).fetchall():
                first, last = int(start.timestamp()), int(end.timestamp()) - 1
                tail, held_from = tail_of(first, last)
                key = start.isoformat()
                posts = [
                    {
                        "t": self._t(float(e["received_at"])),
                        "timestamp": self._t(int(e["timestamp"])),
                        "value": value,
                    }
                    for e, value in held_over_time(
                        [e for e in events if first <= int(e["timestamp"]) <= last]
                    )
                ]
                closed = closes.get(start)
                final: dict[str, Any] | None = None
                after_end = [p for p in posts if p["t"] >= self._t(end.timestamp())]
                if closed is not None and end.timestamp() <= now:
                    if after_end:
                        final = {"t": after_end[-1]["t"], "value": after_end[-1]["value"]}
                        final["posted"] = True
                    else:  # Stripe held the count already: nothing to post at the close
                        held = posts[-1]["value"] if posts else 0
                        final = {"t": self._t(closed.timestamp()), "value": held}
                        final["posted"] = False
                periods.append(
                    {
                        "organization": org.name,
                        "period_start": key,
                        "period_end": end.isoformat(),
                        "start": self._t(first),
                        "end": self._t(end.timestamp()),
                        "tail": self._t(tail),
                        "held_from": self._t(held_from),
                        "period_usage": int(usage),
                        "database": [
                            [x["t"], x["database"]]
                            for x in self.samples
                            if x["org"] == org.name and x["period_start"] == key
                        ],
                        "stripe": posts,
                        "final": final,
                    }
                )
        return {"grace": GRACE, "now": self._t(now), "periods": periods}

    def chart(self, path: Path, data: dict[str, Any]) -> bool:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            say("chart skipped: matplotlib is not installed (pip install 'active-series[demo]')")
            return False
        fig, ax = plt.subplots(figsize=(11, 6), dpi=100)
        colors = {org.name: f"C{i}" for i, org in enumerate(self.orgs)}
        now = float(data["now"])
        # the worker's tails, merged over the organizations (their periods may differ by a
        # second): where it posts at half speed, and the part kept for the posts after the end
        for lo, hi, shade, label in (
            ("tail", "held_from", 0.07, "tail: posts at half speed"),
            ("held_from", "end", 0.16, "tail: posts held until the final post"),
        ):
            # up to now: the current period's tail may be ahead
            spans = sorted((p[lo], min(p[hi], now)) for p in data["periods"])
            merged: list[list[float]] = []
            for a, b in spans:
                if b <= a:
                    continue
                if merged and a <= merged[-1][1]:
                    merged[-1][1] = max(merged[-1][1], b)
                else:
                    merged.append([a, b])
            for k, (a, b) in enumerate(merged):
                ax.axvspan(
                    a, b, color="grey", alpha=shade, linewidth=0, label=label if k == 0 else None
                )
        labelled: set[str] = set()
        for p in data["periods"]:
            name, color = p["organization"], colors[p["organization"]]
            first = name not in labelled
            labelled.add(name)
            # the exact count while the period was current, held to its end
            db = list(p["database"])
            if db and p["final"] is not None:
                db.append([p["end"], p["period_usage"]])
            if db:
                ax.step(
                    [x[0] for x in db],
                    [x[1] for x in db],
                    where="post",
                    color=color,
                    label=f"{name}: period_usage" if first else None,
                )
            # what Stripe holds for the period, post by post, past the period's end
            posts = p["stripe"]
            if posts:
                until = p["final"]["t"] if p["final"] is not None else data["now"]
                ax.step(
                    [x["t"] for x in posts] + [max(until, posts[-1]["t"])],
                    [x["value"] for x in posts] + [posts[-1]["value"]],
                    where="post",
                    color=color,
                    linestyle="--",
                    linewidth=2.2,
                    alpha=0.55,
                    label=f"{name}: Stripe meter (last)" if first else None,
                )
            final = p["final"]
            if final is None:
                continue
            if final["posted"]:
                ax.plot(final["t"], final["value"], marker="o", color=color, markersize=6)
                ax.annotate(
                    f"final: {final['value']}",
                    (final["t"], final["value"]),
                    textcoords="offset points",
                    xytext=(4, 5),
                    fontsize="x-small",
                    color=color,
                )
            else:
                ax.plot(
                    final["t"],
                    final["value"],
                    marker="o",
                    markerfacecolor="white",
                    color=color,
                    markersize=5,
                )
        ax.plot(
            [], [], "o", color="black", label=f"final post: after the end + --grace ({GRACE:g} s)"
        )
        ax.plot([], [], "o", color="black", markerfacecolor="white", label="closed, Stripe held it")
        for edge in {p[k] for p in data["periods"] for k in ("start", "end")}:
            if edge <= now:
                ax.axvline(edge, color="grey", linewidth=0.6, linestyle=":")
        ax.set_xlim(0, now + 0.5)
        top = max([p["period_usage"] for p in data["periods"]] + [1])
        ax.set_ylim(0, top * 1.15)
        ax.set_xlabel("seconds since the demo started (dotted: billing periods)")
        ax.set_ylabel("active series in the period")
        ax.set_title("active_series demo: the exact count vs what Stripe holds for each period")
        ax.legend(
            loc="upper center", bbox_to_anchor=(0.5, -0.12), fontsize="small", ncol=3, frameon=False
        )
        ax.grid(alpha=0.2)
        fig.tight_layout()
        fig.savefig(path, bbox_inches="tight")
        plt.close(fig)
        return True

    # -- run -----------------------------------------------------------------------------

    def run(self) -> int:
        try:
            dsn = self.start_database()
            client, ctl, url = self.start_stripe()
            meter = self.create_billing(client)
            self.worker = start_worker(dsn, url, self.out / "worker.log")
            say(f"worker started (pid {self.worker.pid}), log: {self.worker.log_path}")
            self.simulate(ctl, meter)
            say("ingest stopped; waiting until Stripe holds every period's count")
            settled = self.settle(ctl, meter)
            rows = self.table(ctl, meter, invoices=client)
            self.print_table(rows)
            (self.out / "summary.json").write_text(json.dumps(rows, indent=2) + "\n")
            (self.out / "samples.json").write_text(json.dumps(self.samples) + "\n")
            data = self.chart_data(ctl, meter)
            (self.out / "chart.json").write_text(json.dumps(data, indent=1) + "\n")
            chart = self.out / "active-series.png"
            if self.chart(chart, data):
                say(f"chart: {chart}")
            say(f"table: {self.out / 'summary.json'}")
            if not settled or any(r["database"] != r["stripe"] for r in rows):
                say(f"Stripe does not hold every period's count; see {self.out / 'worker.log'}")
                return ExitCode.FAILURE
            say("every period: database == Stripe")
            return ExitCode.OK
        finally:
            self.shutdown()

    def shutdown(self) -> None:
        # uninterruptible by a second Ctrl-C: leave nothing behind
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            if self.worker is not None:
                self.worker.stop()
            if self.server is not None:
                self.server.shutdown()
                self.server.server_close()
            if self.conn is not None:
                self.conn.close()
            if self.cluster is not None and self.stop_cluster:
                with contextlib.suppress(Exception):
                    self.cluster.stop()
                with contextlib.suppress(FileNotFoundError):
                    (self.out / "cluster.pid").unlink()
            say("stopped: worker, Stripe emulator" + (", PostgreSQL" if self.stop_cluster else ""))
        finally:
            signal.signal(signal.SIGINT, previous)


def run(args: argparse.Namespace) -> int:
    """Entry point of ``active-series demo``."""
    Interrupted.signum = None
    with _signals_interrupt():
        try:
            return Demo(args).run()
        except KeyboardInterrupt:
            say("interrupted")
            return ExitCode.INTERRUPTED
        except Exception:
            if Interrupted.signum is None:
                raise
            say("interrupted")
            return ExitCode.INTERRUPTED
