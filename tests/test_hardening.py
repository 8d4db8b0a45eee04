"""Issue 5, points 1-3, over real sockets: slow consumers, flood control, connection limits.

Well-behaved users are `ChatClient`s (tests/conftest.py); hostile ones are `RawPeer`s
(tests/hostile_net.py), which send exactly the bytes a test wants. Every wait has a
deadline. The only sleeps pace what a client sends (a flood limit is about time), they
never stand in for waiting on an event.
"""
from __future__ import annotations

import errno
import logging
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import transport
from client import ErrorEvent, RoomMessage, UserJoined, UserLeft
from hostile_net import WAIT, RawPeer, ServerProcess, error_codes, percentile, wait_until
from protocol import HEADER, PROTOCOL_VERSION, encode_frame

pytestmark = pytest.mark.timeout(60)

SERVER_LOGGER = "gapshape.server"


def left(client: Any, user: str) -> UserLeft | None:
    return next((e for e in client.recorder.of_type(UserLeft) if e.user == user), None)


def server_records(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == SERVER_LOGGER and text in r.getMessage()]


def max_kernel_send_buffer() -> int:
    """The most a TCP socket's send buffer can grow to here (Linux autotuning's ceiling)."""
    try:
        return int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
    except (OSError, ValueError, IndexError):
        return 8 * 1024 * 1024


# -- 1. slow consumers --------------------------------------------------------------------

def test_slow_consumer_is_dropped_while_the_room_keeps_low_latency(
    server_factory: Any, client_factory: Any, key_pool: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=SERVER_LOGGER)
    limit = 256 * 1024
    chat = server_factory(rate=0, outbox_limit=limit)
    alice = client_factory(chat, "alice")
    bob = client_factory(chat, "bob")
    slow = RawPeer(chat.address, rcvbuf=4096)
    slow.login("slow", key_pool.get(2))
    bob.recorder.wait_for(lambda e: isinstance(e, UserJoined) and e.user == "slow")
    # From here on `slow` reads nothing: what the server sends it piles up in the kernel's
    # buffers (its receive window is tiny), then in its outbox, until the limit.

    text = "x" * 7900  # near the 8000-character maximum: the outbox fills fast
    frame_size = len(encode_frame({"type": "message", "text": text})) + 100
    budget = limit + max_kernel_send_buffer() + slow.sock.getsockopt(
        socket.SOL_SOCKET, socket.SO_RCVBUF) + frame_size
    latencies: list[float] = []
    broadcast = 0
    while left(bob, "slow") is None:
        assert broadcast <= budget, (
            f"the server has queued {broadcast} bytes for a client that reads nothing and "
            f"still not dropped it (outbox_limit {limit})")
        mark = bob.recorder.mark()
        prefix = f"{len(latencies)} "
        started = time.perf_counter()
        alice.say(prefix + text)
        bob.recorder.wait_for(
            lambda e, p=prefix: isinstance(e, RoomMessage) and e.text.startswith(p), after=mark)
        latencies.append(time.perf_counter() - started)
        broadcast += frame_size

    p50, p99, worst = percentile(latencies, 0.5), percentile(latencies, 0.99), max(latencies)
    print(f"\nroom latency while a member was stuck: {len(latencies)} messages, "
          f"p50 {p50 * 1000:.2f} ms, p99 {p99 * 1000:.2f} ms, max {worst * 1000:.2f} ms")
    assert len(latencies) >= 100, "the slow client was dropped before its buffers filled"
    assert p99 < 0.200, f"p99 latency {p99 * 1000:.1f} ms while one client was stuck"

    departure = left(bob, "slow")
    assert departure is not None and departure.reason.startswith("slow consumer")
    alice.recorder.wait_for(lambda e: isinstance(e, UserLeft) and e.user == "slow")
    assert server_records(caplog, "disconnect slow"), "no log record of why slow was dropped"
    assert any("slow consumer" in r.getMessage() for r in server_records(caplog, "disconnect slow"))
    slow.wait_closed()  # the socket itself is closed, not only the session

    mark = bob.recorder.mark()
    alice.say("still here")
    bob.recorder.wait_for(lambda e: isinstance(e, RoomMessage) and e.text == "still here",
                          after=mark)


def test_a_member_whose_socket_fails_during_a_fan_out_is_dropped_and_the_rest_get_it(
    server_factory: Any, client_factory: Any, key_pool: Any
) -> None:
    """A lone frame's fan-out (`fanout.FanOutSender`): a send that fails drops that
    member only."""
    chat = server_factory()
    alice = client_factory(chat, "alice")
    bob = client_factory(chat, "bob")
    carol = RawPeer(chat.address)  # reads nothing, so only the server's send can fail
    carol.login("carol", key_pool.get(2))
    bob.recorder.wait_for(lambda e: isinstance(e, UserJoined) and e.user == "carol")
    # The server's end of carol's connection stops sending: its next send fails (EPIPE),
    # while her reader, and her client, notice nothing.
    member = chat.state.member("carol")
    assert member is not None
    member.outbox.sock.shutdown(socket.SHUT_WR)

    for text in ("one", "two"):
        alice.say(text)
        bob.recorder.wait_for(lambda e, t=text: isinstance(e, RoomMessage) and e.text == t)
        alice.recorder.wait_for(lambda e, t=text: isinstance(e, RoomMessage) and e.own
                                and e.text == t)
    departure = bob.recorder.wait_for(lambda e: isinstance(e, UserLeft) and e.user == "carol")
    assert departure.reason.startswith("send failed"), departure.reason
    assert chat.state.member("carol") is None
    carol.close()


def test_a_client_that_pipelines_requests_and_reads_nothing_is_dropped(
    server_factory: Any, client_factory: Any, key_pool: Any
) -> None:
    """Its own answers fill its outbox: the same limit, however the bytes got there."""
    limit = 64 * 1024
    chat = server_factory(rate=0, outbox_limit=limit)
    alice = client_factory(chat, "alice")
    greedy = RawPeer(chat.address, rcvbuf=4096)
    greedy.login("greedy", key_pool.get(2))
    request = encode_frame({"type": "users"}) * 100
    sent = 0
    while greedy.try_send(request):  # stops when the server has hung up
        sent += len(request)
        assert sent < 64 * 1024 * 1024, "64 MiB of requests and the non-reader is still connected"
        if left(alice, "greedy"):
            break
    departure = alice.recorder.wait_for(lambda e: isinstance(e, UserLeft) and e.user == "greedy")
    assert departure.reason.startswith("slow consumer")


def test_the_outbox_limit_holds_for_the_frames_of_one_batch(
    server_factory: Any, key_pool: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Within a batch, frames after the first take `Connection.queue_urgent`'s short path
    (the outbox already due for the flush): it too must drop a client whose outbox passes
    `outbox_limit`, even a limit below the backlog budget's free allowance."""
    caplog.set_level(logging.INFO, logger=SERVER_LOGGER)
    limit = 32 * 1024  # room for the login's own frames
    assert limit < transport.BACKLOG_FREE
    chat = server_factory(rate=0, outbox_limit=limit)
    quiet = RawPeer(chat.address)
    quiet.login("quiet", key_pool.get(2))
    member = chat.state.member("quiet")
    assert member is not None
    frame = encode_frame({"type": "notice", "text": "x" * 1000})
    # This thread is no reader, so nothing flushes in between: the frames pile up.
    for _ in range(limit // len(frame) + 2):
        member.outbox.queue_urgent(frame)
    quiet.wait_closed()
    wait_until(lambda: chat.state.member("quiet") is None, what="quiet still a member")
    assert any("slow consumer" in r.getMessage() for r in server_records(caplog, "quiet"))


def test_an_oversized_frame_is_refused_from_its_header_alone(server_factory: Any,
                                                             key_pool: Any) -> None:
    chat = server_factory(max_frame_size=1024)
    with RawPeer(chat.address) as peer:
        peer.login("big", key_pool.get(0))
        peer.send_bytes(HEADER.pack(1025))  # and never the body: no need to wait for it
        frames = peer.wait_closed(timeout=WAIT)
    assert error_codes(frames) == ["frame_too_large"]
    with RawPeer(chat.address) as peer:  # exactly at the limit is fine
        peer.login("fits", key_pool.get(0))
        padding = 1024 - len(encode_frame({"type": "ping", "data": ""})) + HEADER.size
        peer.send({"type": "ping", "data": "p" * padding})
        assert len(peer.wait_for("pong")["data"]) == padding


# -- 2. flood control ---------------------------------------------------------------------

def test_a_burst_over_the_limit_is_slowed_down_and_delivered_whole_in_order(
    server_factory: Any, client_factory: Any, key_pool: Any
) -> None:
    """Flood control slows a fast sender instead of losing its lines (ergo's fakelag)."""
    rate, burst = 10.0, 10
    chat = server_factory(rate=rate, burst=burst)
    bob = client_factory(chat, "bob")
    flooder = RawPeer(chat.address)
    flooder.login("flood", key_pool.get(2))
    count = burst + 15

    flooder.send_bytes(b"".join(
        encode_frame({"type": "message", "text": f"burst {i}", "ref": f"b{i}"})
        for i in range(count)))
    bob.recorder.wait_for(lambda e: isinstance(e, RoomMessage) and e.text == f"burst {count - 1}")
    seen = [e.text for e in bob.recorder.of_type(RoomMessage) if e.user == "flood"]
    assert seen == [f"burst {i}" for i in range(count)]
    echoes = [f["ref"] for f in flooder.frames if f["type"] == "message" and "ref" in f]
    flooder.wait_for(lambda f: f.get("ref") == f"b{count - 1}")
    echoes = [f["ref"] for f in flooder.frames if f["type"] == "message" and "ref" in f]
    assert echoes == [f"b{i}" for i in range(count)]
    assert not error_codes(flooder.frames), "nothing over the rate may be refused"
    assert chat.flood.delayed_frames >= count - burst, "the frames over the burst waited"
    assert not flooder.closed


def test_sustained_flooding_far_above_the_limit_disconnects_and_others_are_unaffected(
    server_factory: Any, client_factory: Any, key_pool: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=SERVER_LOGGER)
    rate, burst = 10.0, 10
    chat = server_factory(rate=rate, burst=burst, flood_kick_after=1.0)
    alice = client_factory(chat, "alice")
    bob = client_factory(chat, "bob")
    flooder = RawPeer(chat.address)
    flooder.login("flood", key_pool.get(2))

    calm_done = threading.Event()

    def chat_calmly() -> None:  # alice, at half the rate, all through the flood
        for i in range(12):
            alice.say(f"calm {i}")
            time.sleep(2 / rate)
        calm_done.set()

    talker = threading.Thread(target=chat_calmly, daemon=True)
    talker.start()
    started = time.monotonic()
    # 300 frames at once: 29 seconds of backlog at this rate, far over the 1 s allowed.
    flooder.try_send(b"".join(encode_frame({"type": "message", "text": f"f{i}"})
                              for i in range(300)))
    frames = flooder.wait_closed(timeout=WAIT)
    elapsed = time.monotonic() - started

    bye = next(f for f in frames if f["type"] == "bye")
    assert bye["reason"].startswith("flooding")
    assert not error_codes(frames)
    departure = bob.recorder.wait_for(lambda e: isinstance(e, UserLeft) and e.user == "flood")
    assert departure.reason.startswith("flooding")
    assert server_records(caplog, "disconnect flood"), "no log record of the flooding disconnect"
    flooded = [e for e in bob.recorder.of_type(RoomMessage) if e.user == "flood"]
    # Never more through than the bucket holds plus what it refills (hello/auth took two).
    assert len(flooded) <= burst + rate * elapsed + 1

    assert calm_done.wait(WAIT)
    talker.join()
    for i in range(12):
        bob.recorder.wait_for(
            lambda e, i=i: isinstance(e, RoomMessage) and e.text == f"calm {i}")
    # The sender's own copy is pushed right after the room's: wait for the last one too.
    alice.recorder.wait_for(lambda e: isinstance(e, RoomMessage) and e.own
                            and e.text == "calm 11")
    own = [e.text for e in alice.recorder.of_type(RoomMessage) if e.own and not e.history]
    assert own == [f"calm {i}" for i in range(12)]
    assert not alice.recorder.of_type(ErrorEvent)


@pytest.mark.parametrize("junk", [encode_frame({"type": "no-such-request"}),
                                  HEADER.pack(1) + b"\xff"], ids=["unknown-type", "bad-body"])
def test_a_flood_of_invalid_frames_is_paced_too_and_disconnects(
    server_factory: Any, key_pool: Any, junk: bytes
) -> None:
    rate, burst = 10.0, 10
    chat = server_factory(rate=rate, burst=burst, flood_kick_after=1.0)
    flooder = RawPeer(chat.address)
    flooder.login("junk", key_pool.get(2))
    started = time.monotonic()
    flooder.send_bytes(junk * 200)
    frames = flooder.wait_closed(timeout=WAIT)
    elapsed = time.monotonic() - started
    errors = [f for f in frames if f["type"] == "error"]
    assert len(errors) <= burst + rate * elapsed + 1, f"{len(errors)} error frames in {elapsed:.1f} s"
    assert any(f["type"] == "bye" and f["reason"].startswith("flooding") for f in frames)


def test_flood_control_is_not_reset_by_reconnecting(
    server_factory: Any, key_pool: Any
) -> None:
    rate, burst = 2.0, 10
    chat = server_factory(rate=rate, burst=burst)
    first = RawPeer(chat.address)
    first.login("again", key_pool.get(2))
    first.send_bytes(b"".join(encode_frame({"type": "ping", "data": str(i)}) for i in range(burst)))
    first.wait_for(lambda f: f.get("data") == str(burst - 1))
    first.close()
    second = RawPeer(chat.address)
    second.login("again", key_pool.get(2))
    before = chat.flood.delayed_frames
    second.send({"type": "ping", "data": "after"})
    second.wait_for(lambda f: f.get("data") == "after")
    assert chat.flood.delayed_frames > before, "the new connection started with a full bucket"
    assert chat.flood.user("again").tokens < 1 and chat.flood.address("127.0.0.1").tokens < burst * 10


# -- 3. connection limits -----------------------------------------------------------------

def test_max_clients_refuses_with_server_full_and_frees_the_slot(
    server_factory: Any, client_factory: Any, key_pool: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=SERVER_LOGGER)
    chat = server_factory(max_clients=3)
    alice = client_factory(chat, "alice")
    idle = [RawPeer(chat.address), RawPeer(chat.address)]  # connected, not logged in: they count
    wait_until(lambda: chat.connection_count() == 3, what="3 connections admitted")

    with RawPeer(chat.address) as refused:
        frames = refused.wait_closed()
    assert error_codes(frames) == ["server_full"]
    assert "full" in frames[0]["message"]
    wait_until(lambda: server_records(caplog, "refused"), what="a log record of the refusal")

    idle[0].close()
    wait_until(lambda: chat.connection_count() == 2, what="the closed connection forgotten")
    bob = client_factory(chat, "bob")
    mark = bob.recorder.mark()
    alice.say("room for one more")
    bob.recorder.wait_for(lambda e: isinstance(e, RoomMessage) and e.text == "room for one more",
                          after=mark)
    idle[1].close()


def _second_loopback_address() -> str | None:
    probe = socket.socket()
    try:
        probe.bind(("127.0.0.2", 0))
        return "127.0.0.2"
    except OSError:
        return None
    finally:
        probe.close()


def test_max_per_address_refuses_only_that_address(
    server_factory: Any, key_pool: Any
) -> None:
    other = _second_loopback_address()
    if other is None:
        pytest.skip("this system has no second loopback address (127.0.0.2)")
    chat = server_factory(max_per_address=2)
    first, second = RawPeer(chat.address), RawPeer(chat.address)
    first.login("ann", key_pool.get(0))
    wait_until(lambda: chat.connection_count() == 2, what="2 connections admitted")
    with RawPeer(chat.address) as third:
        frames = third.wait_closed()
    assert error_codes(frames) == ["server_full"]
    assert "address" in frames[0]["message"]
    with RawPeer(chat.address, source=other) as elsewhere:
        assert elsewhere.login("bea", key_pool.get(1))["type"] == "welcome"
    first.send({"type": "ping", "data": "alive"})
    assert first.wait_for("pong")["data"] == "alive"
    second.close()


@pytest.mark.parametrize("opening", [b"", b"\x00\x00", HEADER.pack(100) + b'{"type":'],
                         ids=["silent", "half-a-header", "half-a-body"])
def test_a_connection_that_does_not_log_in_is_closed_after_login_timeout(
    server_factory: Any, client_factory: Any, opening: bytes
) -> None:
    login_timeout = 0.5
    chat = server_factory(login_timeout=login_timeout)
    alice = client_factory(chat, "alice")
    started = time.monotonic()
    with RawPeer(chat.address) as peer:
        peer.send_bytes(opening)
        frames = peer.wait_closed(timeout=login_timeout + 3)
    took = time.monotonic() - started
    assert login_timeout * 0.8 <= took <= login_timeout + 2, f"closed after {took:.2f}s"
    assert not [f for f in frames if f["type"] not in ("error", "bye")]
    # A logged-in user, connected for longer than the timeout, is left alone.
    mark = alice.recorder.mark()
    alice.say("still here")
    alice.recorder.wait_for(lambda e: isinstance(e, RoomMessage) and e.text == "still here",
                            after=mark)


@pytest.mark.parametrize("trickle", ["hello-byte-by-byte", "pings-without-auth"])
def test_slowloris_cannot_stretch_the_login_deadline(
    server_factory: Any, key_pool: Any, trickle: str
) -> None:
    login_timeout = 0.6
    chat = server_factory(login_timeout=login_timeout, rate=0)
    peer = RawPeer(chat.address)
    started = time.monotonic()
    if trickle == "hello-byte-by-byte":
        hello = encode_frame({"type": "hello", "version": PROTOCOL_VERSION, "username": "loris",
                              "public_key": "A" * 600})
        chunks = [hello[i:i + 1] for i in range(len(hello))]
    else:
        assert peer.hello("loris", key_pool.get(0))["type"] == "challenge"
        chunks = [encode_frame({"type": "ping", "data": str(i)}) for i in range(100)]
    give_up = login_timeout + 1.5
    for chunk in chunks:
        if time.monotonic() - started > give_up or not peer.try_send(chunk):
            break
        peer.drain_available()
        if peer.closed:
            break
        time.sleep(login_timeout / 4)  # the trickle: always well inside the timeout
    try:
        peer.wait_closed(timeout=0.2)
    except TimeoutError:
        pass
    took = time.monotonic() - started
    assert peer.closed and took <= login_timeout + 1.5, (
        f"still connected without logging in after {took:.2f}s (login_timeout {login_timeout}s)")
    peer.close()


def test_unanswered_pings_disconnect_a_logged_in_client(
    server_factory: Any, key_pool: Any, client_factory: Any
) -> None:
    chat = server_factory(ping_interval=0.3, ping_timeout=0.3)
    alice = client_factory(chat, "alice")  # ChatClient answers pings
    mute = RawPeer(chat.address)
    mute.login("mute", key_pool.get(2))
    started = time.monotonic()
    frames = mute.wait_closed(timeout=WAIT)
    assert "ping" in [f["type"] for f in frames]
    assert time.monotonic() - started <= 0.3 + 0.3 + 1.5
    departure = alice.recorder.wait_for(lambda e: isinstance(e, UserLeft) and e.user == "mute")
    assert departure.reason == "no answer to ping"
    mark = alice.recorder.mark()
    alice.say("pong-answering clients stay")
    alice.recorder.wait_for(lambda e: isinstance(e, RoomMessage) and e.own, after=mark)


class _FailingListener:
    """Wraps the server's listening socket: accept() fails with EMFILE `failures` times."""

    def __init__(self, real: socket.socket, failures: int) -> None:
        self._real = real
        self.failures = failures
        self.exhausted = threading.Event()

    def accept(self) -> tuple[socket.socket, Any]:
        if self.failures > 0:
            self.failures -= 1
            if self.failures == 0:
                self.exhausted.set()
            raise OSError(errno.EMFILE, "Too many open files")
        return self._real.accept()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def test_accept_loop_survives_accept_errors(
    server_factory: Any, client_factory: Any, caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.INFO, logger=SERVER_LOGGER)
    chat = server_factory()
    alice = client_factory(chat, "alice")
    failing = _FailingListener(chat._listener, failures=4)
    monkeypatch.setattr(chat, "_listener", failing)
    assert failing.exhausted.wait(WAIT), "the accept loop stopped calling accept()"
    bob = client_factory(chat, "bob")
    mark = bob.recorder.mark()
    alice.say("after EMFILE")
    bob.recorder.wait_for(lambda e: isinstance(e, RoomMessage) and e.text == "after EMFILE",
                          after=mark)
    warnings = server_records(caplog, "accept failed")
    assert len(warnings) == 4 and all(r.levelno == logging.WARNING for r in warnings)
    delays = [float(r.getMessage().split("retrying in ")[1].split()[0]) for r in warnings]
    assert delays == sorted(delays) and delays[-1] > delays[0], "no back-off between retries"


@pytest.mark.skipif(sys.platform == "win32", reason="RLIMIT_NOFILE is POSIX")
def test_accept_loop_survives_real_descriptor_exhaustion(tmp_path: Path, key_pool: Any) -> None:
    import resource

    limit = 48

    def few_descriptors() -> None:  # runs in the child before exec: soft = hard = limit
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    server = ServerProcess("--port", "0", "--log", str(tmp_path / "messageslog.json"),
                           "--login-timeout", "30", preexec_fn=few_descriptors)
    held: list[RawPeer] = []
    try:
        # Connections beyond the limit wait in the listen backlog while accept() fails.
        for _ in range(limit + 8):
            held.append(RawPeer(server.address))
        server.wait_for_output(r"accept failed .*Too many open files")
        server.wait_for_output(r"accept failed .*retrying in 0\.10")  # it backs off, retries
        for peer in held:
            peer.close()
        with RawPeer(server.address) as peer:
            assert peer.login("after", key_pool.get(0))["type"] == "welcome"
        assert server.proc.poll() is None
        assert "Traceback" not in server.output()
    finally:
        for peer in held:
            peer.close()
        server.stop()
