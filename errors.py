"""The errors Gapshape turns into `error` frames.

Every failure a peer can cause is one of these classes. Each carries a stable `code` (what a
program matches on) and a message written for the person at the other end (what a client
shows). The server converts them to an `error` frame in exactly one place
(`session.Session._report`); anything else escaping a handler is a bug, logged as such.

`fatal` says whether the connection can go on: after a bad frame body the stream is still in
step, so the peer is told and carries on; after a bad length header it is not, so the peer
is told and disconnected.
"""
from __future__ import annotations


class GapshapeError(Exception):
    """Base of every error that is reported to the peer."""

    code = "error"
    fatal = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ProtocolError(GapshapeError):
    """The peer sent bytes that are not a valid Gapshape frame."""

    code = "bad_frame"


class FrameTooLarge(ProtocolError):
    """The length header announces a frame over the size limit; the body is never read."""

    code = "frame_too_large"
    fatal = True


class TruncatedFrame(ProtocolError):
    """The stream ended in the middle of a frame."""

    code = "truncated_frame"
    fatal = True


class RequestError(GapshapeError):
    """A well-formed request that cannot be carried out; the connection goes on."""

    code = "bad_request"


class NotLoggedIn(RequestError):
    """A chat request arrived before the login finished."""

    code = "not_logged_in"


class UnsupportedVersion(RequestError):
    """The client speaks a protocol version this server does not."""

    code = "unsupported_version"
    fatal = True


class InvalidName(RequestError):
    """A username or room name that breaks the naming rules."""

    code = "invalid_name"


class NameTaken(RequestError):
    """Somebody is already logged in with that username."""

    code = "name_taken"
    fatal = True


class AuthFailed(RequestError):
    """The login did not prove possession of the username's registered key."""

    code = "auth_failed"
    fatal = True


class KeyMismatch(AuthFailed):
    """The username is registered to another key."""

    code = "key_mismatch"


class UnknownUser(RequestError):
    """The named user is not online (or never was)."""

    code = "unknown_user"


class DoNotDisturb(RequestError):
    """The recipient's status is do-not-disturb: private messages are refused."""

    code = "dnd"


class QueueFull(RequestError):
    """A private message for an offline user cannot be kept: their mailbox, or the
    server's store of waiting messages, is full."""

    code = "queue_full"


class RegistrationLimited(RequestError):
    """A new username cannot be registered now: a key's, an address's or the server's
    registration limit is reached."""

    code = "registration_limited"
    fatal = True


class ServerFull(RequestError):
    """The server or this address has reached its connection limit."""

    code = "server_full"
    fatal = True


class ClusterUnavailable(GapshapeError):
    """The store this server shares with the other servers of its cluster (Redis) did not
    answer, so the request cannot be carried out correctly now; the connection goes on and
    the same request may succeed in a moment."""

    code = "cluster_unavailable"

    def __init__(self, message: str = "the chat's shared store is not reachable right now; "
                 "try again in a moment") -> None:
        super().__init__(message)


class ServerBusy(GapshapeError):
    """The server could not check a login proof now (its verifier process is restarting or
    stuck); nothing was decided, and the same login may succeed in a moment."""

    code = "server_busy"
