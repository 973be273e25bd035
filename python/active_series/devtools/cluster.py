"""A local PostgreSQL cluster that outlives the process that started it: the embedded
cluster of ``active-series db`` and of the demo (throwaway servers for the tests are
:mod:`.testpg`'s; docs/DESIGN-NOTES.md says which does what).

``Cluster(data_dir)`` runs ``initdb`` (superuser ``postgres``, trust
authentication), starts the server with settings meant for tests (no fsync,
asynchronous commit, 200 connections, listening on a unix socket and on
127.0.0.1) on a free port, and stops it.  Server binaries come from
``$ACTIVE_SERIES_PG_BINDIR``, else ``$PG_CONFIG --bindir``, else PostgreSQL 15's
Debian location, else ``pg_config`` on the ``PATH``.

PostgreSQL refuses to run as root.  When this process is root, the data
directory is handed to the ``postgres`` system user and every server program
runs through ``runuser -u postgres``.

The port and socket directory a cluster was started with are kept in
``active_series_cluster.conf`` inside the data directory, so another process
(``python -m active_series.devtools.cluster stop DIR``) finds the same server.

Expected failures (missing binaries, a directory the server user cannot
reach, a server that does not come up) raise :class:`ClusterError` with a
message saying what to do, and the tail of the server log where there is one.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pwd
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

DEFAULT_BINDIR = Path("/usr/lib/postgresql/15/bin")
CONF_NAME = "active_series_cluster.conf"
LOG_NAME = "server.log"
SUPERUSER = "postgres"
# sun_path is 108 bytes on Linux; the socket file name adds ".s.PGSQL.NNNNN.lock".
_MAX_SOCKET_DIR = 80

TEST_SETTINGS: dict[str, str] = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "200",
    "shared_buffers": "128MB",
    "max_wal_size": "1GB",
    "checkpoint_timeout": "30min",
    "timezone": "UTC",
    "lc_messages": "C",
    "log_min_messages": "warning",
    "log_line_prefix": "%m [%p] %q%u@%d ",
}


class ClusterError(RuntimeError):
    """A local cluster could not be created, started, stopped or reached."""


@dataclass(frozen=True)
class ClusterStatus:
    """What :meth:`Cluster.status` found."""

    state: str  # "running", "stopped" or "uninitialized"
    pid: int | None = None
    port: int | None = None
    socket_dir: str | None = None

    @property
    def running(self) -> bool:
        return self.state == "running"

    def __str__(self) -> str:
        if self.state == "running":
            return f"running (pid {self.pid}, port {self.port}, socket dir {self.socket_dir})"
        return self.state


def find_bindir() -> Path:
    """The directory holding ``initdb``, ``pg_ctl`` and ``postgres``."""
    explicit = os.environ.get("ACTIVE_SERIES_PG_BINDIR")
    if explicit:
        return Path(explicit)
    candidates: list[str] = []
    if os.environ.get("PG_CONFIG"):
        candidates.append(os.environ["PG_CONFIG"])
    if (DEFAULT_BINDIR / "pg_ctl").exists():
        return DEFAULT_BINDIR
    on_path = shutil.which("pg_config")
    if on_path:
        candidates.append(on_path)
    for pg_config in candidates:
        with contextlib.suppress(OSError, subprocess.CalledProcessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, check=True
            ).stdout.strip()
            if out and (Path(out) / "pg_ctl").exists():
                return Path(out)
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).parent
    raise ClusterError(
        "PostgreSQL server programs (initdb, pg_ctl) not found: install postgresql-15 "
        "(`make deps`) or set ACTIVE_SERIES_PG_BINDIR to their directory"
    )


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (another process may take it later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the postmaster does
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def _quote_conninfo(value: str) -> str:
    if value and not any(c in value for c in " '\\"):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no server log)"
    return "\n".join(text.splitlines()[-lines:]) or "(server log is empty)"


class Cluster:
    """A PostgreSQL cluster in ``data_dir``, run by this user (or ``postgres`` when root).

    ``initdb_options`` are added to initdb's (e.g. ``--no-data-checksums``).
    ``port=None`` reuses the port recorded by an earlier start when it is free,
    else picks a free one.  ``socket_dir=None`` puts the unix socket in the data
    directory when that path is short enough, else in a new directory under
    the system temp dir.  ``settings`` are added to (and override)
    :data:`TEST_SETTINGS`.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        port: int | None = None,
        *,
        socket_dir: str | os.PathLike[str] | None = None,
        bindir: str | os.PathLike[str] | None = None,
        settings: Mapping[str, str] | None = None,
        os_user: str | None = None,
        start_timeout: float = 60.0,
        initdb_options: Sequence[str] = (),
    ) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.initdb_options = list(initdb_options)
        self.bindir = Path(bindir) if bindir is not None else find_bindir()
        self.settings = {**TEST_SETTINGS, **(settings or {})}
        self.start_timeout = start_timeout
        self.log_file = self.data_dir / LOG_NAME
        if os_user is None and os.geteuid() == 0:
            os_user = SUPERUSER
        self.os_user = os_user
        recorded = self._recorded()
        self._port_given = port is not None
        self.port: int = port if port is not None else int(recorded.get("port", 0) or 0)
        if socket_dir is not None:
            self.socket_dir = Path(socket_dir).absolute()
        elif recorded.get("unix_socket_directories"):
            self.socket_dir = Path(recorded["unix_socket_directories"])
        else:
            self.socket_dir = self._default_socket_dir()

    # ------------------------------------------------------------------ helpers

    def _default_socket_dir(self) -> Path:
        if len(str(self.data_dir)) <= _MAX_SOCKET_DIR:
            return self.data_dir
        return Path(tempfile.mkdtemp(prefix="as-pg-sock-"))

    def _recorded(self) -> dict[str, str]:
        """Settings written by an earlier start (port, socket directory)."""
        values: dict[str, str] = {}
        try:
            text = (self.data_dir / CONF_NAME).read_text()
        except OSError:
            return values
        for line in text.splitlines():
            key, sep, value = line.partition("=")
            if sep:
                values[key.strip()] = value.strip().strip("'")
        return values

    def _bin(self, name: str) -> str:
        path = self.bindir / name
        if not path.exists():
            raise ClusterError(
                f"{path} not found: install the PostgreSQL server (`make deps`) "
                "or set ACTIVE_SERIES_PG_BINDIR"
            )
        return str(path)

    def _as_server_user(self, argv: Sequence[str]) -> list[str]:
        if self.os_user is None or self.os_user == pwd.getpwuid(os.geteuid()).pw_name:
            return list(argv)
        runuser = shutil.which("runuser") or "/usr/sbin/runuser"
        if os.geteuid() != 0 or not Path(runuser).exists():
            raise ClusterError(f"cannot run the server as {self.os_user!r}: need root and runuser")
        return [runuser, "-u", self.os_user, "--", *argv]

    def _run(self, argv: Sequence[str], what: str, *, check: bool = True) -> tuple[int, str]:
        """Run a server program as the server user; output goes to a file, not a pipe.

        (A pipe could be inherited by the postmaster and keep us waiting forever.)
        """
        with tempfile.TemporaryFile(mode="w+") as out:
            try:
                proc = subprocess.run(
                    self._as_server_user(argv),
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    cwd="/",
                    check=False,
                )
            except OSError as exc:
                raise ClusterError(f"{what}: cannot run {argv[0]}: {exc}") from None
            out.seek(0)
            output = out.read()
        if check and proc.returncode != 0:
            raise ClusterError(f"{what} failed (exit {proc.returncode}):\n{output.strip()}")
        return proc.returncode, output

    def _server_uid_gid(self) -> tuple[int, int] | None:
        if self.os_user is None or os.geteuid() != 0:
            return None
        try:
            entry = pwd.getpwnam(self.os_user)
        except KeyError:
            raise ClusterError(
                f"running as root, but there is no {self.os_user!r} system user to run "
                "PostgreSQL as (install postgresql-15, which creates it)"
            ) from None
        return entry.pw_uid, entry.pw_gid

    def _check_reachable(self, path: Path, uid: int, gid: int) -> None:
        """Fail clearly when the server user cannot traverse an ancestor of ``path``."""
        groups = {gid, *os.getgrouplist(self.os_user or SUPERUSER, gid)}
        for parent in reversed(path.parents):
            st = parent.stat()
            if st.st_uid == uid:
                ok = bool(st.st_mode & 0o100)
            elif st.st_gid in groups:
                ok = bool(st.st_mode & 0o010)
            else:
                ok = bool(st.st_mode & 0o001)
            if not ok:
                raise ClusterError(
                    f"the {self.os_user!r} user cannot enter {parent} (mode "
                    f"{oct(st.st_mode & 0o777)}); put the cluster elsewhere (e.g. under /tmp) "
                    f"or run: chmod o+x {parent}"
                )

    def _prepare_dir(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        owner = self._server_uid_gid()
        if owner is not None:
            self._check_reachable(path, *owner)
            os.chown(path, *owner)

    def _write_server_file(self, path: Path, text: str) -> None:
        path.write_text(text)
        owner = self._server_uid_gid()
        if owner is not None:
            os.chown(path, *owner)

    # --------------------------------------------------------------- lifecycle

    @property
    def initialized(self) -> bool:
        return (self.data_dir / "PG_VERSION").exists()

    def init(self) -> None:
        """Create the cluster with ``initdb`` (nothing to do when it already exists)."""
        if self.initialized:
            return
        if self.data_dir.exists() and any(self.data_dir.iterdir()):
            raise ClusterError(f"{self.data_dir} exists, is not empty and holds no cluster")
        self._prepare_dir(self.data_dir)
        self._run(
            [
                self._bin("initdb"),
                "-D",
                str(self.data_dir),
                f"--username={SUPERUSER}",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
                "--no-instructions",
                *self.initdb_options,
            ],
            f"initdb in {self.data_dir}",
        )
        conf = self.data_dir / "postgresql.conf"
        with conf.open("a") as f:
            f.write(f"\n# settings of the active_series local cluster\ninclude = '{CONF_NAME}'\n")
        self._write_config()

    def _write_config(self) -> None:
        lines = [f"{k} = '{v}'" for k, v in self.settings.items()]
        lines += [
            "listen_addresses = '127.0.0.1'",
            f"port = {self.port or 5432}",
            f"unix_socket_directories = '{self.socket_dir}'",
        ]
        self._write_server_file(self.data_dir / CONF_NAME, "\n".join(lines) + "\n")

    def _read_pid_file(self) -> list[str] | None:
        try:
            return (self.data_dir / "postmaster.pid").read_text().splitlines()
        except OSError:
            return None

    @property
    def pid(self) -> int | None:
        """The postmaster's pid when it is running, else None."""
        lines = self._read_pid_file()
        if not lines or not lines[0].strip().isdigit():
            return None
        pid = int(lines[0])
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass  # alive, owned by another user
        if _is_zombie(pid):  # killed, not yet reaped by its parent
            return None
        return pid

    def is_running(self) -> bool:
        return self.pid is not None

    def start(self) -> None:
        """Start the server (initializing it first if needed) and wait until it accepts work."""
        self.init()
        if self.is_running():
            return
        attempts = 1 if self._port_given else 3
        for attempt in range(attempts):
            if not self._port_given and (not self.port or _port_in_use(self.port)):
                self.port = free_port()
            if self.socket_dir != self.data_dir:
                self._prepare_dir(self.socket_dir)
            self._write_config()
            log_offset = self.log_file.stat().st_size if self.log_file.exists() else 0
            code, output = self._run(
                [
                    self._bin("pg_ctl"),
                    "start",
                    "-D",
                    str(self.data_dir),
                    "-l",
                    str(self.log_file),
                    "-w",
                    "-t",
                    str(int(self.start_timeout)),
                ],
                "pg_ctl start",
                check=False,
            )
            if code == 0:
                self._wait_ready()
                self._port_given = True  # clients hold this port in their DSNs now
                return
            log = self._log_since(log_offset)
            port_taken = "could not bind" in log or "could not create any TCP/IP" in log
            if port_taken and attempt + 1 < attempts:
                self.port = 0
                continue
            raise ClusterError(
                f"the PostgreSQL server in {self.data_dir} did not start "
                f"(port {self.port}):\n{output.strip()}\n--- server log "
                f"({self.log_file}) ---\n{log or _tail(self.log_file)}"
            )

    def _log_since(self, offset: int) -> str:
        try:
            with self.log_file.open("rb") as f:
                f.seek(offset)
                text = f.read().decode(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-30:])

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        argv = [
            self._bin("pg_isready"),
            "-q",
            "-h",
            str(self.socket_dir),
            "-p",
            str(self.port),
            "-U",
            SUPERUSER,
            "-d",
            "postgres",
            "-t",
            "2",
        ]
        while True:
            code = subprocess.run(argv, stdin=subprocess.DEVNULL, check=False).returncode
            if code == 0:
                return
            if time.monotonic() > deadline or not self.is_running():
                raise ClusterError(
                    f"the PostgreSQL server in {self.data_dir} does not accept connections "
                    f"on port {self.port} (pg_isready exit {code}):\n--- server log "
                    f"({self.log_file}) ---\n{_tail(self.log_file)}"
                )
            time.sleep(0.1)

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``mode``: smart, fast or immediate); nothing to do when stopped."""
        if self.is_running():
            code, output = self._run(
                [self._bin("pg_ctl"), "stop", "-D", str(self.data_dir), "-m", mode, "-w"],
                "pg_ctl stop",
                check=False,
            )
            if code != 0 and self.is_running():
                raise ClusterError(
                    f"could not stop the server in {self.data_dir}:\n{output.strip()}\n"
                    f"--- server log ---\n{_tail(self.log_file)}"
                )

    def restart(self) -> None:
        """Stop (fast) and start again on the same port."""
        self.stop()
        self.start()

    def kill(self, timeout: float = 30.0) -> None:
        """SIGKILL the postmaster and its children, as a crash would; restart with start().

        The server runs crash recovery on the next start.
        """
        pid = self.pid
        if pid is None:
            return
        victims = [pid, *children(pid)]
        for victim in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + timeout
        while any(Path(f"/proc/{v}").exists() and not _is_zombie(v) for v in victims):
            if time.monotonic() > deadline:
                raise ClusterError(f"server processes {victims} did not die after SIGKILL")
            time.sleep(0.05)
        # A killed postmaster nobody reaped stays a zombie whose pid still "exists":
        # the next postmaster would take its lock files for a live server's.
        lock_files = [
            self.data_dir / "postmaster.pid",
            self.socket_dir / f".s.PGSQL.{self.port}.lock",
            self.socket_dir / f".s.PGSQL.{self.port}",
        ]
        for path in lock_files:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def status(self) -> ClusterStatus:
        """Whether the cluster exists and runs, and where it listens."""
        if not self.initialized:
            return ClusterStatus("uninitialized")
        pid = self.pid
        if pid is None:
            return ClusterStatus("stopped")
        return ClusterStatus("running", pid, self.port, str(self.socket_dir))

    def dsn(self, dbname: str = "postgres", *, tcp: bool = False) -> str:
        """libpq conninfo for ``dbname`` as superuser ``postgres`` (unix socket unless tcp)."""
        if not self.port:
            raise ClusterError(f"the cluster in {self.data_dir} has never been started")
        host = "127.0.0.1" if tcp else str(self.socket_dir)
        return " ".join(
            f"{k}={_quote_conninfo(v)}"
            for k, v in (
                ("host", host),
                ("port", str(self.port)),
                ("user", SUPERUSER),
                ("dbname", dbname),
            )
        )

    def env(self, dbname: str = "postgres") -> dict[str, str]:
        """libpq environment variables (PGHOST, PGPORT, PGUSER, PGDATABASE) for this server."""
        if not self.port:
            raise ClusterError(f"the cluster in {self.data_dir} has never been started")
        return {
            "PGHOST": str(self.socket_dir),
            "PGPORT": str(self.port),
            "PGUSER": SUPERUSER,
            "PGDATABASE": dbname,
        }

    def __repr__(self) -> str:
        return f"Cluster({str(self.data_dir)!r}, port={self.port or None})"


def children(pid: int) -> list[int]:
    """The pids of the processes whose parent is ``pid`` (a postmaster's backends)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) > 1 and fields[1] == str(pid):
            found.append(int(entry.name))
    return found


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    fields = stat.rsplit(")", 1)[-1].split()
    return bool(fields) and fields[0] == "Z"


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m active_series.devtools.cluster ACTION DATA_DIR`` (start, stop, ...)."""
    parser = argparse.ArgumentParser(
        prog="python -m active_series.devtools.cluster",
        description="Run a local PostgreSQL cluster for tests and demos.",
    )
    parser.add_argument(
        "action",
        choices=["start", "stop", "restart", "status", "dsn", "env", "kill"],
        help="env prints `export PGHOST=...` lines for a shell's eval",
    )
    parser.add_argument("data_dir", help="the cluster's data directory (created if missing)")
    parser.add_argument("--port", type=int, default=None, help="default: a free port")
    parser.add_argument("--dbname", default="postgres", help="database named in the printed DSN")
    parser.add_argument("--tcp", action="store_true", help="print a TCP DSN (127.0.0.1)")
    args = parser.parse_args(argv)
    try:
        cluster = Cluster(args.data_dir, args.port)
        if args.action == "start":
            cluster.start()
            print(cluster.dsn(args.dbname, tcp=args.tcp))
        elif args.action == "stop":
            cluster.stop()
        elif args.action == "restart":
            cluster.restart()
        elif args.action == "kill":
            cluster.kill()
        elif args.action == "status":
            status = cluster.status()
            print(status)
            return 0 if status.running else 3
        elif args.action == "env":
            for key, value in cluster.env(args.dbname).items():
                print(f"export {key}={shlex.quote(value)}")
        else:
            print(cluster.dsn(args.dbname, tcp=args.tcp))
    except ClusterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
