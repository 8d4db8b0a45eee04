"""Issue 5, point 7: TLS on the wire, with both ways for a client to verify the server.

Certificates are made at test time with `trustme` (a throwaway CA per test). The server
is started with `tls_cert`/`tls_key` (what `--tls-cert`/`--tls-key` set); clients verify
it against a CA file, or pin its certificate on first use in known_servers.json.
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

trustme = pytest.importorskip("trustme")

from client import LoginError, Notice, PrivateMessage, RoomMessage, TlsSettings  # noqa: E402
from hostile_net import WAIT, ServerProcess  # noqa: E402
from protocol import PROTOCOL_VERSION, encode_frame  # noqa: E402

pytestmark = pytest.mark.timeout(60)


class Certificates:
    """A CA and a server certificate for 127.0.0.1, written to PEM files in `directory`."""

    def __init__(self, directory: Path, *hosts: str) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.ca = trustme.CA()
        issued = self.ca.issue_cert(*(hosts or ("127.0.0.1",)))
        self.cafile = directory / "ca.pem"
        self.cert = directory / "server-cert.pem"
        self.key = directory / "server-key.pem"
        self.ca.cert_pem.write_to_path(str(self.cafile))
        for index, blob in enumerate(issued.cert_chain_pems):
            blob.write_to_path(str(self.cert), append=index > 0)
        issued.private_key_pem.write_to_path(str(self.key))
        self.der = ssl.PEM_cert_to_DER_cert(issued.cert_chain_pems[0].bytes().decode())


@pytest.fixture
def certs(tmp_path: Path) -> Certificates:
    return Certificates(tmp_path / "tls")


@pytest.fixture
def tls_server(server_factory: Any, certs: Certificates) -> Any:
    return server_factory(tls_cert=certs.cert, tls_key=certs.key)


def no_tracebacks(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


def test_ca_verified_clients_exchange_room_and_private_messages(
    tls_server: Any, client_factory: Any, certs: Certificates
) -> None:
    alice = client_factory(tls_server, "alice", tls=TlsSettings(cafile=str(certs.cafile)))
    bob = client_factory(tls_server, "bob", tls=TlsSettings(cafile=str(certs.cafile)))
    assert isinstance(alice._sock, ssl.SSLSocket)
    assert alice._sock.version() in ("TLSv1.2", "TLSv1.3")

    alice.say("over TLS")
    seen = bob.recorder.wait_for(lambda e: isinstance(e, RoomMessage) and e.text == "over TLS")
    assert seen.user == "alice"

    alice.send_private("bob", "sealed and tunnelled")
    got = bob.recorder.wait_for(lambda e: isinstance(e, PrivateMessage) and not e.outgoing)
    assert (got.peer, got.text) == ("alice", "sealed and tunnelled")
    sent = alice.recorder.wait_for(lambda e: isinstance(e, PrivateMessage) and e.outgoing)
    assert sent.id == got.id


@pytest.mark.parametrize("mistake", ["another-ca", "another-host"])
def test_a_certificate_the_client_cannot_verify_is_refused(
    server_factory: Any, client_factory: Any, tmp_path: Path, mistake: str,
    caplog: pytest.LogCaptureFixture
) -> None:
    host = "127.0.0.1" if mistake == "another-ca" else "example.org"
    served = Certificates(tmp_path / "served", host)
    trusted = Certificates(tmp_path / "trusted") if mistake == "another-ca" else served
    chat = server_factory(tls_cert=served.cert, tls_key=served.key)
    with pytest.raises(LoginError) as refused:
        client_factory(chat, "alice", tls=TlsSettings(cafile=str(trusted.cafile)))
    assert refused.value.code == "tls_verify_failed"
    # The server shrugs it off and serves a client that trusts the right CA.
    good = client_factory(chat, "bob", tls=TlsSettings(cafile=str(served.cafile),
                                                       server_hostname="example.org"
                                                       if mistake == "another-host" else None))
    good.say("fine")
    good.recorder.wait_for(lambda e: isinstance(e, RoomMessage) and e.text == "fine")
    assert not no_tracebacks(caplog)


def test_trust_on_first_use_pins_and_refuses_a_changed_certificate(
    server_factory: Any, client_factory: Any, tmp_path: Path
) -> None:
    first = Certificates(tmp_path / "first")
    chat = server_factory(tls_cert=first.cert, tls_key=first.key)
    host, port = chat.address
    alice = client_factory(chat, "alice", tls=TlsSettings())
    notice = alice.recorder.wait_for(lambda e: isinstance(e, Notice) and e.topic == "tls")
    assert "pinned" in notice.text
    known = tmp_path / "clients" / "alice" / "known_servers.json"
    pins = known.read_text()
    assert hashlib.sha256(first.der).hexdigest() in pins and f"{host}:{port}" in pins

    # Same certificate again: accepted silently.
    again = client_factory(chat, "alice2", tls=TlsSettings())
    assert again.username == "alice2"
    alice.close()
    again.close()
    chat.stop()

    # Another server (another certificate) on the same host:port: a loud refusal.
    second = Certificates(tmp_path / "second")
    impostor = server_factory(port=port, tls_cert=second.cert, tls_key=second.key)
    assert impostor.address == (host, port)
    with pytest.raises(LoginError) as refused:
        client_factory(impostor, "alice", tls=TlsSettings())
    assert refused.value.code == "tls_pin_mismatch"
    assert "CHANGED" in refused.value.message and str(known) in refused.value.message
    assert known.read_text() == pins, "a mismatching certificate must not replace the pin"


def _old_protocol_context(version: ssl.TLSVersion, cafile: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(str(cafile))
    context.minimum_version = version
    context.maximum_version = version
    context.set_ciphers("DEFAULT:@SECLEVEL=0")  # let this client offer what it is told to
    return context


def _client_can_speak(version: ssl.TLSVersion, certs: Certificates) -> bool:
    """Whether the local OpenSSL can negotiate `version` at all (against a lax server)."""
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(str(certs.cert), str(certs.key))
    server_context.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    server_context.set_ciphers("DEFAULT:@SECLEVEL=0")
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(WAIT)

    def serve() -> None:
        try:
            conn, _ = listener.accept()
            with server_context.wrap_socket(conn, server_side=True):
                pass
        except (OSError, ssl.SSLError):
            pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with socket.create_connection(listener.getsockname(), timeout=WAIT) as raw:
            with _old_protocol_context(version, certs.cafile).wrap_socket(
                    raw, server_hostname="127.0.0.1") as tls:
                return tls.version() is not None
    except (OSError, ssl.SSLError):
        return False
    finally:
        thread.join(WAIT)
        listener.close()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("version", ["TLSv1", "TLSv1_1"])
def test_tls_1_1_and_lower_are_refused(
    tls_server: Any, client_factory: Any, certs: Certificates, version: str,
    caplog: pytest.LogCaptureFixture
) -> None:
    old = getattr(ssl.TLSVersion, version)
    if not _client_can_speak(old, certs):
        pytest.skip(f"this OpenSSL cannot speak {version} even when asked to")
    with socket.create_connection(tls_server.address, timeout=WAIT) as raw:
        with pytest.raises(ssl.SSLError):
            _old_protocol_context(old, certs.cafile).wrap_socket(raw, server_hostname="127.0.0.1")
    # A modern client to the same server negotiates 1.2 or better and verifies it.
    context = ssl.create_default_context(cafile=str(certs.cafile))
    with socket.create_connection(tls_server.address, timeout=WAIT) as raw:
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            assert tls.version() in ("TLSv1.2", "TLSv1.3")
    alice = client_factory(tls_server, "alice", tls=TlsSettings(cafile=str(certs.cafile)))
    alice.say("still up")
    alice.recorder.wait_for(lambda e: isinstance(e, RoomMessage) and e.text == "still up")
    assert not no_tracebacks(caplog)


def _read_until_closed(sock: socket.socket, timeout: float) -> bytes:
    sock.settimeout(timeout)
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except (ConnectionResetError, BrokenPipeError):
        pass
    return received


@pytest.mark.parametrize("sends", ["a-plain-hello", "nothing"])
def test_a_plain_tcp_client_on_the_tls_port_harms_nobody(
    server_factory: Any, client_factory: Any, certs: Certificates, sends: str,
    caplog: pytest.LogCaptureFixture
) -> None:
    chat = server_factory(tls_cert=certs.cert, tls_key=certs.key, login_timeout=0.5)
    alice = client_factory(chat, "alice", tls=TlsSettings(cafile=str(certs.cafile)))
    started = time.monotonic()
    with socket.create_connection(chat.address, timeout=WAIT) as plain:
        if sends == "a-plain-hello":
            plain.sendall(encode_frame({"type": "hello", "version": PROTOCOL_VERSION, "username": "mallory",
                                        "public_key": "AAAA"}))
        received = _read_until_closed(plain, timeout=WAIT)
    assert b'"type"' not in received, "the server answered a plain client in clear text"
    assert time.monotonic() - started < 0.5 + 2
    alice.say("unharmed")
    alice.recorder.wait_for(lambda e: isinstance(e, RoomMessage) and e.text == "unharmed")
    assert not no_tracebacks(caplog)


def test_a_trickled_tls_handshake_is_cut_off_at_the_login_timeout(
    server_factory: Any, certs: Certificates
) -> None:
    """Slowloris on the handshake: each byte comes well within the timeout, the whole never.
    (CPython bounds a whole do_handshake() by the socket timeout, not each recv.)"""
    login_timeout = 0.6
    chat = server_factory(tls_cert=certs.cert, tls_key=certs.key, login_timeout=login_timeout)
    context = ssl.create_default_context(cafile=str(certs.cafile))
    hello = context.wrap_bio(ssl.MemoryBIO(), outgoing := ssl.MemoryBIO(),
                             server_hostname="127.0.0.1")
    with pytest.raises(ssl.SSLWantReadError):
        hello.do_handshake()
    client_hello = outgoing.read()
    started = time.monotonic()
    closed = False
    with socket.create_connection(chat.address, timeout=WAIT) as sock:
        for byte in client_hello:
            if time.monotonic() - started > login_timeout + 1.5:
                break
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                closed = True
                break
            time.sleep(login_timeout / 4)  # the trickle: each byte well inside the timeout
        if not closed:
            sock.settimeout(0.2)
            try:
                closed = sock.recv(1) == b""
            except TimeoutError:
                closed = False
            except OSError:
                closed = True
    took = time.monotonic() - started
    assert closed, (
        f"a handshake trickled over {took:.1f}s was never cut off ({login_timeout}s timeout)")


def test_the_known_servers_file_is_json_a_person_can_edit(
    tls_server: Any, client_factory: Any, tmp_path: Path
) -> None:
    client_factory(tls_server, "alice", tls=TlsSettings())
    document = json.loads((tmp_path / "clients" / "alice" / "known_servers.json").read_text())
    assert f"127.0.0.1:{tls_server.address[1]}" in json.dumps(document)


def test_the_documented_openssl_certificate_serves_tls_from_the_command_line(
    tmp_path: Path, client_factory: Any
) -> None:
    """docs/NETWORK-LIMITS.md's one openssl command, then `server.py --tls-cert --tls-key`;
    the self-signed certificate is its own CA file, or is pinned on first use."""
    if shutil.which("openssl") is None:
        pytest.skip("no openssl command on this system")
    cert, key = tmp_path / "server.crt", tmp_path / "server.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:3072", "-sha256", "-days", "3650", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True, timeout=60)
    server = ServerProcess("--port", "0", "--log", str(tmp_path / "messageslog.json"),
                           "--tls-cert", str(cert), "--tls-key", str(key))
    try:
        assert "(TLS)" in server.wait_for_output("listening on")
        endpoint = SimpleNamespace(address=server.address)
        by_ca = client_factory(endpoint, "alice", tls=TlsSettings(cafile=str(cert)))
        by_pin = client_factory(endpoint, "bob", tls=TlsSettings())
        by_ca.say("self-signed and verified")
        by_pin.recorder.wait_for(
            lambda e: isinstance(e, RoomMessage) and e.text == "self-signed and verified")
    finally:
        server.signal(signal.SIGTERM)
        server.wait()
        server.stop()


def test_the_desktop_client_logs_in_over_tls(
    tls_server: Any, certs: Certificates, tmp_path: Path, key_pool: Any
) -> None:
    """clientgui.py's network side (chatview.ClientLink) with --cafile and with --tls."""
    import queue

    import chatview
    from conftest import make_identity

    for settings in (TlsSettings(cafile=str(certs.cafile)), TlsSettings()):
        home = tmp_path / ("gui-ca" if settings.cafile else "gui-pin")
        make_identity(home, "alice", key_pool.get(0))
        posted: queue.Queue[Any] = queue.Queue()
        link = chatview.ClientLink(posted.put, home, tls=settings)
        link.connect(chatview.LoginRequest("alice", *tls_server.address))
        try:
            while not isinstance(event := posted.get(timeout=WAIT), chatview.Connected):
                assert not isinstance(event, chatview.ConnectFailed), event
            assert isinstance(link._client._sock, ssl.SSLSocket)
        finally:
            link.shutdown()
    assert "127.0.0.1" in (tmp_path / "gui-pin" / "known_servers.json").read_text()
