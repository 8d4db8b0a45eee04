"""The server's durable message log, and the room history it rebuilds after a restart.

This module is the writer: queueing, writing, the background thread, opening and
recovery, the room history in memory and reading history back. The line format
(JSON Lines, one record a line, and the scanner) is in `logformat`, the checkpoint file
in `logcheckpoint`, the SQLite index in `logindex`; the names other modules use
(`timestamp`, `encode_record`, `decode_line`) are importable from here too.

File format
-----------
`messageslog.json` is JSON Lines, one JSON object per line, each with "event" and "time";
"message" and "private" records share one id sequence, and `MessageLog.next_id` is 1 +
the largest id in the file. The record kinds, the encoding and why JSON Lines: see
`logformat`'s docstring.

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
So that a start does not parse a million lines, `<path>.checkpoint` records the next id
as of a byte offset in the log, with fingerprints of the log before it; it is written
(atomically) every `checkpoint_every` records by the background thread, at open when the
log had lines past it, and at close, and used at open only if it matches the log. Its
format and the checks: `logcheckpoint`'s docstring. `on_checkpoint_write`, a constructor
argument, is called by the background thread with the offset right before each write
during operation (tests hold a write in progress with it).

Index
-----
`<path>.index` is an SQLite database (format in `logindex`'s docstring) that lists, room by
room, the id, byte offset and length of every "message" line, in blocks of up to 64, and
the byte offset up to which it covers the log, with the same two fingerprints as the
checkpoint. `history_before(room, before_id, limit)` is one seek in its (room, min_id)
index, a walk over the first few blocks, and one `pread` per record, so a page costs the
same on a log of 10,000,000 lines as on one of 100; every record read back is checked to
be the message the index names (a mismatch is skipped with a warning). Index rows are
written by the background thread, one transaction per batch (`index_batch` = 10,000
lines, or `index_delay` = 0.5 s after a write), never by `append` and never with an fsync per
message (SQLite's WAL with synchronous=NORMAL: an fsync only when the WAL is folded back
into the database, in the background thread; a power cut loses at most the last
transactions, which the next open catches up from the log); until
then the written entries wait in memory, where pages find them too (at most
`MAX_UNINDEXED`: past that, `write_pending` indexes them itself).

At open the index is checked like the checkpoint, then caught up from its offset with the
lines after it. A missing, damaged (not SQLite) or foreign index is rebuilt from the whole
log with a warning; a damaged or foreign file is moved aside to `<path>.index.bad`, never
deleted. When the log is shorter than the index says (its tail was cut off), the rows past
the log's end are dropped and the last remaining row is checked against the log; if that
fails too, the index is rebuilt. The log stays the only source of truth.

Memory
------
The latest `history_size` messages of recently used rooms are kept in memory within
`history_budget` bytes (default 16 MiB), least recently used rooms dropped first; how
they are counted and when a room may go: `loghistory`'s docstring.
"""
from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, cast

from logcheckpoint import (
    ANCHOR_SIZE,
    Checkpoint,
    Snapshot,
    load_checkpoint,
    log_fingerprints,
    write_checkpoint,
)
from logformat import (
    ID_EVENTS,
    Record,
    Scan,
    decode_line,
    encode_record,
    is_id,
    is_message_of,
    scan_lines,
    timestamp,
)
from loghistory import HISTORY_BUDGET, RoomHistories
from logindex import IndexEntry, MessageIndex

__all__ = [
    "HISTORY_BUDGET", "MAX_PAGE", "MessageLog", "Recovery", "decode_line", "encode_record",
    "timestamp",
]

logger = logging.getLogger(__name__)


MAX_PAGE = 100  # the most records one history_before call returns
INDEX_BATCH = 10_000  # written lines that wake the background thread to index them
INDEX_DELAY = 0.5  # seconds a written line waits at most before it is indexed
MAX_UNINDEXED = 30_000  # past this many waiting entries, write_pending indexes them itself
SCAN_CHUNK = 10_000  # index rows inserted at a time while catching up at open

_OPEN_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_BINARY", 0)
_READ_FLAGS = os.O_RDONLY | getattr(os, "O_BINARY", 0)


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
    index_used: bool = False  # the index file was kept (perhaps with rows past the end dropped)
    index_problem: str | None = None  # why it was rebuilt or cut back, None if all was well
    index_start: int = 0  # where indexing the lines started: the index's offset, or 0
    index_lines: int = 0  # lines read to catch the index up (those before start_offset too)


def _write_all(fd: int, data: bytes) -> None:
    """One os.write; more only if the kernel took part of it (disk nearly full, signals)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class MessageLog:
    """An append-only JSON Lines log, the latest messages of busy rooms, and an index.

    Use it like this; `append` never touches the file, so it may run under the server's
    own lock, and `write_pending` goes right before anything is sent:

        with server_lock:
            record = {"event": "message", "time": timestamp(), "id": log.allocate_id(), ...}
            log.append(record)
        log.write_pending()  # now the record is in the file
        send_to_members(record)

    Locks, always taken in this order: `_write_lock` (the file descriptor, `_offset`,
    checkpoint requests), `_flush_lock` (moving entries into the index), then
    `_state_lock` (pending lines, history, ids, counters, entries waiting for the index);
    `_background` (the background thread's condition) is taken alone, or last. `append`,
    `allocate_id` take only `_state_lock`, and hold it without doing I/O, so they never
    wait for the disk. `write_pending` takes `_write_lock`, swaps the pending lines out
    under `_state_lock`, and writes with `_state_lock` released. `history` of a room that
    is not in memory, `history_before` and `rooms` read the index and the log with no
    lock of this class held (the index has its own).

    A background thread moves written entries into the index and writes checkpoints.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        history_size: int = 10,
        checkpoint_every: int = 10_000,
        history_budget: int = HISTORY_BUDGET,
        index_batch: int = INDEX_BATCH,
        index_delay: float = INDEX_DELAY,
        on_checkpoint_write: Callable[[int], None] | None = None,
    ) -> None:
        if history_size < 1 or checkpoint_every < 1 or index_batch < 1:
            raise ValueError("history_size, checkpoint_every and index_batch must be at least 1")
        if history_budget < 0 or index_delay <= 0:
            raise ValueError("history_budget must be >= 0 and index_delay > 0")
        self.path = Path(path)
        self.checkpoint_path = self.path.with_name(self.path.name + ".checkpoint")
        self.index_path = self.path.with_name(self.path.name + ".index")
        self.torn_path = self.path.with_name(self.path.name + ".torn")
        self._history_size = history_size
        self._checkpoint_every = checkpoint_every
        self._index_batch = index_batch
        self._index_delay = index_delay
        self._on_checkpoint_write = on_checkpoint_write
        self._write_lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._background = threading.Condition(threading.Lock())
        self._history = RoomHistories(history_size, history_budget)  # (_state_lock)
        self._next_id = 1  # what allocate_id hands out next
        self._logged_next_id = 1  # 1 + the largest id appended: what a checkpoint stores
        self._pending: list[bytes] = []
        self._pending_keys: list[tuple[str, int] | None] = []  # (room, id) of message lines
        self._appended = 0  # lines appended since open; _written trails it
        self._written = 0
        self._written_offset = 0  # the log's size as of _written (_state_lock)
        self._unindexed: list[IndexEntry] = []  # written message lines not in the index yet
        self._offset = 0  # size of the log: where the next write lands (_write_lock)
        self._since_checkpoint = 0  # lines written since the last checkpoint (_write_lock)
        self._closed = False
        self._checkpoint_request: Snapshot | None = None  # (_background)
        self._stopping = False  # (_background)
        self._idle_requested = 0  # wait_idle calls so far, and the last one served (_background)
        self._idle_served = 0
        self._fd = os.open(self.path, _OPEN_FLAGS, 0o600)
        self._read_fd = -1
        self._index: MessageIndex | None = None
        try:
            self._read_fd = os.open(self.path, _READ_FLAGS)
            self.recovery = self._recover()
        except BaseException:
            self._close_files()
            raise
        self._thread = threading.Thread(
            target=self._run_background, name=f"messagelog {self.path.name}", daemon=True
        )
        self._thread.start()

    # -- the public API ----------------------------------------------------------------

    @property
    def next_id(self) -> int:
        """1 + the largest id of any message or private record logged (or allocated)."""
        return self._next_id

    @property
    def history_budget(self) -> int:
        """The bytes of room history this log keeps in memory at most (see the docstring)."""
        return self._history.budget

    def history_memory_bytes(self) -> int:
        """Bytes of room history in memory now, as accounted against `history_budget`."""
        return self._history.bytes

    def resident_rooms(self) -> int:
        """How many rooms have their history in memory now."""
        return len(self._history.rooms)

    def allocate_id(self) -> int:
        """A new message/private id, never handed out before (even across restarts)."""
        with self._state_lock:
            allocated = self._next_id
            self._next_id += 1
            return allocated

    def append(self, record: Record, line: bytes | None = None) -> None:
        """Queue `record` for the next `write_pending`, and remember it. No I/O.

        The record is encoded here, once, unless the caller brings its `line`
        (`logformat.line_around`, sharing the encoding of the frame that carries it);
        TypeError/ValueError if it is not a valid record (then nothing is queued). Later
        changes to `record` do not reach the log.
        """
        if line is None:
            line = encode_record(record)
        event = record["event"]
        record_id: int | None = record["id"] if event in ID_EVENTS else None
        key = (str(record["room"]), record_id) if event == "message" and record_id is not None \
            else None
        with self._state_lock:
            if self._closed:
                raise ValueError(f"append to closed message log {self.path}")
            self._pending.append(line)
            self._pending_keys.append(key)
            self._appended += 1
            if record_id is not None:
                following = record_id + 1
                if following > self._logged_next_id:
                    self._logged_next_id = following
                if following > self._next_id:
                    self._next_id = following
            if key is not None:
                self._history.remember(key[0], key[1], line, self._appended, self._written)

    def history(self, room: str) -> list[Record]:
        """Copies of the latest message records of `room`, oldest first.

        They may include records not written yet: call `write_pending` before sending them.
        A room not in memory is read back through the index (a few reads, no scan) and
        kept in memory again; if that read fails, it is logged and what memory has is
        returned.
        """
        while True:
            with self._state_lock:
                room_state = self._history.rooms.get(room)
                if room_state is not None:
                    self._history.rooms.move_to_end(room)
                    if room_state.complete or len(room_state.lines) >= self._history_size:
                        lines = list(room_state.lines)
                        break
                before = room_state.ids[0] if room_state is not None else None
                known = list(room_state.lines) if room_state is not None else []
                waiting = self._unindexed_of(room, before)
            try:
                older = self._read_back(room, before, self._history_size - len(known), waiting)
            except (OSError, sqlite3.Error):
                logger.exception("cannot read the history of a room back from %s", self.path)
                return _decoded(known)
            with self._state_lock:
                if self._history.rooms.get(room) is room_state:  # else it changed: again
                    lines = self._history.fill(room, room_state, older, self._written)
                    break
        return _decoded(lines)

    def history_before(self, room: str, before_id: int | None = None,
                       limit: int = MAX_PAGE) -> list[Record]:
        """The `limit` messages of `room` with an id below `before_id` (None: the latest),
        oldest first: a page of scrollback, from the index and the log, whatever their size.

        Writes what is pending first. Raises ValueError for a limit outside 1..MAX_PAGE or
        a bad id, OSError if the log or its index cannot be read.
        """
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE:
            raise ValueError(f"a page holds 1 to {MAX_PAGE} messages, not {limit!r}")
        if before_id is not None and not is_id(before_id):
            raise ValueError(f"before_id must be a message id, not {before_id!r}")
        self.write_pending()
        with self._state_lock:
            waiting = self._unindexed_of(room, before_id)
        try:
            return [record for _, record in self._read_back(room, before_id, limit, waiting)]
        except sqlite3.Error as error:
            raise OSError(f"cannot read the index {self.index_path}: {error}") from error

    def rooms(self, *, after: str | None = None, limit: int | None = None) -> list[str]:
        """The rooms that have at least one message, sorted; only those sorting after
        `after`, and at most `limit` of them, if given (a page for a long list)."""
        with self._state_lock:
            recent = {name for name, room in self._history.rooms.items() if room.lines}
            recent.update(entry[0] for entry in self._unindexed)
        if after is not None:
            recent = {name for name in recent if name > after}
        index = self._index
        try:
            stored = index.rooms(after, limit) if index is not None else []
        except sqlite3.Error:
            logger.exception("cannot read the rooms from %s", self.index_path)
            stored = []
        names = sorted(recent.union(stored))
        return names if limit is None else names[:limit]

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

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until the background thread has indexed every line written so far and
        written every checkpoint asked for; False if `timeout` seconds passed first."""
        with self._background:
            self._idle_requested += 1
            wanted = self._idle_requested
            self._background.notify_all()
            return self._background.wait_for(
                lambda: self._idle_served >= wanted or self._stopping, timeout
            )

    def sync(self) -> None:
        """`write_pending`, then fsync the log."""
        self.write_pending()
        with self._write_lock:
            if self._fd >= 0:
                os.fsync(self._fd)

    def close(self) -> None:
        """Write and fsync everything, index it, write a checkpoint, close. Idempotent."""
        with self._state_lock:
            if self._closed:
                return
            self._closed = True  # from now on append refuses, so nothing is left behind
            target = self._appended
        with self._background:
            self._stopping = True
            self._background.notify_all()
        self._thread.join()
        with self._write_lock:
            try:
                self._flush(target, checkpoint=False)
                os.fsync(self._fd)
                self._index_waiting()
                self._write_checkpoint(Snapshot(self._offset, self._logged_next_id), durable=True)
            finally:
                self._close_files()

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
            keys, self._pending_keys = self._pending_keys, []
            next_id = self._logged_next_id  # the state once this batch is written
        self._write_batch(batch, keys)
        self._since_checkpoint += len(batch)
        if checkpoint and self._since_checkpoint >= self._checkpoint_every:
            self._since_checkpoint = 0
            self._ask_background(checkpoint=Snapshot(self._offset, next_id))
        waiting = len(self._unindexed)
        if waiting >= MAX_UNINDEXED:
            self._index_waiting_or_drop()
        elif waiting >= self._index_batch:
            self._ask_background()

    def _write_batch(self, batch: list[bytes], keys: list[tuple[str, int] | None]) -> None:
        data = b"".join(batch)
        try:
            _write_all(self._fd, data)
        except OSError:
            self._undo_partial_write()
            with self._state_lock:
                self._pending[:0] = batch
                self._pending_keys[:0] = keys
            raise
        entries: list[IndexEntry] = []
        offset = self._offset
        for line, key in zip(batch, keys, strict=True):
            if key is not None:
                entries.append((key[0], key[1], offset, len(line)))
            offset += len(line)
        self._offset = offset
        with self._state_lock:
            first_waiting = bool(entries) and not self._unindexed
            self._written += len(batch)
            self._written_offset = offset
            self._unindexed += entries
            if self._history.bytes > self._history.budget:
                self._history.evict(self._written)  # rooms that waited for their lines may go
        if first_waiting:
            self._ask_background()  # starts the index_delay clock

    def _undo_partial_write(self) -> None:
        """Cut back a half-written batch, so that the next write starts on a fresh line."""
        try:
            os.ftruncate(self._fd, self._offset)
        except OSError:
            logger.exception("cannot cut a partial write off %s; next open repairs it", self.path)

    def _index_waiting_or_drop(self) -> None:
        """Back pressure when the background thread cannot keep up: index them here; if
        the index cannot be written at all, forget the oldest entries, so memory stays
        bounded (the next open catches the index up from the log)."""
        try:
            self._index_waiting()
            return
        except (OSError, sqlite3.Error):
            logger.exception("cannot write the index %s", self.index_path)
        with self._state_lock:
            dropped = len(self._unindexed) - MAX_UNINDEXED // 2
            if dropped > 0:
                del self._unindexed[:dropped]
        if dropped > 0:
            logger.error("%s: %d written messages left out of the index until the next "
                         "start; scrollback and history of evicted rooms miss them", self.path,
                         dropped)

    def _ask_background(self, *, checkpoint: Snapshot | None = None) -> None:
        with self._background:
            if checkpoint is not None:
                self._checkpoint_request = checkpoint
            self._background.notify_all()

    # -- the background thread ---------------------------------------------------------

    def _run_background(self) -> None:
        while True:
            with self._background:
                self._wait_for_work()
                if self._stopping:
                    self._background.notify_all()
                    return
                request, self._checkpoint_request = self._checkpoint_request, None
                serving = self._idle_requested
            try:
                self._index_waiting()
            except Exception:  # the thread must live on: log it, retry a little later
                logger.exception("cannot write the index %s", self.index_path)
                time.sleep(self._index_delay)
            if request is not None:
                self._write_checkpoint(request, durable=False)
            with self._background:
                self._idle_served = max(self._idle_served, serving)
                self._background.notify_all()

    def _background_has_work(self) -> bool:
        return (self._stopping or self._checkpoint_request is not None
                or self._idle_requested > self._idle_served
                or len(self._unindexed) >= self._index_batch)

    def _wait_for_work(self) -> None:
        # Entries waiting are indexed index_delay after the first of them was written at
        # the latest; with nothing waiting, sleep until asked (the writer wakes us when the
        # first entry arrives).
        deadline = None
        while not self._background_has_work():
            if not self._unindexed:
                deadline = None
                self._background.wait()
                continue
            now = time.monotonic()
            if deadline is None:
                deadline = now + self._index_delay
            elif now >= deadline:
                return
            self._background.wait(deadline - now)

    def _index_waiting(self) -> None:
        """Move every written entry into the index, in one transaction."""
        index = self._index
        if index is None:
            return
        with self._flush_lock:
            with self._state_lock:
                entries = self._unindexed[:]
                covered = self._written_offset
            if not entries and covered == index.covered:
                return
            try:
                index.add(entries)
                index.commit(covered, *log_fingerprints(self._read_fd, covered))
            except BaseException:
                index.rollback()
                raise
            with self._state_lock:
                del self._unindexed[:len(entries)]  # entries only ever join at the end

    def _write_checkpoint(self, snapshot: Snapshot, *, durable: bool) -> None:
        """Write a checkpoint for log[:snapshot.offset]; a failure is logged, never raised."""
        try:
            if self._on_checkpoint_write is not None:
                self._on_checkpoint_write(snapshot.offset)
            write_checkpoint(self.checkpoint_path, self._read_fd, snapshot, durable=durable)
        except Exception:
            logger.exception("cannot write %s; the next start scans more", self.checkpoint_path)
            return
        logger.debug("checkpoint of %s at offset %d", self.path, snapshot.offset)

    def _close_files(self) -> None:
        if self._index is not None:
            try:
                self._index.close()
            except sqlite3.Error:
                logger.exception("cannot close %s", self.index_path)
        for fd in (self._fd, self._read_fd):
            if fd >= 0:
                os.close(fd)
        self._fd = self._read_fd = -1

    def _unindexed_of(self, room: str, before: int | None) -> list[tuple[int, int, int]]:
        return [(record_id, offset, length) for name, record_id, offset, length in self._unindexed
                if name == room and (before is None or record_id < before)]

    # -- reading back (no lock of ours held) -------------------------------------------

    def _read_back(self, room: str, before: int | None, limit: int,
                   waiting: list[tuple[int, int, int]]) -> list[tuple[bytes, Record]]:
        """The lines and records of the `limit` latest messages of `room` below `before`,
        oldest first, from the index and the entries still waiting for it.

        `waiting` must be taken before the index is asked: an entry moves from there into
        the index, never back, so it is seen at least once, and duplicates are merged.
        """
        if limit <= 0:
            return []
        index = self._index
        stored = index.latest(room, before, limit) if index is not None else []
        found = {offset: (record_id, offset, length) for record_id, offset, length in stored}
        found.update((offset, (record_id, offset, length)) for record_id, offset, length in waiting)
        chosen = sorted(found.values(), reverse=True)[:limit]
        result = []
        for record_id, offset, length in reversed(chosen):
            line = os.pread(self._read_fd, length, offset)
            record = decode_line(line) if line.endswith(b"\n") else None
            if not is_message_of(record, room, record_id):
                logger.warning("%s: the index points at byte %d for message %d, which the "
                               "log does not hold there; delete %s to rebuild it", self.path,
                               offset, record_id, self.index_path)
                continue
            result.append((line, cast(Record, record)))  # checked by _is_message_of
        return result

    # -- opening -----------------------------------------------------------------------

    def _recover(self) -> Recovery:
        started = time.perf_counter()
        checkpoint, problem = self._load_checkpoint()
        start = 0
        if checkpoint is not None:
            self._logged_next_id = self._next_id = max(1, checkpoint.next_id)
            start = checkpoint.offset
        index_start, index_problem, index_used = self._open_index()
        catch_up = _CatchUp(self._index, index_start)
        with open(self.path, "rb") as reader:
            skipped: list[int] = []
            if index_start < start:  # the index is behind the checkpoint: index those first
                early = scan_lines(reader, index_start, catch_up.on_record, stop=start)
                skipped += early.skipped
            scan = scan_lines(reader, start, lambda *line: self._replay(catch_up, *line))
            skipped += scan.skipped
            if scan.good_end < scan.end:
                self._cut_torn_tail(reader, scan)
        self._offset = self._written_offset = scan.good_end
        cut = scan.good_end < scan.end or index_problem is not None and index_used
        catch_up.finish(scan.good_end, log_fingerprints(self._read_fd, scan.good_end), cut)
        if skipped:
            logger.warning(
                "%s: skipped %d bad line(s) in the middle of the log, first at byte %d",
                self.path, len(skipped), min(skipped),
            )
        if self._offset != start:  # the next start need not rescan
            self._write_checkpoint(Snapshot(self._offset, self._logged_next_id), durable=False)
        recovery = Recovery(
            checkpoint is not None, problem, start, scan.lines, len(scan.skipped),
            scan.end - scan.good_end, time.perf_counter() - started,
            index_used, index_problem, index_start, catch_up.lines,
        )
        logger.info(
            "opened %s: %d bytes, checkpoint %s, %d line(s) parsed, %d indexed in %.3f s",
            self.path, self._offset, "used" if checkpoint else f"not used ({problem})",
            scan.lines, catch_up.lines, recovery.seconds,
        )
        return recovery

    def _replay(self, catch_up: _CatchUp, record: Record, offset: int, length: int) -> None:
        """A line past the checkpoint: its id counts, and the index may need it."""
        if record.get("event") in ID_EVENTS and is_id(record.get("id")):
            following = record["id"] + 1
            self._logged_next_id = max(self._logged_next_id, following)
            self._next_id = max(self._next_id, following)
        catch_up.on_record(record, offset, length)

    def _open_index(self) -> tuple[int, str | None, bool]:
        """Open the index; where indexing must start, what was wrong, whether it was kept."""
        size = os.fstat(self._read_fd).st_size
        self._index, problem = MessageIndex.open(self.index_path)
        if problem is not None:
            if size > 0 or problem != "no index":
                logger.warning("%s: rebuilding it from the whole log: %s", self.index_path, problem)
            return 0, problem, False
        index = self._index
        if index.covered <= size:
            if log_fingerprints(self._read_fd, index.covered) == (index.head_sha256, index.tail_sha256):
                return index.covered, None, True
            return self._rebuild_index("the log does not match it (replaced or rewritten)")
        return self._cut_index_back(size)

    def _cut_index_back(self, size: int) -> tuple[int, str | None, bool]:
        """The log is shorter than the index says: keep the rows of what is still there."""
        index = self._index
        assert index is not None
        covered = index.covered
        last = index.drop_from(size)
        if last is not None and last[2] + last[3] > size:  # its line was cut in half
            last = index.drop_from(last[2])
        head_ok = size < ANCHOR_SIZE or covered < ANCHOR_SIZE or (
            log_fingerprints(self._read_fd, ANCHOR_SIZE)[0] == index.head_sha256)
        if last is None or not head_ok or not self._entry_in_log(last):
            index.rollback()
            return self._rebuild_index(f"the log has {size} bytes, the index covers {covered}")
        problem = (f"the log has {size} bytes, the index covered {covered}: "
                   "dropped the rows past its end")
        logger.warning("%s: %s", self.index_path, problem)
        room, record_id, offset, length = last
        return offset + length, problem, True

    def _entry_in_log(self, entry: IndexEntry) -> bool:
        room, record_id, offset, length = entry
        line = os.pread(self._read_fd, length, offset)
        return line.endswith(b"\n") and is_message_of(decode_line(line), room, record_id)

    def _rebuild_index(self, problem: str) -> tuple[int, str, bool]:
        logger.warning("%s: rebuilding it from the whole log: %s", self.index_path, problem)
        assert self._index is not None
        self._index.clear()
        return 0, problem, False

    def _load_checkpoint(self) -> tuple[Checkpoint | None, str | None]:
        """The checkpoint if it is valid and matches the log, else None and the reason."""
        checkpoint, problem = load_checkpoint(self.checkpoint_path, self._read_fd)
        if checkpoint is None and problem != "no checkpoint":
            logger.warning("%s not used, scanning the whole log: %s", self.checkpoint_path,
                           problem)
        return checkpoint, problem

    def _cut_torn_tail(self, reader: BinaryIO, scan: Scan) -> None:
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


class _CatchUp:
    """Index rows for the lines read at open, inserted SCAN_CHUNK at a time."""

    def __init__(self, index: MessageIndex | None, start: int) -> None:
        self.index = index
        self.start = start  # lines before this offset are indexed already
        self.lines = 0
        self._rows: list[IndexEntry] = []

    def on_record(self, record: Record, offset: int, length: int) -> None:
        if offset < self.start:
            return
        self.lines += 1
        room, record_id = record.get("room"), record.get("id")
        if record.get("event") == "message" and isinstance(room, str) and is_id(record_id):
            self._rows.append((room, record_id, offset, length))
            if len(self._rows) >= SCAN_CHUNK:
                self._insert()

    def finish(self, good_end: int, fingerprints: tuple[str, str], cut: bool) -> None:
        """Insert the rest, drop rows past the log's end if it was `cut`, commit."""
        if self.index is None:
            return
        self._insert()
        if cut:
            self.index.drop_from(good_end)
        self.index.commit(good_end, *fingerprints)

    def _insert(self) -> None:
        if self.index is not None:
            self.index.add(self._rows)
        self._rows.clear()


def _decoded(lines: list[bytes]) -> list[Record]:
    records = [decode_line(line) for line in lines]
    return [record for record in records if record is not None]
