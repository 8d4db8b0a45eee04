"""Paged listings in the client: members, rooms and users (`/list`, `/rooms`, `/knowrooms`).

Since protocol 2 the server answers a listing a page at a time (`next` is the cursor of
the following page, docs/PROTOCOL.md §5). `Listings` collects the pages a `fetch_all`
asked for into one event and says which request comes next; it knows no socket. A hostile
server could page forever, so collecting stops at `MAX_LISTED_ITEMS`, when a page is empty,
or when a cursor repeats, and what was gathered is shown marked incomplete.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Callable

from events import Event, MemberInfo, MemberList, RoomList, UserList
from protocol import Frame

__all__ = ["ANSWERS", "MAX_LISTED_ITEMS", "Listings", "count", "members"]

#: Where listings stop being fetched page by page (a hostile server could page forever).
MAX_LISTED_ITEMS = 50_000

#: The request type -> the type of the frames that answer it.
ANSWERS = {"list": "members", "rooms": "rooms", "users": "users"}


def count(value: object, default: int) -> int:
    """A count from the server if it is a sane one, else `default`."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else default


def members(items: list[dict[str, Any]]) -> tuple[MemberInfo, ...]:
    return tuple(MemberInfo(str(m["user"]), str(m["status"]), str(m.get("note", "")),
                            str(m.get("room", ""))) for m in items)


_ITEMS: dict[str, Callable[[Frame], list[Any]]] = {
    "members": lambda f: list(members(f["members"])),
    "rooms": lambda f: [(str(r["room"]), int(r["members"])) for r in f["rooms"]],
    "users": lambda f: list(members(f["users"])),
}

_EVENTS: dict[str, Callable[[Frame, tuple[Any, ...], bool], Event]] = {
    "members": lambda f, items, done: MemberList(str(f["room"]), items,
                                                 count(f.get("member_count"), len(items)), done),
    "rooms": lambda f, items, done: RoomList(items, count(f.get("room_count"), len(items)), done),
    "users": lambda f, items, done: UserList(items, count(f.get("user_count"), len(items)), done),
}


@dataclass
class _PageFetch:
    """A listing being collected page by page (`fetch_all`)."""

    request: dict[str, Any]
    items: list[Any] = field(default_factory=list)
    pages: int = 0
    last_cursor: str = ""


class Listings:
    """The listings being collected, one per answer type. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pages: dict[str, _PageFetch] = {}  # answer type -> listing being collected

    def start(self, request: dict[str, Any]) -> None:
        """Collect every page of the answers to `request` ({"type": "list"|"rooms"|"users"})."""
        with self._lock:
            self._pages[ANSWERS[str(request["type"])]] = _PageFetch(request)

    def page(self, frame: Frame) -> tuple[dict[str, Any] | None, Event | None]:
        """One page came in: (the request for the next page, None) while collecting,
        else (None, the event with everything collected)."""
        kind = frame["type"]
        items = _ITEMS[kind](frame)
        cursor = frame.get("next")
        with self._lock:
            fetch = self._pages.get(kind)
            if fetch is not None:
                fetch.items += items
                fetch.pages += 1
                if (isinstance(cursor, str) and cursor and items and cursor != fetch.last_cursor
                        and len(fetch.items) < MAX_LISTED_ITEMS):
                    fetch.last_cursor = cursor
                    return {**fetch.request, "after": cursor}, None
                del self._pages[kind]
                items = fetch.items
        return None, _EVENTS[kind](frame, tuple(items), cursor is None)
