"""One Stripe API version: the worker's constant and the PL/Python functions' header agree.
No database."""

from __future__ import annotations

import re
from pathlib import Path

from active_series.relay.stripe_api import STRIPE_API_VERSION

PLPYTHON = Path(__file__).resolve().parents[2] / "sql" / "optional" / "plpython.sql"


def test_the_plpython_functions_send_the_workers_stripe_api_version() -> None:
    sent = re.findall(r'add_header\("Stripe-Version", "([^"]+)"\)', PLPYTHON.read_text())
    assert sent == [STRIPE_API_VERSION]


def test_the_pinned_version_is_a_dated_stripe_release() -> None:
    assert re.fullmatch(r"20\d\d-\d\d-\d\d\.[a-z]+", STRIPE_API_VERSION)


def test_the_workers_stripe_clients_name_the_pinned_version_not_the_sdks_default() -> None:
    from active_series.relay.config import RelayConfig
    from active_series.relay.stripe_api import StripeMeter
    from active_series.relay.stripe_stream import MeterEventStream

    cfg = RelayConfig(dsn="", api_key="sk_test_x", api_base="http://127.0.0.1:1")
    meter = StripeMeter(cfg)
    stream = MeterEventStream(cfg, meter.bucket)
    for client in (meter.client, stream.api):
        assert client._requestor._options.stripe_version == STRIPE_API_VERSION
