"""A bare protocol client for tests that must send exactly the bytes they choose."""
from __future__ import annotations

import base64
import socket
import time
import weakref
from typing import Any, Callable

import auth
from protocol import PROTOCOL_VERSION, FrameDecoder, encode_frame


class RawClient:
    """A socket speaking Gapshape frames by hand, with timed waits for frames."""

    # Every client not yet closed: conftest closes them after each test.
    open_clients: weakref.WeakSet[RawClient] = weakref.WeakSet()

    def __init__(self, address: tuple[str, int], timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(address, timeout=timeout)
        RawClient.open_clients.add(self)
        self.decoder = FrameDecoder(max_frame_size=1 << 24)
        self.timeout = timeout
        self.frames: list[dict[str, Any]] = []

    def send(self, frame: dict[str, Any]) -> None:
        self.sock.sendall(encode_frame(frame))

    def send_bytes(self, data: bytes) -> None:
        self.sock.sendall(data)

    def login(self, username: str, key: Any) -> dict[str, Any]:
        """Prove `key` for `username`; returns the welcome frame."""
        self.send({"type": "hello", "version": PROTOCOL_VERSION, "username": username,
                   "public_key": base64.b64encode(auth.public_key_der(key)).decode()})
        challenge = self.expect("challenge")
        nonce = base64.b64decode(challenge["nonce"])
        signature = auth.sign_login(key, nonce, username, challenge["server_id"])
        self.send({"type": "auth", "signature": base64.b64encode(signature).decode()})
        return self.expect("welcome")

    def next_frame(self, timeout: float | None = None) -> dict[str, Any] | None:
        """The next frame, or None if the server closed the connection."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            frame = self.decoder.next_frame()
            if frame is not None:
                self.frames.append(frame)
                return frame
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no frame from the server in time")
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(65536)
            except ConnectionResetError:
                data = b""
            if not data:
                return None
            self.decoder.receive_data(data)

    def expect(self, kind: str | Callable[[dict[str, Any]], bool],
               timeout: float | None = None) -> dict[str, Any]:
        """Skip frames until one of type `kind` (or matching a predicate) arrives."""
        test = kind if callable(kind) else (lambda f: f["type"] == kind)
        while True:
            frame = self.next_frame(timeout)
            if frame is None:
                raise ConnectionError(f"closed while waiting for {kind}; got {self.frames}")
            if test(frame):
                return frame

    def wait_closed(self, timeout: float | None = None) -> list[dict[str, Any]]:
        """Read until the server closes; returns the frames received meanwhile."""
        received = []
        while (frame := self.next_frame(timeout)) is not None:
            received.append(frame)
        return received

    def close(self) -> None:
        self.sock.close()
        RawClient.open_clients.discard(self)
