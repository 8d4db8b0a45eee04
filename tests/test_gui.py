"""The desktop client driven like a person uses it: a real clientgui.py process on a
virtual display, typed into with `xdotool type`/`key` and clicked with `xdotool click`.

What the widgets show is read from the window's test hook (GAPSHAPE_GUI_PROBE: a JSON
snapshot the GUI rewrites whenever its widgets change); the other side of every
conversation is a terminal-side ChatClient. Every wait polls with a timeout.

Needs Xvfb (or a DISPLAY), xdotool, xprop and openbox (a real window manager, so focus,
decorations and resizing behave as on a desktop); skipped cleanly without them.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from client import (
    Disconnected,
    PrivateMessage,
    RoomJoined,
    RoomMessage,
    StatusChanged,
    UserJoined,
    UserLeft,
    UserList,
)
from conftest import ROOT, make_identity

WAIT = 15.0  # seconds any one expected change may take


# -- the display --------------------------------------------------------------------------

def _start_xvfb() -> tuple[subprocess.Popen[bytes], str]:
    """Xvfb on a display number it picks itself (-displayfd), ready when it answers."""
    read_end, write_end = os.pipe()
    process = subprocess.Popen(
        ["Xvfb", "-displayfd", str(write_end), "-screen", "0", "1280x800x24", "-nolisten", "tcp"],
        pass_fds=(write_end,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(write_end)
    number = b""
    deadline = time.monotonic() + WAIT
    os.set_blocking(read_end, False)
    while not number.endswith(b"\n"):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.skip("Xvfb did not start")
        try:
            chunk = os.read(read_end, 16)
        except BlockingIOError:
            time.sleep(0.02)
            continue
        number += chunk
    os.close(read_end)
    display = f":{number.decode().strip()}"
    socket_path = Path(f"/tmp/.X11-unix/X{display[1:]}")
    while not socket_path.exists():  # -displayfd writes when ready; check the socket anyway
        if time.monotonic() > deadline:
            process.kill()
            pytest.skip("Xvfb's socket did not appear")
        time.sleep(0.02)
    return process, display


def _start_window_manager(display: str) -> subprocess.Popen[bytes]:
    """openbox on `display`, ready once it has claimed the screen (_NET_SUPPORTING_WM_CHECK
    on the root window, which a window manager sets when it starts managing)."""
    env = {**os.environ, "DISPLAY": display}
    process = subprocess.Popen(["openbox", "--sm-disable"], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + WAIT
    while True:
        found = subprocess.run(["xprop", "-root", "_NET_SUPPORTING_WM_CHECK"], env=env,
                               capture_output=True, text=True).stdout
        if "window id" in found:
            return process
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.skip("openbox did not start")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def display() -> Iterator[str]:
    pytest.importorskip("tkinter", reason="tkinter is not installed (Debian: python3-tk)")
    for tool, package in (("xdotool", "xdotool"), ("openbox", "openbox"), ("xprop", "x11-utils")):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (Debian: apt-get install {package})")
    if shutil.which("Xvfb"):
        process, name = _start_xvfb()
    elif os.environ.get("DISPLAY"):
        process, name = None, os.environ["DISPLAY"]
    else:
        pytest.skip("no X display: install Xvfb (Debian: apt-get install xvfb xauth)")
    manager = _start_window_manager(name)
    try:
        yield name
    finally:
        manager.terminate()
        manager.wait(5)
        if process is not None:
            process.terminate()
            process.wait(5)


# -- the window under test ----------------------------------------------------------------

class Gui:
    """One clientgui.py process, its probe file, and xdotool aimed at its display."""

    def __init__(self, display: str, home: Path, probe: Path, *args: str,
                 env: dict[str, str] | None = None) -> None:
        self.display, self.home, self.probe = display, home, probe
        self.env = {**os.environ, "DISPLAY": display, "GAPSHAPE_HOME": str(home),
                    "GAPSHAPE_GUI_PROBE": str(probe), **(env or {})}
        self.env.pop("GAPSHAPE_PASSPHRASE", None)
        probe.unlink(missing_ok=True)
        self.process = subprocess.Popen([sys.executable, str(ROOT / "clientgui.py"), *args],
                                        env=self.env, cwd=ROOT, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT)
        self.last: dict[str, Any] = {}

    # -- reading what it shows

    def state(self) -> dict[str, Any]:
        try:
            self.last = json.loads(self.probe.read_text("utf-8"))
        except (OSError, ValueError):
            pass
        return self.last

    def wait(self, predicate: Callable[[dict[str, Any]], Any], what: str,
             timeout: float = WAIT) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            state = self.state()
            try:
                if state and predicate(state):
                    return state
            except (KeyError, IndexError, TypeError):
                pass
            if self.process.poll() is not None:
                output = self.process.stdout.read().decode(errors="replace") if self.process.stdout else ""
                raise AssertionError(f"the GUI exited ({self.process.returncode}) while waiting "
                                     f"for {what}:\n{output}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; the window shows:\n"
                                     f"{json.dumps(state, indent=1, ensure_ascii=False)[:4000]}")
            time.sleep(0.05)

    def conversation_has(self, text: str) -> dict[str, Any]:
        return self.wait(lambda s: text in s["conversation"], f"{text!r} in the conversation")

    # -- acting on it, with real X events

    def xdo(self, *args: str) -> str:
        result = subprocess.run(["xdotool", *args], env=self.env, capture_output=True,
                                text=True, timeout=WAIT, check=True)
        return result.stdout.strip()

    def find_window(self, name: str) -> str:
        """The id of the visible window whose title matches `name` (xdotool search)."""
        return self._search("--name", name)

    def find_window_of_class(self, name: str) -> str:
        return self._search("--class", name)

    def _search(self, option: str, value: str) -> str:
        """Ask xdotool until a visible window matches (X has no event to wait on here)."""
        deadline = time.monotonic() + WAIT
        while True:
            found = subprocess.run(["xdotool", "search", "--onlyvisible", option, value],
                                   env=self.env, capture_output=True, text=True).stdout.split()
            if found:
                return found[-1]
            if time.monotonic() > deadline:
                raise AssertionError(f"no window with {option} {value!r}")
            time.sleep(0.05)

    def focus(self, window: str) -> None:
        self.xdo("windowfocus", "--sync", window)

    def click(self, box: list[int], *, repeat: int = 1) -> None:
        x, y, width, height = box
        self.xdo("mousemove", str(x + width // 2), str(y + height // 2),
                 "click", "--repeat", str(repeat), "--delay", "60", "1")

    def type(self, text: str) -> None:
        """Type into the focused widget. xdotool's default 12 ms between keys; a letter
        that arrives while the window is still being mapped is lost, so callers first
        wait for the focus (see `say`)."""
        for run in _runs(text):
            if run.isascii():
                self.xdo("type", "--delay", "12", run)
                continue
            # xdotool types a character missing from the keymap by remapping a spare key
            # first; a key pressed before Tk has seen that remapping arrives as the old
            # key (or nothing). So: one such character at a time, each checked in the
            # input box before the next key.
            for char in run:
                before = self.state().get("input", "")
                self.xdo("type", "--delay", "80", char)
                if self.state().get("screen") == "main":
                    self.wait(lambda s, want=before + char, char=char: s["input"].startswith(want)
                              or s["input"].endswith(char), f"{char!r} typed")

    def key(self, *keys: str) -> None:
        self.xdo("key", "--delay", "30", *keys)

    def say(self, line: str) -> None:
        """Click into the input box, type a line and press Enter."""
        self.click(self.state()["boxes"]["input"])
        self.wait(lambda s: s["focus"] == "input" and s["focused"], "the keyboard in the input")
        self.type(line)
        self.wait(lambda s: s["input"].endswith(line[-3:]), "the typed text in the input")
        self.key("Return")

    def exit_code(self, timeout: float = WAIT) -> int:
        return self.process.wait(timeout)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        if self.process.stdout:
            self.process.stdout.close()


@pytest.fixture
def launch(display: str, tmp_path: Path, key_pool: Any) -> Iterator[Callable[..., Gui]]:
    """launch(*args, user="alice") -> a running GUI whose data dir already holds the
    user's key (so no key is generated), with a probe file in tmp_path."""
    guis: list[Gui] = []

    def start(*args: str, user: str = "alice", key: int = 1, home: Path | None = None,
              env: dict[str, str] | None = None) -> Gui:
        home = home or tmp_path / "gui-home"
        make_identity(home, user, key_pool.get(key))
        gui = Gui(display, home, tmp_path / f"probe-{len(guis)}.json", *args, env=env)
        guis.append(gui)
        gui.wait(lambda s: s["screen"] == "login", "the login window")
        steady(gui, lambda s: s["login"]["boxes"]["connect"])
        gui.focus(gui.find_window("Log in"))
        return gui

    yield start
    for gui in guis:
        gui.stop()


def log_in(gui: Gui) -> dict[str, Any]:
    """Press Enter in the (prefilled) login window, as a returning user does."""
    gui.focus(gui.find_window("Log in"))
    gui.click(gui.state()["login"]["boxes"]["username"])
    gui.key("Return")
    return settled(gui)


def settled(gui: Gui) -> dict[str, Any]:
    """The main window once logged in and laid out (it grows from the login size)."""
    gui.wait(lambda s: s["screen"] == "main" and "connected" in s["title"] and s["members"],
             "the main window")
    return steady(gui, lambda s: s["boxes"]["input"])


def steady(gui: Gui, where: Callable[[dict[str, Any]], list[int]]) -> dict[str, Any]:
    """The state once the widget box `where` picks is on screen and the window has the
    size it asked the window manager for (the probe says `settled`), so a click lands
    where the widget really is."""
    return gui.wait(lambda s: where(s) and s["settled"], "the window laid out at its size")


def barrier(gui: Gui) -> dict[str, Any]:
    """The state once the window has handled every X event sent so far: X delivers in
    order, so when a key typed now shows in the input box, all earlier input is done."""
    gui.type("#")
    state = gui.wait(lambda s: s["input"].endswith("#"), "the window to catch up")
    gui.key("BackSpace")
    gui.wait(lambda s: not s["input"].endswith("#"), "the marker key removed")
    return state


def other_window(gui: Gui) -> subprocess.Popen[bytes]:
    """Another program's window, activated through the window manager, so the GUI is in
    the background as when the person works elsewhere. The caller ends it."""
    other = subprocess.Popen([sys.executable, "-c", "import tkinter as tk; r = tk.Tk(); "
                              "r.title('another program'); r.geometry('300x200'); r.mainloop()"],
                             env=gui.env)
    gui.xdo("windowactivate", "--sync", gui.find_window("another program"))
    gui.wait(lambda s: not s["focused"], "the window to lose focus")
    return other


def pixels(gui: Gui, box: list[int]) -> list[tuple[int, int, int]]:
    """The colours of the screen inside `box` (x, y, width, height), read back from the X
    server with ImageMagick's `import`; skips the test without it."""
    if shutil.which("import") is None:
        pytest.skip("ImageMagick is not installed (Debian: apt-get install imagemagick)")
    x, y, width, height = box
    dump = subprocess.run(["import", "-window", "root", "-crop", f"{width}x{height}+{x}+{y}",
                           "-depth", "8", "txt:-"], env=gui.env, capture_output=True,
                          text=True, timeout=WAIT, check=True).stdout
    found = []
    for line in dump.splitlines()[1:]:
        colour = line.split("#", 1)[1][:6] if "#" in line else ""
        if len(colour) == 6:
            found.append((int(colour[0:2], 16), int(colour[2:4], 16), int(colour[4:6], 16)))
    return found


def _runs(text: str) -> list[str]:
    """`text` cut into runs that are all ASCII or all not."""
    runs: list[str] = []
    for char in text:
        if runs and runs[-1][-1].isascii() == char.isascii():
            runs[-1] += char
        else:
            runs.append(char)
    return runs


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- the tests ----------------------------------------------------------------------------

def test_login_says_what_went_wrong_then_retries_and_remembers(
        launch: Callable[..., Gui], chat_server: Any) -> None:
    host, port = chat_server.address
    gui = launch()
    login = gui.last["login"]
    assert (login["username"], login["host"], login["port"]) == ("", "127.0.0.1", "5050")
    gui.focus(gui.find_window("Log in"))

    gui.click(login["boxes"]["username"])
    gui.type("alice")
    gui.key("Tab")  # Tab selects the next field's text, so typing replaces it
    gui.type(host)
    gui.key("Tab")
    gui.type(str(free_port()))  # nothing listens there
    gui.key("Return")
    state = gui.wait(lambda s: s["login"]["error"], "a login error")
    assert "Nothing is answering" in state["login"]["error"]
    assert "Is the server running" in state["login"]["error"]

    # Click into the field, then Ctrl+/ (Tk's "select all"): typing replaces the selection.
    # (A triple-click is timing-dependent: on a loaded machine it can arrive as 3 clicks.)
    gui.click(state["login"]["boxes"]["port"])
    gui.key("ctrl+slash")
    gui.type(str(port))
    gui.click(state["login"]["boxes"]["connect"])
    state = settled(gui)
    assert state["title"] == "alice in #common · connected — Gapshape"
    assert f"Connected to {host}:{port} as alice." in state["conversation"]

    gui.say("/quit")
    assert gui.exit_code() == 0
    remembered = json.loads((gui.home / "gui-settings.json").read_text())
    assert remembered == {"username": "alice", "host": host, "port": port}

    again = launch()  # the next start offers the remembered values: Enter logs in
    login = again.state()["login"]
    assert (login["username"], login["host"], login["port"]) == ("alice", host, str(port))
    log_in(again)


def test_a_conversation_by_keyboard_and_mouse(launch: Callable[..., Gui], chat_server: Any,
                                              client_factory: Any) -> None:
    host, port = chat_server.address
    bob = client_factory(chat_server, "bob", key=0)
    bob.say("before you came")
    gui = launch("--username", "alice", "--host", host, "--port", str(port))
    state = log_in(gui)
    assert [m["name"] for m in state["members"]] == ["alice", "bob"]
    assert "earlier in #common" in state["conversation"]
    assert "before you came" in state["conversation"]

    # A message typed in the window reaches the terminal client, and back.
    mark = bob.recorder.mark()
    gui.say("hello from the window, héllo ✓")
    bob.recorder.wait_for(lambda e: isinstance(e, RoomMessage)
                          and e.text == "hello from the window, héllo ✓" and e.user == "alice",
                          after=mark)
    bob.say("hi alice 😀 \U0001d400")
    from clientgui import emoji_font_installed
    if emoji_font_installed():  # Tk 8.6.13 draws emoji with a font that has them
        state = gui.conversation_has("bob  hi alice 😀 \U0001d400")
        assert state["astral"]
    else:
        state = gui.conversation_has("bob  hi alice [grinning face] \ufffd")
        assert all(ord(ch) <= 0xFFFF for ch in state["conversation"])

    # Tab completes a command and a name; Enter sends an encrypted private message.
    gui.click(state["boxes"]["input"])
    gui.type("/pri")
    gui.key("Tab")
    gui.type("b")
    gui.key("Tab")
    gui.wait(lambda s: s["input"] == "/privatemsg bob ", "Tab completion")
    gui.type("for your eyes only")
    gui.key("Return")
    sent = bob.recorder.wait_for(lambda e: isinstance(e, PrivateMessage) and not e.outgoing)
    assert (sent.peer, sent.text) == ("alice", "for your eyes only")
    # The private line is in the conversation with bob (its own sidebar entry); the room
    # says where it went.
    state = gui.conversation_has("Sent privately to bob")
    assert "for your eyes only" not in state["conversation"]
    bob_entry = gui.wait(lambda s: [c for c in s["contacts"] if c["name"] == "bob" and c["box"]],
                         "bob in the sidebar")["contacts"][0]
    gui.click(bob_entry["box"])
    state = gui.wait(lambda s: s["view"] == "@bob" and "you → bob  for your eyes only"
                     in s["conversation"], "the private conversation with bob")
    assert state["conversation_images"] >= 1  # the lock
    assert "hello from the window" not in state["conversation"]  # only the private lines

    bob.send_private("alice", "got it")
    gui.conversation_has("bob → you  got it")

    # Up recalls the last line; Escape clears the box.
    gui.key("Up")
    gui.wait(lambda s: s["input"] == "/privatemsg bob for your eyes only", "history recall")
    gui.key("Escape")
    gui.wait(lambda s: s["input"] == "", "a cleared input box")

    # Create a room from the sidebar, then go back to #common by clicking it.
    mark = bob.recorder.mark()
    gui.click(state["boxes"]["new_room"])
    gui.type("design")
    gui.key("Return")
    state = gui.wait(lambda s: s["room"] == "#design" and s["title"].startswith("alice in #design"),
                     "the new room")
    assert [m["name"] for m in state["members"]] == ["alice"]
    state = gui.wait(lambda s: any(r["name"] == "#common" and r["box"] for r in s["rooms"]),
                     "#common in the sidebar")
    common = next(r for r in state["rooms"] if r["name"] == "#common")
    mark = bob.recorder.mark()
    gui.click(common["box"])
    state = gui.wait(lambda s: s["room"] == "#common" and len(s["members"]) == 2,
                     "back in #common")
    # Joining #design did not take alice out of #common: she is in both rooms at once.
    assert not [e for e in bob.recorder.events[mark:] if isinstance(e, (UserLeft, UserJoined))
                and e.user == "alice"]
    assert "hello from the window" in state["conversation"]  # the room's transcript is kept
    assert next(r for r in state["rooms"] if r["name"] == "#common")["count"] == "2"

    # The status selector: open it with a click, pick "Away" with the keyboard.
    mark = bob.recorder.mark()
    gui.click(state["boxes"]["status"])
    gui.find_window_of_class("ComboboxPopdown")  # the list is open: now use the keys
    gui.key("Down", "Return")
    bob.recorder.wait_for(lambda e: isinstance(e, StatusChanged) and e.user == "alice"
                          and e.status == "away", after=mark)
    gui.wait(lambda s: s["status"] == "Away" and s["members"][0]["status"] == "away",
             "alice shown away")

    # A private message while the window is not focused rings and marks the title.
    other = other_window(gui)
    bells = gui.state()["bells"]
    bob.send_private("alice", "are you there?")
    state = gui.wait(lambda s: s["bells"] == bells + 1
                     and s["title"].startswith("(1) alice in #common"),
                     "the bell and the title mark")
    assert state["notifications"][-1] == ["bob (private message)", "are you there?"]
    other.terminate()
    other.wait(5)
    gui.xdo("windowactivate", "--sync", gui.find_window("alice in"))
    gui.wait(lambda s: s["focused"] and s["title"].startswith("alice in"), "the mark cleared")

    # /manual opens a window; Escape closes it.
    gui.say("/manual")
    manual = gui.find_window("Gapshape manual")
    gui.wait(lambda s: s["manual"], "the manual window")
    gui.focus(manual)
    gui.key("Escape")
    gui.wait(lambda s: not s["manual"], "the manual window to close")

    # /quit says goodbye and closes the window.
    mark = bob.recorder.mark()
    gui.focus(gui.find_window("alice in"))
    gui.say("/quit")
    assert gui.exit_code() == 0
    left = bob.recorder.wait_for(lambda e: isinstance(e, UserLeft) and e.user == "alice",
                                 after=mark)
    assert left.reason == "quit"


def test_reconnects_with_backoff_and_restores_room_and_status(
        launch: Callable[..., Gui], server_factory: Any, client_factory: Any) -> None:
    first = server_factory()
    host, port = first.address
    gui = launch("--username", "alice", "--host", host, "--port", str(port))
    state = log_in(gui)
    gui.say("/join ops")
    gui.say("/status away back soon")
    gui.wait(lambda s: s["room"] == "#ops" and s["status"] == "Away", "#ops and away")

    first.stop()
    state = gui.wait(lambda s: "reconnecting" in s["title"] and s["connection_banner"],
                     "the window to say the connection is lost")
    assert "Connection lost" in state["connection_banner"]
    assert "Connection lost" in state["conversation"]
    state = gui.wait(lambda s: s["rooms_stale"], "the room list marked as stale")
    assert "offline" in state["rooms_title"]

    second = server_factory(port=port)  # the server comes back on the same port
    state = gui.wait(lambda s: s["title"] == "alice in #ops · connected — Gapshape"
                     and s["status"] == "Away", "reconnected to #ops, still away", timeout=20)
    assert not state["connection_banner"]
    assert "Reconnected" in state["conversation"]
    gui.wait(lambda s: not s["rooms_stale"] and s["rooms_title"] == "ROOMS", "fresh rooms")
    carol = client_factory(second, "carol", key=2)
    carol.request("users")
    users = carol.recorder.wait_for(UserList)
    alice = next(u for u in users.users if u.user == "alice")
    assert (alice.room, alice.status, alice.note) == ("#ops", "away", "back soon")

    carol.join("#ops")
    carol.recorder.wait_for(lambda e: isinstance(e, RoomJoined) and e.room == "#ops")
    gui.focus(gui.find_window("alice in"))
    gui.key("ctrl+q")  # the same path as the window's close button
    assert gui.exit_code() == 0
    left = carol.recorder.wait_for(lambda e: isinstance(e, UserLeft) and e.user == "alice")
    assert left.reason == "quit"  # a goodbye, not a dropped connection


def test_a_flood_of_hostile_text_neither_crashes_nor_freezes_the_window(
        launch: Callable[..., Gui], server_factory: Any, client_factory: Any) -> None:
    chat = server_factory(rate=0)
    host, port = chat.address
    bob = client_factory(chat, "bob", key=0)
    gui = launch("--username", "alice", "--host", host, "--port", str(port))
    log_in(gui)
    nasty = ["emoji 😀👍🏽🇫🇷", "astral 𝄞𝐀𠀀", "nul \x00 inside", "rtl \u202eoverride",
             "bell \x07 and escape \x1b[31m", "line\nbreak", "zwj 👩\u200d💻"]
    for number in range(3000):
        bob.say(f"{number} {nasty[number % len(nasty)]}")
    bob.say("the last one")
    state = gui.conversation_has("bob  the last one")
    text = state["conversation"]
    assert "2999 " in text
    if state["astral"]:
        assert "emoji 😀👍🏽🇫🇷" in text
    else:
        assert "[grinning face]" in text and "[flag FR]" in text
    # The pump took the flood in bounded batches, and no tick kept the window busy long.
    assert state["stats"]["max_batch"] <= 200
    assert state["stats"]["longest_tick_ms"] < 1000, state["stats"]
    assert all((ord(ch) <= 0xFFFF or state["astral"]) and ch not in "\x00\x07\x1b\u202e"
               for ch in text)
    assert not any(0xD800 <= ord(ch) <= 0xDFFF for ch in text)
    mark = bob.recorder.mark()
    gui.say("still responsive")  # typing right after the flood is handled at once
    bob.recorder.wait_for(lambda e: isinstance(e, RoomMessage) and e.text == "still responsive",
                          after=mark)

    # Scrolled up to read, the view stays put when messages arrive; at the bottom it follows.
    box = state["boxes"]["conversation"]
    gui.xdo("mousemove", str(box[0] + box[2] // 2), str(box[1] + box[3] // 2),
            "click", "--repeat", "15", "--delay", "20", "4")  # the mouse wheel, upwards
    state = gui.wait(lambda s: s["conversation_view"][1] < 0.99, "the view scrolled up")
    bob.say("while you were reading")
    later = gui.conversation_has("while you were reading")
    assert later["conversation_view"][1] < 0.99
    gui.xdo("click", "--repeat", "60", "--delay", "10", "5")  # and back down to the end
    gui.wait(lambda s: s["conversation_view"][1] == 1.0, "the view back at the bottom")
    bob.say("following again")
    state = gui.conversation_has("following again")
    assert state["conversation_view"][1] == 1.0

    gui.say("/quit")
    assert gui.exit_code() == 0


def test_a_changed_key_is_impossible_to_miss(launch: Callable[..., Gui], chat_server: Any,
                                            client_factory: Any, key_pool: Any,
                                            tmp_path: Path) -> None:
    from client import ChatClient, LoginError
    from conftest import Recorder

    host, port = chat_server.address
    bob = client_factory(chat_server, "bob", key=0)
    gui = launch("--username", "alice", "--host", host, "--port", str(port))
    log_in(gui)
    gui.say("/msg bob first contact pins your key")
    bob.recorder.wait_for(lambda e: isinstance(e, PrivateMessage) and not e.outgoing)

    # bob "loses" his key; the operator releases the name; someone logs in with a new key.
    bob.close()
    chat_server.registry.forget("bob")
    home = tmp_path / "new-bob"
    impostor = ChatClient("bob", host, port, data_dir=home,
                          ident=make_identity(home, "bob", key_pool.get(3)), on_event=Recorder())
    deadline = time.monotonic() + WAIT
    while True:
        try:
            impostor.connect()
            break
        except LoginError as exc:  # the old session may not have been reaped yet
            if exc.code != "name_taken" or time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    try:
        bells = gui.state()["bells"]
        impostor.send_private("alice", "it's me, really")
        state = gui.wait(lambda s: s["warning_banner"], "the key warning banner")
        assert "The key of bob has CHANGED" in state["warning_banner"]
        assert "/trust bob" in state["warning_banner"]
        state = gui.conversation_has("WARNING: bob's key has CHANGED")
        assert "it's me, really" not in state["conversation"]
        assert "rejected and not shown" in state["conversation"]
        assert state["bells"] > bells

        gui.say("/trust bob")
        state = gui.wait(lambda s: not s["warning_banner"], "the banner to go after /trust")
        assert "you now trust bob's new key" in state["conversation"]
    finally:
        impostor.close()


def test_a_day_of_use_scrolling_focus_unsent_text_and_layout(
        launch: Callable[..., Gui], server_factory: Any, client_factory: Any) -> None:
    chat_server = server_factory(rate=0)  # bob's bursts must not meet flood control
    host, port = chat_server.address
    bob = client_factory(chat_server, "bob", key=0)
    bob.join("#design")
    bob.recorder.wait_for(lambda e: isinstance(e, RoomJoined) and e.room == "#design")
    gui = launch("--username", "alice", "--host", host, "--port", str(port))
    log_in(gui)
    gui.wait(lambda s: any(r["name"] == "#design" for r in s["rooms"]), "#design listed")

    # Tab completes a room after /join without its '#'.
    gui.click(gui.state()["boxes"]["input"])
    gui.wait(lambda s: s["focus"] == "input", "the keyboard in the input")
    gui.type("/join d")
    gui.key("Tab")
    gui.wait(lambda s: s["input"] == "/join #design ", "/join d completed to #design")
    gui.key("Return")
    state = gui.wait(lambda s: s["room"] == "#design" and len(s["members"]) == 2, "in #design")

    # Enough lines to scroll; at the bottom the view follows.
    for number in range(60):
        bob.say(f"line {number}")
    state = gui.conversation_has("bob  line 59")
    gui.wait(lambda s: s["conversation_view"][1] == 1.0 and not s["new_messages"], "following")

    # Scrolled up, it stays put and counts what arrives on a button; the button goes back.
    box = state["boxes"]["conversation"]
    gui.xdo("mousemove", str(box[0] + box[2] // 2), str(box[1] + box[3] // 2),
            "click", "--repeat", "10", "--delay", "20", "4")
    gui.wait(lambda s: not s["following"] and s["conversation_view"][1] < 0.99,
             "the view scrolled up")
    state = barrier(gui)
    bob.say("while you were reading")
    bob.say("and this too")
    later = gui.wait(lambda s: s["new_messages"] == "↓  2 new messages", "the new messages button")
    assert later["top_line"] == state["top_line"]  # the text read did not move
    state = later
    gui.click(state["boxes"]["new_messages"])
    state = gui.wait(lambda s: s["conversation_view"][1] == 1.0 and not s["new_messages"]
                     and s["focus"] == "input", "back at the end, keyboard in the input")

    # Following survives the window being made smaller, and the side panes fold away at
    # small sizes; 480x360 still shows the input and the conversation.
    window = gui.find_window("alice in")
    gui.xdo("windowsize", "--sync", window, "480", "360")
    state = gui.wait(lambda s: s["size"][0] <= 520 and not s["panes"]["people"]
                     and not s["panes"]["rooms"], "a small window with folded panes")
    bob.say("seen at the small size")
    state = gui.conversation_has("seen at the small size")
    gui.wait(lambda s: s["conversation_view"][1] == 1.0, "still following after the resize")
    assert state["boxes"]["input"] and state["boxes"]["input"][2] > 120
    gui.click(state["boxes"]["rooms_toggle"])  # opened by hand, the rooms pane comes back
    gui.wait(lambda s: s["panes"]["rooms"] and s["focus"] == "input", "the rooms pane opened")
    gui.xdo("windowsize", "--sync", window, "1100", "700")
    state = gui.wait(lambda s: s["panes"]["people"] and s["boxes"]["rooms"], "full layout again")

    # Clicking a room, or a Create that fails, leaves the keyboard in the input box.
    common = next(r for r in gui.wait(lambda s: all(r["box"] for r in s["rooms"]),
                                      "rooms on screen")["rooms"] if r["name"] == "#common")
    gui.click(common["box"])
    gui.wait(lambda s: s["room"] == "#common" and s["focus"] == "input",
             "#common, keyboard in the input")
    bob.join("#common")
    state = gui.wait(lambda s: len(s["members"]) == 2, "bob in #common too")
    gui.click(state["boxes"]["new_room"])
    gui.type("no spaces allowed")
    gui.click(state["boxes"]["new_room_button"])
    state = gui.wait(lambda s: s["focus"] == "input", "the keyboard back in the input")
    gui.type("typed after")
    gui.wait(lambda s: s["input"] == "typed after", "typing lands in the input")
    gui.key("Escape")

    # Shift+Enter composes several lines; Enter sends them as one message.
    mark = bob.recorder.mark()
    gui.type("first line")
    gui.key("shift+Return")
    gui.type("second line")
    gui.wait(lambda s: s["input"] == "first line\nsecond line" and s["input_lines"] == 2,
             "a two-line input")
    gui.key("Return")
    bob.recorder.wait_for(lambda e: isinstance(e, RoomMessage)
                          and e.text == "first line\nsecond line", after=mark)

    # A private message refused (bob does not want to be disturbed) is not lost: it is
    # back in the input, marked not sent, and Resend sends it once bob is back.
    # (A person picked in the list stays picked while the list is redrawn, and the whole
    # of a cut-off note shows on hover.)
    gui.click(gui.state()["member_boxes"]["bob"])
    gui.wait(lambda s: s["picked"] == "bob" and s["focus"] == "input", "bob picked")
    note = "in a meeting until three, please send me a message instead of calling"
    bob.set_status("dnd", note)
    state = gui.wait(lambda s: any(m["name"] == "bob" and m["status"].startswith("do not disturb")
                                   for m in s["members"]), "bob shown as do not disturb")
    assert state["picked"] == "bob"
    box = state["member_boxes"]["bob"]
    gui.xdo("mousemove", str(box[0] + 30), str(box[1] + box[3] // 2))
    gui.wait(lambda s: note in s["tooltip"], "the whole note in a tooltip")
    gui.say("/msg bob are you free?")
    state = gui.wait(lambda s: s["unsent"] and s["input"] == "/msg bob are you free?",
                     "the refused message kept")
    assert "Not sent" in state["unsent"]
    mark = bob.recorder.mark()
    bob.set_status("online")
    # The Resend button is clicked where it is now: the note above it is laid out in an
    # idle pass, so the first state that shows the note may not have the button's place.
    state = gui.wait(lambda s: any(m["name"] == "bob" and m["status"].startswith("online")
                                   for m in s["members"]) and s["boxes"]["resend"],
                     "bob back online, Resend shown")
    gui.click(state["boxes"]["resend"])
    sent = bob.recorder.wait_for(lambda e: isinstance(e, PrivateMessage) and not e.outgoing,
                                 after=mark)
    assert sent.text == "are you free?"
    gui.wait(lambda s: not s["unsent"] and s["input"] == "", "the input cleared once sent")

    # A mention while the window is in the background: notification, bell, title count.
    other = other_window(gui)
    bob.say("alice: look at https://example.org/page")
    state = gui.wait(lambda s: s["title"].startswith("(1) "), "the title count for a mention")
    assert state["notifications"][-1] == ["bob in #common", "alice: look at https://example.org/page"]
    other.terminate()
    other.wait(5)
    gui.xdo("windowactivate", "--sync", gui.find_window("alice in"))
    gui.wait(lambda s: s["focused"] and not s["title"].startswith("("), "the count cleared")

    # Ctrl+F finds text in the conversation; Escape closes the bar.
    gui.key("ctrl+f")
    gui.wait(lambda s: s["focus"] == "search", "the search bar")
    gui.type("SECOND line")
    state = gui.wait(lambda s: s["search"] == "1 of 1", "the multi-line message found")
    gui.key("Escape")
    gui.wait(lambda s: s["search"] is None and s["focus"] == "input", "search closed")
    gui.say("/quit")
    assert gui.exit_code() == 0


def test_dark_theme_emoji_links_menus_and_tooltips(launch: Callable[..., Gui], chat_server: Any,
                                                   client_factory: Any, tmp_path: Path) -> None:
    opened = tmp_path / "opened.txt"
    browser = tmp_path / "browser.sh"
    browser.write_text(f'#!/bin/sh\necho "$1" >> {opened}\n')
    browser.chmod(0o755)
    host, port = chat_server.address
    bob = client_factory(chat_server, "bob", key=0)
    gui = launch("--username", "alice", "--host", host, "--port", str(port), "--theme", "dark",
                 env={"BROWSER": str(browser)})
    state = log_in(gui)
    assert state["theme"] == "dark"
    bob.say("party 🎉 at https://example.org/party and \u05e9\u05dc\u05d5\u05dd")
    state = gui.wait(lambda s: s["link_boxes"] and s["emoji_box"] and s["settled"],
                     "the message with its link and emoji")
    # Dark: the conversation's background is dark on screen.
    conversation = state["boxes"]["conversation"]
    corner = pixels(gui, [conversation[0] + conversation[2] - 40, conversation[1] + conversation[3] - 30, 8, 8])
    assert all(sum(colour) < 150 for colour in corner), corner[:3]
    from clientgui import emoji_font_installed
    if emoji_font_installed():
        # The emoji is a drawn glyph, not a name in brackets and not an empty box.
        assert "party 🎉 at" in state["conversation"]
        glyph = pixels(gui, state["emoji_box"])
        background = max(set(corner), key=corner.count)
        inked = [c for c in glyph if max(abs(a - b) for a, b in zip(c, background, strict=True)) > 60]
        assert len(inked) > len(glyph) // 16, "the emoji's box is (nearly) empty"
    # Hebrew is handed to Tk, which draws every run left to right, in visual order
    # (with python-bidi from requirements-gui.txt; without it, as it came).
    import importlib.util
    hebrew = "\u05e9\u05dc\u05d5\u05dd"
    shown = hebrew[::-1] if importlib.util.find_spec("bidi") else hebrew
    assert f"and {shown}" in state["conversation"]

    # Hovering over the time shows the full date.
    line = state["last_line_box"]
    gui.xdo("mousemove", str(line[0] + 6), str(line[1] + line[3] // 2))
    state = gui.wait(lambda s: s["tooltip"] and any(year in s["tooltip"] for year in ("2026", "2027")),
                     "the full date in a tooltip")

    # A click on the link opens it with the system's browser.
    url = "https://example.org/party"
    gui.click(state["link_boxes"][url])
    gui.wait(lambda s: url in s["opened_links"], "the link opened")
    deadline = time.monotonic() + WAIT
    while not (opened.exists() and url in opened.read_text()):
        assert time.monotonic() < deadline, "the browser was not started with the link"
        time.sleep(0.05)

    # Right-click on the message: a menu whose first entry copies the message.
    line = gui.state()["last_line_box"]
    gui.xdo("mousemove", str(line[0] + 120), str(line[1] + line[3] // 2), "click", "3")
    gui.wait(lambda s: s["menu_open"], "the context menu")
    gui.key("Down", "Return")
    gui.wait(lambda s: s["copied"].startswith("party 🎉 at https://example.org/party"),
             "the message copied")
    gui.wait(lambda s: s["focus"] == "input", "the keyboard back in the input")
    gui.say("/quit")
    assert gui.exit_code() == 0


def test_twice_the_size_at_200_percent(launch: Callable[..., Gui], chat_server: Any) -> None:
    host, port = chat_server.address
    gui = launch("--username", "alice", "--host", host, "--port", str(port), "--scale", "2")
    state = log_in(gui)
    assert state["scale"] == pytest.approx(2.0, abs=0.01)
    assert state["input_font_px"] >= 28  # 11-12 pt at 192 DPI
    assert state["boxes"]["input"][3] >= 2 * 22  # the input box grew with it
    screen = [1280, 800]
    assert state["size"][0] <= screen[0] and state["size"][1] <= screen[1]
    # At twice the size the bottom row is laid out last: wait for it, do not sample it.
    state = gui.wait(lambda s: s["boxes"]["send"] and s["boxes"]["status"],
                     "the send button and the status selector on screen")
    gui.say("big and readable")
    gui.conversation_has("alice  big and readable")
    gui.say("/quit")
    assert gui.exit_code() == 0


def test_the_people_list_keeps_its_place_when_people_come_and_go(
        launch: Callable[..., Gui], chat_server: Any, client_factory: Any) -> None:
    host, port = chat_server.address
    # Ten more people, on keys the pool has (a key may hold up to three names).
    for number in range(10):
        client_factory(chat_server, f"user{number:02d}", key=(2, 3, 4, 5)[number % 4])
    gui = launch("--username", "alice", "--host", host, "--port", str(port))
    state = log_in(gui)
    gui.xdo("windowsize", "--sync", gui.find_window("alice in"), "760", "400")
    state = gui.wait(lambda s: s["panes"]["people"] and s["members_view"][1] < 1.0
                     and len(s["members"]) == 11, "a people list that scrolls")
    box = state["boxes"]["members"]
    gui.xdo("mousemove", str(box[0] + box[2] // 2), str(box[1] + box[3] // 2),
            "click", "--repeat", "3", "--delay", "30", "5")
    state = gui.wait(lambda s: s["members_view"][0] > 0, "the people list scrolled down")
    state = barrier(gui)
    top = state["members_top"]
    assert top not in ("", "alice")
    late = client_factory(chat_server, "zoe", key=1)
    gui.wait(lambda s: len(s["members"]) == 12, "zoe in the list")
    late.set_status("away", "back soon")
    state = gui.wait(lambda s: s["members"][-1]["status"].startswith("away"), "zoe away")
    assert state["members_top"] == top  # the list did not jump back to the top
    assert state["members_view"][0] > 0


def test_the_theme_is_switched_from_the_menu_and_remembered(
        launch: Callable[..., Gui], chat_server: Any) -> None:
    host, port = chat_server.address
    gui = launch("--username", "alice", "--host", host, "--port", str(port), "--theme", "light")
    log_in(gui)
    gui.say("typed before the switch")
    gui.conversation_has("alice  typed before the switch")
    gui.type("a draft")
    gui.wait(lambda s: s["input"] == "a draft", "a draft in the input")
    # F10 opens the menu bar (Tk's binding); View is the second menu, its seventh entry
    # (after a separator, which the arrows skip) the dark theme; Right opens View with
    # its first entry active.
    gui.key("F10")
    gui.wait(lambda s: s["focus"] != "input", "the menu bar active")
    gui.key("Right", *["Down"] * 5, "Return")
    state = gui.wait(lambda s: s["theme"] == "dark" and s["screen"] == "main", "the dark theme")
    assert "typed before the switch" in state["conversation"]  # rebuilt from the model
    assert state["input"] == "a draft"  # nothing typed is lost
    prefs = json.loads((gui.home / "gui-preferences.json").read_text())
    assert prefs == {"theme": "dark", "notifications": True}


def test_logged_in_elsewhere_stays_offline_and_says_why(
        launch: Callable[..., Gui], chat_server: Any, client_factory: Any) -> None:
    """Another device logging in as alice takes her session over: the window says so and
    does not take the name back by itself (the two would throw each other out forever)."""
    host, port = chat_server.address
    gui = launch("--username", "alice", "--host", host, "--port", str(port))
    log_in(gui)
    phone = client_factory(chat_server, "alice", key=1, home="alice-phone")
    state = gui.wait(lambda s: "from another device" in s["conversation"]
                     and "connected —" not in s["title"], "the takeover explained")
    assert "will not reconnect by itself" in state["conversation"]
    # The phone keeps the name: its messages go through, and it was never thrown out.
    phone.say("the phone has it")
    phone.recorder.wait_for(lambda e: isinstance(e, RoomMessage) and e.text == "the phone has it")
    phone_address = "%s:%d" % phone._sock.getsockname()[:2]
    assert chat_server.state.member("alice").address == phone_address
    assert not phone.recorder.of_type(Disconnected)
