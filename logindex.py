"""Where each room message is in the message log: an SQLite index beside the log.

`MessageIndex` knows, for every "message" record of `messageslog.json`, its room, its id
and the byte range of its line, so that a page of a room's history is one B-tree seek and a
few reads at known offsets, whatever the size of the log. The log stays the source of
truth: the index is derived data, rebuilt or caught up from the log when it is missing,
damaged, foreign or behind (`messagelog.MessageLog` does that at open). This module only
stores and looks up; it never reads the log.

File format (SQLite 3, WAL journal, `<log>.index`):

    meta(key TEXT PRIMARY KEY, value)     -- format, version, covered, head/tail
    blocks(block INTEGER PRIMARY KEY,     -- in the order the blocks were written
           room TEXT NOT NULL,            -- hex of the room name's UTF-8 (surrogatepass)
           min_id, max_id INTEGER,        -- the ids it holds lie in [min_id, max_id]
           first_offset, last_offset,     -- the byte offsets of its first and last line
           count INTEGER,                 -- entries in it, 1..BLOCK
           entries TEXT)                  -- JSON [id, offset, length, id, offset, ...]
    INDEX blocks_by_min(room, min_id)
    rooms(room TEXT PRIMARY KEY,          -- every room with a message, for /rooms
          max_id, disordered, batch_min)  -- largest id; 1 once an id came lower; last batch

A block holds the messages of one room in one batch of lines indexed together (up to
BLOCK = 64 of them, in log order), so indexing a batch costs two rows per room instead of a
row per message (SQLite's cost per row is about as large as appending the line to the
log). Blocks are never rewritten: a quiet room gets small blocks, a busy one full ones. A page of the latest `limit` messages
below an id walks that room's blocks from the newest (`blocks_by_min`, descending) until
it has `limit` of them: with ids in log order, as the server writes them (it allocates and
appends under one lock), the first few rows. If a room's ids ever came out of order
(`disordered`), every block of that room that may hold a larger id is read too, so the
answer is exact either way. Cutting the rows of a cut-off tail reads the whole table; it
happens only when the log turns out shorter than the index.

meta holds "format" = "gapshape-messagelog-index", "version" = 2, "covered" (every
message line that starts before this byte offset is indexed), and "head_sha256" /
"tail_sha256" of the log at `covered`, computed exactly as for the checkpoint. Rooms are
stored as the hex of their UTF-8 bytes: a log record may name a room with a lone
surrogate, which is no valid UTF-8 text, and hex sorts as the bytes do, which is the order
in which Python sorts the names.

Threads: the writing connection is used by one thread at a time (the caller serializes
add/commit/clear; an internal lock makes misuse safe, not fast); queries go through a
second connection under its own lock, so that in WAL mode a page read never waits for a
commit in progress.
"""
from __future__ import annotations

import json
import os
import sqlite3
import threading
from pathlib import Path
from typing import Iterable

__all__ = ["BLOCK", "INDEX_FORMAT", "INDEX_VERSION", "IndexEntry", "MessageIndex"]

INDEX_FORMAT = "gapshape-messagelog-index"
INDEX_VERSION = 2
BLOCK = 64  # entries per block row
CACHE_KIB = 2048  # SQLite page cache per connection; two connections per index
MAX_SQLITE_INT = 2**63 - 1  # a larger id cannot be stored, so such a record is not indexed

IndexEntry = tuple[str, int, int, int]  # room, id, offset, length
Located = tuple[int, int, int]  # id, offset, length

_SCHEMA = """
CREATE TABLE meta(key TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE blocks(block INTEGER PRIMARY KEY, room TEXT NOT NULL, min_id INTEGER NOT NULL,
                    max_id INTEGER NOT NULL, first_offset INTEGER NOT NULL,
                    last_offset INTEGER NOT NULL, count INTEGER NOT NULL,
                    entries TEXT NOT NULL);
CREATE INDEX blocks_by_min ON blocks(room, min_id);
CREATE TABLE rooms(room TEXT PRIMARY KEY, max_id INTEGER NOT NULL,
                   disordered INTEGER NOT NULL, batch_min INTEGER NOT NULL) WITHOUT ROWID;
"""
_TABLES = {"meta", "blocks", "rooms", "blocks_by_min"}
_EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
_PAGE_QUERY = ("SELECT entries FROM blocks WHERE room = ? AND min_id < ?"
               " ORDER BY min_id DESC")
_LATE_QUERY = ("SELECT entries FROM blocks WHERE room = ? AND min_id < ? AND max_id >= ?")
# One statement per table and batch, fed one JSON document: SQLite then does all the rows
# with Python's lock released once, instead of once per row (a background thread that
# takes the GIL back per row slows the thread that appends to the log more than its work).
_INSERT_BLOCKS = (
    "INSERT INTO blocks(room, min_id, max_id, first_offset, last_offset, count, entries)"
    " SELECT value->>0, value->>1, value->>2, value->>3, value->>4, value->>5, value->6"
    " FROM json_each(?)"
)
# A batch whose lowest id is below what the room had makes the room disordered.
_UPDATE_ROOMS = (
    "INSERT INTO rooms(room, max_id, disordered, batch_min)"
    " SELECT value->>0, value->>1, value->>2, value->>3 FROM json_each(?) WHERE true"
    " ON CONFLICT(room) DO UPDATE SET"
    " disordered = disordered OR excluded.disordered OR excluded.batch_min < max_id,"
    " max_id = MAX(max_id, excluded.max_id), batch_min = excluded.batch_min"
)


def room_key(room: str) -> str:
    """The room as stored: its UTF-8 bytes (lone surrogates kept) in hex, plain ASCII that
    sorts as the bytes do, so as Python sorts the names."""
    return room.encode("utf-8", "surrogatepass").hex()


def room_name(key: str) -> str:
    return bytes.fromhex(key).decode("utf-8", "surrogatepass")


def flat(entries: list[Located]) -> list[int]:
    return [value for entry in entries for value in entry]


def unpack(text: str) -> list[Located]:
    values = json.loads(text)
    return list(zip(values[0::3], values[1::3], values[2::3], strict=True))


class MessageIndex:
    """An open index file; see the module docstring for its format."""

    def __init__(self, path: Path, writer: sqlite3.Connection) -> None:
        self.path = path
        self._writer = writer
        self._write_lock = threading.Lock()
        self._read_lock = threading.Lock()
        meta = dict(writer.execute("SELECT key, value FROM meta"))
        self.covered: int = meta["covered"]
        self.head_sha256: str = meta["head_sha256"]
        self.tail_sha256: str = meta["tail_sha256"]
        self._reader = _connect(path)

    @classmethod
    def open(cls, path: Path) -> tuple[MessageIndex, str | None]:
        """The index at `path`, and None; or a new empty one and why the old one was not used.

        A file that is not an SQLite database, or one that is not this index (another
        format or version), is moved aside to `<path>.bad` (replacing an older one there),
        never deleted, and a new index is created in its place.
        """
        if not path.exists():
            return cls._create(path), "no index"
        try:
            problem = _check_file(path)
        except sqlite3.DatabaseError as error:
            problem = f"not an SQLite database ({error})"
        if problem is None:
            return cls(path, _connect(path)), None
        _move_aside(path)
        return cls._create(path), f"{problem}; moved aside to {path.name}.bad"

    @classmethod
    def _create(cls, path: Path) -> MessageIndex:
        for leftover in _sidecars(path):
            leftover.unlink(missing_ok=True)
        writer = _connect(path)
        try:
            with writer:
                writer.executescript(_SCHEMA)
                writer.executemany(
                    "INSERT INTO meta(key, value) VALUES (?, ?)",
                    [("format", INDEX_FORMAT), ("version", INDEX_VERSION), ("covered", 0),
                     ("head_sha256", _EMPTY_SHA256), ("tail_sha256", _EMPTY_SHA256)],
                )
            os.chmod(path, 0o600)
            return cls(path, writer)
        except BaseException:
            writer.close()
            raise

    # -- writing ----------------------------------------------------------------------

    def add(self, entries: Iterable[IndexEntry]) -> None:
        """Add entries (room, id, offset, length) in log order, inside the open transaction:
        a block row per room (per BLOCK entries) and an update of its `rooms` row."""
        # This runs in the log's background thread holding the GIL, which the appending
        # thread then waits for: keep the work per entry to a few C-level steps.
        by_room: dict[str, list[IndexEntry]] = {}
        for entry in entries:
            if entry[1] <= MAX_SQLITE_INT:
                by_room.setdefault(entry[0], []).append(entry)
        if not by_room:
            return
        blocks, rooms = [], []
        for room, located in by_room.items():
            key = room_key(room)
            ids = [entry[1] for entry in located]
            ordered = sorted(ids)
            rooms.append((key, ordered[-1], int(ids != ordered), ordered[0]))
            for start in range(0, len(located), BLOCK):
                chunk = located[start:start + BLOCK]
                chunk_ids = ids[start:start + BLOCK]
                blocks.append((key, min(chunk_ids), max(chunk_ids), chunk[0][2], chunk[-1][2],
                               len(chunk), [value for entry in chunk for value in entry[1:]]))
        with self._write_lock:
            self._writer.execute(_INSERT_BLOCKS, (json.dumps(blocks),))
            self._writer.execute(_UPDATE_ROOMS, (json.dumps(rooms),))

    def commit(self, covered: int, head_sha256: str, tail_sha256: str) -> None:
        """Record that the log is indexed up to `covered`, and commit everything added."""
        with self._write_lock:
            self._writer.executemany(
                "UPDATE meta SET value = ? WHERE key = ?",
                [(covered, "covered"), (head_sha256, "head_sha256"), (tail_sha256, "tail_sha256")],
            )
            self._writer.commit()
            self.covered, self.head_sha256, self.tail_sha256 = covered, head_sha256, tail_sha256

    def rollback(self) -> None:
        with self._write_lock:
            self._writer.rollback()

    def clear(self) -> None:
        """Forget every entry (the log they described is gone); committed at once."""
        with self._write_lock:
            self._writer.execute("DELETE FROM blocks")
            self._writer.execute("DELETE FROM rooms")
        self.commit(0, _EMPTY_SHA256, _EMPTY_SHA256)

    def drop_from(self, offset: int) -> IndexEntry | None:
        """Delete the entries of lines at or after `offset` (not committed); the entry with
        the largest offset left, or None."""
        with self._write_lock:
            db = self._writer
            cut = db.execute(
                "SELECT block, room, entries FROM blocks WHERE last_offset >= ?", (offset,)
            ).fetchall()
            for block, _room, data in cut:
                kept = [entry for entry in unpack(data) if entry[1] < offset]
                if kept:
                    db.execute(
                        "UPDATE blocks SET min_id = ?, max_id = ?, last_offset = ?, count = ?,"
                        " entries = ? WHERE block = ?",
                        (*_id_range(kept), kept[-1][1], len(kept), json.dumps(flat(kept)),
                         block),
                    )
                else:
                    db.execute("DELETE FROM blocks WHERE block = ?", (block,))
            for key in {row[1] for row in cut}:
                self._reopen_room(key)
            row = db.execute(
                "SELECT room, entries FROM blocks ORDER BY last_offset DESC LIMIT 1"
            ).fetchone()
        if row is None:
            return None
        record_id, last_offset, length = max(unpack(row[1]), key=lambda entry: entry[1])
        return room_name(row[0]), record_id, last_offset, length

    def _reopen_room(self, key: str) -> None:
        """After a cut: the room's largest id is that of the blocks left, if any."""
        db = self._writer
        (largest,) = db.execute("SELECT MAX(max_id) FROM blocks WHERE room = ?", (key,)).fetchone()
        if largest is None:
            db.execute("DELETE FROM rooms WHERE room = ?", (key,))
        else:
            db.execute("UPDATE rooms SET max_id = ? WHERE room = ?", (largest, key))

    # -- reading ----------------------------------------------------------------------

    def latest(self, room: str, before_id: int | None, limit: int) -> list[Located]:
        """(id, offset, length) of the `limit` messages of `room` with id < before_id,
        newest first: a walk down the room's newest blocks, whatever the size of the log."""
        before = MAX_SQLITE_INT if before_id is None else min(before_id, MAX_SQLITE_INT)
        key = room_key(room)
        found: dict[int, Located] = {}
        with self._read_lock:
            exhausted = True
            for (data,) in self._reader.execute(_PAGE_QUERY, (key, before)):
                found.update((entry[1], entry) for entry in unpack(data) if entry[0] < before)
                if len(found) >= limit:
                    exhausted = False
                    break
            if not exhausted and self._disordered(key):
                # An older block may hold an id above the lowest one chosen so far.
                lowest = sorted(found.values(), reverse=True)[limit - 1][0]
                for (data,) in self._reader.execute(_LATE_QUERY, (key, before, lowest)):
                    found.update((entry[1], entry) for entry in unpack(data) if entry[0] < before)
        return sorted(found.values(), reverse=True)[:limit]

    def _disordered(self, key: str) -> bool:
        row = self._reader.execute("SELECT disordered FROM rooms WHERE room = ?", (key,)).fetchone()
        return bool(row and row[0])

    def rooms(self, after: str | None, limit: int | None) -> list[str]:
        """Rooms with at least one indexed message, sorted, those after `after` only."""
        where, arguments = ("WHERE room > ?", (room_key(after),)) if after is not None else ("", ())
        with self._read_lock:
            rows = self._reader.execute(
                f"SELECT room FROM rooms {where} ORDER BY room LIMIT ?",
                (*arguments, -1 if limit is None else limit),
            ).fetchall()
        return [room_name(row[0]) for row in rows]

    def query_plan(self) -> str:
        """SQLite's plan for a page (tests check that it is a seek in blocks_by_min)."""
        with self._read_lock:
            rows = self._reader.execute(
                f"EXPLAIN QUERY PLAN {_PAGE_QUERY}", ("00", MAX_SQLITE_INT)
            ).fetchall()
        return " | ".join(str(row[-1]) for row in rows)

    def close(self) -> None:
        with self._read_lock:
            self._reader.close()
        with self._write_lock:
            self._writer.close()


def _id_range(entries: list[Located]) -> tuple[int, int]:
    ids = [entry[0] for entry in entries]
    return min(ids), max(ids)


def _connect(path: Path) -> sqlite3.Connection:
    connection = sqlite3.connect(path, check_same_thread=False)
    connection.execute("PRAGMA journal_mode=WAL")
    # The index is rebuilt from the log after a crash, so it never needs an fsync per
    # commit: NORMAL syncs only when the WAL is folded back into the database.
    connection.execute("PRAGMA synchronous=NORMAL")
    connection.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
    return connection


def _check_file(path: Path) -> str | None:
    """Why the file is not a usable index, or None (raises DatabaseError if damaged).

    Opened read-only and without changing its journal mode, so that a file that turns out
    to be someone else's database is moved aside exactly as it was.
    """
    connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        return _check_format(connection)
    finally:
        connection.close()


def _check_format(connection: sqlite3.Connection) -> str | None:
    tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master")}
    if not _TABLES <= tables:
        return "not a message log index (other tables)"
    meta = dict(connection.execute("SELECT key, value FROM meta"))
    if meta.get("format") != INDEX_FORMAT:
        return "not a message log index (other format)"
    if meta.get("version") != INDEX_VERSION:
        return f"unknown index version {meta.get('version')!r}"
    covered = meta.get("covered")
    if not isinstance(covered, int) or covered < 0:
        return "its covered offset is not a byte count"
    if not all(isinstance(meta.get(key), str) for key in ("head_sha256", "tail_sha256")):
        return "missing log fingerprints"
    connection.execute("SELECT block, room, entries FROM blocks LIMIT 1").fetchall()
    return None


def _sidecars(path: Path) -> list[Path]:
    return [path.with_name(path.name + suffix) for suffix in ("-wal", "-shm", "-journal")]


def _move_aside(path: Path) -> None:
    """Keep a bad index file, with its journal, as <path>.bad for whoever wants to look."""
    aside = path.with_name(path.name + ".bad")
    os.replace(path, aside)
    for leftover, kept in zip(_sidecars(path), _sidecars(aside), strict=True):
        if leftover.exists():
            os.replace(leftover, kept)
