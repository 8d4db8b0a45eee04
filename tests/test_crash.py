"""Issue 5, points 5 and 6: kill -9 and SIGTERM under load, against a real server process.

`server.py` runs as a subprocess (tests/hostile_net.ServerProcess) on a log in tmp_path.
Several clients chat steadily; the server is killed (SIGKILL) or asked to stop (SIGTERM)
in the middle of it. What every client received, and what every sender saw echoed
(acknowledged), is then looked up in the log the process left behind.
"""
from __future__ import annotations

import json
import signal
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from client import Disconnected, MemberList, RoomJoined, RoomMessage
from hostile_net import WAIT, PeerClosed, RawPeer, ServerProcess
from protocol import encode_frame

pytestmark = pytest.mark.timeout(90)
posix_signals = pytest.mark.skipif(sys.platform == "win32",
                                   reason="POSIX signals (SIGKILL, SIGTERM)")

HISTORY_SIZE = 10  # rooms.HISTORY_SIZE: what a joined snapshot carries


class Chatter(threading.Thread):
    """Says numbered lines as fast as the server echoes them, until it cannot."""

    def __init__(self, client: Any, pace: float) -> None:
        super().__init__(name=f"chatter-{client.username}", daemon=True)
        self.client = client
        self.pace = pace
        self.stop = threading.Event()
        self.said = 0

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.client.say(f"{self.client.username} {self.said}")
            except OSError:
                return  # the server is gone
            self.said += 1
            if self.pace:
                time.sleep(self.pace)  # a steady stream, not a synchronization

    def echoes(self) -> list[RoomMessage]:
        return [e for e in self.client.recorder.of_type(RoomMessage) if e.own and not e.history]


def start_chatting(server: ServerProcess, client_factory: Any,
                   pace: float) -> tuple[list[Any], list[Chatter]]:
    """Four clients in two rooms, all talking; returns once each has 100 echoes back."""
    endpoint = SimpleNamespace(address=server.address)
    clients = []
    for name, key, room in [("ann", 0, None), ("ben", 1, None), ("cat", 2, "#ops"),
                            ("dan", 0, "#ops")]:
        client = client_factory(endpoint, name, key=key)
        if room:
            client.join(room)
            client.recorder.wait_for(
                lambda e, room=room: isinstance(e, RoomJoined) and e.room == room)
        clients.append(client)
    chatters = [Chatter(client, pace) for client in clients]
    for chatter in chatters:
        chatter.start()
    for chatter in chatters:
        last = f"{chatter.client.username} 99"
        chatter.client.recorder.wait_for(
            lambda e, last=last: isinstance(e, RoomMessage) and e.own and e.text == last)
    return clients, chatters


def stop_chatting(clients: list[Any], chatters: list[Chatter]) -> None:
    for client in clients:
        client.recorder.wait_for(Disconnected)
    for chatter in chatters:
        chatter.stop.set()
        chatter.join(WAIT)


def received(clients: list[Any]) -> dict[int, tuple[str, str, str]]:
    """Every live room message any client got: id -> (room, user, text)."""
    seen: dict[int, tuple[str, str, str]] = {}
    for client in clients:
        for event in client.recorder.of_type(RoomMessage):
            if not event.history:
                assert seen.setdefault(event.id, (event.room, event.user, event.text)) == (
                    event.room, event.user, event.text), f"id {event.id} means two messages"
    return seen


def read_log(path: Path, *, allow_torn_tail: bool) -> tuple[list[dict[str, Any]], bytes]:
    """Every record of the log; a torn last line (no newline) is returned apart."""
    data = path.read_bytes()
    lines = data.split(b"\n")
    tail = lines.pop()  # b"" when the file ends with a newline
    assert allow_torn_tail or tail == b"", f"the log ends in a torn line: {tail[:80]!r}"
    records = []
    for number, line in enumerate(lines, 1):
        record = json.loads(line)  # every complete line is JSON
        assert isinstance(record, dict) and "event" in record, f"line {number}: {line[:80]!r}"
        records.append(record)
    return records, tail


def logged_messages(records: list[dict[str, Any]]) -> dict[int, tuple[str, str, str]]:
    messages: dict[int, tuple[str, str, str]] = {}
    for record in records:
        if record["event"] == "message":
            assert record["id"] not in messages, f"id {record['id']} logged twice"
            messages[record["id"]] = (record["room"], record["user"], record["text"])
    return messages


@posix_signals
def test_kill_9_mid_traffic_loses_nothing_a_client_saw(tmp_path: Path, client_factory: Any) -> None:
    log = tmp_path / "messageslog.json"
    server = ServerProcess("--port", "0", "--log", str(log), "--rate", "0")
    try:
        clients, chatters = start_chatting(server, client_factory, pace=0.0)
        in_flight = sum(c.said for c in chatters) - sum(len(c.echoes()) for c in chatters)
        server.signal(signal.SIGKILL)
        assert server.wait() == -signal.SIGKILL
        stop_chatting(clients, chatters)
    finally:
        server.stop()

    records, torn = read_log(log, allow_torn_tail=True)
    logged = logged_messages(records)
    seen = received(clients)
    missing = {i: m for i, m in seen.items() if logged.get(i) != m}
    assert not missing, (
        f"{len(missing)} messages were delivered but are not in the log (ids {min(missing)}.."
        f"{max(missing)}; the log's last id is {max(logged, default=0)}, {len(logged)} logged; "
        f"torn tail {len(torn)} bytes)")
    print(f"\nkill -9 after {len(logged)} logged messages; clients had received {len(seen)}"
          f"; {in_flight} were said but not yet echoed at the kill; torn tail: {len(torn)} bytes")

    restarted = ServerProcess("--port", "0", "--log", str(log), "--rate", "0")
    try:
        records, _ = read_log(log, allow_torn_tail=False)  # the torn tail, if any, was cut
        logged = logged_messages(records)
        assert not [i for i, m in seen.items() if logged.get(i) != m]
        by_room: dict[str, list[tuple[int, str, str]]] = {}
        for message_id, (room, user, text) in sorted(logged.items()):
            by_room.setdefault(room, []).append((message_id, user, text))

        endpoint = SimpleNamespace(address=restarted.address)
        ann = client_factory(endpoint, "ann", key=0)
        common = ann.recorder.wait_for(lambda e: isinstance(e, RoomJoined) and e.room == "#common")
        history = [(m.id, m.user, m.text) for m in common.history]
        assert history == by_room["#common"][-HISTORY_SIZE:]
        mark = ann.recorder.mark()
        ann.join("#ops")
        ops = ann.recorder.wait_for(lambda e: isinstance(e, RoomJoined) and e.room == "#ops",
                                    after=mark)
        assert [(m.id, m.user, m.text) for m in ops.history] == by_room["#ops"][-HISTORY_SIZE:]

        ann.say("after the crash")
        fresh = ann.recorder.wait_for(lambda e: isinstance(e, RoomMessage) and e.own
                                      and e.text == "after the crash")
        assert fresh.id > max(logged), "a message id was handed out twice across the crash"
        assert "Traceback" not in restarted.output()
    finally:
        restarted.signal(signal.SIGTERM)
        restarted.wait()
        restarted.stop()


@posix_signals
def test_sigterm_under_load_says_bye_exits_in_2s_and_keeps_every_acknowledged_message(
    tmp_path: Path, client_factory: Any, key_pool: Any
) -> None:
    log = tmp_path / "messageslog.json"
    server = ServerProcess("--port", "0", "--log", str(log), "--rate", "0")
    listeners: list[RawPeer] = []
    try:
        for name, room in [("eve", None), ("fay", "#ops")]:
            peer = RawPeer(server.address)
            peer.login(name, key_pool.get(1))
            if room:
                peer.send({"type": "join", "room": room})
                peer.wait_for("joined")
            listeners.append(peer)
        clients, chatters = start_chatting(server, client_factory, pace=0.001)
        started = time.monotonic()
        server.signal(signal.SIGTERM)
        code = server.wait()
        took = time.monotonic() - started
        stop_chatting(clients, chatters)
    finally:
        server.stop()
    print(f"\nSIGTERM to exit: {took:.3f}s")
    assert code == 0, server.output()
    assert took < 2.0, f"the server took {took:.2f}s to stop after SIGTERM"

    for peer in listeners:
        try:
            peer.wait_closed()
        except PeerClosed:
            pass
        byes = [f for f in peer.frames if f["type"] == "bye"]
        assert byes and byes[0]["reason"] == "server shutting down", peer.frames[-3:]
        peer.close()
    for client in clients:
        gone = client.recorder.wait_for(Disconnected)
        assert gone.clean and gone.reason == "server shutting down", (
            f"{client.username} was not told goodbye: {gone}")

    records, _ = read_log(log, allow_torn_tail=False)  # a clean stop leaves no torn line
    logged = logged_messages(records)
    acknowledged = {e.id: (e.room, e.user, e.text) for c in chatters for e in c.echoes()}
    assert len(acknowledged) >= 4 * 100
    lost = {i: m for i, m in acknowledged.items() if logged.get(i) != m}
    assert not lost, (
        f"{len(lost)} acknowledged messages are not in the log: {list(lost.items())[:3]}")
    heard = {f["id"]: (f["room"], f["user"], f["text"])
             for peer in listeners for f in peer.frames if f["type"] == "message"}
    assert not {i: m for i, m in heard.items() if logged.get(i) != m}
    assert "Traceback" not in server.output(), server.output()[-3000:]
    assert Path(str(log) + ".checkpoint").exists(), "a clean stop writes a checkpoint"


def send_batch(client: Any, frame: dict[str, Any]) -> None:
    """`frame` and two pings in one write: the server reads them in one go. A message waits
    for the next frame that is not one (session.Session's run of messages), so the first
    ping posts it, inside the batch; the second is the batch's last, lone frame."""
    ping = encode_frame({"type": "ping"})
    with client._send_lock:
        client._sock.sendall(encode_frame(frame) + ping + ping)


def test_no_client_receives_a_message_before_it_is_in_the_log(
    server_factory: Any, client_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The interleaving behind the kill -9 loss, forced: bob's reader has written the log
    and is about to send bob's outbox when alice's message lands in that outbox; alice's
    own reader is held before it writes. Whatever bob receives must already be on disk."""
    chat = server_factory(rate=0)
    alice = client_factory(chat, "alice")
    bob = client_factory(chat, "bob")
    # Each client's reader thread on the server, found by the client's address.
    peers = {"%s:%d" % c._sock.getsockname()[:2]: c.username for c in (alice, bob)}
    reader_of = {peers[conn.peer]: conn.thread_ident
                 for conn in list(chat._connections) if conn.peer in peers}
    real_write_pending = chat.log.write_pending
    alice_holding, release_alice, bob_between = (threading.Event() for _ in range(3))
    pause_bob = [False]  # armed by bob's "list" request, so no earlier flush of his is caught
    real_list_room = chat.state.list_room

    def arming_list_room(member: Any, *args: Any) -> None:
        real_list_room(member, *args)
        pause_bob[0] = True

    def gated_write_pending() -> None:
        me = threading.get_ident()
        if me == reader_of["alice"]:
            alice_holding.set()
            release_alice.wait(WAIT)  # alice's message stays unwritten while we look
        real_write_pending()
        if me == reader_of["bob"] and pause_bob[0]:
            pause_bob[0] = False
            bob_between.set()
            alice_holding.wait(WAIT)  # bob's flush: log written, outboxes not yet sent

    monkeypatch.setattr(chat.state, "list_room", arming_list_room)
    monkeypatch.setattr(chat.log, "write_pending", gated_write_pending)
    try:
        # Each request travels with pings in one write, so the server routes it as part of
        # a batch: queued, then flushed after the batch, the path where this race lived.
        # (A frame that arrives alone is sent at once by the routing thread instead.)
        send_batch(bob, {"type": "list"})
        assert bob_between.wait(WAIT)
        send_batch(alice, {"type": "message", "text": "HOLD"})
        assert alice_holding.wait(WAIT)
        bob.recorder.wait_for(lambda e: isinstance(e, RoomMessage) and e.text == "HOLD")
        logged = [json.loads(line) for line in chat.config.log_path.read_bytes().splitlines()]
        assert any(r.get("text") == "HOLD" for r in logged), (
            "bob received a message that is not in the log yet: a crash now loses it")
    finally:
        release_alice.set()
    bob.recorder.wait_for(MemberList)
