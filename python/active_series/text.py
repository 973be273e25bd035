"""Plain-text output shared by the command line and the developer tools: messages, tables,
and Stripe amounts in their currency's major units."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Any, Final

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


#: Stripe's zero-decimal currencies: an API amount is in whole units (1000 jpy is ¥1000).
#: Every other currency's API amount is in hundredths, but for the three-decimal ones below.
#: (docs.stripe.com/currencies; ISK, HUF and TWD count in hundredths in the API.)
ZERO_DECIMAL_CURRENCIES: Final = frozenset(
    [
        "bif",
        "clp",
        "djf",
        "gnf",
        "jpy",
        "kmf",
        "krw",
        "mga",
        "pyg",
        "rwf",
        "ugx",
        "vnd",
        "vuv",
        "xaf",
        "xof",
        "xpf",
    ]
)
#: Stripe's three-decimal currencies: an API amount is in thousandths.
THREE_DECIMAL_CURRENCIES: Final = frozenset(["bhd", "jod", "kwd", "omr", "tnd"])


def currency_decimals(currency: str) -> int:
    """The digits after the point of a Stripe amount in ``currency`` (0, 2 or 3)."""
    code = currency.lower()
    if code in ZERO_DECIMAL_CURRENCIES:
        return 0
    return 3 if code in THREE_DECIMAL_CURRENCIES else 2


def major_units(minor: int, currency: str) -> str:
    """A Stripe amount (minor units, as the API and the price preview give it) in the
    currency's major units, exactly: 3100 usd -> '31.00', 3100 jpy -> '3100'."""
    digits = currency_decimals(currency)
    return f"{Decimal(minor).scaleb(-digits):.{digits}f}"


def money(minor: int, currency: str) -> str:
    """An amount for people: '31.00 USD', '3100 JPY'."""
    return f"{major_units(minor, currency)} {currency.upper()}"
