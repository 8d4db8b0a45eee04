"""A frame-aware TCP proxy for tests: it records every byte and can rewrite frames.

It plays the part of a malicious server (or of anyone on the path): whatever the real
server sends can be altered, dropped or repeated before the client sees it.
"""
from __future__ import annotations

import socket
import threading
from typing import Any, Callable

from protocol import FrameDecoder, encode_frame

# transform(direction, frame) -> frames to forward instead; direction is "up" (client to
# server) or "down" (server to client). A HANG_UP in the list closes the connection (both
# sides) once the frames before it are sent, as a server does after a `bye`.
Transform = Callable[[str, dict[str, Any]], list[dict[str, Any]]]

HANG_UP: dict[str, Any] = {"type": "__hang_up__"}


class _HungUp(Exception):
    pass


def forward_unchanged(direction: str, frame: dict[str, Any]) -> list[dict[str, Any]]:
    return [frame]


class FrameProxy:
    """Listens on 127.0.0.1 (port 0) and relays each connection to `upstream`."""

    def __init__(self, upstream: tuple[str, int], transform: Transform = forward_unchanged) -> None:
        self.upstream = upstream
        self.transform = transform
        self.captured = bytearray()  # every byte, both directions, as it crossed the wire
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.address: tuple[str, int] = self._listener.getsockname()[:2]
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            self._sockets += [client, server]
            threading.Thread(target=self._pump, args=(client, server, "up"), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, "down"), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket, direction: str) -> None:
        decoder = FrameDecoder(max_frame_size=1 << 24)
        try:
            while data := source.recv(65536):
                with self._lock:
                    self.captured += data
                for frame in decoder.feed(data):
                    for out in self.transform(direction, frame):
                        if out is HANG_UP:
                            raise _HungUp
                        target.sendall(encode_frame(out))
        except (OSError, _HungUp):
            pass
        finally:
            for sock in (source, target):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self._listener.close()
        for sock in self._sockets:
            sock.close()
