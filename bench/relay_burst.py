"""Relay at scale: a burst of many billed organizations changing at once, and rollover.

A Stripe emulator (its own process, loopback, no rate limit) and a real ``active-series
worker`` subprocess (``--rate-limit 0``). Per row, fresh billed organizations; a warm-up
(one report each, relayed: every customer's subscription is read once and has a first
post); then **one transaction** gives every organization a new series, and the clock runs
from its commit until ``relay_status`` shows every organization posted (read once the
organizations' outbox rows are gone: the view is too costly to poll in a tight loop). Rows
differ only in the worker's ``--api`` and ``--concurrency`` and in the time the emulator takes per
request (none, or a 50 ms network round trip); ``--concurrency 1`` (one Stripe call at a
time) is the single-organization worker's way of posting, measured in the same run.

Rollover: organizations whose billing period ends during the run (periods of a few
seconds, ``--grace`` much longer), each changing right after its period ended: the delay
from that commit until Stripe has the new period's value, which must not wait for the grace.

    python bench/relay_burst.py --dsn "dbname=bench"
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg
from active_series.devtools.worker_process import WorkerProcess
from common import connect, drop_database, fresh_database, log, percentile, server_info, write_run
from relay import API_KEY, Emulator, report, setup_orgs

# (api, concurrency, milliseconds the emulator takes per meter-event request, organizations
# in the burst: None for --organizations): no delay (the worker's own cost), then a network
# round trip to Stripe, where calls in flight at once are what keeps up. The larger v2 burst
# shows the stream's rate once the fixed cost of a burst (debounce, one claim) is shared.
ROWS: list[tuple[str, int, int, int | None]] = [
    ("v1", 1, 0, None),
    ("v1", 4, 0, None),
    ("v1", 16, 0, None),
    ("v2-stream", 8, 0, None),
    ("v2-stream", 8, 0, 3000),
    ("v1", 1, 50, None),
    ("v1", 16, 50, None),
    ("v1", 64, 50, None),
    ("v2-stream", 8, 50, None),
]
PATHS = {"v1": "/v1/billing/meter_events", "v2-stream": "/v2/billing/meter_event_stream"}


def worker(dsn: str, emu: Emulator, api: str, concurrency: int, path: Path, *extra: str):
    return WorkerProcess(
        dsn,
        emu.url,
        "--rate-limit",
        "0",
        "--api",
        api,
        "--concurrency",
        str(concurrency),
        "--poll-interval",
        "1",
        *extra,
        api_key=API_KEY,
        log_path=path,
    ).start()


def out_of_sync(conn: psycopg.Connection, orgs: list[int], confirmed: bool) -> int:
    """Organizations whose count is not posted yet (Stripe answered and the ledger holds
    it: in sync, or confirming), or with ``confirmed`` not yet confirmed by a read of the
    meter's event summary too (in sync)."""
    held = "in_sync" if confirmed else "(in_sync OR confirming)"
    row = conn.execute(
        "SELECT count(*) FROM active_series.relay_status"
        f" WHERE organization_id = ANY(%s) AND NOT ({held} AND outbox_depth = 0)",
        (orgs,),
    ).fetchone()
    assert row is not None
    return int(row[0])


def changes_left(conn: psycopg.Connection, orgs: list[int]) -> bool:
    """Whether an outbox row of these organizations is left (the claim that posts an
    organization's change deletes its rows when it commits): one index probe each."""
    row = conn.execute(
        "SELECT EXISTS (SELECT FROM active_series._outbox WHERE organization_id = ANY(%s))",
        (orgs,),
    ).fetchone()
    assert row is not None
    return bool(row[0])


def wait_in_sync(
    conn: psycopg.Connection,
    orgs: list[int],
    timeout: float,
    confirmed: bool = True,
    t0: float | None = None,
) -> float:
    """Seconds since ``t0`` (default: now) until every organization is posted, or with
    ``confirmed`` in sync. ``relay_status`` decides, but costs tens of milliseconds per
    poll at hundreds of organizations, CPU the worker and the emulator would not have: it
    is read only once the outbox rows of the organizations are gone (polled every 20 ms),
    then every 0.2 s until it agrees. The time is when the outbox was seen empty before the
    view agreed: the claim that deleted the last rows had written the posts' outcomes when
    it committed."""
    t0 = time.monotonic() if t0 is None else t0
    while True:
        left = changes_left(conn, orgs)
        seen = time.monotonic()
        if not left and not out_of_sync(conn, orgs, confirmed):
            return seen - t0
        if seen - t0 > timeout:
            raise SystemExit(f"not in sync after {timeout} s")
        time.sleep(0.02 if left else 0.2)


def burst_row(
    dsn: str, emu: Emulator, api: str, conc: int, delay_ms: int, count: int, tmp: Path
) -> dict:
    with connect(dsn) as conn:
        orgs = setup_orgs(conn, emu, f"{api}-{conc}-{delay_ms}", 2, count)
    ids = [o["org"] for o in orgs]
    proc = worker(dsn, emu, api, conc, tmp / f"burst-{api}-{conc}.log")
    try:
        with connect(dsn) as conn:
            for o in orgs:
                report(conn, o)
            wait_in_sync(conn, ids, 300)
            # the next post of a customer takes a later second than its last one: start the
            # burst in a new second, as a burst after quiet would
            time.sleep(1.1)
            if delay_ms:
                emu.ctl.add_fault(
                    "delay", 1_000_000, path_prefix=PATHS[api], seconds=delay_ms / 1000
                )
            requests0 = sum(emu.ctl.stats()["requests"].values())
            with conn.transaction():
                for o in orgs:
                    report(conn, o)
            t0 = time.monotonic()
            seconds = wait_in_sync(conn, ids, 300, confirmed=False, t0=t0)
            requests = sum(emu.ctl.stats()["requests"].values()) - requests0
            confirmed = wait_in_sync(conn, ids, 300, t0=t0)
    finally:
        emu.ctl.clear_faults()
        proc.stop(30)
    with connect(dsn) as conn:
        # relay_status costs per billed organization: the next row polls only its own
        conn.execute("DELETE FROM active_series.organization WHERE id = ANY(%s)", (ids,))
    result = {
        "api": api,
        "concurrency": conc,
        "delay_ms": delay_ms,
        "organizations": count,
        "seconds": seconds,
        "organizations_per_second": count / seconds,
        "events_per_second": count / seconds,
        "stripe_requests": requests,
        "confirmed_seconds": confirmed,
    }
    log(
        f"  burst {api} concurrency {conc} delay {delay_ms} ms: {count} organizations posted after"
        f" {seconds:.2f} s = {count / seconds:.0f}/s, {requests} Stripe requests;"
        f" confirmed after {confirmed:.2f} s"
    )
    return result


def rollover_row(dsn: str, emu: Emulator, api: str, count: int, tmp: Path) -> dict:
    """Organizations on 4 s periods; each changes right after its period ended; the delay
    until Stripe holds the new period's value (the grace is 60 s)."""
    with connect(dsn) as conn:
        orgs = setup_orgs(conn, emu, f"roll-{api}", 4, count)
        now = conn.execute("SELECT clock_timestamp()").fetchone()[0]  # type: ignore[index]
        start = now.replace(microsecond=0) - dt.timedelta(seconds=4 * 10)
        for o in orgs:
            conn.execute(
                "SELECT active_series.set_billing_period(%s, %s, %s)",
                (o["org"], start, start + dt.timedelta(seconds=4)),
            )
    proc = worker(
        dsn, emu, api, 8, tmp / f"rollover-{api}.log", "--grace", "60", "--invoice-grace", "120"
    )
    delays: list[float] = []
    try:
        with connect(dsn) as conn:
            for o in orgs:
                report(conn, o)
            wait_in_sync(conn, [o["org"] for o in orgs], 120)
            for _ in range(3):
                end = conn.execute(
                    "SELECT period_end FROM active_series.current_period(%s)", (orgs[0]["org"],)
                ).fetchone()[0]  # type: ignore[index]
                while conn.execute("SELECT clock_timestamp() < %s", (end,)).fetchone()[0]:  # type: ignore[index]
                    time.sleep(0.01)
                committed = {}
                for o in orgs:
                    report(conn, o)
                    committed[o["customer"]] = (time.time(), o["sent"])
                left = dict(committed)
                deadline = time.monotonic() + 60
                while left and time.monotonic() < deadline:
                    for ev in emu.ctl.meter_events():
                        got = left.get(ev["customer"])
                        if got and ev["timestamp"] >= end.timestamp() and int(ev["value"]) >= 1:
                            delays.append(max(0.0, ev["received_at"] - got[0]))
                            del left[ev["customer"]]
                    time.sleep(0.05)
                if left:
                    raise SystemExit(f"rollover: {len(left)} organizations never posted")
    finally:
        proc.stop(30)
    result: dict[str, Any] = {
        "api": api,
        "organizations": count,
        "first_post_delay_seconds": {
            "p50": percentile(delays, 0.5),
            "p99": percentile(delays, 0.99),
            "max": max(delays),
        },
        "grace_seconds": 60,
    }
    d = result["first_post_delay_seconds"]
    log(
        f"  rollover {api}: first post of the new period after p50 {d['p50'] * 1e3:.0f} ms,"
        f" p99 {d['p99'] * 1e3:.0f} ms (grace 60 s)"
    )
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", default=os.environ.get("DATABASE_URL", ""), help="libpq conninfo")
    parser.add_argument("--out", type=Path, help="result JSON (default: bench/results/)")
    parser.add_argument("--organizations", type=int, default=600)
    parser.add_argument("--repeats", type=int, default=3, help="bursts per row (median)")
    parser.add_argument("--database", default="bench_relay_burst", help="scratch database")
    parser.add_argument("--api", nargs="*", default=["v1", "v2-stream"], help="APIs to measure")
    args = parser.parse_args(argv)

    started = time.time()
    dsn = fresh_database(args.dsn, args.database)
    emu = Emulator()
    bursts: list[dict[str, Any]] = []
    rollovers = []
    try:
        with connect(dsn) as conn:
            info = server_info(conn)
        with tempfile.TemporaryDirectory() as tmp:
            # rollover first, while the emulator holds few events: reading them all back (as
            # rollover_row does) costs the emulator time it would take from the worker's posts
            for api in args.api:
                rollovers.append(rollover_row(dsn, emu, api, 50, Path(tmp)))
            # rows alternate within each repeat: the machine's noise hits all alike
            runs: dict[tuple[str, int, int, int], list[dict]] = {}
            for _ in range(args.repeats):
                for api, conc, delay, orgs in [r for r in ROWS if r[0] in args.api]:
                    count = orgs or args.organizations
                    row = burst_row(dsn, emu, api, conc, delay, count, Path(tmp))
                    runs.setdefault((api, conc, delay, count), []).append(row)
            for (api, conc, delay, count), rows in runs.items():
                rate = sorted(r["organizations_per_second"] for r in rows)[len(rows) // 2]
                bursts.append(
                    {
                        "api": api,
                        "concurrency": conc,
                        "delay_ms": delay,
                        "organizations": count,
                        "median_per_second": rate,
                        "runs": rows,
                    }
                )
    finally:
        emu.stop()
        drop_database(args.dsn, args.database)
    write_run(
        "relay_burst",
        started,
        info,
        {"organizations": args.organizations, "bursts": bursts, "rollover": rollovers},
        args.out,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
