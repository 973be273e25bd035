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


# SQLSTATEs of a login the server refuses (rather than one it cannot take now): bad
# credentials, no such role or database, no LOGIN, no CONNECT.
_REFUSED_LOGIN_STATES = {"28000", "28P01", "3D000", "42501"}
# libpq usually reports a failed connection without a SQLSTATE: the server's messages for
# the same refusals (a server starting up, shutting down or full is not refusing the role)
_REFUSED_LOGIN_TEXT = (
    "authentication failed",
    "no pg_hba.conf entry",
    "does not exist",
    "is not permitted to log in",
    "permission denied for database",
)


def login_refused(exc: BaseException) -> bool:
    """Whether a failed connection is the server refusing the login, which retrying cannot
    fix, rather than the server being unreachable or busy for now."""
    state = getattr(exc, "sqlstate", None)
    if state in _REFUSED_LOGIN_STATES:
        return True
    text = str(exc)
    return "FATAL" in text and any(m in text for m in _REFUSED_LOGIN_TEXT)
