"""How the worker stops: the first SIGTERM/SIGINT asks it to stop (finish the organization in
hand, up to ``shutdown_timeout``); a second one, or the timeout, exits at once."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from typing import Any


class StopSignals:
    """A stop request: :attr:`stop` is set, and :attr:`wake_fd` becomes readable so that a
    ``select`` waiting on it returns."""

    def __init__(self, shutdown_timeout: float) -> None:
        self.stop = threading.Event()
        self.shutdown_timeout = shutdown_timeout
        self.received = 0
        self.wake_fd, self._write_fd = os.pipe()
        os.set_blocking(self._write_fd, False)

    def install(self) -> None:
        """Handle SIGTERM and SIGINT (only the main thread may)."""
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._on_signal)
            signal.signal(signal.SIGINT, self._on_signal)

    def wake(self) -> None:
        """Make :attr:`wake_fd` readable (from any thread): a ``select`` on it returns."""
        with contextlib.suppress(OSError):
            os.write(self._write_fd, b"w")

    def clear_wake(self) -> None:
        with contextlib.suppress(OSError):
            os.read(self.wake_fd, 64)

    def _on_signal(self, _signum: int, _frame: Any) -> None:
        self.received += 1
        if self.received > 1:
            os.write(2, b"event=exit reason=second_signal\n")
            os._exit(130)
        self.stop.set()
        with contextlib.suppress(OSError):
            os.write(self._write_fd, b"x")
        timer = threading.Timer(self.shutdown_timeout, _shutdown_timeout)
        timer.daemon = True
        timer.start()


def _shutdown_timeout() -> None:
    os.write(2, b"event=exit reason=shutdown_timeout\n")
    os._exit(1)
