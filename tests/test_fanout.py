"""The fan-out (fanout.py): a big room's sends shared by two threads, every frame to every
member once and in order, and the caller back only when all are sent.

The unit tests drive `FanOutSender` with recording outboxes; the last test runs a real
server with a room big enough to share, and records which thread made each send.
"""
from __future__ import annotations

import sys
import threading
from collections import Counter
from typing import Any

import pytest

import fanout
import transport
from fanout import GIL_SWITCH_INTERVAL, SHARE_MIN, FanOutSender
from hostile_net import WAIT, RawPeer

pytestmark = pytest.mark.timeout(60)


class _NoLog:
    def write_pending(self) -> None:
        pass


class _Recording:
    """An outbox that is not a `Connection` (so the fan-out calls its `push`), recording
    who pushed what. The first push of a fan-out waits until another thread has pushed
    too, so a fan-out whose helper never joins fails instead of passing by luck."""

    def __init__(self, book: _Book, index: int) -> None:
        self.book = book
        self.index = index

    def push(self, data: bytes, urgent: bool = True) -> None:
        self.book.pushed(self.index, data)


class _Book:
    def __init__(self, members: int, *, wait_for_second_thread: bool) -> None:
        self.lock = threading.Lock()
        self.received: list[list[bytes]] = [[] for _ in range(members)]
        self.threads: Counter[str] = Counter()
        self.second_thread = threading.Event()
        self.wait_for_second_thread = wait_for_second_thread
        self.outboxes = [_Recording(self, i) for i in range(members)]

    def pushed(self, index: int, data: bytes) -> None:
        name = threading.current_thread().name
        with self.lock:
            self.received[index].append(data)
            self.threads[name] += 1
            if len(self.threads) > 1:
                self.second_thread.set()
            first = sum(self.threads.values()) == 1
        if first and self.wait_for_second_thread:
            assert self.second_thread.wait(WAIT), "no second thread joined the fan-out"


def _lone_frame(fan_out: FanOutSender, outboxes: list[Any], data: bytes) -> None:
    """Fan out as the reader thread does for a frame that came alone."""
    transport.routing.lone_frame = True
    try:
        fan_out(iter(outboxes), data)
    finally:
        transport.routing.lone_frame = False


@pytest.fixture
def fan_out() -> Any:
    sender = FanOutSender(_NoLog(), share=True)  # type: ignore[arg-type]
    yield sender
    sender.stop()


def test_a_big_room_s_sends_are_shared_and_each_member_gets_the_frame_once(fan_out: Any) -> None:
    book = _Book(SHARE_MIN * 2, wait_for_second_thread=True)
    _lone_frame(fan_out, book.outboxes, b"frame")
    # Back from the call: every member has it, exactly once, and two threads sent.
    assert all(got == [b"frame"] for got in book.received)
    assert set(book.threads) == {threading.current_thread().name, "gapshape-fan-out"}


def test_the_gil_is_handed_over_sooner_only_while_a_fan_out_is_shared(fan_out: Any) -> None:
    usual = sys.getswitchinterval()
    book = _Book(SHARE_MIN * 2, wait_for_second_thread=True)
    seen: list[float] = []
    first = book.outboxes[0]

    def recording_push(data: bytes, urgent: bool = True) -> None:
        seen.append(sys.getswitchinterval())
        book.pushed(first.index, data)

    first.push = recording_push  # type: ignore[method-assign]
    _lone_frame(fan_out, book.outboxes, b"frame")
    assert seen == [GIL_SWITCH_INTERVAL]
    assert sys.getswitchinterval() == usual


def test_a_fan_out_right_after_another_is_sent_alone_and_a_quiet_one_shares_again(
    fan_out: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under load (fan-outs back to back) the helper would only add GIL hand-offs."""
    first = _Book(SHARE_MIN * 2, wait_for_second_thread=True)
    _lone_frame(fan_out, first.outboxes, b"first")  # the first is quiet: shared
    assert "gapshape-fan-out" in first.threads
    monkeypatch.setattr(fanout, "QUIET_GAP", 3600.0)  # every later one is "right after"
    busy = _Book(SHARE_MIN * 2, wait_for_second_thread=False)
    _lone_frame(fan_out, busy.outboxes, b"busy")
    assert all(got == [b"busy"] for got in busy.received)
    assert set(busy.threads) == {threading.current_thread().name}
    monkeypatch.setattr(fanout, "QUIET_GAP", 0.0)
    quiet = _Book(SHARE_MIN * 2, wait_for_second_thread=True)
    _lone_frame(fan_out, quiet.outboxes, b"quiet")
    assert "gapshape-fan-out" in quiet.threads


def test_frames_reach_each_member_in_the_order_they_were_fanned_out(
    fan_out: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fanout, "QUIET_GAP", 0.0)  # back to back, and shared all the same
    book = _Book(SHARE_MIN * 3, wait_for_second_thread=False)
    frames = [f"frame {i}".encode() for i in range(200)]
    for frame in frames:
        _lone_frame(fan_out, book.outboxes, frame)
    assert all(got == frames for got in book.received)


def test_a_small_room_is_sent_by_the_routing_thread_alone(fan_out: Any) -> None:
    book = _Book(SHARE_MIN - 1, wait_for_second_thread=False)
    _lone_frame(fan_out, book.outboxes, b"frame")
    assert all(got == [b"frame"] for got in book.received)
    assert set(book.threads) == {threading.current_thread().name}


def test_a_second_fan_out_while_the_helper_is_busy_sends_alone(fan_out: Any) -> None:
    """Two rooms' fan-outs at once (the cluster's and a reader's, say): one gets the helper,
    the other does not wait for it."""
    busy = _Book(SHARE_MIN * 2, wait_for_second_thread=True)
    release = threading.Event()
    entered = threading.Event()
    blocker = busy.outboxes[-1]

    def slow_push(data: bytes, urgent: bool = True) -> None:
        entered.set()
        assert release.wait(WAIT)
        busy.pushed(blocker.index, data)

    blocker.push = slow_push  # type: ignore[method-assign]
    first = threading.Thread(target=_lone_frame, args=(fan_out, busy.outboxes, b"busy"),
                             name="first-router")
    first.start()
    assert entered.wait(WAIT)  # the helper (or the first router) is stuck in that push
    other = _Book(SHARE_MIN * 2, wait_for_second_thread=False)
    _lone_frame(fan_out, other.outboxes, b"other")  # returns without the helper
    assert all(got == [b"other"] for got in other.received)
    assert set(other.threads) == {threading.current_thread().name}
    release.set()
    first.join(WAIT)
    assert not first.is_alive()
    assert all(got == [b"busy"] for got in busy.received)


def test_a_failing_member_in_the_helper_s_share_stops_no_one_else(
    fan_out: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A bug in one member's push, on the helper: logged, the caller released, every other
    member still served."""
    book = _Book(SHARE_MIN * 2, wait_for_second_thread=False)
    helper_failed = threading.Event()

    def failing_on_the_helper(outbox: _Recording) -> Any:
        def push(data: bytes, urgent: bool = True) -> None:
            if not helper_failed.is_set():
                if threading.current_thread().name == "gapshape-fan-out":
                    helper_failed.set()
                    raise RuntimeError("a bug")
                assert helper_failed.wait(WAIT), "the helper never took a member"
            book.pushed(outbox.index, data)
        return push

    for outbox in book.outboxes:
        outbox.push = failing_on_the_helper(outbox)  # type: ignore[method-assign]
    _lone_frame(fan_out, book.outboxes, b"frame")
    assert "internal error in the fan-out helper" in caplog.text
    assert sorted(len(got) for got in book.received) == [0] + [1] * (len(book.outboxes) - 1)


def _helper_threads() -> int:
    return sum(t.name == "gapshape-fan-out" for t in threading.enumerate())


def test_stop_ends_the_helper_and_fan_outs_go_on_without_it() -> None:
    before = _helper_threads()
    sender = FanOutSender(_NoLog(), share=True)  # type: ignore[arg-type]
    assert _helper_threads() == before + 1
    sender.stop()
    assert _helper_threads() == before
    book = _Book(SHARE_MIN * 2, wait_for_second_thread=False)
    _lone_frame(sender, book.outboxes, b"frame")
    assert all(got == [b"frame"] for got in book.received)
    assert set(book.threads) == {threading.current_thread().name}


def test_a_real_room_gets_every_message_in_order_with_the_helper_sending(
    server_factory: Any, key_pool: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    senders: Counter[str] = Counter()
    real_send_now = transport.Connection.send_now

    def counting_send_now(self: transport.Connection, data: bytes) -> None:
        senders[threading.current_thread().name] += 1
        real_send_now(self, data)

    monkeypatch.setattr(transport.Connection, "send_now", counting_send_now)
    # The talker's next message comes well within a millisecond of its echo: shared anyway.
    monkeypatch.setattr(fanout, "QUIET_GAP", 0.0)
    chat = server_factory(rate=0, max_names_per_key=SHARE_MIN * 2,
                          registrations_per_address=SHARE_MIN * 2)
    key = key_pool.get(0)
    members = []
    for i in range(SHARE_MIN + 8):
        peer = RawPeer(chat.address)
        peer.login(f"member{i}", key)
        members.append(peer)
    talker = members[0]
    texts = [f"message {i}" for i in range(30)]
    for text in texts:  # one at a time, each alone on the wire: the direct-send path
        talker.send({"type": "message", "text": text})
        talker.wait_for(lambda f, t=text: f.get("type") == "message" and f.get("text") == t)
    for peer in members[1:]:  # the talker's own echoes were read above, in order
        got = []
        while len(got) < len(texts):
            frame = peer.wait_for("message")
            got.append(frame["text"])
        assert got == texts, peer.username
    assert senders["gapshape-fan-out"] > 0, senders
