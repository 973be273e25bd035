"""Install or upgrade the extension's objects over a plain connection.

``CREATE EXTENSION active_series`` needs the scripts in the server's share directory
(``make install``); ``ALTER EXTENSION active_series UPDATE`` then upgrades it.  Where files
cannot be placed (managed PostgreSQL), this module runs the same scripts, shipped inside
the Python package, in one transaction: the install script of a version, or the chain of
upgrade scripts from the installed version.  Either way ``active_series._meta`` records
the version, which the CLI and the worker check before they touch anything.
"""

from __future__ import annotations

from collections import deque
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Final

import psycopg
from psycopg import sql

from active_series import __version__
from active_series.text import pg_message

SCHEMA = "active_series"
PREFIX = "active_series--"


class InstallError(RuntimeError):
    """The schema or its optional parts cannot be installed."""


class SchemaVersionError(InstallError):
    """The database holds no active_series schema, or one of another version."""


class InstallPermissionError(InstallError):
    """The connecting role may not install or upgrade the schema there."""


def _scripts() -> Traversable:
    return resources.files("active_series") / "sql"


def _read(name: str) -> str:
    """A shipped script, without its psql-only guard line."""
    lines = (_scripts() / name).read_text().splitlines(keepends=True)
    return "".join(line for line in lines if not line.startswith("\\echo"))


def _shipped() -> tuple[set[str], dict[str, list[tuple[str, str]]]]:
    """The versions this package installs from scratch, and its upgrade scripts as
    (version they reach, file name) by the version they start from."""
    versions: set[str] = set()
    steps: dict[str, list[tuple[str, str]]] = {}
    for entry in _scripts().iterdir():
        name = entry.name
        if name.startswith(PREFIX) and name.endswith(".sql"):
            old, upgrade, new = name[len(PREFIX) : -len(".sql")].partition("--")
            if upgrade:
                steps.setdefault(old, []).append((new, name))
            else:
                versions.add(old)
    return versions, steps


def available_versions() -> set[str]:
    """The versions this package can install from scratch."""
    return _shipped()[0]


def script_text(version: str = __version__) -> str:
    """The install script of ``version``."""
    if version not in available_versions():
        raise SchemaVersionError(
            f"this package cannot install active_series {version} "
            f"(it ships {', '.join(sorted(available_versions()))})"
        )
    return _read(f"{PREFIX}{version}.sql")


def upgrade_path(found: str, target: str = __version__) -> list[str]:
    """The upgrade scripts, in order, from ``found`` to ``target`` (the fewest steps,
    as ALTER EXTENSION chooses); [] when they are equal; SchemaVersionError if none."""
    steps = _shipped()[1]
    paths: dict[str, list[str]] = {found: []}
    queue = deque([found])
    while queue:
        version = queue.popleft()
        if version == target:
            return paths[version]
        for new, name in sorted(steps.get(version, [])):
            if new not in paths:
                paths[new] = [*paths[version], name]
                queue.append(new)
    raise SchemaVersionError(
        f"the database has active_series {found} and this program, {target}, has no upgrade "
        f"path from it (a newer database needs a newer active-series)"
    )


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
            f"the database has active_series {found}, this program is {expected}: "
            "run `active-series install --dsn ...` with this program to upgrade the "
            "database, or use the active-series release that matches it"
        )
    return found


def check_attached(conn: psycopg.Connection) -> None:
    """Raise SchemaVersionError unless tables are attached (the data model to read)."""
    row = conn.execute("SELECT EXISTS (SELECT FROM active_series._attachment)").fetchone()
    if not row or not row[0]:
        raise SchemaVersionError(
            "no tables are attached to active_series in this database: run "
            "`active-series create-model` (the reference data model) or `active-series attach` "
            "(your own tables)"
        )


def install(conninfo: str, version: str = __version__) -> str:
    """Install ``version`` (this package's by default), or upgrade to it; return it.

    Idempotent.  An extension made with CREATE EXTENSION is upgraded with ALTER EXTENSION
    ... UPDATE (the server needs the upgrade scripts: ``make install``); a plain install
    runs the upgrade scripts shipped in this package, in one transaction.  Never
    downgrades.
    """
    return install_or_upgrade(conninfo, version)[1]


# the owner of what is installed (the extension's, else the schema's), and whether the
# connecting role has its rights (a superuser has every role's)
OWNER: Final = """
SELECT coalesce(e.extowner, n.nspowner)::regrole::text,
       pg_has_role(coalesce(e.extowner, n.nspowner), 'USAGE')
FROM pg_namespace AS n
LEFT JOIN pg_extension AS e ON e.extname = 'active_series'
WHERE n.nspname = 'active_series'
"""


def install_or_upgrade(conninfo: str, version: str = __version__) -> tuple[str | None, str]:
    """:func:`install`, returning (the version found before, or None; the version now).
    InstallPermissionError when the schema exists and the connecting role is neither its
    owner (nor a member of that role) nor a superuser: installing, upgrading and the check
    of an installed version alike are the owner's."""
    with psycopg.connect(conninfo, autocommit=False) as conn:
        owner = conn.execute(OWNER).fetchone()
        if owner is not None and not owner[1]:
            raise InstallPermissionError(f"active_series here belongs to role {owner[0]}")
        # one install or upgrade at a time per database
        conn.execute("SELECT pg_advisory_xact_lock(1634956101)")
        ext = conn.execute(
            "SELECT extversion FROM pg_extension WHERE extname = 'active_series'"
        ).fetchone()
        if ext is not None:
            if ext[0] != version:
                upgrade_path(ext[0], version)  # a clear error where there is no path
                try:
                    conn.execute(
                        sql.SQL("ALTER EXTENSION active_series UPDATE TO {}").format(
                            sql.Literal(version)
                        )
                    )
                except psycopg.errors.InvalidParameterValue as exc:
                    raise SchemaVersionError(
                        f"the server cannot update the extension from {ext[0]} to {version} "
                        f"({exc}): run `make install` of this release on the server first"
                    ) from exc
            conn.commit()
            return ext[0], version
        found = installed_version(conn)
        if found is None:
            script = script_text(version)  # a clear error for a version this package lacks
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(SCHEMA)))
            conn.execute(script)
        else:
            for name in upgrade_path(found, version):
                conn.execute(_read(name))
        conn.commit()
    return found, version


def create_reference_model(conninfo: str, schema: str = SCHEMA) -> bool:
    """The reference data model as the caller's tables in ``schema``, attached, unless
    tables are attached already (an upgraded 0.3.0 database has its own); True when made."""
    with psycopg.connect(conninfo, autocommit=False) as conn:
        check_version(conn)
        conn.execute("LOCK TABLE active_series._attachment IN SHARE ROW EXCLUSIVE MODE")
        if conn.execute("SELECT EXISTS (SELECT FROM active_series._attachment)").fetchone() == (
            True,
        ):
            return False
        conn.execute("SELECT active_series.create_reference_model(%s)", (schema,))
        conn.commit()
    return True


def plpython_script() -> str:
    """sql/optional/plpython.sql, shipped in the package beside the extension script."""
    packaged = _scripts() / "optional" / "plpython.sql"
    if packaged.is_file():
        return packaged.read_text()
    raise InstallError("this installation does not ship sql/optional/plpython.sql")


def install_plpython(conninfo: str, mode: str) -> str:
    """The optional PL/Python function stripe_reconcile. ``mode``: "auto"
    installs it when plpython3u is available and this role may create it (or it exists),
    "yes" insists, "no" skips. Returns what was done, for the user; InstallError when it
    cannot be done and ``mode`` is "yes" (or the role lacks a privilege)."""
    if mode == "no":
        return ""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        row = conn.execute(
            "SELECT EXISTS (SELECT FROM pg_available_extensions WHERE name = 'plpython3u'),"
            " EXISTS (SELECT FROM pg_extension WHERE extname = 'plpython3u'),"
            " (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)"
        ).fetchone()
        assert row is not None
        available, created, superuser = row
        if not available:
            if mode == "yes":
                raise InstallError(
                    "plpython3u is not available on this server "
                    "(Debian: apt-get install postgresql-plpython3-15)"
                )
            return "PL/Python functions skipped: plpython3u is not available on the server"
        if not (created or superuser) and mode == "auto":
            return "PL/Python functions skipped: creating plpython3u needs a superuser"
        try:
            with conn.transaction():
                conn.execute(plpython_script())
        except psycopg.errors.InsufficientPrivilege as exc:
            raise InstallError(
                f"cannot install the PL/Python functions: {pg_message(exc)}"
            ) from None
    return "PL/Python function stripe_reconcile installed"
