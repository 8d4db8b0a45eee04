"""Typed lines the client sent and the server has not confirmed yet (`Outbox`), so a
refusal gives the person their text back instead of losing it. Pure: no Tk, no sockets."""
from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import Callable

import commands
from client import ErrorEvent, Event, PrivateMessage, RoomMessage
from commands import CommandError


@dataclass(frozen=True)
class Pending:
    """A typed line the client sent and the server has not echoed yet."""

    line: str
    kind: str  # "message" or "private"
    peer: str
    text: str
    sent_at: float


class Outbox:
    """Typed messages waiting for the server's echo, so a refusal can give the person
    their text back instead of losing it.

    The server echoes a room message to its sender and answers a private message with
    `private_sent`; a refusal is an `error` whose `request` names the frame type (and, on
    newer servers, whose `ref` names the frame; the client library does not pass that on
    yet, so the oldest waiting line of that kind is the one refused: frames are answered
    in order). Bounded: at most `limit` lines, each forgotten after `patience` seconds."""

    def __init__(self, limit: int = 50, patience: float = 30.0,
                 clock: Callable[[], float] | None = None) -> None:
        import time as _time
        self.limit, self.patience = limit, patience
        self._clock = clock or _time.monotonic
        self._waiting: collections.deque[Pending] = collections.deque()

    def __len__(self) -> int:
        return len(self._waiting)

    def sent(self, line: str) -> None:
        try:
            parsed = commands.parse_line(line)
        except CommandError:
            return
        if isinstance(parsed, commands.Say):
            self._keep(Pending(line, "message", "", parsed.text, self._clock()))
        elif isinstance(parsed, commands.Command) and parsed.name == "privatemsg":
            self._keep(Pending(line, "private", parsed.args[0], parsed.args[1], self._clock()))

    def _keep(self, pending: Pending) -> None:
        self._expire()
        self._waiting.append(pending)
        while len(self._waiting) > self.limit:
            self._waiting.popleft()

    def _expire(self) -> None:
        now = self._clock()
        while self._waiting and now - self._waiting[0].sent_at > self.patience:
            self._waiting.popleft()

    def confirmed(self, event: Event) -> None:
        """The server's echo of one of our lines arrived: it was sent."""
        if isinstance(event, RoomMessage) and event.own and not event.history:
            self._remove(lambda p: p.kind == "message" and p.text == event.text)
        elif isinstance(event, PrivateMessage) and event.outgoing:
            self._remove(lambda p: (p.kind == "private" and p.text == event.text
                                    and p.peer.casefold() == event.peer.casefold()))

    def refused(self, event: ErrorEvent) -> Pending | None:
        """The line this error refused (None: the error was about something else)."""
        line = getattr(event, "line", "")
        if line:
            return self._remove(lambda p: p.line == line) or Pending(line, "", "", "", 0.0)
        kind = {"message": "message", "private": "private", "get_key": "private"}.get(
            event.request)
        if kind is None:
            return None
        self._expire()
        text = getattr(event, "text", "")  # the library's NotSent names the text it refused
        if text:
            found = self._remove(lambda p: p.kind == kind and p.text == text)
            if found is not None:
                return found
        return self._remove(lambda p: p.kind == kind)

    def _remove(self, match: Callable[[Pending], bool]) -> Pending | None:
        for pending in self._waiting:
            if match(pending):
                self._waiting.remove(pending)
                return pending
        return None
