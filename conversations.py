"""The client library's model of conversations: rooms and private contacts, unread counts,
mentions, and the gap between what a user last saw and the history shown at login.

Pure logic: no sockets, no Tk, no clock. `client.ChatClient` feeds one `Conversations`
from its reader thread (`note`, `joined`, `close`) and from what the user does (`open`);
the terminal and the GUI read `summaries()` from their own threads, so every method takes
the object's lock and returns copies.

What counts as unread: a message that arrives in a conversation that is not the current
one, is not the user's own, and is not a history replay (join history the user had seen,
or a /history page). At login the server says `last_seen`, the newest message id that
existed when the user went offline (message ids are one sequence across all rooms and
private messages, docs/PROTOCOL.md): every join-history message with a larger id is
unread. The join history holds at most `JOIN_HISTORY` messages; when all of them are
newer than `last_seen`, more may have been said before them, and that stretch is a `Gap`
for the client to show and offer to load (`/history`), never to hide.

Bounds: at most `ROOM_CAP` rooms (the server's own limit per user) and `CONTACT_CAP`
private conversations are tracked. A hostile server or a crowd of strangers writing to us
cannot grow this past them: the least recently active conversation that is not the
current one is forgotten first. Each conversation holds a few integers, so the whole model
stays under ~100 KiB at the caps.
"""
from __future__ import annotations

import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Iterable

__all__ = [
    "CONTACT_CAP", "JOIN_HISTORY", "ROOM_CAP", "ConversationKey", "Conversations", "Gap",
    "Summary", "gap_hint", "mentions_me", "unread_report",
]

#: Rooms tracked at once: the server lets a user be in 50 (docs/PROTOCOL.md, `join`).
ROOM_CAP = 50
#: Private conversations tracked at once; beyond it the least recently active one goes.
CONTACT_CAP = 200
#: Messages of history in a `joined` frame, at most (docs/PROTOCOL.md, §5).
JOIN_HISTORY = 10

ROOM = "room"
PRIVATE = "private"


@dataclass(frozen=True, order=True)
class ConversationKey:
    """A room ("#common", normalized as the server does) or a contact (their username as
    the server spells it). Order: rooms before private conversations, then by name."""

    #: Sorts rooms before contacts (derived from `kind`; not an argument).
    rank: int = field(init=False, repr=False, default=0)
    kind: str = ROOM  # "room" or "private"
    name: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "rank", 0 if self.kind == ROOM else 1)

    @classmethod
    def room(cls, name: str) -> ConversationKey:
        """'Work' or '#Work' -> the room '#work' (room names are case-insensitive)."""
        bare = name[1:] if name.startswith("#") else name
        return cls(ROOM, "#" + bare.lower())

    @classmethod
    def private(cls, user: str) -> ConversationKey:
        return cls(PRIVATE, user[1:] if user.startswith("@") else user)

    @classmethod
    def parse(cls, target: str) -> ConversationKey:
        """'#room' is a room, '@user' or 'user' a contact: how /query reads its argument."""
        return cls.room(target) if target.startswith("#") else cls.private(target)

    @property
    def is_room(self) -> bool:
        return self.kind == ROOM

    @property
    def label(self) -> str:
        """'#common' for a room, '@bob' for a contact."""
        return self.name if self.is_room else "@" + self.name

    @property
    def folded(self) -> tuple[str, str]:
        """The identity of a conversation: usernames are case-insensitive on the server."""
        return (self.kind, self.name.casefold())


@dataclass(frozen=True)
class Gap:
    """Messages of `room` between what the user last saw and the history shown at join.

    Ids are exclusive bounds: the missing messages have after_id < id < before_id. Since
    ids are shared by all rooms, `at_most` (the number of ids in between) is an upper
    bound of how many there are; a client loads them with history(before=before_id)."""

    room: str
    after_id: int
    before_id: int

    @property
    def at_most(self) -> int:
        return max(0, self.before_id - self.after_id - 1)


@dataclass(frozen=True)
class Summary:
    key: ConversationKey
    unread: int
    mentions: int
    last_id: int | None
    gap: Gap | None


_NAME_CHARS = r"[\w-]"  # letters, digits, '_' and '-': what a name may go on with


def mentions_me(me: str, text: str) -> bool:
    """Whether `text` names `me` as a whole word, in any case, with or without '@'.

    'bob', '@Bob', 'bob:' and 'bob.' mention bob; 'bobby', 'bob.smith' and 'x@bob' do not
    (names may contain '.', '-' and '_', so those continue a different name)."""
    if not me:
        return False
    pattern = rf"(?<![\w.@-])@?{re.escape(me)}(?!{_NAME_CHARS})(?!\.{_NAME_CHARS})"
    return re.search(pattern, text, re.IGNORECASE) is not None


@dataclass
class _State:
    key: ConversationKey
    unread: int = 0
    mentions: int = 0
    last_id: int | None = None
    gap: Gap | None = None

    def summary(self) -> Summary:
        return Summary(self.key, self.unread, self.mentions, self.last_id, self.gap)


class Conversations:
    """Every conversation of one user, which one is current, and what is unread."""

    def __init__(self, me: str) -> None:
        self.me = me
        self._lock = threading.Lock()
        # folded key -> state, least recently active first (eviction order)
        self._rooms: OrderedDict[tuple[str, str], _State] = OrderedDict()
        self._contacts: OrderedDict[tuple[str, str], _State] = OrderedDict()
        self._current: ConversationKey | None = None

    # -- the current conversation ---------------------------------------------------------

    @property
    def current(self) -> ConversationKey | None:
        with self._lock:
            return self._current

    @current.setter
    def current(self, key: ConversationKey | None) -> None:
        if key is None:
            with self._lock:
                self._current = None
        else:
            self.open(key)

    def open(self, key: ConversationKey) -> ConversationKey:
        """Make `key` current (tracking it if new); its unread and mentions are cleared.
        Returns the key as tracked: a contact keeps the spelling first seen."""
        with self._lock:
            state = self._touch(key)
            state.unread = state.mentions = 0
            self._current = state.key
            return state.key

    def close(self, key: ConversationKey) -> None:
        """Forget a conversation (/leave, or a query closed); if it was current, none is."""
        with self._lock:
            self._table(key).pop(key.folded, None)
            if self._current is not None and self._current.folded == key.folded:
                self._current = None

    def rename_me(self, me: str) -> None:
        """The server may spell our name differently from how it was typed at login."""
        with self._lock:
            self.me = me

    # -- what happens ---------------------------------------------------------------------

    def note(self, key: ConversationKey, *, sender: str, text: str, message_id: int | None,
             own: bool, history: bool) -> bool:
        """A message in `key` was shown. Returns True when it mentions me (own messages
        never do); it counts as unread (and as a mention) only if it is not the user's own,
        not a history replay, and not in the current conversation."""
        del sender  # part of the record; who wrote it does not change the count
        with self._lock:
            mention = not own and mentions_me(self.me, text)
            state = self._touch(key)
            if message_id is not None and (state.last_id is None or message_id > state.last_id):
                state.last_id = message_id
            counts = not own and not history and not self._is_current(key)
            if counts:
                state.unread += 1
                state.mentions += mention
            return mention

    def joined(self, room: str, *, last_seen: int | None, history_ids: list[int],
               newest_id: int | None, mention_ids: Iterable[int] = ()) -> Gap | None:
        """A `joined` frame for `room`: at login (`last_seen` given) its history messages
        newer than `last_seen` are unread (and those in `mention_ids` mentions), unless
        the room is current. Returns the gap before that history, if more may have been
        said since `last_seen` than it shows; None otherwise (or on a plain /join)."""
        key = ConversationKey.room(room)
        with self._lock:
            state = self._touch(key)
            newest = max([*history_ids, *([newest_id] if newest_id is not None else [])],
                         default=None)
            if newest is not None and (state.last_id is None or newest > state.last_id):
                state.last_id = newest
            if last_seen is None:
                return state.gap
            new = [i for i in history_ids if i > last_seen]
            if not self._is_current(key):
                state.unread += len(new)
                state.mentions += len(set(mention_ids) & set(new))
            state.gap = None
            if len(history_ids) >= JOIN_HISTORY and min(history_ids) > last_seen + 1:
                state.gap = Gap(key.name, last_seen, min(history_ids))
            return state.gap

    def history_loaded(self, room: str, ids: list[int], more: bool) -> Gap | None:
        """A /history page of `room` came in: it narrows the gap, or closes it once the
        page reaches what the user had seen (or the room's beginning). Returns what is left."""
        key = ConversationKey.room(room)
        with self._lock:
            state = self._table(key).get(key.folded)
            if state is None or state.gap is None:
                return None
            gap = state.gap
            oldest = min(ids, default=gap.before_id)
            if not more or oldest <= gap.after_id + 1:
                state.gap = None
            elif oldest < gap.before_id:
                state.gap = Gap(gap.room, gap.after_id, oldest)
            return state.gap

    # -- what callers read ----------------------------------------------------------------

    def unread(self, key: ConversationKey) -> int:
        with self._lock:
            state = self._table(key).get(key.folded)
            return state.unread if state else 0

    def mentions(self, key: ConversationKey) -> int:
        with self._lock:
            state = self._table(key).get(key.folded)
            return state.mentions if state else 0

    def gap(self, room: str) -> Gap | None:
        key = ConversationKey.room(room)
        with self._lock:
            state = self._rooms.get(key.folded)
            return state.gap if state else None

    def has(self, key: ConversationKey) -> bool:
        with self._lock:
            return key.folded in self._table(key)

    def keys(self) -> list[ConversationKey]:
        return [summary.key for summary in self.summaries()]

    def summaries(self) -> list[Summary]:
        """Every conversation: rooms first (sorted by name), then contacts (sorted)."""
        with self._lock:
            rooms = sorted(self._rooms.values(), key=lambda s: s.key.name)
            contacts = sorted(self._contacts.values(), key=lambda s: s.key.name.casefold())
            return [state.summary() for state in (*rooms, *contacts)]

    def total_unread(self) -> int:
        with self._lock:
            return sum(s.unread for s in (*self._rooms.values(), *self._contacts.values()))

    # -- inside (lock held) ---------------------------------------------------------------

    def _table(self, key: ConversationKey) -> OrderedDict[tuple[str, str], _State]:
        return self._rooms if key.is_room else self._contacts

    def _is_current(self, key: ConversationKey) -> bool:
        return self._current is not None and self._current.folded == key.folded

    def _touch(self, key: ConversationKey) -> _State:
        """The state of `key`, created if new and moved to the most recently active end;
        the least recently active one past the cap is dropped (never the current one)."""
        table = self._table(key)
        state = table.get(key.folded)
        if state is None:
            state = table[key.folded] = _State(key)
            self._evict(table, ROOM_CAP if key.is_room else CONTACT_CAP)
        table.move_to_end(key.folded)
        return state

    def _evict(self, table: OrderedDict[tuple[str, str], _State], cap: int) -> None:
        while len(table) > cap:
            victim = next(k for k in table
                          if self._current is None or k != self._current.folded)
            del table[victim]


# -- words for the user (the terminal and /unread) -----------------------------------------

#: /history loads at most this many messages at a time (docs/PROTOCOL.md, `history`).
HISTORY_PAGE = 100


def gap_hint(gap: Gap) -> str:
    """'up to 57 earlier messages since you were last here: /history 57' (ids are shared
    by all rooms, so the number is an upper bound, exact when only this room was busy)."""
    count = min(gap.at_most, HISTORY_PAGE)
    more = " (repeat for more)" if gap.at_most > HISTORY_PAGE else ""
    return (f"up to {gap.at_most} earlier messages since you were last here: "
            f"/history {count}{more}")


def unread_report(summaries: Iterable[Summary]) -> str:
    """What /unread says: each conversation with unread messages ('*' marks a mention,
    '+' a gap: more was missed than the login showed), and how to load each gap."""
    listed = [s for s in summaries if s.unread or s.gap is not None]
    if not listed:
        return "nothing unread"
    parts, gaps = [], []
    for s in listed:
        mark = "*" * bool(s.mentions) + "+" * (s.gap is not None)
        mentions = f", {s.mentions} mentioning you" if s.mentions else ""
        parts.append(f"{s.key.label} {s.unread}{mark}{mentions}")
        if s.gap is not None:
            gaps.append(f"{s.key.label}: {gap_hint(s.gap)} in {s.key.label}")
    total = sum(s.unread for s in listed)
    return "\n".join([f"{total} unread: " + "; ".join(parts), *gaps])
