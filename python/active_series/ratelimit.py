"""Pacing: a token bucket and exponential backoff with jitter.

The relay paces its Stripe calls with :class:`TokenBucket` (``acquire`` blocks; calls that may
wait, such as the reads of event summaries, take only spare tokens: ``acquire_spare``); the Stripe
emulator refuses requests over its limit with the same bucket (``try_take`` does not block).
"""

from __future__ import annotations

import random
import threading
import time


class TokenBucket:
    """``rate`` events per second on average, in bursts of at most ``burst`` (default: the
    rate, at least one). Thread-safe. A rate of 0 or less means no limit."""

    def __init__(self, rate: float, burst: float | None = None) -> None:
        self.rate = rate
        self.burst = burst if burst is not None else max(rate, 1.0)
        self.tokens = self.burst
        self.stamp = time.monotonic()
        self.lock = threading.Lock()

    def _refill_and_take(self) -> float:
        """Take a token when one is there (returns 0.0), else the seconds until one is."""
        with self.lock:
            now = time.monotonic()
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
            if self.tokens >= 1.0:
                self.tokens -= 1.0
                return 0.0
            return (1.0 - self.tokens) / self.rate

    def try_take(self) -> bool:
        """Take a token if one is there now."""
        return self.rate <= 0 or self._refill_and_take() == 0.0

    def acquire(self) -> None:
        """Wait for a token and take it."""
        if self.rate <= 0:
            return
        while (wait := self._refill_and_take()) > 0:
            time.sleep(wait)

    def _take_spare(self) -> float:
        """Take a token only when the bucket is full (returns 0.0), else the seconds until
        it is full again."""
        with self.lock:
            now = time.monotonic()
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
            if self.tokens >= self.burst:
                self.tokens -= 1.0
                return 0.0
            return (self.burst - self.tokens) / self.rate

    def acquire_spare(self, stop: threading.Event) -> bool:
        """Wait for a spare token and take it: one the bucket would otherwise overflow with
        (taken only from a full bucket). Lower priority than :meth:`acquire`: a caller of
        ``acquire`` finds at most one token fewer than without the spare takers, and they
        wait while it keeps the bucket below full. False: ``stop`` was set meanwhile."""
        if self.rate <= 0:
            return not stop.is_set()
        while (wait := self._take_spare()) > 0:
            if stop.wait(wait):
                return False
        return True


def backoff(attempts: int, low: float, high: float) -> float:
    """Exponential backoff with jitter: between half and all of low * 2^attempts (at most
    ``high``)."""
    base = min(high, low * 2 ** min(attempts, 30))
    return base * random.uniform(0.5, 1.0)
