"""The Gapshape client library: `ChatClient`. No Tk and no terminal here.

`ChatClient` connects, proves its identity key at login, then runs one reader thread that
turns frames into typed events (the dataclasses in events.py, re-exported here) and puts
them on `client.events`, a queue the caller drains (terminal.py prints them; clientgui.py
polls it with `after()`).
Methods that send (`say`, `join`, `send_private`, ... and `execute` for a typed line) may
be called from any thread and never lose a message silently: frames are paced to the
server's `welcome.limits` (pacing.py) by a sender thread with a bounded queue, every
message carries a random `ref`, and any refusal (by the server, or locally: too long,
queue full, key changed, offline) comes back as one `NotSent` event with the text.

Private messages are sealed and opened with privates.py (crypto.py underneath): the
recipient's key is fetched from the server and checked by keytrust.py against the pin in
known_keys.json (trust on first use); a changed key stops all traffic with that user until
`/trust <user>`, which accepts exactly the offered key that was shown (docs/SECURITY.md,
"When a contact's key changes"). `/verify <user>` records that the user compared the
fingerprint out of band; events say `verified`.

`client.conversations` (conversations.py) follows every room and private conversation:
unread counts and mentions, fed by the reader thread (at login, from the server's
`last_seen`), and the current conversation, where `say` sends a typed line (`/query bob`
makes it bob, privately; `/query` or `/join` goes back to a room). An `UnreadChanged`
event says when the counts or the current conversation changed; `RoomJoined.gap` says when
more was missed than the join history shows. The sending half (pacing, the queue, refs
awaiting confirmation) is outbox.py; login and TLS are handshake.py; the events made
from a frame alone are frameevents.py, and conversationfeed.py counts what is shown.

The terminal client lives in terminal.py; `main` here runs it (the `gapshape` command):

    python client.py --username alice [--host 127.0.0.1] [--port 5050] [--json]
"""
from __future__ import annotations

import base64
import logging
import queue
import secrets
import socket
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import auth
import crypto
import handshake
import identity
import listings
import pacing
import privates
import privatestore
import sanitize
from commands import Command, CommandError, Say, manual_text, parse_line
from conversationfeed import ConversationFeed
from conversations import ConversationKey, Conversations, mentions_me, unread_report
from errors import ProtocolError
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
    PresenceBatch,
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
from frameevents import (
    PRESENCE_NAMES_KEPT,  # re-exported: the old home of these names
    presence_batch,
    receipt_text,
    status_changed,
    user_joined,
    user_left,
)
from handshake import LoginError, TlsSettings
from keytrust import KeyTrust
from listings import MAX_LISTED_ITEMS, Listings
from outbox import MAX_UNCONFIRMED, Outbox, Outgoing
from privates import PendingPrivate, largest_private_text, private_frame
from protocol import MAX_SERVER_FRAME_SIZE, Frame, FrameDecoder

log = logging.getLogger("gapshape.client")

#: Its old name here, which tests still import from `client` (with PRESENCE_NAMES_KEPT).
_presence_batch = presence_batch

CLIENT_NAME = "gapshape-client/1"

#: The library; the events (events.py) are re-exported, so `from client import RoomMessage`
#: keeps working.
__all__ = [
    "CLIENT_NAME", "MAX_LISTED_ITEMS", "MAX_UNCONFIRMED", "REPLACED_REASON", "ChatClient",
    "LoginError", "TlsSettings", "largest_private_text", "main", "Event", "MemberInfo",
    "Welcome", "RoomMessage", "RoomJoined", "RoomLeft", "HistoryPage", "UserJoined",
    "UserLeft", "PresenceBatch", "StatusChanged", "MemberList", "RoomList", "UserList", "PrivateMessage",
    "PrivateRejected", "KeyWarning", "Notice", "ErrorEvent", "NotSent", "Disconnected",
    "UnreadChanged", "PRESENCE_NAMES_KEPT",
]


# -- refs ---------------------------------------------------------------------------------

#: The `bye` reason of a connection replaced by a newer login of the same user.
REPLACED_REASON = "logged in elsewhere"


def _new_ref() -> str:
    """A random ref per frame: nothing about how many frames we sent, or of which kind,
    can be read from it (servers before protocol 2 showed refs to the whole room)."""
    return secrets.token_hex(6)


# -- the client ---------------------------------------------------------------------------

def _is_id(value: object) -> bool:
    """A message id as the server sends one: an int, never a bool (JSON true is not 1)."""
    return isinstance(value, int) and not isinstance(value, bool)


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
        private_history: privatestore.PrivateHistory | None = None,
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
        # Private messages received and confirmed sent (privatestore.py); one we open
        # ourselves is closed by close(), one passed in belongs to the caller.
        self._owns_history = private_history is None
        self.private_history = private_history or privatestore.open_private_history(
            self.data_dir, username, self.identity.private_key)
        self.room = ""
        self.server_id = ""
        self.limits = pacing.Limits()
        self._sock: socket.socket | None = None
        self._decoder = FrameDecoder(MAX_SERVER_FRAME_SIZE)
        self._send_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._reader: threading.Thread | None = None
        self._sender: threading.Thread | None = None
        self._closing = False
        self._replaced = False
        # Sending: every frame but pong goes through the pacer, in order (outbox.py).
        self._outbox = Outbox(self._emit)
        self._send_lock = self._outbox.send_lock
        self._submit = self._outbox.submit
        self._confirmed = self._outbox.confirmed
        self._refuse = self._outbox.refuse
        # Keys and trust.
        self.key_trust = KeyTrust(self.username, self.identity.public_der, self.known_keys,
                                  self._emit)
        self._awaiting_key: dict[str, list[PendingPrivate]] = {}
        self._key_refs: dict[str, str] = {}  # ref of a get_key -> casefolded user
        self._oldest_seen: dict[str, int] = {}  # room -> oldest message id shown: /history
        self._listings = Listings()  # listings being collected page by page
        # Conversations: unread counts, mentions, the current one (conversations.py).
        self.conversations = Conversations(username)
        self._feed = ConversationFeed(self.conversations, self._emit, lambda: self.username)

    # -- connecting -----------------------------------------------------------------------

    def connect(self) -> Welcome:
        """Connect and log in (blocking; handshake.py); then events flow from a reader thread."""
        sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.tls is not None:
                sock = handshake.wrap_tls(sock, self.tls, self.host, self.port, self.data_dir,
                                          self._emit)
            self._sock = self._outbox.sock = sock
            frame, self.server_id = handshake.login(sock, self._decoder, self._write,
                                                    self.identity, self.username, CLIENT_NAME)
        except BaseException:
            sock.close()
            self._sock = self._outbox.sock = None
            raise
        self.username = self.key_trust.username = frame["user"]
        self.conversations.rename_me(self.username)
        self.room = frame["room"]
        if self.room:  # before the joined frames: their unread counts for the other rooms
            self.conversations.open(ConversationKey.room(self.room))
        self.limits = pacing.Limits.from_welcome(frame.get("limits"))
        self._outbox.pacer = pacing.Pacer(self.limits.rate, self.limits.burst)
        sock.settimeout(None)
        self._reader = threading.Thread(target=self._read_loop, name="gapshape-reader", daemon=True)
        self._sender = threading.Thread(target=self._send_loop, name="gapshape-sender", daemon=True)
        self._reader.start()
        self._sender.start()
        last_seen, rooms = frame.get("last_seen"), frame.get("rooms")
        return Welcome(frame["user"], frame["room"], frame["server_id"], frame["time"],
                       tuple(str(room) for room in rooms) if isinstance(rooms, list) else (),
                       last_seen if _is_id(last_seen) else None)

    # -- sending: the pacer and its queue ---------------------------------------------------

    def _write(self, frame: dict[str, Any]) -> None:
        """Write one frame now, bypassing the pacer (login frames and pong only)."""
        self._outbox.write(frame)

    def _send_loop(self) -> None:
        """The sender thread (outbox.py); once the connection is gone, private messages
        still waiting for their recipients' keys are reported as well."""
        self._outbox.run()
        self._refuse_awaiting()

    def _shut_down_sending(self) -> None:
        self._outbox.shut_down()
        self._refuse_awaiting()

    def _refuse_awaiting(self) -> None:
        with self._state_lock:
            pending = [p for group in self._awaiting_key.values() for p in group]
            self._awaiting_key.clear()
        for private in pending:
            self._refuse(self._private_out(private, None), "offline",
                         "the connection closed before it was sent")

    # -- what callers send ----------------------------------------------------------------

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
        elif name == "query":
            self.query(args[0] if args else None)
        elif name == "unread":
            self._emit(Notice(unread_report(self.conversations.summaries()), "unread"))
        elif name == "join":
            self.join(args[0])
        elif name == "leave" and not args and self.current and not self.current.is_room:
            self.close_query()
        elif name == "leave":
            self.leave(args[0] if args else None)
        elif name == "history":
            self.history(count=_history_count(args[0] if args else "20"))
        elif name in ("rooms", "list"):
            self.fetch_all(name)
        elif name == "knowrooms":
            self.fetch_all("users")
        elif name == "status":
            self.set_status(args[0], args[1] if len(args) > 1 else "")
        elif name == "fingerprint":
            self.show_fingerprint(args[0] if args else None)
        elif name == "trust":
            self.trust(args[0], args[1] if len(args) > 1 else None)
        elif name == "verify":
            self.verify(args[0], args[1] if len(args) > 1 else None)
        return True

    @property
    def current(self) -> ConversationKey | None:
        """Where typed lines go: the current conversation, else the server's current room."""
        current = self.conversations.current
        return current or (ConversationKey.room(self.room) if self.room else None)

    def _current_room(self) -> str:
        current = self.conversations.current
        return current.name if current is not None and current.is_room else self.room

    def say(self, text: str, room: str | None = None) -> str:
        """Send `text` to `room`, or to the current conversation: a contact of /query gets
        it as a private message (`send_private`); a room the user switched to with /query
        gets it by name; else the server's current room, as it sees it when the message
        arrives, so a line typed right after /join goes to the new room. Returns its ref
        ("" if refused: a NotSent says why)."""
        current = self.conversations.current
        if room is None and current is not None:
            if not current.is_room:
                return self.send_private(current.name, text)
            if current.name != self.room:
                room = current.name
        ref = _new_ref()
        frame = {"type": "message", "text": text, "ref": ref}
        if room:
            frame["room"] = room
        out = Outgoing(frame, ref, room or self.room, text)
        if len(text) > self.limits.max_text:
            self._refuse(out, "too_long", f"the message is {len(text)} characters; the "
                         f"maximum is {self.limits.max_text}")
            return ""
        return out.ref if self._submit(out) else ""

    def join(self, room: str) -> None:
        """Join a room (or make one we are in current): until `joined` comes back, lines
        typed go to the server's current room, which by then is this one."""
        self.conversations.current = None
        self._submit(Outgoing({"type": "join", "room": room}))

    def close_query(self) -> None:
        """Close the current private conversation (its counts go); back to the room."""
        current = self.conversations.current
        if current is not None and not current.is_room:
            self.conversations.close(current)
            if self.room:
                self.query(None)
            else:
                self._feed.changed()

    def query(self, target: str | None = None) -> ConversationKey | None:
        """Make a conversation current (/query): a contact ('bob' or '@bob'), so typed
        lines go to them as private messages; a room ('#x'; joined first if we are not in
        it, then `joined` makes it current); or, with no target, the server's current room."""
        if target is None and not self.room:
            raise CommandError("you are in no room; /join one or /query a contact")
        key = ConversationKey.parse(target) if target else ConversationKey.room(self.room)
        if not key.is_room and key.name.casefold() == self.username.casefold():
            raise CommandError("you cannot have a private conversation with yourself")
        if not key.name.lstrip("#"):
            raise CommandError("usage: /query [user|#room]")
        if key.is_room and not self.conversations.has(key):
            self.join(key.name)
            return None
        key = self.conversations.open(key)
        where = sanitize.inert(key.name)
        if not key.is_room:
            where = (f"private messages to {where} (end-to-end encrypted); /query alone goes "
                     f"back to {sanitize.inert(self.room or 'your room')}")
        self._emit(Notice(f"now talking in {key.label}: lines you type go to {where}", "query",
                          "" if key.is_room else key.name))
        self._feed.changed()
        return key

    def leave(self, room: str | None = None) -> None:
        """Leave a room for good (the current one unless named)."""
        self._submit(Outgoing({"type": "leave", **({"room": room} if room else {})}))

    def history(self, room: str | None = None, count: int = 20) -> None:
        """Ask for `count` messages before the oldest one seen in a room (a HistoryPage)."""
        room = room or self._current_room()
        if not room:
            raise CommandError("you are in no room; /join one first")
        frame: dict[str, Any] = {"type": "history", "room": room, "limit": count}
        with self._state_lock:
            oldest = self._oldest_seen.get(room)
        if oldest is not None:
            frame["before"] = oldest
        self._submit(Outgoing(frame))

    def set_status(self, status: str, note: str = "") -> None:
        self._submit(Outgoing({"type": "status", "status": status, "note": note}))

    def request(self, kind: str) -> None:
        """Ask for one page of a listing: "rooms", "list" (my room) or "users"."""
        self._submit(Outgoing({"type": kind}))

    def fetch_all(self, kind: str) -> None:
        """Ask for a whole listing ("list", "rooms" or "users"): the client fetches page
        after page (protocol 2) and emits one MemberList/RoomList/UserList when it has
        all of them. A server without pages answers in one piece, which is complete."""
        request: dict[str, Any] = {"type": kind}
        if kind == "list" and self._current_room():
            request["room"] = self._current_room()
        self._listings.start(request)
        self._submit(Outgoing({"type": kind}))

    def quit(self) -> None:
        """Say goodbye after everything already queued has been sent."""
        self._closing = True
        try:
            self._submit(Outgoing({"type": "quit"}))
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
        if self._owns_history:
            self.private_history.close()

    # -- private messages: sending ----------------------------------------------------------

    def send_private(self, peer: str, text: str) -> str:
        """Seal `text` for `peer` once their key is known and matches the pin.

        Returns the ref of the message ("" if it was refused at once; a NotSent says why).
        """
        if peer.casefold() == self.username.casefold():
            raise CommandError("you cannot send a private message to yourself")
        pending = PendingPrivate(peer, text, _new_ref())
        key = self.key_trust.key_for(peer)
        if not self._fits(pending, key):
            return ""
        if key is not None:
            self._seal_and_send(pending, key)
            return pending.ref
        with self._state_lock:
            crowded = sum(map(len, self._awaiting_key.values())) >= pacing.SEND_QUEUE_LIMIT
            first = key_ref = ""
            if not crowded:
                waiting = self._awaiting_key.setdefault(peer.casefold(), [])
                waiting.append(pending)
                if len(waiting) == 1:
                    first = key_ref = _new_ref()
                    self._key_refs[key_ref] = peer.casefold()
        if crowded:  # the server is not answering key requests; keep the bound
            self._refuse(self._private_out(pending, None), "queue_full",
                         f"{pacing.SEND_QUEUE_LIMIT} private messages are already waiting "
                         "for their recipients' keys")
            return ""
        if first:  # otherwise the key is already on its way
            try:
                self._submit(Outgoing({"type": "get_key", "user": peer, "ref": key_ref}))
            except OSError:
                with self._state_lock:
                    stranded = self._awaiting_key.pop(peer.casefold(), [])
                for private in stranded:
                    self._refuse(self._private_out(private, None), "offline",
                                 "you are not connected")
                raise
        return pending.ref

    def _fits(self, pending: PendingPrivate, key: Any | None) -> bool:
        """Refuse (NotSent "too_long") a text whose sealed frame would exceed max_frame.
        Before the recipient's key is known, the largest key allowed is assumed."""
        size = len(pending.text.encode("utf-8", "replace"))
        recipient_bits = key.size_in_bits() if key is not None else auth.MAX_KEY_BITS
        try:
            limit = largest_private_text(self.limits.max_frame, self.username, pending.peer,
                                         pending.ref, self.identity.private_key.size_in_bits(),
                                         recipient_bits)
        except crypto.CryptoError:  # an envelope cannot even name this recipient
            self._refuse(self._private_out(pending, None), "invalid_name",
                         f"{sanitize.inert(pending.peer)} is not a valid username")
            return False
        if size <= limit:
            return True
        self._refuse(self._private_out(pending, None), "too_long",
                     f"the private message is {size} bytes; the most that fits in one frame "
                     f"is {limit} bytes (UTF-8). Split it and send it again")
        return False

    def _private_out(self, pending: PendingPrivate, envelope: crypto.Envelope | None) -> Outgoing:
        frame = private_frame(pending.peer, envelope, pending.ref) if envelope else {"type": "private"}
        return Outgoing(frame, pending.ref, pending.peer, pending.text)

    def _seal_and_send(self, pending: PendingPrivate, peer_key: Any) -> None:
        if not self._fits(pending, peer_key):
            return
        envelope = privates.seal(pending, self.identity, self.username, peer_key)
        self._submit(self._private_out(pending, envelope))

    # -- keys, pins and trust ---------------------------------------------------------------

    def _on_key(self, frame: Frame) -> None:
        user = str(frame.get("user", ""))
        folded = user.casefold()
        with self._state_lock:
            waiting = self._awaiting_key.pop(folded, [])
            showing = self.key_trust.wants_fingerprint(user)
            for ref in [r for r, u in self._key_refs.items() if u == folded]:
                del self._key_refs[ref]
        if not waiting and not showing:
            # Nobody asked: a key the server pushes on its own is never pinned or offered.
            log.info("ignored a key for %r that was not asked for", user)
            return
        try:
            der = base64.b64decode(str(frame.get("public_key", "")), validate=True)
            key = self.key_trust.accept_key(user, der)
        except (auth.AuthError, ValueError, identity.IdentityError) as exc:
            self._emit(ErrorEvent("bad_key", f"the server sent an unusable key for "
                                  f"{sanitize.inert(user)}: {exc}"))
            for pending in waiting:
                self._refuse(self._private_out(pending, None), "bad_key",
                             "the server sent an unusable key for the recipient")
            return
        if showing:
            self._emit(self.key_trust.fingerprint_notice(user))
        for pending in waiting:
            if key is None:
                self._refuse(self._private_out(pending, None), "key_changed",
                             f"private message to {sanitize.inert(user)} NOT sent: their key "
                             f"changed. Check it, then /trust {sanitize.inert(user)}.")
            else:
                try:
                    self._seal_and_send(pending, key)
                except OSError:
                    return  # each message was reported as NotSent; the reader ends soon

    def show_fingerprint(self, user: str | None = None) -> None:
        """Emit a Notice with our own fingerprint or a contact's (keytrust.py); a contact's
        key is fetched first unless a changed one is on offer."""
        if self.key_trust.show_fingerprint(user):
            assert user is not None
            self._submit(Outgoing({"type": "get_key", "user": user}))

    def trust(self, user: str, fingerprint: str | None = None) -> None:
        """Accept the changed key on offer for `user`: exactly the one shown (keytrust.py)."""
        self.key_trust.trust(user, fingerprint)

    def verify(self, user: str, fingerprint: str | None = None) -> None:
        """Record that `user`'s pinned fingerprint was compared out of band (keytrust.py)."""
        self.key_trust.verify(user, fingerprint)

    # -- private messages: receiving --------------------------------------------------------

    def _on_private_sent(self, frame: Frame) -> None:
        out = self._confirmed(frame.get("ref"))
        if out is None:
            return
        self._remember(out.target, "out", out.text or "", out.frame.get("envelope"))
        fingerprint, verified = self.key_trust.pin_of(out.target)
        self._feed.shown(PrivateMessage(int(frame["id"]), str(frame.get("to", out.target)),
                                   out.text or "", str(frame["time"]), True, fingerprint,
                                   verified, out.ref))

    def _on_private(self, frame: Frame) -> None:
        sender = str(frame.get("from", ""))
        now = str(frame.get("time", ""))
        try:
            text, fingerprint = privates.open_private(
                frame, username=self.username, me=self.identity,
                replay_guard=self.replay_guard, trust=self.key_trust)
        except privates.Refused as refused:
            self._emit(PrivateRejected(sender, str(refused), now))
            self._acknowledge(frame)
            return
        self._remember(sender, "in", text, frame.get("envelope"))
        readable, verified = self.key_trust.pin_of(sender)
        self._feed.shown(PrivateMessage(int(frame.get("id", 0)), sender, text, now, False,
                                   readable or identity.readable_fingerprint_from_hex(fingerprint),
                                   verified))
        self._acknowledge(frame)

    def _remember(self, peer: str, direction: str, text: str, envelope: object) -> None:
        """Keep a verified incoming private message, or one the server confirmed sent or
        queued, in the local history (deduplicated by the envelope's id). A failure is
        shown; the message is still delivered."""
        fields = envelope if isinstance(envelope, dict) else {}  # always one: checked or ours
        try:
            self.private_history.record(peer, direction, text, str(fields["message_id"]),
                                        str(fields["sent_at"]))
        except (privatestore.PrivateHistoryError, ValueError, KeyError) as exc:
            self._emit(ErrorEvent("private_history", "this private message could not be "
                                  f"saved in your history: {exc}"))

    def _acknowledge(self, frame: Frame) -> None:
        """A private message that waited in the server's mailbox stays there until we say
        we have it; shown or refused (a replay, a bad signature), it will not get better."""
        if frame.get("queued") and isinstance(frame.get("id"), int):
            self._write({"type": "ack", "ids": [frame["id"]]})

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
        self._shut_down_sending()
        self._emit(Disconnected(reason, clean, self._replaced))

    def _handle(self, frame: Frame) -> str | None:
        """Turn one frame into events; returns the reason when the server says goodbye."""
        kind = frame["type"]
        try:
            handler = _FRAME_HANDLERS.get(kind)
            if handler is None:
                log.debug("ignoring unknown frame type %r", kind)
                return None
            return handler(self, frame)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            log.warning("malformed %r frame from the server: %s", kind, exc)
            return None

    def _on_left(self, frame: Frame) -> None:
        left = ConversationKey.room(str(frame["room"]))
        self.room = str(frame.get("room_now", ""))
        was_current = self.conversations.current == left
        self.conversations.close(left)
        if was_current and self.room:  # a query stays current; a room left is replaced
            self.conversations.open(ConversationKey.room(self.room))
        self._emit(RoomLeft(str(frame["room"]), self.room, str(frame["time"])))
        self._feed.changed()

    def _on_history(self, frame: Frame) -> None:
        room = str(frame["room"])
        messages = tuple(self._room_message(m, True) for m in frame["messages"])
        more = bool(frame.get("more"))
        self._emit(HistoryPage(room, messages, more))
        self.conversations.history_loaded(room, [m.id for m in messages], more)
        self._feed.changed()

    def _note_oldest(self, room: str, message_id: int) -> None:
        """Remember the oldest message id seen in `room`: where /history goes on from."""
        with self._state_lock:
            oldest = self._oldest_seen.get(room)
            self._oldest_seen[room] = message_id if oldest is None else min(oldest, message_id)

    def _on_receipt(self, frame: Frame) -> None:
        """What became of a private message that waited for its offline recipient."""
        if frame["type"] == "private_queued":
            self._on_private_sent(frame)  # confirmed like one sent: it is recorded and shown
        self._emit(Notice(receipt_text(frame), "receipt", str(frame.get("to", ""))))

    def _room_message(self, frame: dict[str, Any], history: bool) -> RoomMessage:
        self._note_oldest(str(frame["room"]), int(frame["id"]))
        own = str(frame["user"]).casefold() == self.username.casefold()
        out = self._confirmed(frame.get("ref")) if own and not history else None
        return RoomMessage(int(frame["id"]), str(frame["room"]), str(frame["user"]),
                           str(frame["text"]), str(frame["time"]), history, own,
                           out.ref if out else "")

    def _on_joined(self, frame: Frame) -> None:
        """At login (`last_seen` given) the history after last_seen is unread and a gap
        before it is reported; a /join makes the room the current conversation."""
        self.room = room = str(frame["room"])
        members = listings.members(frame["members"])
        history = tuple(self._room_message(m, True) for m in frame["history"])
        last_seen = frame.get("last_seen")
        last_seen = last_seen if _is_id(last_seen) else None
        ids = [m.id for m in history]
        gap = self.conversations.joined(
            room, last_seen=last_seen, history_ids=ids, newest_id=max(ids, default=None),
            mention_ids=[m.id for m in history if not m.own and mentions_me(self.username, m.text)],
            own_ids=[m.id for m in history if m.own])
        if last_seen is None:
            self.conversations.open(ConversationKey.room(room))
        self._emit(RoomJoined(room, members, history, str(frame["time"]),
                              listings.count(frame.get("member_count"), len(members)),
                              frame.get("members_next") is None, gap, last_seen))
        self._feed.changed()

    def _on_listing(self, frame: Frame) -> None:
        """members/rooms/users: one page; collected into one event if fetch_all asked."""
        request, event = self._listings.page(frame)
        if request is not None:
            self._submit(Outgoing(request))
        if event is not None:
            self._emit(event)

    def _on_bye(self, frame: Frame) -> str:
        self._closing = True
        reason = str(frame.get("reason", "goodbye"))
        self._replaced = reason == REPLACED_REASON
        return reason

    def _on_error(self, frame: Frame) -> None:
        code, message = str(frame.get("code")), str(frame.get("message"))
        request = str(frame.get("request") or "")
        ref = frame.get("ref")
        out = self._confirmed(ref)
        if out is not None:
            self._emit(NotSent(code, message, request, out.ref, out.target, out.text or ""))
            return
        with self._state_lock:
            peer = self._key_refs.pop(ref, None) if isinstance(ref, str) else None
            waiting = self._awaiting_key.pop(peer, []) if peer else []
        for pending in waiting:
            self._emit(NotSent(code, message, "private", pending.ref, pending.peer, pending.text))
        if not waiting:
            self._emit(ErrorEvent(code, message, request))


_FRAME_HANDLERS: dict[str, Callable[[ChatClient, Frame], str | None]] = {
    "message": lambda c, f: c._feed.shown(c._room_message(f, False)),
    "joined": ChatClient._on_joined,
    "user_joined": lambda c, f: c._emit(user_joined(f)),
    "user_left": lambda c, f: c._emit(user_left(f)),
    "presence": lambda c, f: c._emit(presence_batch(f)),
    "status": lambda c, f: c._emit(status_changed(f)),
    "members": ChatClient._on_listing,
    "rooms": ChatClient._on_listing,
    "users": ChatClient._on_listing,
    "key": ChatClient._on_key,
    "private": ChatClient._on_private,
    "private_sent": ChatClient._on_private_sent,
    "private_queued": ChatClient._on_receipt,
    "private_delivered": ChatClient._on_receipt,
    "private_expired": ChatClient._on_receipt,
    "left": ChatClient._on_left,
    "history": ChatClient._on_history,
    "error": ChatClient._on_error,
    "ping": lambda c, f: c._write({"type": "pong", "data": f.get("data", "")}),
    "pong": lambda c, f: None,
    "bye": ChatClient._on_bye,
}


def _history_count(text: str) -> int:
    try:
        count = int(text)
    except ValueError:
        raise CommandError(f"/history takes a number of messages, not {text!r}") from None
    if not 1 <= count <= 100:
        raise CommandError("/history shows 1 to 100 messages at a time")
    return count


# -- the terminal client (terminal.py) ----------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    """The terminal client (`python client.py`, the `gapshape` command): see terminal.py.

    Imported here, not at the top: terminal.py imports this module."""
    import terminal
    return terminal.main(argv)


#: What terminal.py took from this module; still found here for code that imports them
#: from `client`, on first use (an import at the top would be a cycle).
_MOVED_TO_TERMINAL = frozenset({"describe", "describe_lines", "event_json", "event_time",
                                "local_time", "make_streams_safe", "build_parser"})

if not TYPE_CHECKING:  # hidden from mypy: a module __getattr__ would let any name pass
    def __getattr__(name: str) -> Any:
        if name in _MOVED_TO_TERMINAL:
            import terminal
            return getattr(terminal, name)
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if __name__ == "__main__":
    sys.exit(main())
