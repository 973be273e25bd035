"""Installing the extension: from the Python package (wheel), by PGXS + CREATE EXTENSION,
idempotently, and with the version checked."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import active_series
import psycopg
import pytest
from active_series.cluster import Cluster
from active_series.install import SchemaVersionError, check_version, install, installed_version
from psycopg import sql

REPO = Path(__file__).resolve().parents[2]
CONTROL_VERSION = re.search(
    r"^default_version\s*=\s*'([^']+)'",
    (REPO / "active_series.control").read_text(),
    re.MULTILINE,
).group(1)  # type: ignore[union-attr]

# What a copy of the source tree leaves out: build outputs, caches, environments.
_SKIP_DIRS = {".git", ".venv", ".tmp", "build", "dist", "__pycache__", ".hypothesis"}


def _is_built_script(name: str) -> bool:
    """active_series--<version>.sql, the build output (not an A--B upgrade script)."""
    prefix = "active_series--"
    return name.startswith(prefix) and name.endswith(".sql") and "--" not in name[len(prefix) :]


def _not_sources(directory: str, names: list[str]) -> set[str]:
    return {
        name
        for name in names
        if name in _SKIP_DIRS or name.endswith((".egg-info", "_cache")) or _is_built_script(name)
    }


@pytest.fixture
def empty_dsn(pg_cluster: Any, superuser_dsn: str) -> Iterator[str]:
    """A new database without the active_series schema."""
    name = f"active_series_empty_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(superuser_dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name)))
    yield pg_cluster.dsn(name)
    with psycopg.connect(superuser_dsn, autocommit=True) as admin:
        admin.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def schema_snapshot(dsn: str) -> list[tuple[str, ...]]:
    """Every object of schema active_series (relations, functions, triggers) and _meta."""
    with psycopg.connect(dsn) as c:
        rows = c.execute(
            """
            SELECT 'rel', c.relname, c.relkind::text
            FROM pg_class AS c WHERE c.relnamespace = 'active_series'::regnamespace
            UNION ALL
            SELECT 'fn', p.oid::regprocedure::text, md5(p.prosrc)
            FROM pg_proc AS p WHERE p.pronamespace = 'active_series'::regnamespace
            UNION ALL
            SELECT 'trigger', t.tgrelid::regclass::text, t.tgname
            FROM pg_trigger AS t JOIN pg_class AS c ON c.oid = t.tgrelid
            WHERE c.relnamespace = 'active_series'::regnamespace AND NOT t.tgisinternal
            UNION ALL
            SELECT 'meta', version, '' FROM active_series._meta
            ORDER BY 1, 2, 3
            """
        ).fetchall()
    return [tuple(str(v) for v in row) for row in rows]


def test_the_package_version_is_the_control_file_version() -> None:
    assert active_series.__version__ == CONTROL_VERSION, (
        "the installed package metadata is stale: re-run `make deps` (pip install -e .)"
    )


def test_install_creates_the_schema_and_records_the_version(empty_dsn: str) -> None:
    assert install(empty_dsn) == CONTROL_VERSION
    with psycopg.connect(empty_dsn) as c:
        assert installed_version(c) == CONTROL_VERSION
        assert check_version(c) == CONTROL_VERSION


def test_install_twice_is_idempotent(empty_dsn: str) -> None:
    install(empty_dsn)
    before = schema_snapshot(empty_dsn)
    assert install(empty_dsn) == CONTROL_VERSION
    assert schema_snapshot(empty_dsn) == before
    assert [row for row in before if row[0] == "meta"] == [("meta", CONTROL_VERSION, "")]


def test_install_over_the_template_clone_changes_nothing(dsn: str) -> None:
    before = schema_snapshot(dsn)
    assert install(dsn) == CONTROL_VERSION
    assert schema_snapshot(dsn) == before


def test_check_version_raises_on_a_mismatch(conn: psycopg.Connection[Any]) -> None:
    assert check_version(conn) == CONTROL_VERSION
    with pytest.raises(SchemaVersionError, match=r"0\.0\.0-other"):
        check_version(conn, "0.0.0-other")


def test_check_version_raises_when_nothing_is_installed(empty_dsn: str) -> None:
    with psycopg.connect(empty_dsn) as c, pytest.raises(SchemaVersionError, match="not installed"):
        check_version(c)


def test_install_refuses_a_plain_install_of_another_version(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("UPDATE active_series._meta SET version = '0.0.0-older'")
    with pytest.raises(SchemaVersionError, match="0.0.0-older"):
        install(dsn)


def _clean_env() -> dict[str, str]:
    """The environment without the variables of an enclosing make or virtualenv."""
    drop = {"MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES", "VIRTUAL_ENV", "PYTHONHOME"}
    return {k: v for k, v in os.environ.items() if k not in drop}


def _run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        argv, capture_output=True, text=True, env=_clean_env(), check=False, **kwargs
    )
    assert proc.returncode == 0, f"{' '.join(argv)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.mark.slow
def test_the_wheel_carries_the_sql_script_and_installs_through_it(
    tmp_path: Path, empty_dsn: str
) -> None:
    # Build from a copy without any generated script: the build itself must make it.
    src = tmp_path / "src"
    shutil.copytree(REPO, src, ignore=_not_sources)
    dist = tmp_path / "dist"
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)])
    pip = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "-q"]
    _run([*pip, "wheel", "--no-deps", "-w", str(dist), str(src)])
    wheels = list(dist.glob("active_series-*.whl"))
    assert len(wheels) == 1, wheels
    script = f"active_series/sql/active_series--{CONTROL_VERSION}.sql"
    with zipfile.ZipFile(wheels[0]) as whl:
        assert script in whl.namelist()
        assert "CREATE" in whl.read(script).decode()
        assert "active_series/sql/optional/plpython.sql" in whl.namelist()
    _run([*pip, "install", "--no-deps", str(wheels[0])])

    # The package's dependencies (psycopg) come from this test's environment, after the
    # venv's own site-packages, so the package itself is the freshly installed one.
    venv_site = Path(
        _run(
            [
                str(venv / "bin" / "python"),
                "-c",
                "import sysconfig; print(sysconfig.get_paths()['purelib'])",
            ]
        ).stdout.strip()
    )
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (venv_site / "zz_test_deps.pth").write_text("\n".join(sorted(ours)) + "\n")

    probe = (
        "import sys, active_series, active_series.install as i\n"
        "print(active_series.__file__)\n"
        "print(i.install(sys.argv[1]))\n"
    )
    out = _run([str(venv / "bin" / "python"), "-c", probe, empty_dsn], cwd=tmp_path)
    module_file, version = out.stdout.split()
    assert Path(module_file).is_relative_to(venv), module_file
    assert version == CONTROL_VERSION
    with psycopg.connect(empty_dsn) as c:
        assert check_version(c) == CONTROL_VERSION


def _pg_config(pg_cluster: Any) -> str:
    if isinstance(pg_cluster, Cluster) and (pg_cluster.bindir / "pg_config").exists():
        return str(pg_cluster.bindir / "pg_config")
    return os.environ.get("PG_CONFIG", "/usr/lib/postgresql/15/bin/pg_config")


@pytest.mark.slow
def test_make_install_then_create_extension(pg_cluster: Any, empty_dsn: str) -> None:
    if not isinstance(pg_cluster, Cluster):
        pytest.skip("make install places files for a local server; the test server is external")
    pg_config = _pg_config(pg_cluster)
    sharedir = Path(_run([pg_config, "--sharedir"]).stdout.strip()) / "extension"
    if os.geteuid() != 0 and not os.access(sharedir, os.W_OK):
        pytest.skip(f"make install needs write access to {sharedir} (run as root)")
    _run(["make", "--no-print-directory", "-C", str(REPO), "install", f"PG_CONFIG={pg_config}"])
    assert (sharedir / "active_series.control").exists()
    assert (sharedir / f"active_series--{CONTROL_VERSION}.sql").exists()

    with psycopg.connect(empty_dsn, autocommit=True) as c:
        c.execute("CREATE EXTENSION active_series")
        row = c.execute(
            "SELECT extversion, extnamespace::regnamespace::text FROM pg_extension"
            " WHERE extname = 'active_series'"
        ).fetchone()
        assert row == (CONTROL_VERSION, "active_series")
        assert check_version(c) == CONTROL_VERSION
    # install() leaves an extension of its own version alone.
    assert install(empty_dsn) == CONTROL_VERSION
