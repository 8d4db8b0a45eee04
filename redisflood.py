"""Flood control and registration quotas shared by a cluster's nodes through Redis.

`RedisFloodLedger` is a `floodcontrol.FloodLedger` whose budgets are cluster-wide: a user
(or an address) has one token bucket in Redis, whichever nodes their connections are on,
so reconnecting to another node does not refill it.

Pacing stays local. A Redis round trip for every frame would put one Redis operation on
every frame of every client; instead each node *leases* a batch of tokens from the shared
bucket (one Lua script, for the user's and the address's bucket together) and spends them
locally. A lease takes the tokens from the shared bucket at once and returns the level it
left, so the node knows exactly where each of its leased tokens stands in the shared
bucket: the k-th frame of a batch waits precisely as long as it would have if it had been
charged to Redis alone (the "fakelag" still slows, never drops). The batch is a second's
worth of the rate (5 frames for a user at the defaults, 50 for an address), so a client
sending at its full rate costs about 1/5 + 1/50 = 0.22 round trips per frame, and a quiet
one one round trip per burst. What a lease costs in accuracy: tokens a node leased and did
not use are spent early (at most a batch per bucket per node, and dropped once the shared
bucket would have refilled anyway), so a user who moves to another node may wait up to one
batch longer there.

The shared bucket uses Redis's clock (TIME), so the nodes' clocks do not matter, and its
key lives only until the bucket would be full again: a full bucket and a missing one are
the same, so expiring loses nothing and the keys are bounded by the clients active in the
last `burst / rate` seconds.

Redis unreachable: each node falls back to its local buckets (the single server's flood
control) for `RETRY_AFTER` seconds at a time, logs that flood control is per node, and
goes back to the shared buckets when Redis answers. Flood control never refuses a frame
for an outage.

`RedisRegistrationQuota` is `floodcontrol.RegistrationQuota` over Redis: the registrations
of the last 24 hours per address and in all, as sorted sets of timestamps.
"""
from __future__ import annotations

import contextlib
import logging
import math
import secrets
import threading
import time
from typing import Callable, cast

import redis

from floodcontrol import DAY, FloodLedger, RegistrationQuota, TokenBucket
from keyregistry import Registry
from redisstores import PREFIX, client_for, unavailable_as_cluster_error

log = logging.getLogger(__name__)

RETRY_AFTER = 1.0  # seconds between attempts to reach Redis while flood control is local
LEASE_SECONDS = 1.0  # a lease is this many seconds of the bucket's rate (at least 1 token)

FLOOD_KEYS_DOC = {
    "flood:user:{name}": "hash: tokens, stamp. TTL: until the bucket would be full again "
                         "(burst / rate + 1 s, 5 s at the defaults)",
    "flood:ip:{address}": "hash: tokens, stamp. TTL as above (4 s at the defaults)",
    "regq:all": "sorted set: registrations of the last 24 h. At most registrations_per_day",
    "regq:ip:{address}": "sorted set: that address's registrations of the last 24 h. "
                         "At most registrations_per_address; TTL 24 h",
}

# KEYS: the buckets. ARGV: rate, burst, tokens to take, for each key in turn. Returns the
# level each bucket is left at (as a string: Lua numbers become integers in replies).
_LEASE = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1e6
local levels = {}
for i, key in ipairs(KEYS) do
  local rate, burst = tonumber(ARGV[3 * i - 2]), tonumber(ARGV[3 * i - 1])
  local state = redis.call('HMGET', key, 'tokens', 'stamp')
  local tokens = tonumber(state[1]) or burst
  local stamp = tonumber(state[2]) or now
  tokens = math.min(burst, tokens + math.max(0, now - stamp) * rate) - tonumber(ARGV[3 * i])
  redis.call('HSET', key, 'tokens', tostring(tokens), 'stamp', tostring(now))
  redis.call('PEXPIRE', key, math.ceil((burst - tokens) / rate * 1000) + 1000)
  levels[i] = tostring(tokens)
end
return levels
"""


class SharedBucket(TokenBucket):
    """A user's or an address's bucket on this node: tokens leased from the shared bucket
    in Redis, spent locally; the local TokenBucket behaviour when Redis is away."""

    __slots__ = ("key", "lock", "credit", "level", "leased_at")

    def __init__(self, key: str, rate: float, burst: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(rate, burst, clock)
        self.key = key
        self.lock = threading.Lock()  # one lease at a time per bucket, outside the ledger's lock
        self.credit = 0  # leased tokens not yet spent
        self.level = 0.0  # the shared bucket's level the last lease left
        self.leased_at = 0.0

    @property
    def batch(self) -> int:
        return max(1, min(self.burst, math.ceil(self.rate * LEASE_SECONDS)))

    def has_credit(self, now: float) -> bool:
        # Once the shared bucket would be full again, credit is surplus: drop it rather than
        # let it add to a full burst.
        if self.credit and now - self.leased_at > self.burst / self.rate:
            self.credit = 0
        return self.credit > 0

    def grant(self, tokens: int, level: float, now: float) -> None:
        self.credit, self.level, self.leased_at = tokens, level, now

    def spend(self, now: float) -> float:
        """Spend one leased token; seconds until the shared bucket had earned it."""
        left = self.level + self.credit - 1  # the shared level this token leaves
        self.credit -= 1
        # Kept in step, so that the local fallback and readers of `tokens` see the level.
        self.tokens = min(float(self.burst), left + (now - self.leased_at) * self.rate)
        self.stamp = now
        return max(0.0, -left / self.rate - (now - self.leased_at))


class RedisFloodLedger(FloodLedger):
    """FloodLedger with every user's and address's budget shared through Redis.

    `round_trips` and `frames` count the leases and the frames charged (what the benchmark
    and docs/CLUSTER.md report); `local_only` says whether Redis is away just now."""

    def __init__(self, client: redis.Redis | str, rate: float, burst: int, *,
                 kick_after: float = 30.0, max_entries: int = 50_000,
                 clock: Callable[[], float] = time.monotonic, prefix: str = PREFIX) -> None:
        super().__init__(rate, burst, kick_after=kick_after, max_entries=max_entries,
                         clock=clock)
        self.redis = client_for(client)
        self.prefix = prefix
        self.round_trips = 0
        self.frames = 0
        self._lease = self.redis.register_script(_LEASE)
        self._local_until = -math.inf

    @property
    def local_only(self) -> bool:
        return self.clock() < self._local_until

    def _new_bucket(self, key: str, rate: float, burst: int) -> TokenBucket:
        return SharedBucket(key, rate, burst, self.clock)

    def charge(self, *buckets: TokenBucket | None) -> float:
        """Charge one frame to each bucket; seconds it must wait (the longest debt).
        At most one Redis round trip, for the buckets whose leased tokens ran out."""
        if not self.enabled:
            return 0.0
        live = sorted({id(b): b for b in buckets if isinstance(b, SharedBucket)}.values(),
                      key=id)  # one order for taking their locks
        with contextlib.ExitStack() as held:
            for bucket in live:
                held.enter_context(bucket.lock)
            now = self.clock()
            short = [bucket for bucket in live if not bucket.has_credit(now)]
            if short and now >= self._local_until:
                self._lease_for(short, now)
            wait = max((b.spend(now) if b.credit else TokenBucket.charge(b) for b in live),
                       default=0.0)
        with self._lock:
            # A bucket this ledger did not make (none in the server) is charged as it is.
            wait = max([wait, *(b.charge() for b in buckets
                                if b is not None and not isinstance(b, SharedBucket))])
            self.frames += 1
            if wait > 0:
                self.delayed_frames += 1
        return wait

    def _lease_for(self, buckets: list[SharedBucket], now: float) -> None:
        args: list[float | int] = []
        for bucket in buckets:
            args += [bucket.rate, bucket.burst, bucket.batch]
        try:
            levels = cast(list[bytes], self._lease(
                keys=[self.prefix + "flood:" + b.key for b in buckets], args=args))
        except redis.RedisError as exc:
            if now >= self._local_until:
                log.warning("Redis is not answering (%s): flood control is per node until it "
                            "does", exc)
            self._local_until = now + RETRY_AFTER
            return
        with self._lock:
            self.round_trips += 1
            recovered, self._local_until = self._local_until > -math.inf, -math.inf
        if recovered:
            log.warning("Redis answers again: flood control is shared by the cluster again")
        for bucket, level in zip(buckets, levels, strict=True):
            bucket.grant(bucket.batch, float(level), now)


# KEYS: all, this address. ARGV: now, day, per_day, per_address, record (1/0), member.
# Returns {registrations in all, from this address} in the last day, before any record.
_QUOTA = """
local now, day = tonumber(ARGV[1]), tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - day)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - day)
local all, mine = redis.call('ZCARD', KEYS[1]), redis.call('ZCARD', KEYS[2])
local per_day, per_address = tonumber(ARGV[3]), tonumber(ARGV[4])
local refused = (per_day > 0 and all >= per_day) or (per_address > 0 and mine >= per_address)
if ARGV[5] == '1' or (ARGV[5] == 'claim' and not refused) then
  redis.call('ZADD', KEYS[1], now, ARGV[6])
  redis.call('ZADD', KEYS[2], now, ARGV[6])
  -- Only the newest entries up to each limit matter for a refusal: keep no more.
  redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -math.max(per_day, 1) - 1)
  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -math.max(per_address, 1) - 1)
  redis.call('EXPIRE', KEYS[2], math.ceil(day))
end
return {all, mine}
"""

# KEYS: all. ARGV: now, day, per_day, times... Fills an empty window (Redis lost it) from
# the registry's registration times; a window that exists is the truth and is kept.
_SEED = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local now, day, n = tonumber(ARGV[1]), tonumber(ARGV[2]), 0
for i = 4, #ARGV do
  if tonumber(ARGV[i]) > now - day then
    redis.call('ZADD', KEYS[1], ARGV[i], 'seed:' .. i)
    n = n + 1
  end
end
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -math.max(tonumber(ARGV[3]), 1) - 1)
return n
"""


class RedisRegistrationQuota(RegistrationQuota):
    """RegistrationQuota shared by the cluster: the same limits and words, counted in Redis.

    `claim` (what the session calls) checks and records in one step, so two nodes cannot
    both take the last place; `refusal` then `record` could (by one per node at most)."""

    def __init__(self, client: redis.Redis | str, per_address: int = 20, per_day: int = 1000,
                 *, clock: Callable[[], float] = time.time, prefix: str = PREFIX) -> None:
        super().__init__(per_address, per_day, clock=clock)
        self.redis = client_for(client)
        self.prefix = prefix
        self._quota = self.redis.register_script(_QUOTA)
        self._seed = self.redis.register_script(_SEED)

    def seed(self, times: list[float]) -> None:
        """Registrations made before (the registry's times); used only if Redis has none."""
        with unavailable_as_cluster_error("seeding the registration quota"):
            self._seed(keys=[self.prefix + "regq:all"],
                       args=[self.clock(), DAY, self.per_day, *sorted(times)[-10_000:]])

    def seed_from(self, registry: Registry) -> None:
        """`seed(registry.registration_times())`, but only if Redis has no window: reading
        every registration costs O(names), so a node does it only after Redis lost the data."""
        with unavailable_as_cluster_error("reading the registration quota"):
            if self.redis.exists(self.prefix + "regq:all"):
                return
        self.seed(registry.registration_times())

    def refusal(self, ip: str) -> str | None:
        """Why a registration from `ip` may not happen now, or None if it may."""
        return self._words(*self._run(ip, "0"))

    def record(self, ip: str) -> None:
        self._run(ip, "1")

    def claim(self, ip: str) -> str | None:
        """Record a registration from `ip` if the limits allow it (atomically, cluster-wide);
        else say why not, recording nothing."""
        return self._words(*self._run(ip, "claim"))

    def _run(self, ip: str, mode: str) -> tuple[int, int]:
        member = f"{self.clock():.6f}:{secrets.token_hex(6)}"
        with unavailable_as_cluster_error("counting registrations"):
            counts = cast(list[int], self._quota(
                keys=[self.prefix + "regq:all", self.prefix + "regq:ip:" + ip],
                args=[self.clock(), DAY, self.per_day, self.per_address, mode, member]))
        return int(counts[0]), int(counts[1])

    def _words(self, everyone: int, mine: int) -> str | None:
        """RegistrationQuota's refusals, word for word."""
        if 0 < self.per_day <= everyone:
            return (f"this server has registered {everyone} new usernames in the "
                    "last 24 hours, its limit; try again later")
        if 0 < self.per_address <= mine:
            return (f"{mine} usernames were registered from your address in "
                    "the last 24 hours, the limit; try again later")
        return None
