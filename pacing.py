"""Pacing what a client sends to the server's advertised limits: pure, no threads, no I/O.

The server counts every frame a client sends (except `pong`) against a token bucket of
`rate` frames a second and `burst` at once (`welcome.limits`). A person who pastes 50
lines must not lose any of them, and must not be slowed down server-side in bursts
either: like irssi's flood protection, the client holds back what would go over and sends
it as tokens come in, in order. `Pacer` says when the next frame may go; `SendQueue` is
the bounded line of frames waiting for that moment. client.py owns the thread.
"""
from __future__ import annotations

import collections
import time
from dataclasses import dataclass
from typing import Any, Callable, Generic, Mapping, TypeVar

DEFAULT_RATE = 5.0
DEFAULT_BURST = 20
DEFAULT_MAX_FRAME = 65536
DEFAULT_MAX_TEXT = 8000
DEFAULT_MAX_NOTE = 200

#: Frames the login itself took from the server's bucket (hello and auth), plus a margin
#: for frames the server reads late (a bucket capped at `burst` loses the tokens it would
#: have earned meanwhile): the client keeps this many tokens in hand.
BURST_MARGIN = 4
#: A little under the advertised rate, so clock drift never puts us over it.
RATE_MARGIN = 0.95

#: Frames that may wait to be sent (about 3 minutes of lines at the default rate). One
#: more is refused at once, with its text, never dropped silently.
SEND_QUEUE_LIMIT = 1000


@dataclass(frozen=True)
class Limits:
    """The server's limits from `welcome.limits`; defaults for servers that do not say."""

    rate: float = DEFAULT_RATE
    burst: int = DEFAULT_BURST
    max_frame: int = DEFAULT_MAX_FRAME
    max_text: int = DEFAULT_MAX_TEXT
    max_note: int = DEFAULT_MAX_NOTE

    @classmethod
    def from_welcome(cls, limits: object) -> Limits:
        """Read `welcome.limits`, keeping the default for each field absent or unusable."""
        given: Mapping[str, Any] = limits if isinstance(limits, Mapping) else {}
        return cls(
            rate=_number(given.get("rate"), DEFAULT_RATE, float),
            burst=int(_number(given.get("burst"), DEFAULT_BURST, int)),
            max_frame=int(_number(given.get("max_frame"), DEFAULT_MAX_FRAME, int)),
            max_text=int(_number(given.get("max_text"), DEFAULT_MAX_TEXT, int)),
            max_note=int(_number(given.get("max_note"), DEFAULT_MAX_NOTE, int)),
        )


def _number(value: object, default: float, kind: type) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        return default
    if kind is int and value != int(value):
        return default
    return float(value)


class Pacer:
    """A token bucket mirroring the server's, kept a little emptier than the server's.

    `rate` <= 0 means the server does no flood control: nothing is ever held back.
    """

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate * RATE_MARGIN
        self.capacity = float(max(1, burst - BURST_MARGIN))
        self.clock = clock
        self.tokens = self.capacity
        self.stamp = clock()

    @property
    def unlimited(self) -> bool:
        return self.rate <= 0

    def delay(self) -> float:
        """Seconds until one frame may be sent (0.0: now)."""
        if self.unlimited:
            return 0.0
        self._refill()
        return 0.0 if self.tokens >= 1 else (1 - self.tokens) / self.rate

    def take(self) -> None:
        """Account for one frame sent (call only when `delay()` was 0)."""
        if not self.unlimited:
            self._refill()
            self.tokens -= 1

    def _refill(self) -> None:
        now = self.clock()
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now


T = TypeVar("T")


class SendQueueFull(Exception):
    """The send queue holds SEND_QUEUE_LIMIT frames already; this one was not queued."""


class SendQueue(Generic[T]):
    """A bounded FIFO of frames waiting for the pacer. Not thread-safe: the caller locks."""

    def __init__(self, limit: int = SEND_QUEUE_LIMIT) -> None:
        self.limit = limit
        self._items: collections.deque[T] = collections.deque()

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: T) -> None:
        if len(self._items) >= self.limit:
            raise SendQueueFull(f"{self.limit} lines are already waiting to be sent")
        self._items.append(item)

    def peek(self) -> T | None:
        return self._items[0] if self._items else None

    def pop(self) -> T:
        return self._items.popleft()

    def drain(self) -> list[T]:
        """Take everything still waiting (the connection is gone)."""
        items = list(self._items)
        self._items.clear()
        return items
