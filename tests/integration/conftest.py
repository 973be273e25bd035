"""Fixtures of the integration tests beyond tests/conftest.py."""

from relay_harness import relay_emulator  # noqa: F401
