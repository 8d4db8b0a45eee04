"""The client's private-message history, on disk, encrypted at rest: `PrivateHistory`.

One SQLite file per user, ``<data_dir>/<user>/private_history.sqlite3`` (mode 0600, WAL),
opened with the user's identity private key. No sockets here, and no Tk: the client library
records what it received and sent (client.py), the clients read pages of it.

Keys. At creation a random 32-byte master key is made and wrapped for the owner's own
identity public key (``crypto.wrap_local_key``: RSA-OAEP-SHA256 under a label of its own),
so whatever protects the identity key (its passphrase) protects the history too. Two keys
are derived from it with HMAC-SHA256: one seals the texts and contact names (AES-256-GCM,
``crypto.seal_local``), one makes the *index tags* that stand in for names and message ids.

What is in the file, and what is readable without the key:

* ``meta``: the format name and version, a random store id, the owner's key fingerprint
  (so a history opened with another identity is refused with a clear error before any RSA
  work), the wrapped key, and a key check: an empty GCM record whose associated data is
  the format, version, store id and fingerprint, so those cannot be altered unnoticed.
* ``contacts``: per contact its index tag (HMAC of the case-folded name), its name sealed
  with GCM (bound to its tag), and clear counters: rows, bytes, the last time and row.
* ``messages``: per message a row id, the contact's index tag, the direction (``in`` or
  ``out``), the message's index tag (HMAC of contact, direction and the envelope's message
  id: the dedupe key), the sender's ``sent_at`` and our ``received_at`` (clear, for
  ordering), and the text sealed with GCM. Its associated data is the store id, the row
  id, both index tags, the direction and both times: a ciphertext copied onto another row,
  to another contact or direction, or with altered times, does not open.

So the file alone shows how many contacts there are, how many messages each, when, in
which direction and how long each is (GCM does not pad) -- about what the server saw --
but no names, no message ids and no text. It does not show *deletion*: someone who can
write the file can drop rows (or the whole file) unnoticed; altering, forging, moving or
swapping rows is detected.

Retention (documented, not silent): a contact keeps at most ``max_rows_per_contact``
(100,000) rows and ``max_bytes_per_contact`` (256 MiB of sealed text); the whole store at
most ``max_rows`` (1,000,000) and ``max_bytes`` (1 GiB). Past a cap the *oldest* rows go:
of that contact for a contact's cap, of the contact holding the most for the store's cap
(so one contact flooding us cannot push everyone else's history out), and never the message
being recorded.

Errors are ``PrivateHistoryError`` (an ``identity.IdentityError``, which both clients show
as a sentence, not a traceback): ``ForeignHistoryError`` for another identity's file,
``DamagedHistoryError`` for a file that is not a history, is damaged, or holds a record
that does not open. An existing file is never replaced or rewritten to "repair" it.
"""
from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import os
import sqlite3
import stat
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, NamedTuple

from Crypto.PublicKey.RSA import RsaKey
from Crypto.Random import get_random_bytes

import crypto
from auth import key_fingerprint, length_prefixed, public_key_der
from identity import IdentityError, user_dir

logger = logging.getLogger(__name__)

HISTORY_FILE = "private_history.sqlite3"
FORMAT_NAME = b"gapshape-private-history"
FORMAT_VERSION = 1

DEFAULT_MAX_ROWS_PER_CONTACT = 100_000
DEFAULT_MAX_BYTES_PER_CONTACT = 256 * 1024 * 1024
DEFAULT_MAX_ROWS = 1_000_000
DEFAULT_MAX_BYTES = 1024 * 1024 * 1024
#: The largest page `conversation` returns: at most this many texts are in memory at once.
MAX_PAGE = 1000
#: The most contacts `contacts` returns (the most recently active ones).
MAX_CONTACTS_LISTED = 10_000
#: Any cap must leave room for the largest message there is.
_LARGEST_ROW = crypto.MAX_PLAINTEXT_BYTES + crypto.LOCAL_SEAL_OVERHEAD
BUSY_TIMEOUT = 5.0  # seconds: another client of the same user may be writing

DIRECTIONS = ("in", "out")
_ENCRYPT_LABEL = b"gapshape-history-encrypt-v1"
_INDEX_LABEL = b"gapshape-history-index-v1"
_CHECK_LABEL = b"gapshape-history-key-check-v1"
_ROW_LABEL = b"gapshape-history-row-v1"
_CONTACT_LABEL = b"gapshape-history-contact-v1"

_SCHEMA = """
CREATE TABLE meta (name TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE contacts (
    peer_tag BLOB PRIMARY KEY,
    name BLOB NOT NULL,
    rows INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    last_time TEXT NOT NULL,
    last_row INTEGER NOT NULL
);
CREATE TABLE messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    peer_tag BLOB NOT NULL,
    direction TEXT NOT NULL CHECK (direction IN ('in', 'out')),
    message_tag BLOB NOT NULL UNIQUE,
    sent_at TEXT NOT NULL,
    received_at TEXT NOT NULL,
    body BLOB NOT NULL
);
CREATE INDEX messages_by_peer ON messages (peer_tag, id);
"""
# SQLite's primary result codes that mean "this file is damaged" and "it is busy".
_SQLITE_CORRUPT, _SQLITE_NOTADB = 11, 26
_SQLITE_BUSY, _SQLITE_LOCKED = 5, 6
_META_NAMES = frozenset({"format", "version", "store_id", "owner", "wrapped_key", "key_check"})


class PrivateHistoryError(IdentityError):
    """Your private-message history could not be used; the message says why and what to do."""


class ForeignHistoryError(PrivateHistoryError):
    """The history file belongs to another identity key than the one you logged in with."""


class DamagedHistoryError(PrivateHistoryError):
    """The history file is not a Gapshape history, is damaged, or was tampered with."""


@dataclass(frozen=True)
class HistoryEntry:
    """One private message: `id` is its row (the cursor for `conversation(before=...)`)."""

    id: int
    peer: str
    direction: str  # "in" (received) or "out" (sent)
    text: str
    sent_at: str  # the sender's signed time
    received_at: str  # when this client received it, or the server confirmed it sent


class Contact(NamedTuple):
    peer: str
    last_time: str  # received_at of the newest message
    messages: int  # how many are kept (after retention)


@dataclass(frozen=True)
class Limits:
    """The retention caps (see the module docstring)."""

    max_rows_per_contact: int = DEFAULT_MAX_ROWS_PER_CONTACT
    max_bytes_per_contact: int = DEFAULT_MAX_BYTES_PER_CONTACT
    max_rows: int = DEFAULT_MAX_ROWS
    max_bytes: int = DEFAULT_MAX_BYTES

    def __post_init__(self) -> None:
        if min(self.max_rows_per_contact, self.max_rows) < 1:
            raise ValueError("history caps must allow at least one message")
        if min(self.max_bytes_per_contact, self.max_bytes) < _LARGEST_ROW:
            raise ValueError(f"history byte caps must be at least {_LARGEST_ROW}")


class PrivateHistory:
    """The encrypted history of one user's private conversations. Thread-safe.

    Opening an existing file checks it is a history of this identity (``meta``), that the
    key unwraps and passes its check, and runs SQLite's ``integrity_check``; each record is
    checked (GCM) when it is read. Raises PrivateHistoryError, never sqlite3's errors.
    """

    def __init__(self, path: Path, private_key: RsaKey, limits: Limits | None = None) -> None:
        self.path = Path(path)
        self.limits = limits or Limits()
        self._lock = threading.Lock()
        self._owner = key_fingerprint(public_key_der(private_key))
        if not self.path.exists():
            _create(self.path, private_key, self._owner)
        self._db: sqlite3.Connection | None = self._connect()
        try:
            self._store_id, master = self._open_meta(private_key)
            self._check_integrity()
            self._set_up_connection()
        except BaseException:
            self.close()
            raise
        self._seal_key = _derive(master, _ENCRYPT_LABEL)
        self._index_key = _derive(master, _INDEX_LABEL)

    # -- opening ------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        _warn_if_readable_by_others(self.path)
        try:
            # Autocommit mode: transactions are opened explicitly (BEGIN IMMEDIATE).
            return sqlite3.connect(self.path, timeout=BUSY_TIMEOUT, isolation_level=None,
                                   check_same_thread=False)
        except sqlite3.Error as exc:
            raise PrivateHistoryError(f"cannot open your private history {self.path}: {exc}") from None

    def _open_meta(self, private_key: RsaKey) -> tuple[bytes, bytes]:
        """Check the meta table (reads only: a foreign file is left as it is); return the
        store id and the unwrapped master key."""
        meta = self._read_meta()
        version = meta["version"]
        if version != str(FORMAT_VERSION).encode():
            raise DamagedHistoryError(
                f"{self.path} is private history of format version "
                f"{version.decode('ascii', 'replace')!r}, which this Gapshape cannot read: "
                "use the Gapshape version that wrote it")
        owner = meta["owner"].decode("ascii", "replace")
        if owner != self._owner:
            raise ForeignHistoryError(
                f"this private history belongs to another identity: {self.path} was made "
                f"for the key {owner[:16]}..., not yours ({self._owner[:16]}...). Log in "
                "with that key, or move the file aside to start a new history")
        try:
            master = crypto.unwrap_local_key(meta["wrapped_key"], private_key)
            crypto.open_local(_derive(master, _CHECK_LABEL), meta["key_check"],
                              _check_data(meta["store_id"], self._owner))
        except crypto.CryptoError:  # DecryptionError is one
            raise self._damaged("its key does not open with your identity key") from None
        return meta["store_id"], master

    def _read_meta(self) -> dict[str, bytes]:
        try:
            with self._lock:
                rows = self._live().execute("SELECT name, value FROM meta").fetchall()
        except (sqlite3.Error, UnicodeDecodeError) as exc:
            raise self._damaged(f"it is not a Gapshape private history, or is damaged "
                                f"(SQLite says: {exc})") from None
        meta = {str(name): value for name, value in rows}
        if (set(meta) != _META_NAMES or not all(isinstance(v, bytes) for v in meta.values())
                or meta["format"] != FORMAT_NAME):
            raise self._damaged("it is not a Gapshape private history")
        return meta

    def _check_integrity(self) -> None:
        """SQLite's own check of every page and that each index matches its table (an index
        that lost an entry would hide a message): about 0.2 s per 100,000 messages, once per
        start. The texts are checked (GCM) when they are read."""
        result = [str(row[0]) for row in self._query("PRAGMA integrity_check(3)")]
        if result != ["ok"]:
            raise self._damaged(f"SQLite finds it damaged: {'; '.join(result[:3])}")

    def _set_up_connection(self) -> None:
        mode = self._query("PRAGMA journal_mode = WAL")
        if not mode or str(mode[0][0]).lower() != "wal":
            raise PrivateHistoryError(f"{self.path}: SQLite cannot use write-ahead logging here")
        # FULL: a commit is on disk before record() returns, like the replay guard's file.
        self._query("PRAGMA synchronous = FULL")

    def _damaged(self, reason: str) -> DamagedHistoryError:
        return DamagedHistoryError(
            f"your private history {self.path} cannot be read: {reason}. Gapshape leaves the "
            "file as it is: restore it from a backup, or move it aside to start a new one")

    # -- recording ----------------------------------------------------------------------

    def record(self, peer: str, direction: str, text: str, message_id: str, sent_at: str,
               received_at: str | None = None) -> bool:
        """Store one message; False if this (peer, direction, message_id) is already here.

        Past a retention cap the oldest messages are removed (module docstring)."""
        folded = _checked_peer(peer)
        received = received_at or crypto.utc_timestamp()
        _check_record(direction, text, message_id, sent_at, received)
        peer_tag = self._tag(b"peer", folded.encode("utf-8"))
        message_tag = self._tag(b"message", folded.encode("utf-8"), direction.encode("ascii"),
                                message_id.encode("utf-8"))
        with self._transaction() as db:
            cursor = db.execute(
                "INSERT OR IGNORE INTO messages (peer_tag, direction, message_tag, sent_at, "
                "received_at, body) VALUES (?, ?, ?, ?, ?, x'')",
                (peer_tag, direction, message_tag, sent_at, received))
            if cursor.rowcount == 0:
                return False
            row = int(cursor.lastrowid or 0)
            body = crypto.seal_local(self._seal_key, text.encode("utf-8", "replace"),
                                     self._row_data(row, peer_tag, direction, message_tag,
                                                    sent_at, received))
            db.execute("UPDATE messages SET body = ? WHERE id = ?", (body, row))
            self._count_in(db, peer_tag, peer, len(body), received, row)
            self._prune(db, peer_tag, row)
        return True

    def _count_in(self, db: sqlite3.Connection, peer_tag: bytes, peer: str, size: int,
                  received: str, row: int) -> None:
        updated = db.execute(
            "UPDATE contacts SET rows = rows + 1, bytes = bytes + ?, last_time = ?, "
            "last_row = ? WHERE peer_tag = ?", (size, received, row, peer_tag))
        if updated.rowcount == 0:
            name = crypto.seal_local(self._seal_key, peer.encode("utf-8"),
                                     self._contact_data(peer_tag))
            db.execute("INSERT INTO contacts VALUES (?, ?, 1, ?, ?, ?)",
                       (peer_tag, name, size, received, row))

    def _prune(self, db: sqlite3.Connection, peer_tag: bytes, new_row: int) -> None:
        """Apply the caps: the contact's own, then the store's, taken from the contact
        holding the most (of equals, the one quiet longest). The message just recorded is
        never the one removed: the caps hold at least one message of any size."""
        limits = self.limits
        rows, size = db.execute("SELECT rows, bytes FROM contacts WHERE peer_tag = ?",
                                (peer_tag,)).fetchone()
        self._drop_oldest(db, peer_tag, rows - limits.max_rows_per_contact,
                          size - limits.max_bytes_per_contact, new_row)
        while True:
            total_rows, total_bytes = db.execute(
                "SELECT COALESCE(SUM(rows), 0), COALESCE(SUM(bytes), 0) FROM contacts").fetchone()
            excess_rows, excess_bytes = total_rows - limits.max_rows, total_bytes - limits.max_bytes
            if excess_rows <= 0 and excess_bytes <= 0:
                return
            order = "bytes" if excess_bytes > 0 else "rows"
            biggest = db.execute(
                f"SELECT peer_tag FROM contacts WHERE last_row != ? OR rows > 1 "
                f"ORDER BY {order} DESC, last_row LIMIT 1", (new_row,)).fetchone()[0]
            self._drop_oldest(db, biggest, excess_rows, excess_bytes, new_row)

    def _drop_oldest(self, db: sqlite3.Connection, peer_tag: bytes, excess_rows: int,
                     excess_bytes: int, keep: int) -> None:
        """Delete a contact's oldest rows but `keep` until both excesses are covered (or
        no other row is left)."""
        if excess_rows <= 0 and excess_bytes <= 0:
            return
        count = freed = 0
        oldest = db.execute("SELECT length(body) FROM messages WHERE peer_tag = ? AND id != ? "
                            "ORDER BY id", (peer_tag, keep))
        for (size,) in oldest:
            if count >= excess_rows and freed >= excess_bytes:
                break
            count, freed = count + 1, freed + int(size)
        oldest.close()
        db.execute("DELETE FROM messages WHERE id IN (SELECT id FROM messages WHERE "
                   "peer_tag = ? AND id != ? ORDER BY id LIMIT ?)", (peer_tag, keep, count))
        db.execute("UPDATE contacts SET rows = rows - ?, bytes = bytes - ? WHERE peer_tag = ?",
                   (count, freed, peer_tag))
        db.execute("DELETE FROM contacts WHERE peer_tag = ? AND rows <= 0", (peer_tag,))
        logger.info("private history: removed the %d oldest messages of a contact (retention "
                    "cap)", count)

    # -- reading ------------------------------------------------------------------------

    def conversation(self, peer: str, before: int | None = None,
                     limit: int = 100) -> list[HistoryEntry]:
        """The newest `limit` messages with `peer` older than row `before` (all if None),
        oldest first. Page back with ``before=page[0].id``; an empty page is the start."""
        folded = _checked_peer(peer)
        if type(limit) is not int or not 1 <= limit <= MAX_PAGE:
            raise ValueError(f"a page holds 1 to {MAX_PAGE} messages")
        if before is not None and type(before) is not int:
            raise ValueError("before must be a message's id")
        peer_tag = self._tag(b"peer", folded.encode("utf-8"))
        cursor_row = before if before is not None else 2**63 - 1
        rows = self._query(
            "SELECT id, direction, message_tag, sent_at, received_at, body FROM messages "
            "WHERE peer_tag = ? AND id < ? ORDER BY id DESC LIMIT ?",
            (peer_tag, cursor_row, limit))
        return [self._entry(peer, peer_tag, *row) for row in reversed(rows)]

    def _entry(self, peer: str, peer_tag: bytes, row: int, direction: str, message_tag: bytes,
               sent_at: str, received_at: str, body: bytes) -> HistoryEntry:
        try:
            data = self._row_data(row, peer_tag, direction, message_tag, sent_at, received_at)
            text = crypto.open_local(self._seal_key, body, data).decode("utf-8")
        except (crypto.CryptoError, UnicodeDecodeError, TypeError, AttributeError,
                ValueError, OverflowError):
            raise self._damaged(f"message {row} was altered, moved or damaged") from None
        return HistoryEntry(row, peer, direction, text, sent_at, received_at)

    def contacts(self, limit: int = MAX_CONTACTS_LISTED) -> list[Contact]:
        """The contacts with history, most recently active first: (peer, last_time, messages)."""
        rows = self._query("SELECT peer_tag, name, last_time, rows FROM contacts "
                           "ORDER BY last_row DESC LIMIT ?", (limit,))
        contacts = []
        for peer_tag, sealed, last_time, count in rows:
            try:
                name = crypto.open_local(self._seal_key, sealed,
                                         self._contact_data(peer_tag)).decode("utf-8")
                contacts.append(Contact(name, str(last_time), int(count)))
            except (crypto.CryptoError, UnicodeDecodeError, TypeError, ValueError):
                raise self._damaged("a contact's name was altered or damaged") from None
        return contacts

    def close(self) -> None:
        with self._lock:
            db, self._db = self._db, None
        if db is not None:
            db.close()

    def __enter__(self) -> PrivateHistory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- helpers ------------------------------------------------------------------------

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        """Run one statement and fetch its rows; SQLite's failures become our errors."""
        with self._lock, self._sqlite_errors():
            return self._live().execute(sql, params).fetchall()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, holding the lock; rolled back if anything fails."""
        with self._lock, self._sqlite_errors():
            db = self._live()
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.rollback()
                raise
            db.execute("COMMIT")

    @contextlib.contextmanager
    def _sqlite_errors(self) -> Iterator[None]:
        """SQLite's failures as our errors. Text that is not UTF-8, or a number that is
        not one, can only be damage (every value was written by us)."""
        try:
            yield
        except (UnicodeDecodeError, TypeError, ValueError, OverflowError) as exc:
            raise self._damaged(f"a stored value is not what was written ({exc})") from None
        except sqlite3.Error as exc:
            code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
            if code in (_SQLITE_CORRUPT, _SQLITE_NOTADB):
                raise self._damaged(f"SQLite says: {exc}") from None
            if code in (_SQLITE_BUSY, _SQLITE_LOCKED):
                raise PrivateHistoryError(
                    f"your private history {self.path} is busy: another Gapshape is "
                    "writing to it; try again") from None
            raise PrivateHistoryError(f"your private history {self.path}: {exc}") from None

    def _live(self) -> sqlite3.Connection:
        if self._db is None:
            raise PrivateHistoryError(f"your private history {self.path} is closed")
        return self._db

    def _tag(self, kind: bytes, *fields: bytes) -> bytes:
        return hmac.new(self._index_key, length_prefixed(kind, *fields), hashlib.sha256).digest()

    def _row_data(self, row: int, peer_tag: bytes, direction: str, message_tag: bytes,
                  sent_at: str, received_at: str) -> bytes:
        return length_prefixed(_ROW_LABEL, self._store_id, row.to_bytes(8, "big"), peer_tag,
                               direction.encode("ascii"), message_tag,
                               sent_at.encode("utf-8"), received_at.encode("utf-8"))

    def _contact_data(self, peer_tag: bytes) -> bytes:
        return length_prefixed(_CONTACT_LABEL, self._store_id, peer_tag)


# -- module helpers ---------------------------------------------------------------------

def history_path(data_dir: Path, username: str) -> Path:
    """Where ``username``'s history lives: ``<user_dir>/private_history.sqlite3``."""
    return user_dir(data_dir, username) / HISTORY_FILE


def open_private_history(data_dir: Path, username: str, private_key: RsaKey,
                         limits: Limits | None = None) -> PrivateHistory:
    """Open (or create) ``username``'s history in the data directory."""
    return PrivateHistory(history_path(data_dir, username), private_key, limits)


def _create(path: Path, private_key: RsaKey, owner: str) -> None:
    """Make a new, empty history at `path`, all or nothing.

    It is built in a temporary file (mkstemp: mode 0600 from the start) and then linked into
    place, which fails if a file appeared there meanwhile (another client of the same user):
    then that one is used, and never replaced. So an empty or half-written file at `path`
    can only be damage, never "not created yet"."""
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
    except OSError as exc:
        raise PrivateHistoryError(f"cannot create your private history {path}: {exc}") from None
    temp = Path(temp_name)
    try:
        _write_new_store(temp, private_key, owner)
        _link_into_place(temp, path)
    except (OSError, sqlite3.Error, crypto.CryptoError) as exc:
        raise PrivateHistoryError(f"cannot create your private history {path}: {exc}") from None
    finally:
        temp.unlink(missing_ok=True)


def _link_into_place(temp: Path, path: Path) -> None:
    """Give the new store its name unless something has it already (then that is used)."""
    try:
        os.link(temp, path)
    except FileExistsError:
        logger.info("%s was created by another client meanwhile; using it", path)
    except OSError:
        # A file system without hard links (FAT, some network shares): rename instead,
        # checking first; only two clients creating it in the same instant could race.
        if not path.exists():
            os.rename(temp, path)


def _write_new_store(temp: Path, private_key: RsaKey, owner: str) -> None:
    master = get_random_bytes(crypto.AES_KEY_BYTES)
    store_id = get_random_bytes(16)
    meta = {
        "format": FORMAT_NAME,
        "version": str(FORMAT_VERSION).encode(),
        "store_id": store_id,
        "owner": owner.encode("ascii"),
        "wrapped_key": crypto.wrap_local_key(master, private_key.publickey()),
        "key_check": crypto.seal_local(_derive(master, _CHECK_LABEL), b"",
                                       _check_data(store_id, owner)),
    }
    db = sqlite3.connect(temp, isolation_level=None)
    try:
        # WAL is a property of the file: set once here, it stays (the -wal file goes away
        # when the last connection closes, so only the one file is linked into place).
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("BEGIN")
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                db.execute(statement)
        db.executemany("INSERT INTO meta VALUES (?, ?)", list(meta.items()))
        db.execute("COMMIT")
    finally:
        db.close()


def _derive(master: bytes, label: bytes) -> bytes:
    """A 32-byte subkey of the master key for one purpose (HMAC-SHA256 as a PRF)."""
    return hmac.new(master, label, hashlib.sha256).digest()


def _check_data(store_id: bytes, owner: str) -> bytes:
    return length_prefixed(_CHECK_LABEL, FORMAT_NAME, str(FORMAT_VERSION).encode(), store_id,
                           owner.encode("ascii"))


def _checked_peer(peer: object) -> str:
    if not isinstance(peer, str) or not 1 <= len(peer) <= crypto.MAX_NAME_CHARS or not peer.isprintable():
        raise ValueError(f"a contact name must be 1 to {crypto.MAX_NAME_CHARS} printable characters")
    return peer.casefold()


def _check_record(direction: object, text: object, message_id: object, sent_at: object,
                  received_at: object) -> None:
    if direction not in DIRECTIONS:
        raise ValueError("direction must be 'in' or 'out'")
    if not isinstance(text, str) or len(text.encode("utf-8", "replace")) > crypto.MAX_PLAINTEXT_BYTES:
        raise ValueError(f"a text must be a str of at most {crypto.MAX_PLAINTEXT_BYTES} bytes")
    if not isinstance(message_id, str) or not 1 <= len(message_id) <= 64 or not message_id.isprintable():
        raise ValueError("a message id must be 1 to 64 printable characters")
    try:
        crypto.parse_timestamp(sent_at)
        crypto.parse_timestamp(received_at)
    except crypto.DecryptionError:
        raise ValueError("times must be crypto.utc_timestamp strings") from None


def _warn_if_readable_by_others(path: Path) -> None:
    if os.name == "posix" and stat.S_IMODE(path.stat().st_mode) & 0o077:
        logger.warning("%s can be read by other users; run: chmod 600 %s", path, path)
