"""What the Gapshape window shows and decides, with no Tk in it.

clientgui.py builds the widgets; everything that decides *what* they show lives here, so
it can be tested without a display:

- `tk_safe` makes any text safe to hand to Tk 8.6 (astral characters such as emoji become
  a visible substitute, control and bidi-override characters cannot garble the view).
- `format_time`, `NameColours` and the `Line`/`Span` records: how an event reads.
- `ChatModel`: the session as the window sees it (room, members, rooms, status, per-room
  transcripts, connection state). Events go in through `apply`; the window asks
  `take_changes()` once per tick for what to redraw.
- `InputHistory` (Up/Down), `TabCompleter` (Tab), `Backoff` (reconnect policy),
  `window_title` and `wants_attention` (title and bell decisions), login validation,
  plain-words login errors and the remembered settings.
- `ClientLink`: the never-blocking proxy the window uses to drive a `client.ChatClient`.
  Its methods only queue work for its own worker thread; everything that comes back
  (client events and the link's own `Connected` / `ConnectFailed`) is handed to `post`,
  which the window points at a queue it drains with `after()`. Nothing here touches Tk.
"""
from __future__ import annotations

import collections
import hashlib
import json
import logging
import os
import queue
import random
import re
import socket
import ssl
import tempfile
import threading
import unicodedata
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import commands
import identity
from client import (
    ChatClient,
    Disconnected,
    ErrorEvent,
    Event,
    KeyWarning,
    LoginError,
    MemberInfo,
    MemberList,
    Notice,
    PrivateMessage,
    PrivateRejected,
    RoomJoined,
    RoomList,
    RoomMessage,
    StatusChanged,
    TlsSettings,
    UserJoined,
    UserLeft,
    UserList,
    Welcome,
)
from client import NotSent as LibraryNotSent
from commands import CommandError
from errors import GapshapeError
from rooms import COMMON_ROOM, STATUS_ALIASES, normalize_room, validate_name

log = logging.getLogger("gapshape.gui")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5050
SETTINGS_FILE = "gui-settings.json"
TRANSCRIPT_LIMIT = 2000  # lines kept per room
NOTE_SHOWN = 24  # characters of a status note shown in the member list
STATUS_LABELS = {"online": "online", "away": "away", "dnd": "do not disturb"}
STATUS_COLOURS = {"online": "#2e9e4f", "away": "#e0a100", "dnd": "#d93025"}


# -- text Tk can take ---------------------------------------------------------------------

REPLACEMENT = "\ufffd"
# Characters that would let one message rearrange or hide the text around it.
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_INVISIBLE_ASTRAL = (
    (0x1F3FB, 0x1F3FF),  # skin-tone modifiers: meaningless once the emoji is replaced
    (0xE0000, 0xE007F),  # tag characters (subdivision flags)
    (0xE0100, 0xE01EF),  # variation selectors supplement
)
_REGIONAL_A = 0x1F1E6


def tk_can_show_astral(tcl_patchlevel: str, windowing: str = "x11",
                       emoji_font: bool = True) -> bool:
    """Whether Tk draws characters beyond the Basic Multilingual Plane (emoji) as glyphs.

    Tcl/Tk 9 stores any code point. 8.6 (TCL_UTF_MAX 3) stores them as surrogate pairs,
    but from 8.6.10 on it joins the pairs when drawing and moves the cursor over a pair
    as one character (checked under Xvfb with Tk 8.6.13). On X11 a glyph also needs a
    font that has it (fontconfig falls back to any installed font, e.g. Noto Color Emoji,
    Symbola or DejaVu Sans for the emoticons): `emoji_font` says whether one exists.
    Windows and macOS ship emoji fonts."""
    try:
        parts = [int(part) for part in tcl_patchlevel.split(".")[:3]]
    except ValueError:
        return False
    if parts and parts[0] >= 9:
        return True
    return tuple(parts) >= (8, 6, 10) and (windowing != "x11" or emoji_font)


# -- right-to-left text -------------------------------------------------------------------

_RTL_FIRST, _RTL_LAST = 0x0590, 0x08FF  # Hebrew, Arabic, Syriac, Thaana, NKo, ...


def has_rtl(text: str) -> bool:
    return any(_RTL_FIRST <= ord(ch) <= _RTL_LAST or 0xFB1D <= ord(ch) <= 0xFEFC for ch in text)


def bidi_display(text: str) -> str:
    """`text` in visual order for Tk 8.6, which draws every run left to right and does not
    join Arabic letters (seen under Xvfb): Arabic is shaped into its presentation forms
    (arabic-reshaper), then each line is reordered by the Unicode bidirectional algorithm
    (python-bidi). Without those libraries the text is returned as it is."""
    if not has_rtl(text):
        return text
    try:
        from bidi import get_display
    except ImportError:
        return text
    try:
        import arabic_reshaper
        shaped = arabic_reshaper.reshape(text)
    except ImportError:
        shaped = text
    return "\n".join(get_display(line) for line in shaped.split("\n"))


def tk_safe(text: str, *, astral: bool = False, newlines: bool = True) -> str:
    """`text` as something Tk displays faithfully and cannot be crashed or garbled by.

    - Characters outside the Basic Multilingual Plane (emoji, rare CJK, maths letters)
      become a visible substitute unless `astral` says Tk can take them: a symbol reads as
      its name in brackets ("[grinning face]"), a pair of regional indicators as
      "[flag US]", anything else as U+FFFD; skin-tone modifiers and tag characters vanish.
    - Lone surrogates (which make Tk raise) and control characters (NUL cuts the text
      short in Tk) become U+FFFD; tabs stay, and newlines stay when `newlines` is true
      (carriage returns are dropped).
    - Bidirectional override and isolate controls become U+FFFD, so one message cannot
      reorder the rest of its line.
    """
    if text.isascii() and text.isprintable():
        return text
    out: list[str] = []
    pending_flag = ""
    for ch in text:
        code = ord(ch)
        if _REGIONAL_A <= code < _REGIONAL_A + 26 and not astral:
            letter = chr(ord("A") + code - _REGIONAL_A)
            if pending_flag:
                out.append(f"[flag {pending_flag}{letter}]")
                pending_flag = ""
            else:
                pending_flag = letter
            continue
        if pending_flag:
            out.append(f"[{pending_flag}]")
            pending_flag = ""
        if code > 0xFFFF:
            if astral:
                out.append(ch)
            elif any(low <= code <= high for low, high in _INVISIBLE_ASTRAL):
                continue
            else:
                out.append(_astral_substitute(ch))
        elif 0xD800 <= code <= 0xDFFF or ch in _BIDI_CONTROLS:
            out.append(REPLACEMENT)
        elif ch == "\n":
            out.append("\n" if newlines else " ")
        elif ch == "\r":
            continue
        elif ch == "\t":
            out.append(ch)
        elif unicodedata.category(ch) == "Cc":
            out.append(REPLACEMENT)
        else:
            out.append(ch)
    if pending_flag:
        out.append(f"[{pending_flag}]")
    return "".join(out)


def _astral_substitute(ch: str) -> str:
    if unicodedata.category(ch) in ("So", "Sk", "Sm"):
        name = unicodedata.name(ch, "")
        if name:
            return f"[{name.lower()}]"
    return REPLACEMENT


def join_surrogates(text: str) -> str:
    """Text read back from a Tk 8.6 widget, with surrogate pairs joined into code points.

    A lone surrogate (which no encoder accepts) becomes U+FFFD."""
    if not any(0xD800 <= ord(ch) <= 0xDFFF for ch in text):
        return text
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


# -- times and colours --------------------------------------------------------------------

def format_time(stamp: str, now: datetime | None = None) -> str:
    """A server time ('2026-11-29T19:40:00.123Z') in local time: '20:40', or with the
    date ('28 Nov 20:40') when it is not today. Unreadable stamps give ''."""
    try:
        moment = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except (ValueError, AttributeError):
        return ""
    if moment.tzinfo is None:
        return ""
    local = moment.astimezone()
    today = (now or datetime.now().astimezone()).astimezone().date()
    if local.date() == today:
        return local.strftime("%H:%M")
    if local.year == today.year:
        return f"{local.day} {local.strftime('%b %H:%M')}"
    return f"{local.day} {local.strftime('%b %Y %H:%M')}"


# Twelve hues, each readable on white (WCAG contrast of at least 4.5:1).
NAME_PALETTE = (
    "#c62828", "#1565c0", "#2e7d32", "#7b1fa2", "#bf360c", "#00838f",
    "#ad1457", "#3949ab", "#827717", "#6d4c41", "#00796b", "#5e35b1",
)
OWN_COLOUR = "#1f2937"


def _name_hash(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.casefold().encode("utf-8")).digest()[:4], "big")


class NameColours:
    """A colour per sender: stable for a name, and distinct while the palette lasts.

    A name's first choice comes from a hash of the name (the same in every run and on
    every machine); a name whose first choice is already taken by another name moves to
    the next free colour. Once assigned, a name keeps its colour for the session.
    """

    def __init__(self, me: str = "", palette: Sequence[str] = NAME_PALETTE) -> None:
        self.me = me
        self.palette = tuple(palette)
        self._assigned: dict[str, str] = {}

    def __call__(self, name: str) -> str:
        key = name.casefold()
        if self.me and key == self.me.casefold():
            return OWN_COLOUR
        colour = self._assigned.get(key)
        if colour is None:
            start = _name_hash(name) % len(self.palette)
            used = set(self._assigned.values())
            colour = self.palette[start]
            for step in range(len(self.palette)):
                candidate = self.palette[(start + step) % len(self.palette)]
                if candidate not in used:
                    colour = candidate
                    break
            self._assigned[key] = colour
        return colour


# -- lines of the conversation ------------------------------------------------------------

@dataclass(frozen=True)
class Span:
    """A run of text with style tags; `image` names a picture shown instead (e.g. "lock")."""

    text: str
    tags: tuple[str, ...] = ()
    image: str = ""


@dataclass(frozen=True)
class Line:
    """One line of the conversation. `kind` styles the whole line: message, own, history,
    mention, system, private, warning, error, notice, divider."""

    kind: str
    spans: tuple[Span, ...]
    message_id: int | None = None
    stamp: str = ""  # the server's time, for the full date on hover
    sender: str = ""  # who wrote it (for "message this person" and "fingerprint")
    body: str = ""  # the text as it was sent, for "copy"

    @property
    def text(self) -> str:
        return "".join(span.text for span in self.spans)


def colour_tag(colour: str) -> str:
    """The tag that paints text in `colour` (the window creates it on first use)."""
    return f"fg{colour}"


# -- what the user typed ------------------------------------------------------------------

@dataclass(frozen=True)
class InputAction:
    """What the window does with a line from the input box.

    kind: "send" (hand `line` to the client), "manual" (open the manual window), "quit",
    "error" (show `message`, send nothing), "nothing"."""

    kind: str
    line: str = ""
    message: str = ""
    command: str = ""


def interpret_input(line: str) -> InputAction:
    """Decide locally what a typed line is, with the same parser as the terminal client."""
    try:
        parsed = commands.parse_line(line)
    except CommandError as exc:
        return InputAction("error", line, str(exc))
    if parsed is None:
        return InputAction("nothing")
    if isinstance(parsed, commands.Say):
        return InputAction("send", line)
    if parsed.name == "manual":
        return InputAction("manual", line, command="manual")
    if parsed.name == "quit":
        return InputAction("quit", line, command="quit")
    return InputAction("send", line, command=parsed.name)


class InputHistory:
    """Up/Down recall of earlier lines, like a shell: the line being typed is kept as a
    draft and comes back after the newest entry."""

    def __init__(self, limit: int = 500) -> None:
        self.limit = limit
        self._lines: list[str] = []
        self._position = 0
        self._draft = ""

    def add(self, line: str) -> None:
        if line.strip() and (not self._lines or self._lines[-1] != line):
            self._lines.append(line)
            del self._lines[:-self.limit]
        self._position = len(self._lines)
        self._draft = ""

    def older(self, current: str) -> str | None:
        """The line before the one shown (None at the oldest)."""
        if self._position == 0:
            return None
        if self._position == len(self._lines):
            self._draft = current
        self._position -= 1
        return self._lines[self._position]

    def newer(self, current: str) -> str | None:
        """The line after the one shown, then the draft (None when already on the draft)."""
        if self._position >= len(self._lines):
            return None
        self._position += 1
        if self._position == len(self._lines):
            return self._draft
        return self._lines[self._position]


def _common_prefix(items: Sequence[str]) -> str:
    first, last = min(items, key=str.lower), max(items, key=str.lower)
    size = 0
    while size < min(len(first), len(last)) and first[size].lower() == last[size].lower():
        size += 1
    return first[:size]


class TabCompleter:
    """Tab: one match completes; several complete their common prefix and list themselves;
    pressing Tab again cycles through them."""

    def __init__(self) -> None:
        self._cycle: list[str] = []
        self._index = 0
        self._shown = ""

    def reset(self) -> None:
        self._cycle, self._index, self._shown = [], 0, ""

    def complete(self, text: str, usernames: Sequence[str], rooms: Sequence[str]) -> tuple[str, str]:
        """(new text of the input box, a hint to show, e.g. the candidates)."""
        if self._cycle and text == self._shown:
            self._index = (self._index + 1) % len(self._cycle)
            self._shown = self._cycle[self._index]
            return self._shown, self._hint(self._cycle)
        self.reset()
        matches = [self._finish(text, match) for match in commands.complete(text, usernames, rooms)]
        head, _, word = text.rpartition(" ")
        if not matches and head.strip().lower() == "/join" and word and not word.startswith("#"):
            # the '#' is optional when typing a room name: "/join d" completes "#design"
            matches = [self._finish(text, match) for match in
                       commands.complete(f"{head} #{word}", usernames, rooms)]
        if not matches:
            return text, "no completions"
        if len(matches) == 1:
            return matches[0], ""
        prefix = _common_prefix(matches)
        if len(prefix) > len(text):
            return prefix, self._hint(matches)
        self._cycle, self._index, self._shown = matches, 0, matches[0]
        return matches[0], self._hint(matches)

    @staticmethod
    def _finish(text: str, match: str) -> str:
        if match.endswith(" "):
            return match
        if " " not in match and not text.startswith("/"):
            return match + ": "  # a name at the start of a message addresses that person
        return match + " "

    @staticmethod
    def _hint(matches: Sequence[str]) -> str:
        words = [m.rstrip(": ").rsplit(" ", 1)[-1] for m in matches]
        shown = ", ".join(words[:12])
        return shown + (f" and {len(words) - 12} more" if len(words) > 12 else "")


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


# -- reconnecting, title, attention -------------------------------------------------------

class Backoff:
    """Reconnect delays: `first`, doubling up to `limit`, each spread by +-`jitter` so that
    many clients dropped at once do not return in step. `reset()` after a success.

    The limit is short (2 s) because a person waits for the window, not a daemon: a
    refused connection costs the server next to nothing, and the window also probes the
    port (`ServerProbe`) so it comes back as soon as the server does."""

    def __init__(self, first: float = 0.5, factor: float = 2.0, limit: float = 2.0,
                 jitter: float = 0.2, rng: Callable[[], float] = random.random) -> None:
        self.first, self.factor, self.limit, self.jitter, self.rng = first, factor, limit, jitter, rng
        self.attempts = 0

    def next_delay(self) -> float:
        base = min(self.limit, self.first * self.factor ** self.attempts)
        self.attempts += 1
        spread = base * self.jitter * (2 * self.rng() - 1)
        return max(0.1, min(self.limit, base + spread))

    def reset(self) -> None:
        self.attempts = 0


def window_title(user: str, room: str, connection: str, unread: int = 0) -> str:
    """'alice in #common · connected — Gapshape', marked '(2) ' for unseen private messages."""
    mark = f"({unread}) " if unread else ""
    if not user:
        return f"{mark}Gapshape — Log in"
    where = f"{user} in {room}" if room else user
    return f"{mark}{where} · {connection} — Gapshape"


def wants_attention(event: Event, *, focused: bool, own_status: str, me: str = "") -> bool:
    """Ring the bell, mark the title and notify the desktop? For a private message, or a
    room message that mentions `me`, that arrives while the window is not focused, unless
    one's own status is do-not-disturb."""
    if focused or own_status == "dnd":
        return False
    if isinstance(event, PrivateMessage):
        return not event.outgoing
    if isinstance(event, RoomMessage):
        return (bool(me) and not event.own and not event.history
                and event.user.casefold() != me.casefold() and _mentions(event.text, me))
    return False


NOTIFICATION_CHARS = 200  # of a message's text shown in a desktop notification


def notification_text(event: Event) -> tuple[str, str]:
    """(title, body) of the desktop notification for an event that wants attention."""
    if isinstance(event, PrivateMessage):
        title = f"{event.peer} (private message)"
    elif isinstance(event, RoomMessage):
        title = f"{event.user} in {event.room}"
    else:
        return "Gapshape", ""
    text = " ".join(event.text.split())
    if len(text) > NOTIFICATION_CHARS:
        text = text[:NOTIFICATION_CHARS - 1] + "…"
    return title, text


def should_autoscroll(view_bottom: float) -> bool:
    """Follow new lines only if the user has not scrolled up (`view_bottom` from yview)."""
    return view_bottom >= 0.999


def logged_in_elsewhere(reason: str) -> bool:
    """The server closed this connection because the same user logged in on another
    device: reconnecting by itself would take the name back and ping-pong between them."""
    return "logged in elsewhere" in reason.casefold()


def full_time(stamp: str) -> str:
    """'Sunday 29 November 2026, 20:40:05' in local time, for the tooltip over a time."""
    try:
        moment = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except (ValueError, AttributeError):
        return ""
    if moment.tzinfo is None:
        return ""
    local = moment.astimezone()
    return f"{local.strftime('%A')} {local.day} {local.strftime('%B %Y, %H:%M:%S')}"


_LINK = re.compile(r"\b(?:https?://|www\.)[^\s<>\"']+", re.IGNORECASE)


def find_links(text: str) -> list[tuple[int, int, str]]:
    """(start, end, url) of each web link in `text`; trailing punctuation is not part of
    it, and 'www.x' opens as 'https://www.x'. Only http and https are ever opened."""
    found = []
    for match in _LINK.finditer(text):
        start, url = match.start(), match.group(0)
        while url and url[-1] in ".,;:!?)]}'":
            if url[-1] == ")" and url.count("(") >= url.count(")"):
                break  # a bracket that belongs to the link, as in wiki/Tk_(toolkit)
            url = url[:-1]
        if len(url) <= 4:
            continue
        target = url if url.lower().startswith("http") else "https://" + url
        found.append((start, start + len(url), target))
    return found


def system_theme(gtk_theme: str = "", color_scheme: str = "", apple_style: str = "") -> str:
    """'dark' or 'light' from what the desktop says: GNOME's color-scheme
    ('prefer-dark'), a GTK theme name ending in '-dark', or macOS's AppleInterfaceStyle
    ('Dark'). Light when nothing says otherwise."""
    hints = (color_scheme.strip("'\" \n").lower(), gtk_theme.strip("'\" \n").lower(),
             apple_style.strip().lower())
    if hints[0] == "prefer-dark" or hints[1].endswith(("-dark", ":dark")) or hints[2] == "dark":
        return "dark"
    return "light"


@dataclass(frozen=True)
class NotSent(ErrorEvent):
    """The link could not send a typed `line` (offline, or the client refused it)."""

    line: str = ""


@dataclass(frozen=True)
class ServerReachable(Event):
    """`ServerProbe` found the server's port answering again."""

    where: str


# -- what was sent and not (yet) confirmed -----------------------------------------------

@dataclass(frozen=True)
class Pending:
    """A typed line the client sent and the server has not echoed yet."""

    line: str
    kind: str  # "message" or "private"
    peer: str
    text: str
    sent_at: float


class Outbox:
    """Typed messages waiting for the server's echo, so a refusal can give the person
    their text back instead of losing it.

    The server echoes a room message to its sender and answers a private message with
    `private_sent`; a refusal is an `error` whose `request` names the frame type (and, on
    newer servers, whose `ref` names the frame; the client library does not pass that on
    yet, so the oldest waiting line of that kind is the one refused: frames are answered
    in order). Bounded: at most `limit` lines, each forgotten after `patience` seconds."""

    def __init__(self, limit: int = 50, patience: float = 30.0,
                 clock: Callable[[], float] | None = None) -> None:
        import time as _time
        self.limit, self.patience = limit, patience
        self._clock = clock or _time.monotonic
        self._waiting: collections.deque[Pending] = collections.deque()

    def __len__(self) -> int:
        return len(self._waiting)

    def sent(self, line: str) -> None:
        try:
            parsed = commands.parse_line(line)
        except CommandError:
            return
        if isinstance(parsed, commands.Say):
            self._keep(Pending(line, "message", "", parsed.text, self._clock()))
        elif isinstance(parsed, commands.Command) and parsed.name == "privatemsg":
            self._keep(Pending(line, "private", parsed.args[0], parsed.args[1], self._clock()))

    def _keep(self, pending: Pending) -> None:
        self._expire()
        self._waiting.append(pending)
        while len(self._waiting) > self.limit:
            self._waiting.popleft()

    def _expire(self) -> None:
        now = self._clock()
        while self._waiting and now - self._waiting[0].sent_at > self.patience:
            self._waiting.popleft()

    def confirmed(self, event: Event) -> None:
        """The server's echo of one of our lines arrived: it was sent."""
        if isinstance(event, RoomMessage) and event.own and not event.history:
            self._remove(lambda p: p.kind == "message" and p.text == event.text)
        elif isinstance(event, PrivateMessage) and event.outgoing:
            self._remove(lambda p: (p.kind == "private" and p.text == event.text
                                    and p.peer.casefold() == event.peer.casefold()))

    def refused(self, event: ErrorEvent) -> Pending | None:
        """The line this error refused (None: the error was about something else)."""
        line = getattr(event, "line", "")
        if line:
            return self._remove(lambda p: p.line == line) or Pending(line, "", "", "", 0.0)
        kind = {"message": "message", "private": "private", "get_key": "private"}.get(
            event.request)
        if kind is None:
            return None
        self._expire()
        text = getattr(event, "text", "")  # the library's NotSent names the text it refused
        if text:
            found = self._remove(lambda p: p.kind == kind and p.text == text)
            if found is not None:
                return found
        return self._remove(lambda p: p.kind == kind)

    def _remove(self, match: Callable[[Pending], bool]) -> Pending | None:
        for pending in self._waiting:
            if match(pending):
                self._waiting.remove(pending)
                return pending
        return None


# -- the session as the window sees it ----------------------------------------------------

@dataclass
class Changes:
    """What changed since the window last asked: lines for the visible room and the parts
    to redraw. `redraw` means the visible room changed: show its whole transcript."""

    lines: list[Line] = field(default_factory=list)
    redraw: bool = False
    members: bool = False
    rooms: bool = False
    title: bool = False
    status: bool = False
    banner: bool = False
    connection: bool = False
    bell: bool = False
    manual: bool = False
    unsent: list[tuple[str, str]] = field(default_factory=list)  # (typed line, why)
    notify: list[tuple[str, str]] = field(default_factory=list)  # (title, body)


@dataclass(frozen=True)
class Restore:
    """What to ask for again after a reconnect: a room other than the one the server puts
    us in, and a status other than online (None: nothing to do)."""

    room: str | None
    status: str | None
    note: str = ""


# Connection states, as the title says them.
CONNECTING, CONNECTED, RECONNECTING, OFFLINE = "connecting", "connected", "reconnecting", "offline"


class ChatModel:
    """The session the window displays; fed events, asked for changes.

    It remembers what should survive a reconnect (`wanted_room`, `status`, `note`) and
    keeps one transcript per room, so switching rooms shows what was said there before;
    history a room sends on joining is deduplicated by message id.
    """

    def __init__(self, me: str = "", *, astral: bool = False,
                 now: Callable[[], datetime] | None = None) -> None:
        self.me = me
        self.astral = astral
        self._now = now or (lambda: datetime.now().astimezone())
        self.colours = NameColours(me)
        self.room = ""
        self.wanted_room = COMMON_ROOM
        self.status = "online"
        self.note = ""
        self.connection = CONNECTING
        self.connection_detail = ""
        self.members: dict[str, MemberInfo] = {}
        self.rooms: dict[str, int] = {}
        self.known_users: dict[str, str] = {}  # casefold -> name, for Tab completion
        self.key_warnings: dict[str, KeyWarning] = {}
        self.focused = True
        self.unread = 0
        self.logged_in_once = False
        self._announce_join = False
        self._transcripts: dict[str, collections.deque[Line]] = {}
        self._seen: dict[str, set[int]] = {}
        self._shown_requests: collections.Counter[str] = collections.Counter()
        self._changes = Changes()
        self.outbox = Outbox()

    # -- asking ---------------------------------------------------------------------------

    def take_changes(self) -> Changes:
        changes, self._changes = self._changes, Changes()
        return changes

    def transcript(self, room: str | None = None) -> list[Line]:
        return list(self._transcripts.get(self.room if room is None else room, ()))

    def title(self) -> str:
        return window_title(self.me, self.room, self.connection, self.unread)

    def member_rows(self) -> list[tuple[str, str, str]]:
        """(name, status, text) for the member list: me first, then by name."""
        def order(m: MemberInfo) -> tuple[int, str]:
            return (0 if m.user.casefold() == self.me.casefold() else 1, m.user.casefold())
        rows = []
        for m in sorted(self.members.values(), key=order):
            text = STATUS_LABELS.get(m.status, m.status)
            if m.note:
                note = m.note if len(m.note) <= NOTE_SHOWN else m.note[:NOTE_SHOWN - 1] + "…"
                text += f" · {note}"
            rows.append((tk_safe(m.user, astral=self.astral),
                         m.status, tk_safe(text, astral=self.astral, newlines=False)))
        return rows

    def member_tooltip(self, shown_name: str) -> str:
        """Everything about a person in the member list, uncut: name, status, whole note."""
        for m in self.members.values():
            if tk_safe(m.user, astral=self.astral) == shown_name:
                status = STATUS_LABELS.get(m.status, m.status)
                note = f"\n{tk_safe(m.note, astral=self.astral, newlines=False)}" if m.note else ""
                you = " (you)" if m.user.casefold() == self.me.casefold() else ""
                return f"{tk_safe(m.user, astral=self.astral)}{you} · {status}{note}"
        return ""

    def room_rows(self) -> list[tuple[str, int, bool]]:
        """(room, members, is the current room), #common first, then by name."""
        rooms = dict(self.rooms)
        if self.room:
            rooms.setdefault(self.room, len(self.members))
        names = sorted(rooms, key=lambda r: (r != COMMON_ROOM, r))
        return [(name, rooms[name], name == self.room) for name in names]

    def usernames(self) -> list[str]:
        """Names for Tab completion: the room's members and anyone seen, not me."""
        names = {m.user.casefold(): m.user for m in self.members.values()}
        names.update(self.known_users)
        names.pop(self.me.casefold(), None)
        return sorted(names.values(), key=str.lower)

    # -- told by the window ---------------------------------------------------------------

    def set_focus(self, focused: bool) -> None:
        self.focused = focused
        if focused and self.unread:
            self.unread = 0
            self._changes.title = True

    def expect_listing(self, command: str) -> None:
        """The user typed /rooms, /list or /knowrooms: show the answer in the conversation
        (answers to the window's own background refreshes only update the sidebars)."""
        kind = {"rooms": "rooms", "list": "list", "knowrooms": "users"}.get(command)
        if kind:
            self._shown_requests[kind] += 1

    def set_connection(self, state: str, detail: str = "") -> None:
        self.connection, self.connection_detail = state, detail
        self._changes.connection = self._changes.title = True

    def say(self, kind: str, text: str) -> None:
        """A line from the window itself (errors of the input box, connection news)."""
        self._add(self._system_line(kind, text))

    def dismiss_warning(self, user: str) -> None:
        if self.key_warnings.pop(user.casefold(), None) is not None:
            self._changes.banner = True

    # -- events ---------------------------------------------------------------------------

    def logged_in(self, welcome: Welcome, where: str) -> Restore:
        """A login (first or after a reconnect) succeeded; returns what to re-establish
        (the room and status the user had before the connection dropped)."""
        again = self.logged_in_once
        restore = Restore(
            self.wanted_room if again and self.wanted_room != welcome.room else None,
            self.status if again and self.status != "online" else None,
            self.note)
        self.me = welcome.user
        self.colours.me = welcome.user
        self.logged_in_once = True
        # Said where the user is looking (after a drop: where "Connection lost" was said).
        self._add(self._system_line("system", f"{'Reconnected' if again else 'Connected'} to "
                                              f"{where} as {welcome.user}."),
                  room=self.room or welcome.room)
        self.room = welcome.room
        self._announce_join = True
        self.members.clear()
        self.set_connection(CONNECTED)
        self._changes.redraw = self._changes.members = self._changes.rooms = True
        return restore

    def connection_lost(self, reason: str, retry_in: float | None) -> None:
        state = RECONNECTING if retry_in is not None else OFFLINE
        self.set_connection(state, f"Connection lost: {reason}.")
        self.members.clear()
        self._changes.members = True
        later = f" Trying again in {retry_in:.0f} s." if retry_in is not None else ""
        self._add(self._system_line("error", f"Connection lost: {reason}.{later}"))

    def apply(self, event: Event) -> None:
        """Take one event from the client into the model."""
        handler = self._HANDLERS.get(type(event))
        if handler is not None:
            handler(self, event)

    def _on_room_message(self, event: RoomMessage) -> None:
        self.outbox.confirmed(event)
        self._attention(event)
        self._add(self._message_line(event), room=event.room)

    def _attention(self, event: Event) -> None:
        if wants_attention(event, focused=self.focused, own_status=self.status, me=self.me):
            self.unread += 1
            self._changes.bell = self._changes.title = True
            self._changes.notify.append(notification_text(event))

    def sent(self, line: str) -> None:
        """The window handed a typed line to the link (see `Outbox`)."""
        self.outbox.sent(line)

    def _on_room_joined(self, event: RoomJoined) -> None:
        switching = event.room != self.room
        announce, self._announce_join = switching or self._announce_join, False
        self.room = event.room
        self.wanted_room = event.room
        self.members = {m.user.casefold(): m for m in event.members}
        self.rooms[event.room] = len(event.members)
        for m in event.members:
            self._know(m.user)
        fresh = [m for m in event.history if m.id not in self._seen.get(event.room, set())]
        if fresh:
            self._add(self._divider(f"earlier in {event.room}"))
            for message in fresh:
                self._add(self._message_line(message))
        others = [m.user for m in event.members if m.user.casefold() != self.me.casefold()]
        company = (f"with {', '.join(others[:8])}{' and others' if len(others) > 8 else ''}"
                   if others else "nobody else is here yet")
        if announce or fresh:
            self._add(self._divider(f"you joined {event.room} · {company}"))
        if switching:
            self._changes.redraw = True
        self._changes.members = self._changes.rooms = self._changes.title = True

    def _on_user_joined(self, event: UserJoined) -> None:
        self._know(event.user)
        if event.room == self.room:
            self.members[event.user.casefold()] = MemberInfo(event.user, event.status, event.note)
            self.rooms[event.room] = len(self.members)
            self._changes.members = self._changes.rooms = True
        self._add(self._event_line("system", event.time, f"→ {event.user} joined {event.room}"),
                  room=event.room)

    def _on_user_left(self, event: UserLeft) -> None:
        if event.room == self.room and self.members.pop(event.user.casefold(), None):
            self.rooms[event.room] = len(self.members)
            self._changes.members = self._changes.rooms = True
        reason = event.reason
        if reason.startswith("joined "):
            text = f"← {event.user} went to {reason[len('joined '):]}"
        elif reason in ("", "quit", "goodbye"):
            text = f"← {event.user} left"
        else:
            text = f"← {event.user} left ({reason})"
        self._add(self._event_line("system", event.time, text), room=event.room)

    def _on_status(self, event: StatusChanged) -> None:
        mine = event.user.casefold() == self.me.casefold()
        member = self.members.get(event.user.casefold())
        if member is not None:
            self.members[event.user.casefold()] = MemberInfo(member.user, event.status, event.note,
                                                             member.room)
            self._changes.members = True
        if mine:
            self.status, self.note = event.status, event.note
            self._changes.status = self._changes.title = True
        who = "you" if mine else event.user
        verb = {"online": "are back online" if mine else "is back online",
                "away": "are away" if mine else "is away",
                "dnd": ("do not want to be disturbed (private messages are refused)" if mine
                        else "does not want to be disturbed")}.get(event.status,
                                                                    f"is {event.status}")
        note = f": {event.note}" if event.note else ""
        self._add(self._event_line("system", event.time, f"• {who} {verb}{note}"))

    def _on_member_list(self, event: MemberList) -> None:
        if event.room == self.room:
            self.members = {m.user.casefold(): m for m in event.members}
            self.rooms[event.room] = len(event.members)
            self._changes.members = self._changes.rooms = True
        for m in event.members:
            self._know(m.user)
        if self._take_request("list"):
            people = ", ".join(f"{m.user} ({STATUS_LABELS.get(m.status, m.status)}"
                               f"{': ' + m.note if m.note else ''})" for m in event.members)
            self._add(self._system_line("notice", f"In {event.room}: {people}"))

    def _on_room_list(self, event: RoomList) -> None:
        self.rooms = dict(event.rooms)
        if self.room:
            self.rooms[self.room] = len(self.members) or self.rooms.get(self.room, 0)
        self._changes.rooms = True
        if self._take_request("rooms"):
            listing = ", ".join(f"{name} ({count})" for name, count in event.rooms)
            self._add(self._system_line("notice", f"Rooms: {listing}"))

    def _on_user_list(self, event: UserList) -> None:
        for m in event.users:
            self._know(m.user)
        if self._take_request("users"):
            listing = ", ".join(f"{m.user} in {m.room} ({STATUS_LABELS.get(m.status, m.status)})"
                                for m in event.users)
            self._add(self._system_line("notice", f"Online: {listing}"))

    def _on_private(self, event: PrivateMessage) -> None:
        self._know(event.peer)
        self.outbox.confirmed(event)
        self._attention(event)
        self._add(self._private_line(event))

    def _on_private_rejected(self, event: PrivateRejected) -> None:
        self._add(self._event_line("error", event.time, f"⚠ A private message from {event.peer} "
                                   f"was rejected and not shown: {event.reason}"))

    def _on_key_warning(self, event: KeyWarning) -> None:
        self.key_warnings[event.user.casefold()] = event
        self._changes.banner = self._changes.bell = True
        headline, explanation, pinned, offered = warning_text(event)
        shown = self._now().strftime("%H:%M")
        self._add(Line("warning", (Span(f"{shown}  ", ("time-light",)), Span(headline))))
        self._add(Line("warning", (Span(explanation),)))
        for label, value in (pinned.split(": ", 1), offered.split(": ", 1)):
            self._add(Line("warning", (Span(f"{label}: "), Span(value, ("mono",)))))

    def _on_notice(self, event: Notice) -> None:
        if event.topic == "manual":
            self._changes.manual = True
            return
        if event.topic == "trust":
            for key, warning in list(self.key_warnings.items()):
                if f"trust {warning.user}'s new key" in event.text:
                    self.dismiss_warning(key)
        self._add(self._system_line("notice", event.text))

    def _on_error(self, event: ErrorEvent) -> None:
        refused = self.outbox.refused(event)
        if refused is not None:
            message = event.message if event.message.startswith("Not sent") else \
                f"Not sent: {event.message}"
            self._changes.unsent.append((refused.line, message))
            self._add(self._system_line("error", message))
            return
        self._add(self._system_line("error", f"{event.message}"))

    _HANDLERS: dict[type, Callable[[ChatModel, Any], None]] = {
        RoomMessage: _on_room_message,
        RoomJoined: _on_room_joined,
        UserJoined: _on_user_joined,
        UserLeft: _on_user_left,
        StatusChanged: _on_status,
        MemberList: _on_member_list,
        RoomList: _on_room_list,
        UserList: _on_user_list,
        PrivateMessage: _on_private,
        PrivateRejected: _on_private_rejected,
        KeyWarning: _on_key_warning,
        Notice: _on_notice,
        ErrorEvent: _on_error,
        NotSent: _on_error,
        LibraryNotSent: _on_error,
    }

    # -- building lines -------------------------------------------------------------------

    def _safe(self, text: str) -> str:
        return tk_safe(text, astral=self.astral)

    def _body(self, text: str) -> str:
        """A message's text as Tk should draw it: safe, and right-to-left runs in order."""
        return bidi_display(self._safe(text))

    def _time_span(self, stamp: str) -> Span:
        shown = format_time(stamp, self._now()) if stamp else self._now().strftime("%H:%M")
        return Span(f"{shown or '--:--'}  ", ("time",))

    def _message_line(self, event: RoomMessage) -> Line:
        mine = event.own or event.user.casefold() == self.me.casefold()
        if event.history:
            kind = "history"
        elif mine:
            kind = "own"
        elif self.me and _mentions(event.text, self.me):
            kind = "mention"
        else:
            kind = "message"
        name_tags = ("name", colour_tag(self.colours(event.user)))
        return Line(kind, (self._time_span(event.time),
                           Span(self._safe(event.user), name_tags),
                           Span("  "),
                           Span(self._body(event.text), ("body",))), event.id,
                    stamp=event.time, sender=event.user, body=event.text)

    def _private_line(self, event: PrivateMessage) -> Line:
        arrow = f"you → {event.peer}" if event.outgoing else f"{event.peer} → you"
        # `verified`: the user compared this contact's key out of band (/verify); every
        # private message shown at all has had its signature checked.
        mark = " (verified)" if event.verified else ""
        return Line("private", (self._time_span(event.time),
                                Span("", ("lock",), image="lock"),
                                Span(f" private  {self._safe(arrow)}{mark}", ("private-label",)),
                                Span("  "),
                                Span(self._body(event.text), ("body",))),
                    stamp=event.time, sender=event.peer, body=event.text)

    def _event_line(self, kind: str, stamp: str, text: str) -> Line:
        return Line(kind, (self._time_span(stamp), Span(self._safe(text))), stamp=stamp)

    def _system_line(self, kind: str, text: str) -> Line:
        return Line(kind, (self._time_span(""), Span(self._safe(text))))

    def _divider(self, text: str) -> Line:
        return Line("divider", (Span(f"── {self._safe(text)} ──"),))

    # -- bookkeeping ----------------------------------------------------------------------

    def _add(self, line: Line, room: str | None = None) -> None:
        """Append to a room's transcript (the visible one unless `room` says otherwise)."""
        target = room or self.room or ""
        lines = self._transcripts.setdefault(target, collections.deque(maxlen=TRANSCRIPT_LIMIT))
        if line.message_id is not None:
            seen = self._seen.setdefault(target, set())
            if line.message_id in seen:
                return
            seen.add(line.message_id)
            if len(seen) > 4 * TRANSCRIPT_LIMIT:  # forget the oldest half, roughly
                keep = {ln.message_id for ln in lines if ln.message_id is not None}
                seen.intersection_update(keep)
        lines.append(line)
        if target == (self.room or ""):
            self._changes.lines.append(line)

    def _know(self, user: str) -> None:
        if user:
            self.known_users[user.casefold()] = user

    def _take_request(self, kind: str) -> bool:
        if self._shown_requests[kind] > 0:
            self._shown_requests[kind] -= 1
            return True
        return False


def _mentions(text: str, name: str) -> bool:
    lowered, target = text.casefold(), name.casefold()
    start = lowered.find(target)
    while start >= 0:
        before = lowered[start - 1] if start else " "
        end = start + len(target)
        after = lowered[end] if end < len(lowered) else " "
        if not (before.isalnum() or before in "_-") and not (after.isalnum() or after in "_-"):
            return True
        start = lowered.find(target, start + 1)
    return False


def warning_text(event: KeyWarning) -> list[str]:
    """The lines of a key-change warning, in the conversation and the banner."""
    user = event.user
    return [
        f"⚠ WARNING: {user}'s key has CHANGED.",
        f"Someone may be pretending to be {user}, or {user} may have a new computer. "
        f"Private messages to and from {user} are blocked until you compare fingerprints "
        f"with {user} in person or by phone and then type /trust {user}.",
        # client.KeyWarning carries the readable form /fingerprint shows (12 groups of 5
        # digits), already grouped for reading aloud.
        f"Pinned key: {event.pinned_fingerprint}",
        f"Offered key: {event.offered_fingerprint}",
    ]


def group_hex(fingerprint: str, size: int = 4) -> str:
    """'aaf74119fcd4…' -> 'aaf7 4119 fcd4 …', easier to compare aloud."""
    return " ".join(fingerprint[i:i + size] for i in range(0, len(fingerprint), size))


# -- driving a ChatClient without blocking the window ------------------------------------

@dataclass(frozen=True)
class Connected(Event):
    """The link logged in (first time or again); `where` is host:port."""

    welcome: Welcome
    where: str


@dataclass(frozen=True)
class ConnectFailed(Event):
    """A login attempt failed; `message` is for the user, `retry` says whether trying
    again later may help (a refused connection may; a key mismatch will not)."""

    code: str
    message: str
    retry: bool


@dataclass(frozen=True)
class Progress(Event):
    """Something slow is happening (creating the key on first login)."""

    text: str


class ClientLink:
    """The window's handle on the network. No method blocks: each queues work for one
    worker thread, which connects, sends and closes in order.

    Client events, and `Connected` / `ConnectFailed` / `Progress`, are handed to `post`
    (any thread; the window passes a queue's `put`). Each connection attempt has a
    generation number, and events from a connection that was replaced are dropped, so a
    late `Disconnected` from the old connection never reaches the window.
    """

    def __init__(self, post: Callable[[Event], None], data_dir: Path, *,
                 make_client: Callable[..., ChatClient] = ChatClient, timeout: float = 10.0,
                 tls: TlsSettings | None = None) -> None:
        self._post = post
        self.data_dir = Path(data_dir)
        self._tls = tls
        self._make_client = make_client
        self._timeout = timeout
        self._work: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._client: ChatClient | None = None
        self._generation = 0
        self._ready = False  # whether the current connection's Connected has been posted
        self._held: list[Event] = []
        self._identities: dict[str, identity.Identity] = {}  # casefolded user -> loaded key
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="gapshape-link", daemon=True)
        self._thread.start()

    @property
    def online(self) -> bool:
        return self._client is not None

    # -- what the window calls ------------------------------------------------------------

    def connect(self, request: LoginRequest) -> None:
        """Drop any current connection and log in anew."""
        self._work.put(lambda: self._connect(request))

    def execute(self, line: str) -> None:
        self._work.put(lambda: self._call(lambda c: c.execute(line), line=line))

    def join(self, room: str) -> None:
        self._work.put(lambda: self._call(lambda c: c.join(room)))

    def set_status(self, status: str, note: str = "") -> None:
        self._work.put(lambda: self._call(lambda c: c.set_status(status, note)))

    def request(self, kind: str, *, quiet: bool = True) -> None:
        self._work.put(lambda: self._call(lambda c: c.request(kind), quiet=quiet))

    def quit(self) -> None:
        """Say goodbye to the server; `Disconnected(clean=True)` follows."""
        self._work.put(self._quit)

    def drop(self) -> None:
        """Close the connection without reporting it (before reconnecting by hand)."""
        self._work.put(self._drop)

    def shutdown(self, timeout: float = 3.0) -> None:
        """Close everything and stop the worker (waits at most `timeout`)."""
        self._work.put(self._drop)
        self._work.put(None)
        self._thread.join(timeout)

    # -- the worker -----------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            job = self._work.get()
            if job is None:
                return
            try:
                job()
            except Exception:  # a bug must not kill the link; the log says what happened
                log.exception("link job failed")

    def _deliver(self, generation: int, event: Event) -> None:
        """From a client's reader thread: pass the event on if its connection is current.
        Until `Connected` is posted, events wait, so the window hears of the login first."""
        with self._lock:
            if generation != self._generation:
                return
            if not self._ready:
                self._held.append(event)
                return
            if isinstance(event, Disconnected):
                self._client = None
            self._post(event)

    def _connect(self, request: LoginRequest) -> None:
        self._drop()
        with self._lock:
            generation = self._generation
        known = self._identities.get(request.username.casefold())
        if known is None and not _identity_exists(self.data_dir, request.username):
            self._post(Progress("Creating your encryption key (first login only)…"))
        try:
            client = self._make_client(
                request.username, request.host, request.port, data_dir=self.data_dir,
                passphrase=request.passphrase or None, ident=known, timeout=self._timeout,
                tls=self._tls,
                on_event=lambda event, g=generation: self._deliver(g, event))
            # Reconnecting reuses the unlocked key: no passphrase needed, no file read.
            self._identities[request.username.casefold()] = client.identity
            welcome = client.connect()
        except (LoginError, identity.IdentityError, OSError) as exc:
            code, message, retry = login_error_text(exc, request.username, request.host,
                                                    request.port)
            self._post(ConnectFailed(code, message, retry))
            return
        with self._lock:
            self._client = client
            self._post(Connected(welcome, f"{request.host}:{request.port}"))
            held, self._held = self._held, []
            for event in held:
                if isinstance(event, Disconnected):
                    self._client = None
                self._post(event)
            self._ready = True

    def _call(self, action: Callable[[ChatClient], object], quiet: bool = False,
              line: str = "") -> None:
        """Run `action` on the current client; a failure to send a typed `line` comes back
        as `NotSent`, so the window can give the text back."""
        client = self._client
        if client is None:
            if not quiet:
                self._post(NotSent("offline", "Not sent: you are not connected right now.",
                                   line=line))
            return
        try:
            action(client)
        except CommandError as exc:
            self._post(NotSent("command", str(exc), line=line))
        except ConnectionError:
            pass  # the library went offline and has emitted its own NotSent for the line
        except OSError as exc:
            if not quiet:
                self._post(NotSent("offline", f"Not sent: the connection failed "
                                              f"({exc.strerror or exc}).", line=line))

    def _quit(self) -> None:
        client = self._client
        if client is None:
            self._post(Disconnected("not connected", True))
            return
        client.quit()

    def _drop(self) -> None:
        """Forget the current connection (its events stop here) and close it."""
        with self._lock:
            client, self._client = self._client, None
            self._generation += 1
            self._ready, self._held = False, []
        if client is not None:
            client.close()


def _identity_exists(data_dir: Path, username: str) -> bool:
    """Whether `username` already has a key here (a missing one takes a moment to make)."""
    try:
        return (identity.user_dir(data_dir, username) / identity.IDENTITY_FILE).exists()
    except identity.IdentityError:
        return True  # the name is unusable; ChatClient will say so


class ServerProbe:
    """While the window waits to reconnect, knocks on the server's port every `interval`
    seconds from its own thread and posts `ServerReachable` once something accepts, so
    the window reconnects within a fraction of a second of the server's return instead
    of at the end of a backoff delay. A TCP connect that is closed at once costs the
    server an accept and a close. Never touches Tk."""

    def __init__(self, post: Callable[[Event], None], interval: float = 0.25,
                 timeout: float = 1.0) -> None:
        self._post, self.interval, self.timeout = post, interval, timeout
        self._stop: threading.Event | None = None

    @property
    def running(self) -> bool:
        return self._stop is not None

    def start(self, host: str, port: int) -> None:
        self.stop()
        stop = self._stop = threading.Event()
        threading.Thread(target=self._run, args=(host, port, stop), name="gapshape-probe",
                         daemon=True).start()

    def stop(self) -> None:
        if self._stop is not None:
            self._stop.set()
            self._stop = None

    def _run(self, host: str, port: int, stop: threading.Event) -> None:
        while not stop.wait(self.interval):
            try:
                with socket.create_connection((host, port), timeout=self.timeout):
                    pass
            except OSError:
                continue
            if not stop.is_set():
                self._post(ServerReachable(f"{host}:{port}"))
            return


def status_word(label: str) -> str:
    """The status selector's label ('Do not disturb') -> the protocol word ('dnd')."""
    for word, text in STATUS_LABELS.items():
        if text.casefold() == label.strip().casefold():
            return word
    return STATUS_ALIASES.get(label.strip().lower(), "online")


def batch(items: queue.Queue[Any], limit: int) -> Iterable[Any]:
    """Up to `limit` items that are waiting in `items`, without blocking."""
    for _ in range(limit):
        try:
            yield items.get_nowait()
        except queue.Empty:
            return
