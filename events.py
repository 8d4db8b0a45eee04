"""The events a `client.ChatClient` reports: frozen dataclasses, one per kind of news.

The client's reader thread turns each frame from the server into one of these and puts it
on `ChatClient.events` (or hands it to `on_event`); local outcomes (a `Notice`, a message
`NotSent`, `Disconnected`) come the same way. They are plain data with no behaviour, so the
terminal (terminal.py) and the desktop client (chatview.py) render them as they like.
Every string in them may come from the network: render it inert (sanitize.py).
"""
from __future__ import annotations

from dataclasses import dataclass

from conversations import ConversationKey, Gap, Summary


@dataclass(frozen=True)
class Event:
    """Base of everything the reader thread reports."""

    @property
    def kind(self) -> str:
        return type(self).__name__


@dataclass(frozen=True)
class MemberInfo:
    user: str
    status: str
    note: str = ""
    room: str = ""


@dataclass(frozen=True)
class Welcome(Event):
    user: str
    room: str
    server_id: str
    time: str


@dataclass(frozen=True)
class RoomMessage(Event):
    id: int
    room: str
    user: str
    text: str
    time: str
    history: bool = False
    own: bool = False
    ref: str = ""  # our own echo: the ref `say` returned


@dataclass(frozen=True)
class RoomJoined(Event):
    room: str
    members: tuple[MemberInfo, ...]
    history: tuple[RoomMessage, ...]
    time: str
    member_count: int = 0  # everyone in the room; `members` may be the first page only
    complete: bool = True  # False: ask `fetch_all("list")` for the rest
    #: At login: more may have been said since the user was last here than `history`
    #: shows; `history(count=...)` loads it (conversations.py). Show it, never hide it.
    gap: Gap | None = None


@dataclass(frozen=True)
class RoomLeft(Event):
    """We left `room` for good; `room_now` is the current room now ("" if none)."""

    room: str
    room_now: str
    time: str


@dataclass(frozen=True)
class HistoryPage(Event):
    """Older messages of a room (scrollback), oldest first; `more`: older ones exist."""

    room: str
    messages: tuple[RoomMessage, ...]
    more: bool


@dataclass(frozen=True)
class UserJoined(Event):
    room: str
    user: str
    status: str
    note: str
    time: str


@dataclass(frozen=True)
class UserLeft(Event):
    room: str
    user: str
    reason: str
    time: str


@dataclass(frozen=True)
class StatusChanged(Event):
    user: str
    status: str
    note: str
    time: str


@dataclass(frozen=True)
class MemberList(Event):
    room: str
    members: tuple[MemberInfo, ...]
    member_count: int = 0
    complete: bool = True  # False: one page (or a cut-short list) of a longer one


@dataclass(frozen=True)
class RoomList(Event):
    rooms: tuple[tuple[str, int], ...]
    room_count: int = 0
    complete: bool = True


@dataclass(frozen=True)
class UserList(Event):
    users: tuple[MemberInfo, ...]
    user_count: int = 0
    complete: bool = True


@dataclass(frozen=True)
class PrivateMessage(Event):
    """A decrypted private message, incoming or (outgoing=True) one we sent."""

    id: int
    peer: str
    text: str
    time: str
    outgoing: bool
    fingerprint: str  # the peer's pinned key, readable form (auth.readable_fingerprint)
    verified: bool = False  # the user compared that fingerprint out of band (/verify)
    ref: str = ""  # outgoing: the ref `send_private` returned


@dataclass(frozen=True)
class PrivateRejected(Event):
    """An incoming envelope that failed verification; its content is never shown."""

    peer: str
    reason: str
    time: str


@dataclass(frozen=True)
class KeyWarning(Event):
    """The server offered a key for `user` that differs from the pinned one.

    Both fingerprints are in the readable form /fingerprint shows. `/trust user` accepts
    exactly the offered key shown here; `verified` says whether the pinned key (the one
    being replaced) had been verified by the user, which makes the change more alarming.
    """

    user: str
    pinned_fingerprint: str
    offered_fingerprint: str
    verified: bool = False


@dataclass(frozen=True)
class Notice(Event):
    """Local information for the user (manual, fingerprints, confirmations).

    For topics "fingerprint", "trust" and "verify", `user` names the contact and
    `verified` says whether their pinned key is verified.
    """

    text: str
    topic: str = ""
    user: str = ""
    verified: bool = False


@dataclass(frozen=True)
class ErrorEvent(Event):
    code: str
    message: str
    request: str = ""


@dataclass(frozen=True)
class NotSent(ErrorEvent):
    """A message the user wrote was not sent (or not confirmed): the server refused the
    frame with this `ref`, or the client refused it locally (too long, key changed, send
    queue full, offline). `target` is "#room" or the peer; `text` is kept for resending.
    It is an ErrorEvent, so code/message/request read as for any error."""

    ref: str = ""
    target: str = ""
    text: str = ""


@dataclass(frozen=True)
class UnreadChanged(Event):
    """The unread or mention counts, or the current conversation, changed: every
    conversation (rooms first, then contacts) as `ChatClient.conversations` now has it."""

    summaries: tuple[Summary, ...]
    current: ConversationKey | None

    @property
    def total(self) -> int:
        return sum(s.unread for s in self.summaries)


@dataclass(frozen=True)
class Disconnected(Event):
    reason: str
    clean: bool
    replaced: bool = False  # "logged in elsewhere": another login took over; do not reconnect
