"""Tests for redisstores.py: the member store and the key registry shared through Redis.

The behavioural checks run against both implementations (SQLite / the JSON Lines file, and
Redis), which is what shows they behave alike; the rest are what only a cluster has: two
stores ("two nodes") with their own connections racing for one name, one mailbox cap, one
acknowledgement; data that survives a Redis restart; Redis down as one clean error.
"""
from __future__ import annotations

import itertools
import json
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from auth import AuthError, key_fingerprint, public_key_der
from errors import ClusterUnavailable
from floodcontrol import DAY, FloodLedger, RegistrationQuota
from keyregistry import (
    KeyRegistry,
    KeyRegistryError,
    RegisteredKey,
    RegistrationConflict,
    RegistrationRefused,
    Registry,
)
from racing import race
from rooms import ChatState
from test_abuse import Journal
from userstore import MailboxFull, MailboxLimits, Queued, UserStore, UserStoreError

redis = pytest.importorskip("redis", reason="the redis package (requirements.txt) is not installed")
import redisstores  # noqa: E402
from redisflood import FLOOD_KEYS_DOC, RedisFloodLedger, RedisRegistrationQuota  # noqa: E402
from redisstores import (  # noqa: E402
    KEYS_DOC,
    PREFIX,
    RedisKeyRegistry,
    RedisMemberStore,
    forget_user,
)

WHEN = datetime(2026, 11, 29, 19, 40, 0, 123000, tzinfo=timezone.utc)
FRAME = b'{"type":"private","envelope":"\x00\n\xff binary, newlines and all"}'


class Clock:
    """A wall clock the test moves by hand (the stores take `clock=`)."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# -- the member store, on both implementations ---------------------------------------------

@pytest.fixture(params=["sqlite", "redis"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """make_store(limits, clock) -> a fresh store of the parametrized kind; a second call
    is another "node" on the same data (the same file, the same Redis)."""
    made: list[Any] = []
    if request.param == "redis":
        server = request.getfixturevalue("redis_server")

        def make(limits: MailboxLimits | None = None, clock: Clock | None = None) -> Any:
            store = RedisMemberStore(server.url, limits, clock=clock or Clock())
            made.append(store)
            return store
    else:
        def make(limits: MailboxLimits | None = None, clock: Clock | None = None) -> Any:
            store = UserStore(tmp_path / "userstate.sqlite3", limits, clock=clock or Clock())
            made.append(store)
            return store
    yield make
    for store in made:
        store.close()


def test_rooms_come_back_in_joining_order_and_last_seen_is_kept(make_store):
    clock = Clock()
    store = make_store(clock=clock)
    assert not store.known("Ann") and store.rooms("ann") == [] and store.last_seen("ann") is None
    for room in ["#zeta", "#alpha", "#common"]:
        store.add_room("Ann", room)
        clock.now += 1
    store.add_room("ann", "#zeta")  # again: keeps its first place
    assert store.known("ANN") and store.rooms("ann") == ["#zeta", "#alpha", "#common"]
    store.remove_room("ANN", "#alpha")
    store.set_last_seen("Ann", 41)
    store.set_last_seen("ann", 42)
    again = make_store()
    assert again.rooms("aNN") == ["#zeta", "#common"] and again.last_seen("ann") == 42
    store.set_last_seen("ben", 7)  # a last seen alone makes a user known too
    assert again.known("ben") and again.rooms("ben") == []


def test_rooms_joined_at_one_instant_come_in_name_order(make_store):
    store = make_store()
    for room in ["#c", "#a", "#b"]:
        store.add_room("ann", room)
    assert store.rooms("ann") == ["#a", "#b", "#c"]


def test_the_mailbox_keeps_frames_in_id_order_until_they_are_removed(make_store):
    store = make_store()
    for message_id in [12, 10, 11]:
        store.enqueue("Ben", "Ann", message_id, FRAME + bytes([message_id]))
    waiting = store.waiting("ben")
    assert waiting == [Queued(n, "Ann", FRAME + bytes([n])) for n in [10, 11, 12]]
    assert store.waiting("BEN") == waiting, "the first delivery does not take them"
    assert store.mailbox_size() == (3, 3 * (len(FRAME) + 1))
    assert store.remove("ann", [10]) == [], "only the recipient's own"
    assert store.remove("Ben", [11, 99, 10, 11]) == [Queued(11, "Ann", FRAME + bytes([11])),
                                                     Queued(10, "Ann", FRAME + bytes([10]))]
    assert store.remove("ben", []) == []
    assert [q.id for q in make_store().waiting("ben")] == [12]
    assert store.mailbox_size() == (1, len(FRAME) + 1)


def test_the_mailbox_caps_refuse_with_the_reason(make_store):
    store = make_store(MailboxLimits(per_user=2, total=3, total_bytes=10 * len(FRAME)))
    store.enqueue("ben", "ann", 1, FRAME)
    store.enqueue("ben", "ann", 2, FRAME)
    with pytest.raises(MailboxFull, match="ben already has 2 private messages waiting"):
        store.enqueue("ben", "ann", 3, FRAME)
    store.enqueue("cat", "ann", 4, FRAME)
    with pytest.raises(MailboxFull, match="server's store .* is full"):
        store.enqueue("dan", "ann", 5, FRAME)
    assert store.mailbox_size() == (3, 3 * len(FRAME))
    store.remove("ben", [1])
    store.enqueue("dan", "ann", 5, FRAME)  # room again
    with pytest.raises(MailboxFull, match="server's store .* is full"):
        store.enqueue("eve", "ann", 6, FRAME)


def test_the_byte_cap_counts_frames(make_store):
    store = make_store(MailboxLimits(total_bytes=2 * len(FRAME)))
    store.enqueue("ben", "ann", 1, FRAME)
    with pytest.raises(MailboxFull, match="server's store"):
        store.enqueue("cat", "ann", 2, FRAME + FRAME)
    store.enqueue("cat", "ann", 2, FRAME)
    assert store.mailbox_size() == (2, 2 * len(FRAME))


def test_old_messages_expire_once_and_their_senders_are_named(make_store):
    clock = Clock()
    store = make_store(MailboxLimits(max_age=100.0), clock)
    store.enqueue("Ben", "Ann", 1, FRAME)
    clock.now += 50
    store.enqueue("cat", "Dan", 2, FRAME)
    clock.now += 60  # the first is 110 s old, the second 60 s
    assert store.expire() == [(1, "Ann", "ben")]
    assert store.expire() == []
    clock.now += 41
    assert store.expire() == [(2, "Dan", "cat")]
    assert store.waiting("ben") == [] and store.waiting("cat") == []
    assert store.mailbox_size() == (0, 0)


def test_receipts_wait_in_order_and_are_taken_once(make_store):
    store = make_store()
    assert store.take_receipts("ann") == []
    for n in range(3):
        store.keep_receipt("Ann", b"receipt %d" % n)
    assert make_store().take_receipts("ANN") == [b"receipt 0", b"receipt 1", b"receipt 2"]
    assert store.take_receipts("ann") == []


def test_receipts_are_bounded_per_sender_the_oldest_going_first(make_store):
    store = make_store(MailboxLimits(receipts_per_user=5))
    for n in range(8):
        store.keep_receipt("ann", b"%d" % n)
    store.keep_receipt("ben", b"ben's")
    assert store.take_receipts("ann") == [b"3", b"4", b"5", b"6", b"7"]
    assert store.take_receipts("ben") == [b"ben's"]


# -- the member store, what only Redis has --------------------------------------------------

@pytest.fixture
def nodes(redis_server: Any) -> Iterator[Callable[..., list[RedisMemberStore]]]:
    """nodes(n, limits, clock) -> n member stores, each with its own Redis connections."""
    made: list[RedisMemberStore] = []

    def make(n: int, limits: MailboxLimits | None = None,
             clock: Clock | None = None) -> list[RedisMemberStore]:
        stores = [RedisMemberStore(redis_server.url, limits, clock=clock or Clock())
                  for _ in range(n)]
        made.extend(stores)
        return stores
    yield make
    for store in made:
        store.close()


def test_two_nodes_racing_for_the_last_places_cannot_pass_the_cap(nodes):
    first, second = nodes(2, MailboxLimits(per_user=10, total=15))
    workers = [(lambda s=store, i=n: s.enqueue("ben", "ann", i, FRAME))
               for n, store in enumerate([first, second] * 12)]
    outcomes = race(workers)
    assert sum(o is None for o in outcomes) == 10
    assert all(isinstance(o, MailboxFull) for o in outcomes if o is not None)
    assert len(first.waiting("ben")) == 10 and second.mailbox_size() == (10, 10 * len(FRAME))
    # The server-wide cap, raced by many recipients at once.
    workers = [(lambda s=store, i=100 + n, r=f"user{n // 2}": s.enqueue(r, "ann", i, FRAME))
               for n, store in enumerate([first, second] * 10)]
    outcomes = race(workers)
    assert sum(o is None for o in outcomes) == 5 and first.mailbox_size()[0] == 15


def test_an_ack_arriving_at_two_nodes_removes_each_message_once(nodes):
    first, second = nodes(2)
    for n in range(1, 101):
        first.enqueue("ben", "ann", n, FRAME)
    everything = list(range(1, 101))
    results = race([lambda: first.remove("ben", everything),
                    lambda: second.remove("ben", everything[::-1]),
                    lambda: second.remove("ben", everything[::2])])
    taken = [q.id for result in results for q in result]
    assert sorted(taken) == everything, "each removed exactly once, by one node"
    assert first.mailbox_size() == (0, 0) and second.waiting("ben") == []


def test_two_nodes_expiring_at_once_give_each_message_up_once(nodes):
    clock = Clock()
    first, second = nodes(2, MailboxLimits(max_age=10.0), clock)
    count = redisstores.EXPIRE_BATCH + 100  # more than one script's batch
    for n in range(count):
        first.enqueue(f"user{n % 7}", "ann", n, FRAME)
    clock.now += 11
    results = race([first.expire, second.expire])
    given_up = sorted(item[0] for result in results for item in result)
    assert given_up == list(range(count)) and first.mailbox_size() == (0, 0)


def test_receipts_taken_at_two_nodes_go_to_one(nodes):
    first, second = nodes(2)
    for n in range(50):
        first.keep_receipt("ann", b"%d" % n)
    results = race([lambda: first.take_receipts("ann"), lambda: second.take_receipts("ann")])
    assert sorted(results, key=len) == [[], [b"%d" % n for n in range(50)]]


def test_receipts_expire(redis_server):
    store = RedisMemberStore(redis_server.url, receipt_max_age=3600)
    store.keep_receipt("ann", b"receipt")
    assert 3500 < store.redis.ttl(PREFIX + "receipts:ann") <= 3600


def test_the_same_message_kept_twice_is_kept_once(nodes):
    (store,) = nodes(1)
    store.enqueue("ben", "ann", 5, FRAME)
    store.enqueue("ben", "ann", 5, FRAME)  # a node retrying after a timeout
    assert store.mailbox_size() == (1, len(FRAME)) and len(store.waiting("ben")) == 1
    with pytest.raises(UserStoreError, match="ids must be unique"):
        store.enqueue("ben", "cat", 5, FRAME + b"other")  # never dropped in silence
    assert store.waiting("ben") == [Queued(5, "ann", FRAME)]


def test_the_member_store_survives_a_redis_restart(redis_server):
    store = RedisMemberStore(redis_server.url)
    store.add_room("ann", "#ops")
    store.set_last_seen("ann", 9)
    store.enqueue("ben", "ann", 3, FRAME)
    store.keep_receipt("ann", b"receipt")
    redis_server.restart()
    assert store.rooms("ann") == ["#ops"] and store.last_seen("ann") == 9
    assert store.waiting("ben") == [Queued(3, "ann", FRAME)]
    assert store.mailbox_size() == (1, len(FRAME))
    assert store.take_receipts("ann") == [b"receipt"]
    # The scripts went with the old process; they are loaded again on first use.
    assert store.remove("ben", [3]) == [Queued(3, "ann", FRAME)]
    assert store.mailbox_size() == (0, 0)


def test_redis_down_is_one_clean_error_and_the_store_recovers(redis_server):
    store = RedisMemberStore(redis_server.url)
    store.add_room("ann", "#ops")
    redis_server.kill()
    calls: list[Callable[[], object]] = [
        lambda: store.known("ann"), lambda: store.rooms("ann"),
        lambda: store.add_room("ann", "#x"), lambda: store.set_last_seen("ann", 1),
        lambda: store.enqueue("ben", "ann", 1, FRAME), lambda: store.waiting("ben"),
        lambda: store.remove("ben", [1]), store.expire, store.mailbox_size,
        lambda: store.keep_receipt("ann", b"r"), lambda: store.take_receipts("ann")]
    for call in calls:
        with pytest.raises(ClusterUnavailable) as caught:
            call()
        assert caught.value.code == "cluster_unavailable" and "try again" in caught.value.message
    redis_server.start()
    assert store.rooms("ann") == ["#ops"]


def test_every_key_is_under_the_prefix_and_listed_with_its_bound(redis_server, key_pool):
    clock = Clock()
    store = RedisMemberStore(redis_server.url, MailboxLimits(max_age=5), clock=clock)
    store.add_room("ann", "#ops")
    store.set_last_seen("ann", 1)
    store.enqueue("ben", "ann", 1, FRAME)
    store.enqueue("ben", "ann", 2, FRAME)
    store.keep_receipt("ann", b"r")
    RedisKeyRegistry(redis_server.url).register("ann", public_key_der(key_pool.get(0)))
    patterns = {PREFIX + pattern.replace("{name}", "ann").replace("{name}", "ben")
                for pattern in KEYS_DOC}
    patterns |= {p.replace(":ann", ":ben") for p in patterns}
    keys = {key.decode() for key in store.redis.keys("*")}
    assert keys <= patterns, f"keys not documented in KEYS_DOC: {keys - patterns}"
    assert store.redis.ttl(PREFIX + "receipts:ann") > 0
    # Given up and removed, a mailbox leaves no key behind.
    clock.now += 10
    store.expire()
    assert not store.redis.exists(PREFIX + "mail:ben") and not store.redis.exists(
        PREFIX + "mail:expiry")


def test_a_client_that_decodes_responses_is_refused(redis_server):
    with pytest.raises(ValueError, match="decode_responses"):
        RedisMemberStore(redis.Redis.from_url(redis_server.url, decode_responses=True))


# -- the key registry, on both implementations ---------------------------------------------



@pytest.fixture(params=["file", "redis"])
def make_registry(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[..., Registry]:
    """make_registry(max_names_per_key) -> a registry; a second call is another node's."""
    if request.param == "redis":
        url = request.getfixturevalue("redis_server").url
        return lambda most=3: RedisKeyRegistry(url, max_names_per_key=most)
    return lambda most=3: KeyRegistry(tmp_path / "keyregistry.json", max_names_per_key=most)


def test_register_then_lookup_anywhere(make_registry, der_a):
    entry = make_registry().register("Alice", der_a, now=WHEN)
    assert entry == RegisteredKey("Alice", key_fingerprint(der_a), der_a,
                                  "2026-11-29T19:40:00.123Z")
    other = make_registry()
    assert other.lookup("ALICE") == entry and other.lookup("bob") is None
    assert other.register("alice", der_a) == entry, "the same key again: the first entry"
    assert other.usernames() == ["Alice"]
    assert other.registration_times() == [WHEN.timestamp()]


def test_a_name_belongs_to_its_first_key(make_registry, der_a, der_b):
    registry = make_registry()
    registry.register("Alice", der_a)
    with pytest.raises(RegistrationConflict, match="Alice is already registered"):
        make_registry().register("aLiCe", der_b)
    assert registry.refusal("alice", der_b) == "Alice is already registered with a different key"
    assert registry.refusal("alice", der_a) is None
    assert registry.lookup("alice").public_der == der_a


def test_look_alike_names_are_refused(make_registry, der_a, der_b):
    registry = make_registry()
    registry.register("alice", der_a)
    other = make_registry()
    for twin in ["aIice", "a1ice", "AL1CE", "a|ice"]:
        assert other.lookalike(twin) == "alice"
        assert other.refusal(twin, der_b) == f'"{twin}" looks too much like the registered name "alice"'
        with pytest.raises(RegistrationRefused, match="looks too much like"):
            other.register(twin, der_b)
    assert other.lookalike("alice") is None and other.lookalike("bob") is None
    assert other.lookalike("ALICE") is None, "the name itself, in another case, is no twin"


def test_one_key_holds_at_most_max_names(make_registry, der_a, der_b):
    registry = make_registry(2)
    registry.register("one", der_a)
    registry.register("two", der_a)
    refusal = "this key already holds 2 usernames, the most one key may register here"
    assert make_registry(2).refusal("three", der_a) == refusal
    with pytest.raises(RegistrationRefused, match="already holds 2 usernames"):
        make_registry(2).register("three", der_a)
    assert registry.refusal("three", der_b) is None
    assert registry.forget("one")
    assert registry.register("three", der_a).username == "three", "forget frees a place"
    assert make_registry(0).register("four", der_a), "0: no limit"


def test_forget_releases_the_name_for_every_node(make_registry, der_a, der_b):
    registry = make_registry()
    registry.register("alice", der_a)
    assert make_registry().forget("ALICE") is True  # the operator, elsewhere
    assert registry.forget("alice") is False
    assert registry.lookup("alice") is None and registry.lookalike("aIice") is None
    assert registry.register("alice", der_b).public_der == der_b


def test_bad_keys_and_names_are_never_stored(make_registry, der_a):
    registry = make_registry()
    for bad in (b"", der_a + b"\0", der_a[:-1]):
        with pytest.raises(AuthError):
            registry.register("alice", bad)
    with pytest.raises(KeyRegistryError):
        registry.register("al\nice", der_a)
    assert registry.lookup("alice") is None and registry.usernames() == []


# -- the key registry, what only Redis has --------------------------------------------------

def test_two_nodes_registering_one_name_have_one_winner(redis_server, der_a, der_b):
    nodes = [RedisKeyRegistry(redis_server.url) for _ in range(6)]
    outcomes = race([(lambda r=r, d=d: r.register("alice", d))
                     for r, d in zip(nodes, [der_a, der_b] * 3, strict=True)])
    winner = nodes[0].lookup("alice")
    assert winner is not None
    won = [o for o in outcomes if isinstance(o, RegisteredKey)]
    assert all(o == winner for o in won) and len(won) == 3, "the winner's key, three times"
    assert sum(isinstance(o, RegistrationConflict) for o in outcomes) == 3


def test_look_alikes_and_the_per_key_limit_hold_under_a_race(redis_server, der_a, der_b):
    nodes = [RedisKeyRegistry(redis_server.url, max_names_per_key=3) for _ in range(2)]
    outcomes = race([lambda: nodes[0].register("alice", der_a),
                     lambda: nodes[1].register("aIice", der_b)])
    assert sum(isinstance(o, RegisteredKey) for o in outcomes) == 1
    assert sum(isinstance(o, RegistrationRefused) for o in outcomes) == 1
    held = 1 if nodes[0].lookup("aIice") else 0  # der_b's names so far
    outcomes = race([(lambda n=n: nodes[n % 2].register(f"name{n}", der_b)) for n in range(10)])
    assert sum(isinstance(o, RegisteredKey) for o in outcomes) == 3 - held
    assert all(isinstance(o, (RegisteredKey, RegistrationRefused)) for o in outcomes)
    assert len(nodes[0].usernames()) == 1 + 3 - held


def test_forget_user_works_for_the_whole_cluster(redis_server, der_a):
    node = RedisKeyRegistry(redis_server.url)
    node.register("alice", der_a)
    assert forget_user(redis_server.url, "Alice") is True
    assert forget_user(redis_server.url, "alice") is False
    assert node.lookup("alice") is None


def test_the_registry_survives_a_redis_restart_and_refuses_damage(redis_server, der_a):
    node = RedisKeyRegistry(redis_server.url)
    entry = node.register("alice", der_a)
    redis_server.restart()
    assert node.lookup("alice") == entry
    node.redis.hset(PREFIX + "reg:names", "bob", b'{"username":"bob","fingerprint":"00"}')
    with pytest.raises(KeyRegistryError, match="damaged"):
        node.lookup("bob")
    with pytest.raises(KeyRegistryError, match="damaged"):
        node.usernames()


def test_a_single_servers_registry_file_is_adopted(redis_server, tmp_path, der_a, der_b):
    path = tmp_path / "keyregistry.json"
    local = KeyRegistry(path)
    alice = local.register("Alice", der_a, now=WHEN)
    local.register("bob", der_b)
    node = RedisKeyRegistry(redis_server.url)
    node.register("carol", der_b)
    assert node.import_file(path) == 2 and node.import_file(path) == 0
    assert node.lookup("alice") == alice and node.lookalike("AIice") == "Alice"
    assert node.usernames() == ["Alice", "bob", "carol"]


def test_the_registry_reports_redis_down_as_one_clean_error(redis_server, der_a):
    node = RedisKeyRegistry(redis_server.url)
    redis_server.kill()
    for call in [lambda: node.lookup("a"), lambda: node.lookalike("a"),
                 lambda: node.refusal("a", der_a), lambda: node.register("a", der_a),
                 lambda: node.forget("a"), node.usernames]:
        with pytest.raises(ClusterUnavailable):
            call()


# -- flood control and registration quotas shared by the cluster ----------------------------


SLOW = 0.01  # tokens a second: nothing refills while a test runs, so waits are exact


@pytest.fixture(params=["local", "redis"])
def make_ledger(request: pytest.FixtureRequest) -> Callable[..., FloodLedger]:
    if request.param == "redis":
        url = request.getfixturevalue("redis_server").url
        return lambda rate, burst, clock=time.monotonic: RedisFloodLedger(url, rate, burst,
                                                                           clock=clock)
    return lambda rate, burst, clock=time.monotonic: FloodLedger(rate, burst, clock=clock)


def test_frames_past_the_burst_wait_their_turn(make_ledger):
    ledger = make_ledger(SLOW, 3)
    bucket = ledger.user("ann")
    waits = [ledger.charge(bucket, None) for _ in range(6)]
    assert waits[:3] == [0.0, 0.0, 0.0]
    assert [round(w * SLOW, 2) for w in waits[3:]] == [1.0, 2.0, 3.0]  # 1/rate apart
    assert ledger.delayed_frames == 3


def test_an_address_pays_ten_times_a_users_budget(make_ledger):
    ledger = make_ledger(SLOW, 2)
    address = ledger.address("192.0.2.7")
    waits = [ledger.charge(ledger.user(f"u{n}"), address) for n in range(21)]
    assert waits[:20] == [0.0] * 20 and waits[20] > 0


def test_the_budget_is_the_clusters_not_the_nodes(redis_server):
    first, second = (RedisFloodLedger(redis_server.url, SLOW, 3) for _ in range(2))
    assert [first.charge(first.user("Ann")) for _ in range(3)] == [0.0] * 3
    wait = second.charge(second.user("ann"))  # the same user, reconnected to another node
    assert 99 < wait <= 100
    assert first.charge(first.address("192.0.2.7")) == 0.0, "another bucket"


def test_racing_nodes_share_one_budget_exactly(redis_server):
    nodes = [RedisFloodLedger(redis_server.url, SLOW, 10) for _ in range(3)]
    buckets = [node.user("ann") for node in nodes]
    waits = race([(lambda n=n: nodes[n % 3].charge(buckets[n % 3])) for n in range(30)])
    assert sum(w == 0.0 for w in waits) == 10, "ten tokens, ten free frames, on any node"
    assert sorted(round(w * SLOW) for w in waits)[10:] == list(range(1, 21))


def test_batched_leases_pace_like_one_shared_bucket(redis_server):
    """A batch leased at once still spaces its frames 1/rate apart, as charging alone would."""
    frozen = Clock(0.0)  # the node's monotonic clock stands still; Redis's barely moves
    ledger = RedisFloodLedger(redis_server.url, 2.0, 4, clock=frozen)
    alone = FloodLedger(2.0, 4, clock=frozen)
    bucket, reference = ledger.user("ann"), alone.user("ann")
    waits = [ledger.charge(bucket) for _ in range(12)]
    expected = [alone.charge(reference) for _ in range(12)]
    assert ledger.round_trips == 6, "two tokens a lease"
    assert waits == pytest.approx(expected, abs=0.05)


def test_round_trips_per_frame_at_the_default_limits(redis_server):
    ledger = RedisFloodLedger(redis_server.url, 5.0, 20)  # ServerConfig's rate and burst
    user, address = ledger.user("ann"), ledger.address("192.0.2.7")
    for _ in range(100):
        ledger.charge(user, address)
    # Batches of 5 (user) and 50 (address): 20 leases, the address's inside two of them.
    assert ledger.frames == 100 and ledger.round_trips <= 22
    assert ledger.round_trips / ledger.frames <= 0.22


def test_flood_keys_expire_when_the_bucket_would_be_full(redis_server):
    ledger = RedisFloodLedger(redis_server.url, 5.0, 20)
    ledger.charge(ledger.user("Ann"), ledger.address("192.0.2.7"))
    user_ttl = ledger.redis.pttl(PREFIX + "flood:user:ann")
    address_ttl = ledger.redis.pttl(PREFIX + "flood:ip:192.0.2.7")
    assert 0 < user_ttl <= 2000 and 0 < address_ttl <= 3000  # 5 (50) tokens short: 1 s (+1 s)
    keys = {key.decode() for key in ledger.redis.keys("*")}
    assert keys == {PREFIX + "flood:user:ann", PREFIX + "flood:ip:192.0.2.7"}
    assert {"flood:user:{name}", "flood:ip:{address}"} <= set(FLOOD_KEYS_DOC)


def test_without_redis_flood_control_is_local_and_comes_back(redis_server):
    clock = Clock(0.0)
    ledger = RedisFloodLedger(redis_server.url, SLOW, 2, clock=clock)
    bucket = ledger.user("ann")
    redis_server.kill()
    waits = [ledger.charge(bucket) for _ in range(3)]  # no exception: paced locally
    assert waits[:2] == [0.0, 0.0] and waits[2] > 0 and ledger.local_only
    assert ledger.round_trips == 0
    redis_server.start()
    clock.now += 2  # past RETRY_AFTER
    ledger.charge(bucket)
    assert not ledger.local_only and ledger.round_trips == 1


def test_registration_quotas_are_counted_for_the_cluster(redis_server):
    clock = Clock()
    first, second = (RedisRegistrationQuota(redis_server.url, 2, 3, clock=clock)
                     for _ in range(2))
    local = RegistrationQuota(2, 3, clock=clock)
    for quota in (first, second, local):
        assert quota.refusal("192.0.2.1") is None
    for quota in (first, local):
        quota.record("192.0.2.1")
    second.record("192.0.2.1")
    local.record("192.0.2.1")
    assert first.refusal("192.0.2.1") == local.refusal("192.0.2.1")
    assert "from your address" in str(second.refusal("192.0.2.1"))
    assert second.refusal("192.0.2.2") is None
    second.record("192.0.2.2")
    local.record("192.0.2.2")
    assert first.refusal("192.0.2.3") == local.refusal("192.0.2.3")
    assert "3 new usernames in the last 24 hours" in str(first.refusal("192.0.2.3"))
    assert 0 < first.redis.ttl(PREFIX + "regq:ip:192.0.2.1") <= DAY
    clock.now += DAY
    assert first.refusal("192.0.2.1") is None and second.refusal("192.0.2.3") is None


def test_claims_from_racing_nodes_hold_the_limit_exactly(redis_server):
    quotas = [RedisRegistrationQuota(redis_server.url, 3, 1000) for _ in range(2)]
    outcomes = race([(lambda n=n: quotas[n % 2].claim("192.0.2.9")) for n in range(12)])
    assert outcomes.count(None) == 3
    assert all("from your address" in o for o in outcomes if o is not None)


def test_the_daily_window_is_seeded_only_when_redis_has_none(redis_server):
    clock = Clock()
    quota = RedisRegistrationQuota(redis_server.url, 20, 2, clock=clock)
    quota.seed([clock.now - 10, clock.now - 5, clock.now - DAY - 1])
    assert "2 new usernames" in str(quota.refusal("192.0.2.1"))
    RedisRegistrationQuota(redis_server.url, 20, 2, clock=clock).seed([clock.now] * 5)
    assert quota.redis.zcard(PREFIX + "regq:all") == 2


def test_a_node_seeds_from_the_registry_only_when_redis_lost_the_window(redis_server, der_a):
    registry = RedisKeyRegistry(redis_server.url, max_names_per_key=0)
    registry.register("early", der_a)
    quota = RedisRegistrationQuota(redis_server.url, 20, 2)
    quota.seed_from(registry)
    assert quota.redis.zcard(PREFIX + "regq:all") == 1
    quota.record("192.0.2.1")
    assert "2 new usernames" in str(quota.refusal("192.0.2.2"))
    registry.register("late", der_a)
    registry.register("later", der_a)
    quota.redis.zpopmin(PREFIX + "regq:all")  # one registration's day is over
    quota.seed_from(registry)  # the window exists: it is the truth, nothing is added
    assert quota.redis.zcard(PREFIX + "regq:all") == 1
    assert quota.refusal("192.0.2.2") is None


# -- the chat state on two nodes that share the member store --------------------------------


class Inbox:
    """The chat state's side of a socket: the frames pushed to one member."""

    def __init__(self) -> None:
        self.frames: list[dict[str, Any]] = []

    def push(self, data: bytes, urgent: bool = True) -> None:
        self.frames.append(json.loads(data[4:]))

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [f for f in self.frames if f["type"] == kind]


class NodeJournal(Journal):
    """A node's journal in memory; ids come from one counter for the cluster, as the
    engine's cluster-wide ids do."""

    def __init__(self, ids: Iterator[int]) -> None:
        super().__init__()
        self.ids, self.last = ids, 0

    @property
    def next_id(self) -> int:
        return self.last + 1

    def allocate_id(self) -> int:
        self.last = next(self.ids)
        return self.last


def test_two_chat_states_share_rooms_mailbox_and_receipts(redis_server):
    ids = itertools.count(1)
    node_a, node_b = (ChatState(NodeJournal(ids), RedisMemberStore(redis_server.url),
                                registered_name=lambda name: name.casefold())
                      for _ in range(2))
    ann_inbox = Inbox()
    ann, _ = node_a.login("ann", ann_inbox)
    ben, _ = node_b.login("ben", Inbox())
    node_b.join(ben, "#ops")
    node_b.logout(ben, "quit")
    # Ann, on node A, writes to Ben, who is offline: it waits in the shared mailbox.
    sent = [node_a.send_private(ann, "ben", {"n": n}) for n in range(3)]
    assert [f["id"] for f in ann_inbox.of("private_queued")] == sent
    # Ben comes back on node A this time: his rooms and his messages follow him.
    ben_inbox = Inbox()
    ben, _ = node_a.login("ben", ben_inbox)
    assert [f["room"] for f in ben_inbox.of("joined")] == ["#common", "#ops"]
    assert [f["id"] for f in ben_inbox.of("private")] == sent
    node_a.logout(ann, "quit")
    # His client also reached node B (the engine's takeover is not here) and both nodes get
    # an ack: each message leaves the mailbox once and Ann's receipts wait for her, once.
    ben_b, _ = node_b.login("ben", Inbox())
    node_b.acknowledge(ben_b, sent)
    node_a.acknowledge(ben, sent)
    again = Inbox()
    node_b.login("ann", again)
    assert [f["id"] for f in again.of("private_delivered")] == sent


def test_a_full_redis_says_it_is_full(redis_server):
    store = RedisMemberStore(redis_server.url)
    store.redis.config_set("maxmemory", 1)  # below what it uses: every write is refused
    try:
        with pytest.raises(ClusterUnavailable, match="shared store is full"):
            store.enqueue("ben", "ann", 1, FRAME)
        assert store.mailbox_size() == (0, 0), "reads still work"
    finally:
        store.redis.config_set("maxmemory", 0)
    store.enqueue("ben", "ann", 1, FRAME)
