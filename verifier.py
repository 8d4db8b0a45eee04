"""Login proofs checked in child processes, off the server's GIL.

Checking a proof (`auth.verify_login`) takes about 1.3 ms, most of it pycryptodome's
Python that parses the key, so in the server's process it holds the GIL that every
reader thread needs: a login storm then runs the RSA work and the rest of the logins one
after the other, on one core. Here the checks run in `processes` children instead, each
fed through its own pipe the moment a request arrives; the second core does the RSA while
the server's threads carry on.

    verifier = LoginVerifier(processes=1)
    verifier.verify(public_der, signature, nonce, username, server_id)  # or AuthError
    verifier.close()

`verify` blocks only its caller (a connection's reader thread). One reader thread per
child hands each answer to the thread that asked. A child that dies (killed, out of
memory) fails the checks it held with `VerifierUnavailable`, and a new one takes its
place; one that stops reading is killed once a write to it has waited `answer_timeout`; with `processes=0` the checks run on one thread of this process, as before.

The pipes carry this module's own frames, not pickles: a 4-byte big-endian length, then
for a request its id, five 2-byte lengths and the five fields; for an answer its id and
the refusal as UTF-8 (empty: valid). So neither side can be made to build objects it did
not ask for, and a request goes out with one `writev` from the bytes it already has.

Bounds: a request is about 1 KiB (the key, the signature, the nonce and the names); at most
one is waiting per connection in login, which the server's `--max-clients` bounds. The
pipe's kernel buffer makes a caller wait when a child falls behind; a frame over
MAX_FRAME ends the pipe.
"""
from __future__ import annotations

import atexit
import concurrent.futures
import itertools
import logging
import multiprocessing
import os
import signal
import socket
import struct
import threading
import weakref
from multiprocessing.connection import Connection as Pipe
from typing import Any, Callable

import auth

log = logging.getLogger("gapshape.verifier")

ANSWER_TIMEOUT = 30.0  # a check takes ~1.3 ms; this long means the child is stuck
RESPAWN_PAUSE = 1.0  # between a child's death and its replacement, so a crash cannot spin
MAX_FRAME = 64 * 1024  # far above a request (~1 KiB) or an answer; beyond it the pipe is broken
_LENGTH = struct.Struct("!I")
_REQUEST = struct.Struct("!IHHHHH")  # id, then the lengths of the five fields
_ANSWER_ID = struct.Struct("!I")
_STOP = b""  # the (empty) request that tells a child to exit

Request = tuple[bytes, bytes, bytes, str, str]  # verify_login's arguments


def _write_frame(fd: int, parts: list[bytes]) -> None:
    """One frame, written whole (the caller holds the pipe's send lock)."""
    size = sum(len(part) for part in parts)
    data = [_LENGTH.pack(size), *parts]
    total = size + _LENGTH.size
    written = os.writev(fd, data)
    if written < total:  # a full socket buffer: rare, so the rest is joined and looped
        rest = memoryview(b"".join(data))[written:]
        while rest:
            rest = rest[os.write(fd, rest):]


class _FrameReader:
    """Frames from a pipe's file descriptor; `next()` is None at the end of the pipe."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buffer = bytearray()

    def next(self) -> bytes | None:
        while True:
            if len(self.buffer) >= _LENGTH.size:
                (size,) = _LENGTH.unpack_from(self.buffer)
                if size > MAX_FRAME:
                    return None
                end = _LENGTH.size + size
                if len(self.buffer) >= end:
                    frame = bytes(self.buffer[_LENGTH.size:end])
                    del self.buffer[:end]
                    return frame
            try:
                data = os.read(self.fd, 65536)
            except OSError:
                return None
            if not data:
                return None
            self.buffer += data


def _encode_request(request_id: int, request: Request) -> list[bytes]:
    public_der, signature, nonce, username, server_id = request
    fields = [public_der, signature, nonce, username.encode(), server_id.encode()]
    if max(len(field) for field in fields) > 0xFFFF:  # far beyond any usable key or proof
        raise auth.AuthError("the login proof is too large")
    return [_REQUEST.pack(request_id, *(len(field) for field in fields)), *fields]


def _decode_request(frame: bytes) -> tuple[int, Request]:
    request_id, *lengths = _REQUEST.unpack_from(frame)
    fields, at = [], _REQUEST.size
    for length in lengths:
        fields.append(frame[at:at + length])
        at += length
    if at != len(frame):
        raise ValueError("a request's lengths do not add up")
    der, signature, nonce, username, server_id = fields
    return request_id, (der, signature, nonce, username.decode(), server_id.decode())


class VerifierUnavailable(Exception):
    """The proof could not be checked (no child answered in time); the login may be
    tried again."""


def default_processes() -> int:
    """One child per core the server's own threads do not need, at most four."""
    return max(1, min(4, (os.cpu_count() or 2) - 1))


def _check(request: Request) -> str | None:
    """None if the proof is valid, else the reason it is refused."""
    try:
        auth.verify_login(*request)
    except auth.AuthError as exc:
        return str(exc)
    return None


def _child_main(pipe: Pipe) -> None:
    """A child: answer each request with its id and None or the refusal, until told to
    stop or the server goes (its end of the pipe closes)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C is for the server, which stops us
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    reader, fd = _FrameReader(pipe.fileno()), pipe.fileno()
    while (frame := reader.next()) is not None and frame != _STOP:
        try:
            request_id, request = _decode_request(frame)
        except (struct.error, ValueError):  # not from our server: nothing to answer
            return
        try:
            answer = _check(request)
        except Exception:  # a bug in the parser, not the proof: refuse, keep serving
            answer = "the login proof could not be checked"
        try:
            _write_frame(fd, [_ANSWER_ID.pack(request_id), (answer or "").encode()])
        except OSError:
            return


def _bound_sends(pipe: Pipe, seconds: float) -> None:
    """Make a write to `pipe` give up after `seconds` (SO_SNDTIMEO on its socket), so that
    a stuck child cannot hold a caller, and the send lock, for ever. Where the pipe is not
    a socket (Windows), writes stay unbounded."""
    try:
        sock = socket.socket(fileno=os.dup(pipe.fileno()))
    except OSError:
        return
    with sock:
        whole = int(seconds)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO,
                        struct.pack("ll", whole, int((seconds - whole) * 1e6)))


class _Waiter:
    """One caller waiting for its answer: a lock the reader thread releases."""

    __slots__ = ("lock", "answer", "failed")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.lock.acquire()
        self.answer: str | None = None
        self.failed = False


class _Child:
    """One verifying process, its pipe, the requests it holds and the thread reading its
    answers (which calls `on_answer(child, id, answer)`, then `on_death(child)` at the end)."""

    def __init__(self, context: Any, number: int, on_answer: Callable[[_Child, int, str | None], None],
                 on_death: Callable[[_Child], None], send_timeout: float) -> None:
        parent_end, child_end = context.Pipe(duplex=True)
        _bound_sends(parent_end, send_timeout)
        self.process = context.Process(target=_child_main, args=(child_end,),
                                       name=f"gapshape-verifier-{number}", daemon=True)
        self.process.start()
        child_end.close()
        self.pipe: Pipe = parent_end
        self.send_lock = threading.Lock()
        self.pending: dict[int, _Waiter] = {}  # guarded by LoginVerifier._lock
        self.alive = True
        self._on_answer, self._on_death = on_answer, on_death
        self.reader = threading.Thread(target=self._read_answers,
                                       name=f"{self.process.name}-answers", daemon=True)
        self.reader.start()

    def _read_answers(self) -> None:
        reader = _FrameReader(self.pipe.fileno())
        while (frame := reader.next()) is not None and len(frame) >= _ANSWER_ID.size:
            (request_id,) = _ANSWER_ID.unpack_from(frame)
            refusal = frame[_ANSWER_ID.size:].decode(errors="replace")
            self._on_answer(self, request_id, refusal or None)
        self._on_death(self)

    def send(self, parts: list[bytes]) -> None:
        """Write one frame; a child that has not taken it within the send timeout is stuck
        (and the pipe may hold half a frame now): it is killed, and OSError raised."""
        with self.send_lock:
            try:
                _write_frame(self.pipe.fileno(), parts)
            except (BlockingIOError, TimeoutError):
                self.process.kill()  # its reader then sees the end, and it is replaced
                raise

    def stop(self, timeout: float) -> None:
        """Ask the process to exit, then make sure it has; close the pipe."""
        try:
            self.send([_STOP])
        except (OSError, ValueError):
            pass
        self.process.join(timeout)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(timeout)
        self.reader.join(timeout)
        self.pipe.close()
        self.process.close()


_open_verifiers: weakref.WeakSet[LoginVerifier] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    """At exit, before multiprocessing terminates daemon children (its own exit handler
    was registered earlier, so it runs later): stop ours, so their end is not a death."""
    for verifier in list(_open_verifiers):
        verifier.close(timeout=0.5)


class LoginVerifier:
    """Checks login proofs in `processes` children (0: on one thread of this process)."""

    def __init__(self, processes: int, answer_timeout: float = ANSWER_TIMEOUT,
                 respawn_pause: float = RESPAWN_PAUSE) -> None:
        self.answer_timeout = answer_timeout
        self.respawn_pause = respawn_pause
        self._closing = threading.Event()
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._children: list[_Child] = []
        self._closed = False
        self._numbers = itertools.count(1)
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        if processes <= 0:
            # GMP's big-number scratch space lives on the stack, and a thread's stack pages
            # stay resident for its whole life: keep RSA off the connection threads.
            self._pool = concurrent.futures.ThreadPoolExecutor(1, "gapshape-crypto")
            return
        # forkserver: children fork from a small clean process, not from this one with its
        # threads and locks; each costs milliseconds once the server process is up.
        methods = multiprocessing.get_all_start_methods()
        self._context = multiprocessing.get_context(
            "forkserver" if "forkserver" in methods else "spawn")
        if "forkserver" in methods:
            self._context.set_forkserver_preload(["auth"])
        for _ in range(processes):
            self._start_child()
        _open_verifiers.add(self)

    def _start_child(self) -> None:
        child = _Child(self._context, next(self._numbers), self._answered, self._child_died,
                       self.answer_timeout)
        with self._lock:
            self._children.append(child)

    # -- checking -------------------------------------------------------------------------

    def verify(self, public_der: bytes, signature: bytes, nonce: bytes, username: str,
               server_id: str) -> None:
        """Return if the proof is valid; raise auth.AuthError if it is not, or
        VerifierUnavailable if it could not be checked."""
        request = (public_der, signature, nonce, username, server_id)
        if self._pool is not None:
            try:
                refusal = self._pool.submit(_check, request).result()
            except RuntimeError:  # the pool was shut down: the server is stopping
                raise VerifierUnavailable("the server is stopping") from None
        else:
            refusal = self._ask_child(request)
        if refusal is not None:
            raise auth.AuthError(refusal)

    def _ask_child(self, request: Request) -> str | None:
        waiter = _Waiter()
        with self._lock:
            live = [child for child in self._children if child.alive]
            if self._closed or not live:
                raise VerifierUnavailable("no verifier process is running")
            child = min(live, key=lambda c: len(c.pending))  # the least busy
            request_id = next(self._ids) & 0xFFFFFFFF  # ids of checks in flight never meet
            child.pending[request_id] = waiter
        try:
            child.send(_encode_request(request_id, request))
        except UnicodeEncodeError:  # a name no client could have signed
            self._forget(child, request_id)
            raise auth.AuthError("the login proof could not be checked") from None
        except auth.AuthError:
            self._forget(child, request_id)
            raise
        except (OSError, ValueError):
            self._forget(child, request_id)
            raise VerifierUnavailable("the verifier process is gone") from None
        if not waiter.lock.acquire(timeout=self.answer_timeout):
            self._forget(child, request_id)
            raise VerifierUnavailable(f"no answer within {self.answer_timeout:g} s")
        if waiter.failed:
            raise VerifierUnavailable("the verifier process stopped before answering")
        return waiter.answer

    def _forget(self, child: _Child, request_id: int) -> None:
        with self._lock:
            child.pending.pop(request_id, None)

    def _answered(self, child: _Child, request_id: int, answer: str | None) -> None:
        with self._lock:
            waiter = child.pending.pop(request_id, None)
        if waiter is not None:  # else its caller gave up waiting
            waiter.answer = answer
            waiter.lock.release()

    def _child_died(self, child: _Child) -> None:
        """The child's pipe closed: fail what it held; unless closing, replace it."""
        with self._lock:
            child.alive = False
            held, child.pending = child.pending, {}
            closing = self._closed
        for waiter in held.values():
            waiter.failed = True
            waiter.lock.release()
        if closing:
            return
        child.process.join(0.5)  # reap it, for the exit code
        log.warning("verifier process %s ended (exit code %s); starting another",
                    child.process.name, child.process.exitcode)
        threading.Thread(target=self._replace, args=(child,), name="gapshape-verifier-restart",
                         daemon=True).start()

    def _replace(self, dead: _Child) -> None:
        # A child that dies at once must not be restarted in a loop.
        if self._closing.wait(self.respawn_pause):
            return
        with self._lock:
            if self._closed:
                return
            self._children.remove(dead)
        dead.stop(timeout=1.0)
        try:
            self._start_child()
        except OSError as exc:
            log.error("cannot start a verifier process: %s", exc)

    # -- lifecycle ------------------------------------------------------------------------

    def child_pids(self) -> list[int]:
        with self._lock:
            return [child.process.pid for child in self._children if child.alive]

    def close(self, timeout: float = 2.0) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            children = list(self._children)
        self._closing.set()
        if self._pool is not None:
            self._pool.shutdown(wait=False)
        for child in children:
            child.stop(timeout)
