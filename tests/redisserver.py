"""A real `redis-server` for tests: its own free loopback port and its own directory.

Tests that need Redis use the `redis_server` fixture (tests/conftest.py), which skips with a
clear reason when Debian's `redis-server` is not installed; CI installs it. Nothing here is
a fake: the process is the one production would talk to, so restarts and kills are real.
"""
from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

READY_TIMEOUT = 10.0  # seconds a fresh redis-server may take to answer PING


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def redis_server_binary() -> str | None:
    return shutil.which("redis-server")


class RedisServer:
    """One redis-server process; `restart()` keeps its port and its data directory."""

    def __init__(self, directory: Path, *, appendonly: bool = True) -> None:
        binary = redis_server_binary()
        if binary is None:
            raise RuntimeError("redis-server is not installed (Debian package redis-server)")
        self.binary = binary
        self.directory = directory
        self.port = free_port()
        self.appendonly = appendonly
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        # Durable on every write, so a restart in a test loses nothing that was acknowledged.
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", str(self.directory), "--save", "",
                "--appendonly", "yes" if self.appendonly else "no", "--appendfsync", "always",
                "--protected-mode", "no", "--daemonize", "no", "--loglevel", "warning"]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(64).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            time.sleep(0.02)  # polling a process start-up: there is no event to wait on
        raise RuntimeError(f"redis-server on port {self.port} did not answer within "
                           f"{READY_TIMEOUT} s")

    def stop(self) -> None:
        """A clean shutdown (SIGTERM), as an operator's restart would do."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        self.process = None

    def kill(self) -> None:
        """SIGKILL: Redis dies the way a crashed machine's would."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()
