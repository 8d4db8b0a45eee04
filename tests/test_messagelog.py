"""Tests for messagelog: the JSON Lines log, its repair at open, its checkpoint, crashes."""
from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
from pathlib import Path
from typing import Any, Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import messagelog
from messagelog import MessageLog, decode_line, encode_record, timestamp

Record = dict[str, Any]

ROOT = Path(__file__).resolve().parent.parent
HISTORY = 10
TIME = "2024-05-01T12:00:00.123Z"


# -- helpers ------------------------------------------------------------------------------


def message(record_id: int, room: str = "lobby", text: str = "hi", user: str = "ann") -> Record:
    return {
        "event": "message", "time": TIME, "id": record_id, "room": room, "user": user, "text": text
    }


def private(record_id: int, size: int = 128) -> Record:
    return {
        "event": "private", "time": TIME, "id": record_id, "from": "ann", "to": "bob", "size": size
    }


def join(room: str = "lobby", user: str = "ann") -> Record:
    return {"event": "join", "time": TIME, "user": user, "room": room}


def mixed_records(count: int, rooms: int = 3) -> list[Record]:
    """`count` records: mostly messages spread over `rooms` rooms, with ids from 1."""
    records: list[Record] = []
    for record_id in range(1, count + 1):
        if record_id % 7 == 0:
            records.append(private(record_id))
        elif record_id % 5 == 0:
            records.append(join(f"room{record_id % rooms}"))
        else:
            room = f"room{record_id % rooms}"
            records.append(message(record_id, room, f"text {record_id} é😀"))
    return records


def write_log(path: Path, records: list[Record], **options: Any) -> MessageLog:
    """A log holding `records`, written one write_pending per record, left open."""
    log = MessageLog(path, **options)
    for record in records:
        log.append(record)
        log.write_pending()
    return log


def read_records(path: Path) -> list[Record]:
    """Every line of the file, each of which must be a complete JSON object."""
    data = path.read_bytes()
    assert data == b"" or data.endswith(b"\n")
    return [json.loads(line) for line in data.splitlines()]


def expected_state(records: list[Record]) -> tuple[dict[str, list[Record]], int]:
    """The history and next_id that `records` imply, computed the obvious way."""
    history: dict[str, list[Record]] = {}
    next_id = 1
    for record in records:
        if record["event"] in ("message", "private"):
            next_id = max(next_id, record["id"] + 1)
        if record["event"] == "message":
            history.setdefault(record["room"], []).append(record)
    return {room: kept[-HISTORY:] for room, kept in history.items()}, next_id


def assert_state(log: MessageLog, records: list[Record]) -> None:
    history, next_id = expected_state(records)
    assert log.rooms() == sorted(history)
    for room, kept in history.items():
        assert log.history(room) == kept
    assert log.next_id == next_id


def crash_copy(log: MessageLog, directory: Path) -> Path:
    """What `kill -9` would leave of `log` once its background thread has written the
    checkpoints asked for: the log and the checkpoint, as they are on disk (not the index,
    so the copy also rebuilds that from the log)."""
    assert log.wait_idle(10)
    directory.mkdir()
    copy = directory / log.path.name
    shutil.copyfile(log.path, copy)
    if log.checkpoint_path.exists():
        shutil.copyfile(log.checkpoint_path, directory / log.checkpoint_path.name)
    return copy


# -- writing and reading back -------------------------------------------------------------

def test_round_trip_through_the_file(tmp_path: Path) -> None:
    path = tmp_path / "messageslog.json"
    records = [
        {"event": "connect", "time": TIME, "user": "ann", "address": "10.0.0.5:51234"},
        join(),
        message(1, text="héllo 😀 𝄞"),
        private(2),
        {"event": "status", "time": TIME, "user": "ann", "status": "away", "note": "lunch"},
        {"event": "leave", "time": TIME, "user": "ann", "room": "lobby"},
        {"event": "disconnect", "time": TIME, "user": "ann", "reason": "quit"},
    ]
    with write_log(path, records) as log:
        assert_state(log, records)

    assert read_records(path) == records
    raw = path.read_bytes()
    assert "héllo 😀 𝄞".encode() in raw  # ensure_ascii=False
    assert b'{"event":"join","time":' in raw  # compact separators
    with MessageLog(path) as reopened:
        assert_state(reopened, records)


def test_append_does_no_io_until_write_pending(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "log.json"
    log = MessageLog(path)

    def no_io(*args: object, **kwargs: object) -> None:
        raise AssertionError("append did I/O")

    with monkeypatch.context() as patch:
        for name in ("write", "fsync", "replace"):
            patch.setattr(messagelog.os, name, no_io)
        patch.setattr("builtins.open", no_io)
        log.append(message(1))
        log.append(private(2))
    assert path.stat().st_size == 0
    log.write_pending()
    assert read_records(path) == [message(1), private(2)]
    log.close()


def test_write_pending_writes_a_batch_with_one_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = MessageLog(tmp_path / "log.json")
    writes: list[int] = []
    real_write = os.write

    def counting_write(fd: int, data: bytes) -> int:
        writes.append(len(data))
        return real_write(fd, data)

    monkeypatch.setattr(messagelog.os, "write", counting_write)
    for record_id in range(1, 101):
        log.append(message(record_id))
    log.write_pending()
    assert len(writes) == 1
    log.write_pending()  # nothing pending: the fast path writes nothing
    assert len(writes) == 1
    monkeypatch.undo()
    log.close()
    assert [record["id"] for record in read_records(log.path)] == list(range(1, 101))


def test_write_pending_waits_for_a_write_in_progress(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Thread A took B's line into its batch and is still writing it: B's own
    # write_pending must not return before A's write is done, or B would send first.
    log = MessageLog(tmp_path / "log.json")
    real_write = os.write
    writing, release = threading.Event(), threading.Event()

    def slow_write(fd: int, data: bytes) -> int:
        writing.set()
        release.wait(10)
        return real_write(fd, data)

    # Whichever comes first: the follower waits for the write lock, or it returns.
    arrived = threading.Event()
    write_lock = ObservedLock(log._write_lock, on_contended=arrived.set)
    monkeypatch.setattr(log, "_write_lock", write_lock)
    monkeypatch.setattr(messagelog.os, "write", slow_write)
    log.append(message(1))  # B's line
    leader = threading.Thread(target=log.write_pending)
    leader.start()
    assert writing.wait(10)
    follower_done = threading.Event()

    def follower() -> None:
        log.write_pending()
        follower_done.set()
        arrived.set()

    follower_thread = threading.Thread(target=follower)
    follower_thread.start()
    assert arrived.wait(10)
    returned_early = follower_done.is_set()
    release.set()
    leader.join(10)
    follower_thread.join(10)
    assert not returned_early and write_lock.contended
    assert follower_done.is_set()
    log.close()
    assert read_records(log.path) == [message(1)]


class ObservedLock:
    """A real lock that reports a thread having to wait for it (no timing guesses)."""

    def __init__(self, lock: Any, on_contended: Callable[[], None]) -> None:
        self._lock = lock
        self._on_contended = on_contended
        self.contended = False

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        if self._lock.acquire(blocking=False):
            return True
        if not blocking:
            return False
        self.contended = True
        self._on_contended()
        return bool(self._lock.acquire(True, timeout))

    def release(self) -> None:
        self._lock.release()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def test_a_checkpoint_holds_only_what_is_in_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A record appended while a batch is being written is not in that batch, so the
    # checkpoint written after the batch must not hold it either.
    log = MessageLog(tmp_path / "log.json", checkpoint_every=1)
    real_write = os.write
    late = message(2, text="appended during the write")

    def write_and_append(fd: int, data: bytes) -> int:
        monkeypatch.setattr(messagelog.os, "write", real_write)
        log.append(late)
        return real_write(fd, data)

    monkeypatch.setattr(messagelog.os, "write", write_and_append)
    log.append(message(1))
    log.write_pending()
    assert read_records(log.path) == [message(1)]
    with MessageLog(crash_copy(log, tmp_path / "first")) as crashed:
        assert crashed.recovery.checkpoint_used
        assert crashed.recovery.lines_parsed == 0  # the checkpoint covers the whole file
        assert crashed.history("lobby") == [message(1)]
        assert crashed.next_id == 2
    log.write_pending()
    with MessageLog(crash_copy(log, tmp_path / "second")) as crashed:
        assert crashed.history("lobby") == [message(1), late]
    log.close()


def test_a_failed_write_keeps_the_lines_queued(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = write_log(tmp_path / "log.json", [message(1)])
    real_write = os.write

    def half_then_full_disk(fd: int, data: bytes) -> int:
        monkeypatch.setattr(messagelog.os, "write", disk_full)
        return real_write(fd, bytes(data)[: len(data) // 2])

    def disk_full(fd: int, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(messagelog.os, "write", half_then_full_disk)
    log.append(message(2))
    log.append(message(3))
    with pytest.raises(OSError):
        log.write_pending()
    assert read_records(log.path) == [message(1)]  # the half batch was cut off again
    monkeypatch.setattr(messagelog.os, "write", real_write)
    log.write_pending()
    log.close()
    assert read_records(log.path) == [message(1), message(2), message(3)]


def test_history_keeps_the_latest_messages_per_room(tmp_path: Path) -> None:
    records = mixed_records(200, rooms=4)
    path = tmp_path / "log.json"
    with write_log(path, records) as log:
        assert_state(log, records)
        assert [record["id"] for record in log.history("room1")] == sorted(
            record["id"] for record in expected_state(records)[0]["room1"]
        )
        assert len(log.history("room1")) == HISTORY
        assert log.history("nowhere") == []
    with MessageLog(path) as reopened:  # from the checkpoint
        assert reopened.recovery.checkpoint_used
        assert_state(reopened, records)
    path.with_name(path.name + ".checkpoint").unlink()
    with MessageLog(path) as rescanned:  # from a full scan
        assert not rescanned.recovery.checkpoint_used
        assert_state(rescanned, records)


def test_history_returns_copies(tmp_path: Path) -> None:
    original = message(1)
    with MessageLog(tmp_path / "log.json") as log:
        log.append(original)
        original["text"] = "changed by the caller"
        log.history("lobby")[0]["text"] = "changed by a reader"
        assert log.history("lobby") == [message(1)]


def test_next_id_persists_and_ids_are_never_reused(tmp_path: Path) -> None:
    path = tmp_path / "log.json"
    with MessageLog(path) as log:
        assert log.next_id == 1
        first = log.allocate_id()
        log.append(message(first))
        second = log.allocate_id()
        log.append(private(second))
        assert (first, second, log.next_id) == (1, 2, 3)
    with MessageLog(path) as log:
        assert log.next_id == 3
        third = log.allocate_id()
        assert third == 3
        log.append(private(third))
        log.write_pending()
    path.with_name(path.name + ".checkpoint").unlink()
    with MessageLog(path) as log:
        assert log.next_id == 4
        assert log.allocate_id() == 4


def test_next_id_counts_logged_ids_only(tmp_path: Path) -> None:
    path = tmp_path / "log.json"
    with MessageLog(path) as log:
        log.append(message(log.allocate_id()))
        for _ in range(5):
            log.allocate_id()  # handed out, never logged
    with MessageLog(path) as log:  # from the checkpoint
        assert log.next_id == 2
    (tmp_path / "log.json.checkpoint").unlink()
    with MessageLog(path) as log:  # from a full scan: the same
        assert log.next_id == 2


def test_ids_appended_by_the_caller_move_next_id(tmp_path: Path) -> None:
    with MessageLog(tmp_path / "log.json") as log:
        log.append(private(41))
        assert log.allocate_id() == 42


@pytest.mark.parametrize(
    "record",
    [
        ["event", "message"],
        {"time": TIME, "user": "ann"},
        {"event": "join", "user": "ann"},
        {"event": "message", "time": TIME, "room": "lobby"},
        {"event": "message", "time": TIME, "id": True, "room": "lobby"},
        {"event": "private", "time": TIME, "id": "7"},
        {"event": "message", "time": TIME, "id": 1, "room": None},
        {"event": "status", "time": TIME, "user": "ann", "note": float("nan")},
        {"event": "status", "time": TIME, "user": "ann", "note": object()},
    ],
)
def test_invalid_records_are_refused(tmp_path: Path, record: Any) -> None:
    with MessageLog(tmp_path / "log.json") as log:
        with pytest.raises((TypeError, ValueError)):
            log.append(record)
        log.write_pending()
    assert (tmp_path / "log.json").read_bytes() == b""


def test_close_is_idempotent_and_append_after_close_fails(tmp_path: Path) -> None:
    log = MessageLog(tmp_path / "log.json")
    log.append(message(1))
    log.close()
    log.close()
    log.write_pending()  # nothing pending: harmless
    with pytest.raises(ValueError):
        log.append(message(2))
    assert read_records(log.path) == [message(1)]


def test_timestamp_is_utc_iso8601_with_milliseconds() -> None:
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", timestamp())


# -- torn tail and bad lines --------------------------------------------------------------

TORN_TAILS = {
    "half a line": b'{"event":"message","time":"2024-05-01T12:00:00.123Z","id":99,"ro',
    "garbage line": b"\x00\x00\x00garbage\n",
    "two bad lines": b'{"event":"message"\nnot json either\n',
    "invalid utf-8": b'{"event":"join","time":"t","user":"\xff\xfe","room":"x"}\n',
    "json but no object": b"[1, 2, 3]\n",
    "bad line then a fragment": b"oops\n{\"event\":",
}


@pytest.mark.parametrize("tail", TORN_TAILS.values(), ids=TORN_TAILS.keys())
@pytest.mark.parametrize("checkpoint", ["current", "stale", "none"])
def test_a_torn_tail_is_cut_off_and_saved(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, tail: bytes, checkpoint: str
) -> None:
    records = mixed_records(40)
    every = 25 if checkpoint == "stale" else 10_000
    log = write_log(tmp_path / "log.json", records, checkpoint_every=every)
    path = log.path if checkpoint == "current" else crash_copy(log, tmp_path / "crashed")
    log.close()
    assert path.with_name("log.json.checkpoint").exists() == (checkpoint != "none")
    good = path.read_bytes()
    with path.open("ab") as handle:
        handle.write(tail)

    with caplog.at_level(logging.WARNING, logger="messagelog"):
        repaired = MessageLog(path, checkpoint_every=every)
    assert "torn tail" in caplog.text
    assert repaired.recovery.torn_bytes == len(tail)
    assert path.read_bytes() == good
    assert repaired.torn_path.read_bytes() == tail
    assert_state(repaired, records)
    repaired.append(message(1000))  # the next line starts on a line of its own
    repaired.close()
    assert read_records(path) == records + [message(1000)]

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="messagelog"):
        MessageLog(path).close()
    assert caplog.text == ""


@pytest.mark.parametrize("checkpoint", [True, False])
def test_a_bad_line_in_the_middle_is_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, checkpoint: bool
) -> None:
    path = tmp_path / "log.json"
    before, after = mixed_records(30)[:20], mixed_records(30)[20:]
    write_log(path, before).close()
    if not checkpoint:
        (tmp_path / "log.json.checkpoint").unlink()
    with path.open("ab") as handle:
        handle.write(b"this line is not JSON\n")
        handle.writelines(encode_record(record) for record in after)

    with caplog.at_level(logging.WARNING, logger="messagelog"):
        log = MessageLog(path)
    assert "skipped 1 bad line" in caplog.text
    assert log.recovery.bad_lines_skipped == 1
    assert log.recovery.torn_bytes == 0
    assert b"this line is not JSON\n" in path.read_bytes()  # left in place
    assert_state(log, before + after)
    log.close()


# -- checkpoint ---------------------------------------------------------------------------

def test_open_with_a_current_checkpoint_parses_nothing(tmp_path: Path) -> None:
    records = mixed_records(1000)
    path = tmp_path / "log.json"
    write_log(path, records).close()
    with MessageLog(path) as log:
        assert log.recovery.checkpoint_used
        assert log.recovery.start_offset == path.stat().st_size
        assert log.recovery.lines_parsed == 0
        assert_state(log, records)


def test_open_with_a_checkpoint_does_not_reread_the_lines_before_it(tmp_path: Path) -> None:
    records = mixed_records(1000)
    path = tmp_path / "log.json"
    write_log(path, records).close()
    data = bytearray(path.read_bytes())
    middle = data.index(b"\n", len(data) // 2) + 1  # far from both 4 KiB fingerprints
    length = data.index(b"\n", middle) - middle
    data[middle:middle + length] = b"#" * length  # same size, no longer JSON
    path.write_bytes(bytes(data))

    with MessageLog(path) as log:
        assert log.recovery.checkpoint_used
        assert log.recovery.bad_lines_skipped == 0  # the damaged line was not parsed
        assert_state(log, records)
    (tmp_path / "log.json.checkpoint").unlink()
    with MessageLog(path) as log:  # whereas a full scan does see it
        assert log.recovery.bad_lines_skipped == 1


def test_a_stale_checkpoint_and_the_lines_after_it(tmp_path: Path) -> None:
    records = mixed_records(1234)
    log = write_log(tmp_path / "log.json", records, checkpoint_every=100)
    crashed = crash_copy(log, tmp_path / "crashed")
    log.close()
    checkpoint = json.loads((tmp_path / "crashed" / "log.json.checkpoint").read_bytes())
    assert checkpoint["offset"] < crashed.stat().st_size

    with MessageLog(crashed, checkpoint_every=100) as recovered:
        assert recovered.recovery.checkpoint_used
        assert recovered.recovery.start_offset == checkpoint["offset"]
        assert recovered.recovery.lines_parsed == 34  # checkpoints fell every 100 records
        assert_state(recovered, records)
        fresh = json.loads((tmp_path / "crashed" / "log.json.checkpoint").read_bytes())
        assert fresh["offset"] == crashed.stat().st_size  # written at open, not only at close
    with MessageLog(crashed) as again:  # the recovery wrote a fresh checkpoint
        assert again.recovery.lines_parsed == 0
        assert_state(again, records)


def _truncate_to_line(path: Path, records: list[Record]) -> list[Record]:
    keep = len(records) // 2
    data = path.read_bytes()
    path.write_bytes(b"".join(line + b"\n" for line in data.splitlines()[:keep]))
    return records[:keep]


def _replace_longer(path: Path, records: list[Record]) -> list[Record]:
    other = [message(record_id, "elsewhere", "x" * 40) for record_id in range(500, 1500)]
    path.write_bytes(b"".join(encode_record(record) for record in other))
    return other


def _replace_same_size(path: Path, records: list[Record]) -> list[Record]:
    # The same records in another order: the same bytes count, other fingerprints.
    other = records[-1:] + records[:-1]
    path.write_bytes(b"".join(encode_record(record) for record in other))
    return other


def _corrupt_checkpoint(document: bytes) -> bytes:
    return document[: len(document) // 2]


def _bump_version(document: bytes) -> bytes:
    assert b'"version":2' in document
    return document.replace(b'"version":2', b'"version":99')


def _next_id_as_text(document: bytes) -> bytes:
    parsed = json.loads(document)
    parsed["next_id"] = str(parsed["next_id"])
    return json.dumps(parsed).encode()


def _no_fingerprints(document: bytes) -> bytes:
    parsed = json.loads(document)
    del parsed["tail_sha256"]
    return json.dumps(parsed).encode()


LOG_CHANGES = {
    "truncated": _truncate_to_line, "replaced": _replace_longer, "same size": _replace_same_size
}
PROBLEMS = {"truncated": "the log has", "replaced": "does not match", "same size": "does not match"}
CHECKPOINT_CHANGES = {
    "half written": _corrupt_checkpoint,
    "unknown version": _bump_version,
    "next id as text": _next_id_as_text,
    "no fingerprints": _no_fingerprints,
}


@pytest.mark.parametrize("name", LOG_CHANGES)
def test_a_checkpoint_that_does_not_match_the_log_is_ignored(tmp_path: Path, name: str) -> None:
    records = mixed_records(1000)
    path = tmp_path / "log.json"
    write_log(path, records).close()
    now_in_file = LOG_CHANGES[name](path, records)

    with MessageLog(path) as log:
        assert not log.recovery.checkpoint_used
        assert PROBLEMS[name] in log.recovery.checkpoint_problem
        assert_state(log, now_in_file)
    with MessageLog(path) as log:  # the full scan left a checkpoint that does match
        assert log.recovery.checkpoint_used
        assert_state(log, now_in_file)


@pytest.mark.parametrize("change", CHECKPOINT_CHANGES.values(), ids=CHECKPOINT_CHANGES.keys())
def test_an_invalid_checkpoint_is_ignored(tmp_path: Path, change: Any) -> None:
    records = mixed_records(300)
    path = tmp_path / "log.json"
    write_log(path, records).close()
    checkpoint = tmp_path / "log.json.checkpoint"
    checkpoint.write_bytes(change(checkpoint.read_bytes()))

    with MessageLog(path) as log:
        assert not log.recovery.checkpoint_used
        assert log.recovery.lines_parsed == len(records)
        assert_state(log, records)


# -- kill -9 ------------------------------------------------------------------------------

WRITER = """
import sys, time
sys.path.insert(0, {root!r})
import messagelog
from messagelog import MessageLog, timestamp

{patch}
log = MessageLog({path!r}, checkpoint_every={every})
while True:
    record_id = log.allocate_id()
    log.append({{"event": "message", "time": timestamp(), "id": record_id,
                "room": "room%d" % (record_id % 3), "user": "ann",
                "text": "n°%d 😀" % record_id}})
    if record_id % 4 == 0:
        log.append({{"event": "join", "time": timestamp(), "user": "bob", "room": "room1"}})
    log.write_pending()
    # One write per line: the checkpoint thread prints too, and print() writes the
    # newline apart, so two prints could interleave into one line.
    sys.stdout.write("%d\\n" % record_id)
    sys.stdout.flush()
"""

# Checkpoints are the only files messagelog opens with "wb": the third one writes half
# of its bytes, then hangs until the test kills the process. Checkpoints are written by
# the log's background thread, so the writer goes on meanwhile.
STALL_IN_THIRD_CHECKPOINT = """
import fileutil

class HalfWrite:
    def __init__(self, handle):
        self.handle = handle
    def __enter__(self):
        return self
    def __exit__(self, *exc_info):
        self.handle.close()
    def write(self, data):
        self.handle.write(data[: len(data) // 2])
        self.handle.flush()
        sys.stdout.write("STALL\\n")
        sys.stdout.flush()
        time.sleep(60)

calls = 0
real_fdopen = fileutil.os.fdopen

def stalling_fdopen(fd, mode="r", *args, **kwargs):
    global calls
    handle = real_fdopen(fd, mode, *args, **kwargs)
    calls += mode == "wb"
    return HalfWrite(handle) if mode == "wb" and calls >= 3 else handle

# Checkpoints are written through fileutil.write_atomically; only this child process is patched.
fileutil.os.fdopen = stalling_fdopen
"""

kill_only_on_posix = pytest.mark.skipif(os.name != "posix", reason="needs SIGKILL")


def run_and_kill(path: Path, *, until: str | int, every: int, patch: str = "") -> list[int]:
    """Run a writer process, SIGKILL it once it printed `until`; the ids it printed."""
    code = textwrap.dedent(WRITER).format(root=str(ROOT), path=str(path), every=every, patch=patch)
    writer = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    printed: list[str] = []
    try:
        while not _reached(printed, until):
            line = writer.stdout.readline()
            assert line, f"the writer died: {writer.stderr.read()}"
            printed.append(line.strip())
    finally:
        writer.send_signal(signal.SIGKILL)
        rest, _ = writer.communicate(timeout=10)
    assert writer.returncode == -signal.SIGKILL
    printed += rest.split()  # printed between our last read and the kill: written too
    return [int(line) for line in printed if line.isdigit()]


def _reached(printed: list[str], until: str | int) -> bool:
    return until in printed if isinstance(until, str) else len(printed) >= until


@kill_only_on_posix
@pytest.mark.timeout(60)
def test_kill_9_loses_nothing_that_write_pending_returned(tmp_path: Path) -> None:
    path = tmp_path / "messageslog.json"
    printed = run_and_kill(path, until=400, every=50)
    printed += run_and_kill(path, until=300, every=50)  # a second life, on the killed log

    records = read_records(path)  # every line parses
    ids = [record["id"] for record in records if record["event"] == "message"]
    assert len(ids) == len(set(ids)), "an id was reused after the restart"
    assert set(printed) <= set(ids)
    with MessageLog(path, checkpoint_every=50) as log:
        assert log.recovery.checkpoint_used
        assert log.recovery.torn_bytes == 0
        assert_state(log, records)
        assert log.next_id > max(printed)


@kill_only_on_posix
@pytest.mark.timeout(60)
def test_kill_9_while_writing_a_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "messageslog.json"
    printed = run_and_kill(path, until="STALL", every=20, patch=STALL_IN_THIRD_CHECKPOINT)
    leftovers = list(tmp_path.glob(".messageslog.json.checkpoint.*.tmp"))
    assert leftovers  # the killed process was half way through a checkpoint

    records = read_records(path)
    assert set(printed) <= {record["id"] for record in records if record["event"] == "message"}
    with MessageLog(path, checkpoint_every=20) as log:
        assert log.recovery.checkpoint_used  # the one before is still whole
        assert log.recovery.lines_parsed > 0
        assert_state(log, records)
    with MessageLog(path) as log:
        assert_state(log, records)


# -- threads ------------------------------------------------------------------------------

@pytest.mark.timeout(60)
def test_concurrent_writers(tmp_path: Path) -> None:
    threads, per_thread = 8, 300
    log = MessageLog(tmp_path / "log.json", checkpoint_every=64)
    written_by: dict[int, int] = {}  # id -> size of the file when write_pending returned
    start = threading.Barrier(threads)

    def writer(number: int) -> None:
        start.wait()
        for _ in range(per_thread):
            record_id = log.allocate_id()
            log.append(message(record_id, f"room{number}", "é" * (record_id % 50)))
            log.write_pending()
            written_by[record_id] = os.path.getsize(log.path)

    workers = [threading.Thread(target=writer, args=(number,)) for number in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    log.close()

    data = log.path.read_bytes()
    records = read_records(log.path)  # lines never interleave
    ids = [record["id"] for record in records]
    assert sorted(ids) == list(range(1, threads * per_thread + 1))  # each exactly once
    end = 0
    for line, record in zip(data.splitlines(keepends=True), records, strict=True):
        end += len(line)
        assert end <= written_by[record["id"]], "write_pending returned before its line was written"
    for number in range(threads):  # each thread's records stay in its order
        own = [record["id"] for record in records if record["room"] == f"room{number}"]
        assert own == sorted(own)
    with MessageLog(log.path) as reopened:
        assert_state(reopened, records)


# -- any text -----------------------------------------------------------------------------

any_text = st.text(st.characters(exclude_categories=()), max_size=40)  # surrogates included


@settings(max_examples=80, deadline=None)
@given(room=any_text, user=any_text, text=any_text, note=any_text)
def test_any_text_round_trips(room: str, user: str, text: str, note: str) -> None:
    records = [
        message(1, room, text, user),
        {"event": "status", "time": TIME, "user": user, "status": text, "note": note},
        {"event": "connect", "time": TIME, "user": user, "address": note},
    ]
    for record in records:
        line = encode_record(record)
        assert line.count(b"\n") == 1 and line.endswith(b"\n")
        assert decode_line(line) == record
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "log.json"
        write_log(path, records).close()
        assert read_records(path) == records
        with MessageLog(path) as log:  # history from the checkpoint
            assert log.history(room) == records[:1]
        os.unlink(path.with_name(path.name + ".checkpoint"))
        with MessageLog(path) as log:  # history from the lines
            assert log.history(room) == records[:1]


def test_a_lone_surrogate_is_written_escaped() -> None:
    line = encode_record(message(1, text="bad \ud800 half"))
    assert b"\\ud800" in line
    assert decode_line(line) == message(1, text="bad \ud800 half")
    assert "😀".encode() in encode_record(message(1, text="😀"))


# -- history memory budget ----------------------------------------------------------------

LONG_TEXT = "x" * 4000 + "é" * 3999 + "😀"  # 8,000 characters, the server's maximum


def test_a_room_flood_stays_within_the_history_budget(tmp_path: Path) -> None:
    # An attacker posting 8,000-character messages into thousands of rooms: memory holds
    # only what the budget allows, and every evicted room still answers from the disk.
    budget = 1 * 2**20
    log = MessageLog(tmp_path / "log.json", history_budget=budget, index_batch=10**6,
                     index_delay=3600)  # nothing reaches the index until wait_idle
    busy = [message(record_id, "busy", f"early {record_id}") for record_id in range(1, 16)]
    for record in busy:
        log.append(record)
        log.write_pending()
    flood = [message(record_id, f"room{record_id}", LONG_TEXT) for record_id in range(16, 3016)]
    highest = 0
    for record in flood:
        log.append(record)
        log.write_pending()
        highest = max(highest, log.history_memory_bytes())
    assert highest <= budget == log.history_budget
    assert log.resident_rooms() < 100  # 3,001 rooms had messages
    assert log.history("busy") == busy[-HISTORY:]  # evicted long ago: from the waiting entries
    assert log.history("room16") == [flood[0]]
    assert log.history_memory_bytes() <= budget
    assert len(log.rooms()) == 3001
    assert log.wait_idle(10)
    assert log.history("room17") == [flood[1]]  # from the index now
    log.close()
    with MessageLog(log.path, history_budget=budget) as reopened:
        assert reopened.history_memory_bytes() == 0  # nothing is loaded at open
        assert reopened.history("busy") == busy[-HISTORY:]
        assert reopened.rooms() == sorted(["busy"] + [record["room"] for record in flood])


def test_the_budget_counts_what_the_history_really_takes(tmp_path: Path) -> None:
    # history_memory_bytes() is what the budget is checked against, so it must not count
    # less than the Python objects the history keeps alive (traced allocations).
    import tracemalloc

    log = MessageLog(tmp_path / "log.json", history_budget=2**30)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for record_id in range(1, 4001):
            room = f"room-{record_id % 300}"
            log.append(message(record_id, room, "é" * (record_id * 7 % 300)))
            log.write_pending()
        assert log.wait_idle(10)  # entries waiting for the index are not history
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    accounted = log.history_memory_bytes()
    assert log.resident_rooms() == 300
    assert held <= accounted <= 2 * held, (held, accounted)
    log.close()


def test_a_room_with_lines_not_written_yet_is_not_evicted(tmp_path: Path) -> None:
    log = MessageLog(tmp_path / "log.json", history_budget=0)
    log.append(message(1, "a"))
    log.append(message(2, "b"))
    assert log.resident_rooms() == 2  # over the budget, but nothing else has these lines
    assert log.history("a") == [message(1, "a")]
    log.write_pending()
    log.append(message(3, "c"))  # the next append evicts the written rooms
    assert log.resident_rooms() == 1
    assert log.history("a") == [message(1, "a")]  # read back from the file
    assert log.history("b") == [message(2, "b")]
    log.close()


def test_an_evicted_room_that_gets_a_new_message_keeps_its_older_ones(tmp_path: Path) -> None:
    log = MessageLog(tmp_path / "log.json", history_budget=3000)
    older = [message(record_id, "a", f"older {record_id}") for record_id in range(1, 8)]
    for record in older + [message(100 + n, f"other{n}", "y" * 500) for n in range(10)]:
        log.append(record)
        log.write_pending()
    assert "a" not in log._history  # evicted by the others
    newer = message(200, "a", "newer")
    log.append(newer)
    assert log.history("a") == older + [newer]  # the newest from memory, the rest from disk
    log.close()


# -- checkpoints do not hold up writing ---------------------------------------------------

@pytest.mark.timeout(60)
def test_writing_goes_on_while_a_checkpoint_is_being_written(tmp_path: Path) -> None:
    entered, release = threading.Event(), threading.Event()

    def hold_the_write(offset: int) -> None:  # runs in the log's background thread
        if not release.is_set():
            entered.set()
            assert release.wait(30)

    log = MessageLog(tmp_path / "log.json", checkpoint_every=5, on_checkpoint_write=hold_the_write)
    records = [message(record_id, "lobby", f"n {record_id}") for record_id in range(1, 106)]
    for record in records[:5]:
        log.append(record)
        log.write_pending()
    assert entered.wait(10)  # the first checkpoint is being written now, and stays so

    finished = threading.Event()

    def write_more() -> None:
        for record in records[5:]:
            log.append(record)
            log.write_pending()
        finished.set()

    writer = threading.Thread(target=write_more)
    writer.start()
    try:
        assert finished.wait(10), "append/write_pending waited for the checkpoint"
        assert read_records(log.path) == records  # written, not merely queued
        assert log.history_before("lobby", None, 100) == records[5:]
        assert not (tmp_path / "log.json.checkpoint").exists()  # still held
    finally:
        release.set()
        writer.join()
    assert log.wait_idle(10)
    checkpoint = json.loads((tmp_path / "log.json.checkpoint").read_bytes())
    assert checkpoint["offset"] == log.path.stat().st_size  # the latest request won
    assert checkpoint["next_id"] == 106
    with MessageLog(crash_copy(log, tmp_path / "crashed")) as crashed:
        assert crashed.recovery.checkpoint_used
        assert crashed.recovery.lines_parsed == 0
    log.close()


# -- the index and scrollback -------------------------------------------------------------

def interleaved(count: int) -> tuple[list[Record], list[Record]]:
    """`count` messages of #busy among messages of two other rooms, joins and privates."""
    records: list[Record] = []
    busy: list[Record] = []
    record_id = 0
    for number in range(count):
        for room in ("#busy", "#other", "#third"):
            record_id += 1
            records.append(message(record_id, room, f"{room} {number} é"))
            if room == "#busy":
                busy.append(records[-1])
        if number % 3 == 0:
            record_id += 1
            records.append(private(record_id))
            records.append(join("#busy"))
    return records, busy


def page_all(log: MessageLog, room: str, limit: int) -> list[Record]:
    """Every message of `room`, paged backwards from the newest, oldest first."""
    pages: list[list[Record]] = []
    before = None
    while True:
        page = log.history_before(room, before, limit)
        assert len(page) <= limit
        if not page:
            break
        pages.append(page)
        before = page[0]["id"]
    return [record for page in reversed(pages) for record in page]


def test_scrollback_pages_through_a_room_with_no_duplicates_or_holes(tmp_path: Path) -> None:
    records, busy = interleaved(1000)
    path = tmp_path / "log.json"
    log = MessageLog(path, index_batch=64, index_delay=3600, history_budget=0)
    for number, record in enumerate(records):
        log.append(record)
        if number % 5 == 0:
            log.write_pending()
    # Some entries are in the index, the last ones still wait for it: pages merge both.
    assert page_all(log, "#busy", 37) == busy
    assert log.history_before("#busy", busy[500]["id"], 3) == busy[497:500]
    assert log.history_before("#busy", 1, 100) == []
    assert log.history_before("#nowhere") == []
    assert log.wait_idle(10)
    assert page_all(log, "#busy", 100) == busy
    log.close()

    with MessageLog(path) as reopened:  # the index is kept: nothing is read again
        assert reopened.recovery.index_used
        assert reopened.recovery.index_problem is None
        assert reopened.recovery.index_lines == 0
        assert page_all(reopened, "#busy", 100) == busy
        assert page_all(reopened, "#other", 100) == [
            record for record in records if record.get("room") == "#other"
            and record["event"] == "message"]


def test_scrollback_includes_what_was_appended_but_not_yet_written(tmp_path: Path) -> None:
    with MessageLog(tmp_path / "log.json") as log:
        log.append(message(1))
        assert log.history_before("lobby") == [message(1)]  # it writes first
        assert read_records(log.path) == [message(1)]


@pytest.mark.parametrize("limit", [0, 101, True, 2.5, -1])
def test_a_page_size_outside_1_to_100_is_refused(tmp_path: Path, limit: Any) -> None:
    with MessageLog(tmp_path / "log.json") as log:
        with pytest.raises(ValueError):
            log.history_before("lobby", None, limit)
        with pytest.raises(ValueError):
            log.history_before("lobby", -5, 10)


def test_a_page_is_one_seek_in_the_covering_index(tmp_path: Path) -> None:
    # No scan of the table, let alone of the file: what makes a page cost the same on a
    # log of 10,000,000 lines as on one of 100 (bench/logbench.py measures it).
    with write_log(tmp_path / "log.json", mixed_records(300)) as log:
        plan = log._index.query_plan()
    assert "USING INDEX blocks_by_min (room=? AND min_id<?)" in plan
    assert "SCAN" not in plan and "TEMP B-TREE" not in plan


def test_a_torn_tail_that_cuts_into_indexed_lines(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # kill -9 style damage further back than the index's end (a lost page cache, say):
    # the index rows past the log's new end are dropped, the rest is kept.
    path = tmp_path / "log.json"
    records = [message(record_id, "lobby", f"n {record_id}") for record_id in range(1, 201)]
    write_log(path, records).close()
    data = path.read_bytes()
    cut = data.index(encode_record(records[149])) + 30  # in the middle of message 150
    path.write_bytes(data[:cut])

    with caplog.at_level(logging.WARNING, logger="messagelog"):
        log = MessageLog(path)
    assert log.recovery.torn_bytes == 30
    assert log.recovery.index_used
    assert "dropped the rows past its end" in log.recovery.index_problem
    assert page_all(log, "lobby", 100) == records[:149]
    assert log.history("lobby") == records[139:149]
    assert log.next_id == 150
    again = message(log.allocate_id(), "lobby", "written again")
    log.append(again)
    log.close()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="messagelog"):
        with MessageLog(path) as reopened:
            assert page_all(reopened, "lobby", 100) == records[:149] + [again]
            assert reopened.recovery.index_lines == 0
    assert caplog.text == ""


def _delete(index: Path) -> None:
    index.unlink()


def _garbage(index: Path) -> None:
    index.write_bytes(b"\x00garbage, not a database\n" * 200)


def _foreign(index: Path) -> None:
    import sqlite3

    index.unlink()
    for leftover in index.parent.glob(index.name + "-*"):
        leftover.unlink()
    with sqlite3.connect(index) as other:
        other.execute("CREATE TABLE users(name TEXT)")
        other.execute("INSERT INTO users VALUES ('someone else''s data')")
    other.close()


INDEX_DAMAGE = {"deleted": _delete, "garbage": _garbage, "foreign database": _foreign}
INDEX_PROBLEMS = {"deleted": "no index", "garbage": "not an SQLite database",
                  "foreign database": "other tables"}


@pytest.mark.parametrize("damage", INDEX_DAMAGE)
def test_a_missing_or_bad_index_is_rebuilt_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    records, busy = interleaved(200)
    path = tmp_path / "log.json"
    write_log(path, records).close()
    index = tmp_path / "log.json.index"
    INDEX_DAMAGE[damage](index)
    damaged = index.read_bytes() if index.exists() else None

    with caplog.at_level(logging.WARNING, logger="messagelog"):
        log = MessageLog(path)
    assert "rebuilding it from the whole log" in caplog.text
    assert INDEX_PROBLEMS[damage] in log.recovery.index_problem
    assert not log.recovery.index_used
    assert log.recovery.index_lines == len(records)
    assert log.recovery.checkpoint_used  # the checkpoint was fine: only the index is rebuilt
    assert page_all(log, "#busy", 100) == busy
    assert_state(log, records)
    log.close()
    if damaged is not None:  # never deleted: kept aside for whoever wants to look
        assert (tmp_path / "log.json.index.bad").read_bytes() == damaged
    with MessageLog(path) as reopened:
        assert reopened.recovery.index_used and reopened.recovery.index_lines == 0


def test_an_index_of_another_log_is_rebuilt(tmp_path: Path) -> None:
    path = tmp_path / "log.json"
    write_log(path, mixed_records(100)).close()
    others = [message(record_id, "room1", "another, longer log") for record_id in range(1, 300)]
    path.write_bytes(b"".join(encode_record(record) for record in others))
    with MessageLog(path) as log:
        assert not log.recovery.index_used
        assert "does not match" in log.recovery.index_problem
        assert page_all(log, "room1", 100) == others


def test_rooms_pages_through_memory_and_index(tmp_path: Path) -> None:
    with MessageLog(tmp_path / "log.json", history_budget=5000) as log:
        names = [f"room{number:03}" for number in range(120)]
        for record_id, name in enumerate(names, 1):
            log.append(message(record_id, name))
            log.write_pending()
        assert log.resident_rooms() < len(names)
        assert log.rooms() == names
        assert log.rooms(limit=10) == names[:10]
        assert log.rooms(after="room050", limit=5) == names[51:56]
        assert log.rooms(after="room119") == []


def test_pages_are_exact_when_ids_come_out_of_order(tmp_path: Path) -> None:
    # The server appends in id order, but a caller need not: a block that began below
    # another may still hold a larger id, and the page must find it.
    path = tmp_path / "log.json"
    log = MessageLog(path)
    for batch in ([1, 30], [10, 11], [5, 40, 2]):
        for record_id in batch:
            log.append(message(record_id, "r", f"n {record_id}"))
        log.write_pending()
        assert log.wait_idle(10)  # each batch becomes its own block
    ids = [1, 2, 5, 10, 11, 30, 40]
    for before, limit in [(None, 2), (31, 2), (30, 3), (11, 100), (3, 1), (None, 100)]:
        below = [record_id for record_id in ids if before is None or record_id < before]
        expected = [message(record_id, "r", f"n {record_id}") for record_id in below[-limit:]]
        assert log.history_before("r", before, limit) == expected, (before, limit)
    log.close()
    with MessageLog(path) as reopened:
        assert [record["id"] for record in reopened.history_before("r", None, 3)] == [11, 30, 40]
