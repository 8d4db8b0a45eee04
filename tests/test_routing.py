"""The routing path's shortcuts give what the plain way gives: the clock's text, and the
frames a room's members and the sender get for one message."""
from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

from messagelog import MessageLog
from protocol import FrameDecoder
from rooms import ChatState, utc_now

ISO_MS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


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
        # Truncated to the millisecond, as isoformat does (1 ms of slack for float rounding).
        floor = before.replace(microsecond=before.microsecond // 1000 * 1000)
        assert floor - timedelta(milliseconds=1) <= parsed <= after


def test_one_message_reaches_every_member_once_and_only_the_sender_sees_its_ref(
        tmp_path: Path) -> None:
    journal = MessageLog(tmp_path / "messages.jsonl")
    state = ChatState(journal)
    boxes = [Outbox() for _ in range(5)]
    members = [state.login(f"user{i}", box)[0] for i, box in enumerate(boxes)]
    for box in boxes:
        box.frames.clear()
    message_id = state.post(members[0], "héllo \ud800 there", "r-7")
    expected = {"type": "message", "id": message_id, "room": "#common", "user": "user0",
                "text": "héllo ? there", "time": boxes[1].frames[-1]["time"]}
    assert ISO_MS.fullmatch(expected["time"])
    messages = [[f for f in box.frames if f["type"] == "message"] for box in boxes]
    assert messages[0] == [{**expected, "ref": "r-7"}]
    assert all(got == [expected] for got in messages[1:])
    for box in boxes:
        box.frames.clear()
    state.post(members[1], "no ref")
    assert all([f["text"] for f in box.frames] == ["no ref"] for box in boxes)
    assert all("ref" not in f for box in boxes for f in box.frames)
    journal.close()


def test_the_log_line_holds_the_fields_the_frame_carries(tmp_path: Path) -> None:
    """The message is encoded once for both: the line read back from the file is the
    frame's fields under "event" instead of "type", and history gives the same."""
    path = tmp_path / "messages.jsonl"
    journal = MessageLog(path)
    state = ChatState(journal)
    box = Outbox()
    member = state.login("user0", box)[0]
    state.post(member, 'quotes " and \\ and é \ud800 \u2028 end')
    [frame] = [f for f in box.frames if f["type"] == "message"]
    journal.close()
    lines = [json.loads(line) for line in path.read_bytes().split(b"\n") if line]
    [record] = [r for r in lines if r["event"] == "message"]
    assert {k: v for k, v in record.items() if k != "event"} == \
        {k: v for k, v in frame.items() if k != "type"}
    assert frame["text"] == 'quotes " and \\ and é ? \u2028 end'
    reopened = MessageLog(path)
    assert [{k: v for k, v in r.items() if k != "event"} for r in reopened.history("#common")] \
        == [{k: v for k, v in frame.items() if k != "type"}]
    reopened.close()
