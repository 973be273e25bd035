"""Installing the extension: from the Python package (wheel), by PGXS + CREATE EXTENSION,
idempotently, and with the version checked."""

from __future__ import annotations

import re
import shutil
import sys
import sysconfig
import zipfile
from pathlib import Path
from typing import Any

import active_series
import psycopg
import pytest
from active_series.install import SchemaVersionError, check_version, install, installed_version
from catalog import dsn_snapshot
from conftest import REPO, run_ok

CONTROL_VERSION = re.search(
    r"^default_version\s*=\s*'([^']+)'",
    (REPO / "active_series.control").read_text(),
    re.MULTILINE,
).group(1)  # type: ignore[union-attr]

# What a copy of the source tree leaves out: build outputs, caches, environments.
_SKIP_DIRS = {".git", ".venv", ".tmp", "build", "dist", "__pycache__", ".hypothesis"}


def _not_sources(directory: str, names: list[str]) -> set[str]:
    built = Path(directory).resolve() == REPO / "python" / "active_series" / "sql"
    return {
        name
        for name in names
        if name in _SKIP_DIRS
        or name.endswith((".egg-info", "_cache"))
        or (built and name.endswith(".sql"))
    }


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
    before = dsn_snapshot(empty_dsn)
    assert install(empty_dsn) == CONTROL_VERSION
    assert dsn_snapshot(empty_dsn) == before
    assert before["version"] == [(CONTROL_VERSION,)]


def test_install_over_the_template_clone_changes_nothing(dsn: str) -> None:
    before = dsn_snapshot(dsn)
    assert install(dsn) == CONTROL_VERSION
    assert dsn_snapshot(dsn) == before


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


@pytest.mark.slow
def test_the_wheel_carries_the_sql_script_and_installs_through_it(
    tmp_path: Path, empty_dsn: str
) -> None:
    # Build from a copy without any generated script: the build itself must make it.
    src = tmp_path / "src"
    shutil.copytree(REPO, src, ignore=_not_sources)
    dist = tmp_path / "dist"
    venv = tmp_path / "venv"
    run_ok([sys.executable, "-m", "venv", str(venv)])
    pip = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "-q"]
    run_ok([*pip, "wheel", "--no-deps", "-w", str(dist), str(src)])
    wheels = list(dist.glob("active_series-*.whl"))
    assert len(wheels) == 1, wheels
    script = f"active_series/sql/active_series--{CONTROL_VERSION}.sql"
    with zipfile.ZipFile(wheels[0]) as whl:
        assert script in whl.namelist()
        # every released version's script and every upgrade script, for plain upgrades
        for path in [
            *(REPO / "sql" / "releases").glob("*.sql"),
            *(REPO / "sql" / "upgrades").glob("*.sql"),
        ]:
            assert f"active_series/sql/{path.name}" in whl.namelist()
        assert "CREATE" in whl.read(script).decode()
        assert "active_series/sql/optional/plpython.sql" in whl.namelist()
    run_ok([*pip, "install", "--no-deps", str(wheels[0])])

    # The package's dependencies (psycopg) come from this test's environment, after the
    # venv's own site-packages, so the package itself is the freshly installed one.
    venv_site = Path(
        run_ok(
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
    out = run_ok([str(venv / "bin" / "python"), "-c", probe, empty_dsn], cwd=tmp_path)
    module_file, version = out.stdout.split()
    assert Path(module_file).is_relative_to(venv), module_file
    assert version == CONTROL_VERSION
    with psycopg.connect(empty_dsn) as c:
        assert check_version(c) == CONTROL_VERSION


@pytest.mark.slow
def test_make_install_then_create_extension(extension_files: Path, empty_dsn: str) -> None:
    assert (extension_files / "active_series.control").exists()
    shipped = {p.name for p in (REPO / "python" / "active_series" / "sql").glob("*.sql")}
    assert f"active_series--{CONTROL_VERSION}.sql" in shipped
    assert shipped <= {p.name for p in extension_files.glob("active_series--*.sql")}

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
