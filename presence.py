"""Presence in big rooms: arrivals and departures gathered into one frame per interval.

In a room of fewer than BATCH_FROM members every arrival and departure goes to every
member as its own `user_joined` / `user_left` frame (their clients keep the whole member
list). From BATCH_FROM members on, that would cost O(members) frames per arrival, O(N^2)
for a login storm of N clients; instead `PresenceBatcher` notes the changes of each big
room and, once per `interval`, `ChatState` sends every member of that room one `presence`
frame (docs/PROTOCOL.md §5): the member count, how many came and went, and the first
SAMPLE_NAMES names of each. So a member pays O(1) per interval however many arrive. The
interval is 1 s, longer (up to 5 s) when a flush reaches more than PUSHES_PER_SECOND
members, so that the server's whole presence work stays bounded too.

Changes are netted: someone who leaves and comes back within one interval (a reconnect, a
takeover) is reported as neither. The batcher holds no lock of its own for its pending
changes: `note_*` and `take` run under the caller's lock (ChatState.lock). It only owns
the ticker thread that calls `flush` when an interval is due; the ticker takes the
caller's lock through `flush`, never while holding the batcher's condition, so the two
locks are always taken in one order (state lock, then condition).
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

BATCH_FROM = 200  # members (rooms.MEMBER_PAGE): from here on `joined` lists a page only
SAMPLE_NAMES = 10  # names of arrivals (and of departures) one `presence` frame carries
INTERVAL = 1.0  # seconds between two `presence` frames of one room, at the least
MAX_INTERVAL = 5.0
# A flush pushes one frame to every member of each big room: past this many members a
# second the interval grows (a room of 10,000 hears every 2 s), so that presence costs
# the server a bounded share of its time however big the room.
PUSHES_PER_SECOND = 5000


@dataclass(slots=True)
class RoomChanges:
    """The net arrivals and departures of one room since its last `presence` frame."""

    joined: dict[str, str] = field(default_factory=dict)  # casefolded name -> name
    left: dict[str, tuple[str, str]] = field(default_factory=dict)  # key -> (name, reason)

    def frame(self, room: str, member_count: int, now: str) -> dict[str, Any]:
        return {"type": "presence", "room": room, "member_count": member_count,
                "joined_count": len(self.joined),
                "joined": list(self.joined.values())[:SAMPLE_NAMES],
                "left_count": len(self.left),
                "left": [{"user": name, "reason": reason}
                         for name, reason in list(self.left.values())[:SAMPLE_NAMES]],
                "time": now}


class PresenceBatcher:
    """Pending presence changes per big room, and the ticker that flushes them.

    `flush` is called (from the ticker thread) at most once per `interval` while changes
    are pending; it should take the state's lock and call `take`."""

    def __init__(self, flush: Callable[[], None], interval: float = INTERVAL) -> None:
        self.interval = self.base_interval = interval
        self._flush = flush
        self._pending: dict[str, RoomChanges] = {}
        self._cond = threading.Condition()
        self._due: float | None = None
        self._thread: threading.Thread | None = None
        self._closed = False

    # -- under the caller's lock ---------------------------------------------------------

    def note_joined(self, room: str, key: str, name: str) -> None:
        changes = self._changes(room)
        if changes.left.pop(key, None) is None:  # back within the interval: no news
            changes.joined[key] = name
        self._empty_check(room, changes)

    def note_left(self, room: str, key: str, name: str, reason: str) -> None:
        changes = self._changes(room)
        if changes.joined.pop(key, None) is None:
            changes.left[key] = (name, reason)
        self._empty_check(room, changes)

    def take(self) -> dict[str, RoomChanges]:
        """Every room's pending changes, forgetting them."""
        pending, self._pending = self._pending, {}
        return pending

    def pace(self, pushes: int) -> None:
        """A flush just pushed `pushes` frames: set the interval before the next one."""
        self.interval = min(MAX_INTERVAL, max(self.base_interval, pushes / PUSHES_PER_SECOND))

    @property
    def pending_rooms(self) -> int:
        return len(self._pending)

    def _changes(self, room: str) -> RoomChanges:
        changes = self._pending.get(room)
        if changes is None:
            changes = self._pending[room] = RoomChanges()
            self._schedule()
        return changes

    def _empty_check(self, room: str, changes: RoomChanges) -> None:
        if not changes.joined and not changes.left:
            del self._pending[room]

    # -- the ticker ----------------------------------------------------------------------

    def _schedule(self) -> None:
        with self._cond:
            if self._closed:
                return
            if self._due is None:
                self._due = time.monotonic() + self.interval
                self._cond.notify()
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="gapshape-presence",
                                                daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closed and (self._due is None or time.monotonic() < self._due):
                    self._cond.wait(None if self._due is None else self._due - time.monotonic())
                if self._closed:
                    return
                self._due = None
            self._flush()  # outside the condition: it takes the state's lock

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
