"""The client library over real sockets hears a big room's arrivals as one PresenceBatch.

`rooms.BATCH_FROM` (200 members) is lowered for this in-process server so that three
people make a "big" room; everything else (the ticker, the frame, the client's parsing)
is what runs in production.
"""
from __future__ import annotations

from typing import Any

import pytest

import rooms
from client import PresenceBatch, UserJoined


@pytest.fixture
def small_big_rooms(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rooms, "BATCH_FROM", 2)


def test_arrivals_in_a_big_room_reach_the_library_as_one_batch(
        small_big_rooms: None, server_factory: Any, client_factory: Any) -> None:
    chat = server_factory()
    alice = client_factory(chat, "alice")
    bob = client_factory(chat, "bob")
    alice.recorder.wait_for(lambda e: isinstance(e, UserJoined) and e.user == "bob")
    start = len(alice.recorder.events)
    client_factory(chat, "carol")
    client_factory(chat, "dave")

    def batches() -> list[PresenceBatch]:
        return [e for e in alice.recorder.events[start:] if isinstance(e, PresenceBatch)]

    # wait_for looks at each event again on every new one: count from the list itself.
    alice.recorder.wait_for(lambda _: sum(b.joined_count for b in batches()) >= 2, after=start)
    assert {name for b in batches() for name in b.joined} == {"carol", "dave"}, batches()
    assert batches()[-1].member_count == 4 and batches()[-1].room == "#common"
    # No frame per arrival once the room is big: alice heard carol and dave only batched.
    singles = [e for e in alice.recorder.events[start:] if isinstance(e, UserJoined)]
    assert singles == []
    del bob
