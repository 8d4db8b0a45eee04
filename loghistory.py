"""The message log's room history in memory: the latest lines of recently used rooms,
within a byte budget, least recently used rooms dropped first.

Apart from `messagelog` because it is a cache with its own accounting and none of the
log's files, threads or locks: `MessageLog` holds one and guards it with its
`_state_lock`, and tells it which lines are written (`written`, a count of lines), so
that a room whose lines exist nowhere else yet is never dropped.

Memory
------
The latest `history_size` messages of recently used rooms are kept in memory, as their
encoded lines, within `history_budget` bytes (default 16 MiB): a room costs
`ROOM_OVERHEAD` + `sys.getsizeof(room)` and each of its lines `sys.getsizeof(line)` +
`LINE_OVERHEAD` (the list slots and the id), so `history_memory_bytes()` counts what the
objects really take (the test suite checks that with tracemalloc). Past the budget, whole
rooms are dropped, least recently used (appended to or read) first; `history(room)` of a
dropped room reads it back through the index. A room whose latest line is not written yet
is never dropped (its lines exist nowhere else), so the budget can be exceeded by the lines
appended since the last `write_pending` - the server writes before every send.
"""
from __future__ import annotations

import sys
from collections import OrderedDict

from logformat import Record

__all__ = ["HISTORY_BUDGET", "LINE_OVERHEAD", "ROOM_OVERHEAD", "Room", "RoomHistories"]

HISTORY_BUDGET = 16 * 2**20  # bytes of room history kept in memory, by default
ROOM_OVERHEAD = 1024  # bytes a room in memory costs besides its lines and its name
LINE_OVERHEAD = 80  # bytes a line costs besides sys.getsizeof(line): two list slots, its id


class Room:
    """A room's latest lines in memory (oldest first) and their ids."""

    __slots__ = ("lines", "ids", "size", "last_seq", "complete")

    def __init__(self, name: str) -> None:
        self.lines: list[bytes] = []
        self.ids: list[int] = []
        self.size = ROOM_OVERHEAD + sys.getsizeof(name)  # bytes accounted to the budget
        self.last_seq = 0  # the log's count of appended lines when its latest was appended
        # True once `lines` are the room's latest history_size messages (or all it has);
        # a room created by an append after it was dropped holds only the newest ones.
        self.complete = False


_BYTES_HEADER = sys.getsizeof(b"")  # sys.getsizeof(line) == _BYTES_HEADER + len(line)


def _line_cost(line: bytes) -> int:
    return _BYTES_HEADER + len(line) + LINE_OVERHEAD


class RoomHistories:
    """The rooms' latest `size` lines, within `budget` bytes; not thread-safe (the log's
    `_state_lock` guards it). `rooms` is least recently used first."""

    def __init__(self, size: int, budget: int) -> None:
        self.size = size
        self.budget = budget
        self.rooms: OrderedDict[str, Room] = OrderedDict()
        self.bytes = 0  # accounted against budget

    def __contains__(self, name: object) -> bool:
        """Whether room `name` has its history in memory now."""
        return name in self.rooms

    def remember(self, name: str, record_id: int, line: bytes, seq: int, written: int) -> None:
        """Add the line appended as number `seq`; `written` lines are in the file."""
        room = self.rooms.get(name)
        if room is None:
            room = self.rooms[name] = Room(name)
            self.bytes += room.size
        else:
            self.rooms.move_to_end(name)
        added = _BYTES_HEADER + len(line) + LINE_OVERHEAD  # _line_cost, inlined: hot path
        room.lines.append(line)
        room.ids.append(record_id)
        if len(room.lines) > self.size:
            added -= _BYTES_HEADER + len(room.lines.pop(0)) + LINE_OVERHEAD
            room.ids.pop(0)
            room.complete = True
        room.size += added
        room.last_seq = seq
        self.bytes += added
        if self.bytes > self.budget:
            self.evict(written)

    def fill(self, name: str, room: Room | None, older: list[tuple[bytes, Record]],
             written: int) -> list[bytes]:
        """Put the lines read back from disk in front of what memory has; the room's lines."""
        if room is not None and (room.complete or len(room.lines) >= self.size):
            return list(room.lines)  # appends completed it while we read
        if room is None:
            if not older:
                return []  # no messages at all: nothing to keep
            room = self.rooms[name] = Room(name)
            self.bytes += room.size
        missing = older[max(0, len(older) - (self.size - len(room.lines))):]
        added = sum(_line_cost(line) for line, _ in missing)
        room.lines[:0] = [line for line, _ in missing]
        room.ids[:0] = [record["id"] for _, record in missing]
        room.complete = True
        room.size += added
        self.bytes += added
        lines = list(room.lines)
        if self.bytes > self.budget:
            self.evict(written)
        return lines

    def evict(self, written: int) -> None:
        """Drop whole rooms, least recently used first, until the budget holds again.

        Rooms with lines not written yet (appended after line number `written`) stay:
        nothing else has those lines.
        """
        excess = self.bytes - self.budget
        victims = []
        for name, room in self.rooms.items():
            if excess <= 0:
                break
            if room.last_seq <= written:
                victims.append(name)
                excess -= room.size
        for name in victims:
            self.bytes -= self.rooms.pop(name).size
