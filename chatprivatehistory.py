"""Private history in the window, with no Tk in it: which private views are filled from
the local history (privatestore.PrivateHistory, read by chatlink.ClientLink on its worker
thread), and how its messages join the lines already shown without showing one twice.

When a private view is first shown, the window asks the link for its newest
`PRIVATE_HISTORY_LINES` messages. They go above what the view holds, marked as history
and never counted unread. A message can be in both: it arrived in this session (its live
line is there) and it is in the history. Those are matched by direction and text, newest
first. The other way round, a message recorded just before the history was read may have
its live event still on its way to the window: such history messages (received since the
window logged in, with no live line) are held for `IN_FLIGHT` seconds, and a live line
that matches one is not added again.
"""
from __future__ import annotations

import collections
from datetime import datetime, timedelta

from chattext import Line, server_time
from conversations import CONTACT_CAP
from privatestore import HistoryEntry

#: Messages of a private conversation shown from the history when its view opens.
PRIVATE_HISTORY_LINES = 50
#: How long a history message with no live line yet waits for its live event.
IN_FLIGHT = timedelta(seconds=10)

Key = tuple[bool, str]  # (outgoing, text)


def live_key(line: Line) -> Key | None:
    """(outgoing, text) of a live private line (None for any other line)."""
    if line.kind != "private" or len(line.spans) < 3:
        return None
    return line.spans[2].text.startswith(" private  you → "), line.body


class PrivateHistoryViews:
    """Which private conversations were read from the history, and the messages that may
    still arrive live. Bounded: the peers asked are cut back to the contacts kept."""

    def __init__(self) -> None:
        self.since: datetime | None = None  # the first login of this window
        self.asked: set[str] = set()  # folded peers whose history was asked for
        self._in_flight: dict[str, tuple[datetime, collections.Counter[Key]]] = {}

    def want(self, peer: str, contacts: dict[str, str]) -> bool:
        """Should the history of `peer` be read now (the first time its view opens)?"""
        folded = peer.casefold()
        if folded in self.asked:
            return False
        if len(self.asked) >= 2 * CONTACT_CAP:
            self.asked.intersection_update(contacts)
        self.asked.add(folded)
        return True

    def merge(self, peer: str, entries: tuple[HistoryEntry, ...], live: list[Line],
              now: datetime) -> list[HistoryEntry]:
        """The entries to show above `live` (oldest first): those not shown live already."""
        shown = collections.Counter(key for key in map(live_key, live) if key is not None)
        kept: list[HistoryEntry] = []
        waiting: collections.Counter[Key] = collections.Counter()
        for entry in reversed(entries):  # newest first: live lines are the newest
            key = (entry.direction == "out", entry.text)
            if shown[key] > 0:
                shown[key] -= 1
                continue
            kept.append(entry)
            received = server_time(entry.received_at)
            if self.since is not None and received is not None and received >= self.since:
                waiting[key] += 1
        if waiting:
            self._in_flight[peer.casefold()] = (now, waiting)
        return kept[::-1]

    def arrived(self, peer: str, outgoing: bool, text: str, now: datetime) -> bool:
        """A live private message: False when the history already showed it (see above)."""
        held = self._in_flight.get(peer.casefold())
        if held is None:
            return True
        at, waiting = held
        if now - at > IN_FLIGHT:
            del self._in_flight[peer.casefold()]
            return True
        key = (outgoing, text)
        if waiting[key] <= 0:
            return True
        waiting[key] -= 1
        return False
