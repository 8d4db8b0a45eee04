"""The window's model of many conversations, without a display: the sidebar's rows and
badges, which view typed lines go to, private views, and scrollback (chatview.ChatModel,
chatscrollback.Scrollback)."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import chattranscripts
import chatview
import identity
import privatestore
from chatlink import PrivateContacts, PrivateHistoryLoaded
from chatsidebar import keyboard_place
from chatview import ChatModel
from client import (
    ErrorEvent,
    HistoryPage,
    MemberInfo,
    PrivateMessage,
    RoomJoined,
    RoomLeft,
    RoomList,
    RoomMessage,
    StatusChanged,
    UserJoined,
    Welcome,
)
from conversations import Gap
from events import PresenceBatch
from privatestore import Contact, HistoryEntry

NOW = datetime(2026, 11, 29, 20, 0, tzinfo=timezone.utc)
STAMP = "2026-11-29T19:40:00.000Z"


def message(text: str, user: str = "bob", *, id: int, room: str = "#common",
            history: bool = False, own: bool = False) -> RoomMessage:
    return RoomMessage(id, room, user, text, STAMP, history, own)


def joined(room: str, members: tuple[str, ...] = ("alice", "bob"),
           history: tuple[RoomMessage, ...] = (), gap: Gap | None = None) -> RoomJoined:
    return RoomJoined(room, tuple(MemberInfo(m, "online") for m in members), history, STAMP,
                      len(members), True, gap)


def private(text: str, peer: str = "bob", *, outgoing: bool = False, id: int = 900) -> PrivateMessage:
    return PrivateMessage(id, peer, text, STAMP, outgoing, "fp")


def model_in(*rooms: str) -> ChatModel:
    """alice logged in; the server puts her back in `rooms` (the first is current)."""
    model = ChatModel(now=lambda: NOW)
    model.logged_in(Welcome("alice", rooms[0], "srv", STAMP), "127.0.0.1:5050")
    for room in rooms:
        model.apply(joined(room))
    model.take_changes()
    return model


def row(model: ChatModel, key: str) -> chatview.SidebarRow:
    return next(r for r in model.sidebar_rows() if r.key == key)


def test_the_joined_frames_of_a_login_list_rooms_without_moving_the_view() -> None:
    model = model_in("#work", "#common", "#design")
    assert model.view == "#work"
    assert [(r.key, r.kind) for r in model.sidebar_rows()] == [
        ("#common", "room"), ("#design", "room"), ("#work", "room")]
    assert row(model, "#work").current and not row(model, "#common").current
    # A join the user asked for shows its room.
    model.sent("/join Ops")
    model.apply(joined("#ops", ("alice",)))
    assert model.view == "#ops" and model.take_changes().redraw


def test_a_message_in_another_room_is_a_badge_until_it_is_opened() -> None:
    model = model_in("#common", "#design")
    model.apply(message("in design", "carol", id=5, room="#design"))
    model.apply(message("here", id=6))  # the room shown: read as it arrives
    changes = model.take_changes()
    assert [line.text for line in changes.lines if "in design" in line.text] == []
    assert changes.rooms
    assert (row(model, "#design").unread, row(model, "#design").badge) == (1, "1")
    assert row(model, "#common").badge == ""
    model.apply(message("mine", "alice", id=7, room="#design", own=True))
    assert row(model, "#design").unread == 1  # my own lines are never unread

    assert model.select("#design") == "#design"  # the server's current room follows
    changes = model.take_changes()
    assert changes.redraw and model.view == "#design"
    assert any("in design" in line.text for line in model.transcript())
    assert row(model, "#design").badge == "" and row(model, "#design").current


def test_a_mention_has_its_own_mark() -> None:
    model = model_in("#common", "#design")
    model.apply(message("lunch?", id=5, room="#design"))
    model.apply(message("alice, are you coming?", id=6, room="#design"))
    model.apply(message("malice aforethought", id=7, room="#design"))
    design = row(model, "#design")
    assert (design.unread, design.mentions, design.badge) == (3, 1, "@1")


def test_a_private_message_opens_a_conversation_of_its_own() -> None:
    model = model_in("#common")
    model.apply(private("psst"))
    assert not any("psst" in line.text for line in model.transcript())
    bob = row(model, "@bob")
    assert (bob.kind, bob.label, bob.unread) == ("private", "bob", 1)
    assert model.select("@bob") is None  # nothing to ask the server
    assert model.view == "@bob" and model.peer == "bob"
    assert [line.kind for line in model.transcript()] == ["private"]
    assert model.title().startswith("alice in private with bob")
    # Typed lines in this view are private messages to bob, through /privatemsg.
    assert model.route("see you at 5") == ("execute", "/privatemsg bob see you at 5", "")
    assert model.route("//slash") == ("execute", "/privatemsg bob /slash", "")
    assert model.route("/status away") == ("execute", "/status away", "")
    model.apply(private("see you at 5", outgoing=True, id=901))
    assert model.take_changes().lines[-1].text.endswith("see you at 5")
    assert row(model, "@bob").unread == 0  # shown as it arrives
    # Back in the room, its lines go to that room by name.
    model.select("#common")
    assert model.route("hello all") == ("say", "#common", "hello all")
    assert "bob" in model.usernames()


def test_keys_step_through_rooms_and_contacts_in_sidebar_order() -> None:
    model = model_in("#common", "#design")
    model.apply(private("hi", "zed"))
    model.apply(UserJoined("#common", "zed", "away", "", STAMP))
    assert row(model, "@zed").status == "away"
    assert model.neighbour(1) == "#design"
    model.select("#design")
    assert model.neighbour(1) == "@zed"
    model.select("@zed")
    assert model.neighbour(1) == "#common" and model.neighbour(-1) == "#design"


def test_leaving_the_room_shown_shows_the_current_one() -> None:
    model = model_in("#common", "#design")
    model.select("#design")
    model.apply(RoomLeft("#design", "#common", STAMP))
    assert model.view == "#common" and "#design" not in model.my_rooms
    assert model.select("#design") is None  # no longer one of mine
    assert "You left #design." in model.transcript()[-1].text


def test_scrolling_back_asks_once_and_puts_older_messages_above() -> None:
    model = model_in("#common")
    model.apply(message("newest", id=50))
    assert model.want_older() == "#common"
    assert model.want_older() == ""  # one request in flight at a time
    page = tuple(message(f"old {n}", id=n, history=True) for n in range(40, 51))  # 50 again
    model.apply(HistoryPage("#common", page, True))
    changes = model.take_changes()
    assert changes.redraw and changes.keep_place
    texts = [line.text for line in model.transcript()]
    assert sum("newest" in t for t in texts) == 1  # no duplicate of id 50
    olds = [t for t in texts if " old " in f" {t.split('  ', 2)[-1]} "]
    assert [t.rsplit(" ", 1)[-1] for t in olds] == [str(n) for n in range(40, 50)]
    assert texts.index(olds[-1]) < next(i for i, t in enumerate(texts) if "newest" in t)

    assert model.want_older() == "#common"  # the next page
    model.apply(HistoryPage("#common", (message("first ever", id=3, history=True),), False))
    transcript = model.transcript()
    marker = next(i for i, line in enumerate(transcript) if line.kind == "beginning")
    assert "the beginning of #common" in transcript[marker].text
    assert "first ever" in transcript[marker + 1].text
    assert model.want_older() == ""  # nothing older to ask for


def test_a_refused_history_request_can_be_made_again() -> None:
    model = model_in("#common")
    assert model.want_older() == "#common"
    model.apply(ErrorEvent("bad_request", "not one of your rooms", "history"))
    assert model.want_older() == "#common"
    model.connection_lost("reset", 1.0)
    assert model.scrollback.loading == ""


def test_a_gap_at_login_is_a_line_that_loads_it_and_closes() -> None:
    model = ChatModel(now=lambda: NOW)
    model.logged_in(Welcome("alice", "#common", "srv", STAMP), "h:1")
    history = tuple(message(f"h{n}", id=n, history=True) for n in range(100, 110))
    model.apply(joined("#common", history=history, gap=Gap("#common", 20, 100)))
    transcript = model.transcript()
    gap = next(line for line in transcript if line.kind == "gap")
    assert "up to 79 earlier messages since you were last here — load" in gap.text
    assert transcript.index(gap) < next(i for i, ln in enumerate(transcript) if ln.message_id)

    assert model.want_older() == "#common"
    model.apply(HistoryPage("#common", tuple(message(f"g{n}", id=n, history=True)
                                             for n in range(60, 100)), True))
    transcript = model.transcript()
    gap = next(line for line in transcript if line.kind == "gap")
    assert "up to 39 earlier" in gap.text  # narrowed: ids 21..59 are left
    assert transcript.index(gap) < next(i for i, ln in enumerate(transcript)
                                        if ln.message_id == 60)
    assert model.want_older() == "#common"
    model.apply(HistoryPage("#common", tuple(message(f"s{n}", id=n, history=True)
                                             for n in range(15, 60)), True))
    assert not any(line.kind == "gap" for line in model.transcript())  # reached what was seen
    ids = [line.message_id for line in model.transcript() if line.message_id]
    assert ids == sorted(ids) and len(ids) == len(set(ids))


def test_the_sidebar_lists_the_servers_other_rooms_after_mine() -> None:
    model = model_in("#common")
    model.apply(RoomList((("#common", 2), ("#games", 4)), 2))
    rows = model.sidebar_rows()
    assert [(r.key, r.kind, r.people) for r in rows] == [("#common", "room", 2),
                                                         ("#games", "other", 4)]


def test_private_conversations_are_bounded_with_their_transcripts() -> None:
    model = model_in("#common")
    for number in range(chatview.MAX_VIEWS + 40):
        model.apply(private(f"hello {number}", f"user{number}", id=1000 + number))
    assert len(model.contacts) <= 200
    assert len(model.transcripts) <= chatview.MAX_VIEWS
    newest = f"user{chatview.MAX_VIEWS + 39}"
    assert "hello" in model.transcript(f"@{newest}")[-1].text  # the latest ones are kept
    assert model.transcript("#common")  # and the room shown


def test_a_status_change_is_said_where_that_person_is() -> None:
    model = model_in("#common", "#design")
    model.apply(joined("#design", ("alice", "carol")))
    model.apply(private("hi", "carol"))
    model.take_changes()
    model.apply(StatusChanged("carol", "away", "lunch", STAMP))
    assert not model.take_changes().lines  # not in #common, where carol is not
    for view in ("#design", "@carol"):
        assert model.transcript(view)[-1].text.endswith("• carol is away: lunch")
    assert not any("carol is away" in line.text for line in model.transcript("#common"))


def test_what_was_said_since_last_time_in_another_room_is_unread_at_login() -> None:
    model = ChatModel(now=lambda: NOW)
    model.logged_in(Welcome("alice", "#common", "srv", STAMP), "h:1")
    model.apply(joined("#common"))
    history = tuple(message(f"h{n}" + (" alice?" if n == 105 else ""), id=n, room="#design",
                            history=True) for n in range(100, 110))
    model.apply(joined("#design", history=history, gap=Gap("#design", 20, 100)))
    assert model.view == "#common"  # the login's joined frames do not move the view
    design = row(model, "#design")
    assert (design.unread, design.mentions, design.badge) == (10, 1, "@1")
    assert row(model, "#common").unread == 0


def test_a_presence_batch_updates_members_and_count_and_says_one_line() -> None:
    model = model_in("#big")
    model.apply(RoomList((("#big", 230),), 1))
    model.take_changes()
    model.apply(PresenceBatch("#big", 231, ("carol", "dave"), 57,
                              (("bob", "quit"), ("<b>eve</b>", "")), 56, STAMP))
    changes = model.take_changes()
    assert changes.members and changes.rooms
    assert set(model.members) == {"alice", "carol", "dave"}  # bob left, carol and dave came
    assert (model.members["carol"].status, model.members["carol"].note) == ("online", "")
    assert row(model, "#big").people == 231  # the server's count, not the page's three
    texts = [line.text for line in changes.lines]
    assert len(texts) == 1 and changes.lines[0].kind == "system"
    assert texts[0].endswith("→ carol, dave and 55 others joined; "
                             "← bob, <b>eve</b> and 54 others left (231 online)")
    model.apply(RoomList((("#big", 233),), 1))  # the 15 s refresh keeps the server's count
    assert row(model, "#big").people == 233


def test_a_presence_batch_of_another_room_is_said_there() -> None:
    model = model_in("#common", "#big")
    model.apply(PresenceBatch("#big", 300, ("zed",), 1, (), 0, STAMP))
    assert not model.take_changes().lines
    assert model.transcript("#big")[-1].text.endswith("→ zed joined (300 online)")
    assert row(model, "#big").unread == 0  # arrivals are not unread messages


def _fill(model: ChatModel, room: str, count: int, first_id: int, size: int = 200) -> None:
    for n in range(count):
        model.apply(message("x" * size + f" {room}{n}", id=first_id + n, room=room))


def test_the_total_budget_evicts_the_views_shown_least_recently_first() -> None:
    model = model_in("#a", "#b", "#c")
    one = chattranscripts.line_cost(model._message_line(message("x" * 200 + " #b100", id=1)))
    budget = 900 * one
    model.transcripts.budget = budget
    model.select("#b")
    model.select("#c")
    model.select("#a")  # shown now; #b least recently, then #c
    for room, first in (("#b", 10_000), ("#c", 20_000)):
        _fill(model, room, 600, first)
    assert model.transcripts.total - model.transcripts.cost("#a") <= budget
    c_lines = [line for line in model.transcript("#c") if line.message_id]
    b_lines = [line for line in model.transcript("#b") if line.message_id]
    assert len(c_lines) == 600  # #c, shown more recently, kept everything
    assert 250 < len(b_lines) < 310  # #b, shown longer ago, gave up its oldest lines
    assert b_lines[-1].text.endswith("#b599")  # the newest are kept
    model.select("#b")  # now #c is the one shown least recently
    _fill(model, "#a", 400, 30_000)  # #a is not shown now: over the budget again
    assert len([ln for ln in model.transcript("#c") if ln.message_id]) < 600
    model.select("#a")
    before = {room: model.transcripts.cost(room) for room in ("#b", "#c")}
    model.transcripts.budget = sum(before.values()) + 10 * one  # the others just fit
    _fill(model, "#a", 900, 40_000)  # the view shown does not count against the others
    assert {room: model.transcripts.cost(room) for room in ("#b", "#c")} == before
    assert model.transcript("#a")[-1].text.endswith("#a899")
    model.transcripts.budget = 3000 * one  # more than the view shown can hold on its own:
    _fill(model, "#a", 2100, 50_000)  # it is cut by its own line limit
    assert len(model.transcript("#a")) == chatview.TRANSCRIPT_LIMIT
    assert model.transcript("#a")[-1].text.endswith("#a2099")


def test_an_evicted_message_is_shown_again_when_the_room_sends_it_again() -> None:
    model = model_in("#a", "#b")
    model.transcripts.budget = 10 * chattranscripts.line_cost(model.transcript("#b")[-1])
    _fill(model, "#b", 50, 500, size=10)
    held = {line.message_id for line in model.transcript("#b")}
    assert 500 not in held and 549 in held
    model.apply(joined("#b", history=(message("again", id=500, room="#b", history=True),)))
    assert any(line.message_id == 500 for line in model.transcript("#b"))


def test_line_cost_counts_four_bytes_a_character_and_the_overhead() -> None:
    line = model_in("#a").transcript("#a")[-1]
    chars = sum(len(s.text) for s in line.spans) + len(line.body) + len(line.stamp) + \
        len(line.sender)
    assert chattranscripts.line_cost(line) == 4 * chars + chattranscripts.LINE_OVERHEAD


def test_a_refresh_keeps_the_sidebar_row_the_person_moved_to() -> None:
    items = {"r:#common", "r:#design", "h:private", "p:@bob"}
    # Moved down to #design while #common is shown: a refresh keeps the place (no scroll).
    assert keyboard_place("r:#common", "r:#common", "r:#design", items) == ("r:#design", False)
    assert keyboard_place("r:#common", "r:#common", "h:private", items) == ("h:private", False)
    # The conversation shown changed: to its row, scrolled into view.
    assert keyboard_place("r:#common", "p:@bob", "r:#design", items) == ("p:@bob", True)
    # The focused row went away (a room left): back to the current row.
    assert keyboard_place("r:#common", "r:#common", "r:#games", items) == ("r:#common", True)
    # Nothing shown (before login): nothing focused.
    assert keyboard_place("", "", "", set()) == ("", False)


def test_the_view_shown_alone_over_the_budget_keeps_its_newest_lines() -> None:
    model = model_in("#a")
    one = chattranscripts.line_cost(model._message_line(message("x" * 200 + " #a100", id=1)))
    model.transcripts.budget = 50 * one
    _fill(model, "#a", 120, 100)
    assert model.transcripts.cost("#a") <= model.transcripts.budget
    held = [line for line in model.transcript("#a") if line.message_id]
    assert 40 < len(held) <= 50 and held[-1].text.endswith("#a119")


def _entry(row: int, text: str, direction: str = "in",
           received: str = "2026-11-28T10:00:00.000Z") -> HistoryEntry:
    return HistoryEntry(row, "bob", direction, text, received, received)


def test_the_private_history_fills_a_view_once_marked_as_history_and_not_unread() -> None:
    model = model_in("#common")
    model.apply(PrivateContacts((Contact("Bob", "2026-11-28T10:00:00.000Z", 3),
                                 Contact("carol", "2026-11-27T10:00:00.000Z", 1))))
    assert [(r.key, r.label, r.unread) for r in model.sidebar_rows() if r.kind == "private"] \
        == [("@bob", "Bob", 0), ("@carol", "carol", 0)]
    assert model.view == "#common"  # listed, not shown
    model.apply(private("live one", "Bob"))  # arrived this session, before the view opened
    model.select("@bob")
    assert model.want_private_history() == "Bob"
    assert model.want_private_history() == ""  # asked once
    model.take_changes()
    model.apply(PrivateHistoryLoaded("Bob", (_entry(1, "old question"),
                                             _entry(2, "old answer", "out"),
                                             _entry(3, "live one"))))
    changes = model.take_changes()
    assert changes.redraw
    texts = [line.text for line in model.transcript()]
    assert texts[0] == "── earlier with Bob, from your private history ──"
    assert texts[1].endswith("private  Bob → you  old question")
    assert texts[2].endswith("private  you → Bob  old answer")
    assert sum("live one" in text for text in texts) == 1  # shown live: not twice
    assert [line.kind for line in model.transcript()][1:3] == ["history", "history"]
    assert row(model, "@bob").unread == 0


def test_a_live_message_already_shown_from_the_history_is_not_shown_twice() -> None:
    model = model_in("#common")
    model.select(model.open_private("bob"))
    assert model.want_private_history() == "bob"
    # Recorded in the history just before it was read; its live event comes after.
    recent = (NOW + timedelta(seconds=1)).isoformat().replace("+00:00", "Z")
    model.apply(PrivateHistoryLoaded("bob", (_entry(7, "just now", received=recent),)))
    model.apply(private("just now", "bob"))
    assert sum("just now" in line.text for line in model.transcript()) == 1
    model.apply(private("just now", "bob"))  # the same words again: a new message
    assert sum("just now" in line.text for line in model.transcript()) == 2


def test_a_broken_private_history_is_said_in_its_own_words() -> None:
    code, message, retry = chatview.login_error_text(
        privatestore.DamagedHistoryError("your private history x is damaged"), "alice", "h", 1)
    assert (code, message, retry) == ("history", "your private history x is damaged", False)
    code, message, _retry = chatview.login_error_text(identity.IdentityError("wrong passphrase"),
                                                      "alice", "h", 1)
    assert message == "Your key could not be opened: wrong passphrase"
