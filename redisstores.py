"""The server's shared stores in Redis, for a cluster of nodes (`server.py --redis URL`).

Each class here has the public interface of the single-process store it replaces, so the
chat state and the session cannot tell which one they have:

- `RedisMemberStore` is a `rooms.MemberStore` like `userstore.UserStore`: each user's rooms,
  last seen, the offline private-message mailbox (the frame, ciphertext and all) under the
  same `MailboxLimits`, and the receipts waiting for senders who are offline.
- `RedisKeyRegistry` has the interface of `keyregistry.KeyRegistry`: username -> key, first
  registration wins, look-alike names and `max_names_per_key` refused cluster-wide;
  `forget_user(url, name)` is the operator's `--forget-user` for a cluster.

The flood ledger and registration quota shared through Redis are in `redisflood.py`.

Atomicity: every change that checks before it writes (a mailbox cap, a first registration,
the removal of acknowledged messages) is one Lua script, which Redis runs alone, so two
nodes can never both pass a cap, both register a name, or both take the same waiting
message: `remove` returns only what it removed, and only its caller delivers a receipt.

Keys: all under one prefix (`PREFIX`, "gapshape:" by default) and listed in `KEYS_DOC`
(docs/CLUSTER.md). They are durable data (Redis should run with `appendonly yes`); each
one has a TTL or a bound. The scripts touch several keys, so they need one Redis (with
replicas or Sentinel if wanted), not Redis Cluster.

Failures: any Redis error (unreachable, timeout, restarting) raises
`errors.ClusterUnavailable`, whose message a client can show; nothing here lets a
traceback out for an outage. Store values are bytes: clients must not be built with
`decode_responses=True`.
"""
from __future__ import annotations

import base64
import binascii
import contextlib
import json
import logging
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterator, cast

import redis

from auth import key_fingerprint, load_public_key
from errors import ClusterUnavailable
from keyregistry import (
    KeyRegistry,
    KeyRegistryError,
    RegisteredKey,
    RegistrationConflict,
    RegistrationRefused,
    check_username,
    epoch,
    skeletons,
    timestamp,
)
from userstore import MailboxFull, MailboxLimits, Queued, UserStoreError

log = logging.getLogger(__name__)

PREFIX = "gapshape:"
# Socket timeouts for clients built from a URL: a stalled Redis costs a request this long
# at most before it becomes ClusterUnavailable, instead of hanging a reader thread.
SOCKET_TIMEOUT = 2.0
RECEIPT_MAX_AGE = 30 * 24 * 3600.0  # seconds a receipt waits for its sender at most
EXPIRE_BATCH = 500  # waiting messages one script gives up at most (keeps Redis responsive)

KEYS_DOC = {
    "user:{name}": "hash: known, last_seen. One per registered name (bounded by the registry)",
    "rooms:{name}": "sorted set: room -> joined_at. At most rooms.MAX_ROOMS_PER_USER members",
    "mail:{name}": "sorted set: waiting private messages, score = message id. "
                   "At most MailboxLimits.per_user members",
    "mail:expiry": "sorted set: '{id}\\n{name}' -> queued_at. At most MailboxLimits.total",
    "mail:totals": "hash: count, bytes of all mailboxes (the caps' running totals)",
    "receipts:{name}": f"list of receipt frames; at most {MailboxLimits.receipts_per_user}, "
                       f"TTL {RECEIPT_MAX_AGE / 86400:g} days from the newest",
    "reg:names": "hash: name -> registered key (JSON). One per registered name",
    "reg:skeletons": "hash: look-alike skeleton -> name. Three at most per registered name",
    "reg:perkey": "hash: key fingerprint -> names it holds. At most one per registered name",
}


def connect(url: str) -> redis.Redis:
    """A client for `url` (redis://HOST:PORT/DB) with bounded timeouts, returning bytes."""
    return redis.Redis.from_url(url, socket_timeout=SOCKET_TIMEOUT,
                                socket_connect_timeout=SOCKET_TIMEOUT,
                                health_check_interval=30)


def client_for(target: redis.Redis | str) -> redis.Redis:
    if isinstance(target, str):
        return connect(target)
    if target.get_connection_kwargs().get("decode_responses"):
        raise ValueError("the Gapshape stores keep bytes: use a client without decode_responses")
    return target


@contextlib.contextmanager
def unavailable_as_cluster_error(what: str) -> Iterator[None]:
    """Turn any Redis failure into the one error a session reports (ClusterUnavailable)."""
    try:
        yield
    except redis.RedisError as exc:
        log.warning("Redis failed while %s: %s", what, exc)
        raise ClusterUnavailable() from None


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# ---------------------------------------------------------------------------------------
# The member store

# A waiting message is one sorted-set member: "{id}\n{sender}\n" + frame, scored by its id,
# so the mailbox is in id order and a message is found by its id in O(log n).
_LUA_FRAME = """
local function split(m)
  local a = string.find(m, '\\n', 1, true)
  local b = string.find(m, '\\n', a + 1, true)
  return string.sub(m, a + 1, b - 1), #m - b
end
local function take(box, expiry, totals, id, rcpt)
  local found = redis.call('ZRANGEBYSCORE', box, id, id)
  if #found == 0 then return nil end
  local sender, size = split(found[1])
  redis.call('ZREM', box, found[1])
  redis.call('ZREM', expiry, id .. '\\n' .. rcpt)
  redis.call('HINCRBY', totals, 'count', -1)
  redis.call('HINCRBY', totals, 'bytes', -size)
  return found[1], sender
end
"""

# KEYS: mailbox, expiry, totals. ARGV: id, member, queued_at, frame size, per_user, total,
# total_bytes, expiry member. Returns {0, waiting} kept (or kept already), {1, waiting} the
# recipient's mailbox is full, {2, count} the server's store is full, {3, waiting} another
# message with this id is waiting (ids are not unique: a bug, never a silent drop).
_ENQUEUE = """
local waiting = redis.call('ZCARD', KEYS[1])
local same = redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[1], ARGV[1])
if #same > 0 then return {same[1] == ARGV[2] and 0 or 3, waiting} end
if waiting >= tonumber(ARGV[5]) then return {1, waiting} end
local count = tonumber(redis.call('HGET', KEYS[3], 'count') or '0')
local bytes = tonumber(redis.call('HGET', KEYS[3], 'bytes') or '0')
if count >= tonumber(ARGV[6]) or bytes + tonumber(ARGV[4]) > tonumber(ARGV[7]) then
  return {2, count}
end
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[8])
redis.call('HINCRBY', KEYS[3], 'count', 1)
redis.call('HINCRBY', KEYS[3], 'bytes', ARGV[4])
return {0, waiting + 1}
"""

# KEYS: mailbox, expiry, totals. ARGV: recipient, ids... Returns the members removed.
_REMOVE = _LUA_FRAME + """
local removed = {}
for i = 2, #ARGV do
  local member = take(KEYS[1], KEYS[2], KEYS[3], ARGV[i], ARGV[1])
  if member then removed[#removed + 1] = member end
end
return removed
"""

# KEYS: expiry, totals. ARGV: horizon (exclusive), key prefix, batch. Returns
# {{id, sender, recipient}...} of the messages given up.
_EXPIRE = _LUA_FRAME + """
local old = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1], 'LIMIT', 0, ARGV[3])
local out = {}
for _, entry in ipairs(old) do
  local nl = string.find(entry, '\\n', 1, true)
  local id, rcpt = string.sub(entry, 1, nl - 1), string.sub(entry, nl + 1)
  local member, sender = take(ARGV[2] .. 'mail:' .. rcpt, KEYS[1], KEYS[2], id, rcpt)
  redis.call('ZREM', KEYS[1], entry)
  if member then out[#out + 1] = {id, sender, rcpt} end
end
return out
"""


class RedisMemberStore:
    """What is remembered of users between logins, shared by every node. Thread-safe (the
    client's connection pool is). Same methods, limits and answers as userstore.UserStore.

    `clock` stamps queued messages and decides their age: it is the nodes' wall clock, so
    the nodes' clocks should agree (NTP) to well within the age limit."""

    def __init__(self, client: redis.Redis | str, limits: MailboxLimits | None = None, *,
                 prefix: str = PREFIX, clock: Callable[[], float] = time.time,
                 receipt_max_age: float = RECEIPT_MAX_AGE) -> None:
        self.redis = client_for(client)
        self.limits = limits or MailboxLimits()
        self.prefix = prefix
        self.clock = clock
        self.receipt_max_age = receipt_max_age
        self._enqueue = self.redis.register_script(_ENQUEUE)
        self._remove = self.redis.register_script(_REMOVE)
        self._expire = self.redis.register_script(_EXPIRE)

    def close(self) -> None:
        self.redis.close()

    def _key(self, kind: str, user: str = "") -> str:
        return f"{self.prefix}{kind}:{user.casefold()}" if user else f"{self.prefix}{kind}"

    # -- rooms and last seen ------------------------------------------------------------

    def known(self, user: str) -> bool:
        with unavailable_as_cluster_error("reading a user"):
            return bool(self.redis.exists(self._key("user", user)))

    def rooms(self, user: str) -> list[str]:
        """The user's rooms in the order they joined them (ties by name, as in SQLite)."""
        with unavailable_as_cluster_error("reading a user's rooms"):
            rooms = cast(list[bytes], self.redis.zrange(self._key("rooms", user), 0, -1))
        return [_text(room) for room in rooms]

    def add_room(self, user: str, room: str) -> None:
        with unavailable_as_cluster_error("saving a user's rooms"):
            pipe = self.redis.pipeline(transaction=True)
            pipe.hsetnx(self._key("user", user), "known", 1)
            pipe.zadd(self._key("rooms", user), {room: self.clock()}, nx=True)
            pipe.execute()

    def remove_room(self, user: str, room: str) -> None:
        with unavailable_as_cluster_error("saving a user's rooms"):
            self.redis.zrem(self._key("rooms", user), room)

    def last_seen(self, user: str) -> int | None:
        with unavailable_as_cluster_error("reading a user"):
            value = self.redis.hget(self._key("user", user), "last_seen")
        return None if value is None else int(cast(bytes, value))

    def set_last_seen(self, user: str, message_id: int) -> None:
        with unavailable_as_cluster_error("saving a user"):
            self.redis.hset(self._key("user", user), "last_seen", message_id)

    # -- mailbox --------------------------------------------------------------------------

    def enqueue(self, recipient: str, sender: str, message_id: int, frame: bytes) -> None:
        """Keep `frame` for `recipient`; MailboxFull if a limit is reached. Keeping the same
        message twice keeps it once (a node may retry after a timeout); another message
        under an id that is waiting raises UserStoreError, as SQLite's primary key would."""
        folded = recipient.casefold()
        member = f"{message_id}\n{sender}\n".encode() + frame
        limits = self.limits
        with unavailable_as_cluster_error("keeping a private message"):
            outcome, number = cast(list[int], self._enqueue(
                keys=[self._key("mail", folded), self._key("mail:expiry"),
                      self._key("mail:totals")],
                args=[message_id, member, repr(float(self.clock())), len(frame),
                      limits.per_user, limits.total, limits.total_bytes,
                      f"{message_id}\n{folded}"]))
        if outcome == 1:
            raise MailboxFull(f"{recipient} already has {number} private messages waiting, "
                              "the most the server keeps; try again when they are back")
        if outcome == 2:
            raise MailboxFull("the server's store for waiting private messages is full; "
                              "try again when the recipient is back")
        if outcome == 3:
            raise UserStoreError(f"message id {message_id} is already waiting for {recipient} "
                                 "with other content: message ids must be unique cluster-wide")

    def waiting(self, recipient: str) -> list[Queued]:
        """Every message waiting for `recipient`, oldest first (they stay until `remove`)."""
        with unavailable_as_cluster_error("reading a mailbox"):
            members = cast(list[bytes], self.redis.zrange(self._key("mail", recipient), 0, -1))
        return [_queued(member) for member in members]

    def remove(self, recipient: str, ids: list[int]) -> list[Queued]:
        """Take the acknowledged messages out; returns those that were there. Atomic: of two
        nodes removing one id, exactly one gets it back (and sends the receipt)."""
        if not ids:
            return []
        folded = recipient.casefold()
        with unavailable_as_cluster_error("removing delivered private messages"):
            removed = cast(list[bytes], self._remove(
                keys=[self._key("mail", folded), self._key("mail:expiry"),
                      self._key("mail:totals")],
                args=[folded, *(int(message_id) for message_id in ids)]))
        return [_queued(member) for member in removed]

    def expire(self) -> list[tuple[int, str, str]]:
        """Give up messages older than the age limit; returns (id, sender, recipient) of
        each, so that their senders can be told. Each goes to exactly one caller."""
        horizon = repr(float(self.clock() - self.limits.max_age))
        given_up: list[tuple[int, str, str]] = []
        while True:
            with unavailable_as_cluster_error("expiring old private messages"):
                batch = cast(list[list[bytes]], self._expire(
                    keys=[self._key("mail:expiry"), self._key("mail:totals")],
                    args=[horizon, self.prefix, EXPIRE_BATCH]))
            given_up += [(int(id_), _text(sender), _text(rcpt)) for id_, sender, rcpt in batch]
            if len(batch) < EXPIRE_BATCH:
                return given_up

    def mailbox_size(self) -> tuple[int, int]:
        """(messages, bytes) waiting in all mailboxes."""
        with unavailable_as_cluster_error("reading the mailbox totals"):
            count, size = cast(list[bytes | None],
                               self.redis.hmget(self._key("mail:totals"), ["count", "bytes"]))
        return int(count or 0), int(size or 0)

    # -- receipts for senders who are offline -------------------------------------------

    def keep_receipt(self, sender: str, frame: bytes) -> None:
        key = self._key("receipts", sender)
        with unavailable_as_cluster_error("keeping a receipt"):
            pipe = self.redis.pipeline(transaction=True)
            pipe.rpush(key, frame)
            pipe.ltrim(key, -max(1, self.limits.receipts_per_user), -1)
            pipe.expire(key, max(1, int(self.receipt_max_age)))
            pipe.execute()

    def take_receipts(self, sender: str) -> list[bytes]:
        """The receipts waiting for `sender`, oldest first; they are gone from the store
        (MULTI: two nodes taking them at once cannot both get them)."""
        key = self._key("receipts", sender)
        with unavailable_as_cluster_error("reading receipts"):
            pipe = self.redis.pipeline(transaction=True)
            pipe.lrange(key, 0, -1)
            pipe.delete(key)
            frames, _ = pipe.execute()
        return [bytes(frame) for frame in frames]


def _queued(member: bytes) -> Queued:
    id_, sender, frame = member.split(b"\n", 2)
    return Queued(int(id_), sender.decode(), frame)


# ---------------------------------------------------------------------------------------
# The key registry

# KEYS: names, skeletons, perkey. ARGV: mode ('check', 'write' or 'adopt'), name, fingerprint,
# entry, max per key, skeleton forms... Returns {'exists', entry}, {'lookalike', entry of the
# twin}, {'full', held} or {'ok', entry}; 'write' and 'adopt' store the entry on 'ok'.
_REGISTER = """
local mode, name, fp = ARGV[1], ARGV[2], ARGV[3]
local current = redis.call('HGET', KEYS[1], name)
if current then return {'exists', current} end
if mode ~= 'adopt' then
  for i = 6, #ARGV do
    local owner = redis.call('HGET', KEYS[2], ARGV[i])
    if owner and owner ~= name then
      local twin = redis.call('HGET', KEYS[1], owner)
      if twin then return {'lookalike', twin} end
    end
  end
  local held = tonumber(redis.call('HGET', KEYS[3], fp) or '0')
  local most = tonumber(ARGV[5])
  if most > 0 and held >= most then return {'full', tostring(held)} end
end
if mode == 'check' then return {'ok', ARGV[4]} end
redis.call('HSET', KEYS[1], name, ARGV[4])
for i = 6, #ARGV do redis.call('HSET', KEYS[2], ARGV[i], name) end
redis.call('HINCRBY', KEYS[3], fp, 1)
return {'ok', ARGV[4]}
"""

# KEYS: names, skeletons, perkey. ARGV: name, the entry read, fingerprint, skeleton forms...
# Deletes only if the entry is still the one read (else 0: read again).
_FORGET = """
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
for i = 4, #ARGV do
  if redis.call('HGET', KEYS[2], ARGV[i]) == ARGV[1] then redis.call('HDEL', KEYS[2], ARGV[i]) end
end
if redis.call('HINCRBY', KEYS[3], ARGV[3], -1) <= 0 then redis.call('HDEL', KEYS[3], ARGV[3]) end
return 1
"""

# KEYS: names, skeletons. ARGV: name, skeleton forms... The entry of a registered name that
# shares a skeleton with `name` but is another name, or false.
_LOOKALIKE = """
for i = 2, #ARGV do
  local owner = redis.call('HGET', KEYS[2], ARGV[i])
  if owner and owner ~= ARGV[1] then
    local twin = redis.call('HGET', KEYS[1], owner)
    if twin then return twin end
  end
end
return false
"""


@dataclass(frozen=True)
class _Outcome:
    kind: str  # exists, lookalike, full, ok
    detail: bytes


class RedisKeyRegistry:
    """Username -> registered public key, shared by every node; keyregistry.KeyRegistry's
    interface. Thread-safe. One Redis round trip per call; nothing is cached, so a
    registration or an operator's forget on any node is seen by the next call anywhere."""

    def __init__(self, client: redis.Redis | str, *, max_names_per_key: int = 3,
                 prefix: str = PREFIX) -> None:
        self.redis = client_for(client)
        self.max_names_per_key = max_names_per_key
        self.prefix = prefix
        self._keys = [prefix + "reg:names", prefix + "reg:skeletons", prefix + "reg:perkey"]
        self._register = self.redis.register_script(_REGISTER)
        self._forget = self.redis.register_script(_FORGET)
        self._lookalike = self.redis.register_script(_LOOKALIKE)

    def lookup(self, username: str) -> RegisteredKey | None:
        """The key registered for ``username`` (any case), or None."""
        with unavailable_as_cluster_error("reading the key registry"):
            raw = self.redis.hget(self._keys[0], username.casefold())
        return None if raw is None else _entry(cast(bytes, raw))

    def lookalike(self, username: str) -> str | None:
        """A registered name that looks like ``username`` but is another name, or None."""
        with unavailable_as_cluster_error("reading the key registry"):
            twin = self._lookalike(keys=self._keys[:2],
                                   args=[username.casefold(), *sorted(skeletons(username))])
        return None if twin is None else _entry(cast(bytes, twin)).username

    def refusal(self, username: str, public_der: bytes) -> str | None:
        """Why ``register(username, public_der)`` would be refused, or None."""
        outcome = self._run("check", username, key_fingerprint(public_der), b"")
        if outcome.kind == "exists":
            current = _entry(outcome.detail)
            return None if current.public_der == public_der else (
                f"{current.username} is already registered with a different key")
        return _refusal_text(username, outcome)

    def register(self, username: str, public_der: bytes,
                 *, now: datetime | None = None) -> RegisteredKey:
        """Register ``public_der`` for an unregistered ``username``; the first registration
        anywhere in the cluster wins. Same answers and errors as KeyRegistry.register."""
        check_username(username)
        load_public_key(public_der)  # refuse bad keys before they are ever stored
        fingerprint = key_fingerprint(public_der)
        entry = RegisteredKey(username, fingerprint, public_der, timestamp(now))
        outcome = self._run("write", username, fingerprint, _entry_json(entry))
        if outcome.kind == "exists":
            current = _entry(outcome.detail)
            if current.fingerprint != fingerprint:
                raise RegistrationConflict(
                    f"{current.username} is already registered with a different key")
            return current
        refusal = _refusal_text(username, outcome)
        if refusal is not None:
            raise RegistrationRefused(refusal)
        log.info("registered %s with key %s", username, fingerprint)
        return entry

    def adopt(self, entry: RegisteredKey) -> bool:
        """Take an existing registration over as it is (from a single server's file):
        stored unless the name is registered already; no look-alike or per-key check,
        since it was made under those rules. Returns whether it was stored."""
        return self._run("adopt", entry.username, entry.fingerprint,
                         _entry_json(entry)).kind == "ok"

    def import_file(self, path: Path) -> int:
        """Adopt every registration of a keyregistry.json; returns how many were new."""
        source = KeyRegistry(path)
        found = (source.lookup(name) for name in source.usernames())
        return sum(self.adopt(entry) for entry in found if entry is not None)

    def forget(self, username: str) -> bool:
        """Remove the registration of ``username`` cluster-wide; return whether there was one."""
        folded = username.casefold()
        for _ in range(10):  # a concurrent change between the read and the delete: read again
            with unavailable_as_cluster_error("changing the key registry"):
                raw = cast(bytes | None, self.redis.hget(self._keys[0], folded))
                if raw is None:
                    return False
                entry = _entry(raw)
                done = self._forget(keys=self._keys, args=[
                    folded, raw, entry.fingerprint, *sorted(skeletons(entry.username))])
            if done:
                log.info("forgot the registered key of %s", username)
                return True
        raise KeyRegistryError(f"the registration of {username} kept changing; try again")

    def usernames(self) -> list[str]:
        """Display names of every registered user, sorted case-insensitively."""
        return sorted((e.username for e in self._all()), key=str.casefold)

    def registration_times(self) -> list[float]:
        """When each current registration was made, in seconds since the epoch."""
        return [t for e in self._all() if (t := epoch(e.registered_at))]

    def _all(self) -> list[RegisteredKey]:
        with unavailable_as_cluster_error("reading the key registry"):
            values = cast(list[bytes], self.redis.hvals(self._keys[0]))
        return [_entry(raw) for raw in values]

    def _run(self, mode: str, username: str, fingerprint: str, entry: bytes) -> _Outcome:
        with unavailable_as_cluster_error("changing the key registry"):
            kind, detail = cast(list[bytes], self._register(keys=self._keys, args=[
                mode, username.casefold(), fingerprint, entry, self.max_names_per_key,
                *sorted(skeletons(username))]))
        return _Outcome(_text(kind), detail)


def _refusal_text(username: str, outcome: _Outcome) -> str | None:
    """KeyRegistry's words for a look-alike or a full key (the same on both stores)."""
    if outcome.kind == "lookalike":
        twin = _entry(outcome.detail).username
        return f'"{username}" looks too much like the registered name "{twin}"'
    if outcome.kind == "full":
        return (f"this key already holds {int(outcome.detail)} usernames, the most one key "
                "may register here")
    return None


def _entry_json(entry: RegisteredKey) -> bytes:
    return json.dumps({
        "username": entry.username, "fingerprint": entry.fingerprint,
        "public_key": base64.b64encode(entry.public_der).decode("ascii"),
        "registered_at": entry.registered_at,
    }, ensure_ascii=False, separators=(",", ":")).encode()


def _entry(raw: bytes) -> RegisteredKey:
    """Rebuild an entry; one that does not check out (edited in Redis by hand, damaged)
    is an error, never a guess that could hand the name to another key."""
    try:
        fields: Any = json.loads(raw)
        public_der = base64.b64decode(fields["public_key"], validate=True)
        entry = RegisteredKey(str(fields["username"]), str(fields["fingerprint"]), public_der,
                              str(fields["registered_at"]))
    except (ValueError, KeyError, TypeError, binascii.Error):
        entry = None
    if entry is None or not entry.username or key_fingerprint(public_der) != entry.fingerprint:
        raise KeyRegistryError(
            f"the shared key registry in Redis holds a damaged entry ({raw[:60]!r}); refusing "
            "to guess which key owns the name: restore Redis from a backup")
    return entry


def forget_user(target: redis.Redis | str, username: str, *, prefix: str = PREFIX) -> bool:
    """The operator's `--forget-user NAME` for a cluster: the name's registration is gone
    for every node at once (they read the registry at each login). Returns whether there
    was one; ClusterUnavailable if Redis cannot be reached."""
    registry = RedisKeyRegistry(target, prefix=prefix)
    try:
        return registry.forget(username)
    finally:
        if isinstance(target, str):
            registry.redis.close()
