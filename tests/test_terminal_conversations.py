"""terminal.py's conversation lines without a server: the status line, the gap line, the
tags of private lines, and how `Screen` prints the status (a prompt on a terminal, a line
of its own when it changes elsewhere). Over sockets: tests/test_client_conversations.py."""
from __future__ import annotations

import io
import json

import sanitize
from conversations import ConversationKey, Gap, Summary, unread_report
from events import PrivateMessage, RoomJoined, RoomMessage, UnreadChanged
from terminal import Screen, describe_lines, status_line

ROOM = ConversationKey.room
PRIV = ConversationKey.private
NASTY = "\x1b[31mred\n\u202eevil"


def unread(current: ConversationKey | None, *rows: Summary) -> UnreadChanged:
    return UnreadChanged(tuple(rows), current)


def test_status_line_names_the_current_and_marks_mentions_and_gaps() -> None:
    event = unread(ROOM("work"), Summary(ROOM("common"), 2, 0, 9, Gap("#common", 1, 5)),
                   Summary(ROOM("work"), 0, 0, 3, None), Summary(PRIV("bob"), 1, 1, 7, None))
    assert status_line(event) == "[#work] (3 unread: #common 2+, @bob 1*)"
    assert status_line(unread(PRIV("bob"))) == "[@bob] (nothing unread)"
    assert status_line(unread(None)) == "[no conversation] (nothing unread)"


def test_status_line_is_inert() -> None:
    line = status_line(unread(PRIV(NASTY), Summary(PRIV(NASTY), 1, 0, 1, None)))
    assert not any(sanitize.is_unsafe(ch) for ch in line)
    assert "\\x1b[31mred\\n\\u202eevil" in line


def test_private_lines_are_tagged_with_their_conversation() -> None:
    incoming = PrivateMessage(1, "bob", "hi", "t", False, "f")
    outgoing = PrivateMessage(2, "bob", "yo", "t", True, "f", True)
    assert describe_lines(incoming) == ["[@bob] [private, encrypted, not verified] bob -> you: hi"]
    assert describe_lines(outgoing) == ["[-> @bob] [private, encrypted, verified] you -> bob: yo"]
    assert describe_lines(PrivateMessage(3, NASTY, "x", "t", False, "f"))[0].startswith(
        "[@\\x1b[31mred\\n")


def test_the_gap_comes_before_the_join_history() -> None:
    history = tuple(RoomMessage(i, "#x", "bob", f"m{i}", "t", history=True) for i in range(60, 70))
    event = RoomJoined("#x", (), history, "t", 0, True, Gap("#x", 2, 60))
    lines = describe_lines(event)
    assert lines[1] == ("--- #x: up to 57 earlier messages since you were last here: "
                        "/history 57 in #x ---")
    assert lines[2] == "#x <bob> m60 (history)" and len(lines) == 12
    big = RoomJoined("#x", (), history, "t", 0, True, Gap("#x", 2, 500))
    assert "up to 497 earlier messages" in describe_lines(big)[1]
    assert "/history 100 (repeat for more)" in describe_lines(big)[1]
    assert not any(line.startswith("---") for line in describe_lines(
        RoomJoined("#x", (), history, "t", 0, True)))


def test_screen_prints_a_changed_status_once_into_a_pipe() -> None:
    out = io.StringIO()
    screen = Screen(out, json_lines=False, prompt=False)
    first = unread(ROOM("a"), Summary(ROOM("b"), 1, 0, 4, None))
    screen.show(first)
    screen.show(first)  # the same again: not printed twice
    screen.show(RoomMessage(5, "#b", "bob", "hi", "2026-01-01T00:00:00.000Z"))
    screen.show(unread(ROOM("a"), Summary(ROOM("b"), 2, 0, 5, None)))
    lines = out.getvalue().splitlines()
    assert [line.split("] ", 1)[1] for line in lines] == [
        "[#a] (1 unread: #b 1)", "#b <bob> hi", "[#a] (2 unread: #b 2)"]
    assert "\r" not in out.getvalue()


def test_screen_on_a_terminal_keeps_the_status_as_the_prompt() -> None:
    out = io.StringIO()
    screen = Screen(out, json_lines=False, prompt=True)
    screen.show(unread(ROOM("a")))
    assert out.getvalue() == "\r\x1b[K[#a] (nothing unread) > "
    screen.show(RoomMessage(5, "#a", "bob", "hi", "2026-01-01T00:00:00.000Z"))
    after = out.getvalue()[len("\r\x1b[K[#a] (nothing unread) > "):]
    assert after.startswith("\r\x1b[K[")  # the prompt is cleared, the line printed...
    assert "#a <bob> hi\n" in after
    assert after.endswith("\r\x1b[K[#a] (nothing unread) > ")  # ...and the prompt redrawn


def test_screen_json_reports_unread_as_data() -> None:
    out = io.StringIO()
    Screen(out, json_lines=True, prompt=False).show(
        unread(ROOM("a"), Summary(PRIV("bob"), 1, 1, 4, None)))
    record = json.loads(out.getvalue())
    assert record["event"] == "UnreadChanged"
    assert record["current"]["name"] == "#a"
    assert record["summaries"][0]["key"]["name"] == "bob"
    assert record["summaries"][0]["mentions"] == 1


def test_unread_report_words() -> None:
    rows = [Summary(ROOM("common"), 10, 1, 9, Gap("#common", 1, 17)),
            Summary(ROOM("quiet"), 0, 0, 2, None), Summary(PRIV("bob"), 1, 0, 8, None)]
    assert unread_report(rows).split("\n") == [
        "11 unread: #common 10*+, 1 mentioning you; @bob 1",
        "#common: up to 15 earlier messages since you were last here: /history 15 in #common"]
    assert unread_report([rows[1]]) == "nothing unread"


class _HistoryOnly:
    """A client as far as `private_history_lines` looks at one: its local history."""

    def __init__(self, history: object) -> None:
        self.private_history = history


def test_query_shows_the_local_private_history_tagged_and_inert(tmp_path, alice) -> None:
    from privatestore import PrivateHistory
    from terminal import private_history_lines

    history = PrivateHistory(tmp_path / "h.sqlite3", alice)
    try:
        history.record("bob", "in", "hello " + NASTY, "m1", "2026-12-01T10:00:00.000Z")
        history.record("bob", "out", "hi bob", "m2", "2026-12-01T10:01:00.000Z")
        lines = private_history_lines(_HistoryOnly(history), "bob")  # type: ignore[arg-type]
        assert len(lines) == 2
        assert "[@bob] bob -> you: hello " in lines[0] and lines[0].endswith("(history)")
        assert "[-> @bob] you -> bob: hi bob (history)" in lines[1]
        assert not any(sanitize.is_unsafe(ch) for line in lines for ch in line)
    finally:
        history.close()
    closed = private_history_lines(_HistoryOnly(history), "bob")  # type: ignore[arg-type]
    assert len(closed) == 1 and "error:" in closed[0]


def test_a_presence_batch_is_one_inert_line_with_exact_counts() -> None:
    from client import PRESENCE_NAMES_KEPT, _presence_batch
    from terminal import describe_presence

    frame = {"type": "presence", "room": "#common", "member_count": 4711,
             "joined_count": 57, "joined": ["ann", "bo", NASTY],
             "left_count": 1, "left": [{"user": "kim", "reason": "quit"}],
             "time": "2026-12-02T01:40:00.000Z"}
    event = _presence_batch(frame)
    assert (event.joined_count, event.left_count, event.member_count) == (57, 1, 4711)
    line = describe_presence(event)
    assert line.startswith("* #common: ann, bo, ") and "and 54 others joined; kim left" in line
    assert line.endswith("(4711 online)")
    assert not any(sanitize.is_unsafe(ch) for ch in line)
    # A hostile server's endless list of names costs at most PRESENCE_NAMES_KEPT of them.
    flood = _presence_batch({**frame, "joined": ["x"] * 100_000, "joined_count": True})
    assert len(flood.joined) == PRESENCE_NAMES_KEPT
    assert flood.joined_count == PRESENCE_NAMES_KEPT  # a bool is not a count
