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
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable

import commands
from chatinput import InputAction, InputHistory, TabCompleter, interpret_input
from chatlines import LineBuilder
from chatlink import (
    ClientLink,
    Connected,
    ConnectFailed,
    NotSent,
    PrivateContacts,
    PrivateHistoryLoaded,
    Progress,
    ServerProbe,
    ServerReachable,
    batch,
)
from chatoutbox import Outbox, Pending
from chatprivatehistory import PRIVATE_HISTORY_LINES, PrivateHistoryViews
from chatscrollback import PAGE as HISTORY_PAGE
from chatscrollback import Scrollback, gap_line, joined_gap
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
from chatsidebar import SidebarRow, neighbour, private_key, sidebar_rows
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
    tk_can_show_astral,
    tk_safe,
)
from chattranscripts import BUDGET as TRANSCRIPT_BUDGET
from chattranscripts import MAX_VIEWS, TRANSCRIPT_LIMIT, Transcripts
from chatwindow import (
    NOTIFICATION_CHARS,
    STATUS_LABELS,
    Backoff,
    find_links,
    full_time,
    group_hex,
    notification_text,
    presence_text,
    should_autoscroll,
    status_word,
    system_theme,
    wants_attention,
    warning_text,
    window_title,
)
from client import (
    ErrorEvent,
    Event,
    HistoryPage,
    KeyWarning,
    MemberInfo,
    MemberList,
    Notice,
    PrivateMessage,
    PrivateRejected,
    RoomJoined,
    RoomLeft,
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
from conversations import (
    ConversationKey,
    Conversations,
)
from events import PresenceBatch
from rooms import COMMON_ROOM

# Everything that was defined here before the split; the window, the tests and the tools
# import these names from chatview.
__all__ = [
    "CONNECTED", "CONNECTING", "OFFLINE", "RECONNECTING",
    "HISTORY_PAGE", "MAX_VIEWS", "PRIVATE_HISTORY_LINES", "PrivateContacts", "PrivateHistoryLoaded", "TRANSCRIPT_BUDGET", "Transcripts", "Backoff", "Changes", "ChatModel", "ClientLink", "ConnectFailed", "Connected", "DEFAULT_HOST",
    "DEFAULT_PORT", "InputAction", "InputHistory", "KeyWarning", "Line", "LoginRequest",
    "NAME_PALETTE", "NOTE_SHOWN", "NOTIFICATION_CHARS", "NameColours", "NotSent", "OWN_COLOUR",
    "Outbox", "PREFERENCES_FILE", "Pending", "Preferences", "Progress", "REPLACEMENT", "Restore",
    "SETTINGS_FILE", "STATUS_COLOURS", "STATUS_LABELS", "SidebarRow", "ServerProbe", "ServerReachable",
    "Settings", "Span", "THEMES", "TRANSCRIPT_LIMIT", "TabCompleter", "batch", "bidi_display",
    "check_login", "check_room_name", "colour_tag", "find_links", "format_time", "full_time",
    "group_hex", "has_rtl", "interpret_input", "join_surrogates", "load_preferences",
    "load_settings", "login_error_text", "notification_text",
    "save_preferences", "save_settings", "should_autoscroll", "status_word", "system_theme",
    "tk_can_show_astral", "tk_safe", "wants_attention", "warning_text", "window_title",
]

NOTE_SHOWN = 24  # characters of a status note shown in the member list
STATUS_COLOURS = {"online": "#2e9e4f", "away": "#e0a100", "dnd": "#d93025"}


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
    keep_place: bool = False  # with redraw: older lines came in above; keep the reading place
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


class ChatModel(LineBuilder):
    """The session the window displays; fed events, asked for changes.

    The window shows one *view* at a time (`view`): a room the user is in, or a private
    conversation with one contact ("@" + folded name). Each view keeps its own transcript;
    a view that is not shown counts what arrives as unread (and mentions of the user's
    name), which the sidebar shows as badges. It remembers what should survive a
    reconnect (`wanted_room`, `status`, `note`); history a room sends on joining, and
    older pages loaded by scrolling back, are deduplicated by message id.
    """

    def __init__(self, me: str = "", *, astral: bool = False,
                 now: Callable[[], datetime] | None = None) -> None:
        self.me = me
        self.astral = astral
        self._now = now or (lambda: datetime.now().astimezone())
        self.colours = NameColours(me)
        self.room = ""  # the server's current room: the one joined last
        self.view = ""  # what the window shows: a room, or "@" + a contact's folded name
        self.wanted_room = COMMON_ROOM
        self.status = "online"
        self.note = ""
        self.connection = CONNECTING
        self.connection_detail = ""
        self.my_rooms: list[str] = []  # the rooms the user is in, in the order joined
        self._members: dict[str, dict[str, MemberInfo]] = {}  # room -> folded name -> info
        self.rooms: dict[str, int] = {}  # every room the server listed -> people online
        self.known_users: dict[str, str] = {}  # casefold -> name, for Tab completion
        self.key_warnings: dict[str, KeyWarning] = {}
        self.focused = True
        self.unread = 0  # attention while the window was not focused (the title's count)
        self.logged_in_once = False
        self.scrollback = Scrollback(TRANSCRIPT_LIMIT)
        # Unread counts, mentions and gaps per conversation (conversations.py; bounded: 50
        # rooms, 200 contacts), fed here on the Tk thread from the events the model applies.
        self.conversations = Conversations(me)
        self._asked_joins: set[str] = set()  # rooms the user asked to go to
        self.private_views = PrivateHistoryViews()  # filled from the local history
        self.transcripts = Transcripts()  # per view; bounded in lines, views and bytes
        self._shown_requests: collections.Counter[str] = collections.Counter()
        self._changes = Changes()
        self.outbox = Outbox()

    # -- asking ---------------------------------------------------------------------------

    def take_changes(self) -> Changes:
        changes, self._changes = self._changes, Changes()
        return changes

    def transcript(self, view: str | None = None) -> list[Line]:
        return self.transcripts.lines(self.view if view is None else view)

    @property
    def contacts(self) -> dict[str, str]:
        """Folded name -> name of every private conversation."""
        return {s.key.name.casefold(): s.key.name for s in self.conversations.summaries()
                if not s.key.is_room}

    def _key(self, view: str) -> ConversationKey:
        if view.startswith("@"):
            return ConversationKey.private(self.contacts.get(view[1:], view[1:]))
        return ConversationKey.room(view)

    def _show(self, view: str) -> None:
        """`view` is what the window shows now: the tracker's current conversation."""
        self.view = view
        self.transcripts.show(view)
        if view:
            self.conversations.open(self._key(view))
        else:
            self.conversations.current = None

    @property
    def peer(self) -> str:
        """The contact of the private view shown ("" when a room is shown)."""
        return self.contacts.get(self.view[1:], self.view[1:]) if self.view.startswith("@") else ""

    @property
    def members(self) -> dict[str, MemberInfo]:
        """Who is in the view: a room's members online, or me and the contact."""
        if not self.view.startswith("@"):
            return self._members.get(self.view, {})
        found: dict[str, MemberInfo] = {}
        for people in self._members.values():
            for key in (self.me.casefold(), self.view[1:]):
                if key in people:
                    found[key] = people[key]
        return found

    def title(self) -> str:
        where = f"private with {self.peer}" if self.peer else self.view
        return window_title(self.me, where, self.connection, self.unread)

    def view_title(self) -> str:
        """The header above the conversation."""
        return tk_safe(self.peer, astral=self.astral) if self.peer else self.view

    def unseen(self, view: str) -> tuple[int, int]:
        """(unread, mentions) of a view."""
        key = self._key(view)
        return self.conversations.unread(key), self.conversations.mentions(key)

    def sidebar_rows(self) -> list[SidebarRow]:
        """My rooms, my private contacts, then the other rooms the server listed."""
        return sidebar_rows(self.my_rooms, self.contacts, self.unseen, self._members,
                            self.rooms, self.view, self.astral)

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
        """(room, members, is the current view), #common first, then by name."""
        rooms = dict(self.rooms)
        for room in self.my_rooms:
            rooms.setdefault(room, len(self._members.get(room, {})))
        names = sorted(rooms, key=lambda r: (r != COMMON_ROOM, r))
        return [(name, rooms[name], name == self.view) for name in names]

    def usernames(self) -> list[str]:
        """Names for Tab completion: the room's members, contacts and anyone seen, not me."""
        names = {m.user.casefold(): m.user for m in self.members.values()}
        names.update(self.known_users)
        names.update(self.contacts)
        names.pop(self.me.casefold(), None)
        return sorted(names.values(), key=str.lower)

    def route(self, line: str) -> tuple[str, str, str]:
        """Where a typed line goes: ("say", room, text) for a message in a room view (sent
        to that room by name), else ("execute", line, ""), a private view's message turned
        into the /privatemsg to its contact that the library sends."""
        try:
            parsed = commands.parse_line(line)
        except CommandError:
            return "execute", line, ""
        if not isinstance(parsed, commands.Say):
            return "execute", line, ""
        if self.peer:
            return "execute", f"/privatemsg {self.peer} {parsed.text}", ""
        return ("say", self.view, parsed.text) if self.view else ("execute", line, "")

    # -- told by the window ---------------------------------------------------------------

    def select(self, view: str) -> str | None:
        """Show `view` (a room of mine or "@contact"); its unread count is cleared.
        Returns the room to make current on the server (so /leave, /list and /history
        mean the room shown), or None."""
        if view not in self.my_rooms and view[1:] not in self.contacts:
            return None
        self._asked_joins.clear()
        self._changes.rooms = self._changes.title = True
        if view != self.view:
            self._changes.redraw = self._changes.members = True
        self._show(view)
        if not view.startswith("@"):
            self.wanted_room = view
            if view != self.room:
                self._asked_joins.add(view)
                return view
        return None

    def neighbour(self, step: int) -> str:
        """The view `step` places from the one shown in the sidebar's order (Ctrl+PageDown
        and Alt+Down: +1), wrapping around."""
        return neighbour(self.sidebar_rows(), self.view, step)

    def open_private(self, peer: str) -> str:
        """A private conversation with `peer`, listed in the sidebar (not shown yet)."""
        key = self.conversations.open(ConversationKey.private(peer))
        current = self._key(self.view) if self.view else None
        self.conversations.current = current  # listed, not shown: the window selects it
        self._changes.rooms = True
        return private_key(key.name)

    def asked_join(self, room: str) -> None:
        """The user asked to go to `room` (clicked it or typed /join): its `joined`
        answer shows it. The `joined` frames of a login do not move the view."""
        self._asked_joins.add(room)

    def want_private_history(self) -> str:
        """The contact whose private history to read now ("" for none): the first time a
        private view is shown (see chatprivatehistory.py)."""
        peer = self.peer
        return peer if peer and self.private_views.want(peer, self.contacts) else ""

    def want_older(self) -> str:
        """The room whose older messages to ask for now ("" for none): see Scrollback."""
        room = self.view
        held = self.transcripts.held(room)
        return room if room in self.my_rooms and self.scrollback.want(room, held) else ""

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

    def sent(self, line: str) -> None:
        """The window handed a typed line to the link (see `Outbox`)."""
        self.outbox.sent(line)
        try:
            parsed = commands.parse_line(line)
        except CommandError:
            return
        if isinstance(parsed, commands.Command) and parsed.name == "join":
            try:
                self._asked_joins.add(check_room_name(parsed.args[0]))
            except ValueError:
                pass

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
        self.conversations.rename_me(welcome.user)
        self.logged_in_once = True
        self.private_views.since = self.private_views.since or self._now()
        # Said where the user is looking (after a drop: where "Connection lost" was said).
        self._add(self._system_line("system", f"{'Reconnected' if again else 'Connected'} to "
                                              f"{where} as {welcome.user}."),
                  view=self.view or welcome.room)
        self.room = welcome.room
        self._show(self.view if self.view.startswith("@") else welcome.room)
        self._asked_joins.clear()
        if restore.room:
            self._asked_joins.add(restore.room)
        self._members.clear()
        self.scrollback.settled()
        self.set_connection(CONNECTED)
        self._changes.redraw = self._changes.members = self._changes.rooms = True
        return restore

    def connection_lost(self, reason: str, retry_in: float | None) -> None:
        state = RECONNECTING if retry_in is not None else OFFLINE
        self.set_connection(state, f"Connection lost: {reason}.")
        self._members.clear()
        self.scrollback.settled()
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
        if self._add(self._message_line(event), view=event.room):
            self._count(ConversationKey.room(event.room), event.user, event.text, event.id,
                        event.own or event.user.casefold() == self.me.casefold())

    def _count(self, key: ConversationKey, sender: str, text: str, message_id: int | None,
               own: bool) -> None:
        """A message shown in a conversation: unread there unless it is mine or shown."""
        self.conversations.note(key, sender=sender, text=text, message_id=message_id,
                                own=own, history=False)
        self._changes.rooms = True

    def _attention(self, event: Event) -> None:
        if wants_attention(event, focused=self.focused, own_status=self.status, me=self.me):
            self.unread += 1
            self._changes.bell = self._changes.title = True
            self._changes.notify.append(notification_text(event))

    def _on_room_joined(self, event: RoomJoined) -> None:
        room = event.room
        first = room not in self.my_rooms
        if first:
            self.my_rooms.append(room)
        asked = room in self._asked_joins or not self.view
        if asked:  # the answer to a join: the server's current room now (at login, the
            self.room = room  # welcome said which one is)
        switching = asked and room != self.view
        self._asked_joins.discard(room)
        self._members[room] = {m.user.casefold(): m for m in event.members}
        self.rooms[room] = max(event.member_count, len(event.members))
        for m in event.members:
            self._know(m.user)
        fresh = [m for m in event.history if not self.transcripts.has_seen(room, m.id)]
        gap = joined_gap(self.conversations, event, self.me)
        if gap is not None and not any(line.kind == "gap" for line in self.transcript(room)):
            self._add(gap_line(gap), view=room)
        if fresh:
            self._add(self._divider(f"earlier in {room}"), view=room)
            for message in fresh:
                self._add(self._message_line(message), view=room)
        others = [m.user for m in event.members if m.user.casefold() != self.me.casefold()]
        company = (f"with {', '.join(others[:8])}{' and others' if len(others) > 8 else ''}"
                   if others else "nobody else is here yet")
        if switching or fresh or first:
            self._add(self._divider(f"you joined {room} · {company}"), view=room)
        if switching:
            self._show(room)
            self.wanted_room = room
            self._changes.redraw = True
        self._changes.members = self._changes.rooms = self._changes.title = True

    def _on_room_left(self, event: RoomLeft) -> None:
        room = event.room
        if room in self.my_rooms:
            self.my_rooms.remove(room)
        self._members.pop(room, None)
        self.conversations.close(ConversationKey.room(room))
        self.scrollback.forget(room)
        self.room = event.room_now
        if self.view == room:
            self._show(event.room_now or (self.my_rooms[0] if self.my_rooms else ""))
            self.wanted_room = self.view or COMMON_ROOM
            self._changes.redraw = self._changes.members = True
        self._add(self._system_line("system", f"You left {room}."))
        self._changes.rooms = self._changes.title = True

    def _on_history_page(self, event: HistoryPage) -> None:
        room = event.room
        fresh = [m for m in event.messages if not self.transcripts.has_seen(room, m.id)]
        ids = [m.id for m in event.messages]
        gap = self.conversations.history_loaded(room, ids, event.more)
        merged = self.scrollback.merge(room, self.transcripts.lines(room),
                                       [self._message_line(m) for m in fresh], event.more, gap)
        self.transcripts.replace(room, merged, (m.id for m in fresh))
        if room == self.view:
            self._changes.redraw = self._changes.keep_place = True

    def _on_user_joined(self, event: UserJoined) -> None:
        self._know(event.user)
        people = self._members.setdefault(event.room, {})
        people[event.user.casefold()] = MemberInfo(event.user, event.status, event.note)
        self.rooms[event.room] = max(self.rooms.get(event.room, 0), len(people))
        self._changes.members = self._changes.rooms = True
        self._add(self._event_line("system", event.time, f"→ {event.user} joined {event.room}"),
                  view=event.room)

    def _on_user_left(self, event: UserLeft) -> None:
        people = self._members.get(event.room, {})
        if people.pop(event.user.casefold(), None):
            self.rooms[event.room] = len(people)
            self._changes.members = self._changes.rooms = True
        reason = event.reason
        if reason.startswith("joined "):
            text = f"← {event.user} went to {reason[len('joined '):]}"
        elif reason in ("", "quit", "goodbye"):
            text = f"← {event.user} left"
        else:
            text = f"← {event.user} left ({reason})"
        self._add(self._event_line("system", event.time, text), view=event.room)

    def _on_presence(self, event: PresenceBatch) -> None:
        """A big room's batch: the names it carries come and go from the member list (a
        page, not everyone), the room's count is the server's exact one."""
        people = self._members.setdefault(event.room, {})
        for user in event.joined:
            self._know(user)
            people[user.casefold()] = MemberInfo(user, "online", "")
        for user, _reason in event.left:
            people.pop(user.casefold(), None)
        self.rooms[event.room] = event.member_count
        self._changes.members = self._changes.rooms = True
        self._add(self._event_line("system", event.time, presence_text(event)), view=event.room)

    def _on_status(self, event: StatusChanged) -> None:
        mine = event.user.casefold() == self.me.casefold()
        folded = event.user.casefold()
        where = [private_key(event.user)] if folded in self.contacts else []
        for room, people in self._members.items():
            member = people.get(folded)
            if member is not None:
                people[folded] = MemberInfo(member.user, event.status, event.note, member.room)
                self._changes.members = self._changes.rooms = True
                where.append(room)
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
        # Said in every room the person shares with the user and in their private view;
        # the user's own change where the user is looking.
        for view in ([self.view] if mine or not where else where):
            self._add(self._event_line("system", event.time, f"• {who} {verb}{note}"), view=view)

    def _on_member_list(self, event: MemberList) -> None:
        if event.room in self.my_rooms or event.room == self.room:
            self._members[event.room] = {m.user.casefold(): m for m in event.members}
            self.rooms[event.room] = max(event.member_count, len(event.members))
            self._changes.members = self._changes.rooms = True
        for m in event.members:
            self._know(m.user)
        if self._take_request("list"):
            people = ", ".join(f"{m.user} ({STATUS_LABELS.get(m.status, m.status)}"
                               f"{': ' + m.note if m.note else ''})" for m in event.members)
            self._add(self._system_line("notice", f"In {event.room}: {people}"))

    def _on_room_list(self, event: RoomList) -> None:
        self.rooms = dict(event.rooms)
        for room in self.my_rooms:
            # The server's count when it lists the room: in a big room the member list is
            # a page, not everyone.
            self.rooms[room] = self.rooms.get(room) or len(self._members.get(room, {}))
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
        if not self.private_views.arrived(event.peer, event.outgoing, event.text, self._now()):
            return  # its line came from the history a moment ago
        self._attention(event)
        key = ConversationKey.private(event.peer)
        view = private_key(event.peer)
        self._add(self._private_line(event), view=view)
        self._count(key, self.me if event.outgoing else event.peer, event.text, None,
                    event.outgoing)
        if event.outgoing and view != self.view:
            # Typed as /privatemsg in another view: said where the user is looking too.
            self._add(self._system_line("system", f"Sent privately to {event.peer}: it is "
                                                  f"in the conversation with {event.peer}."))

    def _on_private_contacts(self, event: PrivateContacts) -> None:
        """The history's contacts at login: listed in the sidebar (nothing unread)."""
        current = self._key(self.view) if self.view else None
        for contact in reversed(event.contacts):  # the most recently active ends up first
            if contact.peer.casefold() not in self.contacts:
                self.conversations.open(ConversationKey.private(contact.peer))
        self.conversations.current = current
        self._changes.rooms = True

    def _on_private_history(self, event: PrivateHistoryLoaded) -> None:
        """A private view's last messages from the history go above its live lines."""
        view = private_key(event.peer)
        live = self.transcript(view)
        entries = self.private_views.merge(event.peer, event.entries, live, self._now())
        if not entries:
            return
        older = [self._divider(f"earlier with {event.peer}, from your private history")]
        older += [self._stored_private_line(event.peer, entry) for entry in entries]
        self.transcripts.replace(view, older + live)
        if view == self.view:
            self._changes.redraw = True

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
        if event.request == "history":
            self.scrollback.settled()
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
        RoomLeft: _on_room_left,
        HistoryPage: _on_history_page,
        UserJoined: _on_user_joined,
        UserLeft: _on_user_left,
        PresenceBatch: _on_presence,
        StatusChanged: _on_status,
        MemberList: _on_member_list,
        RoomList: _on_room_list,
        UserList: _on_user_list,
        PrivateMessage: _on_private,
        PrivateRejected: _on_private_rejected,
        PrivateContacts: _on_private_contacts,
        PrivateHistoryLoaded: _on_private_history,
        KeyWarning: _on_key_warning,
        Notice: _on_notice,
        ErrorEvent: _on_error,
        NotSent: _on_error,
        LibraryNotSent: _on_error,
    }


    # -- bookkeeping ----------------------------------------------------------------------

    def _add(self, line: Line, view: str | None = None) -> bool:
        """Append to a view's transcript (the visible one unless `view` says otherwise);
        False if that message is already there."""
        target = view or self.view or ""
        if not self.transcripts.held(target) and len(self.transcripts) >= MAX_VIEWS:
            self._forget_views()
        if not self.transcripts.add(target, line):
            return False
        for room in self.transcripts.take_cut():  # older lines gone: scrolling back may
            self.scrollback.forget(room)  # fetch them again
        if target == (self.view or ""):
            self._changes.lines.append(line)
        return True

    def _forget_views(self) -> None:
        """Drop the transcripts of conversations the tracker no longer keeps (it holds at
        most ROOM_CAP rooms and CONTACT_CAP contacts), so MAX_VIEWS bounds them."""
        kept = {self.view, ""} | {s.key.name if s.key.is_room else private_key(s.key.name)
                                  for s in self.conversations.summaries()}
        self.transcripts.keep_only(kept)
        self.private_views.asked.intersection_update(self.contacts)  # read again if reopened

    def _know(self, user: str) -> None:
        if user:
            self.known_users[user.casefold()] = user

    def _take_request(self, kind: str) -> bool:
        if self._shown_requests[kind] > 0:
            self._shown_requests[kind] -= 1
            return True
        return False
