"""How the commands print: tables or JSON, and the backfill's progress."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, TextIO

from active_series.text import table_lines


def print_table(names: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    print("\n".join(table_lines(names, rows)))


def output(as_json: bool, names: Sequence[str], rows: Sequence[Any]) -> None:
    if as_json:
        print(json.dumps([dict(zip(names, row, strict=True)) for row in rows], default=str))
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
