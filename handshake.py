"""Connecting a client: TLS (a CA file, or the server's certificate pinned on first use)
and the login handshake (hello, challenge, auth, welcome; docs/PROTOCOL.md §4).

`client.ChatClient.connect` calls these on a fresh socket before its reader thread starts;
they block, read with the socket's timeout, and turn every failure into a `LoginError`
whose message is for the user. The login proof itself is auth.py's.
"""
from __future__ import annotations

import base64
import hashlib
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import auth
import identity
from errors import ProtocolError
from events import Event, Notice
from protocol import PROTOCOL_VERSION, Frame, FrameDecoder

__all__ = ["LoginError", "TlsSettings", "channel_id", "expect", "login", "wrap_tls"]


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


def wrap_tls(sock: socket.socket, settings: TlsSettings, host: str, port: int,
             data_dir: Path, emit: Callable[[Event], None]) -> ssl.SSLSocket:
    """TLS 1.2 or newer over `sock`, the server checked against the CA or the pin."""
    hostname = settings.server_hostname or host
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
        _check_server_pin(tls_sock, f"{host}:{port}", data_dir, emit)
    return tls_sock


def _check_server_pin(tls_sock: ssl.SSLSocket, name: str, data_dir: Path,
                      emit: Callable[[Event], None]) -> None:
    der = tls_sock.getpeercert(binary_form=True) or b""
    fingerprint = hashlib.sha256(der).hexdigest()
    servers = identity.known_servers(data_dir)
    check = servers.check(name, fingerprint)
    if check.status is identity.PinStatus.NEW:
        servers.pin(name, fingerprint)
        emit(Notice(f"pinned the certificate of {name} (SHA-256 {fingerprint[:16]}...)", "tls"))
    elif check.status is identity.PinStatus.MISMATCH:
        raise LoginError(
            "tls_pin_mismatch",
            f"WARNING: the certificate of {name} has CHANGED (pinned {check.pinned_fingerprint}, now "
            f"{fingerprint}). Someone may be intercepting the connection. Refusing to connect; "
            f"if the server really changed its certificate, remove its line from "
            f"{servers.path}.",
        )


def channel_id(sock: socket.socket) -> str:
    """Under TLS, the login proof is bound to the certificate we actually see, so a
    server cannot pass it on to another server (see docs/SECURITY.md)."""
    if not isinstance(sock, ssl.SSLSocket):
        return ""
    return hashlib.sha256(sock.getpeercert(binary_form=True) or b"").hexdigest()


def login(sock: socket.socket, decoder: FrameDecoder, write: Callable[[dict[str, object]], None],
          ident: identity.Identity, username: str, client_name: str) -> tuple[Frame, str]:
    """Prove `ident`'s key for `username`: (the welcome frame, the server id signed for)."""
    write({"type": "hello", "version": PROTOCOL_VERSION, "username": username,
           "public_key": base64.b64encode(ident.public_der).decode(), "client": client_name})
    challenge = expect(sock, decoder, write, "challenge")
    nonce = base64.b64decode(challenge["nonce"])
    server_id = channel_id(sock) or str(challenge.get("server_id", ""))
    signature = auth.sign_login(ident.private_key, nonce, username, server_id)
    write({"type": "auth", "signature": base64.b64encode(signature).decode()})
    return expect(sock, decoder, write, "welcome"), server_id


def expect(sock: socket.socket, decoder: FrameDecoder,
           write: Callable[[dict[str, object]], None], kind: str) -> Frame:
    """Read frames during login until `kind`; an error frame becomes LoginError."""
    while True:
        try:
            frame = decoder.next_frame()
        except ProtocolError as exc:
            raise LoginError("bad_frame", f"the server sent a bad frame: {exc}") from None
        if frame is None:
            try:
                data = sock.recv(65536)
            except TimeoutError:
                raise LoginError("timeout", "the server did not answer in time") from None
            if not data:
                raise LoginError("closed", "the server closed the connection")
            decoder.receive_data(data)
            continue
        if frame["type"] == kind:
            return frame
        if frame["type"] == "error":
            raise LoginError(str(frame.get("code")), str(frame.get("message")))
        if frame["type"] == "ping":
            write({"type": "pong", "data": frame.get("data", "")})
