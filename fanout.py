"""The fan-out: one frame to every member of a room, its sends shared by two threads.

`FanOut` is what the server gives `rooms.ChatState` as its `fan_out`. It does for each
member what `transport.Connection.push` does, with push's two urgent paths inlined:

- A frame that arrived alone (nothing else waiting to be read) is sent at once: the log
  written once before the first send, then one lock and one non-blocking `send` per
  member. For a big room on a quiet server the sends are shared with a helper thread: a
  `send` releases the GIL while the kernel copies the frame into the member's socket
  (most of the ~8 µs a member costs), so on a machine with a second core two threads
  sending from one list of members finish sooner. Under load the other core is busy
  with other readers and the helper only adds hand-offs of the GIL (20 % fewer
  deliveries/s at N=100 when it always shared), so a fan-out that comes right after
  the previous one sends alone (docs/PERFORMANCE.md, run 7).
- A frame of a batch is queued, one lock per member, for the flush after the batch.
  Room messages read in one go come as one block of frames (`ChatState.post_run`): one
  queue operation per member for all of them.
- Presence waits for the writer (`push(data, False)`), and a member on another node of
  a cluster (not a `Connection`) takes its own `push`.

The caller returns only once both threads are done with the frame, so the next frame
routed to a member always comes after this one, as with one thread.
"""
from __future__ import annotations

import logging
import os
import sys
import threading
import time
from typing import TYPE_CHECKING, Any, Iterable, Iterator

from transport import Connection, routing

if TYPE_CHECKING:
    from messagelog import MessageLog

log = logging.getLogger("gapshape.server")

# How long a thread waiting for the GIL waits before asking for it while a fan-out is
# shared (CPython's default is 5 ms). The two threads take the GIL in turns between their
# sends; when one keeps winning it back, the other starves until this interval ends, which
# at 5 ms was most of a fan-out's p99.9 (docs/PERFORMANCE.md, run 7). Only while shared:
# for the whole process it cost 15-25 % of deliveries/s under load, every reader thread
# asking for the GIL ten times as often.
GIL_SWITCH_INTERVAL = 0.0005

# A fan-out that begins sooner than this after the previous one ended finds the server
# under load: it sends alone. At 200 messages/s fan-outs are 5 ms apart; under the
# throughput load, well under a millisecond.
QUIET_GAP = 0.001

# Below this many members the helper's wake-up (tens of µs) costs more than the sends it
# would take over (~8 µs each).
SHARE_MIN = 32


class FanOutSender:
    """Sends one frame to many outboxes (`__call__`), with a helper thread for big rooms
    when the machine has more than one core. `stop` ends the helper."""

    def __init__(self, message_log: MessageLog, *, share: bool | None = None) -> None:
        self._log = message_log
        if share is None:
            share = (os.cpu_count() or 1) > 1
        self._helper = _SendHelper() if share else None
        self._last_end = 0.0  # time.monotonic() when the last urgent fan-out ended

    def __call__(self, outboxes: Iterable[Any], data: bytes, urgent: bool = True) -> None:
        if not urgent:
            for outbox in outboxes:
                outbox.push(data, False)
            return
        if routing.lone_frame:
            self._send_to_each(outboxes, data)
        else:
            _queue_for_each(outboxes, data)
        self._last_end = time.monotonic()

    def stop(self) -> None:
        if self._helper is not None:
            self._helper.stop()

    def _send_to_each(self, outboxes: Iterable[Any], data: bytes) -> None:
        members = list(outboxes)  # one list per frame, so two threads can share it
        if not members:
            return
        self._log.write_pending()  # logged before it leaves: whatever is received survives
        shared = iter(members)     # a list iterator hands each member to one thread only
        helper = self._helper
        if (helper is not None and len(members) >= SHARE_MIN
                and time.monotonic() - self._last_end >= QUIET_GAP
                and helper.start(shared, data)):
            try:
                _send_from(shared, data)
            finally:
                helper.wait()
        else:
            _send_from(shared, data)


def _send_from(members: Iterator[Any], data: bytes) -> None:
    """Send `data` to each member the iterator yields (the log already written)."""
    for conn in members:
        if conn.__class__ is not Connection:
            conn.push(data)
            continue
        conn.send_now(data)


def _queue_for_each(outboxes: Iterable[Any], data: bytes) -> None:
    for conn in outboxes:
        if conn.__class__ is not Connection:
            conn.push(data)
            continue
        conn.queue_urgent(data)


class _SendHelper:
    """A thread that joins one fan-out at a time, taking members from the same iterator as
    the thread that routes the frame. Taken by one fan-out at a time: a second one that
    finds it busy sends alone."""

    def __init__(self) -> None:
        # Plain locks used as one-shot signals: cheaper than Events or Conditions, and the
        # helper's wake-up is on every shared fan-out's path.
        self._go = threading.Lock()
        self._go.acquire()
        self._done = threading.Lock()
        self._done.acquire()
        self._taken = threading.Lock()
        self._job: tuple[Iterator[Any], bytes] | None = None
        self._stopping = False
        self._usual_switch_interval = sys.getswitchinterval()
        self._thread = threading.Thread(target=self._run, name="gapshape-fan-out", daemon=True)
        self._thread.start()

    def start(self, members: Iterator[Any], data: bytes) -> bool:
        """Have the helper send `data` to members from `members` too; False if it is busy
        with another fan-out or stopped. After True, the caller must call `wait`."""
        if not self._taken.acquire(blocking=False):
            return False
        if self._stopping:
            self._taken.release()
            return False
        self._job = (members, data)
        self._usual_switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(GIL_SWITCH_INTERVAL)
        self._go.release()
        return True

    def wait(self) -> None:
        """Return once the helper is done with the fan-out it was given."""
        self._done.acquire()
        sys.setswitchinterval(self._usual_switch_interval)
        self._taken.release()

    def stop(self) -> None:
        with self._taken:  # no fan-out is using it now, and none will
            self._stopping = True
            self._job = None
            self._go.release()
        self._thread.join(timeout=2.0)

    def _run(self) -> None:
        while True:
            self._go.acquire()
            job = self._job
            if job is None:
                return  # stopped
            try:
                _send_from(*job)
            except Exception:  # a bug, not bad input: the caller must still be released
                log.exception("internal error in the fan-out helper")
            finally:
                self._job = None
                self._done.release()
