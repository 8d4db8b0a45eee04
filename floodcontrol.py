"""Flood control: how fast one client may send.

A token bucket per client: `rate` frames a second on average, `burst` at once.
"""
from __future__ import annotations

import time
from typing import Callable


class TokenBucket:
    """Flood control: `rate` tokens a second, at most `burst` saved up."""

    __slots__ = ("rate", "burst", "clock", "tokens", "stamp")

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.burst, self.clock = rate, burst, clock
        self.tokens = float(burst)
        self.stamp = clock()

    def take(self) -> bool:
        if self.rate <= 0:
            return True
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False

