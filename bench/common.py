"""Helpers shared by the benchmark scripts: connections, entities, timing, result files."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import psycopg

RESULTS = Path(__file__).resolve().parent / "results"
TRACKING_TRIGGER = "active_series_metric_inserted"


def log(*parts: object) -> None:
    print(*parts, file=sys.stderr, flush=True)


def one(conn: psycopg.Connection, query: str, params: Sequence[Any] | None = None) -> Any:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0]


def connect(dsn: str, **kwargs: Any) -> psycopg.Connection:
    return psycopg.connect(dsn, autocommit=True, **kwargs)


def with_dbname(dsn: str, dbname: str) -> str:
    """The conninfo ``dsn`` pointed at another database."""
    return psycopg.conninfo.make_conninfo(dsn, dbname=dbname)


def fresh_database(dsn: str, name: str, model: bool = True) -> str:
    """Drop and create database ``name`` with the active_series schema and, with ``model``,
    the reference data model; returns its DSN."""
    from active_series.install import create_reference_model, install

    with connect(with_dbname(dsn, "postgres")) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    target = with_dbname(dsn, name)
    install(target)
    if model:
        create_reference_model(target)
    return target


@contextlib.contextmanager
def throwaway_server(database: str) -> Iterator[str]:
    """A new local server, removed on exit, with database ``database`` holding the
    active_series schema and the reference model; yields the database's DSN. Unlike the test
    servers (started with -F, fsync pinned off on the command line), ALTER SYSTEM can switch
    its fsync; its configuration file starts with the test settings."""
    from active_series.devtools.testpg import TestServer

    server = TestServer(postgres_args="-h 127.0.0.1 -c logging_collector=off")
    try:
        yield fresh_database(server.dsn(), database)
    finally:
        server.stop()


def drop_database(dsn: str, name: str) -> None:
    with connect(with_dbname(dsn, "postgres")) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def set_tracking(conn: psycopg.Connection, on: bool) -> None:
    action = "ENABLE" if on else "DISABLE"
    conn.execute(f"ALTER TABLE active_series.metric {action} TRIGGER {TRACKING_TRIGGER}")


def settle(conn: psycopg.Connection, tables: Sequence[str] = ()) -> None:
    """Start a run from the same point: dirty buffers flushed, statistics fresh."""
    with contextlib.suppress(psycopg.errors.InsufficientPrivilege):
        conn.execute("CHECKPOINT")
    if tables:
        conn.execute("VACUUM ANALYZE " + ", ".join(tables))


def server_info(conn: psycopg.Connection) -> dict[str, str]:
    names = ("server_version", "fsync", "synchronous_commit", "shared_buffers", "wal_level")
    return {n: one(conn, f"SELECT current_setting('{n}')") for n in names}


def host_info() -> dict[str, Any]:
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "loadavg_at_start": load,
    }


def timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def percentile(values: Sequence[float], q: float) -> float:
    """The q-quantile (0..1) by linear interpolation; NaN for no values."""
    if not values:
        return float("nan")
    data = sorted(values)
    pos = (len(data) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def write_result(name: str, payload: dict[str, Any], out: Path | None = None) -> Path:
    path = out or RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": name,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "commit": source_commit(),
        **payload,
    }
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    log(f"wrote {path}")
    return path


def write_run(
    name: str, started: float, server: Any, payload: dict[str, Any], out: Path | None = None
) -> Path:
    """write_result for a run that started at ``started`` on ``server`` (server_info), with
    its wall time and this host's description."""
    return write_result(
        name,
        {"wall_seconds": time.time() - started, "server": server, "host": host_info(), **payload},
        out,
    )


def source_commit() -> str | None:
    """The checked-out commit the SQL was built from (with "+dirty" for local changes)."""
    import subprocess

    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "sql", "triggers"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+dirty" if dirty else "")


class RssSampler:
    """Samples a backend's private memory (RssAnon, kB) and peak RSS (VmHWM) from /proc."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.samples: list[tuple[float, int]] = []

    def read(self) -> dict[str, int]:
        fields: dict[str, int] = {}
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM", "RssAnon", "RssShmem"):
                    fields[key] = int(value.split()[0])
        return fields

    def sample(self, t: float) -> None:
        anon = self.read().get("RssAnon")
        if anon is not None:
            self.samples.append((t, anon))

    @contextlib.contextmanager
    def running(self, interval: float = 0.1) -> Iterator[RssSampler]:
        import threading

        stop = threading.Event()
        t0 = time.perf_counter()

        def loop() -> None:
            while not stop.is_set():
                self.sample(time.perf_counter() - t0)
                stop.wait(interval)

        thread = threading.Thread(target=loop, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            stop.set()
            thread.join()

    @property
    def peak_anon_kb(self) -> int:
        return max((s[1] for s in self.samples), default=0)
