"""Issue 10, server side, over real sockets: many rooms at once, rooms remembered across
logins and restarts, private messages that wait for an offline recipient, and the
positions a client needs to show what is unread.

Peers are `RawPeer`s (tests/hostile_net.py): the frames asserted are the wire's own.
"""
from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from hostile_net import RawPeer, error_codes, wait_until
from userstore import MailboxLimits, UserStore

pytestmark = pytest.mark.timeout(60)


def join(peer: RawPeer, room: str) -> dict[str, Any]:
    peer.send({"type": "join", "room": room})
    return peer.wait_for(lambda f: f["type"] == "joined" and f["room"] == room)


def say(peer: RawPeer, room: str, text: str) -> dict[str, Any]:
    peer.send({"type": "message", "room": room, "text": text, "ref": text})
    return peer.wait_for(lambda f: f.get("ref") == text)


def texts(peer: RawPeer, room: str | None = None) -> list[str]:
    return [f["text"] for f in peer.frames
            if f["type"] == "message" and (room is None or f["room"] == room)]


def sync(peer: RawPeer) -> None:
    """Everything the server sent this peer before now has arrived."""
    peer.send({"type": "ping", "data": "sync"})
    peer.wait_for(lambda f: f["type"] == "pong" and f["data"] == "sync")


def logged_in(chat: Any, key_pool: Any, *names: str) -> list[RawPeer]:
    """One logged-in peer per name, each on a key of its own from the pool."""
    peers = []
    for number, name in enumerate(names):
        peer = RawPeer(chat.address)
        peer.login(name, key_pool.get(number))
        peers.append(peer)
    return peers


ENVELOPE = {"version": 1, "opaque": "the server never looks inside"}


def private(peer: RawPeer, to: str, n: int) -> dict[str, Any]:
    peer.send({"type": "private", "to": to, "envelope": {**ENVELOPE, "n": n}, "ref": f"p{n}"})
    return peer.wait_for(lambda f: f.get("ref") == f"p{n}")


# -- several rooms at once -----------------------------------------------------------------

def test_a_user_in_three_rooms_gets_each_rooms_messages_and_only_those(
    server_factory: Any, key_pool: Any
) -> None:
    chat = server_factory()
    ann, ben, cat = logged_in(chat, key_pool, "ann", "ben", "cat")
    for room in ("#one", "#two"):
        join(ann, room)
    join(ben, "#one")
    join(cat, "#three")
    say(ann, "#common", "to common")
    say(ben, "#one", "to one")
    say(ann, "#two", "to two")
    say(cat, "#three", "to three")
    sync(ann)
    assert texts(ann) == ["to common", "to one", "to two"]
    sync(ben)
    assert texts(ben) == ["to common", "to one"]
    assert texts(cat, "#three") == ["to three"] and "to two" not in texts(cat)
    # Leaving stops a room's messages, and only that room's.
    ann.send({"type": "leave", "room": "#one"})
    left = ann.wait_for("left")
    assert left["room"] == "#one" and left["room_now"] == "#two"
    ben.wait_for(lambda f: f["type"] == "user_left" and f["user"] == "ann" and f["reason"] == "left")
    say(ben, "#one", "ann is gone")
    say(ben, "#common", "but here")
    ann.wait_for(lambda f: f.get("text") == "but here")
    assert "ann is gone" not in texts(ann)
    # A message for a room one is not in is refused, with its ref.
    ann.send({"type": "message", "room": "#one", "text": "let me in", "ref": "x1"})
    refusal = ann.wait_for("error")
    assert refusal["ref"] == "x1" and "not in #one" in refusal["message"]


def test_a_message_without_a_room_goes_to_the_room_joined_last(
    server_factory: Any, key_pool: Any
) -> None:
    chat = server_factory()
    ann = RawPeer(chat.address)
    ann.login("ann", key_pool.get(0))
    join(ann, "#later")
    ann.send({"type": "message", "text": "where does this go?"})
    assert ann.wait_for("message")["room"] == "#later"


def test_status_reaches_everyone_who_shares_a_room_once(server_factory: Any, key_pool: Any) -> None:
    chat = server_factory()
    ann, ben, cat = logged_in(chat, key_pool, "ann", "ben", "cat")
    for room in ("#one", "#two"):
        join(ann, room)
        join(ben, room)
    cat.send({"type": "leave", "room": "#common"})
    cat.wait_for("left")
    ann.send({"type": "status", "status": "away", "note": "lunch"})
    ann.wait_for("status")
    sync(ben)
    sync(cat)
    assert [f["note"] for f in ben.frames if f["type"] == "status"] == ["lunch"]
    assert not [f for f in cat.frames if f["type"] == "status"]


def test_knowrooms_lists_all_of_each_users_rooms(server_factory: Any, key_pool: Any) -> None:
    chat = server_factory()
    ann = RawPeer(chat.address)
    ann.login("ann", key_pool.get(0))
    join(ann, "#two")
    ann.send({"type": "users"})
    (entry,) = ann.wait_for("users")["users"]
    assert entry["rooms"] == ["#common", "#two"] and entry["room"] == "#two"


def test_one_user_may_be_in_fifty_rooms(server_factory: Any, key_pool: Any) -> None:
    chat = server_factory(rate=0)
    ann = RawPeer(chat.address)
    ann.login("ann", key_pool.get(0))
    for n in range(49):
        join(ann, f"#r{n}")
    ann.send({"type": "join", "room": "#one-too-many"})
    assert "50 rooms" in ann.wait_for("error")["message"]


# -- rooms are remembered -------------------------------------------------------------------

def test_rooms_come_back_at_the_next_login_and_after_a_server_restart(
    server_factory: Any, key_pool: Any, tmp_path: Any
) -> None:
    log_path = tmp_path / "messageslog.json"
    chat = server_factory(log_path=log_path)
    ann = RawPeer(chat.address)
    ann.login("ann", key_pool.get(0))
    join(ann, "#one")
    join(ann, "#two")
    ann.send({"type": "leave", "room": "#common"})
    ann.wait_for("left")
    ann.close()
    wait_until(lambda: chat.state.member("ann") is None, what="ann went offline")
    again = RawPeer(chat.address)
    welcome = again.login("ann", key_pool.get(0))
    assert welcome["rooms"] == ["#one", "#two"] and welcome["room"] == "#two"
    again.close()
    chat.stop()
    restarted = server_factory(log_path=log_path)
    third = RawPeer(restarted.address)
    welcome = third.login("ann", key_pool.get(0))
    assert welcome["rooms"] == ["#one", "#two"]
    assert [f["room"] for f in third.frames if f["type"] == "joined"] == ["#one", "#two"]


def test_last_seen_tells_a_returning_user_what_is_new(server_factory: Any, key_pool: Any) -> None:
    chat = server_factory()
    ann, ben = RawPeer(chat.address), RawPeer(chat.address)
    ann.login("ann", key_pool.get(0))
    ben.login("ben", key_pool.get(1))
    seen = say(ben, "#common", "before ann left")["id"]
    ann.close()
    wait_until(lambda: chat.state.member("ann") is None, what="ann went offline")
    new = say(ben, "#common", "while ann was away")["id"]
    back = RawPeer(chat.address)
    welcome = back.login("ann", key_pool.get(0))
    joined = next(f for f in back.frames if f["type"] == "joined")
    assert welcome["last_seen"] == joined["last_seen"] == seen
    assert [m["id"] for m in joined["history"] if m["id"] > joined["last_seen"]] == [new]


# -- private messages that wait -------------------------------------------------------------

def test_a_private_message_to_an_offline_user_waits_and_arrives_once_in_order(
    server_factory: Any, key_pool: Any
) -> None:
    chat = server_factory()
    ann, ben = RawPeer(chat.address), RawPeer(chat.address)
    ann.login("ann", key_pool.get(0))
    ben.login("ben", key_pool.get(1))
    ben.close()
    wait_until(lambda: chat.state.member("ben") is None, what="ben went offline")
    queued = [private(ann, "Ben", n) for n in range(3)]
    assert [f["type"] for f in queued] == ["private_queued"] * 3
    assert all(f["to"] == "ben" for f in queued)

    # Ben's first client gets them but does not acknowledge (it crashed): they wait on.
    first = RawPeer(chat.address)
    first.login("ben", key_pool.get(1))
    got = [first.wait_for("private") for _ in range(3)]
    assert [f["envelope"]["n"] for f in got] == [0, 1, 2]
    assert all(f["queued"] and f["from"] == "ann" and f["from_key"] for f in got)
    assert [f["id"] for f in got] == [f["id"] for f in queued]
    first.close()
    wait_until(lambda: chat.state.member("ben") is None, what="ben went offline")

    second = RawPeer(chat.address)
    second.login("ben", key_pool.get(1))
    again = [second.wait_for("private") for _ in range(3)]
    assert [f["id"] for f in again] == [f["id"] for f in got]
    second.send({"type": "ack", "ids": [f["id"] for f in again]})
    receipts = [ann.wait_for("private_delivered") for _ in range(3)]
    assert [r["id"] for r in receipts] == [f["id"] for f in queued]
    second.close()
    wait_until(lambda: chat.state.member("ben") is None, what="ben went offline")

    third = RawPeer(chat.address)
    third.login("ben", key_pool.get(1))
    sync(third)
    assert not [f for f in third.frames if f["type"] == "private"], "delivered exactly once"
    records = [json.loads(line) for line in chat.log.path.read_text("utf-8").splitlines()]
    kinds = [r["event"] for r in records if r["event"].startswith("private")]
    assert kinds == ["private_queued"] * 3 + ["private_delivered"] * 3
    assert all("envelope" not in r for r in records), "metadata only"


def test_a_receipt_waits_for_a_sender_who_went_offline(server_factory: Any, key_pool: Any) -> None:
    chat = server_factory()
    ann, ben = RawPeer(chat.address), RawPeer(chat.address)
    ann.login("ann", key_pool.get(0))
    ben.login("ben", key_pool.get(1))
    ben.close()
    wait_until(lambda: chat.state.member("ben") is None, what="ben went offline")
    queued = private(ann, "ben", 1)
    ann.close()
    wait_until(lambda: chat.state.member("ann") is None, what="ann went offline")
    back = RawPeer(chat.address)
    back.login("ben", key_pool.get(1))
    back.send({"type": "ack", "ids": [back.wait_for("private")["id"]]})
    sync(back)
    ann_again = RawPeer(chat.address)
    ann_again.login("ann", key_pool.get(0))
    receipt = ann_again.wait_for("private_delivered")
    assert receipt["id"] == queued["id"] and receipt["to"] == "ben"


def test_dnd_refuses_private_messages(server_factory: Any, key_pool: Any) -> None:
    chat = server_factory()
    ann, ben = RawPeer(chat.address), RawPeer(chat.address)
    ann.login("ann", key_pool.get(0))
    ben.login("ben", key_pool.get(1))
    ben.send({"type": "status", "status": "dnd"})
    ann.wait_for(lambda f: f["type"] == "status" and f["status"] == "dnd")
    refusal = private(ann, "ben", 1)
    assert refusal["type"] == "error" and refusal["code"] == "dnd"


def test_a_full_mailbox_refuses_with_a_reason_and_old_messages_expire(
    server_factory: Any, key_pool: Any
) -> None:
    chat = server_factory(queue_per_user=2)
    ann, ben = RawPeer(chat.address), RawPeer(chat.address)
    ann.login("ann", key_pool.get(0))
    ben.login("ben", key_pool.get(1))
    ben.close()
    wait_until(lambda: chat.state.member("ben") is None, what="ben went offline")
    first, _ = private(ann, "ben", 1), private(ann, "ben", 2)
    refusal = private(ann, "ben", 3)
    assert refusal["code"] == "queue_full" and "2 private messages waiting" in refusal["message"]
    # Time passes beyond the age limit: the next message to anyone expires the old ones.
    chat.users.clock = lambda: 1e12
    ann.send({"type": "private", "to": "ben", "envelope": ENVELOPE, "ref": "late"})
    expired = [ann.wait_for("private_expired") for _ in range(2)]
    assert expired[0]["id"] == first["id"] and expired[0]["to"] == "ben"
    assert ann.wait_for(lambda f: f.get("ref") == "late")["type"] == "private_queued"


def test_the_user_store_refuses_a_file_that_is_not_one(tmp_path: Any) -> None:
    foreign = tmp_path / "userstate.sqlite3"
    foreign.write_bytes(b"this is not a database at all" * 100)
    with pytest.raises(Exception, match="not a Gapshape user store"):
        UserStore(foreign)
    limits = MailboxLimits(per_user=5)
    store = UserStore(tmp_path / "fresh.sqlite3", limits)
    store.enqueue("ben", "ann", 7, b"frame")
    store.close()
    assert UserStore(tmp_path / "fresh.sqlite3", limits).mailbox_size() == (1, 5)


def test_ack_takes_only_a_list_of_ids_and_only_ones_own(server_factory: Any, key_pool: Any) -> None:
    chat = server_factory()
    ann, ben, cat = logged_in(chat, key_pool, "ann", "ben", "cat")
    ben.close()
    wait_until(lambda: chat.state.member("ben") is None, what="ben went offline")
    queued = private(ann, "ben", 1)
    cat.send({"type": "ack", "ids": [queued["id"]]})  # not cat's to take
    cat.send({"type": "ack", "ids": ["1"]})
    assert error_codes([cat.wait_for("error")]) == ["bad_frame"]
    assert chat.users.mailbox_size()[0] == 1
    envelope_b64 = base64.b64encode(json.dumps(ENVELOPE).encode()).decode()
    assert envelope_b64  # the envelope is stored as the frame's bytes, never decoded


# -- scrollback -----------------------------------------------------------------------------

def test_scrollback_pages_through_a_thousand_messages_without_duplicates_or_holes(
    server_factory: Any, key_pool: Any
) -> None:
    chat = server_factory(rate=0)
    ann = RawPeer(chat.address)
    ann.login("ann", key_pool.get(0))
    join(ann, "#other")
    ids = []
    for n in range(1000):
        room = "#common" if n % 3 else "#other"  # interleaved with another room
        ann.send({"type": "message", "room": room, "text": f"m{n}", "ref": f"r{n}"})
        if room == "#common":
            ids.append(n)
    ann.wait_for(lambda f: f.get("ref") == "r999")
    seen: list[str] = []
    before = None
    while True:
        request: dict[str, Any] = {"type": "history", "room": "common", "limit": 100}
        if before is not None:
            request["before"] = before
        ann.send(request)
        page = ann.wait_for("history")
        seen = [m["text"] for m in page["messages"]] + seen
        if not page["more"]:
            break
        before = page["messages"][0]["id"]
    assert seen == [f"m{n}" for n in ids]
    ann.send({"type": "history", "room": "#nowhere"})
    assert "not in #nowhere" in ann.wait_for("error")["message"]
    ann.send({"type": "history", "room": "#common", "limit": 101})
    assert "1 to 100" in ann.wait_for("error")["message"]


# -- the client library --------------------------------------------------------------------

def test_the_client_seals_for_an_offline_contact_who_reads_it_at_the_next_login(
    server_factory: Any, client_factory: Any
) -> None:
    from client import Notice, PrivateMessage

    chat = server_factory()
    alice = client_factory(chat, "alice")
    bob = client_factory(chat, "bob")  # registers bob's key, then goes away
    bob.close()
    wait_until(lambda: chat.state.member("bob") is None, what="bob went offline")
    alice.execute("/pm bob read this when you are back")
    sent = alice.recorder.wait_for(PrivateMessage)
    assert sent.outgoing and sent.text == "read this when you are back"
    assert "waits on the server" in alice.recorder.wait_for(Notice).text

    back = client_factory(chat, "bob")
    got = back.recorder.wait_for(PrivateMessage)
    assert (got.peer, got.text, got.outgoing) == ("alice", "read this when you are back", False)
    delivered = alice.recorder.wait_for(lambda e: isinstance(e, Notice) and e.topic == "receipt"
                                        and "was delivered" in e.text)
    assert "bob" in delivered.text
    wait_until(lambda: chat.users.mailbox_size() == (0, 0), what="the mailbox emptied")
    back.close()
    wait_until(lambda: chat.state.member("bob") is None, what="bob went offline")
    again = client_factory(chat, "bob")
    again.say("sync")
    again.recorder.wait_for(lambda e: getattr(e, "text", "") == "sync")
    assert not again.recorder.of_type(PrivateMessage), "acknowledged: not delivered twice"


def test_the_client_leaves_rooms_and_scrolls_back(server_factory: Any, client_factory: Any) -> None:
    from client import HistoryPage, RoomJoined, RoomLeft, RoomMessage

    chat = server_factory(rate=0)
    alice = client_factory(chat, "alice")
    for n in range(30):
        alice.say(f"line {n}")
    alice.recorder.wait_for(lambda e: isinstance(e, RoomMessage) and e.text == "line 29")
    alice.join("side")
    alice.recorder.wait_for(lambda e: isinstance(e, RoomJoined) and e.room == "#side")
    alice.execute("/leave")
    left = alice.recorder.wait_for(RoomLeft)
    assert left.room == "#side" and left.room_now == "#common" and alice.room == "#common"
    bob = client_factory(chat, "bob")  # his snapshot of #common: lines 20 to 29
    bob.recorder.wait_for(lambda e: isinstance(e, RoomJoined) and e.room == "#common")
    bob.execute("/history 15")  # the 15 before the oldest he has seen
    page = bob.recorder.wait_for(HistoryPage)
    assert [m.text for m in page.messages] == [f"line {n}" for n in range(5, 20)]
    assert page.more and all(m.history for m in page.messages)
    mark = bob.recorder.mark()
    bob.execute("/history 15")
    rest = bob.recorder.wait_for(HistoryPage, after=mark)
    assert [m.text for m in rest.messages] == [f"line {n}" for n in range(5)] and not rest.more
