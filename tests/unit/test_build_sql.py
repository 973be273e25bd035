"""tools/build_sql.py: the extension script is the manifest's sources, in order, versioned
by the control file.  No database."""

from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]


def _load_build_sql() -> ModuleType:
    spec = importlib.util.spec_from_file_location("build_sql", REPO / "tools" / "build_sql.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build_sql = _load_build_sql()

GUARD = '\\echo Use "CREATE EXTENSION active_series" to load this file. \\quit'


def make_tree(root: Path, version: str = "1.2.3", manifest: str | None = None) -> Path:
    """A minimal source tree: control file, three sources, a manifest listing them."""
    (root / "active_series.control").write_text(
        f"# comment\ncomment = 'test'\ndefault_version = '{version}'\nschema = active_series\n"
    )
    (root / "sql" / "tables").mkdir(parents=True)
    (root / "triggers").mkdir()
    (root / "sql" / "tables" / "a.sql").write_text("CREATE TABLE active_series.a (x int);\n")
    (root / "sql" / "tables" / "b.sql").write_text(
        "INSERT INTO active_series._meta (version) VALUES ('@EXTVERSION@');\n"
    )
    (root / "triggers" / "t.sql").write_text("-- trigger t\n")
    if manifest is None:
        manifest = (
            "# order matters\n"
            "triggers/t.sql\n"
            "\n"
            "sql/tables/b.sql   # the version row\n"
            "sql/tables/a.sql\n"
        )
    (root / "sql" / "manifest.txt").write_text(manifest)
    return root


def test_version_is_read_from_the_control_file(tmp_path: Path) -> None:
    make_tree(tmp_path, version="4.5.6")
    assert build_sql.control_version(tmp_path) == "4.5.6"


def test_the_repository_control_file_has_a_version() -> None:
    assert build_sql.control_version(REPO)


def test_a_control_file_without_default_version_is_an_error(tmp_path: Path) -> None:
    make_tree(tmp_path)
    (tmp_path / "active_series.control").write_text("comment = 'x'\n")
    with pytest.raises(SystemExit):
        build_sql.control_version(tmp_path)


def test_output_is_named_after_the_version(tmp_path: Path) -> None:
    make_tree(tmp_path, version="2.0.0")
    out = build_sql.build(tmp_path, out_dir=tmp_path / "out")
    assert out == tmp_path / "out" / "active_series--2.0.0.sql"
    assert out.exists()


def test_default_output_goes_into_the_python_package(tmp_path: Path) -> None:
    make_tree(tmp_path)
    out = build_sql.build(tmp_path)
    assert out == tmp_path / "python" / "active_series" / "sql" / "active_series--1.2.3.sql"


def test_sources_follow_manifest_order_skipping_comments_and_blanks(tmp_path: Path) -> None:
    make_tree(tmp_path)
    assert build_sql.sources(tmp_path) == [
        tmp_path / "triggers" / "t.sql",
        tmp_path / "sql" / "tables" / "b.sql",
        tmp_path / "sql" / "tables" / "a.sql",
    ]
    text = build_sql.build(tmp_path, out_dir=tmp_path / "out").read_text()
    positions = [
        text.index("-- trigger t"),
        text.index("INSERT INTO active_series._meta"),
        text.index("CREATE TABLE active_series.a"),
    ]
    assert positions == sorted(positions)
    markers = [line for line in text.splitlines() if line.startswith("-- source: ")]
    assert markers == [
        "-- source: triggers/t.sql",
        "-- source: sql/tables/b.sql",
        "-- source: sql/tables/a.sql",
    ]


def test_script_starts_with_the_psql_guard_line(tmp_path: Path) -> None:
    make_tree(tmp_path)
    lines = build_sql.build(tmp_path, out_dir=tmp_path / "out").read_text().splitlines()
    assert GUARD in lines[:3]
    assert lines.index(GUARD) < min(i for i, line in enumerate(lines) if line.startswith("CREATE"))


def test_extversion_placeholder_is_replaced(tmp_path: Path) -> None:
    make_tree(tmp_path, version="7.8.9")
    text = build_sql.build(tmp_path, out_dir=tmp_path / "out").read_text()
    assert "@EXTVERSION@" not in text
    assert "VALUES ('7.8.9')" in text


def test_an_unchanged_script_is_not_rewritten(tmp_path: Path) -> None:
    make_tree(tmp_path)
    out = build_sql.build(tmp_path, out_dir=tmp_path / "out")
    os.utime(out, (1_000_000_000, 1_000_000_000))
    build_sql.build(tmp_path, out_dir=tmp_path / "out")
    assert out.stat().st_mtime == 1_000_000_000


def test_a_changed_source_is_rebuilt(tmp_path: Path) -> None:
    make_tree(tmp_path)
    out = build_sql.build(tmp_path, out_dir=tmp_path / "out")
    (tmp_path / "sql" / "tables" / "a.sql").write_text("CREATE TABLE active_series.a (y int);\n")
    assert "(y int)" in build_sql.build(tmp_path, out_dir=tmp_path / "out").read_text()
    assert out.exists()


def test_a_missing_source_is_an_error(tmp_path: Path) -> None:
    make_tree(tmp_path, manifest="sql/tables/a.sql\nsql/tables/missing.sql\n")
    with pytest.raises(FileNotFoundError):
        build_sql.build(tmp_path, out_dir=tmp_path / "out")


def test_every_repository_manifest_entry_exists() -> None:
    manifest = REPO / "sql" / "manifest.txt"
    if not manifest.exists():
        pytest.skip("sql/manifest.txt is not in this tree yet")
    missing = [str(p) for p in build_sql.sources(REPO) if not p.is_file()]
    assert missing == []


def release(root: Path, version: str, text: str) -> Path:
    """Freeze ``text`` as the script of ``version``, its digest in SHA256SUMS."""
    directory = root / "sql" / "releases"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"active_series--{version}.sql"
    path.write_text(text)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    with (directory / "SHA256SUMS").open("a") as sums:
        sums.write(f"{digest}  {path.name}\n")
    return path


def test_released_scripts_and_upgrades_are_shipped_next_to_the_current_one(
    tmp_path: Path,
) -> None:
    make_tree(tmp_path, version="1.3.0")
    release(tmp_path, "1.2.3", "-- the frozen 1.2.3\n")
    (tmp_path / "sql" / "upgrades").mkdir()
    (tmp_path / "sql" / "upgrades" / "active_series--1.2.3--1.3.0.sql").write_text(
        "UPDATE active_series._meta SET version = '1.3.0';\n"
    )
    out = tmp_path / "out"
    build_sql.build(tmp_path, out_dir=out)
    assert sorted(p.name for p in out.glob("*.sql")) == [
        "active_series--1.2.3--1.3.0.sql",
        "active_series--1.2.3.sql",
        "active_series--1.3.0.sql",
    ]
    assert (out / "active_series--1.2.3.sql").read_text() == "-- the frozen 1.2.3\n"
    upgrade = (out / "active_series--1.2.3--1.3.0.sql").read_text().splitlines()
    assert upgrade[1] == (
        "\\echo Use \"ALTER EXTENSION active_series UPDATE TO '1.3.0'\" to load this file. \\quit"
    )
    assert upgrade[2] == "UPDATE active_series._meta SET version = '1.3.0';"


def test_a_changed_release_is_an_error(tmp_path: Path) -> None:
    make_tree(tmp_path, version="1.3.0")
    frozen = release(tmp_path, "1.2.3", "-- the frozen 1.2.3\n")
    frozen.write_text("-- edited after the release\n")
    with pytest.raises(SystemExit, match="released script and must not change"):
        build_sql.build(tmp_path, out_dir=tmp_path / "out")


def test_sources_that_no_longer_build_the_current_release_are_an_error(tmp_path: Path) -> None:
    make_tree(tmp_path, version="1.2.3")
    built = build_sql.build(tmp_path, out_dir=tmp_path / "first")
    release(tmp_path, "1.2.3", built.read_text())
    assert build_sql.build(tmp_path, out_dir=tmp_path / "again").read_text() == built.read_text()
    (tmp_path / "sql" / "tables" / "a.sql").write_text("CREATE TABLE active_series.a (y int);\n")
    with pytest.raises(SystemExit, match="raise default_version"):
        build_sql.build(tmp_path, out_dir=tmp_path / "out")


def test_files_no_longer_built_are_removed(tmp_path: Path) -> None:
    make_tree(tmp_path, version="1.3.0")
    out = tmp_path / "out"
    out.mkdir()
    (out / "active_series--0.9.0--1.0.0.sql").write_text("-- a removed upgrade\n")
    build_sql.build(tmp_path, out_dir=out)
    assert [p.name for p in out.glob("*.sql")] == ["active_series--1.3.0.sql"]


def test_freeze_releases_the_current_version_once(tmp_path: Path) -> None:
    make_tree(tmp_path, version="1.2.3")
    frozen = build_sql.freeze(tmp_path)
    assert frozen == tmp_path / "sql" / "releases" / "active_series--1.2.3.sql"
    assert build_sql.released(tmp_path) == {"1.2.3": frozen}
    assert frozen.read_text() == build_sql.build(tmp_path, out_dir=tmp_path / "out").read_text()
    with pytest.raises(SystemExit, match="already released"):
        build_sql.freeze(tmp_path)


def test_the_repository_releases_match_their_digests() -> None:
    assert "0.1.0" in build_sql.released(REPO)
