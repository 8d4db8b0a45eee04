"""What the server remembers about each user between logins, in SQLite.

- **Rooms**: the rooms a user is a member of. A reconnect, or a login from another device
  or after a server restart, puts them back in the same rooms (as an IRC bouncer would).
- **Last seen**: the newest message id that existed when the user last went offline, so
  that their client can tell, at the next login, which rooms had messages since.
- **Mailbox**: private messages for a user who is offline, kept as the exact frame the
  server would have sent (the envelope is ciphertext; the server cannot read it), until
  the recipient's client acknowledges them; then the sender gets a receipt. Receipts for
  a sender who is offline wait here too.

The file is `userstate.sqlite3` beside the message log (`--user-store`). SQLite in WAL mode
with `synchronous=NORMAL`: a change is one small transaction, and a crash loses at most
the last ones, never the file. A file that is not a Gapshape store raises UserStoreError.

Bounds (`MailboxLimits`): messages per recipient, messages and bytes in all, and an age
after which a message is given up (its sender gets an `expired` receipt); receipts per
sender. The store holds
no lock of its own across calls into the chat state; it has one connection, used under its
own lock, so any thread may call it.
"""
from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

FORMAT = "gapshape-userstate"
VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS users (
    user TEXT PRIMARY KEY,          -- casefolded name
    last_seen INTEGER               -- newest message id when the user last went offline
);
CREATE TABLE IF NOT EXISTS memberships (
    user TEXT NOT NULL, room TEXT NOT NULL, joined_at REAL NOT NULL,
    PRIMARY KEY (user, room)
);
CREATE TABLE IF NOT EXISTS mailbox (
    id INTEGER PRIMARY KEY,         -- the message id, unique across the chat
    recipient TEXT NOT NULL,        -- casefolded
    sender TEXT NOT NULL,           -- display name
    frame BLOB NOT NULL,            -- the encoded `private` frame, as it will be sent
    queued_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS mailbox_recipient ON mailbox (recipient, id);
CREATE TABLE IF NOT EXISTS receipts (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    sender TEXT NOT NULL,           -- casefolded: who is told
    frame BLOB NOT NULL             -- the encoded receipt frame
);
CREATE INDEX IF NOT EXISTS receipts_sender ON receipts (sender, seq);
"""


class UserStoreError(Exception):
    """The user store could not be opened, read or written; the message says why."""


class MailboxFull(Exception):
    """A mailbox limit would be exceeded; the message says which, for the sender."""


@dataclass(frozen=True)
class MailboxLimits:
    per_user: int = 200
    total: int = 100_000
    total_bytes: int = 512 * 1024 * 1024
    max_age: float = 7 * 24 * 3600.0
    # Receipts kept for one sender who is offline; past this the oldest go (each is one
    # delivered or expired message: a sender who never comes back cannot fill the disk).
    receipts_per_user: int = 1000


@dataclass(frozen=True)
class Queued:
    """One waiting private message: its id, sender and the frame to send."""

    id: int
    sender: str
    frame: bytes


class UserStore:
    """The SQLite file; every method is one transaction. Thread-safe."""

    def __init__(self, path: Path | str = ":memory:", limits: MailboxLimits | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.limits = limits or MailboxLimits()
        self.clock = clock
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            self._check_format()
            # Running totals, so that a limit check is not a scan of every mailbox.
            self._count, self._bytes = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(LENGTH(frame)), 0) FROM mailbox").fetchone()
        except sqlite3.DatabaseError as exc:
            raise UserStoreError(
                f"{path} is not a Gapshape user store ({exc}); move it away or name another "
                "file with --user-store") from None

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- rooms and last seen ------------------------------------------------------------

    def known(self, user: str) -> bool:
        """Whether `user` has logged in before (and so has rooms of its own choosing)."""
        return self._one("SELECT 1 FROM users WHERE user = ?", (user.casefold(),)) is not None

    def rooms(self, user: str) -> list[str]:
        """The user's rooms, in the order they joined them."""
        return [str(room) for (room,) in self._all(
            "SELECT room FROM memberships WHERE user = ? ORDER BY joined_at, room",
            (user.casefold(),))]

    def add_room(self, user: str, room: str) -> None:
        self._write(
            ("INSERT INTO users (user) VALUES (?) ON CONFLICT (user) DO NOTHING",
             (user.casefold(),)),
            ("INSERT OR IGNORE INTO memberships (user, room, joined_at) VALUES (?, ?, ?)",
             (user.casefold(), room, self.clock())))

    def remove_room(self, user: str, room: str) -> None:
        self._write(("DELETE FROM memberships WHERE user = ? AND room = ?",
                     (user.casefold(), room)))

    def last_seen(self, user: str) -> int | None:
        row = self._one("SELECT last_seen FROM users WHERE user = ?", (user.casefold(),))
        return None if row is None or row[0] is None else int(row[0])

    def set_last_seen(self, user: str, message_id: int) -> None:
        self._write(("INSERT INTO users (user, last_seen) VALUES (?, ?) "
                     "ON CONFLICT (user) DO UPDATE SET last_seen = excluded.last_seen",
                     (user.casefold(), message_id)))

    # -- mailbox --------------------------------------------------------------------------

    def enqueue(self, recipient: str, sender: str, message_id: int, frame: bytes) -> None:
        """Keep `frame` for `recipient`; MailboxFull if a limit is reached."""
        folded = recipient.casefold()
        with self._lock:
            waiting = self._db.execute("SELECT COUNT(*) FROM mailbox WHERE recipient = ?",
                                       (folded,)).fetchone()[0]
            if waiting >= self.limits.per_user:
                raise MailboxFull(f"{recipient} already has {waiting} private messages waiting, "
                                  "the most the server keeps; try again when they are back")
            if (self._count >= self.limits.total
                    or self._bytes + len(frame) > self.limits.total_bytes):
                raise MailboxFull("the server's store for waiting private messages is full; "
                                  "try again when the recipient is back")
            self._db.execute("INSERT INTO mailbox (id, recipient, sender, frame, queued_at) "
                             "VALUES (?, ?, ?, ?, ?)",
                             (message_id, folded, sender, frame, self.clock()))
            self._count += 1
            self._bytes += len(frame)

    def waiting(self, recipient: str) -> list[Queued]:
        """Every message waiting for `recipient`, oldest first (they stay until `remove`)."""
        return [Queued(int(id_), str(sender), bytes(frame))
                for id_, sender, frame in self._all(
                    "SELECT id, sender, frame FROM mailbox WHERE recipient = ? ORDER BY id",
                    (recipient.casefold(),))]

    def remove(self, recipient: str, ids: list[int]) -> list[Queued]:
        """Take the acknowledged messages out; returns those that were there."""
        folded = recipient.casefold()
        with self._lock:
            removed = []
            self._db.execute("BEGIN")
            for message_id in ids:
                row = self._db.execute(
                    "SELECT sender, frame FROM mailbox WHERE id = ? AND recipient = ?",
                    (message_id, folded)).fetchone()
                if row is not None:
                    self._db.execute("DELETE FROM mailbox WHERE id = ?", (message_id,))
                    removed.append(Queued(message_id, row[0], bytes(row[1])))
            self._db.execute("COMMIT")
            self._count -= len(removed)
            self._bytes -= sum(len(q.frame) for q in removed)
            return removed

    def expire(self) -> list[tuple[int, str, str]]:
        """Give up messages older than the age limit; returns (id, sender, recipient) of
        each, so that their senders can be told."""
        horizon = self.clock() - self.limits.max_age
        with self._lock:
            rows = self._db.execute(
                "SELECT id, sender, recipient, LENGTH(frame) FROM mailbox WHERE queued_at < ?",
                (horizon,)).fetchall()
            if rows:
                self._db.execute("DELETE FROM mailbox WHERE queued_at < ?", (horizon,))
                self._count -= len(rows)
                self._bytes -= sum(size for *_, size in rows)
            return [(id_, sender, recipient) for id_, sender, recipient, _ in rows]

    def mailbox_size(self) -> tuple[int, int]:
        """(messages, bytes) waiting in all mailboxes."""
        with self._lock:
            return self._count, self._bytes

    # -- receipts for senders who are offline -------------------------------------------

    def keep_receipt(self, sender: str, frame: bytes) -> None:
        folded = sender.casefold()
        self._write(("INSERT INTO receipts (sender, frame) VALUES (?, ?)", (folded, frame)),
                    ("DELETE FROM receipts WHERE sender = ? AND seq <= (SELECT seq FROM receipts "
                     "WHERE sender = ? ORDER BY seq DESC LIMIT 1 OFFSET ?)",
                     (folded, folded, max(1, self.limits.receipts_per_user))))

    def take_receipts(self, sender: str) -> list[bytes]:
        folded = sender.casefold()
        with self._lock:
            rows = self._db.execute("SELECT frame FROM receipts WHERE sender = ? ORDER BY seq",
                                    (folded,)).fetchall()
            if rows:  # every login asks: most have none, and need no write
                self._db.execute("DELETE FROM receipts WHERE sender = ?", (folded,))
            return [bytes(frame) for (frame,) in rows]

    # -- internals ------------------------------------------------------------------------

    def _check_format(self) -> None:
        rows = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
        if not rows:
            self._db.executemany("INSERT INTO meta (key, value) VALUES (?, ?)",
                                 [("format", FORMAT), ("version", str(VERSION))])
        elif rows.get("format") != FORMAT or rows.get("version") != str(VERSION):
            raise sqlite3.DatabaseError(
                f"format {rows.get('format')!r} version {rows.get('version')!r}")

    def _one(self, sql: str, args: tuple[object, ...]) -> tuple[Any, ...] | None:
        with self._lock:
            row: tuple[Any, ...] | None = self._db.execute(sql, args).fetchone()
            return row

    def _all(self, sql: str, args: tuple[object, ...]) -> list[tuple[Any, ...]]:
        with self._lock:
            rows: list[tuple[Any, ...]] = self._db.execute(sql, args).fetchall()
            return rows

    def _write(self, *statements: tuple[str, tuple[object, ...]]) -> None:
        """Run (sql, args) statements in one transaction."""
        with self._lock:
            try:
                self._db.execute("BEGIN")
                for sql, args in statements:
                    self._db.execute(sql, args)
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._db.execute("ROLLBACK")
                raise UserStoreError(f"cannot write the user store {self.path}: {exc}") from None
