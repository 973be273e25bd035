"""How the commands print: tables or JSON, and the backfill's progress.

Every JSON the commands print goes through :func:`to_json`: times in ISO 8601 in UTC
(``2026-11-01T00:00:00+00:00``), durations in ISO 8601 (``PT90.5S``), jsonb values as
JSON objects, and numeric values as strings (exact).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any, TextIO

from active_series.text import table_lines


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return (value.astimezone(UTC) if value.tzinfo else value).isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, timedelta):
        return _duration(value)
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _duration(value: timedelta) -> str:
    """An interval in ISO 8601 seconds, exactly: PT90.5S (negative: -PT0.5S)."""
    if value < timedelta(0):
        return "-" + _duration(-value)
    seconds = f"{value.days * 86400 + value.seconds}.{value.microseconds:06d}"
    return f"PT{seconds.rstrip('0').rstrip('.')}S"


def to_json(value: Any) -> str:
    """One line of JSON, the same formats from every command."""
    return json.dumps(value, default=_json_value)


def _cell(value: Any) -> Any:
    """A table cell: a jsonb value as its JSON text, anything else as it is."""
    return json.dumps(value, sort_keys=True) if isinstance(value, dict | list) else value


def print_table(names: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    print("\n".join(table_lines(names, [[_cell(v) for v in row] for row in rows])))


def output(as_json: bool, names: Sequence[str], rows: Sequence[Any]) -> None:
    if as_json:
        print(to_json([dict(zip(names, row, strict=True)) for row in rows]))
    else:
        print_table(names, rows)


class Progress:
    """Shows backfill's NOTICEs: a redrawn bar on a terminal, the plain lines otherwise."""

    WIDTH = 30

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.drawn = False

    def notice(self, message: str) -> None:
        text = message.removeprefix("active_series backfill: ")
        done, sep, rest = text.partition(" of ")
        total = rest.split(" ", 1)[0]
        if not (self.tty and sep and done.isdigit() and total.isdigit()):
            if self.drawn:
                self.stream.write("\n")
                self.drawn = False
            self.stream.write(f"backfill: {text}\n")
            self.stream.flush()
            return
        n, of = int(done), max(int(total), 1)
        filled = min(self.WIDTH, self.WIDTH * n // of)
        bar = "#" * filled + "-" * (self.WIDTH - filled)
        self.stream.write(f"\rbackfill [{bar}] {100 * n // of:3d}% {n}/{of} reports")
        self.stream.flush()
        self.drawn = True

    def finish(self) -> None:
        if self.drawn:
            self.stream.write("\n")
            self.stream.flush()
            self.drawn = False
