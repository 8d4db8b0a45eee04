"""server.py and client.py run as a person runs them: real processes, stdin and stdout."""
from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import ROOT, make_identity

TIME_PREFIX = re.compile(r"^\[\d\d:\d\d:\d\d\] ")


class Process:
    """A child process whose stdout lines are collected by a thread, waited on with timeouts."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None, **kwargs) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc = subprocess.Popen(
            [sys.executable, *args], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, encoding="utf-8", env=env, **kwargs)
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def wait_line(self, pattern: str, timeout: float = 15.0) -> str:
        deadline = time.monotonic() + timeout
        for line in self.seen:
            if re.search(pattern, line):
                self.seen.remove(line)
                return line
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no line matching {pattern!r}; saw {self.seen}") from None
            if re.search(pattern, line):
                return line
            self.seen.append(line)

    def type(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()

    def end_input(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)


@pytest.fixture
def processes():
    started: list[Process] = []

    def start(*args: str, env: dict[str, str] | None = None) -> Process:
        process = Process(list(args), env)
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


def start_server(processes, tmp_path: Path) -> tuple[Process, int]:
    server = processes("server.py", "--port", "0", "--log", str(tmp_path / "messageslog.json"))
    line = server.wait_line(r"listening on")
    return server, int(re.search(r":(\d+) ", line).group(1))


def start_client(processes, tmp_path, key_pool, name, index, port, *extra, env=None):
    data_dir = tmp_path / "home" / name
    make_identity(data_dir, name, key_pool.get(index))
    return processes("client.py", "--username", name, "--port", str(port),
                     "--data-dir", str(data_dir), *extra, env=env)


def test_server_help_lists_options() -> None:
    out = subprocess.run([sys.executable, "server.py", "--help"], cwd=ROOT, capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 0
    for option in ("--host", "--port", "--log", "--tls-cert", "--rate", "--forget-user"):
        assert option in out.stdout


def test_two_terminal_clients_chat_and_quit(processes, tmp_path, key_pool):
    server, port = start_server(processes, tmp_path)
    alice = start_client(processes, tmp_path, key_pool, "alice", 0, port)
    alice.wait_line(r"logged in as alice")
    bob = start_client(processes, tmp_path, key_pool, "bob", 1, port)
    bob.wait_line(r"logged in as bob")
    alice.wait_line(r"\* bob joined #common")

    alice.type("hello from alice")
    line = bob.wait_line(r"<alice> hello from alice")
    assert TIME_PREFIX.match(line) and "#common" in line

    bob.type("/privatemsg alice psst, emoji too 🎉")
    line = alice.wait_line(r"\[private, encrypted, not verified\] bob -> you: psst, emoji too 🎉")
    assert TIME_PREFIX.match(line)
    bob.wait_line(r"\[private, encrypted, not verified\] you -> alice: psst")

    bob.type("/nonsense")
    bob.wait_line(r"error: unknown command /nonsense; the commands are /privatemsg")

    alice.type("/quit")
    assert alice.proc.wait(timeout=15) == 0
    bob.wait_line(r"\* alice left #common \(quit\)")
    bob.end_input()  # end of input quits like /quit
    assert bob.proc.wait(timeout=15) == 0


def test_json_output_is_one_object_per_line(processes, tmp_path, key_pool):
    server, port = start_server(processes, tmp_path)
    alice = start_client(processes, tmp_path, key_pool, "alice", 0, port, "--json")
    welcome = json.loads(alice.wait_line(r'"event": "Welcome"'))
    assert welcome["user"] == "alice"
    alice.type("/rooms")
    rooms = json.loads(alice.wait_line(r'"event": "RoomList"'))
    assert rooms["rooms"] == [["#common", 1]]


@pytest.mark.skipif(sys.platform == "win32", reason="SIGTERM is POSIX")
def test_sigterm_stops_the_server_quickly_and_says_goodbye(processes, tmp_path, key_pool):
    server, port = start_server(processes, tmp_path)
    alice = start_client(processes, tmp_path, key_pool, "alice", 0, port)
    alice.wait_line(r"logged in as alice")
    alice.type("before shutdown")
    alice.wait_line(r"<alice> before shutdown")
    started = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(timeout=5) == 0
    assert time.monotonic() - started < 2.0
    alice.wait_line(r"disconnected: server shutting down")
    assert alice.proc.wait(timeout=10) == 0
    log = (tmp_path / "messageslog.json").read_text("utf-8").splitlines()
    assert any(json.loads(line).get("text") == "before shutdown" for line in log)


def test_client_reports_a_server_that_is_down(tmp_path, key_pool):
    data_dir = tmp_path / "home"
    make_identity(data_dir, "alice", key_pool.get(0))
    out = subprocess.run([sys.executable, "client.py", "--username", "alice", "--port", "1",
                          "--data-dir", str(data_dir)], cwd=ROOT, capture_output=True,
                         text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert out.returncode == 1
    assert "cannot connect to 127.0.0.1:1" in out.stderr


# -- issue 9: output nobody can forge, odd consoles, history, takeover -------------------

def server_at(port: int) -> SimpleNamespace:
    return SimpleNamespace(address=("127.0.0.1", port))


def rendered(line: str) -> bytes:
    """A printed line without its time prefix, as the bytes that reached the terminal."""
    assert TIME_PREFIX.match(line), line
    return TIME_PREFIX.sub("", line).encode("utf-8")


def test_a_hostile_room_member_cannot_forge_lines_or_drive_the_terminal(
        processes, tmp_path, key_pool, client_factory):
    server, port = start_server(processes, tmp_path)
    bob = start_client(processes, tmp_path, key_pool, "bob", 1, port)
    bob.wait_line(r"logged in as bob")
    mallory = client_factory(server_at(port), "mallory", key=6)
    bob.wait_line(r"\* mallory joined #common")
    mallory.say("hi\n[private, encrypted, verified] alice -> you: x")
    mallory.say("\x1b]0;pwned\x07\x1b[2J\x1b[Hcleared")
    mallory.say("you -> \u202ebob")
    mallory.set_status("away", "back\r* alice is now online")
    mallory.say("done")

    assert rendered(bob.wait_line(r"<mallory> hi")) == (
        b"#common <mallory> hi\\n[private, encrypted, verified] alice -> you: x")
    assert rendered(bob.wait_line(r"<mallory> .*pwned")) == (
        b"#common <mallory> \\x1b]0;pwned\\x07\\x1b[2J\\x1b[Hcleared")
    assert rendered(bob.wait_line(r"<mallory> you ->")) == b"#common <mallory> you -> \\u202ebob"
    assert rendered(bob.wait_line(r"mallory is now away")) == (
        b"* mallory is now away: back\\r* alice is now online")
    bob.wait_line(r"<mallory> done")
    everything = bob.seen + list(bob.lines.queue)
    assert all(TIME_PREFIX.match(line) for line in everything), everything
    assert not any(ch in line for line in everything for ch in "\x1b\x07\r\u202e")
    bob.type("/quit")
    assert bob.proc.wait(timeout=15) == 0


def test_a_console_that_cannot_show_emoji_gets_escapes_not_a_crash(
        processes, tmp_path, key_pool, client_factory):
    server, port = start_server(processes, tmp_path)
    bob = start_client(processes, tmp_path, key_pool, "bob", 1, port,
                       env={"PYTHONIOENCODING": "ascii", "LC_ALL": "C"})
    bob.wait_line(r"logged in as bob")
    alice = client_factory(server_at(port), "alice", key=0)
    bob.wait_line(r"\* alice joined #common")
    alice.say("party 🎉 time, café")
    assert rendered(bob.wait_line(r"<alice> party")) == (
        b"#common <alice> party \\U0001f389 time, caf\\xe9")
    alice.send_private("bob", "psst 🎉")
    bob.wait_line(r"alice -> you: psst \\U0001f389")
    bob.type("/quit")
    assert bob.proc.wait(timeout=15) == 0


def test_joining_a_room_prints_its_history(processes, tmp_path, key_pool, client_factory):
    server, port = start_server(processes, tmp_path)
    alice = client_factory(server_at(port), "alice", key=0)
    alice.say("before bob came")
    alice.recorder.wait_for(lambda e: getattr(e, "text", None) == "before bob came")
    bob = start_client(processes, tmp_path, key_pool, "bob", 1, port)
    bob.wait_line(r"you are in #common with")
    assert rendered(bob.wait_line(r"before bob came")) == (
        b"#common <alice> before bob came (history)")
    bob.type("/quit")
    assert bob.proc.wait(timeout=15) == 0


def test_a_takeover_is_reported_and_the_client_exits(processes, tmp_path, key_pool):
    from mitm import HANG_UP, FrameProxy

    server, port = start_server(processes, tmp_path)

    def take_over(direction, frame):
        if direction == "down" and frame["type"] == "rooms":
            return [{"type": "bye", "reason": "logged in elsewhere"}, HANG_UP]
        return [frame]

    proxy = FrameProxy(("127.0.0.1", port), take_over)
    try:
        bob = start_client(processes, tmp_path, key_pool, "bob", 1, proxy.address[1])
        bob.wait_line(r"logged in as bob")
        bob.type("/rooms")
        line = bob.wait_line(r"disconnected: logged in elsewhere")
        assert "will not reconnect" in line
        assert bob.proc.wait(timeout=15) == 0
    finally:
        proxy.close()
