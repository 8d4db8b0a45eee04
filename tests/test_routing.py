"""The routing path's shortcuts give what the plain way gives: the clock's text, and the
frames a room's members and the sender get for one message."""
from __future__ import annotations

import re
import time
from datetime import datetime, timezone

from protocol import FrameDecoder
from rooms import ChatState, utc_now

ISO_MS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


class Journal:
    """The message log's interface, in memory (ids and records; ChatState's Journal)."""

    def __init__(self) -> None:
        self.records: list[dict] = []
        self.next_id = 1

    def allocate_id(self) -> int:
        self.next_id += 1
        return self.next_id - 1

    def append(self, record: dict) -> None:
        self.records.append(dict(record))

    def history(self, room: str) -> list[dict]:
        return []

    def history_before(self, room: str, before_id: int | None = None,
                       limit: int | None = None) -> tuple[list[dict], bool]:
        return [], False

    def rooms(self, *, after: str | None = None, limit: int | None = None) -> list[str]:
        return []


class Outbox:
    def __init__(self) -> None:
        self.frames: list[dict] = []
        self.decoder = FrameDecoder()

    def push(self, data: bytes, urgent: bool = True) -> None:
        self.frames.extend(self.decoder.feed(data))


def test_utc_now_matches_the_datetime_formatting_it_replaces() -> None:
    for _ in range(2000):  # across at least one change of second in most runs
        before = datetime.now(timezone.utc)
        text = utc_now()
        after = datetime.now(timezone.utc)
        assert ISO_MS.fullmatch(text), text
        parsed = datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
        assert before.replace(microsecond=before.microsecond // 1000 * 1000) <= parsed <= after
    first = utc_now()
    time.sleep(0)  # no wait needed: the clock only moves forward across calls
    assert utc_now() >= first


def test_one_message_reaches_every_member_once_and_only_the_sender_sees_its_ref() -> None:
    journal = Journal()
    state = ChatState(journal)
    boxes = [Outbox() for _ in range(5)]
    members = [state.login(f"user{i}", box)[0] for i, box in enumerate(boxes)]
    for box in boxes:
        box.frames.clear()
    message_id = state.post(members[0], "héllo \ud800 there", "r-7")
    expected = {"type": "message", "id": message_id, "room": "#common", "user": "user0",
                "text": "héllo ? there", "time": journal.records[-1]["time"]}
    messages = [[f for f in box.frames if f["type"] == "message"] for box in boxes]
    assert messages[0] == [{**expected, "ref": "r-7"}]
    assert all(got == [expected] for got in messages[1:])
    for box in boxes:
        box.frames.clear()
    state.post(members[1], "no ref")
    assert all([f["text"] for f in box.frames] == ["no ref"] for box in boxes)
    assert all("ref" not in f for box in boxes for f in box.frames)
