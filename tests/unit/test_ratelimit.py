"""active_series.ratelimit: the one token bucket (relay and emulator) and the backoff."""

from __future__ import annotations

import time

from active_series.ratelimit import TokenBucket, backoff


def test_a_bucket_allows_its_burst_then_refuses_until_it_refills() -> None:
    bucket = TokenBucket(rate=20.0, burst=3)
    assert [bucket.try_take() for _ in range(4)] == [True, True, True, False]
    time.sleep(0.06)  # a bit more than one token at 20/s
    assert bucket.try_take()


def test_acquire_waits_for_a_token() -> None:
    bucket = TokenBucket(rate=50.0, burst=1)
    bucket.acquire()
    started = time.monotonic()
    bucket.acquire()
    assert time.monotonic() - started >= 0.015


def test_a_rate_of_zero_never_limits() -> None:
    bucket = TokenBucket(rate=0)
    assert all(bucket.try_take() for _ in range(1000))
    bucket.acquire()


def test_backoff_doubles_with_jitter_and_stops_at_the_ceiling() -> None:
    for attempts in range(8):
        delay = backoff(attempts, 1.0, 30.0)
        base = min(30.0, 2.0**attempts)
        assert base / 2 <= delay <= base
    assert backoff(100, 1.0, 30.0) <= 30.0
