"""The server's record of which public key belongs to which username.

The first login under a name registers its key; every later login must prove possession
of that same key (``auth.verify_login``). Only an operator can release a name, with
``forget`` (``python server.py --forget-user NAME``), for example after a user lost
their key. Names are compared case-insensitively: entries are keyed by the case-folded
name and keep the spelling first registered for display.

File format (JSON, written atomically via a temporary file and ``os.replace``)::

    {"version": 1,
     "users": {"<casefolded name>": {"username": "...", "fingerprint": "<sha256 hex>",
                                      "public_key": "<base64 SPKI DER>",
                                      "registered_at": "YYYY-MM-DDTHH:MM:SS.mmmZ"}}}

This module runs in the server, which must never import ``crypto.py``; it uses ``auth``.
"""
from __future__ import annotations

import base64
import binascii
import json
import logging
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from auth import key_fingerprint, load_public_key
from fileutil import write_atomically

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1


class KeyRegistryError(Exception):
    """The server's key registry could not be read or written; the message says why."""


class RegistrationConflict(KeyRegistryError):
    """This username already belongs to a different key; only an operator can release it."""


@dataclass(frozen=True)
class RegisteredKey:
    """A username's registered key: display name, fingerprint, SPKI DER and when."""

    username: str
    fingerprint: str
    public_der: bytes = field(repr=False)
    registered_at: str


class KeyRegistry:
    """Username -> registered public key, kept in a JSON file. Thread-safe.

    A missing file is an empty registry; a damaged one raises KeyRegistryError at
    construction rather than silently letting names be registered again.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._entries: dict[str, RegisteredKey] = _load(self.path)

    def lookup(self, username: str) -> RegisteredKey | None:
        """The key registered for ``username`` (any case), or None."""
        with self._lock:
            return self._entries.get(username.casefold())

    def register(self, username: str, public_der: bytes,
                 *, now: datetime | None = None) -> RegisteredKey:
        """Register ``public_der`` for an unregistered ``username`` and return the entry.

        Registering the same key again returns the existing entry. Raises
        auth.AuthError for an unacceptable key and RegistrationConflict if the name is
        taken by another key.
        """
        _check_username(username)
        load_public_key(public_der)  # refuse bad keys before they are ever stored
        fingerprint = key_fingerprint(public_der)
        with self._lock:
            current = self._entries.get(username.casefold())
            if current is not None:
                if current.fingerprint != fingerprint:
                    raise RegistrationConflict(
                        f"{current.username} is already registered with a different key"
                    )
                return current
            entry = RegisteredKey(username, fingerprint, public_der, _timestamp(now))
            self._save({**self._entries, username.casefold(): entry})
        logger.info("registered %s with key %s", username, fingerprint)
        return entry

    def forget(self, username: str) -> bool:
        """Remove the registration of ``username``; return whether there was one."""
        with self._lock:
            folded = username.casefold()
            if folded not in self._entries:
                return False
            self._save({k: v for k, v in self._entries.items() if k != folded})
        logger.info("forgot the registered key of %s", username)
        return True

    def usernames(self) -> list[str]:
        """Display names of every registered user, sorted case-insensitively."""
        with self._lock:
            return sorted((e.username for e in self._entries.values()), key=str.casefold)

    def _save(self, entries: dict[str, RegisteredKey]) -> None:
        """Write ``entries`` to disk, then adopt them; the caller holds the lock."""
        data = json.dumps(_document(entries), indent=2, sort_keys=True, ensure_ascii=False)
        try:
            write_atomically(self.path, (data + "\n").encode("utf-8"))
        except OSError as exc:
            raise KeyRegistryError(f"cannot write the key registry {self.path}: {exc}") from None
        self._entries = entries


def _check_username(username: object) -> None:
    if not isinstance(username, str) or not username or not username.isprintable():
        raise KeyRegistryError("a registration needs a printable username")


def _timestamp(now: datetime | None) -> str:
    moment = (now or datetime.now(timezone.utc)).astimezone(timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


# ---------------------------------------------------------------------------------------
# File format

def _document(entries: dict[str, RegisteredKey]) -> dict[str, Any]:
    return {
        "version": FORMAT_VERSION,
        "users": {
            folded: {
                "username": e.username,
                "fingerprint": e.fingerprint,
                "public_key": base64.b64encode(e.public_der).decode("ascii"),
                "registered_at": e.registered_at,
            }
            for folded, e in entries.items()
        },
    }


def _load(path: Path) -> dict[str, RegisteredKey]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyRegistryError(f"cannot read the key registry {path}: {exc}") from None
    try:
        document = json.loads(text)
    except ValueError:
        raise _corrupt(path, "it is not valid JSON") from None
    if not isinstance(document, dict) or type(document.get("version")) is not int \
            or document["version"] != FORMAT_VERSION or not isinstance(document.get("users"), dict):
        raise _corrupt(path, "unknown format")
    entries = {}
    for folded, raw in document["users"].items():
        entry = _entry_from_json(raw)
        if entry is None or entry.username.casefold() != folded:
            raise _corrupt(path, f"bad entry for {folded!r}")
        entries[folded] = entry
    return entries


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
