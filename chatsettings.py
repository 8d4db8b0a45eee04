"""The desktop client's login checks, plain-words login errors, and what it remembers
(`Settings`: server and username; `Preferences`: theme, notifications).
"""
from __future__ import annotations

import json
import logging
import os
import socket
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path

import identity
import privatestore
from client import LoginError
from errors import GapshapeError
from rooms import normalize_room, validate_name

log = logging.getLogger("gapshape.gui")


DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5050
SETTINGS_FILE = "gui-settings.json"


# -- login --------------------------------------------------------------------------------

@dataclass(frozen=True)
class LoginRequest:
    username: str
    host: str
    port: int
    passphrase: str = ""


def check_login(username: str, host: str, port: str, passphrase: str = "") -> LoginRequest | str:
    """The login form's values, or a sentence saying what to fix."""
    username, host, port = username.strip(), host.strip(), port.strip()
    if not username:
        return "Please enter a username."
    try:
        validate_name(username)
    except GapshapeError as exc:
        return f"That username will not work: {exc.message}."
    if not host:
        return "Please enter the server's address (for example 127.0.0.1)."
    if not port.isdigit() or not 0 < int(port) < 65536:
        return "The port must be a number between 1 and 65535."
    return LoginRequest(username, host, int(port), passphrase)


def check_room_name(text: str) -> str:
    """'Design' or '#design' -> '#design'; raises ValueError with a sentence to show."""
    try:
        return normalize_room(text.strip())
    except GapshapeError as exc:
        raise ValueError(f"That room name will not work: {exc.message}.") from None


_LOGIN_WORDS = {
    "name_taken": "Someone is already logged in as {user}. Choose another name, or wait a "
                  "minute if that was you and your old connection has not timed out yet.",
    "key_mismatch": "The name {user} belongs to a different key on this server. If it is "
                    "yours, log in from the computer that holds your key; otherwise choose "
                    "another name.",
    "auth_failed": "The server did not accept your key's signature. ({detail})",
    "invalid_name": "The server refused that name: {detail}",
    "unsupported_version": "This server speaks a different version of Gapshape: {detail}",
    "server_full": "The server is full right now. Try again in a while.",
    "server_busy": "The server could not check your login just now. Try again in a moment.",
    "rate_limited": "The server asks you to slow down. Try again in a moment.",
    "timeout": "The server at {where} did not answer in time.",
    "closed": "The server at {where} closed the connection during login.",
}
# Login failures that trying again (automatically) cannot fix.
_FATAL_CODES = frozenset({"key_mismatch", "auth_failed", "invalid_name", "unsupported_version",
                          "tls_pin_mismatch", "tls_verify_failed", "identity"})


def login_error_text(exc: BaseException, user: str, host: str, port: int) -> tuple[str, str, bool]:
    """(code, a sentence for the user, whether trying again later may help) for a failure
    of ChatClient(...) or .connect()."""
    where = f"{host}:{port}"
    if isinstance(exc, LoginError):
        template = _LOGIN_WORDS.get(exc.code)
        text = template.format(user=user, where=where, detail=exc.message) if template else exc.message
        return exc.code, text, exc.code not in _FATAL_CODES
    if isinstance(exc, privatestore.PrivateHistoryError):  # says what is wrong on its own
        return "history", str(exc), False
    if isinstance(exc, identity.IdentityError):
        return "identity", f"Your key could not be opened: {exc}", False
    if isinstance(exc, ConnectionRefusedError):
        return "refused", (f"Nothing is answering at {where}. Is the server running, and "
                           "are the address and port right?"), True
    if isinstance(exc, socket.gaierror):
        return "no_such_host", f'The server name "{host}" could not be found.', True
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "timeout", f"The server at {where} did not answer in time.", True
    if isinstance(exc, ssl.SSLError):
        return "tls_failed", f"A secure connection to {where} could not be set up: {exc}", True
    if isinstance(exc, OSError):
        reason = exc.strerror or str(exc) or type(exc).__name__
        return "network", f"Could not reach {where}: {reason}.", True
    return "error", f"Logging in failed: {exc}", False


@dataclass(frozen=True)
class Settings:
    """What the login window remembers between runs (never the passphrase)."""

    username: str = ""
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT


def load_settings(data_dir: Path) -> Settings:
    """The remembered login values; defaults if the file is missing or unreadable."""
    try:
        document = json.loads((Path(data_dir) / SETTINGS_FILE).read_text("utf-8"))
    except (OSError, ValueError):
        return Settings()
    if not isinstance(document, dict):
        return Settings()
    username, host, port = document.get("username"), document.get("host"), document.get("port")
    return Settings(
        username if isinstance(username, str) else "",
        host if isinstance(host, str) and host else DEFAULT_HOST,
        port if isinstance(port, int) and 0 < port < 65536 else DEFAULT_PORT,
    )


def save_settings(data_dir: Path, settings: Settings) -> None:
    """Remember the login values (atomically; failures are logged, never raised)."""
    path = Path(data_dir) / SETTINGS_FILE
    data = json.dumps({"username": settings.username, "host": settings.host,
                       "port": settings.port}, indent=2)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{SETTINGS_FILE}.", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(data)
        os.replace(temp, path)
    except OSError as exc:
        log.warning("could not remember the login settings in %s: %s", path, exc)


PREFERENCES_FILE = "gui-preferences.json"
THEMES = ("system", "light", "dark")


@dataclass(frozen=True)
class Preferences:
    """The window's own settings: its theme and whether to show desktop notifications."""

    theme: str = "system"
    notifications: bool = True


def load_preferences(data_dir: Path) -> Preferences:
    try:
        document = json.loads((Path(data_dir) / PREFERENCES_FILE).read_text("utf-8"))
    except (OSError, ValueError):
        return Preferences()
    if not isinstance(document, dict):
        return Preferences()
    theme, notifications = document.get("theme"), document.get("notifications")
    return Preferences(theme if theme in THEMES else "system",
                       notifications if isinstance(notifications, bool) else True)


def save_preferences(data_dir: Path, preferences: Preferences) -> None:
    """Remember the preferences (atomically; failures are logged, never raised)."""
    path = Path(data_dir) / PREFERENCES_FILE
    data = json.dumps({"theme": preferences.theme,
                       "notifications": preferences.notifications}, indent=2)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{PREFERENCES_FILE}.",
                                    suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(data)
        os.replace(temp, path)
    except OSError as exc:
        log.warning("could not remember the window's preferences in %s: %s", path, exc)
