"""Desktop notifications through the platform's own notifier, without a library.

- Linux and the BSDs: `notify-send` (libnotify-bin; it speaks D-Bus to whatever
  notification daemon the desktop runs).
- macOS: `osascript` with `display notification`; the texts travel as arguments of an
  `on run argv` handler, never spliced into the script, so a message cannot be AppleScript.
- Elsewhere (or when the program is missing): nothing, and `available` says so.

Notification servers render a subset of HTML in the body, so text from the network is
escaped first: it is shown, never interpreted. The notifier runs as a child process that
is not waited for (the window must not block on D-Bus); finished children are reaped on
the next call, and at most `MAX_RUNNING` run at once, so a burst of messages cannot pile
up processes.
"""
from __future__ import annotations

import html
import logging
import shutil
import subprocess
import sys
from typing import Sequence

log = logging.getLogger("gapshape.gui")

APP_NAME = "Gapshape"
MAX_RUNNING = 4
TITLE_CHARS, BODY_CHARS = 80, 300


def notify_command(title: str, body: str, *, platform: str = sys.platform,
                   which: object = shutil.which, icon: str = "") -> list[str] | None:
    """The command line that shows one notification here, or None if there is no way."""
    title, body = title[:TITLE_CHARS], body[:BODY_CHARS]
    if platform == "darwin":
        if not which("osascript"):  # type: ignore[operator]
            return None
        return ["osascript", "-e", "on run argv", "-e",
                "display notification (item 2 of argv) with title (item 1 of argv)",
                "-e", "end run", title, body]
    if platform.startswith(("linux", "freebsd", "openbsd", "netbsd")):
        program = which("notify-send")  # type: ignore[operator]
        if not program:
            return None
        command = [str(program), "--app-name", APP_NAME, "--expire-time", "8000"]
        if icon:
            command += ["--icon", icon]
        # "--" ends the options: a message starting with "-" is text, not an option.
        return [*command, "--", html.escape(title, quote=False), html.escape(body, quote=False)]
    return None


class Notifier:
    """Shows desktop notifications; `enabled` is the window's setting."""

    def __init__(self, enabled: bool = True, icon: str = "") -> None:
        self.enabled = enabled
        self.icon = icon
        self.sent: list[tuple[str, str]] = []  # what was shown, newest last (bounded)
        self._running: list[subprocess.Popen[bytes]] = []

    @property
    def available(self) -> bool:
        return notify_command("t", "b") is not None

    def notify(self, title: str, body: str) -> bool:
        """Show one notification (True) unless turned off, unavailable or too many run."""
        if not self.enabled:
            return False
        self._running = [p for p in self._running if p.poll() is None]
        if len(self._running) >= MAX_RUNNING:
            return False
        command = notify_command(title, body, icon=self.icon)
        if command is None:
            return False
        try:
            process = subprocess.Popen(command, stdin=subprocess.DEVNULL,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        except OSError as exc:
            log.warning("could not show a notification: %s", exc)
            return False
        self._running.append(process)
        self.sent.append((title, body))
        del self.sent[:-20]
        return True

    def running(self) -> Sequence[subprocess.Popen[bytes]]:
        return tuple(self._running)
