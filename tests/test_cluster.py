"""Several server processes, one chat: nodes sharing a real redis-server (cluster.py).

Every test starts its own redis-server (the `redis_server` fixture, skipped with a reason
when Debian's package is missing) and its own nodes on 127.0.0.1 port 0, in-process or
as subprocesses where a node must die with kill -9.
"""
from __future__ import annotations

import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Iterator

import pytest

from client import (
    Disconnected,
    ErrorEvent,
    HistoryPage,
    NotSent,
    PrivateMessage,
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
def nodes(server_factory, redis_server, tmp_path) -> Iterator[Callable[..., Any]]:
    """nodes(3) -> three in-process nodes of one cluster, each with its own files."""
    made = 0
    running: list[Any] = []

    def start(count: int = 1, **overrides: Any) -> list[Any]:
        nonlocal made
        started = []
        for _ in range(count):
            made += 1
            home = tmp_path / f"node{made}"
            home.mkdir()
            started.append(server_factory(redis_url=redis_server.url, node_id=f"n{made}",
                                          log_path=home / "messageslog.json", **overrides))
        running.extend(started)
        return started

    yield start
    for node in running:  # before Redis stops, so that their users log out cleanly
        node.stop()


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
    reads = [node.link.op_counts().get("XREAD", 0) - before.get("XREAD", 0)
             for node, before in zip((a, b, c), counts_before, strict=True)]
    print(f"\nRedis commands for 15 room messages: EVALSHA per node {per_message}, "
          f"XREAD per node {reads} (one XREAD brings a batch)")
    assert all(r <= 15 + 3 for r in reads)  # at most one read per op (plus idle timeouts)
    # A join: one op (EVALSHA) and the node's presence entry (HSET), however big the room.
    before = a.link.op_counts()
    alice.join("#extra")
    alice.recorder.wait_for(joined("#extra"))
    after = a.link.op_counts()
    spent = {k: after[k] - before.get(k, 0) for k in ("EVALSHA", "HSET")}
    print(f"Redis commands for one join on its node: {spent} (+ the store's room write)")
    assert spent == {"EVALSHA": 1, "HSET": 1}


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
    bob.recorder.wait_for(lambda e: type(e).__name__ == "RoomLeft")
    gone = alice.recorder.mark()
    alice.request("rooms")
    rooms = alice.recorder.wait_for(RoomList, after=gone)
    assert dict(rooms.rooms).get("#side", 0) == 0  # #side has history, nobody in it now


def test_history_and_scrollback_are_the_same_from_every_node(nodes, client_factory):
    a, b = nodes(2)
    alice = client_factory(a, "alice")
    for i in range(12):
        alice.say(f"line {i}")
    alice.recorder.wait_for(message("line 11"))
    # A node started later fills its log from the stream: its history is the cluster's.
    (c,) = nodes(1)
    bob, carol = client_factory(b, "bob"), client_factory(c, "carol")
    snapshots = [who.recorder.wait_for(joined("#common")) for who in (bob, carol)]
    assert [m.text for m in snapshots[0].history] == [f"line {i}" for i in range(2, 12)]
    assert snapshots[0].history == snapshots[1].history
    pages = []
    for who in (bob, carol):
        who.history("#common", 5)
        page = who.recorder.wait_for(HistoryPage)
        pages.append([(m.id, m.text) for m in page.messages])
    # Scrollback asks for what is older than the snapshot: the same two from both nodes.
    assert pages[0] == pages[1] == [(1, "line 0"), (2, "line 1")]


def test_a_name_is_online_once_and_a_login_elsewhere_takes_over(nodes, client_factory):
    a, b, c = nodes(3)
    first = client_factory(a, "alice", home="laptop")
    watcher = client_factory(c, "carol")
    watcher.recorder.wait_for(joined("#common"))
    first.join("#ops")
    first.recorder.wait_for(joined("#ops"))
    second = client_factory(b, "alice", home="phone")  # the same key, another device
    ended = first.recorder.wait_for(Disconnected)
    assert ended.replaced and "logged in elsewhere" in ended.reason
    back = second.recorder.wait_for(joined("#ops"))  # the rooms follow the user
    assert "alice" in {m.user for m in back.members}
    mark = watcher.recorder.mark()
    watcher.request("users")
    listing = watcher.recorder.wait_for(UserList, after=mark)
    assert [u.user for u in listing.users].count("alice") == 1
    second.say("still here", room="#ops")
    watcher.join("#ops")
    watcher.recorder.wait_for(joined("#ops"))
    # Another key cannot use the name while it is online anywhere.
    from client import LoginError

    with pytest.raises(LoginError):
        client_factory(c, "alice", key=5, home="mallory")


def test_redis_restart_under_traffic_recovers_by_itself(nodes, client_factory, redis_server):
    a, b = nodes(2, rate=50.0, burst=50)  # flood control would pace, not test, this traffic
    alice, bob = client_factory(a, "alice"), client_factory(b, "bob")
    alice.say("before")
    bob.recorder.wait_for(message("before"))
    # While Redis is away the nodes keep their users and refuse what needs it, clearly.
    redis_server.kill()
    alice.say("during")
    refused = alice.recorder.wait_for(lambda e: isinstance(e, NotSent) and e.text == "during")
    assert refused.code == "cluster_unavailable" and "Redis" in refused.message
    assert a.connection_count() == 1 and b.connection_count() == 1
    redis_server.start()
    # Real traffic: both users keep posting (~20 messages/s each) across a restart.
    stop = threading.Event()
    sent: dict[str, list[str]] = {"alice": [], "bob": []}
    broken: list[str] = []

    def post(client: Any, who: str) -> None:
        number = 0
        while not stop.is_set():
            number += 1
            text = f"{who} {number}"
            sent[who].append(text)
            try:
                client.say(text)
            except ConnectionError as exc:  # would fail the test below: nothing was sent
                broken.append(f"{who}: {exc}")
                return
            stop.wait(0.05)  # the pace of a busy room, not a wait for a result

    senders = [threading.Thread(target=post, args=(c, w), daemon=True)
               for c, w in ((alice, "alice"), (bob, "bob"))]
    for thread in senders:
        thread.start()
    alice.recorder.wait_for(message("bob 5"))  # traffic flows before Redis goes
    redis_server.restart()
    restarted = time.monotonic()
    first = len(sent["alice"]) + 1  # alice's first message posted after the restart

    def posted_after_restart(event: Any) -> bool:
        return (isinstance(event, RoomMessage) and event.text.startswith("alice ")
                and int(event.text.split(" ")[1]) >= first)

    try:  # the first of them that reaches the other node: the cluster works again
        bob.recorder.wait_for(posted_after_restart)
    except AssertionError:
        stop.set()
        codes = [(e.code, e.text) for e in alice.recorder.of_type(NotSent)][-5:]
        pytest.fail(f"the cluster did not recover within {WAIT} s of Redis's restart; "
                    f"alice's last refusals {codes}, broken {broken}")
    recovered = time.monotonic()
    mark = alice.recorder.mark()
    alice.recorder.wait_for(message(f"bob {len(sent['bob']) + 10}"), after=mark)
    stop.set()
    for thread in senders:
        thread.join(WAIT)
    assert not broken, broken
    last = [f"alice {len(sent['alice'])}", f"bob {len(sent['bob'])}"]
    for client in (alice, bob):  # the last of each, delivered or refused, ends the run
        for text in last:
            client.recorder.wait_for(lambda e, t=text: message(t)(e) or (
                isinstance(e, NotSent) and e.text == t), timeout=WAIT)
    for client in (alice, bob):
        mark = client.recorder.mark()
        client.request("users")  # a round trip to each node: what was in flight has come
        client.recorder.wait_for(UserList, after=mark)
    orders = []
    for client, who in ((alice, "alice"), (bob, "bob")):
        got = [e for e in client.recorder.of_type(RoomMessage) if not e.history
               and e.text.split(" ")[0] in ("alice", "bob") and e.text.count(" ") == 1]
        texts = [e.text for e in got]
        assert len(texts) == len(set(texts)), f"{who} got a message twice"
        orders.append([e.id for e in got])
        refused_texts = {e.text for e in client.recorder.of_type(NotSent)}
        for text in sent[who]:  # each of mine: delivered, or I was told it was not sent
            assert (text in texts) != (text in refused_texts), (
                f"{text!r}: delivered={text in texts}, refused={text in refused_texts}")
    assert orders[0] == orders[1], "the two nodes' members saw different orders"
    assert orders[0] == sorted(orders[0]), "ids went backwards"
    delivered = {e.text for e in alice.recorder.of_type(RoomMessage)}
    assert delivered == {e.text for e in bob.recorder.of_type(RoomMessage)}
    lost = sum(1 for who in sent for t in sent[who] if t not in delivered)
    codes = {e.code for c in (alice, bob) for e in c.recorder.of_type(NotSent)}
    print(f"\nRedis restarted under {sum(map(len, sent.values()))} messages at ~40/s: chat "
          f"back {recovered - restarted:.2f} s after the restart; {lost} refused to their "
          f"senders ({', '.join(sorted(codes))}), none lost silently, none twice")
    mark = alice.recorder.mark()
    alice.request("users")
    assert {u.user for u in alice.recorder.wait_for(UserList, after=mark).users} == {
        "alice", "bob"}


def test_a_bad_redis_url_is_a_startup_error_without_traceback(tmp_path):
    for url in ("bogus://nowhere", f"redis://127.0.0.1:{free_port()}/0"):
        done = subprocess.run(
            [sys.executable, str(ROOT / "server.py"), "--port", "0", "--redis", url,
             "--log", str(tmp_path / "messageslog.json")],
            capture_output=True, text=True, timeout=30)
        assert done.returncode == 2, done.stderr
        assert "Traceback" not in done.stderr and "--redis" in done.stderr


def private_from(peer: str) -> Callable[[Any], bool]:
    return lambda e: isinstance(e, PrivateMessage) and e.peer == peer and not e.outgoing


def test_private_messages_dnd_and_the_offline_queue_across_nodes(nodes, client_factory):
    a, b, c = nodes(3)
    alice, bob = client_factory(a, "alice"), client_factory(b, "bob")
    alice.execute("/pm bob first contact")  # fetches and pins bob's key first
    bob.recorder.wait_for(private_from("alice"))
    before, mark = a.link.op_counts(), bob.recorder.mark()
    alice.execute("/pm bob across the cluster")
    received = bob.recorder.wait_for(private_from("alice"), after=mark)
    assert received.text == "across the cluster"
    after = a.link.op_counts()
    print(f"\nRedis commands for one private message on its node: EVALSHA "
          f"{after['EVALSHA'] - before['EVALSHA']}")
    assert after["EVALSHA"] - before["EVALSHA"] == 1
    # DND on node B refuses a message sent from node A, as a single server does.
    bob.set_status("dnd")
    alice.recorder.wait_for(lambda e: isinstance(e, StatusChanged) and e.status == "dnd")
    alice.execute("/pm bob are you there?")
    refused = alice.recorder.wait_for(lambda e: isinstance(e, ErrorEvent) and e.code == "dnd")
    assert "bob" in refused.message
    bob.set_status("online")
    alice.recorder.wait_for(lambda e: isinstance(e, StatusChanged) and e.status == "online")
    # bob goes offline; the message waits in the shared mailbox and finds him on node C.
    bob.quit()
    alice.recorder.wait_for(lambda e: isinstance(e, UserLeft) and e.user == "bob")
    alice.execute("/pm bob read this when you are back")
    alice.recorder.wait_for(lambda e: isinstance(e, PrivateMessage) and e.outgoing
                            and e.text == "read this when you are back")
    bob_again = client_factory(c, "bob")
    assert bob_again.recorder.wait_for(private_from("alice")).text == \
        "read this when you are back"
    assert not [e for e in bob_again.recorder.of_type(PrivateMessage)
                if e.text == "are you there?"]


# -- a node killed with kill -9 -----------------------------------------------------------------

def test_a_killed_node_s_users_vanish_and_come_back_elsewhere(redis_server, client_factory,
                                                               tmp_path):
    from clusterlink import HEARTBEAT, NODE_TTL
    from hostile_net import ServerProcess

    def node(name: str) -> ServerProcess:
        home = tmp_path / name
        home.mkdir()
        return ServerProcess("--port", "0", "--redis", redis_server.url, "--node-id", name,
                             "--log", str(home / "messageslog.json"))

    doomed, survivor = node("doomed"), node("survivor")
    try:
        alice, bob = client_factory(doomed, "alice"), client_factory(survivor, "bob")
        for client in (alice, bob):
            client.join("#ops")
            client.recorder.wait_for(joined("#ops"))
        alice.recorder.wait_for(lambda e: isinstance(e, UserJoined) and e.user == "bob"
                                and e.room == "#ops")
        alice_connected = True
        for i in range(20):  # a storm from both sides; the node dies in the middle of it
            if alice_connected:
                try:
                    alice.say(f"storm a{i}", room="#ops")
                except ConnectionError:
                    # Her socket got the dead node's reset: `say` raises so that a loop
                    # that sends learns the connection is gone. Only after the kill.
                    assert i > 10
                    alice_connected = False
            bob.say(f"storm b{i}", room="#ops")
            if i == 10:
                doomed.proc.send_signal(signal.SIGKILL)
                killed = time.monotonic()
        gone = bob.recorder.wait_for(lambda e: isinstance(e, UserLeft) and e.user == "alice"
                                     and e.room == "#ops", timeout=NODE_TTL + 2 * HEARTBEAT + 2)
        vanished = time.monotonic() - killed
        print(f"\nkill -9: alice left the other node's rooms {vanished:.2f} s later "
              f"(bound {NODE_TTL + HEARTBEAT:g} s)")
        assert gone.reason
        # alice reconnects to the surviving node and finds her rooms again.
        alice_back = client_factory(survivor, "alice", home="alice-again")
        alice_back.recorder.wait_for(joined("#ops"))
        # No client saw a duplicate or a reordering, and what bob saw is in the survivor's log.
        seen = [e for e in bob.recorder.of_type(RoomMessage) if e.room == "#ops"
                and not e.history]
        ids = [e.id for e in seen]
        assert ids == sorted(ids) and len(set(ids)) == len(ids)
        bob.quit()
        bob.recorder.wait_for(Disconnected)
        logged = []
        log_path = tmp_path / "survivor" / "messageslog.json"
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:  # the log is written before any send: poll it
            logged = [json.loads(line) for line in log_path.read_text("utf-8").splitlines()]
            if {r.get("id") for r in logged} >= set(ids):
                break
        assert set(ids) <= {r.get("id") for r in logged if r["event"] == "message"}
        # What the killed node's client received is in the killed node's own log (written
        # before every send), without duplicates or reordering either.
        theirs = [e.id for e in alice.recorder.of_type(RoomMessage) if e.room == "#ops"
                  and not e.history]
        assert theirs == sorted(theirs) and len(set(theirs)) == len(theirs)
        doomed_log = (tmp_path / "doomed" / "messageslog.json").read_text("utf-8")
        doomed_ids = {json.loads(line).get("id") for line in doomed_log.splitlines()
                      if line.strip().endswith("}")}
        assert set(theirs) <= doomed_ids
    finally:
        for proc in (doomed, survivor):
            if proc.proc.poll() is None:
                proc.proc.send_signal(signal.SIGTERM)
                proc.proc.wait(timeout=WAIT)


# -- one address: haproxy in front of the nodes -------------------------------------------------

def test_a_client_reaches_the_cluster_through_haproxy(nodes, client_factory, tmp_path):
    haproxy = shutil.which("haproxy")
    if haproxy is None:
        pytest.skip("haproxy is not installed (apt-get install haproxy); CI has it")
    a, b = nodes(2)
    port = free_port()
    template = (ROOT / "deploy" / "haproxy.cfg").read_text("utf-8")
    backends = "\n".join(f"    server node{i} 127.0.0.1:{node.address[1]} check"
                         for i, node in enumerate((a, b), 1))
    config = re.sub(r"(?ms)^    server node1 .*?(?=^\S|\Z)", backends + "\n", template)
    config = config.replace("bind :5050", f"bind 127.0.0.1:{port}")
    config = re.sub(r"maxconn \d+", "maxconn 1000", config)  # the test's descriptor limit
    config = re.sub(r"(?m)^\s*(log|chroot|user|group|daemon|stats socket|pidfile)\b.*$", "",
                    config)
    path = tmp_path / "haproxy.cfg"
    path.write_text(config, "utf-8")
    checked = subprocess.run([haproxy, "-c", "-f", str(path)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    proxy = subprocess.Popen([haproxy, "-db", "-f", str(path)], stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    try:
        class Front:
            address = ("127.0.0.1", port)

        deadline = time.monotonic() + WAIT
        while True:  # haproxy has no ready signal: wait until it accepts
            try:
                socket.create_connection(Front.address, timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline or proxy.poll() is not None:
                    proxy.kill()
                    pytest.fail(f"haproxy did not start: {proxy.communicate()[1]}")
                time.sleep(0.02)  # polling a process start-up: there is no event to wait on
        alice = client_factory(Front, "alice")
        bob = client_factory(b, "bob")
        alice.say("through haproxy")
        assert bob.recorder.wait_for(message("through haproxy")).user == "alice"
    finally:
        proxy.terminate()
        proxy.wait(timeout=WAIT)


@pytest.mark.skipif(not hasattr(socket, "SO_REUSEPORT"), reason="no SO_REUSEPORT here")
def test_reuse_port_lets_two_nodes_share_one_port(nodes, client_factory):
    (a,) = nodes(1, reuse_port=True)
    (b,) = nodes(1, reuse_port=True, port=a.address[1])
    assert a.address == b.address
    alice, bob = client_factory(a, "alice"), client_factory(b, "bob")
    alice.say("one port")
    assert bob.recorder.wait_for(message("one port")).user == "alice"


def test_the_registration_quota_holds_across_nodes_under_a_race(nodes, client_factory):
    """Logins of new names on two nodes at once: the day's quota is never overshot."""
    a, b = nodes(2, registrations_per_day=2)
    outcomes: list[str] = []
    names = [f"new{i}" for i in range(6)]

    def login(node: Any, name: str) -> None:
        try:
            client_factory(node, name)
            outcomes.append("registered")
        except Exception as exc:  # the refusal, whatever the client library calls it
            outcomes.append(f"refused: {exc}")

    threads = [threading.Thread(target=login, args=((a, b)[i % 2], name))
               for i, name in enumerate(names)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT * 3)
    assert len(outcomes) == len(names)
    assert outcomes.count("registered") == 2, "\n".join(outcomes)
    assert all("24 hours" in o for o in outcomes if o != "registered"), outcomes
    assert len(a.registry.usernames()) == 2
