"""The chat service end to end: a real server and real clients over 127.0.0.1 sockets."""
from __future__ import annotations

import json
import logging
import re
import socket
import struct

import pytest

from client import (
    Disconnected,
    ErrorEvent,
    LoginError,
    MemberList,
    PrivateMessage,
    RoomJoined,
    RoomList,
    RoomMessage,
    StatusChanged,
    UserJoined,
    UserLeft,
    UserList,
)
from protocol import PROTOCOL_VERSION
from rawclient import RawClient

ISO_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def joined(room: str):
    return lambda e: isinstance(e, RoomJoined) and e.room == room


def message(text: str):
    return lambda e: isinstance(e, RoomMessage) and e.text == text


def log_records(server) -> list[dict]:
    server.log.write_pending()
    return [json.loads(line) for line in server.log.path.read_text("utf-8").splitlines()]


# -- login and names ------------------------------------------------------------------------

def test_login_puts_the_user_in_common_with_the_others(chat_server, client_factory):
    alice = client_factory(chat_server, "alice")
    first = alice.recorder.wait_for(joined("#common"))
    assert [m.user for m in first.members] == ["alice"]
    bob = client_factory(chat_server, "bob")
    snapshot = bob.recorder.wait_for(joined("#common"))
    assert sorted(m.user for m in snapshot.members) == ["alice", "bob"]
    arrival = alice.recorder.wait_for(UserJoined)
    assert (arrival.user, arrival.room, arrival.status) == ("bob", "#common", "online")


@pytest.mark.parametrize("name, reason", [
    ("", "empty"),
    ("x" * 33, "maximum is 32"),
    ("bad name", "' '"),
    ("évé", "'é'"),
    ("semi;colon", "';'"),
])
def test_invalid_usernames_are_refused_with_a_reason(chat_server, key_pool, name, reason):
    raw = RawClient(chat_server.address)
    raw.send({"type": "hello", "version": PROTOCOL_VERSION, "username": name, "public_key": "AAAA"})
    error = raw.expect("error")
    assert error["code"] == "invalid_name"
    assert reason in error["message"]
    raw.close()


def test_valid_name_characters(chat_server, client_factory):
    client = client_factory(chat_server, "A.b-c_9")
    assert client.recorder.wait_for(joined("#common"))


def test_second_login_with_a_name_in_use_is_refused_and_the_first_untouched(
        chat_server, client_factory, key_pool):
    """Without the registered key a name in use stays taken (with it, the new login takes
    the session over: test_abuse.py)."""
    alice = client_factory(chat_server, "alice")
    with pytest.raises(LoginError) as refused:
        client_factory(chat_server, "ALICE", key=5, home="mallory")  # other key, other case
    assert refused.value.code == "name_taken"
    alice.say("still here")
    assert alice.recorder.wait_for(message("still here")).own
    assert not alice.recorder.of_type(Disconnected)


def test_unsupported_protocol_version_is_refused(chat_server):
    raw = RawClient(chat_server.address)
    raw.send({"type": "hello", "version": 99, "username": "x", "public_key": "AAAA"})
    error = raw.expect("error")
    assert error["code"] == "unsupported_version"
    assert raw.wait_closed() == []


def test_requests_before_login_are_refused(chat_server):
    raw = RawClient(chat_server.address)
    raw.send({"type": "message", "text": "hi"})
    assert raw.expect("error")["code"] == "not_logged_in"


# -- rooms ----------------------------------------------------------------------------------

def test_room_messages_reach_exactly_the_room_with_ids_times_and_echo(chat_server, client_factory):
    alice = client_factory(chat_server, "alice")
    bob = client_factory(chat_server, "bob")
    carol = client_factory(chat_server, "carol")
    carol.join("gaming")  # the '#' is optional
    carol.recorder.wait_for(joined("#gaming"))
    carol._write({"type": "leave", "room": "#common"})  # in #gaming only
    alice.recorder.wait_for(lambda e: isinstance(e, UserLeft) and e.user == "carol")
    alice.say("hello common")
    got_bob = bob.recorder.wait_for(message("hello common"))
    echo = alice.recorder.wait_for(message("hello common"))
    assert echo.own and not got_bob.own
    assert echo.id == got_bob.id and echo.time == got_bob.time
    assert ISO_MS.match(echo.time)
    carol.say("hello gaming")
    carol.recorder.wait_for(message("hello gaming"))
    alice.say("second")
    bob.recorder.wait_for(message("second"))
    assert not [e for e in carol.recorder.of_type(RoomMessage) if e.room == "#common"]
    assert not [e for e in bob.recorder.of_type(RoomMessage) if e.text == "hello gaming"]
    ids = [e.id for e in bob.recorder.of_type(RoomMessage)]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)


def test_join_adds_a_room_and_makes_it_current_without_leaving_the_others(
        chat_server, client_factory):
    alice = client_factory(chat_server, "alice")
    bob = client_factory(chat_server, "bob")
    carol = client_factory(chat_server, "carol")
    carol.join("#Work")
    carol.recorder.wait_for(joined("#work"))
    bob.join("work")
    snapshot = bob.recorder.wait_for(joined("#work"))
    assert sorted(m.user for m in snapshot.members) == ["bob", "carol"]
    assert carol.recorder.wait_for(lambda e: isinstance(e, UserJoined) and e.user == "bob")
    bob.request("list")  # the current room is the one joined last
    listing = bob.recorder.wait_for(MemberList)
    assert listing.room == "#work" and sorted(m.user for m in listing.members) == ["bob", "carol"]
    alice.say("still together in common")
    assert bob.recorder.wait_for(message("still together in common")).room == "#common"
    assert not [e for e in alice.recorder.of_type(UserLeft) if e.user == "bob"]


def test_invalid_room_name_is_refused(chat_server, client_factory):
    alice = client_factory(chat_server, "alice")
    alice.join("no spaces")
    error = alice.recorder.wait_for(ErrorEvent)
    assert error.code == "invalid_name" and "room name" in error.message


def test_rooms_lists_rooms_and_member_counts(chat_server, client_factory):
    alice = client_factory(chat_server, "alice")
    bob = client_factory(chat_server, "bob")
    bob.join("gaming")
    bob.recorder.wait_for(joined("#gaming"))
    alice.request("rooms")
    rooms = dict(alice.recorder.wait_for(RoomList).rooms)
    assert rooms == {"#common": 2, "#gaming": 1}


# -- history --------------------------------------------------------------------------------

def test_history_is_the_ten_latest_oldest_first_and_comes_before_live(chat_server, client_factory):
    alice = client_factory(chat_server, "alice")
    alice.join("gaming")
    for n in range(13):
        alice.say(f"m{n}")
    alice.recorder.wait_for(message("m12"))
    bob = client_factory(chat_server, "bob")
    bob.join("gaming")
    snapshot = bob.recorder.wait_for(joined("#gaming"))
    alice.say("live")
    assert [m.text for m in snapshot.history] == [f"m{n}" for n in range(3, 13)]
    assert all(m.history for m in snapshot.history)
    live = bob.recorder.wait_for(message("live"))
    assert not live.history
    assert bob.recorder.events.index(snapshot) < bob.recorder.events.index(live)


def test_history_of_long_messages_reaches_the_joining_client(chat_server, client_factory):
    alice = client_factory(chat_server, "alice")
    longest = ["€" * 8000, "😀" * 8000] * 5  # 10 messages, 240-320 KB of UTF-8 in all
    for text in longest:
        alice.say(text)
    alice.recorder.wait_for(lambda e: isinstance(e, RoomMessage) and e.id == 10)
    bob = client_factory(chat_server, "bob")
    snapshot = bob.recorder.wait_for(joined("#common"))
    assert [m.text for m in snapshot.history] == longest
    assert not bob.recorder.of_type(Disconnected)


def test_history_survives_a_server_restart(server_factory, client_factory, tmp_path):
    first = server_factory(log_path=tmp_path / "log.json")
    alice = client_factory(first, "alice")
    for n in range(3):
        alice.say(f"before restart {n}")
    alice.recorder.wait_for(message("before restart 2"))
    alice.close()
    first.stop()
    second = server_factory(log_path=tmp_path / "log.json")
    bob = client_factory(second, "bob")
    snapshot = bob.recorder.wait_for(joined("#common"))
    assert [m.text for m in snapshot.history] == [f"before restart {n}" for n in range(3)]
    bob.say("after")
    after = bob.recorder.wait_for(message("after"))
    assert after.id > max(m.id for m in snapshot.history)


# -- presence -------------------------------------------------------------------------------

@pytest.mark.parametrize("word, status", [
    ("away", "away"), ("AFK", "away"), ("dnd", "dnd"), ("do-not-disturb", "dnd"),
    ("Online", "online"),
])
def test_status_changes_are_pushed_to_the_room(chat_server, client_factory, word, status):
    alice = client_factory(chat_server, "alice")
    bob = client_factory(chat_server, "bob")
    alice.set_status(word, "at lunch")
    change = bob.recorder.wait_for(StatusChanged)
    assert (change.user, change.status, change.note) == ("alice", status, "at lunch")
    bob.request("list")
    members = {m.user: m for m in bob.recorder.wait_for(MemberList).members}
    assert members["alice"].status == status and members["alice"].note == "at lunch"


def test_unknown_status_is_refused(chat_server, client_factory):
    alice = client_factory(chat_server, "alice")
    alice.set_status("sleepy")
    assert "online, away or dnd" in alice.recorder.wait_for(ErrorEvent).message


def test_knowrooms_lists_every_online_user_and_their_room(chat_server, client_factory):
    alice = client_factory(chat_server, "alice")
    bob = client_factory(chat_server, "bob")
    bob.join("work")
    bob.recorder.wait_for(joined("#work"))
    alice.execute("/knowrooms")
    users = {m.user: m.room for m in alice.recorder.wait_for(UserList).users}
    assert users == {"alice": "#common", "bob": "#work"}  # each one's current room


# -- private messages -------------------------------------------------------------------------

def test_private_message_reaches_only_its_recipient(chat_server, client_factory):
    alice = client_factory(chat_server, "alice")
    bob = client_factory(chat_server, "bob")
    carol = client_factory(chat_server, "carol")
    alice.execute("/privatemsg bob meet at noon")
    got = bob.recorder.wait_for(PrivateMessage)
    assert (got.peer, got.text, got.outgoing) == ("alice", "meet at noon", False)
    sent = alice.recorder.wait_for(PrivateMessage)
    assert (sent.peer, sent.text, sent.outgoing) == ("bob", "meet at noon", True)
    assert sent.id == got.id and ISO_MS.match(got.time)
    carol.say("sync")
    carol.recorder.wait_for(message("sync"))
    assert not carol.recorder.of_type(PrivateMessage)


def test_private_message_to_dnd_user_is_refused(chat_server, client_factory):
    alice = client_factory(chat_server, "alice")
    bob = client_factory(chat_server, "bob")
    bob.set_status("dnd")
    alice.recorder.wait_for(StatusChanged)
    alice.execute("/privatemsg bob are you there?")
    error = alice.recorder.wait_for(ErrorEvent)
    assert error.code == "dnd" and "does not want to be disturbed" in error.message
    assert not bob.recorder.of_type(PrivateMessage)


def test_private_message_to_an_unknown_user(chat_server, client_factory):
    """(A registered user who is offline gets it later: tests/test_conversations.py.)"""
    alice = client_factory(chat_server, "alice")
    alice.execute("/pm nobody hi")
    error = alice.recorder.wait_for(ErrorEvent)
    assert error.code == "unknown_user" and "nobody" in error.message


# -- the log --------------------------------------------------------------------------------

def test_log_records_every_event_and_private_metadata_only(chat_server, client_factory):
    alice = client_factory(chat_server, "alice")
    bob = client_factory(chat_server, "bob")
    alice.say("logged text")
    alice.set_status("away")
    alice.execute("/pm bob the secret plan")
    bob.recorder.wait_for(PrivateMessage)
    bob.join("work")
    bob.recorder.wait_for(joined("#work"))
    bob._write({"type": "leave", "room": "#work"})
    alice.set_status("online")  # a request after bob's, answered after it
    alice.recorder.wait_for(lambda e: isinstance(e, StatusChanged) and e.status == "online")
    bob.execute("/quit")
    alice.recorder.wait_for(lambda e: isinstance(e, UserLeft) and e.user == "bob"
                            and e.reason == "quit")
    records = log_records(chat_server)
    events = [(r["event"], r.get("user", r.get("from"))) for r in records]
    for expected in [("connect", "alice"), ("join", "alice"), ("message", "alice"),
                     ("status", "alice"), ("private", "alice"), ("leave", "bob"),
                     ("join", "bob"), ("disconnect", "bob")]:
        assert expected in events
    message_record = next(r for r in records if r["event"] == "message")
    assert message_record["text"] == "logged text" and message_record["room"] == "#common"
    private = next(r for r in records if r["event"] == "private")
    assert set(private) == {"event", "time", "id", "from", "to", "size"}
    assert all(ISO_MS.match(r["time"]) for r in records)
    assert "secret plan" not in chat_server.log.path.read_text("utf-8")


# -- commands and disconnects ---------------------------------------------------------------

def test_quit_disconnects_cleanly(chat_server, client_factory):
    alice = client_factory(chat_server, "alice")
    bob = client_factory(chat_server, "bob")
    assert alice.execute("/quit") is False
    assert alice.recorder.wait_for(Disconnected).clean
    left = bob.recorder.wait_for(UserLeft)
    assert (left.user, left.reason) == ("alice", "quit")


def test_manual_lists_every_command(chat_server, client_factory):
    from client import Notice
    from commands import COMMANDS

    alice = client_factory(chat_server, "alice")
    alice.execute("/manual")
    manual = alice.recorder.wait_for(Notice).text
    for spec in COMMANDS:
        assert f"/{spec.name}" in manual


def test_unknown_command_names_the_commands(chat_server, client_factory):
    from commands import CommandError

    alice = client_factory(chat_server, "alice")
    with pytest.raises(CommandError, match="/privatemsg.*/knowrooms.*/quit"):
        alice.execute("/frobnicate")


def test_dropped_connection_is_cleaned_up(chat_server, client_factory):
    alice = client_factory(chat_server, "alice")
    bob = client_factory(chat_server, "bob")
    bob._sock.shutdown(socket.SHUT_RDWR)  # vanish without a goodbye
    left = alice.recorder.wait_for(UserLeft)
    assert left.user == "bob"
    assert client_factory(chat_server, "bob").recorder.wait_for(joined("#common"))


# -- keepalive ------------------------------------------------------------------------------

def test_silent_peer_is_pinged_then_dropped_while_answering_clients_stay(
        server_factory, client_factory, key_pool):
    server = server_factory(ping_interval=0.2, ping_timeout=0.2)
    alice = client_factory(server, "alice")
    bob = client_factory(server, "bob")  # says nothing at all; his client answers pings
    for n in range(3):  # each mute peer takes >= 0.4 s to drop: bob idles through all that
        raw = RawClient(server.address)
        raw.login(f"mute{n}", key_pool.get(5))
        assert raw.expect("ping")["type"] == "ping"  # ...and never answered
        left = alice.recorder.wait_for(
            lambda e, name=f"mute{n}": isinstance(e, UserLeft) and e.user == name)
        assert left.reason == "no answer to ping"
        raw.close()
    alice.say("still there, bob?")
    assert bob.recorder.wait_for(message("still there, bob?"))
    assert not bob.recorder.of_type(Disconnected)


# -- bad input ------------------------------------------------------------------------------

def frame_bytes(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


@pytest.mark.parametrize("payload, code, fatal", [
    (struct.pack(">I", 10_000_000), "frame_too_large", True),
    (frame_bytes(b"\xc3\x28"), "bad_frame", False),
    (frame_bytes(b"{not json"), "bad_frame", False),
    (frame_bytes(b"[1,2,3]"), "bad_frame", False),
    (frame_bytes(b'{"type":"teleport"}'), "bad_frame", False),
    (frame_bytes(b'{"type":"message"}'), "bad_frame", False),
    (frame_bytes(b'{"type":"message","text":42}'), "bad_frame", False),
    (frame_bytes(b'{"type":"join","room":null}'), "bad_frame", False),
])
def test_bad_input_gets_an_error_and_hurts_nobody_else(
        chat_server, client_factory, key_pool, caplog, payload, code, fatal):
    caplog.set_level(logging.INFO)
    alice = client_factory(chat_server, "alice")
    raw = RawClient(chat_server.address)
    raw.login("mallory", key_pool.get(6))
    raw.send_bytes(payload)
    error = raw.expect("error")
    assert error["code"] == code and error["message"]
    if fatal:
        raw.wait_closed()
    else:
        raw.send({"type": "message", "text": "still connected"})
        assert raw.expect("message")["text"] == "still connected"
    alice.say("unaffected")
    assert alice.recorder.wait_for(message("unaffected"))
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


def test_eof_mid_frame_disconnects_only_that_client(chat_server, client_factory, key_pool):
    alice = client_factory(chat_server, "alice")
    raw = RawClient(chat_server.address)
    raw.login("mallory", key_pool.get(6))
    raw.send_bytes(frame_bytes(b'{"type":"message","text":"cut')[:-5])
    raw.sock.shutdown(1)
    assert alice.recorder.wait_for(lambda e: isinstance(e, UserLeft) and e.user == "mallory")
    alice.say("fine")
    assert alice.recorder.wait_for(message("fine"))


def test_overlong_message_is_refused(chat_server, client_factory):
    alice = client_factory(chat_server, "alice")
    alice.say("x" * 8001)
    assert "maximum is 8000" in alice.recorder.wait_for(ErrorEvent).message
