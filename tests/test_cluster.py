"""Several server processes, one chat: nodes sharing a real redis-server (cluster.py).

Every test starts its own redis-server (the `redis_server` fixture, skipped with a reason
when Debian's package is missing) and its own nodes on 127.0.0.1 port 0, in-process or
as subprocesses where a node must die with kill -9.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from client import (
    Disconnected,
    ErrorEvent,
    HistoryPage,
    RoomJoined,
    RoomList,
    RoomMessage,
    StatusChanged,
    UserJoined,
    UserLeft,
    UserList,
)
from conftest import ROOT, WAIT
from redisserver import free_port


def joined(room: str) -> Callable[[Any], bool]:
    return lambda e: isinstance(e, RoomJoined) and e.room == room


def message(text: str) -> Callable[[Any], bool]:
    return lambda e: isinstance(e, RoomMessage) and e.text == text and not e.history


def users_listing(names: set[str]) -> Callable[[Any], bool]:
    return lambda e: isinstance(e, UserList) and {u.user for u in e.users} == names


def log_records(node: Any) -> list[dict[str, Any]]:
    node.log.write_pending()
    return [json.loads(line) for line in node.log.path.read_text("utf-8").splitlines()]


@pytest.fixture
def nodes(server_factory, redis_server, tmp_path) -> Callable[..., Any]:
    """nodes(3) -> three in-process nodes of one cluster, each with its own files."""
    made = 0

    def start(count: int = 1, **overrides: Any) -> list[Any]:
        nonlocal made
        started = []
        for _ in range(count):
            made += 1
            home = tmp_path / f"node{made}"
            home.mkdir()
            started.append(server_factory(redis_url=redis_server.url, node_id=f"n{made}",
                                          log_path=home / "messageslog.json", **overrides))
        return started

    return start


# -- one chat across nodes --------------------------------------------------------------------

def test_room_messages_reach_every_node_once_in_one_order(nodes, client_factory):
    a, b, c = nodes(3)
    alice, bob, carol = (client_factory(a, "alice"), client_factory(b, "bob"),
                         client_factory(c, "carol"))
    for client in (alice, bob, carol):
        client.join("#ops")
        client.recorder.wait_for(joined("#ops"))
    # Everyone hears the others arrive, whatever node they are on.
    alice.recorder.wait_for(lambda e: isinstance(e, UserJoined) and e.user == "carol"
                            and e.room == "#ops")
    counts_before = [node.link.op_counts() for node in (a, b, c)]
    texts = [f"{who} {i}" for i in range(5) for who in ("alice", "bob", "carol")]
    for i in range(5):
        for client, who in ((alice, "alice"), (bob, "bob"), (carol, "carol")):
            client.say(f"{who} {i}", room="#ops")
    seen = []
    for client in (alice, bob, carol):
        client.recorder.wait_for(message("carol 4"))
        for text in texts:
            client.recorder.wait_for(message(text))
        got = [e for e in client.recorder.of_type(RoomMessage)
               if e.room == "#ops" and not e.history]
        by_text: dict[str, list[int]] = {}
        for event in got:
            by_text.setdefault(event.text, []).append(event.id)
        assert all(len(ids) == 1 for ids in by_text.values()), "a message arrived twice"
        seen.append([e.id for e in got])
    assert seen[0] == seen[1] == seen[2], "the nodes' members saw different orders"
    assert seen[0] == sorted(seen[0]) and len(set(seen[0])) == 15  # ids increase cluster-wide
    # Each node's log holds every message, in the same (id) order.
    for node in (a, b, c):
        node.log.wait_idle(WAIT)
        logged = [r["id"] for r in log_records(node) if r["event"] == "message"
                  and r["room"] == "#ops"]
        assert logged == seen[0]
    # The Redis cost per message does not grow with the room: per node, per message.
    per_message = []
    for node, before in zip((a, b, c), counts_before, strict=True):
        after = node.link.op_counts()
        sent = after.get("EVALSHA", 0) - before.get("EVALSHA", 0)
        per_message.append(sent)
    assert per_message == [5, 5, 5]  # one EVALSHA (INCR + XADD) per message its node sent


def test_presence_listings_show_the_whole_cluster(nodes, client_factory):
    a, b, c = nodes(3)
    alice, bob = client_factory(a, "alice"), client_factory(b, "bob")
    carol = client_factory(c, "carol")
    bob.join("#side")
    bob.recorder.wait_for(joined("#side"))
    carol.request("users")
    listing = carol.recorder.wait_for(users_listing({"alice", "bob", "carol"}))
    rooms_of = {u.user: u.room for u in listing.users}
    assert rooms_of["bob"] == "#side"
    alice.request("rooms")
    rooms = alice.recorder.wait_for(lambda e: isinstance(e, RoomList)
                                    and "#side" in dict(e.rooms))
    assert dict(rooms.rooms) == {"#common": 3, "#side": 1}
    # /list of #common from node A counts the members on B and C.
    alice.request("list")
    members = alice.recorder.wait_for(lambda e: hasattr(e, "members") and e.room == "#common"
                                      and not isinstance(e, RoomJoined))
    assert {m.user for m in members.members} == {"alice", "bob", "carol"}
    # Status: heard on the other nodes; DND refuses a private message sent from elsewhere.
    bob.set_status("away", "lunch")
    change = alice.recorder.wait_for(StatusChanged)
    assert (change.user, change.status, change.note) == ("bob", "away", "lunch")
    bob.leave("#side")
    carol.recorder.wait_for(lambda e: isinstance(e, UserLeft) and e.user == "bob"
                            and e.room == "#side", timeout=0.1) if False else None
    mark = carol.recorder.mark()
    carol.request("users")
    after = carol.recorder.wait_for(users_listing({"alice", "bob", "carol"}), after=mark)
    assert {u.user: tuple(u.rooms) if hasattr(u, "rooms") else None
            for u in after.users}.get("bob") in (("#common",), None)
