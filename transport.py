"""How bytes move between the server and its clients: sockets, TLS, outboxes, the writer.

`Connection` is one client's transport: its socket (plain or TLS), its reader thread, and
its outbox. It knows nothing of chat: every complete frame goes to its `session.Session`,
which holds the login and the request handlers. `Writer` is the one thread shared by all
connections whose socket was full.

- Each connection's reader thread waits for input, decodes frames (protocol.FrameDecoder),
  and hands each to its session, which calls into the state (rooms.ChatState).
- The state pushes encoded frames into the recipients' outboxes (`Connection.push`): a
  bounded list of byte strings.
- A frame that arrived alone (nothing else waiting to be read) is sent at once into every
  idle outbox's socket with a non-blocking `send`: the lowest latency at low load. A room
  is served by `fanout.FanOutSender`, which shares a big room's sends with a second thread.
- Frames that arrived together are queued, and after the batch the reader calls
  `ChatServer.flush()`: every outbox with data goes out with one non-blocking `send` of all
  its frames joined, so under load a send carries many frames.
- Right before any send the message log writes everything pending, so whatever a client
  receives is in the log (`Connection.drain_owned`, the one place bytes leave).
- Arrivals and departures (presence) wait up to 50 ms in the writer, so a burst of logins
  costs each member one send.
- What a socket does not accept at once waits in its outbox, and the shared `Writer`
  thread sends it when the socket becomes writable. No thread ever blocks on another
  client's socket, and an outbox over its byte limit disconnects that (slow) client only.

Sockets are non-blocking; readers wait with poll() (select() where poll is missing).
A TLS socket is used by its reader and by flushers, so every call on it holds the
connection's io lock: OpenSSL objects must not be used by two threads at once.
"""
from __future__ import annotations

import collections
import ctypes
import logging
import secrets
import select
import selectors
import socket
import ssl
import threading
import time
from typing import TYPE_CHECKING, Any

from errors import ProtocolError
from protocol import FrameDecoder, encode_frame
from session import Session

if TYPE_CHECKING:
    from server import ChatServer

log = logging.getLogger("gapshape.server")

# recv() allocates its whole size first: small while a client is quiet, growing while it
# sends a lot. Ten thousand threads each allocating 64 KiB per read fragment the heap.
MIN_RECV_SIZE = 4096
MAX_RECV_SIZE = 65536
PRESENCE_DELAY = 0.05  # seconds arrivals and departures may wait to share a send


class _Routing(threading.local):
    lone_frame = False  # set by a reader thread while it handles a frame that came alone


routing = _Routing()
_ABORT, _ABORT_LIMIT = "abort: budget", "abort: limit"
_SCHEDULE, _SEND_LATER = "schedule", "send later"
_WATCH = "watch"  # a direct send the socket took only part of: the writer sends the rest
_WOULD_BLOCK = (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError)


class ConnectionGone(Exception):
    """The peer's socket failed; the connection is being torn down."""


BACKLOG_FREE = 64 * 1024  # bytes an outbox may hold before they count against the budget


class BacklogBudget:
    """The server-wide cap on unsent bytes, so that the worst case is finite at any scale.

    Each outbox may hold `outbox_limit` bytes, but ten thousand full outboxes would be
    40 GiB; beyond its first BACKLOG_FREE bytes every outbox draws on this one budget, and
    a push that the budget cannot cover drops that (slow) client. Thread-safe."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._lock = threading.Lock()

    def take(self, size: int) -> bool:
        with self._lock:
            if self.used + size > self.limit:
                return False
            self.used += size
            return True

    def give(self, size: int) -> None:
        with self._lock:
            self.used -= size


class Connection:
    """One client's transport: its socket, its reader thread and its outbox.

    What the frames mean is its `session`'s business; the connection only guarantees that
    they are read in order, that replies leave without blocking anyone, and that the
    session hears of the end exactly once (`Session.finish`)."""

    # Ten thousand of these live at once: slots keep each one small.
    __slots__ = (
        "server", "config", "sock", "peer", "ip", "session", "decoder", "thread_ident",
        "_last_heard", "_login_deadline", "_ping_sent_at", "_close_reason", "_stop",
        "_out_lock", "_io_lock", "_chunks", "_queued", "_charged", "_scheduled", "_lazy", "_flushing",
        "_closed", "_poller", "_recv_size",
    )

    def __init__(self, server: ChatServer, sock: socket.socket, address: tuple[str, int]) -> None:
        self.server = server
        self.config = server.config
        self.sock: socket.socket = sock
        self.peer = f"{address[0]}:{address[1]}"
        self.ip = address[0]
        self.session = Session(self)
        self.thread_ident: int | None = None  # of the reader thread, once it runs
        self.decoder = FrameDecoder(self.config.max_frame_size)
        self._last_heard = time.monotonic()
        self._login_deadline = self._last_heard + self.config.login_timeout  # from accept
        self._ping_sent_at: float | None = None
        self._close_reason = ""
        self._stop = False
        # Outbox state, guarded by _out_lock. `_flushing` marks the one thread (a flusher or
        # the writer) that owns sending, so frames never go out of order.
        self._out_lock = threading.Lock()
        # Plain sockets are safe to send and receive on at once; TLS ones are not, and get a
        # lock in _start_tls.
        self._io_lock: threading.Lock | None = None
        self._chunks: list[bytes] = []
        self._queued = 0
        self._charged = 0  # of _queued, the bytes counted in the server's BacklogBudget
        self._scheduled = False  # in the server's dirty queue
        self._lazy = False  # in the writer's presence queue
        self._flushing = False
        self._closed = False
        self._poller: Any = None  # made by the reader thread, for the socket it ends up with
        self._recv_size = MIN_RECV_SIZE

    # -- outbox ---------------------------------------------------------------------------

    def push(self, data: bytes, urgent: bool = True) -> None:
        """Queue bytes for this client; never blocks.

        Urgent bytes go out at the next flush, or at once when the routing thread handles a
        lone frame (nothing else waiting to be read: no batch to gather) and this outbox is
        idle; a send that does not fit is left to the writer. Others (presence) wait for
        the writer's next presence tick, unless something urgent takes them along first.
        A frame for many clients goes through `fanout.FanOutSender`, which does the same
        for each."""
        if urgent and routing.lone_frame:
            self.server.log.write_pending()  # logged before it leaves
            self.send_now(data)
        else:
            with self._out_lock:
                action = None if self._closed else self._enqueue(data, urgent)
            if action is not None:
                self._after_push(action)

    def send_now(self, data: bytes) -> None:
        """Push's lone-frame path, for a caller that has written the log: sent at once if
        the outbox is idle, else queued (`_push_now`)."""
        with self._out_lock:
            action = self._push_now(data)
        if action is not None:
            self._after_push(action)

    def queue_urgent(self, data: bytes) -> None:
        """Push's batch path: queued for the flush that follows the batch."""
        with self._out_lock:
            if self._closed:
                return
            queued = self._queued + len(data)
            # A batch's second and later frames find the outbox already due for the flush
            # and far from any bound: `_enqueue` would only append. Doing that here saves a
            # call per member per frame, the largest cost of a busy room (PERFORMANCE.md,
            # run 8).
            if (self._scheduled and queued <= BACKLOG_FREE and not self._charged
                    and queued <= self.config.outbox_limit):
                self._chunks.append(data)
                self._queued = queued
                return
            action = self._enqueue(data, True)
        if action is not None:
            self._after_push(action)

    def _push_now(self, data: bytes) -> object:
        """The lone-frame push, with `_out_lock` held (the log already written): sent at
        once if nothing is queued or being sent, else queued. The socket does not block,
        so holding the lock over the send costs other pushers to this client one send at
        most, and saves taking it twice; a TLS socket's `_io_lock` is taken inside it (never
        the other way round). Returns what the caller does once the lock is released
        (None: nothing)."""
        if self._closed:
            return None
        if self._chunks or self._flushing:
            return self._enqueue(data, True)
        try:
            sent = self._send_some(data)
        except ConnectionGone as gone:
            self._closed = True
            return gone
        if sent == len(data):  # the common case
            return None
        self._chunks.append(data[sent:] if sent else data)
        self._queued += len(data) - sent
        self._flushing = True  # the writer owns the rest now
        return _WATCH

    def _after_push(self, action: object) -> None:
        """What a push decided under `_out_lock`, done after releasing it."""
        if action is _SCHEDULE:
            self.server.dirty.append(self)
        elif action is _SEND_LATER:
            self.server.writer.send_later(self)
        elif action is _WATCH:
            self.server.writer.watch(self)
        elif action is _ABORT_LIMIT:
            self.abort(f"slow consumer: over {self.config.outbox_limit} bytes waiting to be sent")
        elif action is _ABORT:
            self.abort("slow consumer: the server's budget for unsent bytes is spent")
        elif isinstance(action, ConnectionGone):
            self.abort(str(action))
            self.server.announce_drained()

    def _enqueue(self, data: bytes, urgent: bool) -> str | None:
        """Queue `data` (caller holds _out_lock); returns what the caller does next."""
        self._chunks.append(data)
        self._queued += len(data)
        over_limit = self._queued > self.config.outbox_limit
        # The budget is only touched by outboxes that are behind (the fan-out's hot
        # path skips the call for every client that keeps up).
        behind = self._queued > BACKLOG_FREE or self._charged
        if over_limit or (behind and not self._recount()):
            # Drop it all now: a client that does not read gets nothing more.
            self._closed = True
            self._drop_queue()
            return _ABORT_LIMIT if over_limit else _ABORT
        if self._scheduled or (not urgent and self._lazy):
            return None
        if urgent:
            self._scheduled = True
            return _SCHEDULE
        self._lazy = True
        return _SEND_LATER

    def _recount(self) -> bool:
        """Bring this outbox's share of the server-wide backlog budget up to date (caller
        holds _out_lock); False if the budget cannot cover it. Only bytes beyond an
        outbox's first BACKLOG_FREE count, so clients that keep up never touch its lock."""
        owed = self._queued - BACKLOG_FREE if self._queued > BACKLOG_FREE else 0
        delta = owed - self._charged
        if delta > 0 and not self.server.backlog.take(delta):
            return False
        if delta < 0:
            self.server.backlog.give(-delta)
        self._charged = owed
        return True

    def _drop_queue(self) -> None:
        """Forget everything queued (caller holds _out_lock)."""
        self._chunks.clear()
        self._queued = 0
        self._recount()

    def release_lazy(self) -> None:
        """The writer took this connection off its presence queue."""
        with self._out_lock:
            self._lazy = False

    def flush(self) -> None:
        """Send what is queued without blocking; leave the rest to the writer thread."""
        with self._out_lock:
            self._scheduled = False
            if self._flushing or not self._chunks:
                return
            self._flushing = True
        if not self.drain_owned():
            self.server.writer.watch(self)

    def drain_owned(self) -> bool:
        """Send queued bytes until done (True) or the socket is full (False).

        Only the owner of `_flushing` calls this; ownership ends when it returns True.
        """
        while True:
            with self._out_lock:
                if not self._chunks or self._closed:
                    self._drop_queue()
                    self._flushing = False
                    self.server.announce_drained()
                    return True
                data = self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)
                self._chunks.clear()
            # Each frame in `data` was pushed after its record was appended to the log, so
            # writing the log here, the one place bytes leave, puts every one of them in the
            # file first: whatever a client received survives a kill -9.
            self.server.log.write_pending()
            try:
                sent = self._send_some(data)
            except ConnectionGone as exc:
                with self._out_lock:
                    self._closed = True
                self.abort(str(exc))
                continue
            with self._out_lock:
                self._queued -= sent
                if self._charged:
                    self._recount()
                if sent < len(data):
                    self._chunks.insert(0, data[sent:])
                    return False
                if not self._chunks:  # the common case: all sent, nothing new; let go
                    self._flushing = False
                    break
        self.server.announce_drained()
        return True

    def _send_some(self, data: bytes) -> int:
        try:
            if self._io_lock is None:
                return self.sock.send(data)
            with self._io_lock:
                return self.sock.send(data)
        except _WOULD_BLOCK:
            return 0
        except OSError as exc:
            raise ConnectionGone(f"send failed: {exc.strerror or exc}") from None

    def abort(self, reason: str) -> None:
        """Disconnect this client from any thread: its reader wakes up and cleans up."""
        if not self._close_reason:
            self._close_reason = reason
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def wait_drained(self, timeout: float) -> bool:
        """Wait until nothing queued is waiting for the socket (True) or `timeout` passes."""
        return self.server.wait_for_drain(lambda: not self._flushing and not self._chunks, timeout)

    def _drain_before_close(self, timeout: float) -> None:
        """Give queued frames (an error, the goodbye) a moment to leave before closing."""
        self.server.flush()
        self.flush()
        self.wait_drained(timeout)

    # -- reader thread --------------------------------------------------------------------

    def run(self) -> None:
        self.thread_ident = threading.get_ident()
        try:
            self._start_tls()
            self._read_loop()
        except ConnectionGone as exc:
            self._close_reason = self._close_reason or str(exc)
        except Exception:  # a bug, not bad input: keep the server up, say where
            log.exception("internal error on connection %s", self.peer)
            self._close_reason = self._close_reason or "internal server error"
        finally:
            self._finish()

    def _start_tls(self) -> None:
        context = self.server.tls_context
        if context is not None:
            self.sock.settimeout(self.config.login_timeout)
            self._io_lock = threading.Lock()
            try:
                self.sock = context.wrap_socket(self.sock, server_side=True)
            except (ssl.SSLError, OSError) as exc:
                raise ConnectionGone(f"TLS handshake failed: {exc}") from None
        self.sock.setblocking(False)
        if hasattr(select, "poll"):  # poll has no descriptor limit; Windows has only select
            self._poller = select.poll()
            self._poller.register(self.sock, select.POLLIN)

    def _wait_readable(self, timeout: float) -> bool:
        if self._poller is not None:
            return bool(self._poller.poll(max(0.0, timeout) * 1000))
        return bool(select.select([self.sock], [], [], max(0.0, timeout))[0])

    def _read_loop(self) -> None:
        while not self._stop:
            if not self.session.logged_in and time.monotonic() >= self._login_deadline:
                self.close("login timed out")  # however much it sent meanwhile
                break
            if not self._has_buffered_tls() and not self._wait_readable(self._idle_timeout()):
                self._on_idle()
                continue
            if not self._receive():
                self._close_reason = self._close_reason or "connection closed by client"
                return

    def _receive(self) -> bool:
        """Read what is there and act on it; False at end of stream. (A method of its own so
        that the received bytes are freed before the thread goes back to waiting.)"""
        data = self._recv()
        if data is None:
            return True
        self._last_heard = time.monotonic()
        self._ping_sent_at = None
        self.decoder.receive_data(data)
        self._process_frames()
        self.server.flush()
        return bool(data)

    def _has_buffered_tls(self) -> bool:
        return isinstance(self.sock, ssl.SSLSocket) and self.sock.pending() > 0

    def _recv(self) -> bytes | None:
        try:
            if self._io_lock is None:
                data = self.sock.recv(self._recv_size)
            else:
                with self._io_lock:
                    data = self.sock.recv(self._recv_size)
        except _WOULD_BLOCK:
            return None
        except OSError as exc:
            raise ConnectionGone(f"receive failed: {exc.strerror or exc}") from None
        if len(data) == self._recv_size:
            self._recv_size = min(self._recv_size * 2, MAX_RECV_SIZE)
        elif len(data) * 4 < self._recv_size:
            self._recv_size = max(self._recv_size // 2, MIN_RECV_SIZE)
        return data

    def _process_frames(self) -> None:
        try:
            while not self._stop:
                try:
                    frame = self.decoder.next_frame()
                except ProtocolError as error:  # a bad body was skipped; a fatal one stops us
                    self.session.report_bad_frame(error)
                    continue
                if frame is None:
                    return
                # A lone frame is routed with direct sends (lowest latency); a batch is
                # queued and flushed together, one send per client for the whole batch
                # (throughput). The last frame read ends the batch, and what the session
                # gathered in it (a run of messages) goes out with the lone frame's sends.
                routing.lone_frame = self.decoder.buffered == 0
                try:
                    self.session.receive(frame)
                    if routing.lone_frame:
                        self.session.end_batch()
                finally:
                    routing.lone_frame = False
        finally:  # cut short (by half a frame still to come, or a close): queued instead
            self.session.end_batch()

    def _idle_timeout(self) -> float:
        now = time.monotonic()
        if not self.session.logged_in:
            return self._login_deadline - now
        if self._ping_sent_at is not None:
            return self._ping_sent_at + self.config.ping_timeout - now
        return self._last_heard + self.config.ping_interval - now

    def _on_idle(self) -> None:
        now = time.monotonic()
        if not self.session.logged_in:
            if now >= self._login_deadline:
                self.close("login timed out")
        elif self._ping_sent_at is not None:
            if now - self._ping_sent_at >= self.config.ping_timeout:
                self.close("no answer to ping")
        elif now - self._last_heard >= self.config.ping_interval:
            self._ping_sent_at = now
            self.push(encode_frame({"type": "ping", "data": secrets.token_hex(4)}))
            self.flush()

    def close(self, reason: str) -> None:
        """Stop reading (from the reader thread): the connection ends after this frame."""
        self._close_reason = self._close_reason or reason
        self._stop = True

    def frames_waiting(self, limit: int) -> int:
        """Frames this client sent that are read but not handled yet (up to `limit`)."""
        return self.decoder.complete_frames(limit)

    @property
    def closing(self) -> bool:
        """Whether this connection is ending (closed here, aborted, or the server stops)."""
        return self._stop or bool(self._close_reason) or self.server.stopping

    def pause(self, seconds: float) -> None:
        """Hold this reader for `seconds` (flood control): it reads nothing meanwhile, so
        TCP pushes back on the sender. What earlier frames queued leaves first. Ends early
        if the connection is closing; short naps keep that check prompt without an Event
        per connection."""
        self.server.flush()
        deadline = time.monotonic() + seconds
        while not self.closing:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            time.sleep(min(remaining, 0.1))

    def _finish(self) -> None:
        reason = self._close_reason or "disconnected"
        self.session.finish(reason)
        if not reason.startswith("slow consumer"):
            self._drain_before_close(timeout=1.0)
        with self._out_lock:
            self._closed = True
            self._drop_queue()
            writer_owns = self._flushing
        if writer_owns:
            # The writer watches this socket: shut it down so it turns writable, and let the
            # writer see it closed and unregister it before its descriptor can be reused.
            self.abort(reason)
            self.wait_drained(2.0)
        self.server.flush()
        try:
            self.sock.close()
        except OSError:
            pass
        self.server.forget(self)
        self.server.writer.trimmer.note_ended()


# Windows' select() takes at most 512 sockets per call (CPython's FD_SETSIZE there); a
# selector over select() holds at most this many, and the writer spreads its sockets over
# as many of them as it needs.
SELECT_SET_SIZE = 500
SHARD_POLL_INTERVAL = 0.01  # seconds; how late a socket beyond the first set may be seen


class ShardedSelector:
    """Several select()-based selectors behind one: no limit on how many sockets it watches.

    With one set (the common case) `select` is that set's select. With more, nothing can
    wait on all the sets at once, so it polls every set without waiting, and, when none is
    ready, waits on the first one (which holds the writer's wake-up socket) for at most
    SHARD_POLL_INTERVAL before polling again."""

    def __init__(self, set_size: int = SELECT_SET_SIZE) -> None:
        if set_size < 1:
            raise ValueError("set_size must be at least 1")
        self.set_size = set_size
        self.shards: list[selectors.SelectSelector] = []
        self._shard_of: dict[Any, selectors.SelectSelector] = {}

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        if fileobj in self._shard_of:
            raise KeyError(f"{fileobj!r} is already registered")
        shard = next((s for s in self.shards if len(s.get_map()) < self.set_size), None)
        if shard is None:
            shard = selectors.SelectSelector()
            self.shards.append(shard)
        key = shard.register(fileobj, events, data)
        self._shard_of[fileobj] = shard
        return key

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        shard = self._shard_of.pop(fileobj)
        return shard.unregister(fileobj)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        # Windows' select() refuses three empty lists, so sets emptied by unregister are
        # left out (the first set keeps the writer's wake-up socket for good).
        shards = [shard for shard in self.shards if shard.get_map()]
        if len(shards) <= 1:
            return shards[0].select(timeout) if shards else []
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            ready = self._poll(shards)
            if ready:
                return ready
            wait = SHARD_POLL_INTERVAL
            if deadline is not None:
                wait = min(wait, deadline - time.monotonic())
                if wait <= 0:
                    return []
            ready = shards[0].select(wait)
            if ready:
                return ready + self._poll(shards[1:])

    @staticmethod
    def _poll(shards: list[selectors.SelectSelector]) -> list[tuple[selectors.SelectorKey, int]]:
        return [event for shard in shards for event in shard.select(0)]

    def close(self) -> None:
        for shard in self.shards:
            shard.close()
        self.shards.clear()
        self._shard_of.clear()


def make_write_selector() -> selectors.BaseSelector | ShardedSelector:
    """The best selector here; where that is select() (Windows), one without its cap."""
    selector = selectors.DefaultSelector()
    if isinstance(selector, selectors.SelectSelector):
        selector.close()
        return ShardedSelector()
    return selector


TRIM_INTERVAL = 5.0  # seconds between two heap trims at most


def _find_malloc_trim() -> Any:
    """glibc's malloc_trim, or None where the C library has none (musl, macOS, Windows)."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError, TypeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


class HeapTrimmer:
    """Hands the heap that ended connections freed back to the system (glibc only).

    Under churn glibc keeps the freed memory of many threads' allocations in its arenas:
    a server whose live Python memory stayed flat grew from 30 to 67 MB of RSS in a
    6-minute soak and kept it after every client left (docs/PERFORMANCE.md). malloc_trim
    returns it. It walks the free lists, so it runs at most every TRIM_INTERVAL and only
    after connections ended, on the writer thread (ctypes lets go of the GIL meanwhile)."""

    def __init__(self, interval: float = TRIM_INTERVAL) -> None:
        self.interval = interval
        self._trim = _find_malloc_trim()
        self._ended = 0  # connections ended since the last trim; a hint, so no lock
        self._last = time.monotonic()
        self.trims = 0

    @property
    def available(self) -> bool:
        return self._trim is not None

    def note_ended(self) -> None:
        self._ended += 1

    def maybe_trim(self, now: float) -> bool:
        """Trim if connections ended since the last trim and it is time; True if it did."""
        if self._trim is None or not self._ended or now - self._last < self.interval:
            return False
        self._ended = 0
        self._last = now
        self._trim(0)
        self.trims += 1
        return True


class Writer:
    """One thread for all connections whose socket was full: sends when it is writable.

    It also sends presence (arrivals, departures) every PRESENCE_DELAY: when a hundred
    people log in within that time, each member gets their hundred `user_joined` frames in
    one send instead of a hundred."""

    def __init__(self, server: ChatServer) -> None:
        self.server = server
        self._selector = make_write_selector()
        self._incoming: collections.deque[Connection] = collections.deque()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._running = True
        self._later: collections.deque[Connection] = collections.deque()
        self._presence_due: float | None = None
        self.trimmer = HeapTrimmer()
        self.thread = threading.Thread(target=self._run, name="gapshape-writer", daemon=True)

    def watch(self, conn: Connection) -> None:
        """Take over sending for `conn`, which owns `_flushing` and has bytes left."""
        self._incoming.append(conn)
        self._wake()

    def send_later(self, conn: Connection) -> None:
        """Send `conn`'s queue at the next presence tick."""
        first = not self._later
        self._later.append(conn)
        if first:
            self._wake()

    def stop(self) -> None:
        self._running = False
        self._wake()

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except OSError:  # wake-up socket already full: the writer is awake anyway
            pass

    def _run(self) -> None:
        try:
            while self._running:
                self._register_incoming()
                try:
                    self._send_ready(self._next_timeout())
                    self._send_presence()
                    self.trimmer.maybe_trim(time.monotonic())
                except Exception:  # e.g. the log's disk is full: keep the writer alive, say so
                    log.exception("the writer thread hit an error; going on")
        finally:
            self._close()

    def _close(self) -> None:
        """Release the selector and the wake-up pair (the thread that used them is ending)."""
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()

    def _next_timeout(self) -> float:
        if not self._later:
            return 1.0
        now = time.monotonic()
        if self._presence_due is None:
            self._presence_due = now + PRESENCE_DELAY
        return max(0.0, self._presence_due - now)

    def _send_presence(self) -> None:
        if self._presence_due is None or time.monotonic() < self._presence_due:
            return
        self._presence_due = None
        for _ in range(len(self._later)):  # those queued meanwhile wait for the next tick
            conn = self._later.popleft()
            conn.release_lazy()
            conn.flush()

    def _send_ready(self, timeout: float) -> None:
        for key, _ in self._selector.select(timeout=timeout):
            if key.data is None:
                self._drain_wakeups()
                continue
            conn: Connection = key.data
            if conn.drain_owned():
                try:
                    self._selector.unregister(key.fileobj)
                except (KeyError, ValueError):
                    pass

    def _register_incoming(self) -> None:
        while self._incoming:
            conn = self._incoming.popleft()
            try:
                self._selector.register(conn.sock, selectors.EVENT_WRITE, conn)
            except (ValueError, OSError):
                # Closed meanwhile: draining a closed connection just releases ownership.
                conn.drain_owned()

    def _drain_wakeups(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except OSError:
            pass

