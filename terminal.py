"""The Gapshape terminal client: one line per event on stdout, commands typed on stdin.

    python client.py --username alice [--host 127.0.0.1] [--port 5050] [--json]
    python terminal.py --username alice ...     (the same; `gapshape` when installed)

    [--data-dir DIR]  where keys and pins live; [--tls] or [--cafile CA.pem] for TLS;
    GAPSHAPE_PASSPHRASE in the environment unlocks a passphrase-protected key.

Each stdin line is run by `ChatClient.execute` (client.py): text goes to the current
conversation (a room, or the contact of `/query`, privately), /commands as commands.py
parses them (/help lists them); end of input quits after every queued line has been sent.
Each event is printed as `[HH:MM:SS] text` (`describe`), or with --json as one JSON object
per line (`event_json`), for scripts. Private lines are tagged `[@bob]` (from bob) or
`[-> @bob]` (to bob). The status line (`status_line`) shows the current conversation and
what is unread, `[#work] (3 unread: #common 2, @bob 1*)`: the prompt on a terminal, a line
of its own when it changes otherwise. Joining a room prints its history, and before it a
`---` line when more was said since the user was last here than that history shows.

Everything printed goes through `sanitize.inert`: text from the network cannot forge
lines or drive the terminal.
"""
from __future__ import annotations

import argparse
import io
import logging
import os
import queue
import sys
import threading
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import TextIO

import identity
import sanitize
from client import ChatClient, LoginError, TlsSettings
from commands import CommandError
from conversations import Gap, gap_hint
from events import (
    Disconnected,
    ErrorEvent,
    Event,
    HistoryPage,
    KeyWarning,
    MemberInfo,
    MemberList,
    Notice,
    NotSent,
    PrivateMessage,
    PrivateRejected,
    RoomJoined,
    RoomLeft,
    RoomList,
    RoomMessage,
    StatusChanged,
    UnreadChanged,
    UserJoined,
    UserLeft,
    UserList,
    Welcome,
)

# -- terminal rendering -------------------------------------------------------------------

def local_time(stamp: str) -> str:
    """'2026-11-29T19:40:00.123Z' -> '20:40:00' in this machine's time zone."""
    try:
        moment = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        moment = datetime.now().astimezone()
    return moment.astimezone().strftime("%H:%M:%S")


_s = sanitize.inert  # every string from the network goes through this before printing


def _private_mark(verified: bool) -> str:
    return "[private, encrypted, verified]" if verified else "[private, encrypted, not verified]"


def _member(m: MemberInfo, with_room: bool = False) -> str:
    note = f": {_s(m.note)}" if m.note else ""
    where = f" in {_s(m.room)}" if with_room else ""
    return f"{_s(m.user)}{where} ({_s(m.status)}{note})"


def _more(complete: bool, count: int, shown: int) -> str:
    return "" if complete else f" ... ({count - shown} more not shown)" if count > shown else " ..."


def describe(event: Event) -> str:
    """One line of text for an event (what the terminal client prints after the time).

    Every field that came from the network is rendered inert (sanitize.inert): control
    characters, escape sequences, bidi controls and newlines are shown escaped, so no
    event can print more than this one line or restyle the terminal."""
    if isinstance(event, RoomMessage):
        mark = " (history)" if event.history else ""
        return f"{_s(event.room)} <{_s(event.user)}> {_s(event.text)}{mark}"
    if isinstance(event, RoomJoined):
        names = ", ".join(f"{_s(m.user)} ({_s(m.status)})" for m in event.members)
        more = _more(event.complete, event.member_count, len(event.members))
        return f"you are in {_s(event.room)} with {names}{more}"
    if isinstance(event, RoomLeft):
        now = f"; now in {_s(event.room_now)}" if event.room_now else "; you are in no room now"
        return f"you left {_s(event.room)}{now}"
    if isinstance(event, HistoryPage):
        more = "; /history for older ones" if event.more else "; that is the beginning"
        return f"{len(event.messages)} earlier messages of {_s(event.room)}{more}"
    if isinstance(event, UserJoined):
        return f"* {_s(event.user)} joined {_s(event.room)}"
    if isinstance(event, UserLeft):
        return f"* {_s(event.user)} left {_s(event.room)} ({_s(event.reason)})"
    if isinstance(event, StatusChanged):
        note = f": {_s(event.note)}" if event.note else ""
        return f"* {_s(event.user)} is now {_s(event.status)}{note}"
    if isinstance(event, MemberList):
        return (f"in {_s(event.room)}: " + ", ".join(_member(m) for m in event.members)
                + _more(event.complete, event.member_count, len(event.members)))
    if isinstance(event, RoomList):
        return ("rooms: " + ", ".join(f"{_s(name)} ({count})" for name, count in event.rooms)
                + _more(event.complete, event.room_count, len(event.rooms)))
    if isinstance(event, UserList):
        return ("online: " + ", ".join(_member(m, with_room=True) for m in event.users)
                + _more(event.complete, event.user_count, len(event.users)))
    return _describe_private_or_local(event)


def _describe_private_or_local(event: Event) -> str:
    if isinstance(event, PrivateMessage):
        if event.outgoing:
            return f"{_private_mark(event.verified)} you -> {_s(event.peer)}: {_s(event.text)}"
        return f"{_private_mark(event.verified)} {_s(event.peer)} -> you: {_s(event.text)}"
    if isinstance(event, UnreadChanged):
        return status_line(event)
    if isinstance(event, PrivateRejected):
        return f"!! rejected a private message from {_s(event.peer)}: {_s(event.reason)}"
    if isinstance(event, KeyWarning):
        user = _s(event.user)
        was = "a key you had verified" if event.verified else "a key you never verified"
        return (f"!!! WARNING: the key of {user} has CHANGED (the pinned one was {was}). "
                f"Pinned: {_s(event.pinned_fingerprint)}. Offered: "
                f"{_s(event.offered_fingerprint)}. Messages to and from {user} are refused "
                f"until you compare the offered fingerprint with {user} in person or by "
                f"phone and type /trust {user}")
    if isinstance(event, Notice):  # local text, several lines for the manual
        return "\n".join(_s(line) for line in event.text.split("\n"))
    if isinstance(event, NotSent):
        where = f"{_s(event.target)} (private)" if event.request == "private" else _s(event.target)
        return f"not sent to {where or 'the server'}: {_s(event.text)} ({_s(event.message)})"
    if isinstance(event, ErrorEvent):
        return f"error: {_s(event.message)}"
    if isinstance(event, Disconnected):
        if event.replaced:
            return (f"disconnected: {_s(event.reason)}. You logged in from another place; "
                    "this client will not reconnect")
        return f"disconnected: {_s(event.reason)}"
    if isinstance(event, Welcome):
        return f"logged in as {_s(event.user)}"
    return _s(repr(event))


def status_line(event: UnreadChanged) -> str:
    """'[#work] (3 unread: #common 2, @bob 1*)': the current conversation, then each
    one with unread messages; '*' marks a mention, '+' a gap (see /unread)."""
    where = f"[{_s(event.current.label)}]" if event.current else "[no conversation]"
    unread = [f"{_s(s.key.label)} {s.unread}{'*' * bool(s.mentions)}{'+' * (s.gap is not None)}"
              for s in event.summaries if s.unread or s.gap is not None]
    if not unread:
        return f"{where} (nothing unread)"
    return f"{where} ({event.total} unread: {', '.join(unread)})"


def gap_line(room: str, gap: Gap) -> str:
    """Said before the history at login when more was missed than it shows: never hidden."""
    return f"--- {_s(room)}: {gap_hint(gap)} in {_s(room)} ---"


def describe_lines(event: Event) -> list[str]:
    """The lines the terminal prints for an event: a private message is tagged with its
    conversation (`[@bob]` from bob, `[-> @bob]` to bob); joining a room also shows its
    history, after a line for the gap before it if more was said since the user was last
    here."""
    lines = [describe(event)]
    if isinstance(event, PrivateMessage):  # the conversation's tag, as a room line has its room
        lines = [f"[{'-> ' if event.outgoing else ''}@{_s(event.peer)}] {lines[0]}"]
    if isinstance(event, RoomJoined) and event.gap is not None:
        lines.append(gap_line(event.room, event.gap))
    if isinstance(event, (RoomJoined, HistoryPage)):
        messages = event.history if isinstance(event, RoomJoined) else event.messages
        lines += [describe(message) for message in messages]
    return lines


def event_time(event: Event) -> str:
    stamp = getattr(event, "time", "")
    return local_time(stamp) if stamp else datetime.now().strftime("%H:%M:%S")


def event_json(event: Event) -> str:
    """One JSON object per event, on one line, inert on a terminal (sanitize.json_line)."""
    return sanitize.json_line({"event": event.kind, **asdict(event)})


# -- terminal client ----------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Gapshape terminal client.")
    p.add_argument("--version", action="version", version="%(prog)s " + __import__("gapshape_version").__version__)
    p.add_argument("--username", required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=5050)
    p.add_argument("--json", action="store_true", help="print events as JSON lines")
    p.add_argument("--data-dir", type=Path,
                   help="where keys and pins live (default: $GAPSHAPE_HOME or the platform's data folder)")
    p.add_argument("--tls", action="store_true", help="connect with TLS (pin the certificate on first use)")
    p.add_argument("--cafile", help="with --tls: verify the server against this CA file instead")
    return p


def make_streams_safe() -> None:
    """Never crash on a character the console cannot show (Windows code pages, LC_ALL=C,
    output redirected to an ASCII file): write it as a backslash escape instead; read
    undecodable input as U+FFFD."""
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="backslashreplace")
    if isinstance(sys.stdin, io.TextIOWrapper):
        sys.stdin.reconfigure(errors="replace")


class Screen:
    """Prints each event (`describe_lines`, or JSON) and keeps the status line: on a
    terminal it is the prompt, redrawn after every event; into a pipe or a file it is
    printed as a line of its own whenever it changes (never twice the same)."""

    def __init__(self, out: TextIO, json_lines: bool, prompt: bool) -> None:
        self.out, self.json_lines, self.prompt = out, json_lines, prompt
        self.status = ""

    def show(self, event: Event) -> None:
        if self.json_lines:
            print(event_json(event), file=self.out, flush=True)
            return
        if isinstance(event, UnreadChanged):
            line = status_line(event)
            if line == self.status:
                return
            self.status = line
            if self.prompt:
                self._draw_prompt()
                return
        if self.prompt:
            self.out.write("\r\x1b[K")  # the prompt line makes room for the event
        stamp = event_time(event)
        for line in describe_lines(event):
            print(f"[{stamp}] {line}", file=self.out)
        self._draw_prompt()

    def _draw_prompt(self) -> None:
        if self.prompt and self.status:
            self.out.write(f"\r\x1b[K{self.status} > ")
        self.out.flush()


def _type_lines(client: ChatClient) -> None:
    """Input thread: run each stdin line; end of input quits like /quit (after every line
    still queued has been sent)."""
    try:
        for line in sys.stdin:
            try:
                if not client.execute(line):
                    return
            except CommandError as exc:
                client.events.put(ErrorEvent("command", str(exc)))
        client.quit()
    except OSError:  # the connection is gone; the event loop reports it
        pass


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    make_streams_safe()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")

    show = Screen(sys.stdout, args.json, sys.stdout.isatty()).show

    tls = TlsSettings(cafile=args.cafile) if (args.tls or args.cafile) else None
    try:
        client = ChatClient(args.username, args.host, args.port, data_dir=args.data_dir,
                            passphrase=os.environ.get("GAPSHAPE_PASSPHRASE"), tls=tls)
        show(client.connect())
    except (LoginError, identity.IdentityError) as exc:  # the message may come from the server
        print(f"cannot log in: {sanitize.inert(str(exc))}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"cannot connect to {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    threading.Thread(target=_type_lines, args=(client,), name="stdin", daemon=True).start()
    try:
        while True:
            try:
                # A timeout, so that Ctrl-C is noticed on Windows too, where a blocking
                # queue get cannot be interrupted.
                event = client.events.get(timeout=0.5)
            except queue.Empty:
                continue
            show(event)
            if isinstance(event, Disconnected):
                return 0
    except KeyboardInterrupt:
        client.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
