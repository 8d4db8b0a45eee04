"""Starting the server as an operator does: real `server.py` processes and real files.

Every mistake found at start-up is one line on stderr that names the file or value, exit
status 2, and no traceback unless --verbose. Then the descriptor limit it reports, and
SIGHUP reopening the console log for logrotate.
"""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from processlimits import OPEN_MAX, WANTED_FDS, fd_limit_candidates

ROOT = Path(__file__).resolve().parent.parent
WAIT = 10.0
NEEDS_RLIMIT = pytest.mark.skipif(sys.platform == "win32", reason="no descriptor limit on Windows")


def run_server(*args: str, cwd: Path, preexec_fn: Callable[[], None] | None = None,
               timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """server.py with `args`, expected to stop by itself (here: refuse to start)."""
    return subprocess.run([sys.executable, str(ROOT / "server.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout,
                          preexec_fn=preexec_fn)


def refusal(result: subprocess.CompletedProcess[str]) -> str:
    """The one line a refused start printed on stderr (after any console log lines)."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "listening on" not in result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines()
             if not re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} ", line)]
    assert len(lines) == 1, result.stderr
    return lines[0]


# -- bad option values --------------------------------------------------------------------

@pytest.mark.parametrize("option, value, says", [
    ("--port", "70000", "0 to 65535"),
    ("--port", "http", "not a whole number"),
    ("--max-clients", "0", "1 or more"),
    ("--max-per-address", "-3", "1 or more"),
    ("--burst", "0", "1 or more"),
    ("--outbox-limit", "0", "1 or more"),
    ("--max-frame", "100", "1024 or more"),
    ("--ping-interval", "0", "above 0"),
    ("--ping-timeout", "-1", "above 0"),
    ("--login-timeout", "nan", "finite"),
    ("--rate", "-1", "0 (no flood control) or more"),
])
def test_a_bad_option_value_is_named_in_one_line(
    tmp_path: Path, option: str, value: str, says: str
) -> None:
    line = refusal(run_server(option, value, cwd=tmp_path))
    assert option in line and value in line and says in line, line
    assert not (tmp_path / "messageslog.json").exists()


def test_rate_zero_is_still_accepted_as_no_flood_control() -> None:
    from server import build_parser

    assert build_parser().parse_args(["--rate", "0"]).rate == 0.0


# -- files --------------------------------------------------------------------------------

def test_a_log_in_a_missing_folder_names_the_folder(tmp_path: Path) -> None:
    line = refusal(run_server("--port", "0", "--log", str(tmp_path / "nowhere" / "log.json"),
                              cwd=tmp_path))
    assert str(tmp_path / "nowhere") in line and "does not exist" in line, line


def test_a_registry_in_a_missing_folder_names_it(tmp_path: Path) -> None:
    registry = tmp_path / "gone" / "keys.json"
    line = refusal(run_server("--port", "0", "--log", str(tmp_path / "log.json"),
                              "--registry", str(registry), cwd=tmp_path))
    assert "--registry" in line and str(registry) in line, line


def test_a_log_that_is_a_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "log.json").mkdir()
    line = refusal(run_server("--port", "0", "--log", str(tmp_path / "log.json"), cwd=tmp_path))
    assert "is a folder" in line, line


def test_a_file_that_is_not_a_message_log_is_left_alone(tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("shopping list\nmilk\n")
    line = refusal(run_server("--port", "0", "--log", str(notes), cwd=tmp_path))
    assert str(notes) in line and "not a Gapshape message log" in line, line
    assert notes.read_text() == "shopping list\nmilk\n"
    assert not (tmp_path / "notes.txt.torn").exists()


def test_a_real_log_and_a_torn_first_write_are_accepted(tmp_path: Path) -> None:
    """The sniffing refuses foreign files only: a log that crashed in its first write starts."""
    log = tmp_path / "log.json"
    log.write_bytes(b'{"event":"connect","ti')
    server = ServerProcess("--port", "0", "--log", str(log), cwd=tmp_path)
    try:
        server.stop()
    finally:
        server.kill()
    assert log.read_bytes() == b"" and (tmp_path / "log.json.torn").exists()
    record = {"event": "connect", "time": "2024-05-01T12:00:00.000Z", "user": "ann",
              "address": "127.0.0.1:1"}
    log.write_text(json.dumps(record) + "\n")
    server = ServerProcess("--port", "0", "--log", str(log), cwd=tmp_path)
    try:
        server.stop()
    finally:
        server.kill()
    assert json.loads(log.read_text().splitlines()[0]) == record


def test_a_damaged_registry_is_refused_with_its_name(tmp_path: Path) -> None:
    registry = tmp_path / "keyregistry.json"
    registry.write_text("this is not a registry\n")
    line = refusal(run_server("--port", "0", "--log", str(tmp_path / "log.json"), cwd=tmp_path))
    assert str(registry) in line and "damaged" in line, line
    line = refusal(run_server("--registry", str(registry), "--forget-user", "bob", cwd=tmp_path))
    assert str(registry) in line, line


def test_a_cluster_node_names_a_damaged_registry_and_a_refusing_redis(
        tmp_path: Path, redis_server: Any) -> None:
    import redis

    registry = tmp_path / "keyregistry.json"
    registry.write_text("this is not a registry\n")
    log = str(tmp_path / "log.json")
    line = refusal(run_server("--port", "0", "--log", log, "--redis", redis_server.url,
                              cwd=tmp_path))
    assert "keyregistry.json" in line and "damaged" in line, line
    registry.unlink()
    redis.Redis.from_url(redis_server.url).config_set("requirepass", "sekrit")
    wrong = f"redis://:wrong@127.0.0.1:{redis_server.port}/0"
    for url in (wrong, redis_server.url):  # a wrong password, and none
        line = refusal(run_server("--port", "0", "--log", log, "--redis", url, cwd=tmp_path))
        assert url in line and "check the --redis URL" in line and ".:" not in line, line


def test_a_missing_certificate_is_named(tmp_path: Path) -> None:
    line = refusal(run_server("--port", "0", "--tls-cert", str(tmp_path / "server.crt"),
                              cwd=tmp_path))
    assert f"--tls-cert {tmp_path / 'server.crt'}" in line, line


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="root reads files whatever their mode (and Windows has no modes)")
def test_an_unreadable_key_is_named(tmp_path: Path) -> None:
    cert, key = write_certificate(tmp_path)
    key.chmod(0)
    line = refusal(run_server("--port", "0", "--tls-cert", str(cert), "--tls-key", str(key),
                              cwd=tmp_path))
    assert f"--tls-key {key}" in line and "Permission denied" in line, line


def test_a_key_path_that_is_a_folder_is_named(tmp_path: Path) -> None:
    cert, _ = write_certificate(tmp_path)
    line = refusal(run_server("--port", "0", "--tls-cert", str(cert), "--tls-key",
                              str(tmp_path), cwd=tmp_path))
    assert f"cannot read --tls-key {tmp_path}" in line, line


def test_a_key_that_is_not_the_certificates_is_refused(tmp_path: Path) -> None:
    cert, _ = write_certificate(tmp_path)
    _, other_key = write_certificate(tmp_path / "other")
    line = refusal(run_server("--port", "0", "--tls-cert", str(cert), "--tls-key",
                              str(other_key), cwd=tmp_path))
    assert str(cert) in line and str(other_key) in line, line


def test_a_key_file_with_no_key_is_refused(tmp_path: Path) -> None:
    cert, _ = write_certificate(tmp_path)
    empty = tmp_path / "empty.key"
    empty.write_text("nothing here\n")
    line = refusal(run_server("--port", "0", "--tls-cert", str(cert), "--tls-key", str(empty),
                              cwd=tmp_path))
    assert str(empty) in line, line


def test_a_passphrase_protected_key_is_refused_instead_of_prompting(tmp_path: Path) -> None:
    serialization = pytest.importorskip("cryptography.hazmat.primitives.serialization")
    cert, key = write_certificate(tmp_path)
    private = serialization.load_pem_private_key(key.read_bytes(), password=None)
    key.write_bytes(private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret")))
    result = subprocess.run(
        [sys.executable, str(ROOT / "server.py"), "--port", "0", "--tls-cert", str(cert),
         "--tls-key", str(key)], cwd=tmp_path, capture_output=True, text=True, timeout=30,
        stdin=subprocess.DEVNULL)
    line = refusal(result)
    assert str(key) in line and "passphrase" in line, line


def test_a_key_without_a_certificate_is_refused(tmp_path: Path) -> None:
    _, key = write_certificate(tmp_path)
    line = refusal(run_server("--port", "0", "--tls-key", str(key), cwd=tmp_path))
    assert "--tls-key" in line and "--tls-cert" in line, line


def write_certificate(directory: Path) -> tuple[Path, Path]:
    trustme = pytest.importorskip("trustme")
    directory.mkdir(parents=True, exist_ok=True)
    issued = trustme.CA().issue_cert("localhost")
    cert, key = directory / "server.crt", directory / "server.key"
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    return cert, key


# -- the network --------------------------------------------------------------------------

def test_an_address_in_use_is_named(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        line = refusal(run_server("--port", str(port), "--log", str(tmp_path / "log.json"),
                                  cwd=tmp_path))
    assert f"127.0.0.1:{port}" in line and "already in use" in line and "--port" in line, line


def test_verbose_adds_the_traceback(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = run_server("--port", str(port), "--verbose", cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" in result.stderr
    assert result.stderr.rstrip().splitlines()[-1].endswith("or choose another --port")


def test_a_host_that_is_not_here_is_named(tmp_path: Path) -> None:
    line = refusal(run_server("--host", "nosuchhost.invalid", "--port", "0", cwd=tmp_path))
    assert "nosuchhost.invalid" in line and "not an address of this machine" in line, line


def test_version_is_printed() -> None:
    from gapshape_version import __version__

    result = subprocess.run([sys.executable, str(ROOT / "server.py"), "--version"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and result.stdout.strip() == f"server.py {__version__}"


# -- the descriptor limit -----------------------------------------------------------------

def test_limit_candidates_step_down_from_the_best_the_system_allows() -> None:
    # macOS: hard limit unlimited, kern.maxfilesperproc 61440, soft 256.
    candidates = fd_limit_candidates(256, None, 61_440)
    assert candidates[0] == 61_440 and OPEN_MAX in candidates
    assert candidates == sorted(candidates, reverse=True) and min(candidates) > 256
    # Unlimited everywhere: the fixed wish, then less.
    assert fd_limit_candidates(1024, None, None)[0] == WANTED_FDS
    # A finite hard limit is the most we ask for; at it, nothing is left to ask.
    assert fd_limit_candidates(1024, 4096, 1_048_576) == [4096, 2048]
    assert fd_limit_candidates(4096, 4096, None) == []


@NEEDS_RLIMIT
def test_a_low_descriptor_limit_is_reported_and_caps_max_clients(tmp_path: Path) -> None:
    import resource

    def low_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (100, 120))

    server = ServerProcess("--port", "0", "--log", str(tmp_path / "log.json"),
                           "--max-clients", "5000", cwd=tmp_path, preexec_fn=low_limit)
    try:
        server.wait_for(r"descriptor limit 120: about 70 clients")
        warning = server.wait_for(r"--max-clients 5000 is more than")
        assert "holding at most 70 clients" in warning
        server.stop()
    finally:
        server.kill()


@NEEDS_RLIMIT
def test_a_descriptor_limit_below_the_reserve_is_reported_and_served(tmp_path: Path) -> None:
    """No room for a reserve: --max-clients stays, and the accept loop's back-off copes."""
    import resource

    def tiny_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (40, 40))

    server = ServerProcess("--port", "0", "--log", str(tmp_path / "log.json"), cwd=tmp_path,
                           preexec_fn=tiny_limit)
    try:
        warning = server.wait_for(r"descriptor limit 40: only a few clients")
        assert "ulimit -n" in warning and "holding at most" not in server.stderr_text()
        server.stop()
    finally:
        server.kill()


# -- the console log and SIGHUP -----------------------------------------------------------

@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="no SIGHUP on this platform")
def test_sighup_reopens_the_console_log_after_logrotate_moved_it(tmp_path: Path) -> None:
    console = tmp_path / "console.log"
    server = ServerProcess("--port", "0", "--log", str(tmp_path / "log.json"),
                           "--console-log", str(console), cwd=tmp_path)
    try:
        wait_until(lambda: "descriptor limit" in read(console), "the first lines in the file")
        rotated = tmp_path / "console.log.1"
        console.rename(rotated)  # what logrotate does, before it signals the program
        os.kill(server.proc.pid, signal.SIGHUP)
        wait_until(lambda: "console log reopened" in read(console) or server.proc.poll() is not None,
                   "the reopened file")
        assert server.proc.poll() is None, "SIGHUP ended the server"
        with socket.create_connection(server.address, timeout=WAIT) as peer:
            peer.sendall(b"\xff\xff\xff\xff")  # a frame far too large: logged, then closed
            assert peer.recv(4096)  # the error frame: the server has logged it by now
        wait_until(lambda: "closing 127.0.0.1:" in read(console), "the closing line")
        server.stop()
        assert server.proc.returncode == 0
    finally:
        server.kill()
    new, old = read(console), read(rotated)
    assert "closing 127.0.0.1:" in new and "closing" not in old, (new, old)
    assert "console log reopened" not in old and "stopped" in new and "stopped" not in old
    assert server.stderr_text() == ""  # with --console-log nothing goes to stderr


def test_an_unwritable_console_log_is_named(tmp_path: Path) -> None:
    line = refusal(run_server("--console-log", str(tmp_path / "no" / "console.log"),
                              cwd=tmp_path))
    assert str(tmp_path / "no" / "console.log") in line, line


# -- helpers ------------------------------------------------------------------------------

def read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return ""


def wait_until(condition: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.02)  # polling a file: this only paces the loop, the condition decides
    raise AssertionError(f"no {what} within {timeout} s")


class ServerProcess:
    """A running server.py; its stdout gives the address, its stderr is read at the end."""

    def __init__(self, *args: str, cwd: Path, preexec_fn: Callable[[], None] | None = None
                 ) -> None:
        self.stderr_path = cwd / "server.stderr"
        self._stderr = open(self.stderr_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-u", str(ROOT / "server.py"), *args], cwd=cwd, text=True,
            stdout=subprocess.PIPE, stderr=self._stderr, preexec_fn=preexec_fn)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # the process prints it, or exits (EOF)
        match = re.search(r"listening on (\S+):(\d+)", line)
        if not match:
            self.kill()
            raise AssertionError(f"server did not start: {line!r} {self.stderr_text()}")
        self.address = (match.group(1), int(match.group(2)))

    def wait_for(self, pattern: str) -> str:
        regex = re.compile(pattern)
        return wait_until(lambda: next((line for line in self.stderr_text().splitlines()
                                        if regex.search(line)), None), repr(pattern))

    def stderr_text(self) -> str:
        return read(self.stderr_path)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(WAIT)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(WAIT)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._stderr.close()
