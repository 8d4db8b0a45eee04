"""The server's durable message log, and the room history it rebuilds after a restart.

File format
-----------
`messageslog.json` is JSON Lines: one JSON object per line, UTF-8, compact separators,
non-ASCII written as itself (`ensure_ascii=False`), each line ended by a single b"\\n".
JSON escapes every control character, so a record never contains a raw newline and the
file can be split on b"\\n" without parsing. Every record has "event" and "time" (UTC,
ISO 8601 with milliseconds and "Z", see `timestamp`):

    {"event":"message","time":"2024-05-01T12:00:00.123Z","id":7,"room":"lobby","user":"ann",
     "text":"hi"}                                       (all on one line in the file)
    {"event":"private","time":"...","id":8,"from":"ann","to":"bob","size":412}   (metadata only)
    {"event":"connect","time":"...","user":"ann","address":"10.0.0.5:51234"}
    {"event":"disconnect","time":"...","user":"ann","reason":"quit"}
    {"event":"join" | "leave","time":"...","user":"ann","room":"lobby"}
    {"event":"status","time":"...","user":"ann","status":"away","note":"lunch"}

"message" and "private" share one id sequence; `MessageLog.next_id` is 1 + the largest
id in the file. A string holding a lone surrogate cannot be UTF-8, so such a record is
written with `ensure_ascii=True` instead; both decode to the same record.

Why JSON Lines and not one JSON array: appending a record is one write at the end of the
file, whatever its size, while an array must be rewritten, or the closing bracket sought
and overwritten, to stay valid. A crash can damage only the last line, and each line is
checked on its own, so the damage is found and cut off without touching the rest; `jq`
and any JSON-lines reader can read the file as it is.

Durability
----------
`append` only encodes the record and queues the line; `write_pending` writes every queued
line with one write to the file, opened with O_APPEND. The server calls it before it sends
anything to a client, so whatever a client has seen is in the file and survives `kill -9`
(the kernel has it). Only `sync`/`close` call fsync, so a power cut may lose the last
writes; that is the price of not paying an fsync per message.

Torn tail: at open, a last line without its newline, or one that is not a JSON object, is
cut off (with any other bad lines after the last good one), and the bytes removed are
appended to `<path>.torn`. A bad line followed by good ones cannot come from a crash; it
is skipped with a warning and left in place.

Checkpoint
----------
So that a start does not parse a million lines, `<path>.checkpoint` records the state as
of a byte offset in the log, written atomically (temporary file, then `os.replace`) every
`checkpoint_every` records and at close:

    {"format": "gapshape-messagelog-checkpoint", "version": 1,
     "offset": <bytes of the log it covers; the log's size when it was written>,
     "next_id": <1 + largest id in log[:offset]>, "history_size": 10,
     "head_sha256": <hex SHA-256 of log[:min(4096, offset)]>,
     "tail_sha256": <hex SHA-256 of log[max(0, offset - 4096):offset]>,
     "written_at": <timestamp, for people>,
     "history": {"<room>": [<message record>, ... oldest first]}}

At open the checkpoint is used only if it parses, has this version, a history at least
as long as the one asked for, and the log is at least `offset` bytes long with the same
first and last 4 KiB before the offset; then only the lines after the offset are parsed
(after `kill -9` those are the records since the last checkpoint). Otherwise, a replaced
or truncated log for instance, the whole file is scanned, and a new checkpoint written.
Edits before the offset that keep both windows intact are not noticed: delete the
checkpoint to force a full scan.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO, Callable

from fileutil import write_atomically

__all__ = ["MessageLog", "Recovery", "decode_line", "encode_record", "timestamp"]

logger = logging.getLogger(__name__)

Record = dict[str, Any]

ID_EVENTS = frozenset({"message", "private"})
CHECKPOINT_FORMAT = "gapshape-messagelog-checkpoint"
CHECKPOINT_VERSION = 1
ANCHOR_SIZE = 4096  # bytes hashed at the start of the log and right before the offset

_OPEN_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_BINARY", 0)
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)
_ASCII_ENCODER = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"), allow_nan=False)


def timestamp(moment: datetime | None = None) -> str:
    """`moment` (default: now) as UTC ISO 8601 with milliseconds and Z, as records carry it."""
    moment = datetime.now(timezone.utc) if moment is None else moment.astimezone(timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def encode_record(record: Record) -> bytes:
    """One log line (with its newline) for `record`; TypeError/ValueError if it is not one."""
    _check_record(record)
    try:
        text = _ENCODER.encode(record)
        return text.encode("utf-8") + b"\n"
    except UnicodeEncodeError:  # a lone surrogate: valid JSON only when escaped
        return _ASCII_ENCODER.encode(record).encode("ascii") + b"\n"


def decode_line(line: bytes) -> Record | None:
    """The record on a log line, or None when the line is not a JSON object."""
    try:
        record = json.loads(line.decode("utf-8"))  # json.loads(bytes) sniffs the encoding: slower
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return None
    return record if isinstance(record, dict) else None


def _check_record(record: Record) -> None:
    if not isinstance(record, dict):
        raise TypeError(f"a log record is a dict, not {type(record).__name__}")
    event = record.get("event")
    if not isinstance(event, str) or not isinstance(record.get("time"), str):
        raise ValueError("a log record needs string 'event' and 'time' fields")
    if event in ID_EVENTS and not _is_id(record.get("id")):
        raise ValueError(f"a {event!r} record needs an integer 'id'")
    if event == "message" and not isinstance(record.get("room"), str):
        raise ValueError("a 'message' record needs a string 'room'")


def _is_id(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


@dataclass(frozen=True)
class Recovery:
    """What opening the log found; also logged at INFO."""

    checkpoint_used: bool
    checkpoint_problem: str | None  # why the checkpoint was not used, None if it was
    start_offset: int  # where parsing started: the checkpoint's offset, or 0
    lines_parsed: int  # good lines parsed from start_offset on
    bad_lines_skipped: int  # bad lines in the middle, left in place
    torn_bytes: int  # bytes cut off the end and saved to <path>.torn
    seconds: float


@dataclass(frozen=True)
class _Snapshot:
    """The in-memory state matching the log up to a write: what a checkpoint stores."""

    next_id: int
    history: dict[str, list[Record]]


@dataclass(frozen=True)
class _Checkpoint:
    offset: int
    next_id: int
    history_size: int
    head_sha256: str
    tail_sha256: str
    history: dict[str, list[Record]]

    def to_bytes(self) -> bytes:
        document = {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "offset": self.offset,
            "next_id": self.next_id,
            "history_size": self.history_size,
            "head_sha256": self.head_sha256,
            "tail_sha256": self.tail_sha256,
            "written_at": timestamp(),
            "history": self.history,
        }
        return json.dumps(document, ensure_ascii=True, separators=(",", ":")).encode("ascii")

    @classmethod
    def from_bytes(cls, data: bytes, min_history_size: int) -> _Checkpoint:
        """Parse and validate a checkpoint document; ValueError says what is wrong."""
        document = json.loads(data)
        if not isinstance(document, dict) or document.get("format") != CHECKPOINT_FORMAT:
            raise ValueError("not a message log checkpoint")
        if document.get("version") != CHECKPOINT_VERSION:
            raise ValueError(f"unknown checkpoint version {document.get('version')!r}")
        offset, next_id = document.get("offset"), document.get("next_id")
        size = document.get("history_size")
        if not (_is_id(offset) and _is_id(next_id) and _is_id(size)):
            raise ValueError("offset, next_id and history_size must be integers")
        if size < min_history_size:
            raise ValueError(f"it keeps {size} messages per room, {min_history_size} are wanted")
        head, tail = document.get("head_sha256"), document.get("tail_sha256")
        if not (isinstance(head, str) and isinstance(tail, str)):
            raise ValueError("missing log fingerprints")
        return cls(offset, next_id, size, head, tail, _parse_history(document.get("history"), size))


def _parse_history(history: object, size: int) -> dict[str, list[Record]]:
    if not isinstance(history, dict):
        raise ValueError("history must be an object")
    for room, records in history.items():
        if not isinstance(records, list) or not 0 < len(records) <= size:
            raise ValueError("each room's history must be a non-empty list")
        for record in records:
            is_message = isinstance(record, dict) and record.get("event") == "message"
            if not is_message or record.get("room") != room:
                raise ValueError("history holds a record that is not a message of its room")
    return history


@dataclass(frozen=True)
class _Scan:
    good_end: int  # offset just past the last good line
    end: int  # offset where reading stopped: the end of the file
    lines: int
    skipped: list[int]  # offsets of bad lines that have good lines after them


def _scan(reader: BinaryIO, start: int, on_record: Callable[[Record], None]) -> _Scan:
    """Parse the lines from `start` to the end, feeding good records to `on_record`."""
    reader.seek(start)
    pos = good_end = start
    lines = 0
    skipped: list[int] = []
    bad_since_good: list[int] = []
    for line in reader:
        line_start, pos = pos, pos + len(line)
        if not line.endswith(b"\n"):
            break  # only the last line can lack its newline: a torn write
        record = decode_line(line)
        if record is None:
            bad_since_good.append(line_start)
            continue
        skipped += bad_since_good
        bad_since_good.clear()
        on_record(record)
        lines += 1
        good_end = pos
    return _Scan(good_end, pos, lines, skipped)


def _fingerprints(reader: BinaryIO, offset: int) -> tuple[str, str]:
    """SHA-256 of the first and of the last ANCHOR_SIZE bytes of log[:offset]."""
    reader.seek(0)
    head = reader.read(min(ANCHOR_SIZE, offset))
    tail_start = max(0, offset - ANCHOR_SIZE)
    reader.seek(tail_start)
    tail = reader.read(offset - tail_start)
    return hashlib.sha256(head).hexdigest(), hashlib.sha256(tail).hexdigest()


def _write_all(fd: int, data: bytes) -> None:
    """One os.write; more only if the kernel took part of it (disk nearly full, signals)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class MessageLog:
    """An append-only JSON Lines log plus the last `history_size` messages of every room.

    Use it like this; `append` never touches the file, so it may run under the server's
    own lock, and `write_pending` goes right before anything is sent:

        with server_lock:
            record = {"event": "message", "time": timestamp(), "id": log.allocate_id(), ...}
            log.append(record)
        log.write_pending()  # now the record is in the file
        send_to_members(record)

    Locks, never more than these two, always taken in this order:
    `_write_lock` (the file descriptor, `_offset`, checkpoints), then `_state_lock`
    (pending lines, history, ids, counters). `append`, `allocate_id`, `history`
    and `rooms` take only `_state_lock`, and hold it without doing I/O, so they never
    wait for the disk. `write_pending` takes `_write_lock`, swaps the pending lines out
    under `_state_lock`, and writes with `_state_lock` released.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        history_size: int = 10,
        checkpoint_every: int = 10_000,
    ) -> None:
        if history_size < 1 or checkpoint_every < 1:
            raise ValueError("history_size and checkpoint_every must be at least 1")
        self.path = Path(path)
        self.checkpoint_path = self.path.with_name(self.path.name + ".checkpoint")
        self.torn_path = self.path.with_name(self.path.name + ".torn")
        self._history_size = history_size
        self._checkpoint_every = checkpoint_every
        self._write_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._history: dict[str, deque[Record]] = {}
        self._next_id = 1  # what allocate_id hands out next
        self._logged_next_id = 1  # 1 + the largest id appended: what a checkpoint stores
        self._pending: list[bytes] = []
        self._appended = 0  # lines appended since open; _written trails it
        self._written = 0
        self._offset = 0  # size of the log: where the next write lands (_write_lock)
        self._since_checkpoint = 0  # lines written since the last checkpoint (_write_lock)
        self._closed = False
        self._fd = os.open(self.path, _OPEN_FLAGS, 0o600)
        try:
            self.recovery = self._recover()
        except BaseException:
            os.close(self._fd)
            raise

    # -- the public API ----------------------------------------------------------------

    @property
    def next_id(self) -> int:
        """1 + the largest id of any message or private record logged (or allocated)."""
        return self._next_id

    def allocate_id(self) -> int:
        """A new message/private id, never handed out before (even across restarts)."""
        with self._state_lock:
            allocated = self._next_id
            self._next_id += 1
            return allocated

    def append(self, record: Record) -> None:
        """Queue `record` for the next `write_pending`, and index it. No I/O.

        The record is encoded here, once; TypeError/ValueError if it is not a valid
        record (then nothing is queued). Later changes to `record` do not reach the log.
        """
        line = encode_record(record)
        record = dict(record)
        with self._state_lock:
            if self._closed:
                raise ValueError(f"append to closed message log {self.path}")
            self._pending.append(line)
            self._appended += 1
            self._index(record)

    def history(self, room: str) -> list[Record]:
        """Copies of the latest message records of `room`, oldest first.

        They may include records not written yet: call `write_pending` before sending them.
        """
        with self._state_lock:
            return [dict(record) for record in self._history.get(room, ())]

    def rooms(self) -> list[str]:
        """The rooms that have at least one message, sorted."""
        with self._state_lock:
            return sorted(self._history)

    def write_pending(self) -> None:
        """Write every line appended so far, with one write, before returning.

        Callers that arrive while another is writing wait for it, then usually find their
        lines already written (group commit). No fsync. Raises OSError if the write
        fails; the lines stay queued for the next call.
        """
        # Lock-free fast path, the common case right before every send: both counters only
        # grow, and a line appended before our caller pushed its frame is counted in
        # `_appended` by now (the caller's locks order it), so "written >= appended" read
        # without the lock can only err towards taking the slow path.
        if self._written >= self._appended:
            return
        with self._state_lock:
            target = self._appended
            if self._written >= target:
                return
        with self._write_lock:
            self._flush(target)

    def sync(self) -> None:
        """`write_pending`, then fsync the log."""
        self.write_pending()
        with self._write_lock:
            if self._fd >= 0:
                os.fsync(self._fd)

    def close(self) -> None:
        """Write and fsync everything, write a checkpoint, close the file. Idempotent."""
        with self._state_lock:
            if self._closed:
                return
            self._closed = True  # from now on append refuses, so nothing is left behind
            target = self._appended
        with self._write_lock:
            try:
                self._flush(target, checkpoint=False)
                os.fsync(self._fd)
                with self._state_lock:
                    snapshot = self._snapshot()
                self._checkpoint(snapshot, durable=True)
            finally:
                os.close(self._fd)
                self._fd = -1

    def __enter__(self) -> MessageLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- writing (caller holds _write_lock) --------------------------------------------

    def _flush(self, target: int, *, checkpoint: bool = True) -> None:
        with self._state_lock:
            if self._written >= target:
                return  # another caller wrote our lines while we waited
            batch, self._pending = self._pending, []
            self._since_checkpoint += len(batch)
            snapshot = None
            if checkpoint and self._since_checkpoint >= self._checkpoint_every:
                snapshot = self._snapshot()  # the state once this batch is written
        self._write_batch(batch)
        if snapshot is not None:
            self._checkpoint(snapshot, durable=False)

    def _write_batch(self, batch: list[bytes]) -> None:
        data = b"".join(batch)
        try:
            _write_all(self._fd, data)
        except OSError:
            self._undo_partial_write()
            with self._state_lock:
                self._pending[:0] = batch
            raise
        self._offset += len(data)
        with self._state_lock:
            self._written += len(batch)

    def _undo_partial_write(self) -> None:
        """Cut back a half-written batch, so that the next write starts on a fresh line."""
        try:
            os.ftruncate(self._fd, self._offset)
        except OSError:
            logger.exception("cannot cut a partial write off %s; next open repairs it", self.path)

    def _checkpoint(self, snapshot: _Snapshot, *, durable: bool) -> None:
        """Write a checkpoint for log[:_offset]; a failure is logged, never raised."""
        try:
            with open(self.path, "rb") as reader:
                head, tail = _fingerprints(reader, self._offset)
            checkpoint = _Checkpoint(
                self._offset, snapshot.next_id, self._history_size, head, tail, snapshot.history
            )
            write_atomically(self.checkpoint_path, checkpoint.to_bytes(), durable=durable)
        except (OSError, ValueError, TypeError):
            logger.exception("cannot write %s; the next start scans more", self.checkpoint_path)
            return
        self._since_checkpoint = 0
        logger.debug("checkpoint of %s at offset %d", self.path, self._offset)

    # -- in-memory state (caller holds _state_lock, or is __init__) ---------------------

    def _index(self, record: Record) -> None:
        event = record.get("event")
        if event in ID_EVENTS and _is_id(record.get("id")):
            following = record["id"] + 1
            self._logged_next_id = max(self._logged_next_id, following)
            self._next_id = max(self._next_id, following)
        room = record.get("room")
        if event == "message" and isinstance(room, str):
            if room not in self._history:
                self._history[room] = deque(maxlen=self._history_size)
            self._history[room].append(record)

    def _snapshot(self) -> _Snapshot:
        # Records are never changed once indexed, so sharing them with the writer is safe.
        history = {room: list(records) for room, records in self._history.items()}
        return _Snapshot(self._logged_next_id, history)

    def _restore(self, checkpoint: _Checkpoint) -> None:
        for room, records in checkpoint.history.items():
            self._history[room] = deque(records, maxlen=self._history_size)
        self._logged_next_id = self._next_id = max(1, checkpoint.next_id)

    # -- opening -----------------------------------------------------------------------

    def _recover(self) -> Recovery:
        started = time.perf_counter()
        checkpoint, problem = self._load_checkpoint()
        start = 0
        if checkpoint is not None:
            self._restore(checkpoint)
            start = checkpoint.offset
        with open(self.path, "rb") as reader:
            scan = _scan(reader, start, self._index)
            if scan.good_end < scan.end:
                self._cut_torn_tail(reader, scan)
        self._offset = scan.good_end
        if scan.skipped:
            logger.warning(
                "%s: skipped %d bad line(s) in the middle of the log, first at byte %d",
                self.path, len(scan.skipped), scan.skipped[0],
            )
        if self._offset != start:
            self._checkpoint(self._snapshot(), durable=False)  # the next start need not rescan
        recovery = Recovery(
            checkpoint is not None, problem, start, scan.lines, len(scan.skipped),
            scan.end - scan.good_end, time.perf_counter() - started,
        )
        logger.info(
            "opened %s: %d bytes, checkpoint %s, %d line(s) parsed in %.3f s",
            self.path, self._offset, "used" if checkpoint else f"not used ({problem})",
            scan.lines, recovery.seconds,
        )
        return recovery

    def _load_checkpoint(self) -> tuple[_Checkpoint | None, str | None]:
        """The checkpoint if it is valid and matches the log, else None and the reason."""
        try:
            data = self.checkpoint_path.read_bytes()
        except FileNotFoundError:
            return None, "no checkpoint"
        except OSError as error:
            return self._reject_checkpoint(f"unreadable: {error}")
        try:
            checkpoint = _Checkpoint.from_bytes(data, self._history_size)
        except (ValueError, TypeError) as error:  # includes JSON and UTF-8 decoding errors
            return self._reject_checkpoint(f"invalid: {error}")
        with open(self.path, "rb") as reader:
            size = os.fstat(reader.fileno()).st_size
            if size < checkpoint.offset:
                problem = f"the log has {size} bytes, the checkpoint covers {checkpoint.offset}"
                return self._reject_checkpoint(problem)
            expected = (checkpoint.head_sha256, checkpoint.tail_sha256)
            if _fingerprints(reader, checkpoint.offset) != expected:
                return self._reject_checkpoint("the log does not match it (replaced or rewritten)")
        return checkpoint, None

    def _reject_checkpoint(self, problem: str) -> tuple[None, str]:
        logger.warning("%s not used, scanning the whole log: %s", self.checkpoint_path, problem)
        return None, problem

    def _cut_torn_tail(self, reader: BinaryIO, scan: _Scan) -> None:
        """Save log[good_end:] to <path>.torn, then truncate the log to good_end."""
        reader.seek(scan.good_end)
        torn = reader.read(scan.end - scan.good_end)
        with open(self.torn_path, "ab") as forensics:
            forensics.write(torn)
            forensics.flush()
            os.fsync(forensics.fileno())
        os.ftruncate(self._fd, scan.good_end)
        logger.warning(
            "%s: cut a torn tail of %d byte(s) at byte %d, saved to %s",
            self.path, len(torn), scan.good_end, self.torn_path,
        )
