"""``active-series alerts`` and the application columns of ``active-series usage``, run as
subprocesses against a real database."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
from typing import Any

from oracle import ingest, make_org


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "active_series.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={k: v for k, v in os.environ.items() if k != "DATABASE_URL"},
    )


def add_series(conn: Any, org: Any, count: int) -> None:
    with conn.transaction():
        ingest(conn, org, org.testbeds[0], [(org.benchmarks[0], m) for m in org.measures[:count]])


def test_alerts_lists_the_alerts_as_json_lines_and_filters_them(conn, dsn) -> None:
    a = make_org(conn, "a", testbeds=1, benchmarks=1, measures=3)
    b = make_org(conn, "b", testbeds=1, benchmarks=1, measures=3)
    for org in (a, b):
        conn.execute("SELECT active_series.set_alert(%s, 2)", (org.id,))
        conn.execute("SELECT active_series.set_alert(%s, 3)", (org.id,))
    add_series(conn, a, 3)
    add_series(conn, b, 2)

    every = run("alerts", "--dsn", dsn, "--json")
    assert every.returncode == 0, every.stderr
    rows = [json.loads(line) for line in every.stdout.splitlines()]
    assert [(r["organization_id"], r["threshold"], r["series_count"]) for r in rows] == [
        (a.id, 2, 3),
        (a.id, 3, 3),
        (b.id, 2, 2),
    ]
    only_b = run("alerts", "--dsn", dsn, "--json", "--organization", str(b.id))
    assert [json.loads(line)["organization_id"] for line in only_b.stdout.splitlines()] == [b.id]
    after = run("alerts", "--dsn", dsn, "--json", "--after", str(rows[1]["id"]))
    assert [json.loads(line)["id"] for line in after.stdout.splitlines()] == [rows[2]["id"]]
    text = run("alerts", "--dsn", dsn, "--organization", str(a.id))
    assert text.stdout.splitlines()[0].startswith(f"alert {rows[0]['id']}: organization {a.id}")


def test_alerts_follow_prints_each_new_alert_as_it_is_written(conn, dsn) -> None:
    org = make_org(conn, "followed", testbeds=1, benchmarks=1, measures=4)
    conn.execute("SELECT active_series.set_alert(%s, 1)", (org.id,))
    conn.execute("SELECT active_series.set_alert(%s, 4)", (org.id,))
    add_series(conn, org, 1)
    proc = subprocess.Popen(
        [sys.executable, "-m", "active_series.cli", "alerts", "--dsn", dsn, "--json", "--follow"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout or []], daemon=True).start()
    try:
        first = json.loads(lines.get(timeout=30))
        assert (first["threshold"], first["series_count"]) == (1, 1)  # written before it started
        add_series(conn, org, 4)
        second = json.loads(lines.get(timeout=30))  # its next poll, within a second
        assert (second["threshold"], second["series_count"]) == (4, 4)
        assert second["id"] > first["id"]
    finally:
        proc.terminate()
        proc.wait(10)


def test_usage_shows_the_price_preview_the_cap_and_the_next_alert(conn, dsn) -> None:
    org = make_org(conn, "priced", testbeds=1, benchmarks=1, measures=3)
    conn.execute(
        "SELECT active_series._store_price(%s, %s::jsonb)",
        (
            org.id,
            '{"id": "price_1", "currency": "usd", "billing_scheme": "tiered",'
            ' "tiers_mode": "graduated", "tiers": [{"up_to": 2, "flat_amount": 900},'
            ' {"up_to": null, "unit_amount": 150}]}',
        ),
    )
    conn.execute("SELECT active_series.set_series_cap(%s, 10)", (org.id,))
    add_series(conn, org, 1)
    proc = run("usage", "--dsn", dsn, "--json", "--organization", str(org.id))
    assert proc.returncode == 0, proc.stderr
    [row] = json.loads(proc.stdout)
    assert (row["active_series"], row["amount"], row["currency"]) == (1, "9.00", "usd")
    assert row["amount_minor_units"] == 900
    assert (row["series_cap"], row["next_alert"], row["stripe_in_sync"]) == (10, 2, None)
    add_series(conn, org, 3)
    [row] = json.loads(run("usage", "--dsn", dsn, "--json").stdout)
    assert (row["active_series"], row["amount"], row["next_alert"]) == (3, "10.50", None)
