"""active_series.ratelimit: the one token bucket (relay and emulator) and the backoff."""

from __future__ import annotations

import threading
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


def test_a_spare_token_is_taken_only_from_a_full_bucket() -> None:
    # a very slow refill: the bucket's level is what the takes left
    bucket = TokenBucket(rate=0.001, burst=3)
    stop = threading.Event()
    assert bucket.acquire_spare(stop)  # full: a spare token
    assert bucket.try_take() and bucket.try_take()  # the others are left to acquire
    assert not bucket.try_take()
    stop.set()
    assert not bucket.acquire_spare(stop)  # not full: waits (here: stopped)


def test_spare_takers_leave_every_token_but_one_to_acquire() -> None:
    bucket = TokenBucket(rate=0.001, burst=5)
    stop = threading.Event()
    taken = threading.Event()

    def spare() -> None:
        while bucket.acquire_spare(stop):
            taken.set()

    reader = threading.Thread(target=spare)
    reader.start()
    taken.wait(5)
    try:
        # the reader took one token and waits for the bucket to be full again
        assert [bucket.try_take() for _ in range(5)] == [True, True, True, True, False]
    finally:
        stop.set()
        reader.join(5)
