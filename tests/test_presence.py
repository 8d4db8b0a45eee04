"""Presence in big rooms (presence.py), the shared first member page, and the heap trimmer.

The chat core (rooms.ChatState) is driven directly, as in test_abuse.py: its outboxes are
anything with `push`, and a room of hundreds of members needs no sockets to show what
each member receives.
"""
from __future__ import annotations

import json
import sys
import threading
from typing import Any

import pytest

import presence
import rooms
from protocol import encode_body, encode_frame, encode_frame_with, encode_json
from rooms import ChatState
from test_abuse import Journal  # the smallest journal: records in memory, no history
from transport import HeapTrimmer

WAIT = 10.0


class Inbox:
    """An outbox that keeps the frames pushed to it and says when a presence one came."""

    def __init__(self) -> None:
        self.frames: list[dict[str, Any]] = []
        self.presence = threading.Event()

    def push(self, data: bytes, urgent: bool = True) -> None:
        frame = json.loads(data[4:])
        self.frames.append(frame)
        if frame["type"] == "presence":
            self.presence.set()

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [f for f in self.frames if f["type"] == kind]




def crowd(state: ChatState, count: int, prefix: str = "user") -> list[tuple[Any, Inbox]]:
    people = []
    for n in range(count):
        inbox = Inbox()
        member, _ = state.login(f"{prefix}{n:04d}", inbox)
        people.append((member, inbox))
    return people


def quiet_state() -> ChatState:
    """A state whose presence ticker would wait an hour: the test flushes by hand."""
    state = ChatState(Journal())
    state.presence.interval = state.presence.base_interval = 3600.0
    return state


def test_a_small_room_hears_each_arrival_and_a_big_one_a_batch_per_interval() -> None:
    state = quiet_state()
    first = crowd(state, presence.BATCH_FROM)
    _, early = first[0]
    # Below BATCH_FROM members each arrival is its own frame (old clients need nothing new).
    assert len(early.of("user_joined")) == presence.BATCH_FROM - 1
    late = crowd(state, 50, prefix="zz")
    assert len(early.of("user_joined")) == presence.BATCH_FROM - 1  # no frame per arrival
    assert not early.of("presence")
    state.flush_presence()
    batches = early.of("presence")
    assert len(batches) == 1
    batch = batches[0]
    assert batch["room"] == rooms.COMMON_ROOM
    assert batch["member_count"] == presence.BATCH_FROM + 50
    assert batch["joined_count"] == 50 and batch["left_count"] == 0 and batch["left"] == []
    assert batch["joined"] == [f"zz{n:04d}" for n in range(presence.SAMPLE_NAMES)]
    # Every member got the same one frame, the newcomers included; nothing is pending.
    for _, inbox in first + late:
        assert inbox.of("presence") == [batch]
    state.flush_presence()
    assert len(early.of("presence")) == 1


def test_batched_changes_are_netted_and_departures_carry_their_reason() -> None:
    state = quiet_state()
    people = crowd(state, presence.BATCH_FROM + 5)
    _, watcher = people[0]
    leaver, _ = people[1]
    bouncer, _ = people[2]
    state.flush_presence()  # the last five arrivals were a batch of their own
    assert watcher.of("presence")[0]["joined_count"] == 5
    watcher.frames.clear()
    state.logout(leaver, "quit")
    state.logout(bouncer, "connection closed by client")
    state.login(bouncer.name, Inbox())  # back within the interval: no news
    state.flush_presence()
    (batch,) = watcher.of("presence")
    assert batch["joined_count"] == 0 and batch["joined"] == []
    assert batch["left_count"] == 1 and batch["left"] == [{"user": leaver.name, "reason": "quit"}]
    assert batch["member_count"] == presence.BATCH_FROM + 4
    assert not watcher.of("user_left")


def test_the_ticker_sends_a_batch_without_being_asked() -> None:
    state = ChatState(Journal())
    state.presence.interval = state.presence.base_interval = 0.05
    people = crowd(state, presence.BATCH_FROM)
    crowd(state, 1, prefix="zz")
    _, watcher = people[0]
    assert watcher.presence.wait(WAIT)
    assert watcher.of("presence")[0]["joined"] == ["zz0000"]
    state.presence.close()


def test_the_interval_grows_with_the_pushes_a_flush_costs() -> None:
    batcher = presence.PresenceBatcher(lambda: None)
    batcher.pace(100)
    assert batcher.interval == presence.INTERVAL
    batcher.pace(2 * presence.PUSHES_PER_SECOND * presence.INTERVAL)
    assert batcher.interval == 2 * presence.INTERVAL
    batcher.pace(10**9)
    assert batcher.interval == presence.MAX_INTERVAL


def test_the_shared_first_page_follows_arrivals_departures_and_status() -> None:
    state = quiet_state()
    people = crowd(state, rooms.MEMBER_PAGE + 20, prefix="m")

    def snapshot(name: str) -> dict[str, Any]:
        inbox = Inbox()
        member, _ = state.login(name, inbox)
        joined = inbox.of("joined")[0]
        state.logout(member, "quit")
        return joined

    before = snapshot("zzz")  # sorts last: the first page is the same for it
    assert [m["user"] for m in before["members"]] == [f"m{n:04d}" for n in range(200)]
    assert before["members_next"] == "m0199"
    state.set_status(people[3][0], "away", "lunch")
    after = snapshot("zzz")
    assert after["members"][3] == {"user": "m0003", "status": "away", "note": "lunch"}
    early = snapshot("a")  # sorts first: it is on the page it is sent
    assert early["members"][0]["user"] == "a" and len(early["members"]) == 200
    state.logout(people[0][0], "quit")
    gone = snapshot("zzz")
    assert gone["members"][0]["user"] == "m0001" and gone["members_next"] == "m0200"


def test_a_room_of_exactly_one_page_has_no_cursor_until_it_grows() -> None:
    state = quiet_state()
    crowd(state, rooms.MEMBER_PAGE - 1, prefix="m")
    inbox = Inbox()
    state.login("m9999", inbox)  # the page's last member: the room is one full page
    assert inbox.of("joined")[0]["members_next"] is None
    later = Inbox()
    state.login("n0000", later)
    joined = later.of("joined")[0]
    assert joined["members_next"] == "m9999" and joined["member_count"] == rooms.MEMBER_PAGE + 1


def test_encode_frame_with_splices_pre_encoded_json_and_keeps_type_first() -> None:
    members = [{"user": "bob", "status": "online", "note": "é \U0001F600"}]
    frame = {"type": "joined", "room": "#a", "history": [], "time": "t"}
    data = encode_frame_with(frame, "members", encode_json(members))
    assert data == encode_frame({**frame, "members": members})
    assert data[4:].startswith(b'{"type":"joined"')
    assert encode_frame_with({}, "members", b"[]") == encode_frame({"members": []})
    assert encode_json(members) == encode_body(members)  # type: ignore[arg-type]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_the_heap_is_trimmed_only_after_connections_ended_and_not_too_often() -> None:
    trimmer = HeapTrimmer(interval=1.0)
    assert trimmer.available
    now = 1e9  # far past the interval since it was made
    assert not trimmer.maybe_trim(now)  # nothing ended: nothing to give back
    trimmer.note_ended()
    assert trimmer.maybe_trim(now)
    trimmer.note_ended()
    assert not trimmer.maybe_trim(now + 0.5)  # too soon after the last one
    assert trimmer.maybe_trim(now + 1.5)
    assert trimmer.trims == 2
