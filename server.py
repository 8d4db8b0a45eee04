"""The Gapshape server: one reader thread per connection, one shared writer thread.

    python server.py [--host 127.0.0.1] [--port 5050] [--log messageslog.json] ...

How bytes move:
- Each connection's reader thread waits for input, decodes frames (protocol.FrameDecoder),
  and hands each to a handler, which calls into the state (rooms.ChatState).
- The state pushes encoded frames into the recipients' outboxes (`Connection.push`): a
  bounded list of byte strings.
- A frame that arrived alone (nothing else waiting to be read) is sent at once into every
  idle outbox's socket with a non-blocking `send`: the lowest latency at low load.
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

import _thread
import argparse
import base64
import binascii
import collections
import concurrent.futures
import hashlib
import logging
import os
import secrets
import select
import selectors
import signal
import socket
import ssl
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import auth
from errors import (
    AuthFailed,
    GapshapeError,
    KeyMismatch,
    NameTaken,
    NotLoggedIn,
    ProtocolError,
    RateLimited,
    RequestError,
    ServerFull,
    UnknownUser,
    UnsupportedVersion,
)
from keyregistry import KeyRegistry
from messagelog import MessageLog
from protocol import (
    DEFAULT_MAX_FRAME_SIZE,
    PROTOCOL_VERSION,
    Frame,
    FrameDecoder,
    encode_frame,
    validate_request,
)
from rooms import ChatState, Member, validate_name

log = logging.getLogger("gapshape.server")

# recv() allocates its whole size first: small while a client is quiet, growing while it
# sends a lot. Ten thousand threads each allocating 64 KiB per read fragment the heap.
MIN_RECV_SIZE = 4096
MAX_RECV_SIZE = 65536
THREAD_STACK_SIZE = 512 * 1024  # readers recurse little; small stacks let 10,000 fit
class _Routing(threading.local):
    lone_frame = False  # set by a reader thread while it handles a frame that came alone


_routing = _Routing()
_ABORT, _SEND_NOW, _SCHEDULE, _SEND_LATER = "abort", "send now", "schedule", "send later"
_WOULD_BLOCK = (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError)


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 5050
    log_path: Path = Path("messageslog.json")
    registry_path: Path | None = None  # default: keyregistry.json beside the log
    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE
    outbox_limit: int = 4 * 1024 * 1024
    ping_interval: float = 30.0
    ping_timeout: float = 15.0
    login_timeout: float = 10.0
    rate: float = 5.0  # frames per second a client may sustain; 0 turns flood control off
    burst: int = 20
    max_clients: int = 10_000
    max_per_address: int = 100
    tls_cert: Path | None = None
    tls_key: Path | None = None

    @property
    def registry(self) -> Path:
        return self.registry_path or self.log_path.with_name("keyregistry.json")


class TokenBucket:
    """Flood control: `rate` tokens a second, at most `burst` saved up."""

    __slots__ = ("rate", "burst", "clock", "tokens", "stamp")

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.burst, self.clock = rate, burst, clock
        self.tokens = float(burst)
        self.stamp = clock()

    def take(self) -> bool:
        if self.rate <= 0:
            return True
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


class ConnectionGone(Exception):
    """The peer's socket failed; the connection is being torn down."""


class Connection:
    """One client: its socket, its reader thread, its outbox, and its request handlers."""

    # Ten thousand of these live at once: slots keep each one small.
    __slots__ = (
        "server", "config", "sock", "peer", "ip", "member", "decoder", "bucket", "thread_ident",
        "_refusals", "_last_refusal_reported", "_pending_login", "_last_heard",
        "_login_deadline", "_ping_sent_at", "_close_reason", "_stop", "_out_lock", "_io_lock",
        "_chunks", "_queued", "_scheduled", "_lazy", "_flushing", "_closed", "_poller", "_recv_size",
    )

    def __init__(self, server: ChatServer, sock: socket.socket, address: tuple[str, int]) -> None:
        self.server = server
        self.config = server.config
        self.sock: socket.socket = sock
        self.peer = f"{address[0]}:{address[1]}"
        self.ip = address[0]
        self.member: Member | None = None
        self.thread_ident: int | None = None  # of the reader thread, once it runs
        self.decoder = FrameDecoder(self.config.max_frame_size)
        self.bucket = TokenBucket(self.config.rate, self.config.burst)
        self._refusals: collections.deque[float] | None = None  # made on the first refusal
        self._last_refusal_reported = 0.0
        self._pending_login: dict[str, Any] | None = None
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
        the writer's next presence tick, unless something urgent takes them along first."""
        with self._out_lock:
            if self._closed:
                return
            idle = not self._chunks and not self._flushing
            self._chunks.append(data)
            self._queued += len(data)
            if self._queued > self.config.outbox_limit:
                # Drop it all now: a client that does not read gets nothing more.
                self._closed = True
                self._chunks.clear()
                action = _ABORT
            elif urgent and idle and _routing.lone_frame:
                self._flushing = True
                action = _SEND_NOW
            elif self._scheduled or (not urgent and self._lazy):
                action = None
            elif urgent:
                self._scheduled = True
                action = _SCHEDULE
            else:
                self._lazy = True
                action = _SEND_LATER
        if action is _SEND_NOW:
            if not self.drain_owned():
                self.server.writer.watch(self)
        elif action is _SCHEDULE:
            self.server.dirty.append(self)
        elif action is _SEND_LATER:
            self.server.writer.send_later(self)
        elif action is _ABORT:
            self.abort(f"slow consumer: over {self.config.outbox_limit} bytes waiting to be sent")

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
                    self._chunks.clear()
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
            if self.member is None and time.monotonic() >= self._login_deadline:
                self._close("login timed out")  # however much it sent meanwhile
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
        while not self._stop:
            try:
                frame = self.decoder.next_frame()
            except ProtocolError as error:  # a bad body was skipped; a fatal one stops us
                self._report_bad_frame(error)
                continue
            if frame is None:
                return
            # A lone frame is routed with direct sends (lowest latency); a batch is queued
            # and flushed together, one send per client for the whole batch (throughput).
            _routing.lone_frame = self.decoder.buffered == 0
            try:
                self._dispatch(frame)
            except GapshapeError as error:
                self._report(error, frame)
            finally:
                _routing.lone_frame = False

    def _idle_timeout(self) -> float:
        now = time.monotonic()
        if self.member is None:
            return self._login_deadline - now
        if self._ping_sent_at is not None:
            return self._ping_sent_at + self.config.ping_timeout - now
        return self._last_heard + self.config.ping_interval - now

    def _on_idle(self) -> None:
        now = time.monotonic()
        if self.member is None:
            if now >= self._login_deadline:
                self._close("login timed out")
        elif self._ping_sent_at is not None:
            if now - self._ping_sent_at >= self.config.ping_timeout:
                self._close("no answer to ping")
        elif now - self._last_heard >= self.config.ping_interval:
            self._ping_sent_at = now
            self.push(encode_frame({"type": "ping", "data": secrets.token_hex(4)}))
            self.flush()

    def _close(self, reason: str) -> None:
        self._close_reason = self._close_reason or reason
        self._stop = True

    def _finish(self) -> None:
        reason = self._close_reason or "disconnected"
        if self.member is not None:
            self.server.state.logout(self.member, reason)
            log.info("disconnect %s (%s): %s", self.member.name, self.peer, reason)
        if not reason.startswith("slow consumer"):
            self._drain_before_close(timeout=1.0)
        with self._out_lock:
            self._closed = True
            self._chunks.clear()
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

    # -- requests -------------------------------------------------------------------------

    def _report(self, error: GapshapeError, frame: Frame | None) -> None:
        """The one place where an error becomes an `error` frame."""
        reply: dict[str, Any] = {"type": "error", "code": error.code, "message": error.message}
        if isinstance(frame, dict):
            reply["request"] = frame.get("type")
            if isinstance(frame.get("ref"), str):
                reply["ref"] = frame["ref"]
        self.push(encode_frame(reply))
        if error.fatal:
            log.info("closing %s: %s", self.peer, error.message)
            self._close(error.message)

    def _report_bad_frame(self, error: ProtocolError) -> None:
        """Bad frames count against flood control too, so junk cannot buy error frames."""
        try:
            if error.fatal or self._within_rate():
                self._report(error, None)
        except RateLimited as limited:
            self._report(limited, None)

    def _dispatch(self, frame: Frame) -> None:
        if self.server.stopping:
            return
        if frame["type"] != "pong" and not self._within_rate():
            return  # every frame counts, valid or not
        kind = validate_request(frame)["type"]
        if self.member is None and kind not in _BEFORE_LOGIN:
            raise NotLoggedIn("log in first (send a hello frame)")
        _HANDLERS[kind](self, frame)

    def _within_rate(self) -> bool:
        """Flood control. A refused frame is reported at most once a second (an error per
        refused frame would let a flooder make us flood it back); `burst` refusals within
        10 seconds is abuse, and disconnects."""
        if self.bucket.take():
            return True
        now = time.monotonic()
        if self._refusals is None:
            self._refusals = collections.deque(maxlen=max(1, self.config.burst))
        self._refusals.append(now)
        if len(self._refusals) == self._refusals.maxlen and now - self._refusals[0] < 10:
            self._close("flooding: too many messages")
        if now - self._last_refusal_reported < 1.0:
            return False
        self._last_refusal_reported = now
        raise RateLimited("you are sending too fast; slow down")

    def on_hello(self, frame: Frame) -> None:
        if self.member is not None or self._pending_login is not None:
            raise RequestError("already logged in")
        if frame["version"] != PROTOCOL_VERSION:
            raise UnsupportedVersion(
                f"protocol version {frame['version']} is not supported; this server speaks "
                f"version {PROTOCOL_VERSION}"
            )
        username = validate_name(frame["username"])
        if self.server.state.member(username) is not None:
            raise NameTaken(f'the username "{username}" is already in use')
        public_der = _b64decode(frame["public_key"], "public_key")
        registered = self.server.registry.lookup(username)
        if registered is not None and registered.public_der != public_der:
            raise KeyMismatch(
                f'the username "{username}" is registered to another key; if you lost your key, '
                "ask the server operator to remove the registration"
            )
        nonce = secrets.token_bytes(32)
        self._pending_login = {"username": username, "public_der": public_der, "nonce": nonce}
        self.push(encode_frame({"type": "challenge", "version": PROTOCOL_VERSION,
                                "nonce": base64.b64encode(nonce).decode(),
                                "server_id": self.server.server_id}))

    def on_auth(self, frame: Frame) -> None:
        pending, self._pending_login = self._pending_login, None
        if pending is None or self.member is not None:
            raise RequestError("send hello before auth")
        signature = _b64decode(frame["signature"], "signature")
        try:  # verify_login also refuses unusable keys (size, type, garbage)
            self.server.crypto_pool.submit(
                auth.verify_login, pending["public_der"], signature, pending["nonce"],
                pending["username"], self.server.server_id).result()
        except auth.AuthError as exc:
            raise AuthFailed(f"the login was refused: {exc}") from None
        username = pending["username"]
        with self.server.registration_lock:  # two first logins with one name: one key wins
            registered = self.server.registry.lookup(username)
            if registered is None:
                registered = self.server.registry.register(username, pending["public_der"])
                log.info("registered the key of %s", username)
            elif registered.public_der != pending["public_der"]:
                raise KeyMismatch(f'the username "{username}" is registered to another key')
        self.member = self.server.state.login(username, self, public_der=registered.public_der,
                                              address=self.peer)
        log.info("connect %s from %s", username, self.peer)

    def on_message(self, frame: Frame) -> None:
        self.server.state.post(self._me, frame["text"], frame.get("ref"))

    def on_join(self, frame: Frame) -> None:
        self.server.state.join(self._me, frame["room"])
        log.info("join %s -> %s", self._me.name, self._me.room)

    def on_rooms(self, frame: Frame) -> None:
        self.server.state.list_rooms(self._me)

    def on_list(self, frame: Frame) -> None:
        self.server.state.list_room(self._me)

    def on_users(self, frame: Frame) -> None:
        self.server.state.list_users(self._me)

    def on_status(self, frame: Frame) -> None:
        self.server.state.set_status(self._me, frame["status"], frame.get("note"))
        log.info("status %s -> %s", self._me.name, self._me.status)

    def on_private(self, frame: Frame) -> None:
        self.server.state.send_private(self._me, frame["to"], frame["envelope"], frame.get("ref"))

    def on_get_key(self, frame: Frame) -> None:
        """A user's registered public key; clients pin it and check it on every use."""
        registered = self.server.registry.lookup(frame["user"])
        if registered is None:
            raise UnknownUser(f'no user "{frame["user"][:40]}" is known to this server')
        self.push(encode_frame({
            "type": "key", "user": registered.username,
            "public_key": base64.b64encode(registered.public_der).decode(),
            "fingerprint": registered.fingerprint,
        }))

    def on_ping(self, frame: Frame) -> None:
        self.push(encode_frame({"type": "pong", "data": frame.get("data", "")}))

    def on_pong(self, frame: Frame) -> None:
        """Any input already counts as a sign of life; nothing more to do."""

    def on_quit(self, frame: Frame) -> None:
        self.push(encode_frame({"type": "bye", "reason": "goodbye"}))
        self._close("quit")

    @property
    def _me(self) -> Member:
        assert self.member is not None  # _dispatch lets only login frames through before
        return self.member


def _b64decode(value: str, field: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError(f'field "{field}" is not valid base64') from None


_BEFORE_LOGIN = {"hello", "auth", "ping", "pong", "quit"}
_HANDLERS: dict[str, Callable[[Connection, Frame], None]] = {
    "hello": Connection.on_hello,
    "auth": Connection.on_auth,
    "message": Connection.on_message,
    "join": Connection.on_join,
    "rooms": Connection.on_rooms,
    "list": Connection.on_list,
    "users": Connection.on_users,
    "status": Connection.on_status,
    "private": Connection.on_private,
    "get_key": Connection.on_get_key,
    "ping": Connection.on_ping,
    "pong": Connection.on_pong,
    "quit": Connection.on_quit,
}


PRESENCE_DELAY = 0.05  # seconds arrivals and departures may wait to share a send


class Writer:
    """One thread for all connections whose socket was full: sends when it is writable.

    It also sends presence (arrivals, departures) every PRESENCE_DELAY: when a hundred
    people log in within that time, each member gets their hundred `user_joined` frames in
    one send instead of a hundred."""

    def __init__(self, server: ChatServer) -> None:
        self.server = server
        self._selector = selectors.DefaultSelector()
        self._incoming: collections.deque[Connection] = collections.deque()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._running = True
        self._later: collections.deque[Connection] = collections.deque()
        self._presence_due: float | None = None
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
        while self._running:
            self._register_incoming()
            try:
                self._send_ready(self._next_timeout())
                self._send_presence()
            except Exception:  # e.g. the log's disk is full: keep the writer alive, say so
                log.exception("the writer thread hit an error; going on")

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


class ChatServer:
    """The listening socket, the connections and the shared state."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.tls_context = _make_tls_context(config)
        self.server_id = _server_id(config)
        self.log = MessageLog(config.log_path)
        self.registry = KeyRegistry(config.registry)
        self.registration_lock = threading.Lock()
        self.state = ChatState(self.log, server_id=self.server_id)
        self.dirty: collections.deque[Connection] = collections.deque()
        self.writer = Writer(self)
        self.stopping = False
        self._connections: set[Connection] = set()
        self._per_ip: collections.Counter[str] = collections.Counter()
        self._conn_lock = threading.Lock()
        self._conn_gone = threading.Condition(self._conn_lock)
        # Closing connections wait for their outbox to empty. One condition for the whole
        # server, touched only while someone waits, keeps an Event out of every connection.
        self._drain_cond = threading.Condition()
        self._drain_waiters = 0
        # RSA work runs here, not on the connection threads: GMP's big-number scratch space
        # lives on the stack, and a thread's stack pages stay resident for its whole life.
        self.crypto_pool = concurrent.futures.ThreadPoolExecutor(2, "gapshape-crypto")
        self._stopped = threading.Event()
        self._listener = socket.create_server((config.host, config.port), backlog=1024)
        self._listener.settimeout(0.2)
        self.address: tuple[str, int] = self._listener.getsockname()[:2]

    # -- lifecycle ------------------------------------------------------------------------

    def serve_forever(self) -> None:
        """Accept connections until stop(); never dies on an accept error."""
        self.writer.thread.start()
        backoff = 0.05
        while not self.stopping:
            try:
                sock, address = self._listener.accept()
            except socket.timeout:
                continue
            except OSError as exc:
                if self.stopping:
                    break
                # Out of descriptors or memory: wait for some to be freed instead of dying.
                log.warning("accept failed (%s); retrying in %.2f s", exc, backoff)
                self._stopped.wait(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            backoff = 0.05
            self._admit(sock, address)
        self._shutdown()

    def start(self) -> threading.Thread:
        """Serve in a background thread (tests and embedding)."""
        thread = threading.Thread(target=self.serve_forever, name="gapshape-accept", daemon=True)
        thread.start()
        return thread

    def stop(self, timeout: float = 2.0) -> None:
        self.stopping = True
        self._stopped.wait(timeout)

    def _admit(self, sock: socket.socket, address: tuple[str, int]) -> None:
        ip = address[0]
        with self._conn_lock:
            refusal = None
            if len(self._connections) >= self.config.max_clients:
                refusal = "the server is full; try again later"
            elif self._per_ip[ip] >= self.config.max_per_address:
                refusal = "too many connections from your address"
            if refusal is None:
                conn = Connection(self, sock, address)
                self._connections.add(conn)
                self._per_ip[ip] += 1
        if refusal is not None:
            _refuse(sock, ServerFull(refusal), tls=self.tls_context is not None)
            log.info("refused %s:%s: %s", ip, address[1], refusal)
            return
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            # A bare thread, not a threading.Thread: the object, its Event and its entry in
            # threading's tables cost about 2 KiB a client (see docs/PERFORMANCE.md).
            _thread.start_new_thread(conn.run, ())
        except RuntimeError:  # cannot start a thread: out of resources
            log.warning("cannot start a thread for %s; refusing it", conn.peer)
            self.forget(conn)
            sock.close()

    def forget(self, conn: Connection) -> None:
        with self._conn_lock:
            if conn in self._connections:
                self._connections.discard(conn)
                self._per_ip[conn.ip] -= 1
                if self._per_ip[conn.ip] <= 0:
                    del self._per_ip[conn.ip]
                self._conn_gone.notify_all()

    def announce_drained(self) -> None:
        if self._drain_waiters:
            with self._drain_cond:
                self._drain_cond.notify_all()

    def wait_for_drain(self, predicate: Callable[[], bool], timeout: float) -> bool:
        with self._drain_cond:
            self._drain_waiters += 1
            try:
                return self._drain_cond.wait_for(predicate, timeout)
            finally:
                self._drain_waiters -= 1

    def connection_count(self) -> int:
        with self._conn_lock:
            return len(self._connections)

    def flush(self) -> None:
        """Send every outbox with data (each drain writes the log first; module docstring)."""
        dirty = self.dirty
        while dirty:
            try:
                conn = dirty.popleft()
            except IndexError:
                return
            conn.flush()

    def _shutdown(self) -> None:
        """Say goodbye to everyone, let the frames leave, close the log: within 2 s."""
        log.info("shutting down")
        self._listener.close()
        self.state.broadcast_all({"type": "bye", "reason": "server shutting down"})
        self.flush()
        with self._conn_lock:
            connections = list(self._connections)
        deadline = time.monotonic() + 1.0
        for conn in connections:
            conn.wait_drained(max(0.0, deadline - time.monotonic()))
            conn.abort("server shutting down")
        with self._conn_gone:
            self._conn_gone.wait_for(lambda: not self._connections, timeout=0.7)
        self.writer.stop()
        self.crypto_pool.shutdown(wait=False)
        self.log.close()
        log.info("stopped")
        self._stopped.set()


def _refuse(sock: socket.socket, error: GapshapeError, tls: bool) -> None:
    """Tell a refused client why, if its socket takes the bytes at once, then close."""
    try:
        if not tls:
            sock.setblocking(False)
            sock.send(encode_frame({"type": "error", "code": error.code, "message": error.message}))
    except OSError:
        pass
    finally:
        sock.close()


def _server_id(config: ServerConfig) -> str:
    """What login proofs are bound to. Under TLS it is the SHA-256 of our certificate, which
    the client computes itself from the certificate it sees: a proof made for one server
    cannot be relayed to another. In plain TCP anyone in the path can relay anything, so a
    random id per run only separates servers."""
    if config.tls_cert is None:
        return secrets.token_hex(8)
    pem = config.tls_cert.read_text("ascii")
    first = pem[pem.index("-----BEGIN CERTIFICATE-----"):]
    first = first[: first.index("-----END CERTIFICATE-----") + len("-----END CERTIFICATE-----")]
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(first)).hexdigest()


def _make_tls_context(config: ServerConfig) -> ssl.SSLContext | None:
    if config.tls_cert is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(config.tls_cert), str(config.tls_key or config.tls_cert))
    return context


def raise_fd_limit() -> None:
    """Each client holds a descriptor; lift the soft limit as far as the hard one allows."""
    try:
        import resource
    except ImportError:  # Windows has no such limit to raise
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else 1_048_576
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            pass


def limit_malloc_arenas(arenas: int = 2) -> None:
    """glibc gives busy threads malloc arenas of their own, up to 8 per core, and each keeps
    freed memory of its own. With one thread per client, a couple of shared arenas cost
    less memory per client for no measurable speed (docs/PERFORMANCE.md). This is what the
    MALLOC_ARENA_MAX environment variable does; elsewhere than glibc it does nothing."""
    if not sys.platform.startswith("linux") or "MALLOC_ARENA_MAX" in os.environ:
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return
    M_ARENA_MAX = -8
    mallopt(M_ARENA_MAX, arenas)


def build_parser() -> argparse.ArgumentParser:
    d = ServerConfig()
    p = argparse.ArgumentParser(description="Gapshape chat server.")
    p.add_argument("--host", default=d.host, help="address to listen on (default %(default)s)")
    p.add_argument("--port", type=int, default=d.port, help="TCP port; 0 picks a free one (default %(default)s)")
    p.add_argument("--log", type=Path, default=d.log_path, help="message log, JSON Lines (default %(default)s)")
    p.add_argument("--registry", type=Path, help="username -> key registry (default: keyregistry.json beside the log)")
    p.add_argument("--max-frame", type=int, default=d.max_frame_size, help="largest frame accepted, bytes (default %(default)s)")
    p.add_argument("--outbox-limit", type=int, default=d.outbox_limit, help="bytes queued for one client before it is dropped as a slow consumer (default %(default)s)")
    p.add_argument("--ping-interval", type=float, default=d.ping_interval, help="seconds of silence before the server pings a client (default %(default)s)")
    p.add_argument("--ping-timeout", type=float, default=d.ping_timeout, help="seconds to wait for any answer to a ping (default %(default)s)")
    p.add_argument("--login-timeout", type=float, default=d.login_timeout, help="seconds a new connection has to log in (default %(default)s)")
    p.add_argument("--rate", type=float, default=d.rate, help="frames per second a client may sustain; 0 = no flood control (default %(default)s)")
    p.add_argument("--burst", type=int, default=d.burst, help="frames a client may send at once above the rate (default %(default)s)")
    p.add_argument("--max-clients", type=int, default=d.max_clients, help="connections the server holds at once (default %(default)s)")
    p.add_argument("--max-per-address", type=int, default=d.max_per_address, help="connections from one IP address (default %(default)s)")
    p.add_argument("--tls-cert", type=Path, help="PEM certificate chain: serve TLS")
    p.add_argument("--tls-key", type=Path, help="PEM private key of --tls-cert (if not in the same file)")
    p.add_argument("--forget-user", metavar="NAME", help="operator: remove NAME's key registration (lost key) and exit")
    p.add_argument("--verbose", action="store_true", help="debug logging")
    return p


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    return ServerConfig(
        host=args.host, port=args.port, log_path=args.log, registry_path=args.registry,
        max_frame_size=args.max_frame, outbox_limit=args.outbox_limit,
        ping_interval=args.ping_interval, ping_timeout=args.ping_timeout,
        login_timeout=args.login_timeout, rate=args.rate, burst=args.burst,
        max_clients=args.max_clients, max_per_address=args.max_per_address,
        tls_cert=args.tls_cert, tls_key=args.tls_key,
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s.%(msecs)03d %(levelname)s %(message)s", datefmt="%Y-%m-%d %H:%M:%S",
    )
    # Thread names are not in our format, and asking for one on a bare connection thread
    # would make threading keep a dummy Thread object for it.
    logging.logThreads = False
    config = config_from_args(args)
    if args.forget_user:
        removed = KeyRegistry(config.registry).forget(args.forget_user)
        print(f"{args.forget_user}: {'registration removed' if removed else 'was not registered'}")
        return 0
    raise_fd_limit()
    limit_malloc_arenas()
    threading.stack_size(THREAD_STACK_SIZE)
    server = ChatServer(config)
    host, port = server.address
    scheme = "TLS" if server.tls_context else "plain TCP"
    print(f"Gapshape server listening on {host}:{port} ({scheme})", flush=True)

    def request_stop(signum: int, _frame: Any) -> None:
        server.stopping = True

    signal.signal(signal.SIGINT, request_stop)
    if hasattr(signal, "SIGTERM"):
        signal.signal(signal.SIGTERM, request_stop)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
