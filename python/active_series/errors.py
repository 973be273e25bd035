"""Exit codes of the ``active-series`` commands and the error that carries one."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    FAILURE = 1  # verify found drift; another database error; the demo ended out of sync
    USAGE = 2  # argparse's own
    DATABASE = 3  # unreachable or refused
    SCHEMA = 4  # not installed or another version
    NOT_FOUND = 5  # unknown organization
    INPUT = 6  # bad dates or other rejected input
    STRIPE_KEY = 7  # STRIPE_API_KEY missing (worker, close-period)
    METER = 8  # the Stripe meter is missing, inactive or does not fit the worker
    INTERRUPTED = 130  # Ctrl-C


class CommandError(Exception):
    """An expected failure of a command: one line for the user and its exit code."""

    def __init__(self, message: str, code: ExitCode) -> None:
        super().__init__(message)
        self.code = code
