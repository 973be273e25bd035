"""The ``active-series`` command line: parse (:mod:`.parser`), hand off (:mod:`.commands`),
print an expected failure as one line on stderr and exit with its code
(:class:`~active_series.errors.ExitCode`); no traceback."""

from __future__ import annotations

import sys
from collections.abc import Sequence

import psycopg

from active_series.cli.commands import cmd_stripe_emulator
from active_series.cli.parser import build_parser, parse_time
from active_series.errors import CommandError, ExitCode
from active_series.text import pg_message

__all__ = ["build_parser", "main", "parse_time"]


def main(argv: Sequence[str] | None = None) -> int:
    args, extra = build_parser().parse_known_args(sys.argv[1:] if argv is None else argv)
    if args.command == "stripe-emulator":  # its options, --help included, are its own
        return cmd_stripe_emulator(extra)
    if extra:
        build_parser().error(f"unrecognized arguments: {' '.join(extra)}")
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
    except psycopg.Error as exc:
        print(f"active-series: {pg_message(exc)}", file=sys.stderr)
        return ExitCode.FAILURE
