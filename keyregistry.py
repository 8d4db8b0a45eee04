"""The server's record of which public key belongs to which username.

The first login under a name registers its key; every later login must prove possession
of that same key (``auth.verify_login``). Only an operator can release a name, with
``forget`` (``python server.py --forget-user NAME``), for example after a user lost
their key. Names are compared case-insensitively: entries are keyed by the case-folded
name and keep the spelling first registered for display.

File format: JSON Lines, append-only, one line per change, so a registration costs one
small appended write (and an fsync) however many users exist::

    {"op": "register", "username": "Bob", "fingerprint": "<sha256 hex>",
     "public_key": "<base64 SPKI DER>", "registered_at": "YYYY-MM-DDTHH:MM:SS.mmmZ"}
    {"op": "forget", "username": "Bob", "at": "YYYY-MM-DDTHH:MM:SS.mmmZ"}

Replaying the lines in order gives the registry. An operator's ``--forget-user`` runs in
another process while the server is up: the server notices that the file changed (size or
modification time) at its next lookup and reads it again.

Look-alike names: a name's skeletons (``skeletons``: the confusable characters of Unicode
TR39's table that usernames can hold, mapped to one of each, then case-folded; taken of
the name as typed, in lower and in upper case, since a name may be shown in any case) are
compared with those of every registered name, and a new name sharing one with a
different registered name is refused: nobody can register ``aIice`` (capital i), ``a1ice``
or ``AL1CE`` beside ``alice``. One key may hold at most
``max_names_per_key`` names.

This module runs in the server, which must never import ``crypto.py``; it uses ``auth``.
"""
from __future__ import annotations

import base64
import binascii
import collections
import json
import logging
import os
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

from auth import key_fingerprint, load_public_key

logger = logging.getLogger(__name__)


class KeyRegistryError(Exception):
    """The server's key registry could not be read or written; the message says why."""


class RegistrationConflict(KeyRegistryError):
    """This username already belongs to a different key; only an operator can release it."""


class RegistrationRefused(KeyRegistryError):
    """The name may not be registered: it looks like another, or the key holds enough."""


# Unicode TR39 confusables that the username alphabet [A-Za-z0-9_.-] can spell, each
# mapped to the letter it imitates. Case-sensitive on purpose: "I" imitates "l", "i" not.
_CONFUSABLE_SEQUENCES = (("rn", "m"), ("vv", "w"), ("cl", "d"))
_CONFUSABLE_CHARACTERS = str.maketrans({"0": "o", "O": "o", "1": "l", "I": "l", "|": "l"})


def skeleton(name: str) -> str:
    """The form two names share when they look alike: ``skeleton("aIice") == "alice"``."""
    folded = name.translate(_CONFUSABLE_CHARACTERS).casefold()
    for sequence, letter in _CONFUSABLE_SEQUENCES:
        folded = folded.replace(sequence, letter)
    return folded


def skeletons(name: str) -> set[str]:
    """The skeletons of `name` in every case it may be shown in (as typed, lower, upper)."""
    return {skeleton(form) for form in (name, name.lower(), name.upper())}


@dataclass(frozen=True)
class RegisteredKey:
    """A username's registered key: display name, fingerprint, SPKI DER and when."""

    username: str
    fingerprint: str
    public_der: bytes = field(repr=False)
    registered_at: str


class Registry(Protocol):
    """What the server and the session use of a registry: `KeyRegistry` (a file, one
    server) and `redisstores.RedisKeyRegistry` (Redis, a cluster) both are one."""

    max_names_per_key: int

    def lookup(self, username: str) -> RegisteredKey | None: ...
    def lookalike(self, username: str) -> str | None: ...
    def refusal(self, username: str, public_der: bytes) -> str | None: ...
    def register(self, username: str, public_der: bytes,
                 *, now: datetime | None = None) -> RegisteredKey: ...
    def forget(self, username: str) -> bool: ...
    def usernames(self) -> list[str]: ...
    def registration_times(self) -> list[float]: ...


class KeyRegistry:
    """Username -> registered public key, kept in a JSON Lines file. Thread-safe.

    A missing file is an empty registry; a damaged one raises KeyRegistryError rather than
    silently letting names be registered again.
    """

    def __init__(self, path: Path, *, max_names_per_key: int = 3) -> None:
        self.path = Path(path)
        self.max_names_per_key = max_names_per_key
        self._lock = threading.Lock()
        self._entries: dict[str, RegisteredKey] = {}
        # Derived from _entries, rebuilt with it: skeleton -> casefolded name, and how
        # many names each key (fingerprint) holds.
        self._skeletons: dict[str, str] = {}
        self._names_per_key: collections.Counter[str] = collections.Counter()
        self._seen: tuple[int, int] | None = None  # (size, mtime_ns) of the file we read
        self._reload_if_changed()

    def lookalike(self, username: str) -> str | None:
        """A registered name that looks like ``username`` but is another name, or None."""
        with self._lock:
            self._reload_if_changed()
            return self._lookalike(username)

    def refusal(self, username: str, public_der: bytes) -> str | None:
        """Why ``register(username, public_der)`` would be refused, or None."""
        with self._lock:
            self._reload_if_changed()
            return self._refusal(username, key_fingerprint(public_der))

    def registration_times(self) -> list[float]:
        """When each current registration was made, in seconds since the epoch."""
        with self._lock:
            self._reload_if_changed()
            return [t for e in self._entries.values() if (t := epoch(e.registered_at))]

    def lookup(self, username: str) -> RegisteredKey | None:
        """The key registered for ``username`` (any case), or None."""
        with self._lock:
            self._reload_if_changed()
            return self._entries.get(username.casefold())

    def register(self, username: str, public_der: bytes,
                 *, now: datetime | None = None) -> RegisteredKey:
        """Register ``public_der`` for an unregistered ``username`` and return the entry.

        Registering the same key again returns the existing entry. Raises
        auth.AuthError for an unacceptable key and RegistrationConflict if the name is
        taken by another key.
        """
        check_username(username)
        load_public_key(public_der)  # refuse bad keys before they are ever stored
        fingerprint = key_fingerprint(public_der)
        with self._lock:
            self._reload_if_changed()
            current = self._entries.get(username.casefold())
            if current is not None:
                if current.fingerprint != fingerprint:
                    raise RegistrationConflict(
                        f"{current.username} is already registered with a different key"
                    )
                return current
            refusal = self._refusal(username, fingerprint)
            if refusal is not None:
                raise RegistrationRefused(refusal)
            entry = RegisteredKey(username, fingerprint, public_der, timestamp(now))
            self._append(_register_line(entry))
            self._entries[username.casefold()] = entry
            self._skeletons.update(dict.fromkeys(skeletons(username), username.casefold()))
            self._names_per_key[fingerprint] += 1
        logger.info("registered %s with key %s", username, fingerprint)
        return entry

    def forget(self, username: str) -> bool:
        """Remove the registration of ``username``; return whether there was one."""
        with self._lock:
            self._reload_if_changed()
            folded = username.casefold()
            entry = self._entries.get(folded)
            if entry is None:
                return False
            self._append({"op": "forget", "username": entry.username, "at": timestamp(None)})
            del self._entries[folded]
            self._index()
        logger.info("forgot the registered key of %s", username)
        return True

    def usernames(self) -> list[str]:
        """Display names of every registered user, sorted case-insensitively."""
        with self._lock:
            self._reload_if_changed()
            return sorted((e.username for e in self._entries.values()), key=str.casefold)

    def _append(self, change: dict[str, Any]) -> None:
        """Append one change durably; the caller holds the lock."""
        line = (json.dumps(change, ensure_ascii=False, separators=(",", ":")) + "\n").encode()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)
            self._seen = _file_version(self.path)
        except OSError as exc:
            raise KeyRegistryError(f"cannot write the key registry {self.path}: {exc}") from None

    def _reload_if_changed(self) -> None:
        """Read the file again if someone else (the operator) changed it."""
        version = _file_version(self.path)
        if version != self._seen:
            self._entries = _load(self.path)
            self._index()
            self._seen = version

    def _index(self) -> None:
        self._skeletons = {form: folded for folded, e in self._entries.items()
                           for form in skeletons(e.username)}
        self._names_per_key = collections.Counter(e.fingerprint for e in self._entries.values())

    def _lookalike(self, username: str) -> str | None:
        for form in skeletons(username):
            owner = self._skeletons.get(form)
            if owner is not None and owner != username.casefold():
                return self._entries[owner].username
        return None

    def _refusal(self, username: str, fingerprint: str) -> str | None:
        if (current := self._entries.get(username.casefold())) is not None:
            return None if current.fingerprint == fingerprint else (
                f"{current.username} is already registered with a different key")
        if (twin := self._lookalike(username)) is not None:
            return f'"{username}" looks too much like the registered name "{twin}"'
        held = self._names_per_key[fingerprint]
        if 0 < self.max_names_per_key <= held:
            return (f"this key already holds {held} usernames, the most one key may "
                    "register here")
        return None


def _file_version(path: Path) -> tuple[int, int] | None:
    try:
        info = path.stat()
    except FileNotFoundError:
        return None
    return info.st_size, info.st_mtime_ns


def check_username(username: object) -> None:
    """KeyRegistryError unless `username` is a printable, non-empty string."""
    if not isinstance(username, str) or not username or not username.isprintable():
        raise KeyRegistryError("a registration needs a printable username")


def epoch(stamp: str) -> float | None:
    """A `registered_at` stamp in seconds since the epoch (None if it is not one)."""
    try:
        return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(
            tzinfo=timezone.utc).timestamp()
    except ValueError:
        return None


def timestamp(now: datetime | None) -> str:
    """`now` (default: this moment) as a `registered_at` stamp, UTC to the millisecond."""
    moment = (now or datetime.now(timezone.utc)).astimezone(timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


# ---------------------------------------------------------------------------------------
# File format

def _register_line(entry: RegisteredKey) -> dict[str, Any]:
    return {
        "op": "register",
        "username": entry.username,
        "fingerprint": entry.fingerprint,
        "public_key": base64.b64encode(entry.public_der).decode("ascii"),
        "registered_at": entry.registered_at,
    }


def _load(path: Path) -> dict[str, RegisteredKey]:
    """Replay the file's changes; any line that is not a valid change is damage."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyRegistryError(f"cannot read the key registry {path}: {exc}") from None
    entries: dict[str, RegisteredKey] = {}
    for number, line in enumerate(text.splitlines(), 1):
        try:
            change = json.loads(line)
        except ValueError:
            raise _corrupt(path, f"line {number} is not valid JSON") from None
        try:
            _replay(entries, change)
        except ValueError as exc:
            raise _corrupt(path, f"line {number}: {exc}") from None
    return entries


def _replay(entries: dict[str, RegisteredKey], change: object) -> None:
    """Apply one change to `entries`; ValueError says why it cannot be applied."""
    if not isinstance(change, dict) or change.get("op") not in ("register", "forget"):
        raise ValueError("unknown change")
    username = change.get("username")
    if not isinstance(username, str) or not username:
        raise ValueError("no username")
    folded = username.casefold()
    if change["op"] == "forget":
        entries.pop(folded, None)
        return
    entry = _entry_from_json(change)
    if entry is None:
        raise ValueError(f"bad entry for {username!r}")
    if folded in entries and entries[folded].fingerprint != entry.fingerprint:
        raise ValueError(f"{username!r} registered twice without being forgotten")
    entries[folded] = entry


def _entry_from_json(raw: object) -> RegisteredKey | None:
    """Rebuild one entry, or None if any field is missing, mistyped or inconsistent."""
    if not isinstance(raw, dict):
        return None
    username, fingerprint = raw.get("username"), raw.get("fingerprint")
    public_b64, registered_at = raw.get("public_key"), raw.get("registered_at")
    if not (isinstance(username, str) and username and isinstance(fingerprint, str)
            and isinstance(public_b64, str) and isinstance(registered_at, str)):
        return None
    try:
        public_der = base64.b64decode(public_b64, validate=True)
    except (binascii.Error, ValueError):
        return None
    # The fingerprint is derived data; a mismatch means the file was edited or damaged.
    if key_fingerprint(public_der) != fingerprint:
        return None
    return RegisteredKey(username, fingerprint, public_der, registered_at)


def _corrupt(path: Path, reason: str) -> KeyRegistryError:
    return KeyRegistryError(
        f"the key registry {path} is damaged ({reason}); the server will not start with it, "
        "because guessing could hand a username to the wrong key: restore it from a backup"
    )
