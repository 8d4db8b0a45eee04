"""The sidebar's rows as the model sees them, with no Tk in it: the rooms the user is in,
their private conversations and the server's other rooms, each with its unread count and
mentions (guisidebar.py draws them)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from chattext import tk_safe
from client import MemberInfo
from rooms import COMMON_ROOM


@dataclass(frozen=True)
class SidebarRow:
    """One entry of the sidebar: a room the user is in ("room"), a private contact
    ("private") or a room of the server they are not in ("other"). `key` is what
    `ChatModel.select` takes: the room's name, or "@" and the contact's folded name."""

    key: str
    kind: str
    label: str
    unread: int = 0
    mentions: int = 0
    current: bool = False
    people: int = 0  # rooms: members online (from the last listing)
    status: str = ""  # contacts: their status, when they share a room with the user

    @property
    def badge(self) -> str:
        """'3' unread, '@2' when some of them mention the user, '' when all is read."""
        if self.mentions:
            return f"@{self.mentions}"
        return str(self.unread) if self.unread else ""


def private_key(peer: str) -> str:
    return "@" + peer.casefold()


def sidebar_rows(my_rooms: list[str], contacts: dict[str, str],
                 unseen: Callable[[str], tuple[int, int]],
                 members: dict[str, dict[str, MemberInfo]], rooms: dict[str, int], view: str,
                 astral: bool) -> list[SidebarRow]:
    """My rooms (#common first, then by name), my private contacts (by name), then the
    other rooms the server listed. `unseen(view)` is (unread, mentions); `members` the
    people online per room (a contact's status comes from there)."""
    def order(room: str) -> tuple[bool, str]:
        return room != COMMON_ROOM, room

    rows = []
    for name in sorted(my_rooms, key=order):
        unread, mentions = unseen(name)
        rows.append(SidebarRow(name, "room", name, unread, mentions, name == view,
                               rooms.get(name, len(members.get(name, {})))))
    for folded, name in sorted(contacts.items()):
        key = private_key(name)
        unread, mentions = unseen(key)
        status = next((people[folded].status for people in members.values()
                       if folded in people), "")
        rows.append(SidebarRow(key, "private", tk_safe(name, astral=astral), unread, mentions,
                               key == view, status=status))
    for name in sorted(set(rooms) - set(my_rooms), key=order):
        rows.append(SidebarRow(name, "other", name, people=rooms[name]))
    return rows


def neighbour(rows: list[SidebarRow], view: str, step: int) -> str:
    """The view `step` rows away from `view` among rooms and contacts, wrapping around."""
    keys = [row.key for row in rows if row.kind != "other"]
    if not keys:
        return ""
    here = keys.index(view) if view in keys else -1
    return keys[(here + step) % len(keys)]


def keyboard_place(last_current: str, current: str, focus: str,
                   present: set[str]) -> tuple[str, bool]:
    """Where the sidebar's keyboard focus goes after a refresh: (item, scroll it into view).
    A refresh (a badge, the 15 s room counts) keeps the row the person moved to with
    Up/Down, and the scroll position; only a change of the conversation shown (or the
    focused row going away) moves the focus to the current row and shows it."""
    if current != last_current or focus not in present:
        return current, bool(current)
    return focus, False
