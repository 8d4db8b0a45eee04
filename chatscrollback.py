"""Scrollback as the window sees it, with no Tk in it: which room's older messages are
being fetched, which rooms show their beginning, and where the line for the gap between
what the user last saw and the history a room sends at login goes (the gap itself is
conversations.Gap, kept by the model's conversations.Conversations).

The window asks `want(room, held)` before it calls `ChatClient.history`; at most one
request is in flight at a time (a second scroll to the top while the first page is on its
way asks nothing), none is made for a room whose beginning is shown, and none once the
room's transcript is full (it is bounded, and older lines would push out newer ones).
The model merges each `HistoryPage` with `merge`: messages it already shows are dropped
(by id), the rest go above what it shows, under the gap line or the beginning marker.
"""
from __future__ import annotations

from chattext import Line, Span
from client import RoomJoined
from conversations import Conversations, Gap, mentions_me

#: Messages asked for per scroll to the top (the protocol allows 1 to 100).
PAGE = 50
_MARKERS = ("gap", "beginning")  # the kinds of line merge puts above the older messages


class Scrollback:
    """Per-room scrollback state: the room in flight and the rooms whose beginning is shown
    (a set of names of rooms the user is or was in this session)."""

    def __init__(self, transcript_limit: int) -> None:
        self.limit = transcript_limit
        self.loading = ""  # the room whose page is on its way ("" when none)
        self.beginning: set[str] = set()

    def want(self, room: str, held: int) -> bool:
        """Should the window ask for an older page of `room` now? (Then it is in flight.)"""
        if not room.startswith("#") or self.loading or room in self.beginning:
            return False
        if held >= self.limit - 1:
            return False
        self.loading = room
        return True

    def settled(self) -> None:
        """The request was refused or the connection dropped: another may be made."""
        self.loading = ""

    def merge(self, room: str, shown: list[Line], older: list[Line], more: bool,
              gap: Gap | None) -> list[Line]:
        """`shown` with a page of `older` lines (already without duplicates) put above it,
        under the gap line while a `gap` is left (conversations.Conversations narrows it);
        the beginning marker on top when the server says there is nothing older."""
        if self.loading == room:
            self.loading = ""
        room_left = max(0, self.limit - len(shown) - 1)
        older = older[len(older) - room_left:] if room_left < len(older) else older
        # Older messages go where the gap line is, else above everything shown.
        at = next((i for i, line in enumerate(shown) if line.kind in _MARKERS), 0)
        before = [line for line in shown[:at] if line.kind not in _MARKERS]
        after = [line for line in shown[at:] if line.kind not in _MARKERS]
        head = [gap_line(gap)] if gap is not None else []
        if not more:
            self.beginning.add(room)
            head = [beginning_line(room)]
        return before + head + older + after

    def forget(self, room: str) -> None:
        self.beginning.discard(room)
        if self.loading == room:
            self.loading = ""


def gap_line(gap: Gap) -> Line:
    """The line that stands for the messages of a gap: a click loads them. Ids are shared
    by every room, so the count is an upper bound ("up to")."""
    many = gap.at_most
    text = f"up to {many} earlier message{'s' if many != 1 else ''}" if many else "earlier messages"
    return Line("gap", (Span(f"── {text} since you were last here — load ──", ("gap-link",)),))


def beginning_line(room: str) -> Line:
    return Line("beginning", (Span(f"── the beginning of {room} ──"),))


def joined_gap(conversations: Conversations, event: RoomJoined, me: str) -> Gap | None:
    """Tell the tracker about a room's `joined`: at login its history newer than what the
    user last saw is unread; returns the gap before that history, if any. The library
    passes `last_seen` (and its own tracker's `gap`) when it has them."""
    history = event.history
    given: Gap | None = getattr(event, "gap", None)
    last_seen: int | None = getattr(event, "last_seen", None)
    if last_seen is None and given is not None:
        last_seen = given.after_id  # a gap starts right after what the user last saw
    gap = conversations.joined(
        event.room, last_seen=last_seen, history_ids=[m.id for m in history],
        newest_id=max((m.id for m in history), default=None),
        mention_ids=[m.id for m in history if not m.own and mentions_me(me, m.text)])
    return gap or given
