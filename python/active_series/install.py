"""Install or upgrade the extension's objects over a plain connection.

``CREATE EXTENSION active_series`` needs the script in the server's share
directory (``make install``).  Where files cannot be placed (managed
PostgreSQL), this module runs the same script, shipped inside the Python
package, in one transaction, and records the version in
``active_series._meta``.
"""

from __future__ import annotations

from importlib import resources

import psycopg
from psycopg import sql

from active_series import __version__

SCHEMA = "active_series"


class SchemaVersionError(RuntimeError):
    """The database holds no active_series schema, or one of another version."""


def script_text(version: str = __version__) -> str:
    """The extension script for ``version``, without its psql-only guard line."""
    path = resources.files("active_series") / "sql" / f"active_series--{version}.sql"
    lines = path.read_text().splitlines(keepends=True)
    return "".join(line for line in lines if not line.startswith("\\echo"))


def installed_version(conn: psycopg.Connection) -> str | None:
    """The version recorded in the database, or None when nothing is installed."""
    row = conn.execute("SELECT to_regclass('active_series._meta') IS NOT NULL").fetchone()
    if not row or not row[0]:
        return None
    got = conn.execute("SELECT version FROM active_series._meta").fetchone()
    return got[0] if got else None


def check_version(conn: psycopg.Connection, expected: str = __version__) -> str:
    """Raise SchemaVersionError unless the installed schema is ``expected``."""
    found = installed_version(conn)
    if found is None:
        raise SchemaVersionError(
            "the active_series schema is not installed in this database "
            "(run: active-series install --dsn ...)"
        )
    if found != expected:
        raise SchemaVersionError(
            f"the database has active_series {found}, this program is {expected} "
            "(run: active-series install --dsn ... to upgrade)"
        )
    return found


def install(conninfo: str) -> str:
    """Install the objects of this package's version; return the version installed.

    Idempotent for the same version.  An existing extension created with
    CREATE EXTENSION is left to ALTER EXTENSION ... UPDATE.
    """
    with psycopg.connect(conninfo, autocommit=False) as conn:
        ext = conn.execute(
            "SELECT extversion FROM pg_extension WHERE extname = 'active_series'"
        ).fetchone()
        if ext is not None:
            if ext[0] != __version__:
                conn.execute(
                    sql.SQL("ALTER EXTENSION active_series UPDATE TO {}").format(
                        sql.Literal(__version__)
                    )
                )
            conn.commit()
            return __version__
        found = installed_version(conn)
        if found == __version__:
            return found
        if found is not None:
            raise SchemaVersionError(
                f"upgrading a plain install from {found} to {__version__} is not supported yet"
            )
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(SCHEMA)))
        conn.execute(script_text())
        conn.commit()
    return __version__
