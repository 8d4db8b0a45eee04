"""A node's link to the cluster's Redis: the op stream, presence, heartbeats, failures.

Keys (all under PREFIX, "gapshape:", beside those of redisstores.py; docs/CLUSTER.md):
- `events`: the op stream (XADD by the op's node, XREAD by every node), capped near
  STREAM_MAXLEN entries. Each entry: `id` (the message id, 0 for ops that have none) and
  `op` (JSON).
- `msgid`: the last message id handed out (INCR, in the same script as the XADD).
- `nodes`: set of node ids; `node:{id}`: "alive", with a NODE_TTL expiry each heartbeat
  renews; `presence:{id}`: hash user -> presence JSON (rooms, status) of that node's users,
  with the same expiry.

Cost: a room message is one EVALSHA from its node (INCR + XADD inside) and, on every node,
a share of one XREAD (each XREAD brings up to READ_BATCH ops); nothing grows with the room.
`ops` counts every command this link sends (the stores count their own).

Failures: a node whose `node:{id}` key has expired (it stopped beating: kill -9, a lost
machine) is dropped by the others at their next beat, so its users leave within NODE_TTL +
HEARTBEAT seconds. When Redis does not answer, the reader marks the link unavailable
(requests are refused with ClusterUnavailable, connected users stay), retries with a
backoff, and when Redis is back it raises the id counter to what this node has logged,
rewrites its presence, announces it with a `node_sync` op and reads the stream on from
where it stopped.
"""
from __future__ import annotations

import collections
import json
import logging
import os
import secrets
import socket
import threading
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import TYPE_CHECKING, Any, Callable

import redis

from cluster import UNAVAILABLE, ClusterStartError
from errors import ClusterUnavailable
from rooms import utc_now

if TYPE_CHECKING:
    from cluster import ClusterChat, Op
    from userstore import MailboxLimits

log = logging.getLogger("gapshape.cluster")

PREFIX = "gapshape:"
STREAM = PREFIX + "events"
MSGID = PREFIX + "msgid"
NODES = PREFIX + "nodes"
HEARTBEAT = 2.0  # seconds between a node's beats
NODE_TTL = 6.0  # seconds a node counts as alive after its last beat
STREAM_MAXLEN = 10_000  # ops kept in the stream (approximately: MAXLEN ~)
READ_BATCH = 500  # ops one XREAD brings at most
READ_BLOCK_MS = 1000
OP_TIMEOUT = 5.0  # seconds a request waits for its op to come back applied
SOCKET_TIMEOUT = 3.0
BACKOFF_MIN, BACKOFF_MAX = 0.1, 2.0

# One script, so that the id order is the stream order: no other op can come between.
_SUBMIT = """
local id = 0
if ARGV[2] == '1' then id = redis.call('INCR', KEYS[2]) end
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '*', 'id', id, 'op', ARGV[1])
return id
"""
# Never hand out an id this node has logged already (Redis restarted without its data).
_FLOOR = """
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if current < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], ARGV[1]) end
return current
"""


def default_node_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


class RedisLink:
    """This node's side of the cluster (module docstring)."""

    def __init__(self, url: str, node_id: str | None = None) -> None:
        self.url = url
        self.node_id = node_id or default_node_id()
        try:
            # Reads block up to READ_BLOCK_MS: their socket waits longer than that.
            self.client = redis.Redis.from_url(url, socket_timeout=SOCKET_TIMEOUT,
                                               socket_connect_timeout=SOCKET_TIMEOUT)
            self.reader = redis.Redis.from_url(url, socket_timeout=SOCKET_TIMEOUT + 2,
                                               socket_connect_timeout=SOCKET_TIMEOUT)
        except ValueError as exc:
            raise ClusterStartError(f"--redis {url}: {exc}") from None
        self.chat: ClusterChat | None = None
        # What sends the frames applying ops pushed into outboxes (ChatServer.flush): the
        # reader thread is not a connection's, whose batches end with a flush.
        self.flush: Callable[[], None] = lambda: None
        self.available = False
        self.ops: collections.Counter[str] = collections.Counter()
        self._ops_lock = threading.Lock()
        self._pending: dict[str, tuple[Future[Any], dict[str, Any] | None]] = {}
        self._pending_lock = threading.Lock()
        self._last_entry = "0-0"
        self._stopping = threading.Event()
        self._synced_at = time.monotonic()
        self._down_since: float | None = None
        self._submit_sha = ""
        self._threads: list[threading.Thread] = []
        self.outages: list[float] = []  # seconds each outage lasted (tests, bench)

    # -- start and stop ---------------------------------------------------------------------

    def start(self, chat: ClusterChat, logged_next_id: int) -> None:
        """Join the cluster: catch the log up, load the others' presence, then follow."""
        self.chat = chat
        try:
            self._count("PING")
            self.client.ping()
            self._last_entry = self._stream_end()
            self._backfill(logged_next_id)
            # Announced, so that a node restarted under the same --node-id replaces the
            # users its previous run left in the others' replicas.
            self._join(logged_next_id, announce=True)
            self._load_presence()
        except redis.RedisError as exc:
            raise ClusterStartError(f"cannot use Redis at {self.url}: {_sentence(exc)}") from None
        self.available = True
        for name, target in (("gapshape-cluster-read", self._read_loop),
                             ("gapshape-cluster-beat", self._beat_loop)):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        log.info("cluster node %s joined through %s", self.node_id, self.url)

    def stop(self) -> None:
        """Leave the cluster (after this node's users have logged out)."""
        self._stopping.set()
        for thread in self._threads:
            thread.join(timeout=SOCKET_TIMEOUT + 3)
        try:
            pipe = self.client.pipeline(transaction=False)
            pipe.srem(NODES, self.node_id)
            pipe.delete(self._alive_key(self.node_id), self._presence_key(self.node_id))
            self._count("SREM", "DEL")
            pipe.execute()
        except redis.RedisError:
            pass  # the keys expire by themselves
        self.client.close()
        self.reader.close()

    # -- requests ---------------------------------------------------------------------------

    def require(self) -> None:
        if not self.available:
            raise ClusterUnavailable(UNAVAILABLE)

    def submit(self, op: Op, *, numbered: bool = False,
               local: dict[str, Any] | None = None) -> Any:
        """Append `op` to the stream and wait until this node has applied it; returns what
        applying returned, raises what it raised (or ClusterUnavailable)."""
        self.require()
        oid = secrets.token_hex(8)
        op = {**op, "node": self.node_id, "oid": oid, "time": utc_now()}
        future: Future[Any] = Future()
        with self._pending_lock:
            self._pending[oid] = (future, local)
        try:
            self._xadd(op, numbered)
            return future.result(timeout=OP_TIMEOUT)
        except redis.RedisError as exc:
            log.warning("Redis failed while sending a %s: %s", op["op"], exc)
            raise ClusterUnavailable(UNAVAILABLE) from None
        except FutureTimeout:
            raise ClusterUnavailable("the chat cluster did not confirm this in time; it may "
                                     "or may not have been done") from None
        finally:
            with self._pending_lock:
                self._pending.pop(oid, None)

    def _xadd(self, op: Op, numbered: bool) -> int:
        payload = json.dumps(op, separators=(",", ":"))
        args = (payload, "1" if numbered else "0", STREAM_MAXLEN)
        self._count("EVALSHA")
        if self._submit_sha:
            try:
                return int(self.client.evalsha(self._submit_sha, 2, STREAM, MSGID, *args))
            except redis.exceptions.NoScriptError:
                pass  # Redis restarted and forgot it
        self._submit_sha = str(self.client.script_load(_SUBMIT))
        return int(self.client.evalsha(self._submit_sha, 2, STREAM, MSGID, *args))

    def write_presence(self, entry: dict[str, Any]) -> None:
        self._quietly(lambda: self.client.hset(self._presence_key(self.node_id), entry["user"],
                                               json.dumps(entry)), "HSET")

    def forget_presence(self, user: str) -> None:
        self._quietly(lambda: self.client.hdel(self._presence_key(self.node_id), user), "HDEL")

    def _quietly(self, command: Callable[[], Any], name: str) -> None:
        """Presence writes are repaired by the next resynchronisation if Redis fails."""
        if not self.available:
            return
        self._count(name)
        try:
            command()
        except redis.RedisError as exc:
            log.debug("presence write failed: %s", exc)

    def op_counts(self) -> dict[str, int]:
        with self._ops_lock:
            return dict(self.ops)

    def _count(self, *names: str) -> None:
        with self._ops_lock:
            for name in names:
                self.ops[name] += 1

    # -- following the stream -----------------------------------------------------------------

    def _read_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                self._count("XREAD")
                answer: Any = self.reader.xread({STREAM: self._last_entry}, count=READ_BATCH,
                                           block=READ_BLOCK_MS)
            except redis.RedisError as exc:
                self._outage(exc)
                continue
            for _stream, entries in answer or ():
                for entry_id, fields in entries:
                    self._last_entry = entry_id.decode()
                    self._apply_entry(fields)
            if answer:
                self.flush()

    def _apply_entry(self, fields: dict[bytes, bytes]) -> None:
        assert self.chat is not None
        try:
            op = json.loads(fields[b"op"])
            number = int(fields.get(b"id", b"0"))
        except (KeyError, ValueError) as exc:
            log.warning("skipping an unreadable cluster op: %s", exc)
            return
        if number:
            op["id"] = number
        pending = None
        if op.get("node") == self.node_id:
            with self._pending_lock:
                pending = self._pending.get(str(op.get("oid")))
        try:
            result = self.chat.apply(op, pending[1] if pending else None)
        except Exception as exc:  # noqa: BLE001 - the op's own caller reports it
            if pending is not None:
                pending[0].set_exception(exc)
            elif op.get("node") == self.node_id or not _is_request_error(exc):
                log.log(logging.DEBUG if _is_request_error(exc) else logging.ERROR,
                        "applying %s from %s failed: %r", op.get("op"), op.get("node"), exc)
            return
        if pending is not None:
            pending[0].set_result(result)

    def _outage(self, exc: Exception) -> None:
        """Redis does not answer: refuse what needs it, keep the users, retry with backoff."""
        if self._stopping.is_set():
            return
        if self.available:
            self.available = False
            self._down_since = time.monotonic()
            users = len(self.chat.local_presence()) if self.chat else 0
            log.warning("Redis at %s is unreachable (%s): DEGRADED - keeping %d connected "
                        "users; logins, joins, room and private messages, status changes "
                        "are refused until it is back; retrying", self.url, exc, users)
            self._fail_pending()
        backoff = BACKOFF_MIN
        while not self._stopping.wait(backoff):
            try:
                self._count("PING")
                self.reader.ping()
                assert self.chat is not None
                self._join(self.chat.journal.next_id, announce=True)
                # What the stream no longer holds of the gap: the live nodes' presence.
                self._load_presence()
                self.flush()
            except redis.RedisError as retry_error:
                log.debug("Redis still unreachable: %s", retry_error)
                backoff = min(backoff * 2, BACKOFF_MAX)
                continue
            down = time.monotonic() - (self._down_since or time.monotonic())
            self.outages.append(down)
            self.available = True
            log.warning("Redis at %s is reachable again after %.1f s: cluster chat restored, "
                        "%d users re-announced", self.url, down,
                        len(self.chat.local_presence()))
            return

    def _fail_pending(self) -> None:
        with self._pending_lock:
            pending = list(self._pending.values())
        for future, _local in pending:
            if not future.done():
                future.set_exception(ClusterUnavailable(UNAVAILABLE))

    # -- joining, presence, heartbeats -------------------------------------------------------

    def _join(self, logged_next_id: int, *, announce: bool) -> None:
        """(Re)register this node: the id floor, its heartbeat and presence, and (after an
        outage) a node_sync op so that every other node learns its users again."""
        assert self.chat is not None
        self._count("EVAL")
        self.client.eval(_FLOOR, 1, MSGID, max(0, logged_next_id - 1))
        users = self.chat.local_presence()
        key = self._presence_key(self.node_id)
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(key)
        if users:
            pipe.hset(key, mapping={u["user"]: json.dumps(u) for u in users})
        pipe.sadd(NODES, self.node_id)
        pipe.set(self._alive_key(self.node_id), "alive", px=int(NODE_TTL * 1000))
        pipe.pexpire(key, int(NODE_TTL * 1000))
        self._count("MULTI", "DEL", "HSET", "SADD", "SET", "PEXPIRE", "EXEC")
        pipe.execute()
        if announce:
            self._xadd({"op": "node_sync", "node": self.node_id, "users": users,
                        "oid": secrets.token_hex(8), "time": utc_now()}, False)
        self._synced_at = time.monotonic()

    def _stream_end(self) -> str:
        self._count("XREVRANGE")
        last: Any = self.client.xrevrange(STREAM, count=1)
        return str(last[0][0].decode()) if last else "0-0"

    def _backfill(self, logged_next_id: int) -> None:
        """Log the room messages this node missed while it was not running (as far as the
        stream still holds them), so that its history is the cluster's."""
        assert self.chat is not None
        journal = self.chat.journal
        start, added = "-", 0
        while True:
            self._count("XRANGE")
            entries: Any = self.client.xrange(STREAM, min=start, max=self._last_entry, count=1000)
            for _entry_id, fields in entries:
                number = int(fields.get(b"id", b"0"))
                if number >= logged_next_id:
                    op = json.loads(fields[b"op"])
                    if op.get("op") == "message":
                        journal.append({"event": "message", "time": op["time"], "id": number,
                                        "room": op["room"], "user": op["user"],
                                        "text": op["text"]})
                        added += 1
            if len(entries) < 1000 or not entries:
                break
            start = "(" + entries[-1][0].decode()
        if added:
            log.info("logged %d room messages from the cluster's stream", added)

    def _load_presence(self) -> None:
        assert self.chat is not None
        self._count("SMEMBERS")
        nodes: Any = self.client.smembers(NODES)
        for raw in nodes:
            node = raw.decode()
            if node == self.node_id:
                continue
            self._count("EXISTS", "HVALS")
            if not self.client.exists(self._alive_key(node)):
                continue
            values: Any = self.client.hvals(self._presence_key(node))
            users = [json.loads(v) for v in values]
            self.chat.sync_node(node, users)

    def _beat_loop(self) -> None:
        while not self._stopping.wait(HEARTBEAT):
            if not self.available:
                continue
            try:
                self._beat()
            except redis.RedisError as exc:
                log.debug("heartbeat failed: %s", exc)  # the reader reports the outage

    def _beat(self) -> None:
        assert self.chat is not None
        ttl = int(NODE_TTL * 1000)
        pipe = self.client.pipeline(transaction=False)
        pipe.set(self._alive_key(self.node_id), "alive", px=ttl)
        pipe.sadd(NODES, self.node_id)
        pipe.pexpire(self._presence_key(self.node_id), ttl)
        pipe.smembers(NODES)
        self._count("SET", "SADD", "PEXPIRE", "SMEMBERS")
        members: Any = pipe.execute()[-1]
        nodes = ({raw.decode() for raw in members} | self.chat.remote_nodes()) - {self.node_id}
        if not nodes:
            return
        ordered = sorted(nodes)
        pipe = self.client.pipeline(transaction=False)
        for node in ordered:
            pipe.exists(self._alive_key(node))
        self._count(*["EXISTS"] * len(ordered))
        alive = pipe.execute()
        # Just after Redis came back the others may not have re-registered yet.
        if time.monotonic() - self._synced_at < NODE_TTL:
            return
        for node, is_alive in zip(ordered, alive, strict=True):
            if not is_alive:
                self._drop_node(node)

    def _drop_node(self, node: str) -> None:
        assert self.chat is not None
        gone = self.chat.remote_members(node)
        log.warning("cluster node %s stopped beating: its %d users are gone", node, len(gone))
        self.chat.sync_node(node, [])
        self.flush()
        pipe = self.client.pipeline(transaction=False)
        pipe.srem(NODES, node)
        pipe.delete(self._presence_key(node))
        self._count("SREM", "DEL")
        pipe.execute()

    @staticmethod
    def _alive_key(node: str) -> str:
        return f"{PREFIX}node:{node}"

    @staticmethod
    def _presence_key(node: str) -> str:
        return f"{PREFIX}presence:{node}"


def open_shared_stores(config: Any, limits: MailboxLimits) -> tuple[Any, ...]:
    """The registry, registration quota, flood ledger and member store of a cluster node
    (`config` is a server.ServerConfig): the Redis ones (redisstores.py, redisflood.py), so
    that they hold cluster-wide."""
    import redisflood
    import redisstores

    try:
        client = redisstores.connect(str(config.redis_url))
    except ValueError as exc:
        raise ClusterStartError(f"--redis {config.redis_url}: {exc}") from None
    registry = redisstores.RedisKeyRegistry(client, max_names_per_key=config.max_names_per_key)
    try:
        client.ping()
        if config.registry.exists():  # the names the single server registered stay theirs
            adopted = registry.import_file(config.registry)
            log.info("adopted %d registrations of %s into Redis", adopted, config.registry)
    except (redis.RedisError, ClusterUnavailable) as exc:
        raise ClusterStartError(f"cannot use Redis at {config.redis_url}: {_sentence(exc)}") from None
    registrations = redisflood.RedisRegistrationQuota(
        client, config.registrations_per_address, config.registrations_per_day)
    try:  # O(names), but only when Redis lost the 24 h window (a restart without its data)
        registrations.seed_from(registry)
    except ClusterUnavailable as exc:
        raise ClusterStartError(f"cannot use Redis at {config.redis_url}: {_sentence(exc)}") from None
    flood = redisflood.RedisFloodLedger(client, config.rate, config.burst,
                                        kick_after=config.flood_kick_after)
    return registry, registrations, flood, redisstores.RedisMemberStore(client, limits)


def _is_request_error(exc: Exception) -> bool:
    from errors import GapshapeError

    return isinstance(exc, GapshapeError)


def _sentence(exc: Exception) -> str:
    """Redis's own words, without the full stop that would end the operator's sentence early."""
    return str(exc).rstrip(". ")
