"""The Stripe relay: ``active-series worker``.

Relays each billed organization's exact period-to-date active-series count to a Stripe
billing meter with ``last`` aggregation, so that for every (customer, period) Stripe ends
up holding ``active_series.period_usage``.

- :mod:`.daemon`: the worker's loop (the outbox watch, poll, scheduled wake-ups, reconnects);
- :mod:`.signals`: graceful stop on the first SIGTERM/SIGINT, exit on the second;
- :mod:`.claim`: organizations claimed in batches, each under its row lock (the steps are
  there);
- :mod:`.posting`: the Stripe calls of a claim, many customers at once, one at a time per
  customer;
- :mod:`.stripe_api`: the Stripe calls and what their failures mean;
- :mod:`.stripe_stream`: batches of meter events on Stripe's v2 stream, and their refusals;
- :mod:`.observe`: log lines and Prometheus metrics;
- :mod:`.queries`: every SQL statement the relay sends.
"""

from active_series.relay.claim import ClaimOutcome, Relay
from active_series.relay.config import RelayConfig
from active_series.relay.daemon import Worker, close_periods

__all__ = ["ClaimOutcome", "Relay", "RelayConfig", "Worker", "close_periods"]
