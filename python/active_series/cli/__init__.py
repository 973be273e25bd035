"""The ``active-series`` command line: parse (:mod:`.parser`), hand off (:mod:`.commands`,
and the developer tools' commands, registered by entry point),
print an expected failure as one line on stderr and exit with its code
(:class:`~active_series.errors.ExitCode`); no traceback. A privilege the database refuses
names the role the command needs (exit 3)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

import psycopg

from active_series.cli.commands import refused_privilege
from active_series.cli.parser import build_parser, parse_time
from active_series.errors import CommandError, ExitCode
from active_series.text import pg_message

__all__ = ["build_parser", "main", "parse_time"]


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "extra_args", False):
        parser.parse_args(argv)  # exits with the subcommand's own usage message
    args.extra = extra  # a command's own options (stripe-emulator's)
    try:
        return int(args.func(args))
    except CommandError as exc:
        print(f"active-series: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return ExitCode.INTERRUPTED
    except psycopg.OperationalError as exc:
        print(f"active-series: database error: {pg_message(exc)}", file=sys.stderr)
        return ExitCode.DATABASE
    except psycopg.errors.InsufficientPrivilege as exc:  # says which role the command needs
        print(f"active-series: {refused_privilege(args, exc)}", file=sys.stderr)
        return ExitCode.DATABASE
    except psycopg.Error as exc:
        print(f"active-series: {pg_message(exc)}", file=sys.stderr)
        return ExitCode.FAILURE
