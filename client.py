"""The Gapshape client library and terminal client. No Tk here.

`ChatClient` connects, proves its identity key at login, then runs one reader thread that
turns frames into typed events (the dataclasses below) and puts them on `client.events`, a
queue the caller drains (the terminal prints them; clientgui.py polls it with `after()`).
Methods that send (`say`, `join`, `send_private`, ... and `execute` for a typed line) may
be called from any thread: they only encode and write under a lock.

Private messages are sealed here with crypto.py: the recipient's key is fetched from the
server, checked against the pin in known_keys.json (trust on first use), and a changed key
stops all traffic with that user until `/trust <user>`.

    python client.py --username alice [--host 127.0.0.1] [--port 5050] [--json]
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import itertools
import json
import logging
import os
import queue
import socket
import ssl
import sys
import threading
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

import auth
import crypto
import identity
from commands import Command, CommandError, Say, manual_text, parse_line
from errors import ProtocolError
from protocol import MAX_SERVER_FRAME_SIZE, PROTOCOL_VERSION, Frame, FrameDecoder, encode_frame

log = logging.getLogger("gapshape.client")

CLIENT_NAME = "gapshape-client/1"
MAX_PRIVATE_CHARS = 8000


# -- events -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Event:
    """Base of everything the reader thread reports."""

    @property
    def kind(self) -> str:
        return type(self).__name__


@dataclass(frozen=True)
class MemberInfo:
    user: str
    status: str
    note: str = ""
    room: str = ""


@dataclass(frozen=True)
class Welcome(Event):
    user: str
    room: str
    server_id: str
    time: str


@dataclass(frozen=True)
class RoomMessage(Event):
    id: int
    room: str
    user: str
    text: str
    time: str
    history: bool = False
    own: bool = False


@dataclass(frozen=True)
class RoomJoined(Event):
    room: str
    members: tuple[MemberInfo, ...]
    history: tuple[RoomMessage, ...]
    time: str


@dataclass(frozen=True)
class UserJoined(Event):
    room: str
    user: str
    status: str
    note: str
    time: str


@dataclass(frozen=True)
class UserLeft(Event):
    room: str
    user: str
    reason: str
    time: str


@dataclass(frozen=True)
class StatusChanged(Event):
    user: str
    status: str
    note: str
    time: str


@dataclass(frozen=True)
class MemberList(Event):
    room: str
    members: tuple[MemberInfo, ...]


@dataclass(frozen=True)
class RoomList(Event):
    rooms: tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class UserList(Event):
    users: tuple[MemberInfo, ...]


@dataclass(frozen=True)
class PrivateMessage(Event):
    """A decrypted private message, incoming or (outgoing=True) one we sent."""

    id: int
    peer: str
    text: str
    time: str
    outgoing: bool
    fingerprint: str  # the peer's pinned key
    verified: bool = True


@dataclass(frozen=True)
class PrivateRejected(Event):
    """An incoming envelope that failed verification; its content is never shown."""

    peer: str
    reason: str
    time: str


@dataclass(frozen=True)
class KeyWarning(Event):
    """The server offered a key for `user` that differs from the pinned one."""

    user: str
    pinned_fingerprint: str
    offered_fingerprint: str


@dataclass(frozen=True)
class Notice(Event):
    """Local information for the user (manual, fingerprints, confirmations)."""

    text: str
    topic: str = ""


@dataclass(frozen=True)
class ErrorEvent(Event):
    code: str
    message: str
    request: str = ""


@dataclass(frozen=True)
class Disconnected(Event):
    reason: str
    clean: bool


class LoginError(Exception):
    """Login failed: `code` is the server's error code (or a local one), message is for the user."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class TlsSettings:
    """How to check the server: a CA file, or else pin its certificate on first use."""

    cafile: str | None = None
    server_hostname: str | None = None


# -- the client ---------------------------------------------------------------------------

@dataclass
class _PendingPrivate:
    peer: str
    text: str
    ref: str


class ChatClient:
    """One logged-in session. Events arrive on `self.events` (or `on_event` if given)."""

    def __init__(
        self,
        username: str,
        host: str = "127.0.0.1",
        port: int = 5050,
        *,
        data_dir: Path | None = None,
        passphrase: str | None = None,
        ident: identity.Identity | None = None,
        tls: TlsSettings | None = None,
        timeout: float = 10.0,
        on_event: Callable[[Event], None] | None = None,
    ) -> None:
        self.username = username
        self.host, self.port = host, port
        self.data_dir = Path(data_dir) if data_dir else identity.default_data_dir()
        self.tls = tls
        self.timeout = timeout
        self.events: queue.Queue[Event] = queue.Queue()
        self._emit: Callable[[Event], None] = on_event or self.events.put
        self.identity = ident or identity.load_or_create_identity(self.data_dir, username, passphrase)
        self.known_keys = identity.known_keys(self.data_dir, username)
        self.replay_guard = identity.replay_guard(self.data_dir, username)
        self.room = ""
        self.server_id = ""
        self._sock: socket.socket | None = None
        self._decoder = FrameDecoder(MAX_SERVER_FRAME_SIZE)
        self._send_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._reader: threading.Thread | None = None
        self._closing = False
        self._refs = (f"r{n}" for n in itertools.count(1))
        self._peer_keys: dict[str, Any] = {}  # casefolded user -> verified RsaKey, this session
        self._offered: dict[str, bytes] = {}  # user whose key changed -> offered DER, for /trust
        self._awaiting_key: dict[str, list[_PendingPrivate]] = {}
        self._sent: dict[str, _PendingPrivate] = {}  # ref -> message awaiting the server's ack
        self._fingerprint_requests: set[str] = set()  # users whose /fingerprint awaits a key

    # -- connecting -----------------------------------------------------------------------

    def connect(self) -> Welcome:
        """Connect and log in (blocking); then events flow from a reader thread."""
        sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.tls is not None:
                sock = self._wrap_tls(sock)
            self._sock = sock
            welcome = self._login()
        except BaseException:
            sock.close()
            self._sock = None
            raise
        sock.settimeout(None)
        self._reader = threading.Thread(target=self._read_loop, name="gapshape-reader", daemon=True)
        self._reader.start()
        return welcome

    def _wrap_tls(self, sock: socket.socket) -> ssl.SSLSocket:
        settings = self.tls
        assert settings is not None
        hostname = settings.server_hostname or self.host
        if settings.cafile:
            context = ssl.create_default_context(cafile=settings.cafile)
        else:  # no CA: trust on first use, like ssh, with the certificate pinned below
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            tls_sock = context.wrap_socket(sock, server_hostname=hostname)
        except ssl.SSLCertVerificationError as exc:
            raise LoginError("tls_verify_failed",
                             f"the server's certificate could not be verified: {exc.verify_message}") from None
        except (ssl.SSLError, OSError) as exc:
            raise LoginError("tls_failed", f"TLS handshake failed: {exc}") from None
        if not settings.cafile:
            self._check_server_pin(tls_sock)
        return tls_sock

    def _check_server_pin(self, tls_sock: ssl.SSLSocket) -> None:
        der = tls_sock.getpeercert(binary_form=True) or b""
        fingerprint = hashlib.sha256(der).hexdigest()
        servers = identity.known_servers(self.data_dir)
        name = f"{self.host}:{self.port}"
        check = servers.check(name, fingerprint)
        if check.status is identity.PinStatus.NEW:
            servers.pin(name, fingerprint)
            self._emit(Notice(f"pinned the certificate of {name} (SHA-256 {fingerprint[:16]}...)", "tls"))
        elif check.status is identity.PinStatus.MISMATCH:
            raise LoginError(
                "tls_pin_mismatch",
                f"WARNING: the certificate of {name} has CHANGED (pinned {check.pinned_fingerprint}, now "
                f"{fingerprint}). Someone may be intercepting the connection. Refusing to connect; "
                f"if the server really changed its certificate, remove its line from "
                f"{servers.path}.",
            )

    def _login(self) -> Welcome:
        self._write({"type": "hello", "version": PROTOCOL_VERSION, "username": self.username,
                     "public_key": base64.b64encode(self.identity.public_der).decode(),
                     "client": CLIENT_NAME})
        challenge = self._expect("challenge")
        nonce = base64.b64decode(challenge["nonce"])
        self.server_id = self._channel_id() or str(challenge.get("server_id", ""))
        signature = auth.sign_login(self.identity.private_key, nonce, self.username, self.server_id)
        self._write({"type": "auth", "signature": base64.b64encode(signature).decode()})
        frame = self._expect("welcome")
        self.username = frame["user"]
        self.room = frame["room"]
        return Welcome(frame["user"], frame["room"], frame["server_id"], frame["time"])

    def _channel_id(self) -> str:
        """Under TLS, the login proof is bound to the certificate we actually see, so a
        server cannot pass it on to another server (see docs/SECURITY.md)."""
        if not isinstance(self._sock, ssl.SSLSocket):
            return ""
        return hashlib.sha256(self._sock.getpeercert(binary_form=True) or b"").hexdigest()

    def _expect(self, kind: str) -> Frame:
        """Read frames during login until `kind`; an error frame becomes LoginError."""
        assert self._sock is not None
        while True:
            try:
                frame = self._decoder.next_frame()
            except ProtocolError as exc:
                raise LoginError("bad_frame", f"the server sent a bad frame: {exc}") from None
            if frame is None:
                try:
                    data = self._sock.recv(65536)
                except socket.timeout:
                    raise LoginError("timeout", "the server did not answer in time") from None
                if not data:
                    raise LoginError("closed", "the server closed the connection")
                self._decoder.receive_data(data)
                continue
            if frame["type"] == kind:
                return frame
            if frame["type"] == "error":
                raise LoginError(str(frame.get("code")), str(frame.get("message")))
            if frame["type"] == "ping":
                self._write({"type": "pong", "data": frame.get("data", "")})

    # -- sending --------------------------------------------------------------------------

    def _write(self, frame: dict[str, Any]) -> None:
        data = encode_frame(frame)
        sock = self._sock
        if sock is None:
            raise ConnectionError("not connected")
        with self._send_lock:
            sock.sendall(data)

    def execute(self, line: str) -> bool:
        """Carry out one typed line (message or slash command). False after /quit."""
        parsed = parse_line(line)
        if parsed is None:
            return True
        if isinstance(parsed, Say):
            self.say(parsed.text)
            return True
        return self._run_command(parsed)

    def _run_command(self, command: Command) -> bool:
        name, args = command.name, command.args
        if name == "quit":
            self.quit()
            return False
        if name == "manual":
            self._emit(Notice(manual_text(), "manual"))
        elif name == "privatemsg":
            self.send_private(args[0], args[1])
        elif name == "join":
            self.join(args[0])
        elif name == "rooms":
            self._write({"type": "rooms"})
        elif name == "list":
            self._write({"type": "list"})
        elif name == "knowrooms":
            self._write({"type": "users"})
        elif name == "status":
            self.set_status(args[0], args[1] if len(args) > 1 else "")
        elif name == "fingerprint":
            self.show_fingerprint(args[0] if args else None)
        elif name == "trust":
            self.trust(args[0])
        return True

    def say(self, text: str) -> None:
        self._write({"type": "message", "text": text, "ref": next(self._refs)})

    def join(self, room: str) -> None:
        self._write({"type": "join", "room": room})

    def set_status(self, status: str, note: str = "") -> None:
        self._write({"type": "status", "status": status, "note": note})

    def request(self, kind: str) -> None:
        """Ask for a listing: "rooms", "list" (my room) or "users"."""
        self._write({"type": kind})

    def quit(self) -> None:
        self._closing = True
        try:
            self._write({"type": "quit"})
        except OSError:
            pass

    def close(self) -> None:
        """Drop the connection without ceremony (the reader thread reports Disconnected)."""
        self._closing = True
        sock = self._sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._reader is not None and self._reader is not threading.current_thread():
            self._reader.join(timeout=5)

    # -- private messages -----------------------------------------------------------------

    def send_private(self, peer: str, text: str) -> None:
        """Seal `text` for `peer` once their key is known and matches the pin."""
        if len(text) > MAX_PRIVATE_CHARS:
            raise CommandError(f"private message is {len(text)} characters; the maximum is "
                               f"{MAX_PRIVATE_CHARS}")
        if peer.casefold() == self.username.casefold():
            raise CommandError("you cannot send a private message to yourself")
        pending = _PendingPrivate(peer, text, next(self._refs))
        with self._state_lock:
            key = self._peer_keys.get(peer.casefold())
            if key is None:
                waiting = self._awaiting_key.setdefault(peer.casefold(), [])
                waiting.append(pending)
                if len(waiting) > 1:
                    return  # the key is already on its way
        if key is None:
            self._write({"type": "get_key", "user": peer})
        else:
            self._seal_and_send(pending, key)

    def _seal_and_send(self, pending: _PendingPrivate, peer_key: Any) -> None:
        envelope = crypto.seal(
            pending.text.encode("utf-8"), sender=self.username, recipient=pending.peer,
            sender_private_key=self.identity.private_key, recipient_public_key=peer_key,
        )
        with self._state_lock:
            self._sent[pending.ref] = pending
        self._write({"type": "private", "to": pending.peer, "envelope": envelope.to_fields(),
                     "ref": pending.ref})

    def _check_pin(self, user: str, public_der: bytes) -> Any | None:
        """The key to use for `user`, or None (and a KeyWarning) if it differs from the pin."""
        fingerprint = auth.key_fingerprint(public_der)
        check = self.known_keys.check(user, fingerprint)
        if check.status is identity.PinStatus.MISMATCH:
            with self._state_lock:
                self._offered[user.casefold()] = public_der
                self._peer_keys.pop(user.casefold(), None)
            self._emit(KeyWarning(user, check.pinned_fingerprint or "", fingerprint))
            return None
        key = auth.load_public_key(public_der)
        if check.status is identity.PinStatus.NEW:
            self.known_keys.pin(user, fingerprint)
        with self._state_lock:
            self._peer_keys[user.casefold()] = key
        return key

    def _on_key(self, frame: Frame) -> None:
        user = str(frame.get("user", ""))
        with self._state_lock:
            waiting = self._awaiting_key.pop(user.casefold(), [])
            showing = user.casefold() in self._fingerprint_requests
            self._fingerprint_requests.discard(user.casefold())
        try:
            key = self._check_pin(user, base64.b64decode(str(frame.get("public_key", ""))))
        except (auth.AuthError, ValueError):
            self._emit(ErrorEvent("bad_key", f"the server sent an unusable key for {user}"))
            return
        if showing and key is not None:
            self._emit(Notice(self._describe_key(user), "fingerprint"))
        for pending in waiting:
            if key is None:
                self._emit(ErrorEvent("key_changed", f"private message to {user} NOT sent: "
                                      f"their key changed. Check it, then /trust {user}.",
                                      "private"))
            else:
                self._seal_and_send(pending, key)

    def _on_private_sent(self, frame: Frame) -> None:
        with self._state_lock:
            pending = self._sent.pop(str(frame.get("ref")), None)
        if pending is None:
            return
        fingerprint = self._pinned_fingerprint(pending.peer)
        self._emit(PrivateMessage(int(frame["id"]), str(frame.get("to", pending.peer)),
                                  pending.text, str(frame["time"]), True, fingerprint))

    def _on_private(self, frame: Frame) -> None:
        sender = str(frame.get("from", ""))
        now = str(frame.get("time", ""))
        try:
            sender_der = base64.b64decode(str(frame.get("from_key", "")), validate=True)
            sender_key = self._check_pin(sender, sender_der)
        except (auth.AuthError, ValueError):
            self._emit(PrivateRejected(sender, "the sender's key is unusable", now))
            return
        if sender_key is None:
            self._emit(PrivateRejected(sender, "the sender's key changed; message refused "
                                       f"(check it, then /trust {sender})", now))
            return
        try:
            envelope = crypto.Envelope.from_fields(frame.get("envelope"))
            if envelope.sender.casefold() != sender.casefold():
                raise crypto.DecryptionError("the envelope was written by someone else")
            plaintext = crypto.open_envelope(
                envelope, recipient=self.username, recipient_private_key=self.identity.private_key,
                sender_public_key=sender_key,
            )
            self.replay_guard.check_and_record(envelope.message_id, envelope.sent_at)
            text = plaintext.decode("utf-8")
        except (crypto.DecryptionError, UnicodeDecodeError) as exc:
            self._emit(PrivateRejected(sender, str(exc) or "the message failed verification", now))
            return
        self._emit(PrivateMessage(int(frame.get("id", 0)), sender, text, now, False,
                                  auth.key_fingerprint(sender_der)))

    def _pinned_fingerprint(self, user: str) -> str:
        pinned = self.known_keys.get(user)
        return pinned.fingerprint if pinned else ""

    def show_fingerprint(self, user: str | None = None) -> None:
        """Emit a Notice with our own fingerprint, or fetch and show `user`'s."""
        if user is None or user.casefold() == self.username.casefold():
            readable = auth.readable_fingerprint(self.identity.public_der)
            self._emit(Notice(f"your key fingerprint: {readable}", "fingerprint"))
            return
        with self._state_lock:
            self._fingerprint_requests.add(user.casefold())
        self._write({"type": "get_key", "user": user})

    def _describe_key(self, user: str) -> str:
        with self._state_lock:
            key = self._peer_keys.get(user.casefold())
        assert key is not None
        theirs = auth.readable_fingerprint(auth.public_key_der(key))
        mine = auth.readable_fingerprint(self.identity.public_der)
        return (f"{user}'s key fingerprint: {theirs}; yours: {mine} (compare both with {user} "
                "in person or by phone)")

    def trust(self, user: str) -> None:
        """Accept the key the server last offered for `user` (after a KeyWarning)."""
        with self._state_lock:
            offered = self._offered.pop(user.casefold(), None)
        if offered is None:
            self._emit(Notice(f"no changed key is waiting for {user}; nothing to trust", "trust"))
            return
        fingerprint = auth.key_fingerprint(offered)
        self.known_keys.replace(user, fingerprint)
        key = auth.load_public_key(offered)
        with self._state_lock:
            self._peer_keys[user.casefold()] = key
        self._emit(Notice(f"you now trust {user}'s new key: {auth.readable_fingerprint(offered)}",
                          "trust"))

    # -- reading --------------------------------------------------------------------------

    def _read_loop(self) -> None:
        reason, clean = "connection lost", False
        try:
            while True:
                frame = self._decoder.next_frame()
                if frame is not None:
                    bye = self._handle(frame)
                    if bye is not None:
                        reason, clean = bye, True
                    continue
                assert self._sock is not None
                data = self._sock.recv(65536)
                self._decoder.receive_data(data)
                if not data:
                    if self._closing and not clean:
                        reason, clean = "disconnected", True
                    break
        except ProtocolError as exc:
            reason = f"the server sent a bad frame: {exc}"
        except OSError as exc:
            if self._closing:
                reason, clean = (reason, True) if clean else ("disconnected", True)
            else:
                reason = f"connection lost: {exc.strerror or exc}"
        finally:
            if self._sock is not None:
                self._sock.close()
        self._emit(Disconnected(reason, clean))

    def _handle(self, frame: Frame) -> str | None:
        """Turn one frame into events; returns the reason when the server says goodbye."""
        kind = frame["type"]
        try:
            handler = _FRAME_HANDLERS.get(kind)
            if handler is None:
                log.debug("ignoring unknown frame type %r", kind)
                return None
            return handler(self, frame)
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("malformed %r frame from the server: %s", kind, exc)
            return None

    def _room_message(self, frame: dict[str, Any], history: bool) -> RoomMessage:
        return RoomMessage(int(frame["id"]), str(frame["room"]), str(frame["user"]),
                           str(frame["text"]), str(frame["time"]), history,
                           str(frame["user"]).casefold() == self.username.casefold())

    def _on_joined(self, frame: Frame) -> None:
        self.room = frame["room"]
        self._emit(RoomJoined(frame["room"], _members(frame["members"]),
                              tuple(self._room_message(m, True) for m in frame["history"]),
                              frame["time"]))

    def _on_bye(self, frame: Frame) -> str:
        self._closing = True
        return str(frame.get("reason", "goodbye"))

    def _on_error(self, frame: Frame) -> None:
        ref = frame.get("ref")
        if ref is not None:
            with self._state_lock:
                self._sent.pop(str(ref), None)
        self._emit(ErrorEvent(str(frame.get("code")), str(frame.get("message")),
                              str(frame.get("request") or "")))


def _members(items: list[dict[str, Any]]) -> tuple[MemberInfo, ...]:
    return tuple(MemberInfo(str(m["user"]), str(m["status"]), str(m.get("note", "")),
                            str(m.get("room", ""))) for m in items)


_FRAME_HANDLERS: dict[str, Callable[[ChatClient, Frame], str | None]] = {
    "message": lambda c, f: c._emit(c._room_message(f, False)),
    "joined": ChatClient._on_joined,
    "user_joined": lambda c, f: c._emit(UserJoined(f["room"], f["user"], f["status"],
                                                   f.get("note", ""), f["time"])),
    "user_left": lambda c, f: c._emit(UserLeft(f["room"], f["user"], f.get("reason", ""), f["time"])),
    "status": lambda c, f: c._emit(StatusChanged(f["user"], f["status"], f.get("note", ""), f["time"])),
    "members": lambda c, f: c._emit(MemberList(f["room"], _members(f["members"]))),
    "rooms": lambda c, f: c._emit(RoomList(tuple((r["room"], int(r["members"])) for r in f["rooms"]))),
    "users": lambda c, f: c._emit(UserList(_members(f["users"]))),
    "key": ChatClient._on_key,
    "private": ChatClient._on_private,
    "private_sent": ChatClient._on_private_sent,
    "error": ChatClient._on_error,
    "ping": lambda c, f: c._write({"type": "pong", "data": f.get("data", "")}),
    "pong": lambda c, f: None,
    "bye": ChatClient._on_bye,
}


# -- terminal rendering -------------------------------------------------------------------

def local_time(stamp: str) -> str:
    """'2026-11-29T19:40:00.123Z' -> '20:40:00' in this machine's time zone."""
    try:
        moment = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        moment = datetime.now().astimezone()
    return moment.astimezone().strftime("%H:%M:%S")


def describe(event: Event) -> str:
    """One line of text for an event (what the terminal client prints after the time)."""
    if isinstance(event, RoomMessage):
        mark = " (history)" if event.history else ""
        return f"{event.room} <{event.user}> {event.text}{mark}"
    if isinstance(event, RoomJoined):
        names = ", ".join(f"{m.user} ({m.status})" for m in event.members)
        return f"you are in {event.room} with {names}"
    if isinstance(event, UserJoined):
        return f"* {event.user} joined {event.room}"
    if isinstance(event, UserLeft):
        return f"* {event.user} left {event.room} ({event.reason})"
    if isinstance(event, StatusChanged):
        note = f": {event.note}" if event.note else ""
        return f"* {event.user} is now {event.status}{note}"
    if isinstance(event, MemberList):
        return f"in {event.room}: " + ", ".join(
            f"{m.user} ({m.status}{': ' + m.note if m.note else ''})" for m in event.members)
    if isinstance(event, RoomList):
        return "rooms: " + ", ".join(f"{name} ({count})" for name, count in event.rooms)
    if isinstance(event, UserList):
        return "online: " + ", ".join(f"{m.user} in {m.room} ({m.status})" for m in event.users)
    if isinstance(event, PrivateMessage):
        if event.outgoing:
            return f"[private, encrypted] you -> {event.peer}: {event.text}"
        return f"[private, encrypted, key verified] {event.peer} -> you: {event.text}"
    if isinstance(event, PrivateRejected):
        return f"!! rejected a private message from {event.peer}: {event.reason}"
    if isinstance(event, KeyWarning):
        return (f"!!! WARNING: the key of {event.user} has CHANGED. Pinned "
                f"{event.pinned_fingerprint}, server offers {event.offered_fingerprint}. Messages "
                f"to and from {event.user} are refused until you verify it and type /trust {event.user}")
    if isinstance(event, Notice):
        return event.text
    if isinstance(event, ErrorEvent):
        return f"error: {event.message}"
    if isinstance(event, Disconnected):
        return f"disconnected: {event.reason}"
    if isinstance(event, Welcome):
        return f"logged in as {event.user}"
    return repr(event)


def event_time(event: Event) -> str:
    stamp = getattr(event, "time", "")
    return local_time(stamp) if stamp else datetime.now().strftime("%H:%M:%S")


def event_json(event: Event) -> str:
    return json.dumps({"event": event.kind, **asdict(event)}, ensure_ascii=False)


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


def _type_lines(client: ChatClient) -> None:
    """Input thread: run each stdin line; end of input quits like /quit."""
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
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")

    def show(event: Event) -> None:
        print(event_json(event) if args.json else f"[{event_time(event)}] {describe(event)}",
              flush=True)

    tls = TlsSettings(cafile=args.cafile) if (args.tls or args.cafile) else None
    try:
        client = ChatClient(args.username, args.host, args.port, data_dir=args.data_dir,
                            passphrase=os.environ.get("GAPSHAPE_PASSPHRASE"), tls=tls)
        show(client.connect())
    except (LoginError, identity.IdentityError) as exc:
        print(f"cannot log in: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"cannot connect to {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    threading.Thread(target=_type_lines, args=(client,), name="stdin", daemon=True).start()
    try:
        while True:
            event = client.events.get()
            show(event)
            if isinstance(event, Disconnected):
                return 0
    except KeyboardInterrupt:
        client.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
