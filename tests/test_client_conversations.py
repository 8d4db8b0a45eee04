"""Issue 10, client side, over real sockets: unread counts and mentions per conversation,
the current conversation (`/query`), private lines in the terminal, and the gap between
what a user last saw and the history shown at login.

The library tests drive `ChatClient`s against an in-process server; the terminal test runs
client.py as a person does (a child process, stdin and stdout) against the same server.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from client import (
    HistoryPage,
    Notice,
    PrivateMessage,
    RoomJoined,
    RoomLeft,
    RoomMessage,
    UnreadChanged,
)
from conversations import ConversationKey, Gap
from hostile_net import wait_until
from terminal import describe_lines
from test_cli import Process, start_client

pytestmark = pytest.mark.timeout(90)

ROOM = ConversationKey.room
PRIV = ConversationKey.private


@pytest.fixture
def processes() -> Iterator[Callable[..., Process]]:
    """Child processes (test_cli's helper), killed at teardown if still running."""
    started: list[Process] = []

    def start(*args: str, env: dict[str, str] | None = None) -> Process:
        started.append(Process(list(args), env))
        return started[-1]

    yield start
    for process in started:
        process.stop()


def joined(client: Any, room: str, after: int = 0) -> RoomJoined:
    return client.recorder.wait_for(
        lambda e: isinstance(e, RoomJoined) and e.room == room, after=after)


def heard(client: Any, text: str, kind: type = RoomMessage) -> Any:
    return client.recorder.wait_for(lambda e: isinstance(e, kind) and e.text == text)


def offline(chat: Any, client: Any, name: str) -> None:
    client.close()
    wait_until(lambda: chat.state.member(name) is None, what=f"{name} went offline")


def counts(client: Any) -> dict[str, tuple[int, int]]:
    return {s.key.label: (s.unread, s.mentions) for s in client.conversations.summaries()}


# -- unread and mentions -------------------------------------------------------------------

def test_unread_counts_three_rooms_a_mention_and_not_the_current_one(
        server_factory: Any, client_factory: Any) -> None:
    chat = server_factory(rate=0)
    alice = client_factory(chat, "alice")
    bob = client_factory(chat, "bob")
    for room in ("#a", "#b"):
        mark = alice.recorder.mark()
        alice.join(room)
        joined(alice, room, mark)
        mark = bob.recorder.mark()
        bob.join(room)
        joined(bob, room, mark)
    assert alice.current == ROOM("#b")  # the room joined last
    bob.say("in common", room="#common")
    bob.say("hey Alice, look", room="#a")
    bob.say("more", room="#a")
    bob.say("where alice is", room="#b")  # her current room: seen, even with her name
    alice.say("mine", room="#common")  # her own: never unread
    heard(alice, "mine")
    heard(alice, "where alice is")
    assert counts(alice) == {"#a": (2, 1), "#b": (0, 0), "#common": (1, 0)}
    assert alice.conversations.total_unread() == 3
    status = alice.recorder.wait_for(lambda e: isinstance(e, UnreadChanged) and e.total == 3)
    assert status.current == ROOM("#b")
    assert [s.key.label for s in status.summaries] == ["#a", "#b", "#common"]

    alice.execute("/query #a")  # a room she is in: current at once, its count cleared
    assert alice.current == ROOM("#a") and counts(alice)["#a"] == (0, 0)
    mark = alice.recorder.mark()
    alice.execute("/unread")
    report = alice.recorder.wait_for(
        lambda e: isinstance(e, Notice) and e.topic == "unread", after=mark)
    assert report.text == "1 unread: #common 1"
    alice.execute("typed in #a")  # goes to #a by name, though the server's current is #b
    line = heard(bob, "typed in #a")
    assert line.room == "#a"


def test_leaving_a_room_forgets_its_count(server_factory: Any, client_factory: Any) -> None:
    chat = server_factory(rate=0)
    alice = client_factory(chat, "alice")
    bob = client_factory(chat, "bob")
    alice.join("#side")
    joined(alice, "#side")
    bob.say("unread for her", room="#common")
    heard(alice, "unread for her")
    assert counts(alice)["#common"] == (1, 0)
    alice.execute("/leave #common")
    alice.recorder.wait_for(RoomLeft)
    assert "#common" not in counts(alice) and alice.current == ROOM("#side")


def test_history_already_seen_is_not_unread_again_after_a_reconnect(
        server_factory: Any, client_factory: Any) -> None:
    chat = server_factory(rate=0)
    alice = client_factory(chat, "alice")
    alice.join("#b")
    assert joined(alice, "#b").last_seen is None  # a /join, not the login burst
    bob = client_factory(chat, "bob")
    for n in range(3):
        bob.say(f"seen {n}", room="#common")
    heard(alice, "seen 2")
    assert counts(alice)["#common"] == (3, 0)  # unread live: she is in #b
    offline(chat, alice, "alice")
    bob.say("missed 0", room="#common")
    bob.say("missed 1 @alice", room="#common")
    heard(bob, "missed 1 @alice")
    back = client_factory(chat, "alice")
    snapshot = joined(back, "#common")
    assert [m.text for m in snapshot.history][-5:] == [
        "seen 0", "seen 1", "seen 2", "missed 0", "missed 1 @alice"]
    assert snapshot.gap is None  # the history reaches what she had seen
    assert snapshot.last_seen is not None and snapshot.last_seen >= 3
    assert set(back.welcome.rooms) == {"#common", "#b"}
    assert back.welcome.last_seen == snapshot.last_seen
    back.recorder.wait_for(lambda e: isinstance(e, UnreadChanged) and e.total == 2)
    assert counts(back) == {"#b": (0, 0), "#common": (2, 1)}


# -- /query: typed lines go to a contact -----------------------------------------------------

def test_query_routes_typed_lines_privately_until_switched_back(
        server_factory: Any, client_factory: Any) -> None:
    chat = server_factory(rate=0)
    alice = client_factory(chat, "alice")
    bob = client_factory(chat, "bob")
    alice.execute("/query bob")
    notice = alice.recorder.wait_for(lambda e: isinstance(e, Notice) and e.topic == "query")
    assert "@bob" in notice.text and alice.current == PRIV("bob")
    alice.execute("first private line")
    alice.execute("second private line")
    got = heard(bob, "second private line", PrivateMessage)
    assert (got.peer, got.outgoing) == ("alice", False)
    assert [e.text for e in bob.recorder.of_type(PrivateMessage)] == [
        "first private line", "second private line"]
    sent = heard(alice, "second private line", PrivateMessage)
    assert sent.outgoing and sent.peer == "bob"
    assert describe_lines(got)[0].startswith("[@alice] [private, encrypted")
    assert describe_lines(sent)[0].startswith("[-> @bob] [private, encrypted")
    assert counts(bob)["@alice"] == (2, 0)  # bob is in #common: unread for him
    assert counts(alice)["@bob"] == (0, 0)  # her own, and current

    alice.execute("/query")  # back to the room
    assert alice.current == ROOM("#common")
    alice.execute("in the room again")
    assert heard(bob, "in the room again").room == "#common"
    alice.execute("/query bob")
    mark = alice.recorder.mark()
    alice.execute("/join #common")  # /join also switches back
    joined(alice, "#common", mark)
    alice.execute("room after join")
    heard(bob, "room after join")
    private_texts = [e.text for e in bob.recorder.of_type(PrivateMessage)]
    room_texts = [e.text for e in bob.recorder.of_type(RoomMessage)]
    assert private_texts == ["first private line", "second private line"]
    assert "first private line" not in room_texts and "room after join" in room_texts

    bob.execute("/query alice")  # reading it clears his count
    assert counts(bob)["@alice"] == (0, 0)
    bob.execute("/leave")  # in a query: closes it, back to the room
    assert bob.current == ROOM("#common") and "@alice" not in counts(bob)


def test_query_refuses_oneself(server_factory: Any, client_factory: Any) -> None:
    from commands import CommandError

    alice = client_factory(server_factory(), "alice")
    with pytest.raises(CommandError, match="yourself"):
        alice.execute("/query ALICE")
    assert alice.current == ROOM("#common")


def test_query_a_room_not_joined_joins_it(server_factory: Any, client_factory: Any) -> None:
    alice = client_factory(server_factory(), "alice")
    alice.execute("/query #elsewhere")
    joined(alice, "#elsewhere")
    assert alice.current == ROOM("#elsewhere")


# -- the gap at login ------------------------------------------------------------------------

def test_after_a_reconnect_unread_and_the_gap_are_shown_and_history_fills_it(
        server_factory: Any, client_factory: Any) -> None:
    chat = server_factory(rate=0)
    alice = client_factory(chat, "alice")
    alice.join("#a")
    joined(alice, "#a")
    offline(chat, alice, "alice")
    bob = client_factory(chat, "bob")
    for n in range(25):
        bob.say(f"line {n}" + (" for alice" if n == 20 else ""))
    bob.join("#a")
    joined(bob, "#a")
    bob.say("two", room="#a")
    heard(bob, "two")

    back = client_factory(chat, "alice")
    snapshot = joined(back, "#common")
    assert [m.text for m in snapshot.history][0] == "line 15"
    gap = snapshot.gap
    assert isinstance(gap, Gap) and gap.at_most == 15
    assert gap.before_id == snapshot.history[0].id
    assert joined(back, "#a").gap is None  # it shows everything #a had
    back.recorder.wait_for(lambda e: isinstance(e, UnreadChanged) and e.total == 10)
    assert back.current == ROOM("#a")  # where she was: its line is seen
    assert counts(back) == {"#a": (0, 0), "#common": (10, 1)}
    back.execute("/unread")
    report = back.recorder.wait_for(lambda e: isinstance(e, Notice) and e.topic == "unread")
    assert report.text.split("\n") == [
        "10 unread: #common 10*+, 1 mentioning you",
        "#common: up to 15 earlier messages since you were last here: /history 15 in #common"]

    back.execute("/query #common")
    back.execute("/history 15")
    page = back.recorder.wait_for(HistoryPage)
    assert [m.text for m in page.messages] == [f"line {n}" for n in range(15)]
    assert back.conversations.gap("#common") is None
    assert counts(back)["#common"] == (0, 0)


# -- the terminal ----------------------------------------------------------------------------

def test_terminal_shows_gap_status_unread_and_tagged_privates(
        server_factory: Any, client_factory: Any, processes: Any, tmp_path: Path,
        key_pool: Any) -> None:
    chat = server_factory(rate=0)
    port = str(chat.address[1])
    alice = start_client(processes, tmp_path, key_pool, "alice", 0, port)
    alice.wait_line(r"logged in as alice")
    alice.type("/join #a")
    alice.wait_line(r"you are in #a")
    alice.end_input()  # end of input quits
    assert alice.proc.wait(timeout=30) == 0
    wait_until(lambda: chat.state.member("alice") is None, what="alice went offline")

    bob = client_factory(chat, "bob", key=1)
    for n in range(25):
        bob.say(f"line {n}" + (" for alice" if n == 20 else ""))
    heard(bob, "line 24")
    bob.send_private("alice", "while you were out")
    bob.recorder.wait_for(lambda e: isinstance(e, PrivateMessage) and e.outgoing)

    alice = start_client(processes, tmp_path, key_pool, "alice", 0, port)
    alice.wait_line(r"you are in #common")
    alice.wait_line(r"--- #common: up to 15 earlier messages since you were last here: "
                    r"/history 15 in #common ---")
    alice.wait_line(r"#common <bob> line 15 \(history\)")  # the join history is printed
    alice.wait_line(r"\[@bob\] \[private, encrypted, not verified\] bob -> you: while you were out")
    alice.wait_line(r"\] \[#a\] \(11 unread: #common 10\*\+, @bob 1\)$")
    alice.type("/unread")
    alice.wait_line(r"11 unread: #common 10\*\+, 1 mentioning you; @bob 1$")
    alice.wait_line(r"#common: up to 15 earlier messages since you were last here")
    alice.type("/query #common")
    alice.wait_line(r"\[#common\] \(1 unread: #common\+, @bob 1\)$")  # the gap stays till loaded
    alice.type("/history 15")
    alice.wait_line(r"15 earlier messages of #common")
    alice.wait_line(r"#common <bob> line 0 \(history\)")
    alice.wait_line(r"\[#common\] \(1 unread: @bob 1\)$")  # loaded: no gap
    alice.type("/query bob")
    alice.wait_line(r"\] \[@bob\] \(nothing unread\)$")
    alice.type("hello bob, privately")
    alice.wait_line(r"\[-> @bob\] \[private, encrypted, not verified\] you -> bob: hello bob")
    got = heard(bob, "hello bob, privately", PrivateMessage)
    assert got.peer == "alice" and not got.outgoing
    assert "hello bob, privately" not in [e.text for e in bob.recorder.of_type(RoomMessage)]
    alice.end_input()
    assert alice.proc.wait(timeout=30) == 0

