"""``active-series worker`` as a real subprocess: the one way the demo, the tests and the
benchmarks start a worker."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path


def _parent_death_signal() -> Callable[[], None] | None:
    """A preexec_fn giving the worker SIGTERM when its parent dies, even by SIGKILL (Linux
    prctl PR_SET_PDEATHSIG). libc is loaded here, before the fork, not in the child."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None

    def set_signal() -> None:
        prctl(1, int(signal.SIGTERM))

    return set_signal


class WorkerProcess:
    """A worker for ``dsn`` posting to the Stripe API at ``api_base`` with ``api_key``;
    ``extra`` are more ``worker`` options. Its stdout and stderr go to ``log_path``
    (appended to, or started afresh with ``fresh_log``). ``detach`` puts it in its own
    session (a Ctrl-C reaches only its parent, which then stops it) and sends it SIGTERM
    when its parent dies."""

    def __init__(
        self,
        dsn: str,
        api_base: str,
        *extra: str,
        api_key: str,
        log_path: Path,
        fresh_log: bool = False,
        detach: bool = False,
    ) -> None:
        self.log_path = log_path
        self.api_key = api_key
        self.fresh_log = fresh_log
        self.detach = detach
        self.args = [
            sys.executable,
            "-m",
            "active_series.cli",
            "worker",
            "--dsn",
            dsn,
            "--stripe-api-base",
            api_base,
            *extra,
        ]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        env = dict(os.environ, STRIPE_API_KEY=self.api_key)
        with open(self.log_path, "wb" if self.fresh_log else "ab") as log:
            self.proc = subprocess.Popen(
                self.args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=self.detach,
                preexec_fn=_parent_death_signal() if self.detach else None,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def terminate(self, timeout: float = 30) -> int:
        """SIGTERM (a graceful stop); returns the exit code."""
        assert self.proc is not None, "not started"
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def stop(self, timeout: float = 15) -> None:
        """SIGTERM, then SIGKILL when it has not exited after ``timeout`` seconds."""
        if not self.alive():
            return
        try:
            self.terminate(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""
