"""Issue 9, server side, over real sockets: each attack an outsider or a member can make on
the server's resources or on other users' sessions, and what refuses it.

Hostile peers are `RawPeer`s (tests/hostile_net.py), which send exactly the bytes a test
wants; well-behaved users are `ChatClient`s. Every wait has a deadline.
"""
from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from Crypto.PublicKey import RSA

import auth
import rooms
from client import Disconnected, RoomMessage
from hostile_net import WAIT, RawPeer, error_codes, wait_until
from protocol import PROTOCOL_VERSION, encode_body
from rooms import ChatState

pytestmark = pytest.mark.timeout(60)


def hello(peer: RawPeer, username: str, public_der: bytes, version: Any = PROTOCOL_VERSION) -> None:
    peer.send({"type": "hello", "version": version, "username": username,
               "public_key": base64.b64encode(public_der).decode()})


# -- takeover: a reconnect replaces the old session at once ---------------------------------

def test_a_reconnect_after_a_silent_network_drop_takes_over_within_two_seconds(
    server_factory: Any, client_factory: Any, key_pool: Any
) -> None:
    chat = server_factory(ping_interval=3600)  # the dead socket would hold the name for an hour
    bob = client_factory(chat, "bob")
    old = RawPeer(chat.address)
    old.login("alice", key_pool.get(2))
    # The network drops silently: the old socket stays open and nobody reads it again.
    new = RawPeer(chat.address, timeout=2.0)
    new.login("alice", key_pool.get(2))  # welcome within 2 s, or RawPeer times out
    assert chat.state.member("alice").address == "%s:%d" % new.sock.getsockname()[:2]
    frames = old.wait_closed(timeout=WAIT)
    assert {"type": "bye", "reason": "logged in elsewhere"} in frames
    # Bob saw alice leave (her old session) and come back, and she is online once.
    new.send({"type": "message", "text": "back again", "ref": "r1"})
    bob.recorder.wait_for(lambda e: isinstance(e, RoomMessage) and e.text == "back again")
    new.send({"type": "users"})
    users = new.wait_for("users")["users"]
    assert [u["user"] for u in users].count("alice") == 1


def test_the_client_library_reports_a_takeover_and_the_new_device_works(
    server_factory: Any, client_factory: Any
) -> None:
    chat = server_factory()
    laptop = client_factory(chat, "alice")
    phone = client_factory(chat, "alice", home="alice-phone", key=0)  # same key, other device
    gone = laptop.recorder.wait_for(Disconnected)
    assert gone.reason == "logged in elsewhere"
    phone.say("from the phone")
    assert phone.recorder.wait_for(
        lambda e: isinstance(e, RoomMessage) and e.text == "from the phone").own


def test_without_the_key_a_name_in_use_stays_taken(
    server_factory: Any, client_factory: Any, key_pool: Any
) -> None:
    chat = server_factory()
    alice = client_factory(chat, "alice")
    thief = RawPeer(chat.address)
    hello(thief, "alice", auth.public_key_der(key_pool.get(5)))
    assert error_codes(thief.wait_closed()) == ["name_taken"]
    alice.say("still mine")
    alice.recorder.wait_for(lambda e: isinstance(e, RoomMessage) and e.text == "still mine")
    assert not alice.recorder.of_type(Disconnected)


# -- ref stays with the sender --------------------------------------------------------------

def test_ref_is_echoed_only_to_the_sender(server_factory: Any, key_pool: Any) -> None:
    chat = server_factory()
    alice, bob = RawPeer(chat.address), RawPeer(chat.address)
    alice.login("alice", key_pool.get(0))
    bob.login("bob", key_pool.get(1))
    alice.send({"type": "message", "text": "labelled", "ref": "alice-secret-7"})
    own = alice.wait_for(lambda f: f["type"] == "message")
    seen = bob.wait_for(lambda f: f["type"] == "message")
    assert own["ref"] == "alice-secret-7"
    assert "ref" not in seen and seen["text"] == "labelled" and seen["id"] == own["id"]
    alice.send({"type": "private", "to": "nobody", "envelope": {}, "ref": "p1"})
    refusal = alice.wait_for("error")
    assert refusal["ref"] == "p1" and refusal["request"] == "private"
    alice.send({"type": "message", "text": "x", "ref": "r" * 65})
    assert alice.wait_for("error")["code"] == "bad_frame"


# -- protocol exactness ---------------------------------------------------------------------

@pytest.mark.parametrize("version", ["1", "2", 2.0, None, True, [2], {"v": 2}, 99])
def test_any_version_but_the_spoken_one_is_unsupported(
    server_factory: Any, key_pool: Any, version: Any
) -> None:
    chat = server_factory()
    peer = RawPeer(chat.address)
    hello(peer, "vera", auth.public_key_der(key_pool.get(0)), version)
    assert error_codes(peer.wait_closed()) == ["unsupported_version"]


# -- registrations --------------------------------------------------------------------------

def test_one_key_registers_at_most_three_names(server_factory: Any, key_pool: Any) -> None:
    chat = server_factory()
    for name in ("sock1", "sock2", "sock3"):
        RawPeer(chat.address).login(name, key_pool.get(3))
    fourth = RawPeer(chat.address)
    hello(fourth, "sock4", auth.public_key_der(key_pool.get(3)))
    refusal = fourth.wait_for("error")
    assert refusal["code"] == "registration_limited" and "3 usernames" in refusal["message"]
    assert chat.registry.lookup("sock4") is None


def test_registrations_per_address_and_per_day_are_limited(
    server_factory: Any, key_pool: Any, tmp_path: Any
) -> None:
    chat = server_factory(registrations_per_address=2, max_names_per_key=0)
    for name in ("first", "second"):
        RawPeer(chat.address).login(name, key_pool.get(4))
    third = RawPeer(chat.address)
    hello(third, "third", auth.public_key_der(key_pool.get(4)))
    assert "from your address" in third.wait_for("error")["message"]
    # The daily total counts what the registry already holds: a restart does not reset it.
    chat.stop()
    again = server_factory(registrations_per_day=2, max_names_per_key=0,
                           log_path=tmp_path / "messageslog.json")
    late = RawPeer(again.address)
    hello(late, "third", auth.public_key_der(key_pool.get(4)))
    refusal = late.wait_for("error")
    assert refusal["code"] == "registration_limited" and "last 24 hours" in refusal["message"]
    RawPeer(again.address).login("first", key_pool.get(4))  # known names still log in


@pytest.mark.parametrize("twin", ["aIice", "a1ice", "AL1CE", "rnallory", "vvendy", "MALL0RY"])
def test_look_alike_names_are_refused(server_factory: Any, key_pool: Any, twin: str) -> None:
    chat = server_factory()
    for name in ("alice", "mallory", "wendy"):
        RawPeer(chat.address).login(name, key_pool.get(0 if name == "alice" else 1))
    impostor = RawPeer(chat.address)
    hello(impostor, twin, auth.public_key_der(key_pool.get(5)))
    refusal = impostor.wait_for("error")
    assert refusal["code"] == "invalid_name" and "looks too much like" in refusal["message"]


def test_a_name_that_only_differs_in_case_is_the_same_user_not_a_look_alike(
    server_factory: Any, key_pool: Any
) -> None:
    chat = server_factory()
    RawPeer(chat.address).login("alice", key_pool.get(0))
    peer = RawPeer(chat.address)
    assert peer.login("Alice", key_pool.get(0))["user"] == "Alice"


# -- keys that cost more to check --------------------------------------------------------

def test_a_public_exponent_other_than_65537_is_refused_before_any_signature_check(
    server_factory: Any, key_pool: Any
) -> None:
    genuine = key_pool.get(0)
    huge = RSA.construct((genuine.n, (1 << 3000) + 1))  # legal RSA, far dearer to verify
    der = huge.export_key(format="DER")
    with pytest.raises(auth.AuthError, match="exponent must be 65537"):
        auth.load_public_key(der)
    chat = server_factory()
    peer = RawPeer(chat.address)
    hello(peer, "slowpoke", der)
    peer.wait_for("challenge")
    peer.send({"type": "auth", "signature": base64.b64encode(b"\0" * 384).decode()})
    refusal = peer.wait_for("error")
    assert refusal["code"] == "auth_failed" and "65537" in refusal["message"]


# -- answers that could outgrow the outbox ------------------------------------------------

class Inbox:
    """An outbox that keeps the frames pushed to it (the pure core's side of a socket)."""

    def __init__(self) -> None:
        self.frames: list[dict[str, Any]] = []

    def push(self, data: bytes, urgent: bool = True) -> None:
        self.frames.append(json.loads(data[4:]))


class Journal:
    """The smallest journal: ids and records in memory, no history."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    @property
    def next_id(self) -> int:
        return len(self.records) + 1

    def allocate_id(self) -> int:
        return len(self.records) + 1

    def append(self, record: dict[str, Any], line: bytes | None = None) -> None:
        self.records.append(record)

    def history(self, room: str) -> list[dict[str, Any]]:
        return []

    def history_before(self, room: str, before_id: int | None = None,
                       limit: int = 100) -> list[dict[str, Any]]:
        return []

    def rooms(self, *, after: str | None = None, limit: int | None = None) -> list[str]:
        names = sorted({r["room"] for r in self.records if "room" in r})
        names = [name for name in names if after is None or name > after]
        return names[:limit] if limit is not None else names


def test_a_crowded_room_is_snapshotted_and_listed_in_bounded_pages() -> None:
    state = ChatState(Journal())
    note = "\U0001F600" * rooms.MAX_NOTE_CHARS  # the longest note, 4 bytes a character
    for n in range(1000):
        member, _ = state.login(f"user{n:04d}", Inbox())
        state.set_status(member, "away", note)
    newcomer_inbox = Inbox()
    newcomer, _ = state.login("zed", newcomer_inbox)
    joined = next(f for f in newcomer_inbox.frames if f["type"] == "joined")
    assert joined["member_count"] == 1001 and len(joined["members"]) == rooms.MEMBER_PAGE
    assert len(encode_body(joined)) < 256 * 1024
    # Paging the whole room: each member exactly once, in name order.
    names, cursor = [m["user"] for m in joined["members"]], joined["members_next"]
    while cursor is not None:
        state.list_room(newcomer, after=cursor)
        page = newcomer_inbox.frames[-1]
        assert page["type"] == "members" and len(encode_body(page)) < 256 * 1024
        names += [m["user"] for m in page["members"]]
        cursor = page["next"]
    assert names == sorted([f"user{n:04d}" for n in range(1000)] + ["zed"])
    state.list_users(newcomer)
    users = newcomer_inbox.frames[-1]
    assert users["user_count"] == 1001 and len(users["users"]) == rooms.USER_PAGE


def test_the_room_list_is_paged(server_factory: Any, key_pool: Any) -> None:
    state = ChatState(Journal())
    owner, _ = state.login("owner", Inbox())
    for n in range(rooms.ROOM_PAGE + 30):
        state.join(owner, f"room{n:04d}")
        state.post(owner, "keep this room in the history")
        state.leave(owner)  # a user may be in 50 rooms at most
    inbox = Inbox()
    viewer, _ = state.login("viewer", inbox)
    state.list_rooms(viewer)
    first = inbox.frames[-1]
    assert len(first["rooms"]) == rooms.ROOM_PAGE and first["next"] is not None
    state.list_rooms(viewer, after=first["next"])
    second = inbox.frames[-1]
    listed = [r["room"] for r in first["rooms"] + second["rooms"]]
    assert second["next"] is None and len(listed) == len(set(listed)) == rooms.ROOM_PAGE + 31


def test_members_of_another_room_are_listed_by_name_over_the_wire(
    server_factory: Any, key_pool: Any
) -> None:
    chat = server_factory()
    alice, bob = RawPeer(chat.address), RawPeer(chat.address)
    alice.login("alice", key_pool.get(0))
    bob.login("bob", key_pool.get(1))
    bob.send({"type": "join", "room": "#side"})
    bob.wait_for("joined")
    alice.send({"type": "list", "room": "side"})
    page = alice.wait_for("members")
    assert page == {"type": "members", "room": "#side", "member_count": 1, "next": None,
                    "members": [{"user": "bob", "status": "online", "note": ""}]}


# -- a server-wide cap on unsent bytes -------------------------------------------------------

def test_slow_consumers_are_dropped_when_the_server_wide_budget_is_spent(
    server_factory: Any, client_factory: Any, key_pool: Any
) -> None:
    budget = 300 * 1024
    chat = server_factory(rate=0, outbox_limit=4 * 1024 * 1024, outbox_total=budget)
    alice = client_factory(chat, "alice")
    sleepers = []
    for n, key in enumerate((2, 3, 4)):
        sleeper = RawPeer(chat.address, rcvbuf=4096)
        sleeper.login(f"sleeper{n}", key_pool.get(key))
        sleepers.append(sleeper)
    text = "x" * 7000
    sent = 0
    # Nobody reads: their backlogs grow together until the budget, not each outbox's 4 MiB,
    # is what stops them.
    while chat.connection_count() > 1 and sent < 3000:
        alice.say(f"{sent} {text}")
        sent += 1
        alice.recorder.wait_for(lambda e, s=sent: isinstance(e, RoomMessage)
                                and e.own and e.text.startswith(f"{s - 1} "))
        assert chat.backlog.used <= budget
    wait_until(lambda: chat.connection_count() == 1, what="the sleepers were dropped")
    assert chat.backlog.used <= budget
    assert sent * 7000 < 3 * 4 * 1024 * 1024, "dropped by the budget, before any own limit"
    wait_until(lambda: chat.backlog.used == 0, what="their bytes returned to the budget")
