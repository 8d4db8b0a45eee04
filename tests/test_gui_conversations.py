"""The desktop client in many conversations at once, driven like a person: the sidebar's
rooms and private conversations clicked and switched with the keyboard, unread badges and
the mention mark, a private conversation typed in its own view, and scrollback by scrolling
to the top. A real clientgui.py on Xvfb with openbox, a real server, library clients on
the other side; every wait polls the window's probe with a timeout (see test_gui.py)."""
from __future__ import annotations

from typing import Any, Callable

import test_gui
from client import PrivateMessage, RoomJoined, RoomMessage
from test_gui import Gui, log_in

# The display (Xvfb and openbox) and the window launcher of test_gui.py, as fixtures here.
display = test_gui.display
launch = test_gui.launch


def entry(state: dict[str, Any], name: str) -> dict[str, Any]:
    """The sidebar row of a room or contact (KeyError-free: None when absent)."""
    for row in state["rooms"] + state["contacts"]:
        if row["name"] == name:
            return row
    return {}


def bob_in_and_alice_logged_in(launch: Callable[..., Gui], chat_server: Any,
                               client_factory: Any, room: str) -> tuple[Any, Gui]:
    """Bob (a library client) in `room` too, and alice's window logged in."""
    host, port = chat_server.address
    bob = client_factory(chat_server, "bob", key=0)
    bob.join(room)
    bob.recorder.wait_for(lambda e: isinstance(e, RoomJoined) and e.room == room)
    gui = launch("--username", "alice", "--host", host, "--port", str(port))
    log_in(gui)
    return bob, gui


def test_rooms_and_a_private_conversation_from_the_sidebar(
        launch: Callable[..., Gui], chat_server: Any, client_factory: Any) -> None:
    bob, gui = bob_in_and_alice_logged_in(launch, chat_server, client_factory, "#design")
    gui.say("/join design")
    state = gui.wait(lambda s: s["view"] == "#design" and entry(s, "#design").get("current"),
                     "#design shown and highlighted")
    assert [r["name"] for r in state["rooms"] if r["kind"] == "room"] == ["#common", "#design"]

    # Click #common: the view switches, #design stays one of alice's rooms.
    common = gui.wait(lambda s: entry(s, "#common").get("box"), "#common on screen")
    gui.click(entry(common, "#common")["box"])
    gui.wait(lambda s: s["view"] == "#common" and entry(s, "#common")["current"]
             and s["title"].startswith("alice in #common"), "#common shown")

    # A message in #design is a badge there, not a line here.
    bob.say("design review at three", room="#design")
    state = gui.wait(lambda s: entry(s, "#design")["badge"] == "1", "an unread badge")
    assert entry(state, "#design")["unread"] and not entry(state, "#design")["mention"]
    assert "design review" not in state["conversation"]
    # One that names alice is marked as a mention.
    bob.say("alice: can you bring the slides?", room="#design")
    state = gui.wait(lambda s: entry(s, "#design")["badge"] == "@1", "the mention mark")
    assert entry(state, "#design")["mention"]

    # Opening #design shows both lines and clears the badge.
    gui.click(entry(state, "#design")["box"])
    state = gui.wait(lambda s: s["view"] == "#design" and entry(s, "#design")["badge"] == ""
                     and "can you bring the slides?" in s["conversation"], "#design read")
    assert "design review at three" in state["conversation"]
    assert not entry(state, "#design")["unread"]
    # Ctrl+PageUp goes to the room above in the sidebar.
    gui.key("ctrl+Prior")
    gui.wait(lambda s: s["view"] == "#common", "Ctrl+PageUp to #common")

    # A private message opens a conversation of its own, with a badge.
    bob.send_private("alice", "a word in private?")
    state = gui.wait(lambda s: entry(s, "bob").get("badge") == "1" and entry(s, "bob")["box"],
                     "bob's private conversation in the sidebar")
    assert entry(state, "bob")["kind"] == "private"
    assert "a word in private?" not in state["conversation"]
    gui.click(entry(state, "bob")["box"])
    state = gui.wait(lambda s: s["view"] == "@bob" and "bob → you  a word in private?"
                     in s["conversation"], "the private view")
    assert "design review" not in state["conversation"] and entry(state, "bob")["badge"] == ""
    # What is typed there goes to bob as a private message, through the library.
    mark = bob.recorder.mark()
    gui.say("sure, after lunch")
    got = bob.recorder.wait_for(lambda e: isinstance(e, PrivateMessage) and not e.outgoing,
                                after=mark)
    assert (got.peer, got.text) == ("alice", "sure, after lunch")
    state = gui.conversation_has("you → bob  sure, after lunch")
    assert not [e for e in bob.recorder.events[mark:] if isinstance(e, RoomMessage)]
    # Alt+Down wraps around from the last entry to the first.
    gui.key("alt+Down")
    gui.wait(lambda s: s["view"] == "#common" and "sure, after lunch" not in s["conversation"],
             "Alt+Down to #common")
    # /query does what the sidebar does, typed.
    gui.say("/query bob")
    gui.wait(lambda s: s["view"] == "@bob" and entry(s, "bob")["current"], "/query bob")
    gui.say("/query #design")
    gui.wait(lambda s: s["view"] == "#design", "/query #design")
    gui.say("/quit")
    assert gui.exit_code() == 0


def test_scrolling_to_the_top_loads_older_messages_and_a_gap_is_shown(
        launch: Callable[..., Gui], server_factory: Any, client_factory: Any) -> None:
    chat = server_factory(rate=0)  # no flood control: bob writes a long backlog quickly
    host, port = chat.address
    bob = client_factory(chat, "bob", key=0)
    bob.say("before the backlog")
    gui = launch("--username", "alice", "--host", host, "--port", str(port))
    log_in(gui)
    gui.conversation_has("before the backlog")
    gui.say("/quit")  # alice has seen it: the server remembers where she left off
    assert gui.exit_code() == 0

    for number in range(130):
        bob.say(f"backlog {number:03d}")
    bob.recorder.wait_for(lambda e: isinstance(e, RoomMessage) and e.text == "backlog 129")

    again = launch()  # the remembered login
    state = log_in(again)
    assert "backlog 129" in state["conversation"] and "backlog 119" not in state["conversation"]
    state = again.wait(lambda s: s["gap_box"] and "since you were last here — load"
                       in s["conversation"], "the gap line")
    top = state["top_line"]

    # A click on the gap line loads the newest part of it, above what was shown.
    again.click(state["gap_box"])
    state = again.wait(lambda s: "backlog 070" in s["conversation"], "the first older page")
    assert "backlog 069" not in state["conversation"]
    assert "since you were last here — load" in state["conversation"]  # some are left
    assert state["top_line"] == top  # what the person was reading did not move

    # Ctrl+Home: to the top, and the next page above it.
    again.key("ctrl+Home")
    state = again.wait(lambda s: "backlog 020" in s["conversation"], "the page Ctrl+Home asked for")
    assert "backlog 019" not in state["conversation"]
    # The mouse wheel up to the top: the rest of the room, down to its beginning.
    box = state["boxes"]["conversation"]
    again.xdo("mousemove", str(box[0] + box[2] // 2), str(box[1] + box[3] // 2),
              "click", "--repeat", "60", "--delay", "15", "4")
    state = again.wait(lambda s: "the beginning of #common" in s["conversation"],
                       "the beginning of the room")
    assert "since you were last here" not in state["conversation"]  # the gap is closed
    shown = state["conversation"]
    assert shown.count("before the backlog") == 1
    lines = [line for line in shown.splitlines() if "bob  backlog " in line]
    assert [line.rsplit(" ", 1)[-1] for line in lines] == [f"{n:03d}" for n in range(130)]
    # Nothing more to ask for: the mouse wheel at the top asks nothing.
    again.xdo("mousemove", str(box[0] + box[2] // 2), str(box[1] + box[3] // 2),
              "click", "--repeat", "3", "--delay", "30", "4")
    state = again.wait(lambda s: s["conversation_view"][0] == 0.0, "the view at the top")
    assert state["loading_older"] == "" and state["conversation"] == shown


def test_the_sidebar_keeps_the_keyboard_place_across_refreshes_and_enter_shows_it(
        launch: Callable[..., Gui], chat_server: Any, client_factory: Any) -> None:
    bob, gui = bob_in_and_alice_logged_in(launch, chat_server, client_factory, "#games")
    gui.say("/join design")
    gui.wait(lambda s: s["view"] == "#design", "#design shown")
    gui.say("/join games")
    gui.wait(lambda s: s["view"] == "#games", "#games shown")
    gui.say("/query #common")
    gui.wait(lambda s: s["view"] == "#common" and s["sidebar_focus"] == "#common",
             "#common shown and focused in the sidebar")
    # Shift+Tab from the input box takes the keyboard back to the sidebar.
    # Each press waits until the window shows the focus moved from where it was: the probe
    # file may lag, and a press sent on a stale reading would go one widget too far.
    for _ in range(6):
        before = gui.state()["focus"]
        if "treeview" in before:
            break
        gui.key("shift+Tab")
        gui.wait(lambda s, before=before: s["focus"] != before, f"the focus left {before}")
    gui.wait(lambda s: "treeview" in s["focus"], "the keyboard in the sidebar")
    gui.key("Down")
    gui.wait(lambda s: s["sidebar_focus"] == "#design", "Down to #design")
    # Bob's line in #games redraws the sidebar (a badge): the place stays on #design.
    bob.say("a game tonight?", room="#games")
    state = gui.wait(lambda s: entry(s, "#games").get("badge") == "1", "the badge on #games")
    assert state["sidebar_focus"] == "#design" and state["view"] == "#common"
    gui.key("Down")
    gui.wait(lambda s: s["sidebar_focus"] == "#games", "Down to #games")
    # Enter shows the row the keyboard is on (and reads it).
    gui.key("Return")
    state = gui.wait(lambda s: s["view"] == "#games" and entry(s, "#games")["current"]
                     and "a game tonight?" in s["conversation"], "Enter shows #games")
    assert entry(state, "#games")["badge"] == "" and state["sidebar_focus"] == "#games"
    gui.say("/quit")
    assert gui.exit_code() == 0


def test_a_private_conversation_is_there_after_the_window_is_reopened(
        launch: Callable[..., Gui], chat_server: Any, client_factory: Any) -> None:
    host, port = chat_server.address
    bob = client_factory(chat_server, "bob", key=0)
    gui = launch("--username", "alice", "--host", host, "--port", str(port))
    log_in(gui)
    bob.send_private("alice", "remember the blue door")
    state = gui.wait(lambda s: entry(s, "bob").get("box"), "bob in the sidebar")
    gui.click(entry(state, "bob")["box"])
    gui.wait(lambda s: s["view"] == "@bob" and "remember the blue door" in s["conversation"],
             "the private view")
    mark = bob.recorder.mark()
    gui.say("the blue door, noted")
    bob.recorder.wait_for(lambda e: isinstance(e, PrivateMessage) and not e.outgoing, after=mark)
    state = gui.conversation_has("you → bob  the blue door, noted")
    assert state["conversation"].count("remember the blue door") == 1  # no doubles
    gui.say("/quit")
    assert gui.exit_code() == 0

    again = launch()  # a new window, the same data folder
    log_in(again)
    state = again.wait(lambda s: entry(s, "bob").get("box"), "bob listed from the history")
    assert entry(state, "bob")["badge"] == ""  # history is not unread
    again.click(entry(state, "bob")["box"])
    state = again.wait(lambda s: s["view"] == "@bob" and "the blue door, noted"
                       in s["conversation"], "the conversation read from the history")
    shown = state["conversation"]
    assert "from your private history" in shown
    assert "bob → you  remember the blue door" in shown
    assert shown.count("remember the blue door") == 1 and shown.count("blue door, noted") == 1
    again.say("/quit")
    assert again.exit_code() == 0
