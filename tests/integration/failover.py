"""A primary and its synchronous streaming-replication standby, for failover tests.

``failover_pair()`` is a context manager giving a :class:`FailoverPair`:

- the **primary**: a throwaway server (:class:`active_series.devtools.testpg.TestServer`,
  as the ``postgres`` system user when root) with ``wal_level=replica``, WAL senders,
  replication from loopback allowed in ``pg_hba.conf``, ``synchronous_commit=on`` and
  ``synchronous_standby_names`` naming the standby: a commit returns only once the standby
  has flushed it, so everything committed on the primary survives its loss;
- the **standby**: ``pg_basebackup -R`` of the primary over 127.0.0.1 (as the server user)
  into a new directory, started on a free port as a hot standby streaming from the primary
  (``application_name`` :data:`STANDBY_NAME`); it has no synchronous standby of its own,
  so once promoted it accepts writes alone;
- a database ``dbname`` on the primary with the active_series schema installed as the
  tests' template is (``active_series.install.install``), replicated to the standby.

Its API: ``primary_dsn``, ``standby_dsn`` (TCP on 127.0.0.1), ``multi_dsn`` (both ports,
``target_session_attrs=read-write``: whichever accepts writes), ``crash_primary()`` (an
immediate stop: no checkpoint, no goodbye to clients) and ``promote()`` (``pg_promote()``,
then waits until the standby accepts writes; from then on it is ``primary``, and the crashed
server ``standby``, down). ``rebuild_standby()`` then makes a new synchronous standby of the
new primary on the crashed server's port, so ``multi_dsn`` is the same and another failover
can follow. ``pause_replication()`` stops the standby's WAL receiver (SIGSTOP) until
``resume_replication()`` (SIGCONT, or SIGKILL with ``discard``: the WAL it had not read is
gone): meanwhile every commit on the primary waits for the standby
(``waiting_for_standby()`` counts them), so a crash then leaves commits whose clients never
learn their outcome. Both servers and their directories are removed on exit, also on
failure.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from active_series.devtools.testpg import SUPERUSER, TestServer, hand_to_server_user, run_program
from active_series.install import create_reference_model, install

STANDBY_NAME = "failover_standby"
DBNAME = "active_series_failover"
HBA_REPLICATION = "host replication all 127.0.0.1/32 trust"

PRIMARY_SETTINGS = {
    "wal_level": "replica",
    "max_wal_senders": "5",
    "wal_keep_size": "256MB",
    "full_page_writes": "on",
    "hot_standby": "on",
    "synchronous_commit": "on",
    "synchronous_standby_names": STANDBY_NAME,
}
# once promoted, the standby has no standby to wait for
STANDBY_SETTINGS = {**PRIMARY_SETTINGS, "synchronous_standby_names": ""}
SYNC = ("streaming", "sync")  # (state, sync_state) of a synchronous standby


def _wait(what: str, check: object, timeout: float = 60.0) -> None:
    """Poll ``check()`` until it is true; connection errors count as not yet."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            if check():  # type: ignore[operator]
                return
        except psycopg.Error as exc:
            last = exc
        time.sleep(0.1)
    raise RuntimeError(f"timed out waiting for {what}" + (f" (last error: {last})" if last else ""))


def _one(dsn: str, query: str) -> object:
    with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
        row = conn.execute(query).fetchone()
        return None if row is None else row[0]


@dataclass
class FailoverPair:
    """The current primary and standby (see the module's docstring)."""

    primary: TestServer
    standby: TestServer
    dbname: str = DBNAME
    dirs: list[Path] = field(default_factory=list)  # of the standbys, removed at the end
    paused: list[int] = field(default_factory=list)  # WAL receivers stopped
    ports: tuple[int, int] = (0, 0)

    def __post_init__(self) -> None:
        self.ports = (self.primary.port, self.standby.port)

    @property
    def primary_dsn(self) -> str:
        return str(self.primary.dsn(self.dbname, tcp=True))

    @property
    def standby_dsn(self) -> str:
        return str(self.standby.dsn(self.dbname, tcp=True))

    @property
    def multi_dsn(self) -> str:
        """Both servers; libpq takes the first that accepts writes."""
        return (
            f"host=127.0.0.1,127.0.0.1 port={self.ports[0]},{self.ports[1]}"
            f" user={SUPERUSER} dbname={self.dbname}"
            " target_session_attrs=read-write connect_timeout=5"
        )

    def crash_primary(self) -> None:
        """Immediate stop of the primary (pg_ctl stop -m immediate)."""
        self.primary.stop_immediate()

    def promote(self, timeout: float = 60.0) -> None:
        """Promote the standby and wait until it accepts writes; it is the primary now."""
        standby_dsn = self.standby_dsn
        _wait("the standby", lambda: _one(standby_dsn, "SELECT pg_is_in_recovery()"), timeout)
        with psycopg.connect(standby_dsn, autocommit=True, connect_timeout=5) as conn:
            conn.execute("SELECT pg_promote(true, %s)", (int(timeout),))
        _wait(
            "the promoted standby to accept writes",
            lambda: (
                _one(standby_dsn, "SELECT NOT pg_is_in_recovery()")
                and _one(standby_dsn, "SELECT txid_current()")
            ),
            timeout,
        )
        self.primary, self.standby = self.standby, self.primary

    def rebuild_standby(self) -> None:
        """After promote(): the crashed server's place is taken by a new synchronous standby
        of the new primary, on the same port."""
        assert not self.standby.is_running(), "the standby is still running"
        port = self.standby.port
        self.standby.stop()
        self.standby = _make_standby(self.primary, self._new_dir(), port)
        # the backup has none: once promoted in turn, the new standby waits for nobody
        with psycopg.connect(self.primary.dsn(), autocommit=True) as admin:
            admin.execute(f"ALTER SYSTEM SET synchronous_standby_names = '{STANDBY_NAME}'")
            admin.execute("SELECT pg_reload_conf()")
        self.wait_synchronous()

    def wait_synchronous(self) -> None:
        _wait("a streaming synchronous standby", lambda: self.replication_state() == SYNC)

    def pause_replication(self) -> None:
        """Stop the standby's WAL receiver: the primary's commits wait for it from now on."""
        pid = _one(self.standby_dsn, "SELECT pid FROM pg_stat_wal_receiver")
        assert isinstance(pid, int), "the standby has no WAL receiver"
        os.kill(pid, signal.SIGSTOP)
        self.paused.append(pid)

    def resume_replication(self, *, discard: bool = False) -> None:
        """Let the WAL receiver go on; with ``discard``, SIGKILL it instead: what it had not
        read is lost, and the standby restarts (crash recovery) before it streams again."""
        while self.paused:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.paused.pop(), signal.SIGKILL if discard else signal.SIGCONT)

    def waiting_for_standby(self, application_name: str | None = None) -> int:
        """Backends of the primary (of that application) whose COMMIT waits for the standby."""
        with psycopg.connect(self.primary.dsn(), autocommit=True, connect_timeout=5) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep'"
                " AND application_name = coalesce(%s, application_name)",
                (application_name,),
            ).fetchone()
        return 0 if row is None else int(row[0])

    def replication_state(self) -> tuple[str, str] | None:
        """(state, sync_state) of the standby as the primary sees it."""
        with psycopg.connect(self.primary.dsn(), autocommit=True, connect_timeout=5) as conn:
            row = conn.execute(
                "SELECT state, sync_state FROM pg_stat_replication WHERE application_name = %s",
                (STANDBY_NAME,),
            ).fetchone()
        return None if row is None else (str(row[0]), str(row[1]))

    def _new_dir(self) -> Path:
        self.dirs.append(Path(tempfile.mkdtemp(prefix="active-series-standby-")))
        return self.dirs[-1]

    def close(self) -> None:
        """Stop both servers and remove every directory."""
        self.resume_replication()  # a stopped process cannot shut down
        for server in (self.standby, self.primary):
            with contextlib.suppress(Exception):
                server.stop()
        for directory in self.dirs:
            shutil.rmtree(directory, ignore_errors=True)


def _allow_replication(primary: TestServer) -> None:
    hba = Path(primary.get_data_directory()) / "pg_hba.conf"
    lines = hba.read_text().splitlines()
    if not any(" ".join(line.split()) == HBA_REPLICATION for line in lines):
        hba.write_text("\n".join([*lines, HBA_REPLICATION, ""]))


def _make_standby(primary: TestServer, base_dir: Path, port: int | None = None) -> TestServer:
    """``pg_basebackup -R`` of the primary into ``base_dir/data``, started as its standby
    (on ``port``, else a free one)."""
    data = base_dir / "data"
    data.mkdir(mode=0o700)
    hand_to_server_user(data)  # it writes the backup and runs the server
    source = f"host=127.0.0.1 port={primary.port} user={SUPERUSER} application_name={STANDBY_NAME}"
    run_program(
        [
            str(primary.bindir / "pg_basebackup"),
            *("-d", source, "-D", str(data)),
            *("-R", "-X", "stream", "--checkpoint=fast", "--no-sync"),
        ]
    )
    return TestServer(
        bindir=primary.bindir, base_dir=str(base_dir), port=port, settings=STANDBY_SETTINGS
    )


@contextlib.contextmanager
def failover_pair(dbname: str = DBNAME) -> Iterator[FailoverPair]:
    """A started primary with a synchronous standby and ``dbname`` installed on both."""
    primary = TestServer(settings=PRIMARY_SETTINGS, auto_start=0)
    standby_dir = Path(tempfile.mkdtemp(prefix="active-series-standby-"))
    pair: FailoverPair | None = None
    try:
        primary.setup()
        _allow_replication(primary)
        primary.start()
        pair = FailoverPair(primary, _make_standby(primary, standby_dir), dbname, [standby_dir])
        pair.wait_synchronous()
        with psycopg.connect(primary.dsn(), autocommit=True) as admin:
            admin.execute(f"CREATE DATABASE {dbname}")
        install(pair.primary_dsn)
        create_reference_model(pair.primary_dsn)
        yield pair
    finally:
        if pair is not None:
            pair.close()
        else:
            primary.stop()
            shutil.rmtree(standby_dir, ignore_errors=True)
