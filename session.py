"""One client's chat session: its login and its request handlers.

`Session` is what a `transport.Connection` hands every complete frame to. It checks the
frame against flood control and the request table (protocol.REQUEST_FIELDS), runs the
handler for its type, and turns any `GapshapeError` into an `error` frame in exactly one
place (`Session._report`). The handlers call into the shared state (rooms.ChatState) and
reply through the connection's outbox (`Connection.push`), which never blocks.

Login takes two frames: `hello` (name, key) earns a `challenge` with a fresh nonce, and
`auth` carries the signature over it (auth.py), verified on the server's crypto pool.
"""
from __future__ import annotations

import base64
import binascii
import collections
import logging
import secrets
import time
from typing import TYPE_CHECKING, Any, Callable

import auth
from errors import (
    AuthFailed,
    GapshapeError,
    KeyMismatch,
    NameTaken,
    NotLoggedIn,
    ProtocolError,
    RateLimited,
    RequestError,
    UnknownUser,
    UnsupportedVersion,
)
from floodcontrol import TokenBucket
from protocol import PROTOCOL_VERSION, Frame, encode_frame, validate_request
from rooms import Member, validate_name

if TYPE_CHECKING:
    from transport import Connection

log = logging.getLogger("gapshape.server")


class Session:
    """The chat side of one connection: who it is logged in as, and what it may do."""

    __slots__ = ("conn", "server", "config", "member", "bucket", "_refusals",
                 "_last_refusal_reported", "_pending_login")

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.server = conn.server
        self.config = conn.config
        self.member: Member | None = None
        self.bucket = TokenBucket(self.config.rate, self.config.burst)
        self._refusals: collections.deque[float] | None = None  # made on the first refusal
        self._last_refusal_reported = 0.0
        self._pending_login: dict[str, Any] | None = None

    @property
    def logged_in(self) -> bool:
        return self.member is not None

    def receive(self, frame: Frame) -> None:
        """Carry out one frame from the client; errors become `error` frames."""
        try:
            self._dispatch(frame)
        except GapshapeError as error:
            self._report(error, frame)

    def report_bad_frame(self, error: ProtocolError) -> None:
        """Bad frames count against flood control too, so junk cannot buy error frames."""
        try:
            if error.fatal or self._within_rate():
                self._report(error, None)
        except RateLimited as limited:
            self._report(limited, None)

    def finish(self, reason: str) -> None:
        """The connection is ending: leave the chat."""
        if self.member is not None:
            self.server.state.logout(self.member, reason)
            log.info("disconnect %s (%s): %s", self.member.name, self.conn.peer, reason)

    def push(self, data: bytes) -> None:
        self.conn.push(data)

    def _report(self, error: GapshapeError, frame: Frame | None) -> None:
        """The one place where an error becomes an `error` frame."""
        reply: dict[str, Any] = {"type": "error", "code": error.code, "message": error.message}
        if isinstance(frame, dict):
            reply["request"] = frame.get("type")
            if isinstance(frame.get("ref"), str):
                reply["ref"] = frame["ref"]
        self.push(encode_frame(reply))
        if error.fatal:
            log.info("closing %s: %s", self.conn.peer, error.message)
            self.conn.close(error.message)

    def _dispatch(self, frame: Frame) -> None:
        if self.server.stopping:
            return
        if frame["type"] != "pong" and not self._within_rate():
            return  # every frame counts, valid or not
        kind = validate_request(frame)["type"]
        if self.member is None and kind not in _BEFORE_LOGIN:
            raise NotLoggedIn("log in first (send a hello frame)")
        _HANDLERS[kind](self, frame)

    def _within_rate(self) -> bool:
        """Flood control. A refused frame is reported at most once a second (an error per
        refused frame would let a flooder make us flood it back); `burst` refusals within
        10 seconds is abuse, and disconnects."""
        if self.bucket.take():
            return True
        now = time.monotonic()
        if self._refusals is None:
            self._refusals = collections.deque(maxlen=max(1, self.config.burst))
        self._refusals.append(now)
        if len(self._refusals) == self._refusals.maxlen and now - self._refusals[0] < 10:
            self.conn.close("flooding: too many messages")
        if now - self._last_refusal_reported < 1.0:
            return False
        self._last_refusal_reported = now
        raise RateLimited("you are sending too fast; slow down")

    def on_hello(self, frame: Frame) -> None:
        if self.member is not None or self._pending_login is not None:
            raise RequestError("already logged in")
        if frame["version"] != PROTOCOL_VERSION:
            raise UnsupportedVersion(
                f"protocol version {frame['version']} is not supported; this server speaks "
                f"version {PROTOCOL_VERSION}"
            )
        username = validate_name(frame["username"])
        if self.server.state.member(username) is not None:
            raise NameTaken(f'the username "{username}" is already in use')
        public_der = _b64decode(frame["public_key"], "public_key")
        registered = self.server.registry.lookup(username)
        if registered is not None and registered.public_der != public_der:
            raise KeyMismatch(
                f'the username "{username}" is registered to another key; if you lost your key, '
                "ask the server operator to remove the registration"
            )
        nonce = secrets.token_bytes(32)
        self._pending_login = {"username": username, "public_der": public_der, "nonce": nonce}
        self.push(encode_frame({"type": "challenge", "version": PROTOCOL_VERSION,
                                "nonce": base64.b64encode(nonce).decode(),
                                "server_id": self.server.server_id}))

    def on_auth(self, frame: Frame) -> None:
        pending, self._pending_login = self._pending_login, None
        if pending is None or self.member is not None:
            raise RequestError("send hello before auth")
        signature = _b64decode(frame["signature"], "signature")
        try:  # verify_login also refuses unusable keys (size, type, garbage)
            self.server.crypto_pool.submit(
                auth.verify_login, pending["public_der"], signature, pending["nonce"],
                pending["username"], self.server.server_id).result()
        except auth.AuthError as exc:
            raise AuthFailed(f"the login was refused: {exc}") from None
        username = pending["username"]
        with self.server.registration_lock:  # two first logins with one name: one key wins
            registered = self.server.registry.lookup(username)
            if registered is None:
                registered = self.server.registry.register(username, pending["public_der"])
                log.info("registered the key of %s", username)
            elif registered.public_der != pending["public_der"]:
                raise KeyMismatch(f'the username "{username}" is registered to another key')
        self.member = self.server.state.login(username, self.conn, public_der=registered.public_der,
                                              address=self.conn.peer)
        log.info("connect %s from %s", username, self.conn.peer)

    def on_message(self, frame: Frame) -> None:
        self.server.state.post(self._me, frame["text"], frame.get("ref"))

    def on_join(self, frame: Frame) -> None:
        self.server.state.join(self._me, frame["room"])
        log.info("join %s -> %s", self._me.name, self._me.room)

    def on_rooms(self, frame: Frame) -> None:
        self.server.state.list_rooms(self._me)

    def on_list(self, frame: Frame) -> None:
        self.server.state.list_room(self._me)

    def on_users(self, frame: Frame) -> None:
        self.server.state.list_users(self._me)

    def on_status(self, frame: Frame) -> None:
        self.server.state.set_status(self._me, frame["status"], frame.get("note"))
        log.info("status %s -> %s", self._me.name, self._me.status)

    def on_private(self, frame: Frame) -> None:
        self.server.state.send_private(self._me, frame["to"], frame["envelope"], frame.get("ref"))

    def on_get_key(self, frame: Frame) -> None:
        """A user's registered public key; clients pin it and check it on every use."""
        registered = self.server.registry.lookup(frame["user"])
        if registered is None:
            raise UnknownUser(f'no user "{frame["user"][:40]}" is known to this server')
        self.push(encode_frame({
            "type": "key", "user": registered.username,
            "public_key": base64.b64encode(registered.public_der).decode(),
            "fingerprint": registered.fingerprint,
        }))

    def on_ping(self, frame: Frame) -> None:
        self.push(encode_frame({"type": "pong", "data": frame.get("data", "")}))

    def on_pong(self, frame: Frame) -> None:
        """Any input already counts as a sign of life; nothing more to do."""

    def on_quit(self, frame: Frame) -> None:
        self.push(encode_frame({"type": "bye", "reason": "goodbye"}))
        self.conn.close("quit")

    @property
    def _me(self) -> Member:
        assert self.member is not None  # _dispatch lets only login frames through before
        return self.member


def _b64decode(value: str, field: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError(f'field "{field}" is not valid base64') from None


_BEFORE_LOGIN = {"hello", "auth", "ping", "pong", "quit"}
_HANDLERS: dict[str, Callable[[Session, Frame], None]] = {
    "hello": Session.on_hello,
    "auth": Session.on_auth,
    "message": Session.on_message,
    "join": Session.on_join,
    "rooms": Session.on_rooms,
    "list": Session.on_list,
    "users": Session.on_users,
    "status": Session.on_status,
    "private": Session.on_private,
    "get_key": Session.on_get_key,
    "ping": Session.on_ping,
    "pong": Session.on_pong,
    "quit": Session.on_quit,
}
