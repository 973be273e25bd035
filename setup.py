"""Build hook: generate the extension script into the package before building it."""

import importlib.util
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("build_sql", ROOT / "tools" / "build_sql.py")
build_sql = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(build_sql)


class BuildWithSql(build_py):
    def run(self):
        build_sql.build(ROOT)
        super().run()


setup(version=build_sql.control_version(ROOT), cmdclass={"build_py": BuildWithSql})
