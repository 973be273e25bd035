"""A local emulator of the parts of Stripe's API that active_series uses.

It answers the official ``stripe`` Python SDK (``StripeClient`` pointed at it with
``base_addresses={"api": base_url, "meter_events": base_url}``) for billing meters, meter
events, v2 meter event streams (sessions, batches validated asynchronously, error reports as
thin events), meter event summaries, customers, products, tiered metered prices, subscriptions
with a current period and an invoice preview.  Tests steer it through control endpoints
under ``/_emulator/`` (never Stripe paths): a settable clock, fault injection (500s, delays,
dropped connections before or after the event is recorded, 429s, a seeded random failure mix),
a token-bucket rate limit, the full record of meter events received, the record of meter-event
calls and their per-customer concurrency.

Run it with ``active-series stripe-emulator --port 12111`` (or ``python -m
active_series.devtools.stripe_emulator``) or in-process with :func:`run_in_thread`. See
``docs/stripe-emulator.md`` for the control API and the deviations from real Stripe.

Its parts: :mod:`.server` (HTTP, keys, limits, faults, idempotency) around the route tables
of :mod:`.routes`, which call the resources: :mod:`.customers`, :mod:`.meters` (meters,
meter events, summaries), :mod:`.streams` (v2 sessions, the stream, error reports, the call
record), :mod:`.prices` (products, prices) and :mod:`.billing` (subscriptions, invoices),
each built on :mod:`.store`; :mod:`.control` is the tests' client of the control API.
"""

from .command import main
from .control import EmulatorControl
from .server import StripeEmulatorServer, make_server, run_in_thread
from .state import EmulatorState

__all__ = [
    "EmulatorControl",
    "EmulatorState",
    "StripeEmulatorServer",
    "main",
    "make_server",
    "run_in_thread",
]
