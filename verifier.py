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
place; with `processes=0` the checks run on one thread of this process, as before.

Bounds: a request is about 1 KiB (the key, the signature, the nonce and the names); at most
one is waiting per connection in login, which the server's `--max-clients` bounds. The
pipe's kernel buffer (64 KiB) makes a caller wait when a child falls behind.
"""
from __future__ import annotations

import concurrent.futures
import itertools
import logging
import multiprocessing
import os
import signal
import threading
from multiprocessing.connection import Connection as Pipe
from typing import Any, Callable

import auth

log = logging.getLogger("gapshape.verifier")

DEFAULT_PROCESSES = 1
ANSWER_TIMEOUT = 30.0  # a check takes ~1.3 ms; this long means the child is stuck
RESPAWN_PAUSE = 1.0  # between a child's death and its replacement, so a crash cannot spin
_STOP = None  # the request that tells a child to exit


class VerifierUnavailable(Exception):
    """The proof could not be checked (no child answered in time); the login may be
    tried again."""


def default_processes() -> int:
    """One child per core the server's own threads do not need, at most four."""
    return max(1, min(4, (os.cpu_count() or 2) - 1))


def _check(request: tuple[bytes, bytes, bytes, str, str]) -> str | None:
    """None if the proof is valid, else the reason it is refused."""
    try:
        auth.verify_login(*request)
    except auth.AuthError as exc:
        return str(exc)
    return None


def _child_main(pipe: Pipe) -> None:
    """A child: answer (id, request) with (id, None or the refusal) until told to stop or
    the server goes (its end of the pipe closes)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C is for the server, which stops us
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    while True:
        try:
            message = pipe.recv()
        except (EOFError, OSError):
            return
        if message is _STOP:
            return
        request_id, request = message
        try:
            answer = _check(request)
        except Exception:  # a bug in the parser, not the proof: refuse, keep serving
            answer = "the login proof could not be checked"
        pipe.send((request_id, answer))


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
                 on_death: Callable[[_Child], None]) -> None:
        parent_end, child_end = context.Pipe(duplex=True)
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
        while True:
            try:
                request_id, answer = self.pipe.recv()
            except (EOFError, OSError, TypeError, ValueError):
                break
            self._on_answer(self, request_id, answer)
        self._on_death(self)

    def stop(self, timeout: float) -> None:
        """Ask the process to exit, then make sure it has; close the pipe."""
        try:
            with self.send_lock:
                self.pipe.send(_STOP)
        except (OSError, ValueError):
            pass
        self.process.join(timeout)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(timeout)
        self.reader.join(timeout)
        self.pipe.close()
        self.process.close()


class LoginVerifier:
    """Checks login proofs in `processes` children (0: on one thread of this process)."""

    def __init__(self, processes: int = DEFAULT_PROCESSES,
                 answer_timeout: float = ANSWER_TIMEOUT,
                 respawn_pause: float = RESPAWN_PAUSE) -> None:
        self.processes = processes
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

    def _start_child(self) -> None:
        child = _Child(self._context, next(self._numbers), self._answered, self._child_died)
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

    def _ask_child(self, request: tuple[bytes, bytes, bytes, str, str]) -> str | None:
        waiter = _Waiter()
        with self._lock:
            live = [child for child in self._children if child.alive]
            if self._closed or not live:
                raise VerifierUnavailable("no verifier process is running")
            child = min(live, key=lambda c: len(c.pending))  # the least busy
            request_id = next(self._ids)
            child.pending[request_id] = waiter
        try:
            with child.send_lock:
                child.pipe.send((request_id, request))
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
