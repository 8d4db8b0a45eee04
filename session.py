"""One client's chat session: its login and its request handlers.

`Session` is what a `transport.Connection` hands every complete frame to. It checks the
frame against flood control and the request table (protocol.REQUEST_FIELDS), runs the
handler for its type, and turns any `GapshapeError` into an `error` frame in exactly one
place (`Session._report`). The handlers call into the shared state (rooms.ChatState) and
reply through the connection's outbox (`Connection.push`), which never blocks.

Login takes two frames: `hello` (name, key) earns a `challenge` with a fresh nonce, and
`auth` carries the signature over it (auth.py), verified on the server's crypto pool. A
proven login under a name that is online takes the session over: the old connection gets
`bye` "logged in elsewhere" and is closed (a reconnect after a network drop need not wait
for the dead connection's ping to time out). A first login registers the name, within the
registry's look-alike and per-key rules and the server's daily quotas (floodcontrol.py).

Every frame, valid or not, is paced by flood control first (floodcontrol.FloodLedger):
over the rate, the reader waits before handling it.
"""
from __future__ import annotations

import base64
import binascii
import logging
import secrets
from typing import TYPE_CHECKING, Any, Callable, cast

import auth
from errors import (
    AuthFailed,
    GapshapeError,
    InvalidName,
    KeyMismatch,
    NameTaken,
    NotLoggedIn,
    ProtocolError,
    RegistrationLimited,
    RequestError,
    ServerBusy,
    UnknownUser,
    UnsupportedVersion,
)
from floodcontrol import TokenBucket
from keyregistry import RegistrationRefused
from protocol import MAX_REF_CHARS, PROTOCOL_VERSION, Frame, encode_frame, validate_request
from rooms import MAX_TEXT_CHARS, TAKEOVER_REASON, Member, validate_name
from verifier import VerifierUnavailable

if TYPE_CHECKING:
    from transport import Connection

log = logging.getLogger("gapshape.server")


class Session:
    """The chat side of one connection: who it is logged in as, and what it may do."""

    __slots__ = ("conn", "server", "member", "user_bucket", "address_bucket", "_pending_login",
                 "_run", "_run_room", "_run_chars")

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.server = conn.server
        self.member: Member | None = None
        # Flood control is per address from the first byte, per user once logged in; the
        # buckets outlive the connection, so reconnecting does not refill them.
        self.address_bucket: TokenBucket | None = self.server.flood.address(conn.ip)
        self.user_bucket: TokenBucket | None = None
        self._pending_login: dict[str, Any] | None = None
        # Messages of the frames being read, gathered to be posted together: to one room,
        # in the order sent, with nothing else from this client between them.
        self._run: list[tuple[str, str | None]] = []  # (text, ref)
        self._run_room = ""
        self._run_chars = 0

    @property
    def logged_in(self) -> bool:
        return self.member is not None

    def receive(self, frame: Frame) -> None:
        """Carry out one frame from the client; errors become `error` frames. A message
        may wait for `end_batch` (the transport calls it once no frame read is left)."""
        try:
            if self._run and frame.get("type") != "message":
                self._post_run()  # what this client sent first is done first
            self._dispatch(frame)
        except GapshapeError as error:
            self._post_run()  # the error comes after the earlier messages' echoes
            self._report(error, frame)

    def end_batch(self) -> None:
        """The frames read so far are handled: post the messages gathered among them."""
        self._post_run()

    def report_bad_frame(self, error: ProtocolError) -> None:
        """Bad frames are paced like good ones, so junk cannot buy error frames faster."""
        self._post_run()
        if error.fatal or self._pace():
            self._report(error, None)

    def finish(self, reason: str) -> None:
        """The connection is ending: leave the chat."""
        if self.member is not None:
            self.server.state.logout(self.member, reason)
            log.info("disconnect %s (%s): %s", self.member.name, self.conn.peer, reason)
        else:
            log.debug("closed %s before login: %s", self.conn.peer, reason)

    def push(self, data: bytes) -> None:
        self.conn.push(data)

    def _report(self, error: GapshapeError, frame: Frame | None) -> None:
        """The one place where an error becomes an `error` frame."""
        reply: dict[str, Any] = {"type": "error", "code": error.code, "message": error.message}
        if isinstance(frame, dict):
            reply["request"] = frame.get("type")
            ref = frame.get("ref")
            if isinstance(ref, str) and len(ref) <= MAX_REF_CHARS:
                reply["ref"] = ref
        self.push(encode_frame(reply))
        if error.fatal:
            log.info("closing %s: %s", self.conn.peer, error.message)
            self.conn.close(error.message)

    def _dispatch(self, frame: Frame) -> None:
        if self.server.stopping:
            return
        if frame["type"] != "pong" and not self._pace():
            return  # every frame counts, valid or not
        kind = validate_request(frame)["type"]
        ref = frame.get("ref")
        if isinstance(ref, str) and len(ref) > MAX_REF_CHARS:
            raise ProtocolError(f'field "ref" is over {MAX_REF_CHARS} characters')
        if self.member is None and kind not in _BEFORE_LOGIN:
            raise NotLoggedIn("log in first (send a hello frame)")
        _HANDLERS[kind](self, frame)

    def _pace(self) -> bool:
        """Flood control: wait for this frame's turn; False if the client was dropped for
        staying too far ahead (its frame is not handled)."""
        flood = self.server.flood
        if not flood.enabled:
            return True
        wait = flood.charge(self.user_bucket, self.address_bucket)
        if wait <= 0:
            return True
        # Behind this frame wait others already read: how long until the last is handled.
        allowed = int(flood.kick_after * flood.rate) + 1
        backlog = wait + self.conn.frames_waiting(allowed) / flood.rate
        self._post_run()  # what is already handled does not wait with this frame
        if backlog > flood.kick_after:
            reason = (f"flooding: sending far faster than {flood.rate:g} messages a second "
                      "for too long")
            self.push(encode_frame({"type": "bye", "reason": reason}))
            self.conn.close(reason)
            return False
        self.conn.pause(wait)
        return not self.conn.closing

    def on_hello(self, frame: Frame) -> None:
        if self.member is not None or self._pending_login is not None:
            raise RequestError("already logged in")
        version = frame["version"]
        if type(version) is not int or version != PROTOCOL_VERSION:
            raise UnsupportedVersion(
                f"protocol version {str(version)[:20]} is not supported; this server speaks "
                f"version {PROTOCOL_VERSION}"
            )
        username = validate_name(frame["username"])
        public_der = _b64decode(frame["public_key"], "public_key")
        online = self.server.state.member(username)
        if online is not None and online.public_der != public_der:
            raise NameTaken(f'the username "{username}" is already in use')
        registered = self.server.registry.lookup(username)
        if registered is not None and registered.public_der != public_der:
            raise KeyMismatch(
                f'the username "{username}" is registered to another key; if you lost your key, '
                "ask the server operator to remove the registration"
            )
        if registered is None:
            self._check_registration(username, public_der)  # before paying for RSA
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
            self.server.verifier.verify(pending["public_der"], signature, pending["nonce"],
                                        pending["username"], self.server.server_id)
        except auth.AuthError as exc:
            raise AuthFailed(f"the login was refused: {exc}") from None
        except VerifierUnavailable as exc:
            raise ServerBusy(f"the server could not check the login now ({exc}); "
                             "try again in a moment") from None
        username = pending["username"]
        with self.server.registration_lock:  # two first logins with one name: one key wins
            registered = self.server.registry.lookup(username)
            if registered is None:
                self._check_registration(username, pending["public_der"], claim=True)
                try:
                    registered = self.server.registry.register(username, pending["public_der"])
                except RegistrationRefused as exc:
                    raise RegistrationLimited(str(exc)) from None
                log.info("registered the key of %s", username)
            elif registered.public_der != pending["public_der"]:
                raise KeyMismatch(f'the username "{username}" is registered to another key')
        # The proof is for the registered key, so whoever is online under the name is this
        # user's older session (a dead connection, another device): this login replaces it.
        self.member, replaced = self.server.state.login(
            username, self.conn, public_der=registered.public_der, address=self.conn.peer,
            take_over=True)
        self.user_bucket = self.server.flood.user(username)
        if replaced is not None:
            old = cast("Connection", replaced.outbox)
            old.flush()  # the bye, if the socket takes it; the old reader then cleans up
            old.abort(TAKEOVER_REASON)
            log.info("takeover %s: %s replaces %s", username, self.conn.peer, replaced.address)
        log.info("connect %s from %s", username, self.conn.peer)

    def _check_registration(self, username: str, public_der: bytes, *,
                            claim: bool = False) -> None:
        """Refuse a new name that looks like another, or over the key's or quotas' limits;
        with `claim` (the proven login about to register), count it in the quota too."""
        twin = self.server.registry.lookalike(username)
        if twin is not None:
            raise InvalidName(f'the username "{username}" looks too much like "{twin}", '
                              "who is already registered; choose another")
        # claim checks the quota and counts this registration in one step, so two nodes of
        # a cluster cannot both take the last place; a registration the registry then
        # refuses keeps its count, erring towards the limit.
        quota = self.server.registrations
        refusal = (self.server.registry.refusal(username, public_der)
                   or (quota.claim if claim else quota.refusal)(self.conn.ip))
        if refusal is not None:
            raise RegistrationLimited(f"the username cannot be registered: {refusal}")

    def on_message(self, frame: Frame) -> None:
        """Gathered into the run of messages that `_post_run` posts together (one queue
        operation per member for the run, docs/PERFORMANCE.md, run 8)."""
        text = frame["text"]
        room = self.server.state.room_to_post(self._me, text, frame.get("room"))
        if self._run and (room != self._run_room or len(self._run) >= MAX_RUN_MESSAGES
                          or self._run_chars + len(text) > MAX_RUN_CHARS):
            self._post_run()
        self._run.append((text, frame.get("ref")))
        self._run_room = room
        self._run_chars += len(text)

    def _post_run(self) -> None:
        run = self._run
        if not run:
            return
        self._run = []
        self._run_chars = 0
        for index, error in self.server.state.post_run(self._me, self._run_room, run):
            self._report(error, {"type": "message", "ref": run[index][1]})

    def on_join(self, frame: Frame) -> None:
        self.server.state.join(self._me, frame["room"])
        log.info("join %s -> %s", self._me.name, self._me.room)

    def on_history(self, frame: Frame) -> None:
        self.server.state.history_page(self._me, frame["room"], frame.get("before"),
                                       frame.get("limit", DEFAULT_HISTORY_PAGE))

    def on_leave(self, frame: Frame) -> None:
        self.server.state.leave(self._me, frame.get("room"))

    def on_ack(self, frame: Frame) -> None:
        """The client has the queued private messages `ids` (at most MAX_ACK_IDS)."""
        ids = frame["ids"]
        if len(ids) > MAX_ACK_IDS or not all(type(i) is int for i in ids):
            raise ProtocolError(f'"ids" must be a list of at most {MAX_ACK_IDS} integers')
        self.server.state.acknowledge(self._me, ids)

    def on_rooms(self, frame: Frame) -> None:
        self.server.state.list_rooms(self._me, frame.get("after"))

    def on_list(self, frame: Frame) -> None:
        self.server.state.list_room(self._me, frame.get("room"), frame.get("after"))

    def on_users(self, frame: Frame) -> None:
        self.server.state.list_users(self._me, frame.get("after"))

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
# A run of messages waits in its session while the reader handles one read: 32 short
# messages at most, or their texts up to the longest one message may have (a longer
# message is a run of its own), so a run holds about 40 KiB (docs/SECURITY.md).
MAX_RUN_MESSAGES = 32
MAX_RUN_CHARS = MAX_TEXT_CHARS
MAX_ACK_IDS = 1000
DEFAULT_HISTORY_PAGE = 50
_HANDLERS: dict[str, Callable[[Session, Frame], None]] = {
    "hello": Session.on_hello,
    "auth": Session.on_auth,
    "message": Session.on_message,
    "join": Session.on_join,
    "leave": Session.on_leave,
    "history": Session.on_history,
    "ack": Session.on_ack,
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
