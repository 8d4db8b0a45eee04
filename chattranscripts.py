"""The window's transcripts, with no Tk in it: the lines of every view (a room, or a private
conversation), the message ids each has shown, and the bounds on both.

Three bounds hold together:

- at most `TRANSCRIPT_LIMIT` lines per view (the oldest go first);
- at most `MAX_VIEWS` views (the model drops the ones the conversation tracker forgot);
- a total `BUDGET` for all the views *not shown*: each line costs `line_cost` (4 bytes a
  character, CPython's widest string, plus a fixed `LINE_OVERHEAD` for the objects), and
  when the total is over the budget the oldest lines of the view shown least recently go
  first. The view shown is never cut for the others; it is cut only by its own line limit
  and, should it alone exceed the budget (pathological: 2,000 lines of maximal messages),
  by its oldest lines. So all the transcripts together cost at most twice the budget.

Message ids are kept per view to drop duplicates (the history a room sends on joining, a
scrollback page): an id goes with its line when the line is evicted, and a view's set is
cut back to the ids of the lines it holds when it grows past twice their number, so the
sets are bounded by the lines.
"""
from __future__ import annotations

import collections
from typing import Iterable

from chattext import Line
from conversations import CONTACT_CAP, ROOM_CAP

TRANSCRIPT_LIMIT = 2000  # lines kept per room or private conversation
#: Transcripts kept at most: every room and contact the tracker keeps, the view shown and
#: the one for lines said before any room (conversations.py's caps, plus two).
MAX_VIEWS = ROOM_CAP + CONTACT_CAP + 2
#: Total cost of the lines of the views not shown, in (estimated) bytes.
BUDGET = 32 * 1024 * 1024
#: What a line costs besides its characters: the Line and its __dict__, the Spans, the
#: string headers (measured with tracemalloc: about 690 bytes for a short message line).
LINE_OVERHEAD = 768
_SEEN_SLACK = 100  # ids a view may hold beyond twice its lines before they are cut back


def line_cost(line: Line) -> int:
    """An upper estimate of the memory a line holds: 4 bytes a character, plus overhead."""
    chars = sum(len(span.text) + len(span.image) for span in line.spans)
    chars += len(line.stamp) + len(line.sender) + len(line.body)
    return 4 * chars + LINE_OVERHEAD


class Transcripts:
    """Per-view lines and seen ids under a per-view limit and a total budget."""

    def __init__(self, limit: int = TRANSCRIPT_LIMIT, budget: int = BUDGET,
                 max_views: int = MAX_VIEWS) -> None:
        self.limit, self.budget, self.max_views = limit, budget, max_views
        self._lines: dict[str, collections.deque[Line]] = {}
        self._seen: dict[str, set[int]] = {}
        self._cost: dict[str, int] = {}
        self._shown_at: dict[str, int] = {}  # view -> tick it was last shown (absent: never)
        self._tick = 0
        self.shown = ""  # the view the window shows: never evicted for the budget
        self.total = 0  # the cost of every view's lines, the one shown included
        self.cut: set[str] = set()  # views that lost lines to the budget since last asked

    # -- asking ---------------------------------------------------------------------------

    def lines(self, view: str) -> list[Line]:
        return list(self._lines.get(view, ()))

    def held(self, view: str) -> int:
        return len(self._lines.get(view, ()))

    def has_seen(self, view: str, message_id: int) -> bool:
        return message_id in self._seen.get(view, ())

    def views(self) -> list[str]:
        return list(self._lines)

    def __len__(self) -> int:
        return len(self._lines)

    def cost(self, view: str) -> int:
        return self._cost.get(view, 0)

    # -- told -----------------------------------------------------------------------------

    def show(self, view: str) -> None:
        """`view` is shown now (and so the most recently shown)."""
        self._tick += 1
        self.shown = view
        self._shown_at[view] = self._tick
        self._fit()

    def add(self, view: str, line: Line) -> bool:
        """Append `line` to `view`; False (and nothing added) if its message is there."""
        lines = self._lines.setdefault(view, collections.deque())
        if line.message_id is not None:
            seen = self._seen.setdefault(view, set())
            if line.message_id in seen:
                return False
            seen.add(line.message_id)
            if len(seen) > 2 * self.limit + _SEEN_SLACK:
                seen.intersection_update(ln.message_id for ln in lines)
                seen.add(line.message_id)
        lines.append(line)
        self._charge(view, line_cost(line))
        if len(lines) > self.limit:
            self._pop_oldest(view)
        self._fit()
        return True

    def replace(self, view: str, lines: list[Line], seen: Iterable[int] = ()) -> None:
        """`view` holds `lines` now (a scrollback page merged in); `seen` ids are noted."""
        self.drop(view, forget_seen=False)
        kept = lines[-self.limit:]
        self._lines[view] = collections.deque(kept)
        self._seen.setdefault(view, set()).update(seen)
        self._charge(view, sum(line_cost(line) for line in kept))
        self._fit()

    def drop(self, view: str, *, forget_seen: bool = True) -> None:
        self._lines.pop(view, None)
        self.total -= self._cost.pop(view, 0)
        if forget_seen:
            self._seen.pop(view, None)
            self._shown_at.pop(view, None)

    def keep_only(self, kept: set[str]) -> None:
        """Drop every view not in `kept`."""
        for view in [v for v in self._lines if v not in kept]:
            self.drop(view)

    def take_cut(self) -> set[str]:
        cut, self.cut = self.cut, set()
        return cut

    # -- the budget -----------------------------------------------------------------------

    def _charge(self, view: str, cost: int) -> None:
        self._cost[view] = self._cost.get(view, 0) + cost
        self.total += cost

    def _pop_oldest(self, view: str) -> None:
        line = self._lines[view].popleft()
        self._charge(view, -line_cost(line))
        if line.message_id is not None:
            self._seen.get(view, set()).discard(line.message_id)

    def _fit(self) -> None:
        """Evict the oldest lines of the views shown least recently (never-shown first)
        until the views not shown fit the budget."""
        while self.total - self.cost(self.shown) > self.budget:
            victims = [v for v, lines in self._lines.items() if lines and v != self.shown]
            if not victims:
                return
            victim = min(victims, key=lambda v: self._shown_at.get(v, 0))
            self.cut.add(victim)
            while self._lines[victim] and self.total - self.cost(self.shown) > self.budget:
                self._pop_oldest(victim)
        # The view shown alone over the budget (2,000 lines of the longest messages, whose
        # astral characters Tk may show as long substitutes): its oldest lines go, the
        # newest is always kept.
        shown = self._lines.get(self.shown)
        while shown is not None and len(shown) > 1 and self.cost(self.shown) > self.budget:
            self.cut.add(self.shown)
            self._pop_oldest(self.shown)
