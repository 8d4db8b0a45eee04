"""The bare relay: the simplest chat server that speaks Gapshape's framing, as a baseline.

    python bench/relay.py [--host 127.0.0.1] [--port 0]

prints ``relay listening on HOST:PORT`` once it accepts connections.

It is what `bench/run.py` compares Gapshape with, side by side in the same run: one thread
per connection, one room that every connection is in, no login, no JSON, no log. Each
frame (4-byte big-endian length + body, the framing of `protocol.py`) that a connection
sends is passed, byte for byte, to every connection, the sender included, with one
blocking `sendall` per member while holding the room's lock. A new connection gets one
frame, ``{"type":"ready"}``, once it is in the room, so that the load generator knows
when it may start. A member whose socket fails is skipped; its own thread removes it.
"""
from __future__ import annotations

import argparse
import signal
import socket
import sys
import threading

HEADER_BYTES = 4
MAX_FRAME = 64 * 1024
RECV_SIZE = 65536
READY = b'{"type":"ready"}'
THREAD_STACK_SIZE = 512 * 1024  # as server.py: lets 10,000 threads fit


def frame(body: bytes) -> bytes:
    return len(body).to_bytes(HEADER_BYTES, "big") + body


class Relay:
    def __init__(self, host: str, port: int) -> None:
        self.listener = socket.create_server((host, port), backlog=1024)
        self.address: tuple[str, int] = self.listener.getsockname()[:2]
        self.lock = threading.Lock()
        self.members: list[socket.socket] = []

    def serve_forever(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return  # listener closed: shutting down
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self.handle, args=(sock,), daemon=True).start()

    def broadcast(self, data: bytes) -> None:
        with self.lock:
            for member in self.members:
                try:
                    member.sendall(data)
                except OSError:
                    pass  # its reader sees the failure and removes it

    def handle(self, sock: socket.socket) -> None:
        with self.lock:
            self.members.append(sock)
            try:
                sock.sendall(frame(READY))
            except OSError:
                pass
        buffer = b""
        try:
            while True:
                data = sock.recv(RECV_SIZE)
                if not data:
                    return
                buffer = buffer + data if buffer else data
                start = 0
                while len(buffer) - start >= HEADER_BYTES:
                    length = int.from_bytes(buffer[start:start + HEADER_BYTES], "big")
                    if length > MAX_FRAME:
                        return  # not our framing: drop the connection
                    end = start + HEADER_BYTES + length
                    if len(buffer) < end:
                        break
                    self.broadcast(buffer[start:end])
                    start = end
                buffer = buffer[start:]
        except OSError:
            return
        finally:
            with self.lock:
                self.members.remove(sock)
            sock.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Bare thread-per-connection relay (baseline).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        import resource
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ImportError, ValueError, OSError):
        pass
    threading.stack_size(THREAD_STACK_SIZE)
    relay = Relay(args.host, args.port)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"relay listening on {relay.address[0]}:{relay.address[1]}", flush=True)
    try:
        relay.serve_forever()
    except (KeyboardInterrupt, SystemExit):
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
