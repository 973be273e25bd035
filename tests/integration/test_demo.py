"""``active-series demo --short`` end to end: its own cluster, the Stripe emulator, the worker;
the final table holds database == Stripe for every organization and period, and nothing it
started is left running."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest


def graduated_amount(quantity: int) -> int:
    """The demo's Pro price, computed independently: $29 for up to 10 series, $1.00 each
    from 11 to 25, $0.50 each above; nothing for no series."""
    if quantity == 0:
        return 0
    return 2900 + max(0, min(quantity, 25) - 10) * 100 + max(0, quantity - 25) * 50


def processes_mentioning(text: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline:
            found.append(f"{entry.name}: {cmdline}")
    return found


def check_chart_data(data: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    """What the chart draws shows what happened: per period, Stripe's value post by post up
    to the final post made after the period's end, and the worker's tail before it."""
    periods = {(p["organization"], p["period_start"]): p for p in data["periods"]}
    assert set(periods) == {(r["organization"], r["period_start"]) for r in rows}
    ended = []
    for row in rows:
        p = periods[row["organization"], row["period_start"]]
        assert p["period_usage"] == row["database"]
        assert p["start"] <= p["tail"] <= p["held_from"] < p["end"], p
        assert p["database"], p  # the exact count, sampled while the period was current
        posts = p["stripe"]
        assert posts, p
        assert posts[-1]["value"] == row["stripe"], p
        for post in posts:
            assert p["start"] <= post["timestamp"] < p["end"], p
            # a post made before the period's end never carries a second of the tail's part
            # kept for the posts after the end
            if post["t"] < p["end"]:
                assert post["timestamp"] < p["held_from"], p
        if row["current"]:
            continue
        ended.append(p)
        final = p["final"]
        assert final is not None, p
        # the final value: the period's count, Stripe's, after the period's end
        assert final["value"] == row["database"] == row["stripe"], p
        assert final["t"] > p["end"], p
        if final["posted"]:
            last = posts[-1]
            assert (last["t"], last["value"]) == (final["t"], final["value"]), p
            assert last["timestamp"] == p["held_from"], p  # the first second kept for it
            before = [x for x in posts if x["t"] < p["end"]]
            assert before and before[-1]["value"] != final["value"], p
        else:  # nothing to post after the end: Stripe held the count already
            assert all(x["t"] < p["end"] for x in posts), p
    assert ended
    # the growing organization counts more series inside every tail (its ingest goes on until
    # 80 % of the period): Stripe gets its count only from the final post, after the end
    growing = [p for p in ended if p["organization"] == "acme"]
    assert growing and all(p["final"]["posted"] for p in growing), growing


@pytest.fixture
def project_dir() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="as-demo-"))
    base.chmod(0o711)  # the postgres user must enter it when we are root
    yield base
    data = base / ".active-series" / "db"
    if (data / "postmaster.pid").exists():  # only after a failure: stop what the demo left
        subprocess.run(
            [sys.executable, "-m", "active_series.devtools.cluster", "stop", str(data)], check=False
        )
    shutil.rmtree(base, ignore_errors=True)


@pytest.mark.slow
def test_the_short_demo_ends_with_stripe_holding_every_periods_count(project_dir: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "active_series.cli", "demo", "--short"],
        cwd=project_dir,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    out = project_dir / ".active-series" / "demo"
    assert proc.returncode == 0, proc.stdout + proc.stderr + (out / "worker.log").read_text()

    rows = json.loads((out / "summary.json").read_text())
    orgs = {r["organization"] for r in rows}
    assert orgs == {"acme", "globex", "initech"}
    for row in rows:
        assert row["database"] == row["stripe"], row
        assert row["invoice_cents"] == graduated_amount(row["stripe"]), row
        assert row["invoice_cents"] == row["stripe_invoice_cents"], row
    for org in orgs:
        mine = [r for r in rows if r["organization"] == org]
        # three periods, back to back: two rollovers happened while reporting
        assert len(mine) == 3, mine
        for earlier, later in zip(mine, mine[1:], strict=False):
            assert earlier["period_end"] == later["period_start"]
        assert all(r["database"] > 0 for r in mine)
    # the spiky organization's sweep period billed more than its quiet ones
    initech = [r["database"] for r in rows if r["organization"] == "initech"]
    assert initech[1] > initech[0]

    # the printed table: one line per row, every one matching
    table = [line.split() for line in proc.stdout.splitlines() if line.startswith(tuple(orgs))]
    assert len(table) == len(rows)
    assert all(line[-1] == "yes" for line in table), proc.stdout
    for line, row in zip(table, rows, strict=True):
        assert (line[0], int(line[2]), int(line[3])) == (
            row["organization"],
            row["database"],
            row["stripe"],
        )
    assert "every period: database == Stripe" in proc.stdout
    assert "closed, final value" in proc.stdout

    chart = out / "active-series.png"
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    samples = json.loads((out / "samples.json").read_text())
    assert {s["org"] for s in samples} == orgs
    check_chart_data(json.loads((out / "chart.json").read_text()), rows)

    # nothing left behind: no server of its data directory, no worker
    assert not (project_dir / ".active-series" / "db" / "postmaster.pid").exists()
    assert processes_mentioning(str(project_dir)) == []
    assert "stopped: worker, Stripe emulator, PostgreSQL" in proc.stdout
