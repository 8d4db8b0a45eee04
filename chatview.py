"""What the Gapshape window shows and decides, with no Tk in it.

The Tk side (clientgui.py and the gui* modules) builds the widgets; everything that decides
*what* they show lives here and in the chat* modules beside it, so it can be tested without
a display. Every name below is importable from chatview (see `__all__`):

- chattext.py: `tk_safe` makes any text safe to hand to Tk 8.6 (astral characters such as
  emoji become a visible substitute, control and bidi-override characters cannot garble
  the view); `format_time`, `NameColours` and the `Line`/`Span` records: how an event reads.
- here: `ChatModel`, the session as the window sees it (room, members, rooms, status,
  per-room transcripts, connection state). Events go in through `apply`; the window asks
  `take_changes()` once per tick for what to redraw. Also the `Outbox` of lines awaiting
  the server's echo, `Backoff` (reconnect policy), `window_title` and `wants_attention`
  (title and bell decisions), notifications, links and the system theme.
- chatinput.py: `interpret_input`, `InputHistory` (Up/Down), `TabCompleter` (Tab).
- chatsettings.py: login validation, plain-words login errors and the remembered settings
  and preferences.
- chatlink.py: `ClientLink`, the never-blocking proxy the window uses to drive a
  `client.ChatClient`. Its methods only queue work for its own worker thread; everything
  that comes back (client events and the link's own `Connected` / `ConnectFailed`) is
  handed to `post`, which the window points at a queue it drains with `after()`. Nothing
  there touches Tk. `ServerProbe` watches for the server's port to answer again.
"""
from __future__ import annotations

import collections
import random
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable

import commands
from chatinput import InputAction, InputHistory, TabCompleter, interpret_input
from chatlink import (
    ClientLink,
    Connected,
    ConnectFailed,
    NotSent,
    Progress,
    ServerProbe,
    ServerReachable,
    batch,
)
from chatsettings import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    PREFERENCES_FILE,
    SETTINGS_FILE,
    THEMES,
    LoginRequest,
    Preferences,
    Settings,
    check_login,
    check_room_name,
    load_preferences,
    load_settings,
    login_error_text,
    save_preferences,
    save_settings,
)
from chattext import (
    NAME_PALETTE,
    OWN_COLOUR,
    REPLACEMENT,
    Line,
    NameColours,
    Span,
    bidi_display,
    colour_tag,
    format_time,
    has_rtl,
    join_surrogates,
    server_time,
    tk_can_show_astral,
    tk_safe,
)
from client import (
    ErrorEvent,
    Event,
    KeyWarning,
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
from client import NotSent as LibraryNotSent
from commands import CommandError
from rooms import COMMON_ROOM, STATUS_ALIASES

# Everything that was defined here before the split; the window, the tests and the tools
# import these names from chatview.
__all__ = [
    "CONNECTED", "CONNECTING", "OFFLINE", "RECONNECTING",
    "Backoff", "Changes", "ChatModel", "ClientLink", "ConnectFailed", "Connected", "DEFAULT_HOST",
    "DEFAULT_PORT", "InputAction", "InputHistory", "KeyWarning", "Line", "LoginRequest",
    "NAME_PALETTE", "NOTE_SHOWN", "NOTIFICATION_CHARS", "NameColours", "NotSent", "OWN_COLOUR",
    "Outbox", "PREFERENCES_FILE", "Pending", "Preferences", "Progress", "REPLACEMENT", "Restore",
    "SETTINGS_FILE", "STATUS_COLOURS", "STATUS_LABELS", "ServerProbe", "ServerReachable",
    "Settings", "Span", "THEMES", "TRANSCRIPT_LIMIT", "TabCompleter", "batch", "bidi_display",
    "check_login", "check_room_name", "colour_tag", "find_links", "format_time", "full_time",
    "group_hex", "has_rtl", "interpret_input", "join_surrogates", "load_preferences",
    "load_settings", "login_error_text", "notification_text",
    "save_preferences", "save_settings", "should_autoscroll", "status_word", "system_theme",
    "tk_can_show_astral", "tk_safe", "wants_attention", "warning_text", "window_title",
]

TRANSCRIPT_LIMIT = 2000  # lines kept per room
NOTE_SHOWN = 24  # characters of a status note shown in the member list
STATUS_LABELS = {"online": "online", "away": "away", "dnd": "do not disturb"}
STATUS_COLOURS = {"online": "#2e9e4f", "away": "#e0a100", "dnd": "#d93025"}


# -- reconnecting, title, attention -------------------------------------------------------

class Backoff:
    """Reconnect delays: `first`, doubling up to `limit`, each spread by +-`jitter` so that
    many clients dropped at once do not return in step. `reset()` after a success.

    The limit is short (2 s) because a person waits for the window, not a daemon: a
    refused connection costs the server next to nothing, and the window also probes the
    port (`ServerProbe`) so it comes back as soon as the server does."""

    def __init__(self, first: float = 0.5, factor: float = 2.0, limit: float = 2.0,
                 jitter: float = 0.2, rng: Callable[[], float] = random.random) -> None:
        self.first, self.factor, self.limit, self.jitter, self.rng = first, factor, limit, jitter, rng
        self.attempts = 0

    def next_delay(self) -> float:
        base = min(self.limit, self.first * self.factor ** self.attempts)
        self.attempts += 1
        spread = base * self.jitter * (2 * self.rng() - 1)
        return max(0.1, min(self.limit, base + spread))

    def reset(self) -> None:
        self.attempts = 0


def window_title(user: str, room: str, connection: str, unread: int = 0) -> str:
    """'alice in #common · connected — Gapshape', marked '(2) ' for unseen private messages."""
    mark = f"({unread}) " if unread else ""
    if not user:
        return f"{mark}Gapshape — Log in"
    where = f"{user} in {room}" if room else user
    return f"{mark}{where} · {connection} — Gapshape"


def wants_attention(event: Event, *, focused: bool, own_status: str, me: str = "") -> bool:
    """Ring the bell, mark the title and notify the desktop? For a private message, or a
    room message that mentions `me`, that arrives while the window is not focused, unless
    one's own status is do-not-disturb."""
    if focused or own_status == "dnd":
        return False
    if isinstance(event, PrivateMessage):
        return not event.outgoing
    if isinstance(event, RoomMessage):
        return (bool(me) and not event.own and not event.history
                and event.user.casefold() != me.casefold() and _mentions(event.text, me))
    return False


NOTIFICATION_CHARS = 200  # of a message's text shown in a desktop notification


def notification_text(event: Event) -> tuple[str, str]:
    """(title, body) of the desktop notification for an event that wants attention."""
    if isinstance(event, PrivateMessage):
        title = f"{event.peer} (private message)"
    elif isinstance(event, RoomMessage):
        title = f"{event.user} in {event.room}"
    else:
        return "Gapshape", ""
    text = " ".join(event.text.split())
    if len(text) > NOTIFICATION_CHARS:
        text = text[:NOTIFICATION_CHARS - 1] + "…"
    return title, text


def should_autoscroll(view_bottom: float) -> bool:
    """Follow new lines only if the user has not scrolled up (`view_bottom` from yview)."""
    return view_bottom >= 0.999


def full_time(stamp: str) -> str:
    """'Sunday 29 November 2026, 20:40:05' in local time, for the tooltip over a time."""
    local = server_time(stamp)
    if local is None:
        return ""
    return f"{local.strftime('%A')} {local.day} {local.strftime('%B %Y, %H:%M:%S')}"


_LINK = re.compile(r"\b(?:https?://|www\.)[^\s<>\"']+", re.IGNORECASE)


def find_links(text: str) -> list[tuple[int, int, str]]:
    """(start, end, url) of each web link in `text`; trailing punctuation is not part of
    it, and 'www.x' opens as 'https://www.x'. Only http and https are ever opened."""
    found = []
    for match in _LINK.finditer(text):
        start, url = match.start(), match.group(0)
        while url and url[-1] in ".,;:!?)]}'":
            if url[-1] == ")" and url.count("(") >= url.count(")"):
                break  # a bracket that belongs to the link, as in wiki/Tk_(toolkit)
            url = url[:-1]
        if len(url) <= 4:
            continue
        target = url if url.lower().startswith("http") else "https://" + url
        found.append((start, start + len(url), target))
    return found


def system_theme(gtk_theme: str = "", color_scheme: str = "", apple_style: str = "") -> str:
    """'dark' or 'light' from what the desktop says: GNOME's color-scheme
    ('prefer-dark'), a GTK theme name ending in '-dark', or macOS's AppleInterfaceStyle
    ('Dark'). Light when nothing says otherwise."""
    hints = (color_scheme.strip("'\" \n").lower(), gtk_theme.strip("'\" \n").lower(),
             apple_style.strip().lower())
    if hints[0] == "prefer-dark" or hints[1].endswith(("-dark", ":dark")) or hints[2] == "dark":
        return "dark"
    return "light"



# -- what was sent and not (yet) confirmed -----------------------------------------------

@dataclass(frozen=True)
class Pending:
    """A typed line the client sent and the server has not echoed yet."""

    line: str
    kind: str  # "message" or "private"
    peer: str
    text: str
    sent_at: float


class Outbox:
    """Typed messages waiting for the server's echo, so a refusal can give the person
    their text back instead of losing it.

    The server echoes a room message to its sender and answers a private message with
    `private_sent`; a refusal is an `error` whose `request` names the frame type (and, on
    newer servers, whose `ref` names the frame; the client library does not pass that on
    yet, so the oldest waiting line of that kind is the one refused: frames are answered
    in order). Bounded: at most `limit` lines, each forgotten after `patience` seconds."""

    def __init__(self, limit: int = 50, patience: float = 30.0,
                 clock: Callable[[], float] | None = None) -> None:
        import time as _time
        self.limit, self.patience = limit, patience
        self._clock = clock or _time.monotonic
        self._waiting: collections.deque[Pending] = collections.deque()

    def __len__(self) -> int:
        return len(self._waiting)

    def sent(self, line: str) -> None:
        try:
            parsed = commands.parse_line(line)
        except CommandError:
            return
        if isinstance(parsed, commands.Say):
            self._keep(Pending(line, "message", "", parsed.text, self._clock()))
        elif isinstance(parsed, commands.Command) and parsed.name == "privatemsg":
            self._keep(Pending(line, "private", parsed.args[0], parsed.args[1], self._clock()))

    def _keep(self, pending: Pending) -> None:
        self._expire()
        self._waiting.append(pending)
        while len(self._waiting) > self.limit:
            self._waiting.popleft()

    def _expire(self) -> None:
        now = self._clock()
        while self._waiting and now - self._waiting[0].sent_at > self.patience:
            self._waiting.popleft()

    def confirmed(self, event: Event) -> None:
        """The server's echo of one of our lines arrived: it was sent."""
        if isinstance(event, RoomMessage) and event.own and not event.history:
            self._remove(lambda p: p.kind == "message" and p.text == event.text)
        elif isinstance(event, PrivateMessage) and event.outgoing:
            self._remove(lambda p: (p.kind == "private" and p.text == event.text
                                    and p.peer.casefold() == event.peer.casefold()))

    def refused(self, event: ErrorEvent) -> Pending | None:
        """The line this error refused (None: the error was about something else)."""
        line = getattr(event, "line", "")
        if line:
            return self._remove(lambda p: p.line == line) or Pending(line, "", "", "", 0.0)
        kind = {"message": "message", "private": "private", "get_key": "private"}.get(
            event.request)
        if kind is None:
            return None
        self._expire()
        text = getattr(event, "text", "")  # the library's NotSent names the text it refused
        if text:
            found = self._remove(lambda p: p.kind == kind and p.text == text)
            if found is not None:
                return found
        return self._remove(lambda p: p.kind == kind)

    def _remove(self, match: Callable[[Pending], bool]) -> Pending | None:
        for pending in self._waiting:
            if match(pending):
                self._waiting.remove(pending)
                return pending
        return None


# -- the session as the window sees it ----------------------------------------------------

@dataclass
class Changes:
    """What changed since the window last asked: lines for the visible room and the parts
    to redraw. `redraw` means the visible room changed: show its whole transcript."""

    lines: list[Line] = field(default_factory=list)
    redraw: bool = False
    members: bool = False
    rooms: bool = False
    title: bool = False
    status: bool = False
    banner: bool = False
    connection: bool = False
    bell: bool = False
    manual: bool = False
    unsent: list[tuple[str, str]] = field(default_factory=list)  # (typed line, why)
    notify: list[tuple[str, str]] = field(default_factory=list)  # (title, body)


@dataclass(frozen=True)
class Restore:
    """What to ask for again after a reconnect: a room other than the one the server puts
    us in, and a status other than online (None: nothing to do)."""

    room: str | None
    status: str | None
    note: str = ""


# Connection states, as the title says them.
CONNECTING, CONNECTED, RECONNECTING, OFFLINE = "connecting", "connected", "reconnecting", "offline"


class ChatModel:
    """The session the window displays; fed events, asked for changes.

    It remembers what should survive a reconnect (`wanted_room`, `status`, `note`) and
    keeps one transcript per room, so switching rooms shows what was said there before;
    history a room sends on joining is deduplicated by message id.
    """

    def __init__(self, me: str = "", *, astral: bool = False,
                 now: Callable[[], datetime] | None = None) -> None:
        self.me = me
        self.astral = astral
        self._now = now or (lambda: datetime.now().astimezone())
        self.colours = NameColours(me)
        self.room = ""
        self.wanted_room = COMMON_ROOM
        self.status = "online"
        self.note = ""
        self.connection = CONNECTING
        self.connection_detail = ""
        self.members: dict[str, MemberInfo] = {}
        self.rooms: dict[str, int] = {}
        self.known_users: dict[str, str] = {}  # casefold -> name, for Tab completion
        self.key_warnings: dict[str, KeyWarning] = {}
        self.focused = True
        self.unread = 0
        self.logged_in_once = False
        self._announce_join = False
        self._transcripts: dict[str, collections.deque[Line]] = {}
        self._seen: dict[str, set[int]] = {}
        self._shown_requests: collections.Counter[str] = collections.Counter()
        self._changes = Changes()
        self.outbox = Outbox()

    # -- asking ---------------------------------------------------------------------------

    def take_changes(self) -> Changes:
        changes, self._changes = self._changes, Changes()
        return changes

    def transcript(self, room: str | None = None) -> list[Line]:
        return list(self._transcripts.get(self.room if room is None else room, ()))

    def title(self) -> str:
        return window_title(self.me, self.room, self.connection, self.unread)

    def member_rows(self) -> list[tuple[str, str, str]]:
        """(name, status, text) for the member list: me first, then by name."""
        def order(m: MemberInfo) -> tuple[int, str]:
            return (0 if m.user.casefold() == self.me.casefold() else 1, m.user.casefold())
        rows = []
        for m in sorted(self.members.values(), key=order):
            text = STATUS_LABELS.get(m.status, m.status)
            if m.note:
                note = m.note if len(m.note) <= NOTE_SHOWN else m.note[:NOTE_SHOWN - 1] + "…"
                text += f" · {note}"
            rows.append((tk_safe(m.user, astral=self.astral),
                         m.status, tk_safe(text, astral=self.astral, newlines=False)))
        return rows

    def member_tooltip(self, shown_name: str) -> str:
        """Everything about a person in the member list, uncut: name, status, whole note."""
        for m in self.members.values():
            if tk_safe(m.user, astral=self.astral) == shown_name:
                status = STATUS_LABELS.get(m.status, m.status)
                note = f"\n{tk_safe(m.note, astral=self.astral, newlines=False)}" if m.note else ""
                you = " (you)" if m.user.casefold() == self.me.casefold() else ""
                return f"{tk_safe(m.user, astral=self.astral)}{you} · {status}{note}"
        return ""

    def room_rows(self) -> list[tuple[str, int, bool]]:
        """(room, members, is the current room), #common first, then by name."""
        rooms = dict(self.rooms)
        if self.room:
            rooms.setdefault(self.room, len(self.members))
        names = sorted(rooms, key=lambda r: (r != COMMON_ROOM, r))
        return [(name, rooms[name], name == self.room) for name in names]

    def usernames(self) -> list[str]:
        """Names for Tab completion: the room's members and anyone seen, not me."""
        names = {m.user.casefold(): m.user for m in self.members.values()}
        names.update(self.known_users)
        names.pop(self.me.casefold(), None)
        return sorted(names.values(), key=str.lower)

    # -- told by the window ---------------------------------------------------------------

    def set_focus(self, focused: bool) -> None:
        self.focused = focused
        if focused and self.unread:
            self.unread = 0
            self._changes.title = True

    def expect_listing(self, command: str) -> None:
        """The user typed /rooms, /list or /knowrooms: show the answer in the conversation
        (answers to the window's own background refreshes only update the sidebars)."""
        kind = {"rooms": "rooms", "list": "list", "knowrooms": "users"}.get(command)
        if kind:
            self._shown_requests[kind] += 1

    def set_connection(self, state: str, detail: str = "") -> None:
        self.connection, self.connection_detail = state, detail
        self._changes.connection = self._changes.title = True

    def say(self, kind: str, text: str) -> None:
        """A line from the window itself (errors of the input box, connection news)."""
        self._add(self._system_line(kind, text))

    def dismiss_warning(self, user: str) -> None:
        if self.key_warnings.pop(user.casefold(), None) is not None:
            self._changes.banner = True

    # -- events ---------------------------------------------------------------------------

    def logged_in(self, welcome: Welcome, where: str) -> Restore:
        """A login (first or after a reconnect) succeeded; returns what to re-establish
        (the room and status the user had before the connection dropped)."""
        again = self.logged_in_once
        restore = Restore(
            self.wanted_room if again and self.wanted_room != welcome.room else None,
            self.status if again and self.status != "online" else None,
            self.note)
        self.me = welcome.user
        self.colours.me = welcome.user
        self.logged_in_once = True
        # Said where the user is looking (after a drop: where "Connection lost" was said).
        self._add(self._system_line("system", f"{'Reconnected' if again else 'Connected'} to "
                                              f"{where} as {welcome.user}."),
                  room=self.room or welcome.room)
        self.room = welcome.room
        self._announce_join = True
        self.members.clear()
        self.set_connection(CONNECTED)
        self._changes.redraw = self._changes.members = self._changes.rooms = True
        return restore

    def connection_lost(self, reason: str, retry_in: float | None) -> None:
        state = RECONNECTING if retry_in is not None else OFFLINE
        self.set_connection(state, f"Connection lost: {reason}.")
        self.members.clear()
        self._changes.members = True
        later = f" Trying again in {retry_in:.0f} s." if retry_in is not None else ""
        self._add(self._system_line("error", f"Connection lost: {reason}.{later}"))

    def apply(self, event: Event) -> None:
        """Take one event from the client into the model."""
        handler = self._HANDLERS.get(type(event))
        if handler is not None:
            handler(self, event)

    def _on_room_message(self, event: RoomMessage) -> None:
        self.outbox.confirmed(event)
        self._attention(event)
        self._add(self._message_line(event), room=event.room)

    def _attention(self, event: Event) -> None:
        if wants_attention(event, focused=self.focused, own_status=self.status, me=self.me):
            self.unread += 1
            self._changes.bell = self._changes.title = True
            self._changes.notify.append(notification_text(event))

    def sent(self, line: str) -> None:
        """The window handed a typed line to the link (see `Outbox`)."""
        self.outbox.sent(line)

    def _on_room_joined(self, event: RoomJoined) -> None:
        switching = event.room != self.room
        announce, self._announce_join = switching or self._announce_join, False
        self.room = event.room
        self.wanted_room = event.room
        self.members = {m.user.casefold(): m for m in event.members}
        self.rooms[event.room] = len(event.members)
        for m in event.members:
            self._know(m.user)
        fresh = [m for m in event.history if m.id not in self._seen.get(event.room, set())]
        if fresh:
            self._add(self._divider(f"earlier in {event.room}"))
            for message in fresh:
                self._add(self._message_line(message))
        others = [m.user for m in event.members if m.user.casefold() != self.me.casefold()]
        company = (f"with {', '.join(others[:8])}{' and others' if len(others) > 8 else ''}"
                   if others else "nobody else is here yet")
        if announce or fresh:
            self._add(self._divider(f"you joined {event.room} · {company}"))
        if switching:
            self._changes.redraw = True
        self._changes.members = self._changes.rooms = self._changes.title = True

    def _on_user_joined(self, event: UserJoined) -> None:
        self._know(event.user)
        if event.room == self.room:
            self.members[event.user.casefold()] = MemberInfo(event.user, event.status, event.note)
            self.rooms[event.room] = len(self.members)
            self._changes.members = self._changes.rooms = True
        self._add(self._event_line("system", event.time, f"→ {event.user} joined {event.room}"),
                  room=event.room)

    def _on_user_left(self, event: UserLeft) -> None:
        if event.room == self.room and self.members.pop(event.user.casefold(), None):
            self.rooms[event.room] = len(self.members)
            self._changes.members = self._changes.rooms = True
        reason = event.reason
        if reason.startswith("joined "):
            text = f"← {event.user} went to {reason[len('joined '):]}"
        elif reason in ("", "quit", "goodbye"):
            text = f"← {event.user} left"
        else:
            text = f"← {event.user} left ({reason})"
        self._add(self._event_line("system", event.time, text), room=event.room)

    def _on_status(self, event: StatusChanged) -> None:
        mine = event.user.casefold() == self.me.casefold()
        member = self.members.get(event.user.casefold())
        if member is not None:
            self.members[event.user.casefold()] = MemberInfo(member.user, event.status, event.note,
                                                             member.room)
            self._changes.members = True
        if mine:
            self.status, self.note = event.status, event.note
            self._changes.status = self._changes.title = True
        who = "you" if mine else event.user
        verb = {"online": "are back online" if mine else "is back online",
                "away": "are away" if mine else "is away",
                "dnd": ("do not want to be disturbed (private messages are refused)" if mine
                        else "does not want to be disturbed")}.get(event.status,
                                                                    f"is {event.status}")
        note = f": {event.note}" if event.note else ""
        self._add(self._event_line("system", event.time, f"• {who} {verb}{note}"))

    def _on_member_list(self, event: MemberList) -> None:
        if event.room == self.room:
            self.members = {m.user.casefold(): m for m in event.members}
            self.rooms[event.room] = len(event.members)
            self._changes.members = self._changes.rooms = True
        for m in event.members:
            self._know(m.user)
        if self._take_request("list"):
            people = ", ".join(f"{m.user} ({STATUS_LABELS.get(m.status, m.status)}"
                               f"{': ' + m.note if m.note else ''})" for m in event.members)
            self._add(self._system_line("notice", f"In {event.room}: {people}"))

    def _on_room_list(self, event: RoomList) -> None:
        self.rooms = dict(event.rooms)
        if self.room:
            self.rooms[self.room] = len(self.members) or self.rooms.get(self.room, 0)
        self._changes.rooms = True
        if self._take_request("rooms"):
            listing = ", ".join(f"{name} ({count})" for name, count in event.rooms)
            self._add(self._system_line("notice", f"Rooms: {listing}"))

    def _on_user_list(self, event: UserList) -> None:
        for m in event.users:
            self._know(m.user)
        if self._take_request("users"):
            listing = ", ".join(f"{m.user} in {m.room} ({STATUS_LABELS.get(m.status, m.status)})"
                                for m in event.users)
            self._add(self._system_line("notice", f"Online: {listing}"))

    def _on_private(self, event: PrivateMessage) -> None:
        self._know(event.peer)
        self.outbox.confirmed(event)
        self._attention(event)
        self._add(self._private_line(event))

    def _on_private_rejected(self, event: PrivateRejected) -> None:
        self._add(self._event_line("error", event.time, f"⚠ A private message from {event.peer} "
                                   f"was rejected and not shown: {event.reason}"))

    def _on_key_warning(self, event: KeyWarning) -> None:
        self.key_warnings[event.user.casefold()] = event
        self._changes.banner = self._changes.bell = True
        headline, explanation, pinned, offered = warning_text(event)
        shown = self._now().strftime("%H:%M")
        self._add(Line("warning", (Span(f"{shown}  ", ("time-light",)), Span(headline))))
        self._add(Line("warning", (Span(explanation),)))
        for label, value in (pinned.split(": ", 1), offered.split(": ", 1)):
            self._add(Line("warning", (Span(f"{label}: "), Span(value, ("mono",)))))

    def _on_notice(self, event: Notice) -> None:
        if event.topic == "manual":
            self._changes.manual = True
            return
        if event.topic == "trust":
            for key, warning in list(self.key_warnings.items()):
                if f"trust {warning.user}'s new key" in event.text:
                    self.dismiss_warning(key)
        self._add(self._system_line("notice", event.text))

    def _on_error(self, event: ErrorEvent) -> None:
        refused = self.outbox.refused(event)
        if refused is not None:
            message = event.message if event.message.startswith("Not sent") else \
                f"Not sent: {event.message}"
            self._changes.unsent.append((refused.line, message))
            self._add(self._system_line("error", message))
            return
        self._add(self._system_line("error", f"{event.message}"))

    _HANDLERS: dict[type, Callable[[ChatModel, Any], None]] = {
        RoomMessage: _on_room_message,
        RoomJoined: _on_room_joined,
        UserJoined: _on_user_joined,
        UserLeft: _on_user_left,
        StatusChanged: _on_status,
        MemberList: _on_member_list,
        RoomList: _on_room_list,
        UserList: _on_user_list,
        PrivateMessage: _on_private,
        PrivateRejected: _on_private_rejected,
        KeyWarning: _on_key_warning,
        Notice: _on_notice,
        ErrorEvent: _on_error,
        NotSent: _on_error,
        LibraryNotSent: _on_error,
    }

    # -- building lines -------------------------------------------------------------------

    def _safe(self, text: str) -> str:
        return tk_safe(text, astral=self.astral)

    def _body(self, text: str) -> str:
        """A message's text as Tk should draw it: safe, and right-to-left runs in order."""
        return bidi_display(self._safe(text))

    def _time_span(self, stamp: str) -> Span:
        shown = format_time(stamp, self._now()) if stamp else self._now().strftime("%H:%M")
        return Span(f"{shown or '--:--'}  ", ("time",))

    def _message_line(self, event: RoomMessage) -> Line:
        mine = event.own or event.user.casefold() == self.me.casefold()
        if event.history:
            kind = "history"
        elif mine:
            kind = "own"
        elif self.me and _mentions(event.text, self.me):
            kind = "mention"
        else:
            kind = "message"
        name_tags = ("name", colour_tag(self.colours(event.user)))
        return Line(kind, (self._time_span(event.time),
                           Span(self._safe(event.user), name_tags),
                           Span("  "),
                           Span(self._body(event.text), ("body",))), event.id,
                    stamp=event.time, sender=event.user, body=event.text)

    def _private_line(self, event: PrivateMessage) -> Line:
        arrow = f"you → {event.peer}" if event.outgoing else f"{event.peer} → you"
        # `verified`: the user compared this contact's key out of band (/verify); every
        # private message shown at all has had its signature checked.
        mark = " (verified)" if event.verified else ""
        return Line("private", (self._time_span(event.time),
                                Span("", ("lock",), image="lock"),
                                Span(f" private  {self._safe(arrow)}{mark}", ("private-label",)),
                                Span("  "),
                                Span(self._body(event.text), ("body",))),
                    stamp=event.time, sender=event.peer, body=event.text)

    def _event_line(self, kind: str, stamp: str, text: str) -> Line:
        return Line(kind, (self._time_span(stamp), Span(self._safe(text))), stamp=stamp)

    def _system_line(self, kind: str, text: str) -> Line:
        return Line(kind, (self._time_span(""), Span(self._safe(text))))

    def _divider(self, text: str) -> Line:
        return Line("divider", (Span(f"── {self._safe(text)} ──"),))

    # -- bookkeeping ----------------------------------------------------------------------

    def _add(self, line: Line, room: str | None = None) -> None:
        """Append to a room's transcript (the visible one unless `room` says otherwise)."""
        target = room or self.room or ""
        lines = self._transcripts.setdefault(target, collections.deque(maxlen=TRANSCRIPT_LIMIT))
        if line.message_id is not None:
            seen = self._seen.setdefault(target, set())
            if line.message_id in seen:
                return
            seen.add(line.message_id)
            if len(seen) > 4 * TRANSCRIPT_LIMIT:  # forget the oldest half, roughly
                keep = {ln.message_id for ln in lines if ln.message_id is not None}
                seen.intersection_update(keep)
        lines.append(line)
        if target == (self.room or ""):
            self._changes.lines.append(line)

    def _know(self, user: str) -> None:
        if user:
            self.known_users[user.casefold()] = user

    def _take_request(self, kind: str) -> bool:
        if self._shown_requests[kind] > 0:
            self._shown_requests[kind] -= 1
            return True
        return False


def _mentions(text: str, name: str) -> bool:
    lowered, target = text.casefold(), name.casefold()
    start = lowered.find(target)
    while start >= 0:
        before = lowered[start - 1] if start else " "
        end = start + len(target)
        after = lowered[end] if end < len(lowered) else " "
        if not (before.isalnum() or before in "_-") and not (after.isalnum() or after in "_-"):
            return True
        start = lowered.find(target, start + 1)
    return False


def warning_text(event: KeyWarning) -> list[str]:
    """The lines of a key-change warning, in the conversation and the banner."""
    user = event.user
    return [
        f"⚠ WARNING: {user}'s key has CHANGED.",
        f"Someone may be pretending to be {user}, or {user} may have a new computer. "
        f"Private messages to and from {user} are blocked until you compare fingerprints "
        f"with {user} in person or by phone and then type /trust {user}.",
        # client.KeyWarning carries the readable form /fingerprint shows (12 groups of 5
        # digits), already grouped for reading aloud.
        f"Pinned key: {event.pinned_fingerprint}",
        f"Offered key: {event.offered_fingerprint}",
    ]


def group_hex(fingerprint: str, size: int = 4) -> str:
    """'aaf74119fcd4…' -> 'aaf7 4119 fcd4 …', easier to compare aloud."""
    return " ".join(fingerprint[i:i + size] for i in range(0, len(fingerprint), size))



def status_word(label: str) -> str:
    """The status selector's label ('Do not disturb') -> the protocol word ('dnd')."""
    for word, text in STATUS_LABELS.items():
        if text.casefold() == label.strip().casefold():
            return word
    return STATUS_ALIASES.get(label.strip().lower(), "online")

