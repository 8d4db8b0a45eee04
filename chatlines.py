"""How events read in the window, with no Tk in it: the `Line`s (chattext.py) the model
puts in its transcripts for a message, a private message, an event and its own words.
`ChatModel` (chatview.py) is a `LineBuilder`: it sets who the user is, whether Tk can show
astral characters, the clock and the name colours, which every line depends on."""
from __future__ import annotations

from datetime import datetime
from typing import Callable

from chattext import Line, NameColours, Span, bidi_display, colour_tag, format_time, tk_safe
from chatwindow import _mentions
from client import PrivateMessage, RoomMessage
from privatestore import HistoryEntry


class LineBuilder:
    """Builds the lines of a transcript (the base of chatview.ChatModel)."""

    me: str
    astral: bool
    colours: NameColours
    _now: Callable[[], datetime]

    def _safe(self, text: str) -> str:
        return tk_safe(text, astral=self.astral)

    def _body(self, text: str) -> str:
        """A message's text as Tk should draw it: safe, and right-to-left runs in order."""
        return bidi_display(self._safe(text))

    def _time_span(self, stamp: str) -> Span:
        shown = format_time(stamp, self._now()) if stamp else self._now().strftime("%H:%M")
        return Span(f"{shown or '--:--'}  ", ("time",))

    def _message_line(self, event: RoomMessage) -> Line:
        mine = event.own or event.user.casefold() == self.me.casefold()
        if event.history:
            kind = "history"
        elif mine:
            kind = "own"
        elif self.me and _mentions(event.text, self.me):
            kind = "mention"
        else:
            kind = "message"
        name_tags = ("name", colour_tag(self.colours(event.user)))
        return Line(kind, (self._time_span(event.time),
                           Span(self._safe(event.user), name_tags),
                           Span("  "),
                           Span(self._body(event.text), ("body",))), event.id,
                    stamp=event.time, sender=event.user, body=event.text)

    def _private_line(self, event: PrivateMessage) -> Line:
        arrow = f"you → {event.peer}" if event.outgoing else f"{event.peer} → you"
        # `verified`: the user compared this contact's key out of band (/verify); every
        # private message shown at all has had its signature checked.
        mark = " (verified)" if event.verified else ""
        return Line("private", (self._time_span(event.time),
                                Span("", ("lock",), image="lock"),
                                Span(f" private  {self._safe(arrow)}{mark}", ("private-label",)),
                                Span("  "),
                                Span(self._body(event.text), ("body",))),
                    stamp=event.time, sender=event.peer, body=event.text)

    def _stored_private_line(self, peer: str, entry: HistoryEntry) -> Line:
        """A private message from the local history: drawn as history (grey), not unread."""
        arrow = f"you → {peer}" if entry.direction == "out" else f"{peer} → you"
        return Line("history", (self._time_span(entry.received_at),
                                Span("", ("lock",), image="lock"),
                                Span(f" private  {self._safe(arrow)}", ("private-label",)),
                                Span("  "),
                                Span(self._body(entry.text), ("body",))),
                    stamp=entry.received_at, sender=peer, body=entry.text)

    def _event_line(self, kind: str, stamp: str, text: str) -> Line:
        return Line(kind, (self._time_span(stamp), Span(self._safe(text))), stamp=stamp)

    def _system_line(self, kind: str, text: str) -> Line:
        return Line(kind, (self._time_span(""), Span(self._safe(text))))

    def _divider(self, text: str) -> Line:
        return Line("divider", (Span(f"── {self._safe(text)} ──"),))
