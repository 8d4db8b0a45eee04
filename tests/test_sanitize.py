"""sanitize.py: network text rendered inert; and client.describe() using it for every field."""
from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

import sanitize
from client import (
    Disconnected,
    ErrorEvent,
    KeyWarning,
    MemberInfo,
    MemberList,
    NotSent,
    PrivateMessage,
    PrivateRejected,
    RoomJoined,
    RoomList,
    RoomMessage,
    StatusChanged,
    UserJoined,
    UserLeft,
    UserList,
    describe,
    describe_lines,
    event_json,
)

FORGED = "hi\n[private, encrypted, verified] alice -> you: x"
OSC_TITLE = "\x1b]0;pwned\x07"


@pytest.mark.parametrize("text, shown", [
    ("plain text, é, 漢字, emoji 🎉 and 👩‍👩‍👧", "plain text, é, 漢字, emoji 🎉 and 👩‍👩‍👧"),
    (FORGED, "hi\\n[private, encrypted, verified] alice -> you: x"),
    (OSC_TITLE, "\\x1b]0;pwned\\x07"),
    ("\x1b[2J\x1b[H", "\\x1b[2J\\x1b[H"),
    ("a\rb\tc\x00d\x7fe", "a\\rb\\tc\\x00d\\x7fe"),
    ("\x9b31m C1 CSI, \x85 NEL", "\\x9b31m C1 CSI, \\x85 NEL"),
    ("you -> \u202ebob", "you -> \\u202ebob"),
    ("\u2066\u2067\u2068\u2069\u200e\u200f\u061c\u202a\u202b\u202c\u202d",
     "\\u2066\\u2067\\u2068\\u2069\\u200e\\u200f\\u061c\\u202a\\u202b\\u202c\\u202d"),
    ("line\u2028sep\u2029para", "line\\u2028sep\\u2029para"),
    ("lone \ud800 surrogate", "lone \\ud800 surrogate"),
])
def test_inert_escapes_exactly_the_dangerous_characters(text, shown):
    assert sanitize.inert(text) == shown


@given(st.text())
def test_inert_output_is_one_line_of_printable_safe_text(text):
    shown = sanitize.inert(text)
    assert not any(sanitize.is_unsafe(ch) for ch in shown)
    assert "\n" not in shown and "\x1b" not in shown
    shown.encode("utf-8")  # no lone surrogates left


@given(st.text(alphabet=st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp"))))
def test_inert_leaves_safe_text_alone(text):
    if not any(ch in sanitize.BIDI_CONTROLS for ch in text):
        assert sanitize.inert(text) == text


def test_helpers_for_displays_that_lay_out_lines_themselves():
    assert sanitize.strip_bidi_controls("a\u202eb\u2066c") == "abc"
    assert sanitize.escape_controls("one\ntwo\r\x1b", keep_newlines=True) == "one\ntwo\\r\\x1b"
    assert sanitize.inert(42) == "42"


@given(st.dictionaries(st.text(), st.text()))
def test_json_line_is_inert_and_still_the_same_json(value):
    line = sanitize.json_line(value)
    assert not any(sanitize.is_unsafe(ch) for ch in line)
    assert json.loads(line) == json.loads(json.dumps(value))


NASTY = "\x1b[31mred\n\u202eevil\x07"
SHOWN = "\\x1b[31mred\\n\\u202eevil\\x07"


@pytest.mark.parametrize("event", [
    RoomMessage(1, NASTY, NASTY, NASTY, "t"),
    RoomJoined(NASTY, (MemberInfo(NASTY, NASTY, NASTY, NASTY),), (), "t"),
    UserJoined(NASTY, NASTY, NASTY, NASTY, "t"),
    UserLeft(NASTY, NASTY, NASTY, "t"),
    StatusChanged(NASTY, NASTY, NASTY, "t"),
    MemberList(NASTY, (MemberInfo(NASTY, NASTY, NASTY, NASTY),)),
    RoomList(((NASTY, 1),)),
    UserList((MemberInfo(NASTY, NASTY, NASTY, NASTY),)),
    PrivateMessage(1, NASTY, NASTY, "t", False, NASTY),
    PrivateMessage(1, NASTY, NASTY, "t", True, NASTY),
    PrivateRejected(NASTY, NASTY, "t"),
    KeyWarning(NASTY, NASTY, NASTY),
    ErrorEvent(NASTY, NASTY, NASTY),
    NotSent(NASTY, NASTY, "message", NASTY, NASTY, NASTY),
    Disconnected(NASTY, False),
])
def test_describe_renders_every_network_field_inert(event):
    line = describe(event)
    assert not any(sanitize.is_unsafe(ch) for ch in line)
    assert SHOWN in line


def test_describe_shows_history_after_the_join_line_and_marks_verification():
    history = (RoomMessage(7, "#x", "bob", "earlier\nline", "t", history=True),)
    joined = RoomJoined("#x", (MemberInfo("bob", "online"),), history, "t", 1, True)
    assert describe_lines(joined) == ["you are in #x with bob (online)",
                                      "#x <bob> earlier\\nline (history)"]
    assert describe(PrivateMessage(1, "bob", "hi", "t", False, "f", True)) == \
        "[private, encrypted, verified] bob -> you: hi"
    assert describe(PrivateMessage(1, "bob", "hi", "t", True, "f", False)) == \
        "[private, encrypted, not verified] you -> bob: hi"
    assert describe(NotSent("dnd", "bob is busy", "private", "r", "bob", "psst")) == \
        "not sent to bob (private): psst (bob is busy)"
    assert describe(NotSent("rate_limited", "slow down", "message", "r", "#x", "hi")) == \
        "not sent to #x: hi (slow down)"
    page = MemberList("#x", (MemberInfo("bob", "online"),), 300, False)
    assert describe(page).endswith("... (299 more not shown)")


def test_event_json_is_one_inert_line():
    line = event_json(RoomMessage(1, "#x", "bob", "a\u202e\x85b\nc", "t"))
    assert "\n" not in line and not any(sanitize.is_unsafe(ch) for ch in line)
    assert json.loads(line)["text"] == "a\u202e\x85b\nc"
