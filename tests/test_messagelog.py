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
from typing import Any

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

    monkeypatch.setattr(messagelog.os, "write", slow_write)
    log.append(message(1))  # B's line
    leader = threading.Thread(target=log.write_pending)
    leader.start()
    assert writing.wait(10)
    follower_done = threading.Event()
    follower = threading.Thread(target=lambda: (log.write_pending(), follower_done.set()))
    follower.start()
    returned_early = follower_done.wait(0.3)
    release.set()
    leader.join()
    follower.join()
    assert not returned_early
    log.close()
    assert read_records(log.path) == [message(1)]


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
    for line, record in zip(data.splitlines(keepends=True), records):
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
