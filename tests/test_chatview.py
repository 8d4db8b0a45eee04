"""chatview.py: what the window shows and decides, tested without a display."""
from __future__ import annotations

import json
import queue
import socket
import unicodedata
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import chatview
import identity
import privatestore
from chatview import (
    CONNECTED,
    OFFLINE,
    RECONNECTING,
    Backoff,
    ChatModel,
    ClientLink,
    Connected,
    ConnectFailed,
    InputHistory,
    LoginRequest,
    NameColours,
    TabCompleter,
    tk_safe,
)
from client import (
    Disconnected,
    ErrorEvent,
    KeyWarning,
    LoginError,
    MemberInfo,
    MemberList,
    Notice,
    PrivateMessage,
    PrivateRejected,
    RoomJoined,
    RoomList,
    RoomMessage,
    StatusChanged,
    UserJoined,
    UserLeft,
    UserList,
    Welcome,
)
from commands import CommandError

NOW = datetime(2026, 11, 29, 19, 40, tzinfo=timezone.utc)
STAMP = "2026-11-29T19:40:00.000Z"


def message(text: str = "hello", user: str = "bob", *, id: int = 1, room: str = "#common",
            history: bool = False, own: bool = False, time: str = STAMP) -> RoomMessage:
    return RoomMessage(id, room, user, text, time, history, own)


def joined(room: str = "#common", members: tuple[str, ...] = ("alice", "bob"),
           history: tuple[RoomMessage, ...] = ()) -> RoomJoined:
    return RoomJoined(room, tuple(MemberInfo(m, "online") for m in members), history, STAMP)


def go(model: ChatModel, event: RoomJoined) -> None:
    """The user goes to a room (typed /join): the server's `joined` answer shows it."""
    model.sent(f"/join {event.room}")
    model.apply(event)


def logged_in_model(me: str = "alice", **options: Any) -> ChatModel:
    model = ChatModel(now=lambda: NOW, **options)
    model.logged_in(Welcome(me, "#common", "srv", STAMP), "127.0.0.1:5050")
    model.apply(joined())
    model.take_changes()
    return model


# -- text safety --------------------------------------------------------------------------

@pytest.mark.parametrize("text, shown", [
    ("plain ascii", "plain ascii"),
    ("héllo wörld ✓ — ☺ 中文 שלום", "héllo wörld ✓ — ☺ 中文 שלום"),  # BMP text passes
    ("party 😀!", "party [grinning face]!"),
    ("thumbs 👍🏽", "thumbs [thumbs up sign]"),  # the skin-tone modifier goes with it
    ("flag 🇫🇷 here", "flag [flag FR] here"),
    ("lonely 🇫 x", "lonely [F] x"),
    ("music 𝄞", "music [musical symbol g clef]"),
    ("math 𝐀", "math \ufffd"),  # a letter, not a symbol: no name in brackets
    ("cjk 𠀀", "cjk \ufffd"),
    ("nul \x00 cut", "nul \ufffd cut"),
    ("bell \x07 esc \x1b[31m", "bell \ufffd esc \ufffd[31m"),
    ("lone \ud800 surrogate", "lone \ufffd surrogate"),
    ("rtl \u202eevil\u202c text", "rtl \ufffdevil\ufffd text"),
    ("two\nlines\r\n", "two\nlines\n"),
    ("tab\there", "tab\there"),
])
def test_tk_safe_substitutes_what_tk_86_cannot_show(text: str, shown: str) -> None:
    assert tk_safe(text) == shown


def test_tk_safe_can_fold_newlines_and_keep_astral() -> None:
    assert tk_safe("a\nb", newlines=False) == "a b"
    assert tk_safe("party 😀 \ud800 \x00", astral=True) == "party 😀 \ufffd \ufffd"


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x10FFFF), max_size=60))
def test_tk_safe_output_is_always_displayable(text: str) -> None:
    shown = tk_safe(text)
    assert all(ord(ch) <= 0xFFFF for ch in shown)
    assert not any(0xD800 <= ord(ch) <= 0xDFFF for ch in shown)
    assert all(ch in "\n\t" or unicodedata.category(ch) != "Cc" for ch in shown)
    shown.encode("utf-8")  # Tk receives UTF-8: must not raise


def test_astral_support_is_decided_by_the_tcl_version_and_fonts() -> None:
    # Tk 8.6.10+ joins surrogate pairs when drawing (seen under Xvfb with 8.6.13), but on
    # X11 only a font with the glyphs draws them; older 8.6 shows two boxes.
    assert chatview.tk_can_show_astral("8.6.13", "x11", emoji_font=True)
    assert not chatview.tk_can_show_astral("8.6.13", "x11", emoji_font=False)
    assert chatview.tk_can_show_astral("8.6.13", "win32", emoji_font=False)
    assert not chatview.tk_can_show_astral("8.6.9", "aqua")
    assert chatview.tk_can_show_astral("9.0.1", "x11", emoji_font=False)
    assert not chatview.tk_can_show_astral("garbage")


def test_join_surrogates_from_tk_86_widgets() -> None:
    assert chatview.join_surrogates("a\ud83d\ude00b") == "a😀b"
    assert chatview.join_surrogates("lone \ud800") == "lone \ufffd"
    assert chatview.join_surrogates("plain") == "plain"


# -- times and colours --------------------------------------------------------------------

def test_times_are_local_and_dated_when_not_today() -> None:
    local_now = NOW.astimezone()
    assert chatview.format_time(STAMP, NOW) == local_now.strftime("%H:%M")
    earlier = NOW - timedelta(days=3)
    shown = chatview.format_time(earlier.isoformat().replace("+00:00", "Z"), NOW)
    assert shown.endswith(earlier.astimezone().strftime("%b %H:%M"))
    last_year = NOW - timedelta(days=400)
    assert str(last_year.astimezone().year) in chatview.format_time(last_year.isoformat(), NOW)
    assert chatview.format_time("not a time", NOW) == ""
    assert chatview.format_time("2026-11-29T19:40:00", NOW) == ""  # no zone: refuse to guess


def test_name_colours_are_stable_across_sessions_and_case() -> None:
    first, second = NameColours(), NameColours()
    assert first("Bob") == first("bob") == second("BOB")
    assert first("carol") == second("carol")


def test_name_colours_are_distinct_while_the_palette_lasts() -> None:
    colours = NameColours()
    names = [f"user{i}" for i in range(len(chatview.NAME_PALETTE))]
    assigned = [colours(name) for name in names]
    assert len(set(assigned)) == len(names)
    assert colours("user0") == assigned[0]  # assignments do not move
    assert colours("one-more") in chatview.NAME_PALETTE  # beyond the palette: reuse


def test_own_name_has_its_own_colour() -> None:
    colours = NameColours("alice")
    assert colours("Alice") == chatview.OWN_COLOUR
    assert chatview.OWN_COLOUR not in chatview.NAME_PALETTE


def _contrast(colour: str, background: str = "#ffffff") -> float:
    def luminance(hex_colour: str) -> float:
        channels = [int(hex_colour[i:i + 2], 16) / 255 for i in (1, 3, 5)]
        linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
        return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]
    high, low = sorted((luminance(colour), luminance(background)), reverse=True)
    return (high + 0.05) / (low + 0.05)


def test_name_colours_are_readable_on_white() -> None:
    assert len(set(chatview.NAME_PALETTE)) == len(chatview.NAME_PALETTE) >= 10
    for colour in chatview.NAME_PALETTE:
        assert _contrast(colour) >= 4.5, colour


# -- formatting events --------------------------------------------------------------------

def test_a_message_reads_time_name_text() -> None:
    model = logged_in_model()
    model.apply(message("hello there"))
    (line,) = model.take_changes().lines
    assert line.kind == "message"
    assert line.text == f"{NOW.astimezone():%H:%M}  bob  hello there"
    time_span, name_span, _gap, body = line.spans
    assert time_span.tags == ("time",)
    assert name_span.tags == ("name", chatview.colour_tag(model.colours("bob")))
    assert body.tags == ("body",)


def test_own_messages_history_and_mentions_look_different() -> None:
    model = logged_in_model()
    model.apply(message("mine", "alice", id=2, own=True))
    model.apply(message("hey Alice, look", id=3))
    model.apply(message("malice is not a mention", id=4))
    kinds = [line.kind for line in model.take_changes().lines]
    assert kinds == ["own", "mention", "message"]
    own_name = model.transcript()[-3].spans[1]
    assert chatview.colour_tag(chatview.OWN_COLOUR) in own_name.tags


def test_history_is_set_apart_and_not_repeated_on_rejoin() -> None:
    model = logged_in_model()
    old = (message("old one", id=10, history=True), message("old two", id=11, history=True))
    go(model, joined("#design", history=old))
    changes = model.take_changes()
    assert changes.redraw
    kinds = [line.kind for line in model.transcript()]
    assert kinds == ["divider", "history", "history", "divider"]
    assert "earlier in #design" in model.transcript()[0].text
    go(model, joined("#common"))
    go(model, joined("#design", history=old + (message("new", id=12, history=True),)))
    texts = [line.text for line in model.transcript()]
    assert sum("old one" in t for t in texts) == 1
    assert any("new" in t for t in texts)


def test_each_room_keeps_its_own_transcript() -> None:
    model = logged_in_model()
    model.apply(message("in common", id=1))
    go(model, joined("#design"))
    model.apply(message("in design", "carol", id=2, room="#design"))
    model.apply(message("late from common", id=3, room="#common"))  # crossed the join
    changes = model.take_changes()
    assert [line.text for line in changes.lines if "late" in line.text] == []
    assert any("in design" in line.text for line in model.transcript())
    assert not any("in common" in line.text for line in model.transcript())
    assert any("late from common" in line.text for line in model.transcript("#common"))


def test_transcripts_are_bounded() -> None:
    model = logged_in_model()
    for number in range(chatview.TRANSCRIPT_LIMIT + 500):
        model.apply(message(f"m{number}", id=number + 100))
    assert len(model.transcript()) == chatview.TRANSCRIPT_LIMIT
    assert model.transcript()[-1].text.endswith(f"m{chatview.TRANSCRIPT_LIMIT + 499}")


def test_system_events_are_quiet_lines_and_update_members() -> None:
    model = logged_in_model()
    model.apply(UserJoined("#common", "carol", "away", "lunch", STAMP))
    model.apply(StatusChanged("bob", "dnd", "", STAMP))
    model.apply(UserLeft("#common", "carol", "joined #design", STAMP))
    model.apply(UserLeft("#other", "zed", "quit", STAMP))  # another room: no member change
    changes = model.take_changes()
    assert [line.kind for line in changes.lines] == ["system", "system", "system"]
    texts = [line.text for line in changes.lines]
    assert texts[0].endswith("→ carol joined #common")
    assert texts[1].endswith("• bob does not want to be disturbed")
    assert texts[2].endswith("← carol went to #design")
    assert changes.members and changes.rooms
    assert model.member_rows() == [("alice", "online", "online"),
                                   ("bob", "dnd", "do not disturb")]
    assert model.rooms["#common"] == 2


def test_own_status_change_updates_the_selector() -> None:
    model = logged_in_model()
    model.apply(StatusChanged("alice", "away", "lunch", STAMP))
    changes = model.take_changes()
    assert changes.status and model.status == "away" and model.note == "lunch"
    assert changes.lines[0].text.endswith("• you are away: lunch")
    assert ("alice", "away", "away · lunch") in model.member_rows()
    model.apply(StatusChanged("alice", "away", "x" * 40, STAMP))
    assert model.member_rows()[0][2] == "away · " + "x" * 23 + "…"


def test_private_messages_have_a_lock_and_the_peer() -> None:
    model = logged_in_model()
    model.apply(PrivateMessage(5, "bob", "psst", STAMP, False, "fp"))
    model.apply(PrivateMessage(6, "bob", "hi back", STAMP, True, "fp"))
    # Private lines live in the conversation with bob, not in the room shown; the room
    # only says where the line the user sent from it went.
    shown = model.take_changes().lines
    assert [line.kind for line in shown] == ["system"] and "bob" in shown[0].text
    assert not any("psst" in line.text for line in model.transcript())
    incoming, outgoing = model.transcript("@bob")
    assert incoming.kind == outgoing.kind == "private"
    assert incoming.spans[1].image == "lock"
    assert "bob → you" in incoming.text and incoming.text.endswith("psst")
    assert "you → bob" in outgoing.text


def test_rejections_and_errors_are_errors() -> None:
    model = logged_in_model()
    model.apply(PrivateRejected("bob", "bad signature", STAMP))
    model.apply(ErrorEvent("dnd", "bob does not want to be disturbed right now"))
    lines = model.take_changes().lines
    assert [line.kind for line in lines] == ["error", "error"]
    assert "bad signature" in lines[0].text


def test_key_warnings_cannot_be_missed() -> None:
    model = logged_in_model()
    model.apply(KeyWarning("bob", "aaaa", "bbbb"))
    changes = model.take_changes()
    assert changes.banner and changes.bell
    assert all(line.kind == "warning" for line in changes.lines)
    text = "\n".join(line.text for line in changes.lines)
    assert "bob's key has CHANGED" in text and "/trust bob" in text
    assert "Pinned key: aaaa" in text and "Offered key: bbbb" in text
    assert chatview.group_hex("0123456789abcdef01") == "0123 4567 89ab cdef 01"
    assert set(model.key_warnings) == {"bob"}
    model.apply(Notice("you now trust bob's new key: 1234", "trust"))
    assert not model.key_warnings and model.take_changes().banner


def test_listings_show_only_when_the_user_asked() -> None:
    model = logged_in_model()
    model.apply(RoomList((("#common", 2), ("#design", 1))))
    assert model.take_changes().lines == []  # a background refresh: sidebar only
    assert model.room_rows() == [("#common", 2, True), ("#design", 1, False)]
    model.expect_listing("rooms")
    model.expect_listing("list")
    model.expect_listing("knowrooms")
    model.apply(RoomList((("#common", 2),)))
    model.apply(MemberList("#common", (MemberInfo("alice", "online"), MemberInfo("bob", "away"))))
    model.apply(UserList((MemberInfo("bob", "away", "", "#common"),)))
    texts = [line.text for line in model.take_changes().lines]
    assert texts[0].endswith("Rooms: #common (2)")
    assert texts[1].endswith("In #common: alice (online), bob (away)")
    assert texts[2].endswith("Online: bob in #common (away)")


def test_manual_notice_opens_the_manual_window() -> None:
    model = logged_in_model()
    model.apply(Notice("Gapshape commands ...", "manual"))
    changes = model.take_changes()
    assert changes.manual and not changes.lines


def test_text_from_the_network_is_made_safe() -> None:
    model = logged_in_model()
    model.apply(message("emoji 😀 and \x00 nul"))
    (line,) = model.take_changes().lines
    assert "[grinning face]" in line.text and "\x00" not in line.text
    astral = logged_in_model(astral=True)
    astral.apply(message("emoji 😀"))
    assert astral.take_changes().lines[0].text.endswith("emoji 😀")


# -- title, attention, connection ---------------------------------------------------------

def test_title_names_user_room_and_connection() -> None:
    assert chatview.window_title("alice", "#common", CONNECTED) == \
        "alice in #common · connected — Gapshape"
    assert chatview.window_title("alice", "#x", RECONNECTING, 2).startswith("(2) alice in #x")
    assert "Log in" in chatview.window_title("", "", "")


@pytest.mark.parametrize("outgoing, focused, status, wanted", [
    (False, False, "online", True),
    (False, False, "away", True),
    (False, False, "dnd", False),
    (False, True, "online", False),
    (True, False, "online", False),
])
def test_attention_for_private_messages(outgoing: bool, focused: bool, status: str,
                                        wanted: bool) -> None:
    event = PrivateMessage(1, "bob", "hi", STAMP, outgoing, "fp")
    assert chatview.wants_attention(event, focused=focused, own_status=status) is wanted
    assert not chatview.wants_attention(message(), focused=False, own_status="online")


def test_unfocused_private_message_rings_and_marks_until_focus_returns() -> None:
    model = logged_in_model()
    model.set_focus(False)
    model.apply(PrivateMessage(1, "bob", "hi", STAMP, False, "fp"))
    changes = model.take_changes()
    assert changes.bell and changes.title
    assert model.title().startswith("(1) alice in #common")
    model.set_focus(True)
    assert model.take_changes().title and not model.title().startswith("(")


def test_dnd_silences_attention() -> None:
    model = logged_in_model()
    model.apply(StatusChanged("alice", "dnd", "", STAMP))
    model.set_focus(False)
    model.take_changes()
    model.apply(PrivateMessage(1, "bob", "hi", STAMP, False, "fp"))
    assert not model.take_changes().bell and model.unread == 0


def test_reconnect_restores_room_and_status() -> None:
    model = logged_in_model()
    go(model, joined("#design"))
    model.apply(StatusChanged("alice", "away", "lunch", STAMP))
    model.connection_lost("connection reset", 2.0)
    assert model.connection == RECONNECTING and model.members == {}
    assert "Connection lost: connection reset. Trying again in 2 s." in model.transcript()[-1].text
    restore = model.logged_in(Welcome("alice", "#common", "srv", STAMP), "h:1")
    assert (restore.room, restore.status, restore.note) == ("#design", "away", "lunch")
    assert model.connection == CONNECTED and model.room == "#common"
    assert "Reconnected" in model.transcript("#design")[-1].text  # where the user was looking


def test_first_login_restores_nothing() -> None:
    model = ChatModel(now=lambda: NOW)
    restore = model.logged_in(Welcome("alice", "#common", "srv", STAMP), "h:1")
    assert restore.room is None and restore.status is None
    model.connection_lost("server shutting down", None)
    assert model.connection == OFFLINE


def test_backoff_doubles_up_to_a_limit_and_resets() -> None:
    backoff = Backoff(first=1, factor=2, limit=30, jitter=0)
    assert [backoff.next_delay() for _ in range(7)] == [1, 2, 4, 8, 16, 30, 30]
    backoff.reset()
    assert backoff.next_delay() == 1


def test_backoff_jitter_stays_within_bounds() -> None:
    low = Backoff(first=10, limit=60, jitter=0.2, rng=lambda: 0.0)
    high = Backoff(first=10, limit=60, jitter=0.2, rng=lambda: 0.999999)
    assert low.next_delay() == pytest.approx(8.0)
    assert high.next_delay() == pytest.approx(12.0, rel=1e-4)
    capped = Backoff(first=100, limit=60, jitter=0.5, rng=lambda: 0.999999)
    assert capped.next_delay() == 60


def test_autoscroll_only_at_the_bottom() -> None:
    assert chatview.should_autoscroll(1.0)
    assert not chatview.should_autoscroll(0.8)


# -- input --------------------------------------------------------------------------------

@pytest.mark.parametrize("line, kind, command", [
    ("hello", "send", ""),
    ("//not a command", "send", ""),
    ("/manual", "manual", "manual"),
    ("/HELP", "manual", "manual"),
    ("/quit", "quit", "quit"),
    ("/exit", "quit", "quit"),
    ("/rooms", "send", "rooms"),
    ("/msg bob hi", "send", "privatemsg"),
    ("   ", "nothing", ""),
])
def test_interpret_input(line: str, kind: str, command: str) -> None:
    action = chatview.interpret_input(line)
    assert (action.kind, action.command) == (kind, command)


def test_broken_commands_are_explained_not_sent() -> None:
    action = chatview.interpret_input("/frobnicate now")
    assert action.kind == "error" and "unknown command /frobnicate" in action.message
    assert chatview.interpret_input("/join").message == "usage: /join <room>"


def test_history_recall_like_a_shell() -> None:
    history = InputHistory()
    for line in ("one", "two", "two", "three"):
        history.add(line)
    assert history.older("draft") == "three"
    assert history.older("three") == "two"
    assert history.older("two") == "one"  # the repeated "two" was kept once
    assert history.older("one") is None
    assert history.newer("one") == "two"
    assert history.newer("two") == "three"
    assert history.newer("three") == "draft"
    assert history.newer("draft") is None
    history.add("four")
    assert history.older("") == "four"


def test_history_is_bounded_and_skips_blank_lines() -> None:
    history = InputHistory(limit=3)
    for line in ("a", "b", " ", "c", "d"):
        history.add(line)
    assert [history.older(""), history.older(""), history.older(""), history.older("")] == \
        ["d", "c", "b", None]


def test_tab_completes_commands_names_rooms_and_statuses() -> None:
    users, rooms = ["bob", "Bea", "carol"], ["#common", "#design"]
    completer = TabCompleter()
    assert completer.complete("/jo", users, rooms) == ("/join ", "")
    assert completer.complete("/join #d", users, rooms) == ("/join #design ", "")
    assert completer.complete("/msg ca", users, rooms) == ("/msg carol ", "")
    assert completer.complete("ca", users, rooms) == ("carol: ", "")
    assert completer.complete("/status a", users, rooms) == ("/status away ", "")
    assert completer.complete("/zz", users, rooms) == ("/zz", "no completions")


def test_tab_extends_a_common_prefix_then_cycles() -> None:
    completer = TabCompleter()
    users = ["bob", "bobby", "carol"]
    assert completer.complete("/msg b", users, []) == ("/msg bob", "bob, bobby")
    first = completer.complete("/msg bob", users, [])
    assert first == ("/msg bob ", "bob, bobby")
    second = completer.complete(first[0], users, [])
    assert second == ("/msg bobby ", "bob, bobby")
    assert completer.complete(second[0], users, [])[0] == "/msg bob "
    assert completer.complete("/f", users, [])[0] == "/fingerprint "  # typing resets the cycle


def test_usernames_for_completion_exclude_me() -> None:
    model = logged_in_model()
    model.apply(UserList((MemberInfo("zed", "online", "", "#x"),)))
    assert model.usernames() == ["bob", "zed"]


# -- login --------------------------------------------------------------------------------

def test_check_login_accepts_good_values() -> None:
    assert chatview.check_login(" alice ", "127.0.0.1", "5050") == \
        LoginRequest("alice", "127.0.0.1", 5050, "")


@pytest.mark.parametrize("username, host, port, words", [
    ("", "h", "1", "enter a username"),
    ("al ice", "h", "1", "letters, digits"),
    ("x" * 40, "h", "1", "maximum is 32"),
    ("alice", "", "1", "server's address"),
    ("alice", "h", "http", "between 1 and 65535"),
    ("alice", "h", "70000", "between 1 and 65535"),
])
def test_check_login_says_what_to_fix(username: str, host: str, port: str, words: str) -> None:
    result = chatview.check_login(username, host, port)
    assert isinstance(result, str) and words in result


def test_room_names_are_normalised_or_explained() -> None:
    assert chatview.check_room_name(" Design ") == "#design"
    assert chatview.check_room_name("#Ops") == "#ops"
    with pytest.raises(ValueError, match="will not work"):
        chatview.check_room_name("no spaces")


@pytest.mark.parametrize("exc, code, words, retry", [
    (LoginError("name_taken", 'the username "alice" is already in use'), "name_taken",
     "already logged in as alice", True),
    (LoginError("key_mismatch", "registered to another key"), "key_mismatch",
     "belongs to a different key", False),
    (ConnectionRefusedError(111, "Connection refused"), "refused",
     "Nothing is answering at example.org:5050", True),
    (socket.gaierror(-2, "Name or service not known"), "no_such_host",
     '"example.org" could not be found', True),
    (TimeoutError("timed out"), "timeout", "did not answer in time", True),
    (identity.IdentityError("wrong passphrase for x"), "identity", "wrong passphrase", False),
    (OSError(113, "No route to host"), "network", "No route to host", True),
])
def test_login_errors_in_plain_words(exc: BaseException, code: str, words: str,
                                     retry: bool) -> None:
    got_code, text, got_retry = chatview.login_error_text(exc, "alice", "example.org", 5050)
    assert (got_code, got_retry) == (code, retry)
    assert words in text


def test_settings_are_remembered(tmp_path: Path) -> None:
    assert chatview.load_settings(tmp_path) == chatview.Settings("", "127.0.0.1", 5050)
    chatview.save_settings(tmp_path / "new", chatview.Settings("alice", "chat.example", 6000))
    assert chatview.load_settings(tmp_path / "new") == chatview.Settings("alice", "chat.example", 6000)


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '{"port": "x", "host": 5}'])
def test_damaged_settings_fall_back_to_defaults(tmp_path: Path, content: str) -> None:
    (tmp_path / chatview.SETTINGS_FILE).write_text(content)
    assert chatview.load_settings(tmp_path) == chatview.Settings()


def test_status_selector_labels() -> None:
    assert chatview.status_word("Do not disturb") == "dnd"
    assert chatview.status_word("Away") == "away"
    assert chatview.status_word("Online") == "online"


def test_batch_takes_at_most_the_limit() -> None:
    items: queue.Queue[int] = queue.Queue()
    for number in range(450):
        items.put(number)
    assert len(list(chatview.batch(items, 200))) == 200
    assert len(list(chatview.batch(items, 200))) == 200
    assert list(chatview.batch(items, 200)) == list(range(400, 450))


# -- the link -----------------------------------------------------------------------------

class FakeClient:
    """Stands in for ChatClient: records calls; its 'reader' emits during connect()."""

    instances: list[FakeClient] = []

    def __init__(self, username: str, host: str, port: int, *, on_event: Any,
                 fail: BaseException | None = None, ident: Any = None,
                 **options: Any) -> None:
        self.username, self.on_event, self.fail = username, on_event, fail
        self.given_identity, self.options = ident, options
        self.identity = ident or f"key of {username}"
        self.lines: list[str] = []
        self.closed = False
        FakeClient.instances.append(self)

    def connect(self) -> Welcome:
        if self.fail:
            raise self.fail
        self.on_event(RoomJoined("#common", (), (), STAMP))  # before connect() returns
        return Welcome(self.username, "#common", "srv", STAMP)

    def execute(self, line: str) -> bool:
        if line.startswith("/msg alice"):
            raise CommandError("you cannot send a private message to yourself")
        self.lines.append(line)
        return True

    def close(self) -> None:
        self.closed = True

    def quit(self) -> None:
        self.on_event(Disconnected("goodbye", True))


def _collect(posted: queue.Queue[Any], count: int) -> list[Any]:
    return [posted.get(timeout=5) for _ in range(count)]


@pytest.fixture
def shared_new_key(monkeypatch: pytest.MonkeyPatch, key_pool: Any) -> None:
    """A new identity gets a shared test key. Making an RSA-3072 key took 0.8-2.8 s in ten
    tries on an idle machine, and its time has a long tail: a CI run got the link's
    Progress and then waited more than 5 s for the next event, with key generation the
    only slow step between them."""
    key = key_pool.get(0)  # made here, in the test's thread, before any wait starts
    monkeypatch.setattr(identity, "_generate_key", lambda: key)


@pytest.mark.usefixtures("shared_new_key")
def test_link_posts_connected_before_the_connections_events(tmp_path: Path) -> None:
    posted: queue.Queue[Any] = queue.Queue()
    FakeClient.instances.clear()
    link = ClientLink(posted.put, tmp_path, make_client=FakeClient)
    link.connect(LoginRequest("alice", "h", 1))
    progress, connected, room = _collect(posted, 3)
    assert isinstance(progress, chatview.Progress)  # no key yet: it will be created
    assert isinstance(connected, Connected) and connected.where == "h:1"
    assert isinstance(room, RoomJoined)
    link.execute("hello")
    link.execute("/msg alice me")
    (error,) = _collect(posted, 1)
    assert isinstance(error, ErrorEvent) and "yourself" in error.message
    assert FakeClient.instances[0].lines == ["hello"]
    link.shutdown()
    assert FakeClient.instances[0].closed


@pytest.mark.usefixtures("shared_new_key")
def test_link_drops_events_of_a_replaced_connection(tmp_path: Path) -> None:
    posted: queue.Queue[Any] = queue.Queue()
    FakeClient.instances.clear()
    link = ClientLink(posted.put, tmp_path, make_client=FakeClient)
    link.connect(LoginRequest("alice", "h", 1))
    _collect(posted, 3)  # Progress (making the key), Connected, RoomJoined
    link.connect(LoginRequest("alice", "h", 1))
    assert [type(e) for e in _collect(posted, 2)] == [Connected, RoomJoined]  # key known now
    FakeClient.instances[0].on_event(Disconnected("late news", False))  # the old one
    first, second = FakeClient.instances[:2]
    assert second.given_identity is first.given_identity is not None  # loaded once, reused
    # One private history per login, not one per connection (its integrity check runs once).
    history = first.options["private_history"]
    assert second.options["private_history"] is history and history.contacts() == []
    link.quit()
    (event,) = _collect(posted, 1)
    assert event == Disconnected("goodbye", True)
    assert FakeClient.instances[0].closed
    link.shutdown()
    with pytest.raises(privatestore.PrivateHistoryError, match="closed"):  # closed at the end
        history.contacts()


@pytest.mark.usefixtures("shared_new_key")
def test_link_reports_login_failures_and_offline_sends(tmp_path: Path) -> None:
    posted: queue.Queue[Any] = queue.Queue()

    def failing(*args: Any, **kwargs: Any) -> FakeClient:
        return FakeClient(*args, fail=ConnectionRefusedError(111, "refused"), **kwargs)

    link = ClientLink(posted.put, tmp_path, make_client=failing)
    link.connect(LoginRequest("alice", "h", 1))
    _progress, failed = _collect(posted, 2)
    assert isinstance(failed, ConnectFailed) and failed.code == "refused" and failed.retry
    link.execute("hello")
    (error,) = _collect(posted, 1)
    assert isinstance(error, ErrorEvent) and error.code == "offline"
    link.request("rooms")  # background requests stay quiet when offline
    link.quit()
    assert _collect(posted, 1) == [Disconnected("not connected", True)]
    link.shutdown()


def test_link_against_a_real_server(chat_server: Any, client_factory: Any, key_pool: Any,
                                    tmp_path: Path) -> None:
    from conftest import make_identity

    bob = client_factory(chat_server, "bob", key=0)
    home = tmp_path / "gui-home"
    make_identity(home, "alice", key_pool.get(1))
    posted: queue.Queue[Any] = queue.Queue()
    link = ClientLink(posted.put, home)
    host, port = chat_server.address
    link.connect(LoginRequest("alice", host, port))
    connected = posted.get(timeout=10)
    assert isinstance(connected, Connected) and connected.welcome.user == "alice"
    link.execute("hello from the link")
    bob.recorder.wait_for(lambda e: isinstance(e, RoomMessage) and e.text == "hello from the link")
    link.quit()
    event = posted.get(timeout=10)
    while not isinstance(event, Disconnected):
        event = posted.get(timeout=10)
    assert event.clean
    link.shutdown()


def test_settings_file_is_json(tmp_path: Path) -> None:
    chatview.save_settings(tmp_path, chatview.Settings("alice", "h", 1))
    assert json.loads((tmp_path / chatview.SETTINGS_FILE).read_text()) == \
        {"username": "alice", "host": "h", "port": 1}


# -- a day of use -------------------------------------------------------------------------

def test_backoff_is_capped_at_two_seconds_by_default() -> None:
    backoff = Backoff(jitter=0)
    assert [backoff.next_delay() for _ in range(5)] == [0.5, 1.0, 2.0, 2.0, 2.0]


def test_join_completes_a_room_without_its_hash() -> None:
    completer = TabCompleter()
    assert completer.complete("/join d", [], ["#common", "#design"]) == ("/join #design ", "")
    assert completer.complete("/join zz", [], ["#common"]) == ("/join zz", "no completions")


def test_mentions_and_private_messages_want_attention_and_a_notification() -> None:
    model = logged_in_model()
    model.set_focus(False)
    model.apply(message("alice: lunch?", id=5))
    model.apply(message("no name here", id=6))
    model.apply(message("alice in history", id=7, history=True))
    model.apply(PrivateMessage(8, "bob", "psst", STAMP, False, "ff"))
    changes = model.take_changes()
    assert changes.notify == [("bob in #common", "alice: lunch?"),
                              ("bob (private message)", "psst")]
    assert model.unread == 2 and changes.bell
    model.apply(StatusChanged("alice", "dnd", "", STAMP))
    model.apply(message("alice again", id=9))
    assert model.take_changes().notify == []  # do not disturb keeps the desktop quiet


def test_a_notification_is_short_and_on_one_line() -> None:
    title, body = chatview.notification_text(message("a\nb  " + "x" * 500))
    assert title == "bob in #common" and "\n" not in body
    assert len(body) == chatview.NOTIFICATION_CHARS and body.endswith("…")


def test_a_refused_message_comes_back_to_the_input() -> None:
    model = logged_in_model()
    model.sent("/msg bob are you there?")
    model.sent("hello room")
    model.apply(message("hello room", user="alice", id=9, own=True))  # echoed: it was sent
    model.apply(ErrorEvent("dnd", "bob does not want to be disturbed", "private"))
    changes = model.take_changes()
    assert changes.unsent == [("/msg bob are you there?",
                               "Not sent: bob does not want to be disturbed")]
    assert "Not sent: bob does not want to be disturbed" in changes.lines[-1].text
    model.apply(ErrorEvent("dnd", "again", "private"))  # nothing of ours was waiting
    assert model.take_changes().unsent == []


def test_the_link_says_which_line_it_could_not_send() -> None:
    model = logged_in_model()
    model.sent("hello")
    model.apply(chatview.NotSent("offline", "Not sent: you are not connected right now.",
                                 line="hello"))
    assert model.take_changes().unsent == [("hello", "Not sent: you are not connected right now.")]
    assert len(model.outbox) == 0


def test_the_outbox_is_bounded_and_forgets_old_lines() -> None:
    clock = [0.0]
    outbox = chatview.Outbox(limit=3, patience=10, clock=lambda: clock[0])
    for number in range(5):
        outbox.sent(f"line {number}")
    assert len(outbox) == 3
    clock[0] = 11
    assert outbox.refused(ErrorEvent("x", "y", "message")) is None
    assert len(outbox) == 0


def test_links_are_found_without_trailing_punctuation() -> None:
    assert chatview.find_links("see https://example.org/a?b=1, and www.python.org.") == [
        (4, 29, "https://example.org/a?b=1"), (35, 49, "https://www.python.org")]
    assert chatview.find_links("(https://en.wikipedia.org/wiki/Tk_(toolkit))")[0][2] == \
        "https://en.wikipedia.org/wiki/Tk_(toolkit)"
    assert chatview.find_links("javascript:alert(1) file:///etc/passwd") == []


def test_full_time_for_the_tooltip() -> None:
    local = NOW.astimezone()
    shown = chatview.full_time("2026-11-29T19:40:05.000Z")
    assert shown.startswith(local.strftime("%A")) and local.strftime("%H:%M:05") in shown
    assert "2026" in shown and chatview.full_time("junk") == ""


@pytest.mark.parametrize("gtk, scheme, apple, theme", [
    ("'Adwaita'", "'default'", "", "light"),
    ("'Adwaita'", "'prefer-dark'", "", "dark"),
    ("'Yaru-dark'", "", "", "dark"),
    ("", "", "Dark\n", "dark"),
    ("", "", "", "light"),
])
def test_the_theme_follows_the_system(gtk: str, scheme: str, apple: str, theme: str) -> None:
    assert chatview.system_theme(gtk, scheme, apple) == theme


def test_a_takeover_is_reported_as_one_by_the_library() -> None:
    """The window stays offline on `Disconnected.replaced` (tests/test_pacing.py shows the
    library sets it for the server's "logged in elsewhere")."""
    assert Disconnected("logged in elsewhere", True, replaced=True).replaced
    assert not Disconnected("server shutting down", True).replaced


def test_right_to_left_text_is_put_in_visual_order() -> None:
    pytest.importorskip("bidi", reason="python-bidi is not installed (requirements-gui.txt)")
    assert chatview.bidi_display("plain text") == "plain text"
    # Hebrew: the letters of "shalom" come out reversed, for Tk to draw left to right.
    assert chatview.bidi_display("\u05e9\u05dc\u05d5\u05dd") == "\u05dd\u05d5\u05dc\u05e9"
    shaped = chatview.bidi_display("hi \u0645\u0646 ok")  # Arabic "min": joined forms
    assert shaped.startswith("hi ") and shaped.endswith(" ok")
    assert all(0xFE70 <= ord(ch) <= 0xFEFF for ch in shaped[3:-3])


def test_member_tooltip_has_the_whole_note() -> None:
    model = logged_in_model()
    note = "out for a long lunch, back at three, call me if it is urgent"
    model.apply(StatusChanged("bob", "away", note, STAMP))
    assert model.member_tooltip("bob") == f"bob · away\n{note}"
    assert model.member_rows()[1][2].endswith("…")  # the list itself shows it cut


def test_preferences_are_remembered(tmp_path: Path) -> None:
    assert chatview.load_preferences(tmp_path) == chatview.Preferences("system", True)
    chatview.save_preferences(tmp_path, chatview.Preferences("dark", False))
    assert chatview.load_preferences(tmp_path) == chatview.Preferences("dark", False)
    (tmp_path / chatview.PREFERENCES_FILE).write_text('{"theme": "neon", "notifications": 1}')
    assert chatview.load_preferences(tmp_path) == chatview.Preferences("system", True)


def test_the_probe_reports_when_the_server_answers_again() -> None:
    posted: queue.Queue[Any] = queue.Queue()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]
        probe = chatview.ServerProbe(posted.put, interval=0.02)
        probe.start("127.0.0.1", port)  # nothing listens yet: refused, again and again
        assert probe.running
        holder.listen()
        event = posted.get(timeout=5)
    assert event == chatview.ServerReachable(f"127.0.0.1:{port}")
    probe.stop()
    assert not probe.running


def test_notifications_never_carry_markup_or_options() -> None:
    import notify

    command = notify.notify_command("<b>bob</b>", "-x & <i>hi</i>", platform="linux",
                                    which=lambda name: f"/usr/bin/{name}")
    assert command is not None and command[0] == "/usr/bin/notify-send"
    assert command[-3:] == ["--", "&lt;b&gt;bob&lt;/b&gt;", "-x &amp; &lt;i&gt;hi&lt;/i&gt;"]
    mac = notify.notify_command("t", 'say "hi"', platform="darwin", which=lambda n: n)
    assert mac is not None and mac[-2:] == ["t", 'say "hi"']  # arguments, not script
    assert notify.notify_command("t", "b", platform="win32") is None
    assert notify.notify_command("t", "b", platform="linux", which=lambda n: None) is None
    off = notify.Notifier(enabled=False)
    assert not off.notify("t", "b") and off.sent == []
