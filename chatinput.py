"""What the person typed in the desktop client: slash commands or a message
(`interpret_input`), Up/Down history (`InputHistory`) and Tab completion (`TabCompleter`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import commands
from commands import CommandError

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
