"""The client's keys and trust decisions on disk: identity, pinned keys, seen messages.

Layout under the data directory (``default_data_dir()`` or ``--data-dir``)::

    <data_dir>/known_servers.json          PinStore: server name -> TLS certificate pin
    <data_dir>/<user>/identity.pem         the user's RSA private key (PKCS#8, mode 0600)
    <data_dir>/<user>/known_keys.json      PinStore: contact -> public key fingerprint
    <data_dir>/<user>/seen_messages.json   ReplayGuard: recently received message ids

``<user>`` is the case-folded username. Every file is written atomically (temporary file
in the same directory, fsync, ``os.replace``) with mode 0600 where the OS has modes, so
a crash leaves either the old or the new file, never half of one. File I/O only: no
sockets here. Secrets (keys, passphrases) are never logged; fingerprints may be.
"""
from __future__ import annotations

import enum
import json
import logging
import os
import stat
import sys
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping

from Crypto.PublicKey import RSA
from Crypto.PublicKey.RSA import RsaKey

from auth import (
    MAX_KEY_BITS,
    MIN_KEY_BITS,
    READABLE_FINGERPRINT_GROUP_DIGITS,
    READABLE_FINGERPRINT_GROUPS,
    key_fingerprint,
    public_key_der,
)
from crypto import DecryptionError, ReplayError, parse_timestamp, utc_timestamp
from fileutil import write_atomically

logger = logging.getLogger(__name__)

IDENTITY_FILE = "identity.pem"
KNOWN_KEYS_FILE = "known_keys.json"
KNOWN_SERVERS_FILE = "known_servers.json"
SEEN_MESSAGES_FILE = "seen_messages.json"

NEW_KEY_BITS = 3072
#: scrypt cost N for passphrase-protected keys (r=8, p=1): the OWASP recommendation,
#: about 0.35 s and 128 MiB per unlock, paid once at start-up.
SCRYPT_COST = 2**17
KEY_PROTECTION = "scryptAndAES256-CBC"

DEFAULT_REPLAY_WINDOW = timedelta(minutes=10)  # how far ahead of our clock a sender's may be
# How old a message may be: a private message can wait in the server's mailbox for its
# offline recipient for 7 days (server --queue-max-age), plus a day of clock and delivery.
DEFAULT_REPLAY_HORIZON = timedelta(days=8)
MAX_REMEMBERED_IDS = 20_000  # beyond this the oldest ids go, and the horizon moves up
STORE_FORMAT_VERSION = 1

# Characters that would let a username escape its directory or break on some OS.
_UNSAFE_PATH_CHARS = frozenset('/\\:*?"<>|\0')


class IdentityError(Exception):
    """Your Gapshape identity or one of its files could not be used; the message says why."""


class PinConflictError(IdentityError):
    """A different key is already pinned for this name; accept it explicitly with /trust."""


# ---------------------------------------------------------------------------------------
# Where things live

def default_data_dir(
    *,
    environ: Mapping[str, str] | None = None,
    platform: str | None = None,
    home: Path | None = None,
) -> Path:
    """Return the data directory: ``$GAPSHAPE_HOME``, else the platform's usual place.

    Windows ``%APPDATA%\\Gapshape``; macOS ``~/Library/Application Support/Gapshape``;
    elsewhere ``$XDG_DATA_HOME/gapshape`` or ``~/.local/share/gapshape``. The keyword
    arguments exist for tests; the client's ``--data-dir`` overrides all of this.
    """
    env = os.environ if environ is None else environ
    platform = sys.platform if platform is None else platform
    home = Path.home() if home is None else home
    if env.get("GAPSHAPE_HOME"):
        return Path(env["GAPSHAPE_HOME"]).expanduser()
    if platform == "win32":
        appdata = env.get("APPDATA")
        return (Path(appdata) if appdata else home / "AppData" / "Roaming") / "Gapshape"
    if platform == "darwin":
        return home / "Library" / "Application Support" / "Gapshape"
    xdg = env.get("XDG_DATA_HOME", "")
    # The XDG spec says relative paths in these variables are invalid and to be ignored.
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else home / ".local" / "share"
    return base / "gapshape"


def user_dir(data_dir: Path, username: str) -> Path:
    """Return ``<data_dir>/<case-folded username>``, refusing names unsafe as a path."""
    folded = username.casefold()
    if (
        not folded
        or folded in (".", "..")
        or any(ch in _UNSAFE_PATH_CHARS for ch in folded)
        or not folded.isprintable()
    ):
        raise IdentityError(f"the username {username!r} cannot be used as a folder name")
    return Path(data_dir) / folded


# ---------------------------------------------------------------------------------------
# Atomic files

def _read_json_document(path: Path) -> dict[str, Any] | None:
    """Read a store file: None if it does not exist, IdentityError if it is not ours."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise IdentityError(f"cannot read {path}: {exc}") from None
    try:
        document = json.loads(text)
    except ValueError:
        raise _corrupt(path, "it is not valid JSON") from None
    if not isinstance(document, dict):
        raise _corrupt(path, "it is not a JSON object")
    version = document.get("version")
    if type(version) is not int or version != STORE_FORMAT_VERSION:
        raise _corrupt(path, "unknown format version")
    return document


def _write_json_document(path: Path, document: dict[str, Any]) -> None:
    data = json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    try:
        write_atomically(path, data.encode("utf-8"), dir_mode=0o700)
    except OSError as exc:
        raise IdentityError(f"cannot write {path}: {exc}") from None


def _corrupt(path: Path, reason: str) -> IdentityError:
    return IdentityError(
        f"{path} is damaged ({reason}); Gapshape will not guess its contents: "
        "restore it from a backup or move it aside"
    )


# ---------------------------------------------------------------------------------------
# The identity key

@dataclass(frozen=True)
class Identity:
    """The user's own key pair, with its public DER and fingerprint precomputed."""

    username: str
    private_key: RsaKey = field(repr=False)
    public_der: bytes = field(repr=False)
    fingerprint: str


def load_or_create_identity(
    data_dir: Path,
    username: str,
    passphrase: str | None = None,
    *,
    new_key: Callable[[], RsaKey] | None = None,
) -> Identity:
    """Load ``<user_dir>/identity.pem``, or create it with a new RSA-3072 key.

    With a passphrase (an empty one counts as none) a new key is stored as encrypted
    PKCS#8 (scrypt + AES-256-CBC). ``new_key`` replaces key generation (tests use a
    pool). Raises IdentityError for a wrong or missing passphrase or a damaged file.
    """
    path = user_dir(data_dir, username) / IDENTITY_FILE
    secret = passphrase.encode("utf-8") if passphrase else None
    if path.exists():
        key = _load_private_key(path, secret)
    else:
        key = (new_key or _generate_key)()
        _check_identity_key(key, path)
        _write_private_key(path, key, secret)
        logger.info("created a new identity key for %s in %s", username, path)
    der = public_key_der(key)
    return Identity(username, key, der, key_fingerprint(der))


def _generate_key() -> RsaKey:
    return RSA.generate(NEW_KEY_BITS)


def _write_private_key(path: Path, key: RsaKey, secret: bytes | None) -> None:
    if secret is None:
        pem = key.export_key(format="PEM", pkcs=8)
    else:
        # The passphrase goes in as UTF-8 bytes: given a str, pycryptodome would encode
        # it as Latin-1 and fail on (or mis-encode) other characters. Its type stubs
        # only mention str, hence the ignore.
        pem = key.export_key(  # type: ignore[call-overload]
            format="PEM", pkcs=8, passphrase=secret, protection=KEY_PROTECTION,
            prot_params={"iteration_count": SCRYPT_COST},
        )
    try:
        write_atomically(path, pem, dir_mode=0o700)
    except OSError as exc:
        raise IdentityError(f"cannot save your key to {path}: {exc}") from None


def _load_private_key(path: Path, secret: bytes | None) -> RsaKey:
    try:
        pem = path.read_bytes()
    except OSError as exc:
        raise IdentityError(f"cannot read your key from {path}: {exc}") from None
    _warn_if_readable_by_others(path)
    encrypted = b"ENCRYPTED" in pem
    if encrypted and secret is None:
        raise IdentityError(f"{path} is protected by a passphrase; enter it to unlock your key")
    if not encrypted and secret is not None:
        logger.warning("%s is not passphrase-protected; the passphrase was not needed", path)
    try:
        # pycryptodome refuses a passphrase for an unencrypted key, so pass it only if used.
        key = RSA.import_key(pem, passphrase=secret if encrypted else None)  # type: ignore[arg-type]
    except (ValueError, IndexError, TypeError):
        if encrypted:
            raise IdentityError(f"wrong passphrase for {path}") from None
        raise IdentityError(f"{path} does not hold a valid RSA private key") from None
    _check_identity_key(key, path)
    return key


def _check_identity_key(key: RsaKey, path: Path) -> None:
    if not isinstance(key, RsaKey) or not key.has_private():
        raise IdentityError(f"{path}: an identity needs an RSA private key")
    if not MIN_KEY_BITS <= key.size_in_bits() <= MAX_KEY_BITS:
        raise IdentityError(f"{path}: the key must have {MIN_KEY_BITS} to {MAX_KEY_BITS} bits")


def _warn_if_readable_by_others(path: Path) -> None:
    if os.name == "posix" and stat.S_IMODE(path.stat().st_mode) & 0o077:
        logger.warning("%s can be read by other users; run: chmod 600 %s", path, path)


# ---------------------------------------------------------------------------------------
# Pins (trust on first use, like SSH's known_hosts)

class PinStatus(enum.Enum):
    NEW = "new"            # nothing pinned for this name yet
    MATCH = "match"        # the pinned fingerprint is the one offered
    MISMATCH = "mismatch"  # a different fingerprint is pinned: warn the user


@dataclass(frozen=True)
class PinCheck:
    """The result of ``PinStore.check``: a status and the fingerprint pinned (if any)."""

    NEW: ClassVar[PinStatus] = PinStatus.NEW
    MATCH: ClassVar[PinStatus] = PinStatus.MATCH
    MISMATCH: ClassVar[PinStatus] = PinStatus.MISMATCH

    status: PinStatus
    pinned_fingerprint: str | None


@dataclass(frozen=True)
class Pin:
    """One pinned name: the display name, the fingerprint, when, and caller's extras."""

    name: str
    fingerprint: str
    pinned_at: str
    extra: dict[str, Any]


class PinStore:
    """A JSON file of name -> fingerprint pins, compared case-insensitively. Thread-safe.

    Used for contacts' public keys (``known_keys``) and servers' TLS certificates
    (``known_servers``). ``pin`` only ever adds; changing a pin takes ``replace``.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._pins: dict[str, Pin] = self._load()

    def check(self, name: str, fingerprint: str) -> PinCheck:
        """Compare ``fingerprint`` with the pin for ``name``: NEW, MATCH or MISMATCH."""
        pinned = self.get(name)
        if pinned is None:
            return PinCheck(PinStatus.NEW, None)
        status = PinStatus.MATCH if pinned.fingerprint == fingerprint else PinStatus.MISMATCH
        return PinCheck(status, pinned.fingerprint)

    def get(self, name: str) -> Pin | None:
        with self._lock:
            pin = self._pins.get(name.casefold())
        return None if pin is None else _copy_pin(pin)

    def pin(self, name: str, fingerprint: str, extra: dict[str, Any] | None = None) -> Pin:
        """Pin a name seen for the first time; re-pinning the same fingerprint is a no-op.

        Raises PinConflictError if a different fingerprint is already pinned.
        """
        with self._lock:
            current = self._pins.get(name.casefold())
            if current is not None:
                if current.fingerprint != fingerprint:
                    raise PinConflictError(
                        f"{current.name} is pinned to a different key; use /trust to accept"
                    )
                return _copy_pin(current)
            return self._store(name, fingerprint, extra)

    def replace(self, name: str, fingerprint: str, extra: dict[str, Any] | None = None) -> Pin:
        """Pin ``fingerprint`` for ``name`` whatever was pinned before (``/trust``)."""
        with self._lock:
            previous = self._pins.get(name.casefold())
            if previous is not None and previous.fingerprint != fingerprint:
                logger.warning("pin for %s changed from %s to %s",
                               name, previous.fingerprint, fingerprint)
            return self._store(name, fingerprint, extra)

    def mark_verified(self, name: str, fingerprint: str) -> Pin:
        """Record that the user compared ``fingerprint`` out of band (``/verify``).

        Only the key pinned right now can be marked: raises PinConflictError if
        ``fingerprint`` is not it, IdentityError if nothing is pinned. The mark names the
        fingerprint, and ``replace`` drops all extras, so a key change clears it.
        """
        with self._lock:
            current = self._pins.get(name.casefold())
            if current is None:
                raise IdentityError(f"no key is pinned for {name}")
            if current.fingerprint != fingerprint:
                raise PinConflictError(f"{current.name} is pinned to a different key")
            extra = {**current.extra, VERIFIED_KEY: fingerprint, VERIFIED_AT_KEY: utc_timestamp()}
            pin = Pin(current.name, current.fingerprint, current.pinned_at,
                      _checked_extra(current.name, fingerprint, extra))
            pins = {**self._pins, name.casefold(): pin}
            _write_json_document(self.path, _pins_document(pins))
            self._pins = pins
            return _copy_pin(pin)

    def _store(self, name: str, fingerprint: str, extra: dict[str, Any] | None) -> Pin:
        """Add or overwrite a pin and save the file; the caller holds the lock."""
        pin = Pin(name, fingerprint, utc_timestamp(), _checked_extra(name, fingerprint, extra))
        pins = {**self._pins, name.casefold(): pin}
        _write_json_document(self.path, _pins_document(pins))
        self._pins = pins  # only after the file is safely written
        return _copy_pin(pin)

    def _load(self) -> dict[str, Pin]:
        document = _read_json_document(self.path)
        if document is None:
            return {}
        entries = document.get("pins")
        if not isinstance(entries, dict):
            raise _corrupt(self.path, "no pins table")
        pins = {}
        for key, entry in entries.items():
            pin = _pin_from_json(entry)
            if pin is None or key != pin.name.casefold():
                raise _corrupt(self.path, f"bad entry for {key!r}")
            pins[key] = pin
        return pins


#: Pin extras written by ``mark_verified``.
VERIFIED_KEY = "verified_fingerprint"
VERIFIED_AT_KEY = "verified_at"


def is_verified(pin: Pin | None) -> bool:
    """Whether the user verified exactly the key this pin holds (``/verify``)."""
    return pin is not None and pin.extra.get(VERIFIED_KEY) == pin.fingerprint


def readable_fingerprint_from_hex(fingerprint: str) -> str:
    """``auth.readable_fingerprint`` from the hex SHA-256 a pin stores (no DER needed):
    the same 12 groups of 5 digits, since both come from the same digest."""
    digits = READABLE_FINGERPRINT_GROUPS * READABLE_FINGERPRINT_GROUP_DIGITS
    text = f"{int(fingerprint, 16) % 10**digits:0{digits}d}"
    step = READABLE_FINGERPRINT_GROUP_DIGITS
    return " ".join(text[i : i + step] for i in range(0, digits, step))


def _checked_extra(name: object, fingerprint: object, extra: object) -> dict[str, Any]:
    """Check a pin's arguments; return a deep copy of ``extra`` that the caller cannot
    change behind the store's back."""
    if not isinstance(name, str) or not name:
        raise IdentityError("a pin needs a name")
    if not isinstance(fingerprint, str) or not fingerprint:
        raise IdentityError("a pin needs a fingerprint")
    if extra is not None and not isinstance(extra, dict):
        raise IdentityError("pin details must be a dict")
    try:
        return _json_copy(extra or {})
    except (TypeError, ValueError):
        raise IdentityError("pin details must be plain JSON values") from None


def _json_copy(value: dict[str, Any]) -> dict[str, Any]:
    """A deep copy that also proves the value can be written as JSON."""
    copied: dict[str, Any] = json.loads(json.dumps(value))
    return copied


def _copy_pin(pin: Pin) -> Pin:
    # Pins are frozen, but their extra dict is not; callers get their own copy.
    return Pin(pin.name, pin.fingerprint, pin.pinned_at, _json_copy(pin.extra))


def _pins_document(pins: dict[str, Pin]) -> dict[str, Any]:
    return {
        "version": STORE_FORMAT_VERSION,
        "pins": {
            key: {"name": p.name, "fingerprint": p.fingerprint,
                  "pinned_at": p.pinned_at, "extra": p.extra}
            for key, p in pins.items()
        },
    }


def _pin_from_json(entry: object) -> Pin | None:
    if not isinstance(entry, dict):
        return None
    name, fingerprint = entry.get("name"), entry.get("fingerprint")
    pinned_at, extra = entry.get("pinned_at"), entry.get("extra")
    if (isinstance(name, str) and name and isinstance(fingerprint, str) and fingerprint
            and isinstance(pinned_at, str) and pinned_at and isinstance(extra, dict)):
        return Pin(name, fingerprint, pinned_at, extra)
    return None


def known_keys(data_dir: Path, username: str) -> PinStore:
    """The contacts' key pins of ``username``: ``<user_dir>/known_keys.json``."""
    return PinStore(user_dir(data_dir, username) / KNOWN_KEYS_FILE)


def known_servers(data_dir: Path) -> PinStore:
    """The servers' certificate pins, shared by all users: ``<data_dir>/known_servers.json``."""
    return PinStore(Path(data_dir) / KNOWN_SERVERS_FILE)


# ---------------------------------------------------------------------------------------
# Replay protection

class ReplayGuard:
    """Remembers the ids of messages received within the horizon, on disk, and refuses
    repeats.

    A message may legitimately be days old when it arrives (it waited in the server's
    mailbox while we were offline), so the rule is not a short window around now: an
    envelope is refused if its id was already seen, if its ``sent_at`` lies more than
    ``window`` (10 minutes) ahead of now, or if it is older than ``horizon`` (8 days) or
    than the *floor*. Ids are remembered for the whole horizon, and forgotten once their
    ``sent_at`` leaves it: a replay of them is then refused by the time check, since
    ``sent_at`` is signed. At most ``max_ids`` are kept; when more arrive, the oldest are
    forgotten and the floor rises to the newest forgotten ``sent_at``, so a forgotten id
    can never be accepted again either. Call ``check`` before any RSA work on an envelope
    (a replay then costs no RSA operation) and ``check_and_record`` only after
    ``crypto.open_envelope`` succeeded, so nobody can block a message by sending a forged
    one with its id first. Thread-safe.
    """

    def __init__(self, path: Path, window: timedelta = DEFAULT_REPLAY_WINDOW,
                 horizon: timedelta = DEFAULT_REPLAY_HORIZON,
                 max_ids: int = MAX_REMEMBERED_IDS) -> None:
        self.path = Path(path)
        self.window = window
        self.horizon = horizon
        self.max_ids = max_ids
        self._lock = threading.Lock()
        self._floor: datetime | None = None
        self._seen: dict[str, datetime] = self._load()

    def check(self, message_id: str, sent_at: str, now: datetime | None = None) -> None:
        """Raise ReplayError for a repeat or stale message; remember nothing.

        The client calls this *before* any RSA work on an envelope, so a replayed copy
        costs a dictionary lookup, not an RSA decryption; ``check_and_record`` after the
        envelope opened.
        """
        sent, now = self._checked_time(message_id, sent_at, now)
        with self._lock:
            if message_id in self._unexpired(now):
                raise ReplayError("this message was already received once (replayed)")

    def _checked_time(self, message_id: str, sent_at: str,
                      now: datetime | None) -> tuple[datetime, datetime]:
        if not isinstance(message_id, str) or not message_id:
            raise DecryptionError("the message has no valid id")
        sent = parse_timestamp(sent_at)
        now = _aware_now(now)
        if sent - now > self.window or now - sent > self.horizon:
            raise ReplayError(
                "the message's timestamp is too far from now: "
                "a clock is wrong, or the message is being replayed"
            )
        if self._floor is not None and sent <= self._floor:
            raise ReplayError("the message is older than the ones this client still "
                              "remembers, so it cannot be told from a replay")
        return sent, now

    def check_and_record(self, message_id: str, sent_at: str,
                         now: datetime | None = None) -> None:
        """Raise ReplayError for a repeat or stale message; otherwise remember it."""
        sent, now = self._checked_time(message_id, sent_at, now)
        with self._lock:
            seen = self._unexpired(now)
            if message_id in seen:
                raise ReplayError("this message was already received once (replayed)")
            seen[message_id] = sent
            floor = self._floor
            if len(seen) > self.max_ids:
                ordered = sorted(seen.items(), key=lambda item: item[1])
                dropped = ordered[: len(seen) - self.max_ids]
                floor = max(floor or dropped[-1][1], dropped[-1][1])
                seen = dict(ordered[len(dropped):])
            _write_json_document(self.path, _seen_document(seen, floor))
            self._seen, self._floor = seen, floor  # only after the file is safely written

    def _unexpired(self, now: datetime) -> dict[str, datetime]:
        oldest = now - self.horizon
        return {mid: sent for mid, sent in self._seen.items() if sent >= oldest}

    def _load(self) -> dict[str, datetime]:
        document = _read_json_document(self.path)
        if document is None:
            return {}
        entries = document.get("seen")
        if not isinstance(entries, dict):
            raise _corrupt(self.path, "no table of seen messages")
        if document.get("floor") is not None:
            try:
                self._floor = parse_timestamp(document["floor"])
            except DecryptionError:
                raise _corrupt(self.path, "bad floor time") from None
        seen = {}
        for message_id, sent_at in entries.items():
            try:
                seen[message_id] = parse_timestamp(sent_at)
            except DecryptionError:
                raise _corrupt(self.path, f"bad time for {message_id!r}") from None
        return seen


def _aware_now(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(timezone.utc)
    if now.tzinfo is None:
        raise ValueError("now must be a timezone-aware datetime")
    return now


def _seen_document(seen: dict[str, datetime], floor: datetime | None) -> dict[str, Any]:
    # utc_timestamp(parse_timestamp(s)) == s for every valid s, so nothing is lost here.
    return {
        "version": STORE_FORMAT_VERSION,
        "seen": {mid: utc_timestamp(sent) for mid, sent in seen.items()},
        "floor": utc_timestamp(floor) if floor is not None else None,
    }


def replay_guard(data_dir: Path, username: str,
                 window: timedelta = DEFAULT_REPLAY_WINDOW) -> ReplayGuard:
    """The replay guard of ``username``: ``<user_dir>/seen_messages.json``."""
    return ReplayGuard(user_dir(data_dir, username) / SEEN_MESSAGES_FILE, window)
