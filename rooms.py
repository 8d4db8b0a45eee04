"""Who is online, in which rooms, with which status: the server's state, with no sockets in it.

`ChatState` holds the users and rooms and carries out every chat operation. It speaks to
users only through their `Outbox` (anything with `push(bytes)`), handing it frames already
encoded, so a room message is encoded once however many members receive it. It records
what happened through a `Journal` (the message log), which also remembers each room's
latest messages across restarts, and remembers each user's rooms, last-seen position and
waiting private messages in a `MemberStore` (userstore.UserStore).

A user is a member of any number of rooms (up to MAX_ROOMS_PER_USER) and stays a member
while offline: a login puts them back in their rooms. The *current* room is the one they
joined last; a `message` that names no room goes there. A private message to a registered
user who is offline waits in the store (as the frame, ciphertext and all) until their
client acknowledges it, and its sender is told first that it was queued, then delivered.

Every operation runs under `self.lock`. Pushing never blocks (an outbox only buffers), so
the lock is never held across network I/O; and since each frame reaches every outbox under
the same lock, all members see one order, and a joining user's history snapshot comes
before any live message of that room.
"""
from __future__ import annotations

import base64
import bisect
import operator
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Protocol, Sequence

from errors import (
    DoNotDisturb,
    GapshapeError,
    InvalidName,
    NameTaken,
    QueueFull,
    RequestError,
    UnknownUser,
)
from logformat import line_around
from presence import BATCH_FROM, PresenceBatcher
from protocol import (
    PROTOCOL_VERSION,
    encode_frame,
    encode_frame_with,
    encode_json,
    encode_members,
    frame_around,
    with_field,
)
from userstore import MailboxFull, UserStore

COMMON_ROOM = "#common"
HISTORY_SIZE = 10
MAX_TEXT_CHARS = 8000
MAX_NOTE_CHARS = 200
# Pages keep every answer far below the outbox limit, however big the chat: 200 members
# with 200-character notes are about 180 KB of JSON.
MEMBER_PAGE = 200
USER_PAGE = 200
ROOM_PAGE = 500
TAKEOVER_REASON = "logged in elsewhere"
MAX_ROOMS_PER_USER = 50
HISTORY_PAGE = 100  # scrollback messages in one answer (messagelog.MAX_PAGE)

_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,32}")

STATUSES = ("online", "away", "dnd")
STATUS_ALIASES = {
    "online": "online", "available": "online", "here": "online", "back": "online",
    "away": "away", "afk": "away", "brb": "away", "idle": "away",
    "dnd": "dnd", "do-not-disturb": "dnd", "do_not_disturb": "dnd", "donotdisturb": "dnd",
    "busy": "dnd",
}


_second: tuple[int, str] = (-1, "")  # the last whole second utc_now formatted, and its text


def utc_now() -> str:
    """The server's clock: UTC, ISO 8601 with milliseconds, e.g. 2026-11-29T19:40:00.123Z.

    Every message reads it: the date and time of day are formatted once per second (a
    datetime and its isoformat cost as much as the rest of the message's frame)."""
    global _second
    now = time.time()
    whole = int(now)
    cached = _second  # one read: another thread may replace the pair meanwhile
    if cached[0] != whole:
        cached = (whole, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)))
        _second = cached
    return f"{cached[1]}.{int((now - whole) * 1000):03d}Z"


def validate_name(name: str, what: str = "username") -> str:
    """Return `name` if it follows the naming rules, else raise InvalidName saying why."""
    if not name:
        raise InvalidName(f"{what} is empty")
    if len(name) > 32:
        raise InvalidName(f"{what} is {len(name)} characters long; the maximum is 32")
    if not _NAME.fullmatch(name):
        bad = next(ch for ch in name if not _NAME.fullmatch(ch))
        raise InvalidName(
            f"{what} may contain only letters, digits, '_', '-' and '.' (not {bad!r})"
        )
    return name


def normalize_room(name: str) -> str:
    """'#Gaming' or 'gaming' -> '#gaming'. Room names are case-insensitive."""
    bare = name[1:] if name.startswith("#") else name
    return "#" + validate_name(bare, "room name").lower()


def normalize_status(word: str) -> str:
    """Map a status word or alias (any case) to online, away or dnd."""
    status = STATUS_ALIASES.get(word.strip().lower())
    if status is None:
        raise RequestError(f"unknown status {word[:20]!r}; use online, away or dnd")
    return status


def clean_text(text: str, limit: int, what: str) -> str:
    if len(text) > limit:
        raise RequestError(f"{what} is {len(text)} characters long; the maximum is {limit}")
    return text


class Outbox(Protocol):
    def push(self, data: bytes, urgent: bool = True) -> None:
        """Queue `data`. A frame that is not `urgent` (arrivals and departures) may wait a
        few tens of milliseconds, so that a burst of logins costs each member one send."""


FanOut = Callable[[Iterable[Outbox], bytes, bool], None]


def push_each(outboxes: Iterable[Outbox], data: bytes, urgent: bool = True) -> None:
    """The plain fan-out, one `push` per outbox; the server passes its own
    (`fanout.FanOutSender`), which does the same with less work per member."""
    for outbox in outboxes:
        outbox.push(data, urgent)


_outbox_of = operator.attrgetter("outbox")


class Journal(Protocol):
    """The durable record (messagelog.MessageLog satisfies it)."""

    @property
    def next_id(self) -> int: ...
    def allocate_id(self) -> int: ...
    def append(self, record: dict[str, Any], line: bytes | None = None) -> None:
        """Keep `record`; `line`, if given, is its log line already encoded."""
    def history(self, room: str) -> list[dict[str, Any]]: ...
    def history_before(self, room: str, before_id: int | None = None,
                       limit: int = 100) -> list[dict[str, Any]]: ...
    def rooms(self, *, after: str | None = None, limit: int | None = None) -> list[str]: ...


class MemberStore(Protocol):
    """What is remembered of users between logins (userstore.UserStore satisfies it)."""

    def known(self, user: str) -> bool: ...
    def rooms(self, user: str) -> list[str]: ...
    def add_room(self, user: str, room: str) -> None: ...
    def remove_room(self, user: str, room: str) -> None: ...
    def last_seen(self, user: str) -> int | None: ...
    def set_last_seen(self, user: str, message_id: int) -> None: ...
    def enqueue(self, recipient: str, sender: str, message_id: int, frame: bytes) -> None: ...
    def waiting(self, recipient: str) -> list[Any]: ...
    def remove(self, recipient: str, ids: list[int]) -> list[Any]: ...
    def expire(self) -> list[tuple[int, str, str]]: ...
    def keep_receipt(self, sender: str, frame: bytes) -> None: ...
    def take_receipts(self, sender: str) -> list[bytes]: ...


@dataclass(eq=False, slots=True)
class Member:
    """One logged-in user. Identity is the object: a name can log in again later."""

    name: str
    outbox: Outbox
    public_der: bytes = b""  # the registered key, shared with the registry's entry
    address: str = ""
    room: str = ""  # the current room: where a message that names no room goes
    rooms: dict[str, None] = field(default_factory=dict)  # every room, in joining order
    status: str = "online"
    note: str = ""

    @property
    def key(self) -> str:
        return self.name.casefold()

    def summary(self) -> dict[str, str]:
        return {"user": self.name, "status": self.status, "note": self.note}


class Room:
    """A room's members, kept in name order too, so that any page of them costs O(page)."""

    __slots__ = ("members", "order", "_first_page")

    def __init__(self) -> None:
        self.members: dict[str, Member] = {}  # casefolded name -> member
        self.order: list[str] = []  # the same keys, sorted
        # The first page's JSON and cursor, which every `joined` carries: in a login storm
        # most arrivals fall beyond it, so it is encoded once for many joins.
        self._first_page: tuple[bytes, str | None] | None = None

    def __len__(self) -> int:
        return len(self.members)

    def __iter__(self) -> Iterator[Member]:
        return iter(self.members.values())

    def __contains__(self, member: Member) -> bool:
        return self.members.get(member.key) is member

    def add(self, member: Member) -> None:
        if member.key not in self.members:
            bisect.insort(self.order, member.key)
            self._changed(member.key)
        self.members[member.key] = member

    def remove(self, member: Member) -> None:
        del self.members[member.key]
        self._changed(member.key)
        del self.order[bisect.bisect_left(self.order, member.key)]

    def _changed(self, key: str) -> None:
        """`key` came or goes (or its summary changed): forget the first page if it shows
        there, or if the page's cursor moves (a page that was complete no longer is)."""
        if self._first_page is not None and (
                len(self.order) <= MEMBER_PAGE + 1
                or bisect.bisect_left(self.order, key) <= MEMBER_PAGE):
            self._first_page = None

    def first_page(self) -> tuple[bytes, str | None]:
        """The first MEMBER_PAGE members' summaries as JSON, and the next page's cursor."""
        if self._first_page is None:
            page, cursor = self.page(None, MEMBER_PAGE)
            self._first_page = (encode_json([m.summary() for m in page]), cursor)
        return self._first_page

    def page(self, after: str | None, size: int) -> tuple[list[Member], str | None]:
        """Up to `size` members named after `after` (casefolded), and the next cursor."""
        start = 0 if after is None else bisect.bisect_right(self.order, after.casefold())
        keys = self.order[start : start + size]
        more = start + size < len(self.order)
        return [self.members[key] for key in keys], (keys[-1] if more and keys else None)


def page_of_names(names: list[str], after: str | None, size: int) -> tuple[list[str], str | None]:
    """Up to `size` of the sorted `names` after `after`, and the cursor of the next page."""
    start = 0 if after is None else bisect.bisect_right(names, after)
    chosen = names[start : start + size]
    return chosen, (chosen[-1] if start + size < len(names) and chosen else None)


class ChatState:
    """Users, rooms and presence; every method is one atomic chat operation."""

    def __init__(
        self, journal: Journal, store: MemberStore | None = None, *, server_id: str = "",
        clock: Callable[[], str] = utc_now, limits: dict[str, Any] | None = None,
        registered_name: Callable[[str], str | None] = lambda name: None,
        fan_out: FanOut = push_each,
    ) -> None:
        self.lock = threading.Lock()
        self.fan_out = fan_out
        self.journal = journal
        self.store = store if store is not None else UserStore()  # in-memory SQLite
        self.server_id = server_id
        self.clock = clock
        self.limits = dict(limits or {})  # what `welcome` tells clients of flood control
        # The display name of a registered user (or None): who may get queued messages.
        self.registered_name = registered_name
        self._members: dict[str, Member] = {}
        self._member_order: list[str] = []  # the keys of _members, sorted, for paging
        self._rooms: dict[str, Room] = {COMMON_ROOM: Room()}
        # Arrivals and departures in rooms of BATCH_FROM members or more (presence.py).
        self.presence = PresenceBatcher(self.flush_presence)

    # -- queries --------------------------------------------------------------------------

    def member(self, name: str) -> Member | None:
        with self.lock:
            return self._members.get(name.casefold())

    def list_room(self, member: Member, room_name: str | None = None,
                  after: str | None = None) -> None:
        """One page of a room's members (the member's current room unless named)."""
        room = self._current(member) if room_name is None else normalize_room(room_name)
        with self.lock:
            members = self._rooms.get(room) or Room()
            page, cursor = members.page(after, MEMBER_PAGE)
            self._send(member, {"type": "members", "room": room,
                                "members": [m.summary() for m in page],
                                "member_count": len(members), "next": cursor})

    def list_rooms(self, member: Member, after: str | None = None) -> None:
        """One page of the rooms: those with people in them and those with history. The
        rooms with history come a page at a time from the journal (its index), so the
        cost of a page does not grow with the number of rooms ever used."""
        with self.lock:
            online = sorted(name for name in set(self._rooms) | {COMMON_ROOM}
                            if after is None or name > after)
            logged = self.journal.rooms(after=after, limit=ROOM_PAGE + 1)
            names = sorted(set(online[: ROOM_PAGE + 1]) | set(logged))
            page, cursor = page_of_names(names, None, ROOM_PAGE)
            rooms = [{"room": name, "members": len(self._rooms.get(name, ()))} for name in page]
            self._send(member, {"type": "rooms", "rooms": rooms, "next": cursor})

    def history_page(self, member: Member, room_name: str, before: int | None,
                     limit: int) -> None:
        """Scrollback: up to `limit` (1 to HISTORY_PAGE) messages of one of the member's
        rooms with ids below `before` (None: the latest), oldest first, and whether older
        ones exist. Read from the journal's index outside the lock: it may touch disk."""
        room = normalize_room(room_name)
        if not 1 <= limit <= HISTORY_PAGE:
            raise RequestError(f"a history page holds 1 to {HISTORY_PAGE} messages")
        with self.lock:
            if room not in member.rooms:
                raise RequestError(f"you are not in {room}; join it to read its history")
        try:
            records = self.journal.history_before(room, before, limit)
            more = bool(records) and bool(self.journal.history_before(room, records[0]["id"], 1))
        except ValueError as exc:
            raise RequestError(f"bad history request: {exc}") from None
        except OSError:
            raise RequestError("the server cannot read its history just now") from None
        messages = [{key: value for key, value in r.items() if key != "event"} for r in records]
        self._send(member, {"type": "history", "room": room, "before": before,
                            "messages": messages, "more": more})

    def list_users(self, member: Member, after: str | None = None) -> None:
        """One page of everyone online, with their current room and all their rooms."""
        with self.lock:
            keys, cursor = page_of_names(self._member_order, after and after.casefold(),
                                         USER_PAGE)
            users = [{**m.summary(), "room": m.room, "rooms": list(m.rooms)}
                     for m in (self._members[key] for key in keys)]
            self._send(member, {"type": "users", "users": users,
                                "user_count": len(self._members), "next": cursor})

    # -- sessions -------------------------------------------------------------------------

    def login(self, name: str, outbox: Outbox, *, public_der: bytes = b"",
              address: str = "", take_over: bool = False) -> tuple[Member, Member | None]:
        """Log a user in: `welcome`, then a `joined` for each of their rooms (#common for a
        new user), then the private messages that waited for them and the receipts for
        those they sent.

        If the name is online, raise NameTaken, unless `take_over` (the caller proved the
        registered key): then the old session is logged out, told why with a `bye`, and
        returned so that the caller can close its connection. Returns (new, replaced)."""
        validate_name(name)
        # Read before taking the lock: each read lets go of the GIL and waits to get it back,
        # which under the lock made a login storm hold up routing (docs/PERFORMANCE.md, run
        # 8). Only a session of the same user changes these; one taken over is read again.
        rooms, last_seen = self._stored_profile(name)
        with self.lock:
            replaced = self._members.get(name.casefold())
            if replaced is not None:
                if not take_over:
                    raise NameTaken(f'the username "{name}" is already in use')
                replaced.outbox.push(encode_frame({"type": "bye", "reason": TAKEOVER_REASON}))
                self._logout(replaced, TAKEOVER_REASON)
                rooms, last_seen = self._stored_profile(name)
            member = Member(name=name, outbox=outbox, public_der=public_der, address=address)
            self._members[member.key] = member
            bisect.insort(self._member_order, member.key)
            now = self.clock()
            self.journal.append({"event": "connect", "time": now, "user": name, "address": address})
            self._send(member, {"type": "welcome", "version": PROTOCOL_VERSION, "user": name,
                                "server_id": self.server_id,
                                "room": rooms[-1] if rooms else "", "rooms": rooms,
                                "last_seen": last_seen, "time": now, "limits": self.limits})
            for room in rooms:
                self._enter(member, room, now, last_seen)
            self._deliver_waiting(member)
            return member, replaced

    def _stored_profile(self, name: str) -> tuple[list[str], int | None]:
        """A user's rooms in the store and the last message they saw; a first login is
        recorded in #common."""
        if not self.store.known(name):
            self.store.add_room(name, COMMON_ROOM)
            return [COMMON_ROOM], self.store.last_seen(name)
        return self.store.rooms(name), self.store.last_seen(name)

    def logout(self, member: Member, reason: str) -> None:
        """Take a user offline everywhere (they stay a member of their rooms); safe to
        call twice, and after a takeover."""
        with self.lock:
            self._logout(member, reason)

    # -- operations -----------------------------------------------------------------------

    def join(self, member: Member, room_name: str) -> None:
        """Join a room (creating it) and make it the current one; joining a room one is
        in already only makes it current, and sends its snapshot again."""
        room = normalize_room(room_name)
        # Recorded before taking the lock, as a login's reads are: only the member's own
        # session adds to its rooms.
        if room not in member.rooms:
            if len(member.rooms) >= MAX_ROOMS_PER_USER:
                raise RequestError(f"you are in {len(member.rooms)} rooms, the most one "
                                   "may be in; leave one first")
            self.store.add_room(member.name, room)
        with self.lock:
            self._enter(member, room, self.clock(), None)

    def leave(self, member: Member, room_name: str | None = None) -> None:
        """Stop being a member of a room (the current one unless named)."""
        room = self._current(member) if room_name is None else normalize_room(room_name)
        with self.lock:
            if room not in member.rooms:
                raise RequestError(f"you are not in {room}")
            self.store.remove_room(member.name, room)
            now = self.clock()
            self._leave(member, room, now, "left")
            self.journal.append({"event": "leave", "time": now, "user": member.name,
                                 "room": room})
            self._send(member, {"type": "left", "room": room, "room_now": member.room,
                                "time": now})

    def room_to_post(self, member: Member, text: str, room_name: str | None) -> str:
        """The room a message goes to, once its text is checked (a cluster node checks
        before it submits the message to the others). Membership is checked by the caller,
        under the lock it holds anyway."""
        clean_text(text, MAX_TEXT_CHARS, "message")
        if not text.strip():
            raise RequestError("message is empty")
        return self._current(member) if room_name is None else normalize_room(room_name)

    def post(self, member: Member, text: str, ref: str | None = None,
             room_name: str | None = None) -> int:
        """Send a message to one of the member's rooms (the current one unless named); the
        sender gets it too, as the echo."""
        room = self.room_to_post(member, text, room_name)
        with self.lock:
            if room not in member.rooms:
                raise RequestError(f"you are not in {room}; join it first")
            message_id, data = self._log_message(member, room, text)
            self._push_run(member, room, [data],
                           [data if ref is None else with_field(data, "ref", ref)])
            return message_id

    def post_run(self, member: Member, room: str,
                 messages: Sequence[tuple[str, str | None]]) -> list[tuple[int, GapshapeError]]:
        """Post messages that one member sent in a row to one room (`room` and each text
        already checked by `room_to_post`), each `(text, ref)`: their ids follow each other,
        each is logged, and each member gets their frames as one block, one queue operation
        per member instead of one per message (the largest cost of a busy room,
        docs/PERFORMANCE.md, run 8). Returns the messages not sent, by index, with why:
        here all of them or none."""
        with self.lock:
            if room not in member.rooms:
                refusal = RequestError(f"you are not in {room}; join it first")
                return [(index, refusal) for index in range(len(messages))]
            frames: list[bytes] = []
            echoes: list[bytes] = []  # the sender's copies, with their refs
            try:
                for text, ref in messages:
                    data = self._log_message(member, room, text)[1]
                    frames.append(data)
                    echoes.append(data if ref is None else with_field(data, "ref", ref))
            finally:  # what was logged is sent, whatever stopped the rest
                self._push_run(member, room, frames, echoes)
        return []

    def _log_message(self, member: Member, room: str, text: str) -> tuple[int, bytes]:
        """Give a message its id and log it (caller holds the lock); its id and frame."""
        message_id = self.journal.allocate_id()
        # One JSON encoding for the frame and the log line: they share every field.
        fields = {"id": message_id, "room": room, "user": member.name, "text": text,
                  "time": self.clock()}
        members = encode_members(fields)
        record = {"event": "message", **fields}
        self.journal.append(record, line_around(record, members))
        return message_id, frame_around("message", members)

    def _push_run(self, member: Member, room: str, frames: list[bytes],
                  echoes: list[bytes]) -> None:
        """Messages' frames to the room as one block; the sender's copies carry its refs,
        which others must not see (or count)."""
        if not frames:
            return
        block = frames[0] if len(frames) == 1 else b"".join(frames)
        if echoes == frames:  # no refs: the sender's echo is everyone's block
            self._push_room(room, block)
            return
        self._push_room(room, block, skip=member)
        member.outbox.push(b"".join(echoes))

    def set_status(self, member: Member, status_word: str, note: str | None = None) -> None:
        """Change a status; everyone who shares a room with the member hears it once."""
        status = normalize_status(status_word)
        note = clean_text(note or "", MAX_NOTE_CHARS, "status note").strip()
        with self.lock:
            member.status, member.note = status, note
            for room in member.rooms:
                if room in self._rooms:
                    self._rooms[room]._changed(member.key)
            now = self.clock()
            self.journal.append({"event": "status", "time": now, "user": member.name,
                                 "status": status, "note": note})
            data = encode_frame({"type": "status", "user": member.name, "status": status,
                                 "note": note, "time": now})
            for other in self._company(member):
                other.outbox.push(data)

    def send_private(self, sender: Member, to: str, envelope: dict[str, Any],
                     ref: str | None = None) -> int:
        """Relay an opaque envelope to a user: at once if online, else through their
        mailbox (if registered). The server never looks inside it."""
        with self.lock:
            recipient = self._members.get(to.casefold())
            if recipient is not None and recipient.status == "dnd":
                raise DoNotDisturb(f"{recipient.name} does not want to be disturbed right now")
            name = recipient.name if recipient is not None else self.registered_name(to)
            if name is None:
                raise UnknownUser(f'no user "{to[:40]}" is known to this server')
            message_id = self.journal.allocate_id()
            now = self.clock()
            frame: dict[str, Any] = {
                "type": "private", "id": message_id, "from": sender.name, "to": name,
                "time": now, "envelope": envelope,
                "from_key": base64.b64encode(sender.public_der).decode()}
            if recipient is None:
                frame["queued"] = True
            data = encode_frame(frame)
            if recipient is None:
                self._queue(sender, name, message_id, data)
            record = {"event": "private" if recipient else "private_queued", "time": now,
                      "id": message_id, "from": sender.name, "to": name, "size": len(data)}
            self.journal.append(record)
            if recipient is not None:
                recipient.outbox.push(data)
            ack: dict[str, Any] = {"type": "private_sent" if recipient else "private_queued",
                                   "id": message_id, "to": name, "time": now}
            if ref is not None:
                ack["ref"] = ref
            self._send(sender, ack)
            return message_id

    def acknowledge(self, member: Member, ids: list[int]) -> None:
        """The member's client has the queued messages `ids`: drop them from the mailbox
        and tell each sender it was delivered."""
        with self.lock:
            now = self.clock()
            for queued in self.store.remove(member.name, ids):
                self.journal.append({"event": "private_delivered", "time": now,
                                     "id": queued.id, "from": queued.sender,
                                     "to": member.name})
                self._receipt(queued.sender, {"type": "private_delivered", "id": queued.id,
                                              "to": member.name, "time": now})

    def flush_presence(self) -> None:
        """Send each big room's gathered arrivals and departures: one `presence` frame,
        encoded once, to each of its members (presence.py calls this once per interval)."""
        with self.lock:
            now = self.clock()
            pushes = 0
            for room, changes in self.presence.take().items():
                members = self._rooms.get(room)
                if members:
                    data = encode_frame(changes.frame(room, len(members), now))
                    for member in members:
                        member.outbox.push(data, False)
                    pushes += len(members)
            self.presence.pace(pushes)

    def broadcast_all(self, frame: dict[str, Any]) -> None:
        """Send one frame to every user (server notices, the goodbye at shutdown)."""
        with self.lock:
            data = encode_frame(frame)
            for member in self._members.values():
                member.outbox.push(data)

    # -- internals (caller holds the lock) ------------------------------------------------

    def _current(self, member: Member) -> str:
        if not member.room:
            raise RequestError("you are in no room; join one first (/join <room>)")
        return member.room

    def _company(self, member: Member) -> list[Member]:
        """The member and everyone who shares a room with them, each once."""
        seen: dict[str, Member] = {member.key: member}
        for room in member.rooms:
            for other in self._rooms.get(room, ()):
                seen.setdefault(other.key, other)
        return list(seen.values())

    def _logout(self, member: Member, reason: str) -> None:
        if self._members.get(member.key) is not member:
            return
        del self._members[member.key]
        del self._member_order[bisect.bisect_left(self._member_order, member.key)]
        now = self.clock()
        for room in list(member.rooms):
            self._leave(member, room, now, reason)
        self.store.set_last_seen(member.name, self.journal.next_id - 1)
        self.journal.append({"event": "disconnect", "time": now, "user": member.name,
                             "reason": reason})

    def _send(self, member: Member, frame: dict[str, Any]) -> None:
        member.outbox.push(encode_frame(frame))

    def _broadcast(self, room: str, frame: dict[str, Any], *, skip: Member | None = None,
                   urgent: bool = True) -> None:
        self._push_room(room, encode_frame(frame), skip=skip, urgent=urgent)

    def _push_room(self, room: str, data: bytes, *, skip: Member | None = None,
                   urgent: bool = True) -> None:
        """The same bytes to every member of `room`, through `fan_out` (nothing allocated
        per member)."""
        members = self._rooms.get(room)
        if not members:
            return
        everyone = members.members.values()
        if skip is None:
            self.fan_out(map(_outbox_of, everyone), data, urgent)
        else:
            self.fan_out((member.outbox for member in everyone if member is not skip), data,
                         urgent)

    def _enter(self, member: Member, room: str, now: str, last_seen: int | None) -> None:
        """Put an online member in a room (or make it current) and send its snapshot."""
        members = self._rooms.get(room)
        if members is None:
            members = self._rooms[room] = Room()
        if member not in members:
            if len(members) >= BATCH_FROM:  # a big room: O(1) per member per interval
                self.presence.note_joined(room, member.key, member.name)
            else:
                self._broadcast(room, {"type": "user_joined", "room": room,
                                       **member.summary(), "time": now}, urgent=False)
            members.add(member)
            if room not in member.rooms:
                member.rooms[room] = None
                self.journal.append({"event": "join", "time": now, "user": member.name,
                                     "room": room})
        member.room = room
        history = [{key: value for key, value in record.items() if key != "event"}
                   for record in self.journal.history(room)[-HISTORY_SIZE:]]
        page, cursor = members.first_page()
        member.outbox.push(encode_frame_with(
            {"type": "joined", "room": room, "member_count": len(members),
             "members_next": cursor, "history": history, "last_seen": last_seen, "time": now},
            "members", page))

    def _leave(self, member: Member, room: str, now: str, reason: str) -> None:
        """Take a member out of a room's online members, and out of their rooms if they
        left it for good (`reason` "left"); the room hears it."""
        members = self._rooms.get(room)
        if members is not None and member in members:
            members.remove(member)
            if not members and room != COMMON_ROOM:
                del self._rooms[room]
            if len(members) >= BATCH_FROM:  # as in _enter: the members who would hear it
                self.presence.note_left(room, member.key, member.name, reason)
            else:
                self._broadcast(room, {"type": "user_left", "room": room, "user": member.name,
                                       "reason": reason, "time": now}, urgent=False)
        if reason == "left":
            member.rooms.pop(room, None)
            if member.room == room:
                member.room = next(reversed(member.rooms), "")

    def _queue(self, sender: Member, recipient: str, message_id: int, data: bytes) -> None:
        for expired_id, expired_sender, expired_to in self.store.expire():
            self._receipt(expired_sender, {"type": "private_expired", "id": expired_id,
                                           "to": expired_to, "time": self.clock()})
        try:
            self.store.enqueue(recipient, sender.name, message_id, data)
        except MailboxFull as exc:
            raise QueueFull(str(exc)) from None

    def _receipt(self, sender: str, frame: dict[str, Any]) -> None:
        """Tell a sender about a message of theirs: now if online, else at their login."""
        data = encode_frame(frame)
        online = self._members.get(sender.casefold())
        if online is not None:
            online.outbox.push(data)
        else:
            self.store.keep_receipt(sender, data)

    def _deliver_waiting(self, member: Member) -> None:
        for queued in self.store.waiting(member.name):
            member.outbox.push(queued.frame)
        for receipt in self.store.take_receipts(member.name):
            member.outbox.push(receipt)
