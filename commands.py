"""What a typed line means: the slash commands, shared by the terminal and the Tk client.

`parse_line` turns one line of input into a `Command`, a `Say` (a room message), or None
(nothing to do), and raises `CommandError` with a message for the user when the line is a
broken command. `manual_text` is the manual `/manual` shows; `complete` is Tab completion.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence


class CommandError(Exception):
    """A slash command the user typed wrongly; the message says how to type it."""


@dataclass(frozen=True)
class CommandSpec:
    name: str
    usage: str
    summary: str
    min_args: int = 0
    max_args: int = 0  # the last argument takes the rest of the line
    aliases: tuple[str, ...] = ()


COMMANDS: tuple[CommandSpec, ...] = (
    CommandSpec("privatemsg", "<user> <message>",
                "send an end-to-end encrypted private message", 2, 2, ("msg", "pm")),
    CommandSpec("query", "[user|#room]", "make a conversation the current one: with a user, "
                "every line you type goes to them as an end-to-end encrypted private message; "
                "with a room, to that room; alone, back to your room (so does /join)", 0, 1),
    CommandSpec("join", "<room>", "join a room (creating it if it does not exist) and make it "
                "the current one; you stay in your other rooms", 1, 1),
    CommandSpec("leave", "[room]", "leave a room (the current one if none is named); in a "
                "/query, close the private conversation", 0, 1,
                ("part",)),
    CommandSpec("history", "[n]", "show the n messages before the oldest one shown in the "
                "current room (default 20, at most 100)", 0, 1),
    CommandSpec("unread", "", "list the conversations with unread messages (* you were "
                "mentioned; + more was said while you were away than the login showed)"),
    CommandSpec("rooms", "", "list the rooms and how many people are in each"),
    CommandSpec("list", "", "list the people in the current room and their status"),
    CommandSpec("knowrooms", "", "list everyone online and the room they are in", aliases=("who",)),
    CommandSpec("status", "<online|away|dnd> [note]",
                "set your status (dnd refuses private messages); aliases: afk, busy, "
                "do-not-disturb", 1, 2),
    CommandSpec("fingerprint", "[user]",
                "show your key fingerprint, or a contact's, to compare out of band", 0, 1),
    CommandSpec("trust", "<user> [fingerprint]",
                "accept the changed key shown in a key-change warning (give its digits to "
                "make sure it is the one you compared)", 1, 2),
    CommandSpec("verify", "<user> [fingerprint]",
                "mark a contact's key as verified after comparing fingerprints in person or "
                "by phone (give the digits they read out to have them checked)", 1, 2),
    CommandSpec("manual", "", "show this manual", aliases=("help",)),
    CommandSpec("quit", "", "disconnect and leave", aliases=("exit",)),
)

STATUS_WORDS = ("online", "away", "dnd")

_BY_NAME = {name: spec for spec in COMMANDS for name in (spec.name, *spec.aliases)}


@dataclass(frozen=True)
class Command:
    name: str  # canonical name, e.g. "privatemsg" for /pm
    args: tuple[str, ...]


@dataclass(frozen=True)
class Say:
    text: str


def parse_line(line: str) -> Command | Say | None:
    """Interpret one line of input. '//text' sends '/text' as a message."""
    text = line.rstrip("\r\n")
    if not text.strip():
        return None
    if text.startswith("//"):
        return Say(text[1:])
    if not text.startswith("/"):
        return Say(text)
    word, _, rest = text[1:].partition(" ")
    spec = _BY_NAME.get(word.lower())
    if spec is None:
        raise CommandError(f"unknown command /{word}; the commands are {command_list()} "
                           "(/manual explains each)")
    return Command(spec.name, _split_args(spec, rest))


def _split_args(spec: CommandSpec, rest: str) -> tuple[str, ...]:
    args: list[str] = []
    remaining = rest.strip()
    while remaining and len(args) < spec.max_args - 1:
        head, _, remaining = remaining.partition(" ")
        args.append(head)
        remaining = remaining.lstrip()
    if remaining:
        if spec.max_args == 0:
            raise CommandError(f"/{spec.name} takes no arguments")
        args.append(remaining)
    if len(args) < spec.min_args:
        raise CommandError(f"usage: /{spec.name} {spec.usage}".rstrip())
    return tuple(args)


def command_list() -> str:
    return ", ".join(f"/{spec.name}" for spec in COMMANDS)


def manual_text() -> str:
    """The manual: every command with its usage and what it does."""
    lines = ["Gapshape commands", ""]
    for spec in COMMANDS:
        usage = f"/{spec.name} {spec.usage}".rstrip()
        aliases = f"  (also {', '.join('/' + a for a in spec.aliases)})" if spec.aliases else ""
        lines.append(f"{usage}{aliases}")
        lines.append(f"    {spec.summary}")
    lines += ["", "Anything else you type is sent to the current conversation: your room, "
              "or the contact of /query (privately). Start a message with // to send a line "
              "that begins with /."]
    return "\n".join(lines)


def complete(text: str, usernames: Sequence[str], rooms: Sequence[str] = ()) -> list[str]:
    """Completions for the word being typed at the end of `text` (Tab).

    The first word completes to command names; after a command that takes a user or a
    room, and anywhere in a plain message, the last word completes to usernames (rooms
    after /join, status words after /status). Returns full replacement lines, sorted.
    """
    head, _, word = text.rpartition(" ")
    if not head and word.startswith("/"):
        prefix = word[1:].lower()
        return sorted(f"/{spec.name} " for spec in COMMANDS if spec.name.startswith(prefix))
    command = head.split(" ", 1)[0].lower() if head.startswith("/") else ""
    if command == "/join" or (command == "/query" and word.startswith("#")):
        candidates = list(rooms)
    elif command == "/status" and " " not in head:
        candidates = list(STATUS_WORDS)
    else:
        candidates = list(usernames)
    lowered = word.lower()
    matches = sorted({c for c in candidates if c.lower().startswith(lowered)}, key=str.lower)
    joiner = head + " " if head else ""
    return [f"{joiner}{match}" for match in matches]
