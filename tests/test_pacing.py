"""Issue 9, items 4-6 on the client side: nothing typed is lost, refusals name the message,
the real private-message size limit, takeover, paged listings. Real sockets throughout;
the pure pacer is tested with an explicit clock."""
from __future__ import annotations

import time

import pytest

import pacing
from client import (
    Disconnected,
    ErrorEvent,
    MemberList,
    NotSent,
    PrivateMessage,
    RoomJoined,
    RoomMessage,
    StatusChanged,
    UserJoined,
    largest_private_text,
)
from mitm import HANG_UP

pytestmark = pytest.mark.timeout(90)




def said(text: str):
    return lambda e: isinstance(e, RoomMessage) and e.text == text


# -- the pacer itself -------------------------------------------------------------------

class Clock:
    """An explicit clock for the pure pacer (time is its input, not a part to fake)."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_pacer_lets_a_burst_through_then_spaces_frames_at_the_rate():
    clock = Clock()
    pacer = pacing.Pacer(5.0, 20, clock)
    burst = 0
    while pacer.delay() == 0:
        pacer.take()
        burst += 1
    assert burst == 20 - pacing.BURST_MARGIN
    wait = pacer.delay()
    assert wait == pytest.approx(1 / (5.0 * pacing.RATE_MARGIN))
    clock.now += wait
    assert pacer.delay() == 0


def test_pacer_without_flood_control_never_waits():
    pacer = pacing.Pacer(0, 20, Clock())
    for _ in range(1000):
        assert pacer.delay() == 0
        pacer.take()


def test_limits_default_for_absent_or_unusable_fields():
    assert pacing.Limits.from_welcome(None) == pacing.Limits(5.0, 20, 65536, 8000, 200)
    given = pacing.Limits.from_welcome({"rate": 2.5, "burst": 7, "max_frame": 1000,
                                        "max_text": "many", "max_note": -1, "extra": 1})
    assert given == pacing.Limits(2.5, 7, 1000, 8000, 200)
    assert pacing.Limits.from_welcome({"burst": 2.5, "rate": True}) == pacing.Limits()


def test_send_queue_is_bounded():
    q: pacing.SendQueue[int] = pacing.SendQueue(limit=2)
    q.put(1)
    q.put(2)
    with pytest.raises(pacing.SendQueueFull):
        q.put(3)
    assert q.drain() == [1, 2] and len(q) == 0


# -- over real sockets ------------------------------------------------------------------

def test_a_pasted_50_lines_all_arrive_in_order(server_factory, client_factory):
    """The server runs with its default flood limits (5/s, burst 20). Without pacing,
    this server refuses the lines over the burst; with it, all 50 arrive, in order."""
    chat = server_factory()
    alice = client_factory(chat, "alice")
    bob = client_factory(chat, "bob")
    alice.recorder.wait_for(lambda e: isinstance(e, UserJoined) and e.user == "bob")
    lines = [f"pasted line {n:02d}" for n in range(50)]
    started = time.perf_counter()
    for line in lines:
        alice.execute(line)
    bob.recorder.wait_for(said(lines[-1]), timeout=30)
    # The sender's own copy (with its ref) is pushed right after the room's: wait for it too.
    alice.recorder.wait_for(lambda e: isinstance(e, RoomMessage) and e.own
                            and e.text == lines[-1], timeout=30)
    print(f"\n50 pasted lines delivered in {time.perf_counter() - started:.1f} s "
          "(server limits 5/s, burst 20)")  # a figure for the report, not an assertion
    received = [e.text for e in bob.recorder.of_type(RoomMessage)
                if e.user == "alice" and not e.history]
    assert received == lines
    echoes = [e for e in alice.recorder.of_type(RoomMessage) if e.own and not e.history]
    assert [e.text for e in echoes] == lines and all(e.ref for e in echoes)
    assert not alice.recorder.of_type(ErrorEvent)  # no rate_limited, nothing NotSent


def test_a_full_send_queue_refuses_the_line_at_once_and_names_it(server_factory,
                                                                  client_factory):
    chat = server_factory()
    alice = client_factory(chat, "alice")
    total = pacing.SEND_QUEUE_LIMIT + 100
    refs = [alice.say(f"flood {n}") for n in range(total)]
    refused = [f"flood {n}" for n, ref in enumerate(refs) if not ref]
    assert refused, "more lines than the queue holds, and none was refused"
    not_sent = [e for e in alice.recorder.of_type(NotSent) if e.code == "queue_full"]
    assert [e.text for e in not_sent] == refused  # each one named, at once, in order
    assert all(e.target == "#common" and "waiting to be sent" in e.message for e in not_sent)
    assert len(refs) - len(refused) <= pacing.SEND_QUEUE_LIMIT + 20


def test_a_refused_frame_comes_back_as_not_sent_with_its_text(chat_server, client_factory):
    alice = client_factory(chat_server, "alice")
    bob = client_factory(chat_server, "bob")
    bob.set_status("dnd")
    alice.recorder.wait_for(StatusChanged)
    ref = alice.send_private("bob", "are you there?")
    refused = alice.recorder.wait_for(NotSent)
    assert (refused.ref, refused.target, refused.text, refused.code, refused.request) == (
        ref, "bob", "are you there?", "dnd", "private")
    assert "does not want to be disturbed" in refused.message

    mark = alice.recorder.mark()
    ref = alice.say("   ")  # the server refuses an empty message
    refused = alice.recorder.wait_for(NotSent, after=mark)
    assert (refused.ref, refused.target, refused.text, refused.request) == (
        ref, "#common", "   ", "message")

    mark = alice.recorder.mark()
    alice.say("x" * 8001)  # refused locally, before sending: the server's max_text
    refused = alice.recorder.wait_for(NotSent, after=mark)
    assert refused.code == "too_long" and "maximum is 8000" in refused.message
    assert refused.text == "x" * 8001


def test_the_private_size_limit_is_the_frame_limit_and_enforced_before_sealing(
        chat_server, client_factory):
    alice = client_factory(chat_server, "alice")
    bob = client_factory(chat_server, "bob")
    ref = alice.send_private("bob", "x" * 48_500)  # fits in 64 KiB of text, not in a frame
    assert ref == ""
    refused = alice.recorder.wait_for(NotSent)
    assert refused.code == "too_long" and refused.target == "bob"
    assert "48500 bytes" in refused.message and "fits in one frame" in refused.message
    assert refused.text == "x" * 48_500
    alice.say("still connected")
    alice.recorder.wait_for(said("still connected"))

    alice.send_private("bob", "fetch your key")  # now the recipient's key size is known
    bob.recorder.wait_for(lambda e: isinstance(e, PrivateMessage) and e.text == "fetch your key")
    bits = alice.identity.private_key.size_in_bits()
    limit = largest_private_text(65536, "alice", "bob", "0" * 12, bits, bits)
    assert 48_000 < limit < 48_500
    biggest = "é" * (limit // 2) + "y" * (limit % 2)  # two bytes a character
    alice.send_private("bob", biggest)
    got = bob.recorder.wait_for(lambda e: isinstance(e, PrivateMessage) and len(e.text) > 1000)
    assert got.text == biggest
    mark = alice.recorder.mark()
    alice.send_private("bob", biggest + "z")
    assert alice.recorder.wait_for(NotSent, after=mark).code == "too_long"
    assert not alice.recorder.of_type(Disconnected) and not bob.recorder.of_type(Disconnected)


def test_logged_in_elsewhere_is_reported_as_a_takeover(chat_server, client_factory, proxies):
    def take_over(direction, frame):
        if direction == "down" and frame["type"] == "rooms":
            return [{"type": "bye", "reason": "logged in elsewhere"}, HANG_UP]
        return [frame]

    alice = client_factory(proxies(chat_server, take_over), "alice")
    alice.request("rooms")
    gone = alice.recorder.wait_for(Disconnected)
    assert (gone.reason, gone.clean, gone.replaced) == ("logged in elsewhere", True, True)

    bob = client_factory(chat_server, "bob")
    bob.quit()
    assert bob.recorder.wait_for(Disconnected).replaced is False


def test_member_pages_are_fetched_until_complete(chat_server, client_factory, proxies):
    """A protocol-2 server, played by the proxy on top of this one: `joined` and
    `members` carry one member per page and a cursor to the next."""
    asked: list[dict] = []

    def paginate(direction, frame):
        if direction == "up" and frame["type"] == "list":
            asked.append(frame)
            return [{"type": "list"}]  # the real server here knows no pages
        if direction == "down" and frame["type"] in ("joined", "members") and len(frame["members"]) > 1:
            everyone = sorted(frame["members"], key=lambda m: m["user"].casefold())
            start = int(asked[-1]["after"]) if asked and "after" in asked[-1] else 0
            page = everyone[start:start + 1]
            cursor = str(start + 1) if start + 1 < len(everyone) else None
            if frame["type"] == "joined":
                return [{**frame, "members": everyone[:1], "member_count": len(everyone),
                         "members_next": "1"}]
            return [{**frame, "members": page, "member_count": len(everyone), "next": cursor}]
        return [frame]

    carol = client_factory(chat_server, "carol")
    bob = client_factory(chat_server, "bob")
    alice = client_factory(proxies(chat_server, paginate), "alice")
    joined = alice.recorder.wait_for(RoomJoined)  # the snapshot at login: page one
    assert not joined.complete
    assert joined.member_count == 3 and [m.user for m in joined.members] == ["alice"]
    alice.fetch_all("list")
    listing = alice.recorder.wait_for(MemberList)
    assert listing.complete and listing.member_count == 3
    assert [m.user for m in listing.members] == ["alice", "bob", "carol"]
    assert [f.get("after") for f in asked] == [None, "1", "2"]
    assert [f.get("room") for f in asked[1:]] == ["#common", "#common"]
    assert len(alice.recorder.of_type(MemberList)) == 1
    del bob, carol


def test_an_old_server_without_pages_gives_complete_lists(chat_server, client_factory):
    alice = client_factory(chat_server, "alice")
    client_factory(chat_server, "bob")
    alice.recorder.wait_for(lambda e: isinstance(e, UserJoined) and e.user == "bob")
    alice.fetch_all("list")
    listing = alice.recorder.wait_for(MemberList)
    assert listing.complete and listing.member_count == 2
    first = alice.recorder.wait_for(RoomJoined)
    assert first.complete and first.member_count == 1


def test_refs_are_random_and_reveal_nothing(chat_server, client_factory):
    alice = client_factory(chat_server, "alice")
    refs = [alice.say(f"r {n}") for n in range(3)]
    assert len(set(refs)) == 3 and all(len(r) == 12 for r in refs)
    assert all(int(r, 16) >= 0 for r in refs)  # 48 random bits each, not a counter


def test_a_private_message_to_an_impossible_name_is_refused_locally(chat_server,
                                                                    client_factory):
    alice = client_factory(chat_server, "alice")
    assert alice.send_private("x" * 65, "hello") == ""
    refused = alice.recorder.wait_for(NotSent)
    assert refused.code == "invalid_name" and refused.text == "hello"
    alice.say("still fine")
    alice.recorder.wait_for(said("still fine"))


def test_when_the_connection_drops_every_line_is_either_delivered_or_reported(
        chat_server, client_factory, proxies):
    """A paste is under way (most lines still queued by the pacer) when the connection
    breaks: each line was echoed by the server or comes back as NotSent, never neither."""
    def cut(direction, frame):
        if direction == "up" and frame.get("text") == "line 10":
            return [frame, HANG_UP]
        return [frame]

    alice = client_factory(proxies(chat_server, cut), "alice")
    lines = [f"line {n}" for n in range(60)]
    for line in lines:
        try:
            alice.say(line)
        except OSError:  # once the client knows it is offline (NotSent says so too)
            pass
    alice.recorder.wait_for(Disconnected)
    echoed = [e.text for e in alice.recorder.of_type(RoomMessage) if e.own and not e.history]
    reported = [e.text for e in alice.recorder.of_type(NotSent)]
    assert sorted(echoed + reported, key=lines.index) == lines
    assert {e.code for e in alice.recorder.of_type(NotSent)} <= {"offline", "unconfirmed"}
    assert "line 59" in reported
