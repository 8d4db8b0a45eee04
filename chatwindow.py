"""What the window decides besides the conversation, with no Tk in it: the reconnect
policy (`Backoff`), the title, when to ring and notify (`wants_attention`, mentions of the
user's name), links in text, the system theme, and the words of a key-change warning.
Everything here is re-exported by chatview."""
from __future__ import annotations

import random
import re
from typing import Callable

from chattext import server_time
from client import Event, KeyWarning, PrivateMessage, RoomMessage
from events import PresenceBatch
from rooms import STATUS_ALIASES

STATUS_LABELS = {"online": "online", "away": "away", "dnd": "do not disturb"}

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


def full_time(stamp: str) -> str:
    """'Sunday 29 November 2026, 20:40:05' in local time, for the tooltip over a time."""
    local = server_time(stamp)
    if local is None:
        return ""
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



def status_word(label: str) -> str:
    """The status selector's label ('Do not disturb') -> the protocol word ('dnd')."""
    for word, text in STATUS_LABELS.items():
        if text.casefold() == label.strip().casefold():
            return word
    return STATUS_ALIASES.get(label.strip().lower(), "online")


def _some_and_others(names: list[str], count: int) -> str:
    """'ann, bo and 55 others': the names a batch carries, and how many more there were."""
    others = count - len(names)
    if others > 0:
        return ", ".join(names) + (" and " if names else "") + \
            f"{others} other{'s' if others > 1 else ''}"
    return ", ".join(names)


def presence_text(event: PresenceBatch) -> str:
    """One line for a big room's batch of arrivals and departures (as the terminal says
    it): '→ ann, bo and 55 others joined; ← cy left (230 online)'. Raw text: the model
    makes it safe for Tk."""
    parts = []
    if event.joined_count:
        parts.append(f"→ {_some_and_others(list(event.joined), event.joined_count)} joined")
    if event.left_count:
        parts.append(f"← {_some_and_others([u for u, _ in event.left], event.left_count)} left")
    return f"{'; '.join(parts) or 'no change'} ({event.member_count} online)"
