"""The client's way out: frames paced to the server's limits, and messages remembered
until the server confirms them, so that nothing typed is lost without a word.

`Outbox` is the sending half of `client.ChatClient`. Every frame but pong goes through
`submit`: written at once when the pacer (pacing.py) allows and nothing waits before it,
else put on a bounded queue that the sender thread (`run`) empties as tokens come in.
A message (room or private) is tracked by its `ref` until its echo, receipt or error
comes back (`confirmed`); when the connection ends (`shut_down`) every message still
queued, and every one sent but unconfirmed, is reported as a `NotSent` with its text.
"""
from __future__ import annotations

import collections
import socket
import threading
from dataclasses import dataclass
from typing import Any, Callable

import pacing
from events import Event, NotSent
from protocol import encode_frame

__all__ = ["MAX_UNCONFIRMED", "Outbox", "Outgoing"]

#: Refs of messages sent but not yet echoed or acknowledged that the client keeps.
MAX_UNCONFIRMED = 2 * pacing.SEND_QUEUE_LIMIT


@dataclass
class Outgoing:
    """One frame on its way out. Messages (room or private) carry their text, so that a
    refusal can say which message it was and give it back for resending."""

    frame: dict[str, Any]
    ref: str = ""
    target: str = ""  # "#room" or the peer
    text: str | None = None  # None: not a message (join, status, get_key, ...)

    @property
    def is_message(self) -> bool:
        return self.text is not None


class Outbox:
    """Pacing, the send queue and the unconfirmed messages of one connection."""

    def __init__(self, emit: Callable[[Event], None]) -> None:
        self._emit = emit
        self.sock: socket.socket | None = None
        self.send_lock = threading.Lock()  # one writer at a time on the socket
        self.pacer = pacing.Pacer(0, 1)
        self._queue: pacing.SendQueue[Outgoing] = pacing.SendQueue()
        self._cond = threading.Condition()
        self._in_flight = False
        self.offline = False  # the connection is gone: nothing more is accepted
        self._lock = threading.Lock()
        self._unconfirmed: collections.OrderedDict[str, Outgoing] = collections.OrderedDict()

    def write(self, frame: dict[str, Any]) -> None:
        """Write one frame now, bypassing the pacer (login frames and pong only)."""
        data = encode_frame(frame)
        sock = self.sock
        if sock is None:
            raise ConnectionError("not connected")
        with self.send_lock:
            sock.sendall(data)

    def submit(self, out: Outgoing) -> bool:
        """Send `out` now if the pacer allows and nothing waits before it, else queue it.

        Returns False if it was refused; a refused message is reported as NotSent at once
        (queue full, or offline: then ConnectionError is raised as well, so callers that
        loop on sending learn the connection is gone)."""
        with self._cond:
            if self.offline or self.sock is None:
                self.refuse(out, "offline", "you are not connected")
                raise ConnectionError("not connected")
            if self.pacer.unlimited or (not len(self._queue) and not self._in_flight
                                        and self.pacer.delay() == 0):
                self.pacer.take()
                self._track(out)
                try:  # written under the queue's lock, so nothing can overtake it
                    self.write(out.frame)
                except OSError as exc:
                    self._untrack(out)
                    self.refuse(out, "offline", "the connection failed")
                    raise ConnectionError(f"the connection failed: {exc}") from exc
                return True
            try:
                self._queue.put(out)
            except pacing.SendQueueFull as exc:
                self.refuse(out, "queue_full", f"{exc}; wait a moment and send it again")
                return False
            self._cond.notify_all()
            return True

    def run(self) -> None:
        """The sender thread: writes queued frames as the pacer's tokens come in; returns
        once offline (after a failed write it shuts down, leaving the unconfirmed ones:
        their echoes may still come in)."""
        while True:
            with self._cond:
                out = self._next_due()
                if out is None:
                    return
                self._in_flight = True
                self._track(out)
            try:
                self.write(out.frame)
            except OSError:
                if self._untrack(out):  # else the reader's shutdown reported it already
                    self.refuse(out, "offline", "the connection failed before it was sent")
                self.shut_down(report_unconfirmed=False)
                return
            finally:
                with self._cond:
                    self._in_flight = False
                    self._cond.notify_all()

    def _next_due(self) -> Outgoing | None:
        """Wait (lock held) until the first queued frame may go; None once offline."""
        while not self.offline:
            if not len(self._queue):
                self._cond.wait()
                continue
            delay = self.pacer.delay()
            if delay > 0:
                self._cond.wait(delay)
                continue
            self.pacer.take()
            return self._queue.pop()
        return None

    def shut_down(self, report_unconfirmed: bool = True) -> None:
        """The connection is gone: every message still queued is reported, and (once the
        reader has seen the end, so no echo can follow) every one sent but unconfirmed."""
        with self._cond:
            self.offline = True
            waiting = self._queue.drain()
            self._cond.notify_all()
        with self._lock:
            unconfirmed = list(self._unconfirmed.values()) if report_unconfirmed else []
            if report_unconfirmed:
                self._unconfirmed.clear()
        for out in unconfirmed:
            self.refuse(out, "unconfirmed", "the connection closed before the server "
                        "confirmed it; it may not have been delivered")
        for out in waiting:
            self.refuse(out, "offline", "the connection closed before it was sent")

    def _track(self, out: Outgoing) -> None:
        """Remember a message until the server echoes, acknowledges or refuses it."""
        if not out.is_message:
            return
        with self._lock:
            self._unconfirmed[out.ref] = out
            while len(self._unconfirmed) > MAX_UNCONFIRMED:
                self._unconfirmed.popitem(last=False)  # the server never answered these

    def _untrack(self, out: Outgoing) -> bool:
        """Forget a message that could not be written; False if it was not tracked
        (not a message, or already reported)."""
        if not out.is_message:
            return True
        with self._lock:
            return self._unconfirmed.pop(out.ref, None) is not None

    def confirmed(self, ref: object) -> Outgoing | None:
        """The message with this ref, now answered (echo, receipt or error), if we sent it."""
        if not isinstance(ref, str):
            return None
        with self._lock:
            return self._unconfirmed.pop(ref, None)

    def refuse(self, out: Outgoing, code: str, reason: str) -> None:
        """Report a message that was not sent, with its text; other frames need no word."""
        if out.is_message:
            self._emit(NotSent(code, reason, str(out.frame.get("type", "")), out.ref,
                               out.target, out.text or ""))
