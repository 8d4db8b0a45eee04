"""The routing path's shortcuts give what the plain way gives: the clock's text, the
frames a room's members and the sender get for one message, and for a run of messages
posted together (`ChatState.post_run`, which a session uses for a batch of frames read at
once)."""
from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable

from messagelog import MessageLog
from protocol import FrameDecoder, encode_frame
from rawclient import RawClient
from rooms import ChatState, utc_now
from userstore import UserStore

ISO_MS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


class Outbox:
    def __init__(self) -> None:
        self.frames: list[dict] = []
        self.pushes = 0
        self.decoder = FrameDecoder()

    def push(self, data: bytes, urgent: bool = True) -> None:
        self.pushes += 1
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


def test_a_run_is_logged_message_by_message_and_reaches_each_member_in_one_push(
        tmp_path: Path) -> None:
    path = tmp_path / "messages.jsonl"
    journal = MessageLog(path)
    state = ChatState(journal)
    boxes = [Outbox() for _ in range(4)]
    members = [state.login(f"user{i}", box)[0] for i, box in enumerate(boxes)]
    for box in boxes:
        box.frames.clear()
        box.pushes = 0
    texts = ["one", "two", "three"]
    assert state.post_run(members[0], "#common", [("one", "r1"), ("two", None),
                                                  ("three", "r3")]) == []
    [sender, *others] = boxes
    assert sender.pushes == 1 and all(box.pushes == 1 for box in others)
    ids = [f["id"] for f in others[0].frames]
    assert ids == list(range(ids[0], ids[0] + 3))
    assert all([f["text"] for f in box.frames] == texts for box in boxes)
    assert all(box.frames == others[0].frames for box in others)
    assert [f.get("ref") for f in sender.frames] == ["r1", None, "r3"]
    assert [{k: v for k, v in f.items() if k != "ref"} for f in sender.frames] \
        == others[0].frames
    journal.close()
    logged = [json.loads(line) for line in path.read_bytes().split(b"\n") if line]
    assert [(r["id"], r["text"]) for r in logged if r["event"] == "message"] \
        == list(zip(ids, texts, strict=True))


def test_a_run_to_a_room_the_sender_left_is_refused_whole_and_logs_nothing(
        tmp_path: Path) -> None:
    path = tmp_path / "messages.jsonl"
    journal = MessageLog(path)
    state = ChatState(journal)
    box, other = Outbox(), Outbox()
    member = state.login("user0", box)[0]
    state.login("user1", other)
    refused = state.post_run(member, "#elsewhere", [("a", "r1"), ("b", "r2")])
    assert [(index, error.code) for index, error in refused] == [(0, "bad_request"),
                                                                (1, "bad_request")]
    assert "not in #elsewhere" in refused[0][1].message
    assert not [f for f in other.frames if f["type"] == "message"]
    journal.close()
    assert b'"event":"message"' not in path.read_bytes()


def _login(chat_server, name: str, key) -> RawClient:
    raw = RawClient(chat_server.address)
    raw.login(name, key)
    raw.expect(lambda f: f["type"] == "joined" and f["room"] == "#common")
    return raw


def _message(text: str, ref: str, **extra) -> bytes:
    return encode_frame({"type": "message", "text": text, "ref": ref, **extra})


def test_frames_sent_at_once_are_answered_in_the_order_sent(chat_server, key_pool) -> None:
    """Messages read in one go are posted together, but what else came between them (a
    refused message, a leave) keeps its place: the sender sees its echoes, errors and
    replies in the order it sent the frames, and the room sees the messages in id order."""
    alice, bob = _login(chat_server, "alice", key_pool.get(0)), \
        _login(chat_server, "bob", key_pool.get(1))
    alice.send({"type": "join", "room": "#side"})
    alice.expect(lambda f: f["type"] == "joined" and f["room"] == "#side")
    burst = b"".join([
        _message("m1", "r1", room="#common"), _message("m2", "r2", room="#common"),
        _message("   ", "r3", room="#common"),  # refused: empty
        _message("m4", "r4", room="#common"),
        _message("s5", "r5", room="#side"),      # another room: a run of its own
        _message("m6", "r6", room="#common"),
        encode_frame({"type": "leave", "room": "#common"}),
        _message("m8", "r8", room="#common"),    # refused: no longer in #common
        _message("s9", "r9", room="#side"),
    ])
    alice.send_bytes(burst)
    answers = []
    while len(answers) < 9:
        frame = alice.next_frame()
        assert frame is not None
        if frame["type"] in ("message", "error", "left"):
            answers.append((frame["type"], frame.get("ref"), frame.get("room")))
    assert answers == [("message", "r1", "#common"), ("message", "r2", "#common"),
                       ("error", "r3", None), ("message", "r4", "#common"),
                       ("message", "r5", "#side"), ("message", "r6", "#common"),
                       ("left", None, "#common"), ("error", "r8", None),
                       ("message", "r9", "#side")]
    received = [bob.expect("message") for _ in range(4)]
    assert [f["text"] for f in received] == ["m1", "m2", "m4", "m6"]
    assert [f["id"] for f in received] == sorted(f["id"] for f in received)
    assert all("ref" not in f for f in received)
    bob.send({"type": "message", "text": "after", "room": "#common"})
    assert bob.expect("message")["text"] == "after"  # and nothing else came in between
    alice.close()
    bob.close()


def test_a_run_split_across_reads_loses_nothing(chat_server, key_pool) -> None:
    """A batch that ends in half a frame posts what it gathered; the rest follows."""
    alice, bob = _login(chat_server, "alice", key_pool.get(0)), \
        _login(chat_server, "bob", key_pool.get(1))
    frames = b"".join(_message(f"m{i}", f"r{i}") for i in range(40))  # over one run's bound
    cut = len(frames) - 7
    alice.send_bytes(frames[:cut])
    assert [alice.expect("message")["ref"] for _ in range(39)] == [f"r{i}" for i in range(39)]
    alice.send_bytes(frames[cut:])
    assert alice.expect("message")["ref"] == "r39"
    assert [bob.expect("message")["text"] for _ in range(40)] == [f"m{i}" for i in range(40)]
    alice.close()
    bob.close()


class RacingStore(UserStore):
    """A user store whose first read of a user's rooms lets their old session join a room
    just after it (as another thread could, between the read and the lock)."""

    def __init__(self) -> None:
        super().__init__()
        self.meanwhile: Callable[[], None] | None = None

    def rooms(self, user: str) -> list[str]:
        rooms = super().rooms(user)
        if self.meanwhile is not None:
            meanwhile, self.meanwhile = self.meanwhile, None
            meanwhile()
        return rooms


def test_a_takeover_reads_the_rooms_again_under_the_lock(tmp_path: Path) -> None:
    """A login reads the user's rooms before taking the lock; when it takes a session
    over, what that session did meanwhile must not be lost."""
    journal = MessageLog(tmp_path / "messages.jsonl")
    store = RacingStore()
    state = ChatState(journal, store)
    old_box, new_box = Outbox(), Outbox()
    old = state.login("alice", old_box)[0]
    store.meanwhile = lambda: state.join(old, "#late")
    state.login("alice", new_box, take_over=True)
    [welcome] = [f for f in new_box.frames if f["type"] == "welcome"]
    assert welcome["rooms"] == ["#common", "#late"]
    assert {f["room"] for f in new_box.frames if f["type"] == "joined"} == {"#common", "#late"}
    journal.close()
