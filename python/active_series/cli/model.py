"""The data model commands: ``create-model``, ``attach`` and ``detach``.

Each is one call of the SQL function of the same purpose (create_reference_model, attach,
detach): the command line adds only the parsing of ``ROLE=TABLE`` and
``ROLE.COLUMN=NAME`` arguments and a one-line error for what the database refuses.
"""

from __future__ import annotations

import argparse
from typing import Any, Final

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from active_series.cli.commands import connect
from active_series.errors import CommandError, ExitCode
from active_series.text import pg_message

ROLES: Final = (
    "organization",
    "project",
    "testbed",
    "benchmark",
    "variant",
    "measure",
    "report",
    "report_benchmark",
    "metric",
)

#: What the database says about bad model input (SQLSTATE classes 22, 23, 42, 0A and 55).
REFUSALS: Final = (
    psycopg.DataError,
    psycopg.IntegrityError,
    psycopg.ProgrammingError,
    psycopg.NotSupportedError,
    psycopg.errors.ObjectNotInPrerequisiteState,
)


def parse_tables(items: list[str]) -> dict[str, str]:
    """``ROLE=TABLE`` arguments -> {role: table}."""
    out: dict[str, str] = {}
    for item in items:
        role, sep, table = item.partition("=")
        if not sep or not table or role not in ROLES:
            raise CommandError(
                f"--table {item!r}: expected ROLE=TABLE with ROLE one of {', '.join(ROLES)}",
                ExitCode.INPUT,
            )
        if role in out:
            raise CommandError(f"--table: role {role} is given twice", ExitCode.INPUT)
        out[role] = table
    return out


def parse_columns(items: list[str]) -> dict[str, dict[str, str | None]]:
    """``ROLE.COLUMN=NAME`` arguments (an empty NAME: the table has none) -> the JSON object
    attach takes."""
    out: dict[str, dict[str, str | None]] = {}
    for item in items:
        key, sep, name = item.partition("=")
        role, dot, column = key.partition(".")
        if not sep or not dot or not column or role not in ROLES:
            raise CommandError(
                f"--column {item!r}: expected ROLE.COLUMN=NAME, e.g. report.created=created_at",
                ExitCode.INPUT,
            )
        out.setdefault(role, {})[column] = name or None
    return out


def attach(conn: psycopg.Connection[Any], tables: dict[str, str], columns: dict[str, Any]) -> list:
    """active_series.attach with each role's table; returns what it recorded."""
    args = sql.SQL(", ").join(
        sql.SQL("{} => {}::regclass").format(sql.Identifier(role), sql.Literal(table))
        for role, table in tables.items()
    )
    query = sql.SQL(
        "SELECT role, format('%I.%I', table_schema, table_name), columns"
        " FROM active_series.attach({}, columns => {})"
    ).format(args, sql.Literal(Jsonb(columns)))
    return conn.execute(query).fetchall()


def refused(exc: psycopg.Error) -> CommandError:
    return CommandError(pg_message(exc), ExitCode.INPUT)


def print_attachment(rows: list[tuple[str, str, dict[str, str]]], verb: str) -> None:
    for role, table, columns in rows:
        renamed = ", ".join(f"{k}={v}" for k, v in sorted(columns.items()) if k != v)
        print(f"{verb} {role}: {table}" + (f" ({renamed})" if renamed else ""))


def cmd_create_model(args: argparse.Namespace) -> int:
    try:
        with connect(args, attached=False) as conn:
            conn.execute("SELECT active_series.create_reference_model(%s)", (args.schema,))
    except psycopg.errors.InsufficientPrivilege:
        raise  # main names the role the command needs
    except REFUSALS as exc:
        raise refused(exc) from None
    print(f"reference model created in schema {args.schema} and attached")
    return ExitCode.OK


def cmd_attach(args: argparse.Namespace) -> int:
    tables = parse_tables(args.table)
    columns = parse_columns(args.column)
    try:
        with connect(args, attached=False) as conn:
            rows = attach(conn, tables, columns)
    except psycopg.errors.InsufficientPrivilege:
        raise  # main names the role the command needs
    except REFUSALS as exc:
        raise refused(exc) from None
    print_attachment(rows, "attached")
    print("existing rows are not counted yet: run CALL active_series.backfill()")
    return ExitCode.OK


def cmd_detach(args: argparse.Namespace) -> int:
    with connect(args, attached=False) as conn:
        rows = conn.execute(
            "SELECT role, format('%I.%I', table_schema, table_name), columns"
            " FROM active_series.detach() ORDER BY role"
        ).fetchall()
    if not rows:
        print("nothing was attached")
    print_attachment(rows, "detached")
    return ExitCode.OK
