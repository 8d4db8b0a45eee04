"""Test helpers for hostile-network tests: a hand-driven protocol peer and a server process.

`RawPeer` speaks Gapshape over a real socket with nothing of client.py in the way, so a
test can send exactly the bytes it wants (garbage, half a header, a frame the client
library would never write) and see exactly the frames the server answers with. Every
wait has a deadline and fails loudly; nothing here sleeps to synchronize.

`ServerProcess` runs `server.py` as a real subprocess (for SIGKILL and SIGTERM tests) and
reads the address it prints when it is ready.
"""
from __future__ import annotations

import base64
import os
import queue
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import auth
from protocol import PROTOCOL_VERSION, FrameDecoder, encode_frame

ROOT = Path(__file__).resolve().parent.parent
WAIT = 10.0  # the longest any single expected event may take

Frame = dict[str, Any]


class PeerClosed(Exception):
    """The server closed the connection (EOF or reset) while a frame was awaited."""


class RawPeer:
    """One connection to the server, driven by hand. Not thread-safe; one test thread."""

    def __init__(self, address: tuple[str, int], *, rcvbuf: int | None = None,
                 source: str | None = None, timeout: float = WAIT) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:  # before connect, so the window is small from the start
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        if source is not None:
            self.sock.bind((source, 0))
        self.sock.settimeout(timeout)
        self.sock.connect(address)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.decoder = FrameDecoder(max_frame_size=16 * 1024 * 1024)
        self.frames: list[Frame] = []  # every frame received, in order
        self.closed = False
        self.username = ""

    # -- sending ---------------------------------------------------------------------------

    def send(self, frame: dict[str, Any]) -> None:
        self.send_bytes(encode_frame(frame))

    def send_bytes(self, data: bytes) -> None:
        self.sock.sendall(data)

    def try_send(self, data: bytes) -> bool:
        """Send, reporting False (not raising) if the server has already hung up."""
        try:
            self.sock.sendall(data)
            return True
        except OSError:
            return False

    # -- receiving -------------------------------------------------------------------------

    def next_frame(self, timeout: float = WAIT) -> Frame:
        """The next frame; PeerClosed at end of stream; TimeoutError after `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            frame = self.decoder.next_frame()
            if frame is not None:
                self.frames.append(frame)
                return frame
            if self.closed:
                raise PeerClosed("the server closed the connection")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no frame within {timeout}s; got so far {self.frames[-5:]!r}")
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(65536)
            except TimeoutError:  # socket.timeout is an alias of it
                continue
            except (ConnectionResetError, ConnectionAbortedError, BrokenPipeError):
                data = b""
            if not data:
                self.closed = True
            else:
                self.decoder.receive_data(data)

    def wait_for(self, match: Callable[[Frame], bool] | str, timeout: float = WAIT) -> Frame:
        """The next frame that matches (a predicate, or a frame type); skips the others."""
        test = (lambda f: f.get("type") == match) if isinstance(match, str) else match
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(
                    f"no matching frame within {timeout}s; last: {self.frames[-5:]!r}")
            frame = self.next_frame(remaining)
            if test(frame):
                return frame

    def wait_closed(self, timeout: float = WAIT) -> list[Frame]:
        """Read until the server closes the connection; return the frames it sent meanwhile.

        Raises TimeoutError if the connection is still open after `timeout` seconds."""
        start = len(self.frames)
        try:
            while True:
                self.next_frame(timeout)
        except PeerClosed:
            return self.frames[start:]

    def drain_available(self) -> list[Frame]:
        """Frames that arrive without waiting (a 0-timeout poll)."""
        start = len(self.frames)
        try:
            while True:
                self.next_frame(0.001)
        except (TimeoutError, PeerClosed):
            return self.frames[start:]

    # -- login -----------------------------------------------------------------------------

    def hello(self, username: str, key: Any) -> Frame:
        self.send({"type": "hello", "version": PROTOCOL_VERSION, "username": username,
                   "public_key": base64.b64encode(auth.public_key_der(key)).decode()})
        return self.wait_for(lambda f: f["type"] in ("challenge", "error"))

    def login(self, username: str, key: Any) -> Frame:
        """hello -> challenge -> auth -> welcome (+ the #common snapshot); returns welcome."""
        challenge = self.hello(username, key)
        assert challenge["type"] == "challenge", challenge
        signature = auth.sign_login(key, base64.b64decode(challenge["nonce"]), username,
                                    challenge["server_id"])
        self.send({"type": "auth", "signature": base64.b64encode(signature).decode()})
        welcome = self.wait_for(lambda f: f["type"] in ("welcome", "error"))
        assert welcome["type"] == "welcome", welcome
        for room in welcome.get("rooms", ["#common"]):  # a user may have left every room
            self.wait_for(lambda f, room=room: f["type"] == "joined" and f["room"] == room)
        self.username = username
        return welcome

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self) -> RawPeer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def wait_until(condition: Callable[[], Any], timeout: float = WAIT, what: str = "") -> Any:
    """Poll `condition` until it is truthy; fail after `timeout`. For state with no event
    to wait on (a server's connection count); the poll interval is not a synchronization."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"not true within {timeout}s: {what or condition}")
        time.sleep(0.005)


def error_codes(frames: Iterable[Frame]) -> list[str]:
    return [f.get("code", "") for f in frames if f.get("type") == "error"]


def percentile(samples: list[float], fraction: float) -> float:
    """Nearest-rank percentile (fraction in 0..1) of a non-empty list."""
    ordered = sorted(samples)
    rank = max(0, min(len(ordered) - 1, round(fraction * len(ordered) + 0.5) - 1))
    return ordered[rank]


class ServerProcess:
    """`python server.py ...` in a subprocess, with its output collected by a thread."""

    READY = re.compile(r"Gapshape server listening on (\S+):(\d+)")

    def __init__(self, *args: str, cwd: Path = ROOT,
                 preexec_fn: Callable[[], None] | None = None) -> None:
        command = [sys.executable, "-u", str(ROOT / "server.py"), *args]
        self.proc = subprocess.Popen(
            command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            encoding="utf-8", errors="replace", preexec_fn=preexec_fn,
        )
        self.lines: list[str] = []
        self._ready: queue.Queue[tuple[str, int] | None] = queue.Queue()
        self._reader = threading.Thread(target=self._collect, daemon=True)
        self._reader.start()
        found = self._ready.get(timeout=WAIT)
        if found is None:
            raise RuntimeError("server.py exited before it was ready:\n" + self.output())
        self.address = found

    def _collect(self) -> None:
        assert self.proc.stdout is not None
        announced = False
        for line in self.proc.stdout:
            self.lines.append(line)
            match = self.READY.search(line)
            if match and not announced:
                announced = True
                self._ready.put((match.group(1), int(match.group(2))))
        if not announced:
            self._ready.put(None)

    def output(self) -> str:
        return "".join(self.lines)

    def wait_for_output(self, pattern: str, timeout: float = WAIT) -> str:
        """The first output line matching the regular expression `pattern`."""
        regex = re.compile(pattern)
        return wait_until(
            lambda: next((line for line in list(self.lines) if regex.search(line)), None),
            timeout, f"server output matching {pattern!r}")

    def signal(self, signum: int) -> None:
        os.kill(self.proc.pid, signum)

    def wait(self, timeout: float = WAIT) -> int:
        code = self.proc.wait(timeout)
        self._reader.join(timeout)
        return code

    def stop(self) -> None:
        """Teardown: kill it if still running (tests stop it their own way first)."""
        if self.proc.poll() is None:
            self.proc.kill()  # SIGKILL on POSIX, TerminateProcess on Windows
        self.proc.wait(WAIT)
        self._reader.join(WAIT)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
