"""Plain-text output shared by the command line and the developer tools."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg


def first_line(text: str | BaseException) -> str:
    """The first non-blank line of a message or an exception (its type when it has none)."""
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    if lines:
        return lines[0]
    return type(text).__name__ if isinstance(text, BaseException) else "unknown error"


def table_lines(names: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    """A left-aligned table: a header line, then one line per row (None prints empty)."""
    cells = [[("" if v is None else str(v)) for v in row] for row in rows]
    widths = [max([len(n)] + [len(r[i]) for r in cells]) for i, n in enumerate(names)]
    return [
        "  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip()
        for line in [list(names), *cells]
    ]


def pg_message(exc: psycopg.Error) -> str:
    """A database error in one line: its primary message, without our functions' prefix."""
    diag = exc.diag.message_primary if exc.diag else None
    return first_line(diag or str(exc)).removeprefix("active_series: ")
