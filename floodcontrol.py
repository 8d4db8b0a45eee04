"""Flood control and registration quotas: how fast a client may send, how many names it may take.

Flood control slows a fast sender down instead of refusing its frames (ergo's "fakelag"):
each frame takes a token from its buckets, and a frame that finds them empty waits until
its turn comes, `1 / rate` seconds after the one before. While a reader waits it reads
nothing more, so TCP pushes back on the sender; nothing it typed is lost. Only a client
so far ahead of its rate that the frames it has already sent could not all be handled
within `kick_after` seconds (IRC's "excess flood": 150 frames waiting at the defaults) is
disconnected.

The buckets live in a `FloodLedger`, keyed by user and by address, and outlive the
connection: reconnecting does not refill them. A connection pays into its address's
bucket from its first byte and into its user's bucket once logged in; an address may
send `ADDRESS_FACTOR` times what one user may, so that people behind one NAT are not
slowed by each other while one machine cannot escape the limit with many connections.

`RegistrationQuota` limits how many usernames are registered per address and in all per
day (the registry limits names per key).
"""
from __future__ import annotations

import collections
import threading
import time
from typing import Callable

ADDRESS_FACTOR = 10
DAY = 24 * 3600.0


class TokenBucket:
    """`rate` tokens a second, at most `burst` saved up; a frame may borrow ahead.

    `charge()` takes one token even when none is left, and says how long the frame must
    wait for the token it borrowed: the debt is the client's backlog, in seconds."""

    __slots__ = ("rate", "burst", "clock", "tokens", "stamp")

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.burst, self.clock = rate, burst, clock
        self.tokens = float(burst)
        self.stamp = clock()

    def take(self) -> bool:
        """Take a token if one is there (no borrowing)."""
        if self.rate <= 0:
            return True
        self._refill()
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False

    def charge(self) -> float:
        """Take a token, borrowing if needed; seconds until the borrowed one is earned."""
        if self.rate <= 0:
            return 0.0
        self._refill()
        self.tokens -= 1
        return max(0.0, -self.tokens / self.rate)

    @property
    def full(self) -> bool:
        self._refill()
        return self.tokens >= self.burst

    def _refill(self) -> None:
        now = self.clock()
        self.tokens = min(float(self.burst), self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now


class FloodLedger:
    """Every user's and address's bucket, kept across reconnects; thread-safe and bounded.

    At most `max_entries` buckets are remembered; past that the least recently used go.
    A bucket still in use keeps working for its connection; one that is forgotten had not
    been used for longer than any other, so nearly always it was full anyway."""

    def __init__(self, rate: float, burst: int, *, kick_after: float = 30.0,
                 max_entries: int = 50_000, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.burst, self.kick_after = rate, burst, kick_after
        self.max_entries = max_entries
        self.clock = clock
        self.delayed_frames = 0  # frames that had to wait: what tests and operators read
        self._lock = threading.Lock()
        self._buckets: collections.OrderedDict[str, TokenBucket] = collections.OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def user(self, name: str) -> TokenBucket:
        return self._bucket("user:" + name.casefold(), self.rate, self.burst)

    def address(self, ip: str) -> TokenBucket:
        return self._bucket("ip:" + ip, self.rate * ADDRESS_FACTOR, self.burst * ADDRESS_FACTOR)

    def charge(self, *buckets: TokenBucket | None) -> float:
        """Charge one frame to each bucket; seconds it must wait (the longest debt)."""
        with self._lock:
            wait = max((bucket.charge() for bucket in buckets if bucket is not None),
                       default=0.0)
            if wait > 0:
                self.delayed_frames += 1
            return wait

    def __len__(self) -> int:
        return len(self._buckets)

    def _new_bucket(self, key: str, rate: float, burst: int) -> TokenBucket:
        """A bucket for `key` ("user:NAME" or "ip:ADDRESS"); a shared ledger makes its own."""
        return TokenBucket(rate, burst, self.clock)

    def _bucket(self, key: str, rate: float, burst: int) -> TokenBucket:
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None:
                bucket = self._buckets[key] = self._new_bucket(key, rate, burst)
                while len(self._buckets) > self.max_entries:
                    self._buckets.popitem(last=False)
            else:
                self._buckets.move_to_end(key)
            return bucket


class RegistrationQuota:
    """How many new usernames may be registered in the last 24 hours, per address and in all.

    Thread-safe. The per-address windows are kept in memory (addresses are not written to
    disk), for at most `max_addresses` addresses; the server seeds the global window from
    the registry's registration times at start, so a restart does not reset it."""

    def __init__(self, per_address: int = 20, per_day: int = 1000, *,
                 max_addresses: int = 10_000, clock: Callable[[], float] = time.time) -> None:
        self.per_address, self.per_day = per_address, per_day
        self.max_addresses = max_addresses
        self.clock = clock
        self._lock = threading.Lock()
        self._all: collections.deque[float] = collections.deque()
        self._by_address: collections.OrderedDict[str, collections.deque[float]] = (
            collections.OrderedDict())

    def seed(self, times: list[float]) -> None:
        """Registrations made before this process started (seconds since the epoch)."""
        horizon = self.clock() - DAY
        with self._lock:
            self._all.extend(sorted(t for t in times if t > horizon))

    def refusal(self, ip: str) -> str | None:
        """Why a registration from `ip` may not happen now, or None if it may."""
        with self._lock:
            return self._refusal(ip)

    def record(self, ip: str) -> None:
        with self._lock:
            self._record(ip)

    def claim(self, ip: str) -> str | None:
        """Record a registration from `ip` if the limits allow it, in one step (two logins
        cannot both take the last place); else say why not, recording nothing."""
        with self._lock:
            refusal = self._refusal(ip)
            if refusal is None:
                self._record(ip)
            return refusal

    def _refusal(self, ip: str) -> str | None:
        now = self.clock()
        _expire(self._all, now)
        if 0 < self.per_day <= len(self._all):
            return (f"this server has registered {len(self._all)} new usernames in the "
                    "last 24 hours, its limit; try again later")
        window = self._by_address.get(ip)
        if window is not None:
            _expire(window, now)
            if 0 < self.per_address <= len(window):
                return (f"{len(window)} usernames were registered from your address in "
                        "the last 24 hours, the limit; try again later")
        return None

    def _record(self, ip: str) -> None:
        now = self.clock()
        self._all.append(now)
        window = self._by_address.get(ip)
        if window is None:
            window = self._by_address[ip] = collections.deque()
            while len(self._by_address) > self.max_addresses:
                self._by_address.popitem(last=False)
        else:
            self._by_address.move_to_end(ip)
        window.append(now)


def _expire(window: collections.deque[float], now: float) -> None:
    while window and window[0] <= now - DAY:
        window.popleft()
