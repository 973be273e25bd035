"""The worker's settings (from the command line) and the relay's fixed limits."""

from __future__ import annotations

from dataclasses import dataclass

from psycopg.conninfo import conninfo_to_dict, make_conninfo

DEFAULT_API_BASE = "https://api.stripe.com"
# The host of the v2 meter event stream (the SDK's "meter_events" base address).
DEFAULT_METER_EVENTS_BASE = "https://meter-events.stripe.com"
# Stripe accepts timestamps within the past 35 days; keep an hour of margin.
MAX_EVENT_AGE = 35 * 86400 - 3600
# How often to re-read a customer's subscription by default (RelayConfig.subscription_recheck).
SUBSCRIPTION_RECHECK = 3600.0
# Organizations claimed in one transaction at most (one v2 stream request's events).
CLAIM_BATCH = 100
# Every post's ledger row holds the deadline by which its call ends (_ledger.in_flight_until):
# a worker killed mid-call, or cut off from the primary, may leave a call running that no
# lock shows any more, and no other worker calls for that customer before the deadline. A
# call starts only if it can end by its deadline; this is how long after the row is written
# it may still start (waiting for the rate limit or a posting thread).
CALL_START_WINDOW = 5.0
# The longest wait before reading a period's event summary again after posts made again.
CONFIRM_AFTER_MAX = 600.0
# How long `--once` and close-period wait for the summary reads their posts scheduled, beyond
# --confirm-after and the reads' share of the rate limit (a read's call, a drain's claims).
CONFIRM_WAIT_MARGIN = 5.0
# How long a summary read may wait for spare tokens of the rate limit, beyond its call's
# bound, before its period falls due again (RelayConfig.read_lease).
READ_LEASE_MARGIN = 60.0
# Summary reads a worker has handed to its readers at most (their results not recorded yet).
READS_QUEUED = 100
# The SDK sleeps this long at most before its n-th retry: min(0.5 * 2 ** (n - 1), 5) seconds.
SDK_RETRY_DELAY = (0.5, 5.0)


@dataclass
class RelayConfig:
    dsn: str
    api_key: str
    api_base: str = DEFAULT_API_BASE
    meter_event_name: str = "active_series"
    # the meter's payload keys (customer_mapping / value_settings event_payload_key)
    meter_customer_key: str = "stripe_customer_id"
    meter_value_key: str = "value"
    poll_interval: float = 5.0
    watch_interval: float = 0.05
    debounce: float = 0.05
    rate_limit: float = 25.0
    grace: float = 300.0
    invoice_grace: float = 3600.0
    concurrency: int = 8
    api: str = "v1"  # or "v2-stream"
    metrics_port: int = 0
    max_network_retries: int = 2
    stripe_timeout: float = 30.0
    retry_min: float = 1.0
    retry_max: float = 300.0
    reconnect_delay: float = 1.0
    shutdown_timeout: float = 30.0
    sync_subscriptions: bool = True
    # seconds between reads of a live subscription within its period (a cancellation is
    # seen within this long), and of a customer without one
    subscription_recheck: float = SUBSCRIPTION_RECHECK
    # post the periods that ended before the customer's subscription began (no invoice
    # bills them: by default they are finalized without a post)
    post_before_subscription: bool = False
    # seconds after a post is sent before the meter's event summary is read to confirm it
    # (Stripe's summaries are eventually consistent: a difference read sooner may be lag);
    # doubled after each post made again for the same period, up to CONFIRM_AFTER_MAX
    confirm_after: float = 5.0
    once: bool = False

    @property
    def claim_batch(self) -> int:
        """Organizations per claim. A claim posts the values it read at its start, so with
        one call per organization (v1) it is kept to what the calls of about half a second
        can carry: two per posting thread, and no more than half a second of the rate
        limit. A v2 claim is sent as requests of 100 events at once, so it may be larger:
        its fixed statements are shared by more organizations."""
        if self.api == "v2-stream":
            return 10 * CLAIM_BATCH
        batch = min(CLAIM_BATCH, 2 * self.concurrency)
        if self.rate_limit > 0:
            batch = min(batch, max(1, int(self.rate_limit / 2)))
        return batch

    def confirm_delay(self, reposts: int) -> float:
        """Seconds from a post's sending to the read that confirms it, after ``reposts``
        posts made again for its period since Stripe last agreed: ``confirm_after``,
        doubled for each (lag longer than ``confirm_after`` costs a few posts, not one per
        ``confirm_after``)."""
        longest = max(CONFIRM_AFTER_MAX, self.confirm_after)
        return float(min(self.confirm_after * 2 ** min(reposts, 16), longest))

    def confirm_wait(self, periods: int) -> float:
        """How long ``--once`` and close-period wait, after their drain, for the summary reads
        of the ``periods`` they posted: ``confirm_after``, then the reads paced by the rate
        limit, and a margin for the calls and claims (CONFIRM_WAIT_MARGIN)."""
        pace = periods / self.rate_limit if self.rate_limit > 0 else 0.0
        return self.confirm_after + pace + CONFIRM_WAIT_MARGIN

    @property
    def read_lease(self) -> float:
        """How long a summary read handed to the worker's readers keeps its period from
        falling due again: the reads wait for spare tokens of the rate limit, then make one
        call (at most :attr:`call_bound`). A worker killed meanwhile leaves the read due
        again after that."""
        return self.call_bound + READ_LEASE_MARGIN

    def prefinal_lead(self) -> float:
        """How long before the invoice grace ends a period's summary is read again: time for
        a post made again to be sent and confirmed before Stripe finalizes the invoice."""
        return min(self.invoice_grace - self.grace, max(3 * self.confirm_after, 60.0))

    @property
    def call_bound(self) -> float:
        """The longest one meter-event call can last, the SDK's retries included: each
        attempt may take the timeout to connect and again to read its answer."""
        first, most = SDK_RETRY_DELAY
        sleeps = sum(min(first * 2**n, most) for n in range(self.max_network_retries))
        return (self.max_network_retries + 1) * 2 * self.stripe_timeout + sleeps

    def lease(self, calls: int) -> float:
        """Seconds from writing a post's ledger row to its deadline, for an organization
        whose claim posts ``calls`` events: one call after the other (v1), or one request
        carrying them all (v2)."""
        return CALL_START_WINDOW + (1 if self.api == "v2-stream" else calls) * self.call_bound

    # v2 meter event stream: its base address ("" means Stripe's host when api_base is
    # Stripe's, else api_base: an emulator or proxy serving both), and how long before its
    # expiry a session is renewed (at most half its lifetime)
    meter_events_base: str = ""
    stream_session_margin: float = 60.0

    def stream_base(self) -> str:
        """The base address of the v2 meter event stream."""
        if self.meter_events_base:
            return self.meter_events_base
        return DEFAULT_METER_EVENTS_BASE if self.api_base == DEFAULT_API_BASE else self.api_base


# TCP keepalives for the worker's connections, unless the DSN sets its own: a primary that
# vanishes from the network (rather than crashing) is noticed in about a minute, and the
# worker reconnects through its multi-host DSN to the new primary.
KEEPALIVES = {
    "keepalives": "1",
    "keepalives_idle": "30",
    "keepalives_interval": "10",
    "keepalives_count": "3",
    "tcp_user_timeout": "60000",
}


def worker_conninfo(dsn: str) -> str:
    """The DSN with the worker's keepalive defaults under its own settings."""
    params = conninfo_to_dict(dsn)
    for key, value in KEEPALIVES.items():
        params.setdefault(key, value)
    return make_conninfo("", **params)
