"""Where each room message is in the message log: an SQLite index beside the log.

`MessageIndex` knows, for every "message" record of `messageslog.json`, its room, its id
and the byte range of its line, so that a page of a room's history is one B-tree seek and a
few reads at known offsets, whatever the size of the log. The log stays the source of
truth: the index is derived data, rebuilt or caught up from the log when it is missing,
damaged, foreign or behind (`messagelog.MessageLog` does that at open). This module only
stores and looks up; it never reads the log.

File format (SQLite 3, WAL journal, `<log>.index`):

    meta(key TEXT PRIMARY KEY, value)          -- format, version, covered, head/tail
    messages(offset INTEGER PRIMARY KEY,       -- byte offset of the line in the log
             room BLOB NOT NULL,               -- room name, UTF-8 (surrogatepass)
             id INTEGER NOT NULL,              -- the record's id
             length INTEGER NOT NULL)          -- bytes of the line, newline included
    INDEX messages_by_room ON messages(room, id, length)   -- a covering index for pages
    rooms(room BLOB PRIMARY KEY) WITHOUT ROWID -- every room with a message, for /rooms

meta holds "format" = "gapshape-messagelog-index", "version" = 1, "covered" (every
message line that starts before this byte offset is in `messages`), and "head_sha256" /
"tail_sha256" of the log at `covered`, computed exactly as for the checkpoint. The offset
is the row id, so rows past a point of the log (a cut-off tail) go with one range delete.
Rooms are stored as bytes: a log record may name a room with a lone surrogate, which is
no valid UTF-8 text, and bytes sort in the same order as Python sorts the names.

Threads: the writing connection is used by one thread at a time (the caller serializes
add/commit/clear; an internal lock makes misuse safe, not fast); queries go through a
second connection under its own lock, so that in WAL mode a page read never waits for a
commit in progress.
"""
from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path
from typing import Iterable

__all__ = ["INDEX_FORMAT", "INDEX_VERSION", "IndexEntry", "MessageIndex"]

INDEX_FORMAT = "gapshape-messagelog-index"
INDEX_VERSION = 1
CACHE_KIB = 2048  # SQLite page cache per connection; two connections per index
MAX_SQLITE_INT = 2**63 - 1  # a larger id cannot be stored, so such a record is not indexed

IndexEntry = tuple[str, int, int, int]  # room, id, offset, length

_SCHEMA = """
CREATE TABLE meta(key TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE messages(offset INTEGER PRIMARY KEY, room BLOB NOT NULL, id INTEGER NOT NULL,
                      length INTEGER NOT NULL);
CREATE INDEX messages_by_room ON messages(room, id, length);
CREATE TABLE rooms(room BLOB PRIMARY KEY) WITHOUT ROWID;
"""
_EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def room_key(room: str) -> bytes:
    return room.encode("utf-8", "surrogatepass")


def room_name(key: bytes) -> str:
    return key.decode("utf-8", "surrogatepass")


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
        """Insert entries (room, id, offset, length), inside the open transaction."""
        rows = [(offset, room_key(room), record_id, length)
                for room, record_id, offset, length in entries if record_id <= MAX_SQLITE_INT]
        if not rows:
            return
        with self._write_lock:
            self._writer.executemany(
                "INSERT OR REPLACE INTO messages(offset, room, id, length) VALUES (?, ?, ?, ?)",
                rows,
            )
            self._writer.executemany(
                "INSERT OR IGNORE INTO rooms(room) VALUES (?)", [(r,) for r in {r[1] for r in rows}]
            )

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
            self._writer.execute("DELETE FROM messages")
            self._writer.execute("DELETE FROM rooms")
        self.commit(0, _EMPTY_SHA256, _EMPTY_SHA256)

    def drop_from(self, offset: int) -> int:
        """Delete the entries of lines at or after `offset` (not committed); how many."""
        with self._write_lock:
            return self._writer.execute("DELETE FROM messages WHERE offset >= ?", (offset,)).rowcount

    def last_entry(self) -> IndexEntry | None:
        """The entry with the largest offset, or None if there is none."""
        with self._write_lock:
            row = self._writer.execute(
                "SELECT room, id, offset, length FROM messages ORDER BY offset DESC LIMIT 1"
            ).fetchone()
        return None if row is None else (room_name(row[0]), row[1], row[2], row[3])

    # -- reading ----------------------------------------------------------------------

    def latest(self, room: str, before_id: int | None, limit: int) -> list[tuple[int, int, int]]:
        """(id, offset, length) of the `limit` messages of `room` with id < before_id,
        newest first: one seek in the covering index, whatever the size of the log."""
        before = MAX_SQLITE_INT if before_id is None else min(before_id, MAX_SQLITE_INT)
        with self._read_lock:
            return self._reader.execute(
                "SELECT id, offset, length FROM messages WHERE room = ? AND id < ?"
                " ORDER BY id DESC LIMIT ?",
                (room_key(room), before, limit),
            ).fetchall()

    def rooms(self, after: str | None, limit: int | None) -> list[str]:
        """Rooms with at least one indexed message, sorted, those after `after` only."""
        where, arguments = ("WHERE room > ?", (room_key(after),)) if after is not None else ("", ())
        with self._read_lock:
            rows = self._reader.execute(
                f"SELECT room FROM rooms {where} ORDER BY room LIMIT ?",
                (*arguments, -1 if limit is None else limit),
            ).fetchall()
        return [room_name(row[0]) for row in rows]

    def query_plan(self, room: str) -> str:
        """SQLite's plan for `latest` (tests check that it seeks the covering index)."""
        with self._read_lock:
            rows = self._reader.execute(
                "EXPLAIN QUERY PLAN SELECT id, offset, length FROM messages"
                " WHERE room = ? AND id < ? ORDER BY id DESC LIMIT ?",
                (room_key(room), MAX_SQLITE_INT, 10),
            ).fetchall()
        return " | ".join(str(row[-1]) for row in rows)

    def close(self) -> None:
        with self._read_lock:
            self._reader.close()
        with self._write_lock:
            self._writer.close()


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
    if not {"meta", "messages", "rooms", "messages_by_room"} <= tables:
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
    connection.execute("SELECT offset, room, id, length FROM messages LIMIT 1").fetchall()
    return None


def _sidecars(path: Path) -> list[Path]:
    return [path.with_name(path.name + suffix) for suffix in ("-wal", "-shm", "-journal")]


def _move_aside(path: Path) -> None:
    """Keep a bad index file, with its journal, as <path>.bad for whoever wants to look."""
    aside = path.with_name(path.name + ".bad")
    os.replace(path, aside)
    for leftover, kept in zip(_sidecars(path), _sidecars(aside)):
        if leftover.exists():
            os.replace(leftover, kept)
