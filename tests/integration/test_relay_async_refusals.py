"""Stripe validates meter events after answering, in both APIs: a post to an unknown customer
or with a timestamp out of range is accepted (HTTP 200) and refused later, in an error report
whose samples name the request by its idempotency key. The worker matches the samples to the
posts each of its requests carried (``_post_attempt``), marks them failed and parks their
organizations, so relay_status does not show them in sync."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from active_series import cli
from oracle import ingest, make_org, one
from relay_harness import Emulator, WorkerProcess, bill, mismatches, wait_until, workers

DAY = 86400


def failures(conn: Any, org: int) -> dict[str, str]:
    rows = conn.execute(
        "SELECT kind, reason FROM active_series.relay_failures WHERE organization_id = %s",
        (org,),
    ).fetchall()
    return dict(rows)


def status(dsn: str, capsys: Any) -> dict[int, dict[str, Any]]:
    assert cli.main(["relay", "status", "--dsn", dsn, "--json"]) == 0
    return {r["organization_id"]: r for r in json.loads(capsys.readouterr().out)}


def ledger(conn: Any, org: int) -> list[tuple[str, str, str | None]]:
    """(identifier, status, last_error) of the organization's posts."""
    return [
        tuple(r)
        for r in conn.execute(
            "SELECT identifier, status, last_error FROM active_series._ledger"
            " WHERE organization_id = %s ORDER BY id",
            (org,),
        )
    ]


def keys_of(conn: Any, identifier: str) -> set[str]:
    """The idempotency keys of the requests that carried the post ``identifier``."""
    rows = conn.execute(
        "SELECT idempotency_key FROM active_series._post_attempt WHERE identifier = %s",
        (identifier,),
    )
    return {r[0] for r in rows}


def sampled_keys(emu: Emulator) -> list[str]:
    """The request keys the emulator's error reports sample, newest report first."""
    listed: Any = emu.client.v2.core.events.list(
        params={"types": ["v1.billing.meter.error_report_triggered"], "limit": 100}
    )
    return [
        sample.request.identifier
        for event in listed.data
        for kind in event.data.reason.error_types
        for sample in kind.sample_errors
    ]


def report_one(conn: Any, orgs: list[Any], benchmark: int = 0) -> None:
    """One change of each organization, in one transaction (one claim of them all)."""
    with conn.transaction():
        for org in orgs:
            ingest(conn, org, org.testbeds[0], [(org.benchmarks[benchmark], org.measures[0])])


def worker(dsn: str, emu: Emulator, tmp_path: Path, *extra: str) -> WorkerProcess:
    return WorkerProcess(
        dsn, emu.url, tmp_path / "w.log", "--poll-interval", "0.5", "--debounce", "0", *extra
    )


def test_a_v1_post_to_an_unknown_customer_is_accepted_then_reported_and_fails(
    conn, dsn, relay_emulator: Emulator, tmp_path: Path, capsys
) -> None:
    emu = relay_emulator
    ghost, good = make_org(conn, "ghost"), make_org(conn, "good")
    good_cus = emu.customer("good")
    bill(conn, ghost.id, "cus_nobody")
    bill(conn, good.id, good_cus)
    proc = worker(dsn, emu, tmp_path)
    with workers(proc.start()):
        report_one(conn, [ghost, good])
        wait_until(lambda: set(failures(conn, ghost.id)) == {"parked", "failed_post"}, 30, "park")
        wait_until(lambda: not mismatches(conn, emu, {good.id: good_cus}), 30, "good's post")
        # the good one is in sync once Stripe's event summary confirms its post
        wait_until(lambda: status(dsn, capsys)[good.id]["in_sync"], 30, "good confirmed")
    # Stripe answered 200: the refusal came with the error report, not the call
    assert [c["status"] for c in emu.ctl.calls("cus_nobody")] == [200]
    assert emu.events("cus_nobody") == []
    [(ident, state, error)] = ledger(conn, ghost.id)
    assert state == "failed"
    assert error is not None and error.startswith("meter_event_customer_not_found: ")
    # the report's sample is the key of the request that carried the post
    assert set(sampled_keys(emu)) == keys_of(conn, ident)
    assert all("meter_event_customer_not_found" in r for r in failures(conn, ghost.id).values())
    rows = status(dsn, capsys)
    assert rows[ghost.id]["parked"] and not rows[ghost.id]["in_sync"]
    assert rows[ghost.id]["stripe_value"] is None
    assert rows[good.id]["in_sync"] and not rows[good.id]["parked"]
    assert failures(conn, good.id) == {}
    assert [e["org"] for e in proc.log_events("refused_later")] == [str(ghost.id)]


@pytest.mark.parametrize(
    ("offset", "code"),
    [(-3600, "timestamp_in_future"), (36 * DAY, "timestamp_too_far_in_past")],
)
@pytest.mark.parametrize("api", ["v1", "v2-stream"])
def test_a_timestamp_out_of_stripes_range_is_accepted_then_reported_and_fails(
    conn, dsn, relay_emulator: Emulator, tmp_path: Path, capsys, api: str, offset: int, code: str
) -> None:
    """Stripe's clock is not the database's: its range of timestamps is its own (here an
    hour behind, or 36 days ahead), and it says so only in the report."""
    emu = relay_emulator
    org = make_org(conn, "late")
    bill(conn, org.id, emu.customer("late"))
    emu.ctl.set_clock_offset(offset)
    proc = worker(dsn, emu, tmp_path, "--api", api)
    with workers(proc.start()):
        report_one(conn, [org])
        wait_until(lambda: set(failures(conn, org.id)) == {"parked", "failed_post"}, 30, "park")
    assert {c["status"] for c in emu.ctl.calls()} == {200}
    assert emu.events() == []
    [(ident, state, error)] = ledger(conn, org.id)
    assert state == "failed" and error is not None and error.startswith(f"{code}: ")
    assert set(sampled_keys(emu)) == keys_of(conn, ident)
    row = status(dsn, capsys)[org.id]
    assert row["parked"] and not row["in_sync"]


def test_a_stream_request_refused_in_part_fails_only_the_refused_organizations_posts(
    conn, dsn, relay_emulator: Emulator, tmp_path: Path, capsys
) -> None:
    emu = relay_emulator
    orgs = [make_org(conn, f"c{i}", testbeds=1, benchmarks=1, measures=1) for i in range(3)]
    billed = {org.id: emu.customer(f"c{i}") for i, org in enumerate(orgs)}
    for org_id, cus in billed.items():
        bill(conn, org_id, cus)
    ghost = make_org(conn, "ghost", testbeds=1, benchmarks=1, measures=1)
    bill(conn, ghost.id, "cus_nobody")
    proc = worker(dsn, emu, tmp_path, "--api", "v2-stream")
    with workers(proc.start()):
        report_one(conn, [*orgs, ghost])
        wait_until(lambda: set(failures(conn, ghost.id)) == {"parked", "failed_post"}, 30, "park")
        wait_until(lambda: not mismatches(conn, emu, billed), 30, "the others in sync")
        # and confirmed by Stripe's event summaries
        wait_until(
            lambda: all(status(dsn, capsys)[org.id]["in_sync"] for org in orgs),
            30,
            "the others confirmed",
        )
    # one request carried the four posts, under one key: the key the report samples
    [(ident, state, error)] = ledger(conn, ghost.id)
    [key] = keys_of(conn, ident)
    assert one(conn, "SELECT count(*) FROM active_series._post_attempt WHERE idempotency_key = %s",
               (key,)) == 4  # fmt: skip
    assert sampled_keys(emu) == [key]
    assert state == "failed" and error is not None
    assert error.startswith("meter_event_customer_not_found: ")
    assert "not known" not in error  # pinned on the customer Stripe does not know
    # the other organizations of the request: sent, in sync, not parked
    rows = status(dsn, capsys)
    for org in orgs:
        assert [s for _, s, _ in ledger(conn, org.id)] == ["sent"]
        assert failures(conn, org.id) == {}
        assert rows[org.id]["in_sync"] and not rows[org.id]["parked"]
    assert rows[ghost.id]["parked"] and not rows[ghost.id]["in_sync"]


def test_a_report_sampling_fewer_events_than_it_counts_says_so(
    conn, dsn, relay_emulator: Emulator, tmp_path: Path
) -> None:
    """Three v1 posts refused in one report window, one of them sampled: the sampled post
    fails and its organization is parked with a reason saying the report counts two more;
    the others are named nowhere (what the meter holds tells them)."""
    emu = relay_emulator
    ghosts = [make_org(conn, f"g{i}", testbeds=1, benchmarks=1, measures=1) for i in range(3)]
    for i, org in enumerate(ghosts):
        bill(conn, org.id, f"cus_gone{i}")
    emu.ctl.configure_stream(error_report_window=3600, error_report_samples=1)
    proc = worker(dsn, emu, tmp_path)
    with workers(proc.start()):
        report_one(conn, ghosts)
        wait_until(lambda: len(emu.ctl.calls()) == 3, 30, "the three posts")
        emu.ctl.advance_clock(3600)  # the window closes: its report appears
        wait_until(lambda: proc.log_events("refused_later"), 30, "the sampled refusal")
        wait_until(lambda: proc.log_events("refusals_unsampled"), 30, "the unsampled log line")
    assert {c["status"] for c in emu.ctl.calls()} == {200}
    [unsampled] = proc.log_events("refusals_unsampled")
    assert (unsampled["error_count"], unsampled["sampled"]) == ("3", "1")
    parked = [org for org in ghosts if "parked" in failures(conn, org.id)]
    assert len(parked) == 1
    reason = failures(conn, parked[0].id)["failed_post"]
    assert reason.startswith("meter_event_customer_not_found: ")
    assert "counts 3 refused events and samples 1" in reason
    assert [s for org in ghosts for _, s, _ in ledger(conn, org.id)].count("failed") == 1
