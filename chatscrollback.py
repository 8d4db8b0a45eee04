"""Scrollback as the window sees it, with no Tk in it: which room's older messages are
being fetched, which rooms show their beginning, and the gap between what the user last
saw and the history a room sends at login.

The window asks `want(room, held)` before it calls `ChatClient.history`; at most one
request is in flight at a time (a second scroll to the top while the first page is on its
way asks nothing), none is made for a room whose beginning is shown, and none once the
room's transcript is full (it is bounded, and older lines would push out newer ones).
The model merges each `HistoryPage` with `merge`: messages it already shows are dropped
(by id), the rest go above what it shows, under the gap line or the beginning marker.
"""
from __future__ import annotations

from dataclasses import dataclass

from chattext import Line, Span

#: Messages asked for per scroll to the top (the protocol allows 1 to 100).
PAGE = 50
#: History messages a `joined` frame carries at most (docs/PROTOCOL.md): a full set may
#: hide older unseen ones.
JOIN_HISTORY = 10


@dataclass
class Gap:
    """Messages newer than `last_seen` that were not shown: `count` of them if known."""

    last_seen: int
    count: int | None = None

    def text(self, room: str) -> str:
        many = (f"{self.count} earlier message{'s' if self.count != 1 else ''}"
                if self.count else "earlier messages you have not seen")
        return f"── {many} in {room} — load ──"


class Scrollback:
    """Per-room scrollback state: a bounded dict of small records (one per room the user
    is or was in during this session, so at most a few hundred)."""

    def __init__(self, transcript_limit: int) -> None:
        self.limit = transcript_limit
        self.loading = ""  # the room whose page is on its way ("" when none)
        self.beginning: set[str] = set()
        self.gaps: dict[str, Gap] = {}

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

    def joined(self, room: str, history_ids: list[int], last_seen: int | None) -> Gap | None:
        """A room's history at login: a gap if the user saw less than what came before it."""
        if (last_seen is None or len(history_ids) < JOIN_HISTORY
                or min(history_ids) <= last_seen + 1 or room in self.gaps):
            return None
        gap = Gap(last_seen)
        self.gaps[room] = gap
        return gap

    def merge(self, room: str, shown: list[Line], older: list[Line], ids: list[int],
              more: bool) -> list[Line]:
        """`shown` with a page of `older` lines (already without duplicates) put above it,
        under the gap line while the gap lasts; the beginning marker on top when the
        server says there is nothing older."""
        if self.loading == room:
            self.loading = ""
        room_left = max(0, self.limit - len(shown) - 1)
        older = older[len(older) - room_left:] if room_left < len(older) else older
        head = [line for line in shown[:1] if line.kind in ("gap", "beginning")]
        rest = shown[len(head):]
        gap = self.gaps.get(room)
        if gap is not None:
            if not more or (ids and min(ids) <= gap.last_seen):
                del self.gaps[room]
                head = []
            else:
                if gap.count is not None:
                    gap.count = max(0, gap.count - len(older))
                head = [gap_line(room, gap)]
        if not more:
            self.beginning.add(room)
            head = [beginning_line(room)]
        return head + older + rest

    def forget(self, room: str) -> None:
        self.beginning.discard(room)
        self.gaps.pop(room, None)
        if self.loading == room:
            self.loading = ""


def gap_line(room: str, gap: Gap) -> Line:
    return Line("gap", (Span(gap.text(room), ("gap-link",)),))


def beginning_line(room: str) -> Line:
    return Line("beginning", (Span(f"── the beginning of {room} ──"),))
