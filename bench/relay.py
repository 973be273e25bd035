"""Relay: commit → Stripe (emulator) latency, Stripe calls per report, and the 25 requests/s limit.

A Stripe emulator (``python -m active_series.devtools.stripe_emulator``, its own process, loopback
only) and a real ``active-series worker`` subprocess.  Per scenario, 100 fresh billed
organizations; after a warm-up (one report each, relayed), a paced load of reports across
them for a bounded time.  Every report adds one new series (a new benchmark) to its
organization, so every commit changes a count; an organization's reports are sent by one
thread, in order, so the count after its k-th report is known.  A report is *delivered* when
the emulator has received an event for its customer with a value at least that count;
latency = that event's arrival − the client's commit (one clock: same machine).

    python bench/relay.py --dsn "dbname=bench"
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import stripe
from active_series.devtools.cluster import free_port
from active_series.devtools.stripe_emulator import EmulatorControl
from active_series.devtools.worker_process import WorkerProcess
from common import (
    connect,
    drop_database,
    fresh_database,
    log,
    percentile,
    server_info,
    write_run,
)

API_KEY = "sk_test_bench_relay_0123456789"
EVENT_NAME = "active_series"
ORGS = 100
THREADS = 8
LIMITED = "bucket_429"  # the emulator's count of requests its token bucket refused

REPORT = """
WITH r AS (
    INSERT INTO active_series.report (project_id, testbed_id, start_time, end_time)
    VALUES (%(project)s, %(testbed)s, now(), now())
    RETURNING id
), rb AS (
    INSERT INTO active_series.report_benchmark (report_id, benchmark_id, iteration)
    SELECT r.id, %(benchmark)s, 0 FROM r
    RETURNING id
)
INSERT INTO active_series.metric (report_benchmark_id, measure_id, value)
SELECT rb.id, %(measure)s, 1.0 FROM rb
"""


@dataclass
class Scenario:
    name: str
    rate: float  # reports/s offered
    seconds: float
    debounce: float = 0.05  # the worker's default
    poll_interval: float = 5.0
    worker_rate_limit: float = 25.0
    emulator_rate_limit: float | None = 25.0

    def as_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def default_scenarios(quick: bool) -> list[Scenario]:
    s = 0.5 if quick else 1.0
    return [
        # the worker's defaults, Stripe's test-mode limit (25 requests/s) on
        Scenario("defaults", 10, 20 * s),
        Scenario("defaults", 100, 10 * s),
        Scenario("defaults", 1000, 6 * s),
        # the earlier default debounce, same limits
        Scenario("debounce_0.2", 10, 20 * s, debounce=0.2),
        Scenario("debounce_0.2", 100, 10 * s, debounce=0.2),
        Scenario("debounce_0", 10, 20 * s, debounce=0.0),
        # live-mode headroom (worker and Stripe at 1,000 requests/s), default debounce
        Scenario("live_limit", 100, 10 * s, worker_rate_limit=1000, emulator_rate_limit=None),
        Scenario("live_limit", 1000, 6 * s, worker_rate_limit=1000, emulator_rate_limit=None),
        Scenario(
            "live_limit_debounce_0.2",
            100,
            10 * s,
            debounce=0.2,
            worker_rate_limit=1000,
            emulator_rate_limit=None,
        ),
    ]


class Emulator:
    """The emulator as a subprocess on a loopback port, with a meter and customers."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "active_series.devtools.stripe_emulator",
                "--port",
                str(self.port),
                "--quiet",
                "--rate-limit",
                "0",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.ctl = EmulatorControl(self.url)
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError, ValueError):
                if self.ctl.health():
                    break
            if time.monotonic() > deadline:
                raise SystemExit("the Stripe emulator did not start")
            time.sleep(0.1)
        self.client = stripe.StripeClient(
            API_KEY, base_addresses={"api": self.url}, max_network_retries=2
        )
        self.client.v1.billing.meters.create(
            params={
                "display_name": "active series",
                "event_name": EVENT_NAME,
                "default_aggregation": {"formula": "last"},
            }
        )

    def customer(self, name: str) -> str:
        return self.client.v1.customers.create(params={"name": name}).id

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def setup_orgs(
    conn: psycopg.Connection, emu: Emulator, tag: str, per_org: int, count: int = ORGS
) -> list[dict]:
    emu.ctl.set_rate_limit(None)
    orgs = []
    for i in range(count):
        org = conn.execute(
            "INSERT INTO active_series.organization (name) VALUES (%s) RETURNING id",
            (f"{tag}-{i}",),
        ).fetchone()[0]  # type: ignore[index]
        project = conn.execute(
            "INSERT INTO active_series.project (organization_id, name) VALUES (%s, 'p')"
            " RETURNING id",
            (org,),
        ).fetchone()[0]  # type: ignore[index]
        testbed, measure = (
            conn.execute(
                f"INSERT INTO active_series.{t} (project_id, name) VALUES (%s, 'x') RETURNING id",
                (project,),
            ).fetchone()[0]  # type: ignore[index]
            for t in ("testbed", "measure")
        )
        benchmarks = [
            r[0]
            for r in conn.execute(
                "INSERT INTO active_series.benchmark (project_id, name)"
                " SELECT %s, 'b' || i FROM generate_series(1, %s) AS i RETURNING id",
                (project, per_org + 1),
            ).fetchall()
        ]
        customer = emu.customer(f"{tag}-{i}")
        conn.execute("SELECT active_series.set_stripe_customer(%s, %s, 'pro')", (org, customer))
        orgs.append(
            {
                "org": org,
                "project": project,
                "testbed": testbed,
                "measure": measure,
                "benchmarks": sorted(benchmarks),
                "customer": customer,
                "sent": 0,
            }
        )
    return orgs


def report(conn: psycopg.Connection, o: dict) -> int:
    """One report adding one new series; returns the organization's count after it."""
    conn.execute(
        REPORT,
        {
            "project": o["project"],
            "testbed": o["testbed"],
            "benchmark": o["benchmarks"][o["sent"]],
            "measure": o["measure"],
        },
    )
    o["sent"] += 1
    return int(o["sent"])


def start_worker(dsn: str, emu: Emulator, sc: Scenario, log_path: Path) -> WorkerProcess:
    return WorkerProcess(
        dsn,
        emu.url,
        "--debounce",
        str(sc.debounce),
        "--poll-interval",
        str(sc.poll_interval),
        "--rate-limit",
        str(sc.worker_rate_limit),
        api_key=API_KEY,
        log_path=log_path,
    ).start()


def held(emu: Emulator, orgs: list[dict]) -> dict[str, int]:
    best: dict[str, int] = {}
    for ev in emu.ctl.meter_events():
        best[ev["customer"]] = max(best.get(ev["customer"], 0), int(ev["value"]))
    return best


def wait_delivered(emu: Emulator, orgs: list[dict], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = held(emu, orgs)
        if all(got.get(o["customer"], 0) >= o["sent"] for o in orgs):
            return True
        time.sleep(0.25)
    return False


def load(dsn: str, orgs: list[dict], rate: float, seconds: float) -> list[tuple[int, int, float]]:
    """Paced reports; returns (org index, count after, commit time) per report."""
    sent: list[tuple[int, int, float]] = []
    lock = threading.Lock()
    start = time.time() + 0.2
    total = int(rate * seconds)

    def client(t: int) -> None:
        mine: list[tuple[int, int, float]] = []
        with psycopg.connect(dsn, autocommit=True) as conn:
            # report k goes to organization k % ORGS, sent by thread (k % ORGS) % THREADS
            for k in range(total):
                i = k % ORGS
                if i % THREADS != t:
                    continue
                due = start + k / rate
                pause = due - time.time()
                if pause > 0:
                    time.sleep(pause)
                count = report(conn, orgs[i])
                mine.append((i, count, time.time()))
        with lock:
            sent.extend(mine)

    threads = [threading.Thread(target=client, args=(t,)) for t in range(THREADS)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return sent


def run_scenario(dsn: str, emu: Emulator, sc: Scenario, tmp: Path, idx: int) -> dict:
    total = int(sc.rate * sc.seconds)
    with connect(dsn) as conn:
        orgs = setup_orgs(conn, emu, f"s{idx}", total // ORGS + 2)
    log_path = tmp / f"worker-{idx}.log"
    worker = start_worker(dsn, emu, sc, log_path)
    try:
        # warm-up: one report per organization, relayed (the worker reads each customer's
        # subscriptions once, and every organization has a first post)
        with connect(dsn) as conn:
            for o in orgs:
                report(conn, o)
        if not wait_delivered(emu, orgs, 120):
            raise SystemExit(f"{sc.name}: warm-up reports were not relayed")
        emu.ctl.set_rate_limit(sc.emulator_rate_limit)
        stats0 = emu.ctl.stats()
        events0 = len(emu.ctl.meter_events())
        t0 = time.time()
        sent = load(dsn, orgs, sc.rate, sc.seconds)
        load_seconds = time.time() - t0
        delivered = wait_delivered(emu, orgs, 120)
        drained = time.time() - t0
        stats1 = emu.ctl.stats()
        events = emu.ctl.meter_events()[events0:]
    finally:
        worker.stop(30)
    emu.ctl.set_rate_limit(None)

    # latency: first event for the customer with value >= the count after the report
    by_customer: dict[str, list[tuple[float, int]]] = {}
    for ev in events:
        by_customer.setdefault(ev["customer"], []).append((ev["received_at"], int(ev["value"])))
    latencies = []
    undelivered = 0
    for i, count, committed in sent:
        arrivals = [t for t, v in by_customer.get(orgs[i]["customer"], []) if v >= count]
        if arrivals:
            latencies.append(max(0.0, min(arrivals) - committed))
        else:
            undelivered += 1
    requests = {
        k: stats1["requests"].get(k, 0) - stats0["requests"].get(k, 0) for k in stats1["requests"]
    }
    worker_log = log_path.read_text(errors="replace")
    rate_limited = len(re.findall(r"event=rate_limited ", worker_log))
    result = {
        **sc.as_json(),
        "reports": len(sent),
        "achieved_rate": len(sent) / load_seconds,
        "load_seconds": load_seconds,
        "drain_seconds": drained - load_seconds,
        "all_delivered": delivered and undelivered == 0,
        "undelivered": undelivered,
        "meter_events": len(events),
        "stripe_requests": sum(requests.values()),
        "requests_by_path": requests,
        "meter_events_per_report": len(events) / max(1, len(sent)),
        "stripe_requests_per_second": sum(requests.values()) / max(drained, 1e-9),
        "answered_429": stats1["faults"].get("rate_limit", 0)
        - stats0["faults"].get("rate_limit", 0),
        "worker_rate_limited_logs": rate_limited,
        "latency_seconds": {
            "p50": percentile(latencies, 0.50),
            "p90": percentile(latencies, 0.90),
            "p99": percentile(latencies, 0.99),
            "max": max(latencies, default=float("nan")),
        },
    }
    lat = result["latency_seconds"]
    log(
        f"  {sc.name} {sc.rate:g}/s: {len(sent)} reports at {result['achieved_rate']:.0f}/s,"
        f" p50 {lat['p50'] * 1e3:.0f} ms p99 {lat['p99'] * 1e3:.0f} ms,"
        f" {result['meter_events_per_report']:.2f} events/report,"
        f" 429s {result['answered_429']}, delivered {result['all_delivered']}"
    )
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", default=os.environ.get("DATABASE_URL", ""), help="libpq conninfo")
    parser.add_argument("--out", type=Path, help="result JSON (default: bench/results/)")
    parser.add_argument("--quick", action="store_true", help="half the load durations")
    parser.add_argument("--only", nargs="*", help="scenario names to run (default: all)")
    parser.add_argument("--database", default="bench_relay", help="scratch database to create")
    args = parser.parse_args(argv)

    started = time.time()
    dsn = fresh_database(args.dsn, args.database)
    emu = Emulator()
    results = []
    try:
        with connect(dsn) as conn:
            info = server_info(conn)
        with tempfile.TemporaryDirectory() as tmp:
            for idx, sc in enumerate(default_scenarios(args.quick)):
                if args.only and sc.name not in args.only:
                    continue
                results.append(run_scenario(dsn, emu, sc, Path(tmp), idx))
    finally:
        emu.stop()
        drop_database(args.dsn, args.database)
    write_run(
        "relay",
        started,
        info,
        {
            "organizations": ORGS,
            "results": results,
        },
        args.out,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
