"""End-to-end encryption as a whole: what the server and the wire see, and what a hostile
server (played by a rewriting proxy) can and cannot do."""
from __future__ import annotations

import base64
import copy
import subprocess
import sys

import pytest

import auth
from client import ErrorEvent, KeyWarning, LoginError, Notice, PrivateMessage, PrivateRejected
from conftest import ROOT
from mitm import FrameProxy

SECRET = "the vault code is 4-8-15-16-23-42"


def private_from(peer: str, outgoing: bool = False):
    return lambda e: isinstance(e, PrivateMessage) and e.peer == peer and e.outgoing == outgoing


@pytest.fixture
def proxies():
    made: list[FrameProxy] = []

    def make(server, transform=None) -> FrameProxy:
        proxy = FrameProxy(server.address, *([transform] if transform else []))
        made.append(proxy)
        return proxy

    yield make
    for proxy in made:
        proxy.close()


def test_plaintext_is_neither_on_the_wire_nor_in_the_log(chat_server, client_factory, proxies):
    proxy = proxies(chat_server)
    alice = client_factory(proxy, "alice")
    bob = client_factory(proxy, "bob")
    alice.execute(f"/privatemsg bob {SECRET}")
    received = bob.recorder.wait_for(private_from("alice"))
    # Opened and its signature checked; `verified` stays False until bob runs /verify.
    assert received.text == SECRET and not received.verified
    shown = alice.recorder.wait_for(private_from("bob", outgoing=True))
    assert shown.text == SECRET
    wire = bytes(proxy.captured)
    assert b"private" in wire and b"envelope" in wire  # the message did cross this proxy
    for needle in (SECRET.encode(), SECRET.encode("utf-16-le"), base64.b64encode(SECRET.encode())):
        assert needle not in wire
    chat_server.log.write_pending()
    assert SECRET not in chat_server.log.path.read_text("utf-8")


def test_a_substituted_key_is_caught_by_the_pin_and_trust_restores_sending(
        chat_server, client_factory, key_pool, proxies):
    # alice and bob meet once through an honest server: alice pins bob's key.
    alice = client_factory(chat_server, "alice")
    bob = client_factory(chat_server, "bob")
    alice.execute("/pm bob hello, honest server")
    bob.recorder.wait_for(private_from("alice"))
    alice.close()

    # Now the server (the proxy) hands out mallory's key as bob's.
    mallory_der = auth.public_key_der(key_pool.get(6))

    def swap_key(direction, frame):
        if direction == "down" and frame["type"] == "key" and frame["user"] == "bob":
            frame = {**frame, "public_key": base64.b64encode(mallory_der).decode(),
                     "fingerprint": auth.key_fingerprint(mallory_der)}
        return [frame]

    alice = client_factory(proxies(chat_server, swap_key), "alice")
    alice.execute("/pm bob this must not go to mallory")
    warning = alice.recorder.wait_for(KeyWarning)
    assert warning.user == "bob"
    assert warning.offered_fingerprint == auth.readable_fingerprint(mallory_der)
    assert warning.pinned_fingerprint == auth.readable_fingerprint(auth.public_key_der(key_pool.get(1)))
    refused = alice.recorder.wait_for(ErrorEvent)
    assert refused.code == "key_changed" and "NOT sent" in refused.message
    assert not alice.recorder.of_type(PrivateMessage)

    # The user decides to accept the new key (say bob confirmed it by phone): sending works.
    alice.execute("/trust bob")
    assert "now trust bob" in alice.recorder.wait_for(Notice).text
    alice.execute("/pm bob after trust")
    sent = alice.recorder.wait_for(private_from("bob", outgoing=True))
    assert sent.text == "after trust"
    # ...and it is sealed for the trusted (mallory's) key, so bob's own key cannot open it.
    rejected = bob.recorder.wait_for(PrivateRejected)
    assert rejected.peer == "alice"
    assert not [e for e in bob.recorder.of_type(PrivateMessage) if e.text == "after trust"]


def test_messages_from_a_contact_whose_key_changed_are_refused(
        chat_server, client_factory, key_pool, tmp_path):
    alice = client_factory(chat_server, "alice")
    bob = client_factory(chat_server, "bob")
    bob.execute("/pm alice first contact")
    alice.recorder.wait_for(private_from("bob"))
    bob.close()
    # bob loses his key; the operator removes his registration; he comes back with another.
    assert chat_server.registry.forget("bob")
    bob2 = client_factory(chat_server, "bob", key=5, home="bob-new-laptop")
    bob2.execute("/pm alice it is really me, new laptop")
    rejected = alice.recorder.wait_for(PrivateRejected)
    assert "key changed" in rejected.reason
    warning = alice.recorder.wait_for(KeyWarning)
    assert warning.user == "bob"
    assert len(alice.recorder.of_type(PrivateMessage)) == 1  # only the first one
    alice.execute("/trust bob")
    alice.recorder.wait_for(Notice)
    mark = alice.recorder.mark()
    bob2.execute("/pm alice now?")
    assert alice.recorder.wait_for(private_from("bob"), after=mark).text == "now?"


@pytest.mark.parametrize("relabel", [False, True])
def test_a_message_redirected_to_someone_else_is_refused(
        chat_server, client_factory, proxies, relabel):
    """The server takes alice's message for bob and hands it to carol, as it is or with
    the envelope's recipient rewritten to carol."""
    stolen: list[dict] = []

    def tap(direction, frame):  # in front of bob: keeps a copy of what bob receives
        if direction == "down" and frame["type"] == "private":
            stolen.append(frame)
        return [frame]

    def inject(direction, frame):  # in front of carol: delivers the copy with her next reply
        if direction == "down" and frame["type"] == "rooms" and stolen:
            envelope = dict(stolen[0]["envelope"])
            if relabel:
                envelope["recipient"] = "carol"
            return [{**stolen[0], "to": "carol", "envelope": envelope}, frame]
        return [frame]

    bob = client_factory(proxies(chat_server, tap), "bob")
    carol = client_factory(proxies(chat_server, inject), "carol")
    alice = client_factory(chat_server, "alice")
    alice.execute("/pm bob for bob only")
    assert bob.recorder.wait_for(private_from("alice")).text == "for bob only"
    carol.request("rooms")
    rejected = carol.recorder.wait_for(PrivateRejected)
    assert rejected.peer == "alice"
    assert not carol.recorder.of_type(PrivateMessage)


def test_a_message_claimed_from_someone_else_is_refused(chat_server, client_factory, proxies):
    # The server says the message is from carol (with carol's real key): but alice signed it.
    carol_key = {}

    def spoof(direction, frame):
        if direction == "down" and frame["type"] == "key" and frame["user"] == "carol":
            carol_key["der"] = frame["public_key"]
        if direction == "down" and frame["type"] == "private" and carol_key:
            return [{**frame, "from": "carol", "from_key": carol_key["der"]}]
        return [frame]

    proxy = proxies(chat_server, spoof)
    bob = client_factory(proxy, "bob")
    carol = client_factory(chat_server, "carol")
    alice = client_factory(chat_server, "alice")
    bob.execute("/fingerprint carol")  # bob fetches (and pins) carol's key through the proxy
    assert "carol's key fingerprint" in bob.recorder.wait_for(Notice).text
    alice.execute("/pm bob I am alice")
    rejected = bob.recorder.wait_for(PrivateRejected)
    assert rejected.peer == "carol"
    assert not bob.recorder.of_type(PrivateMessage)
    del carol


def test_a_replayed_message_is_refused(chat_server, client_factory, proxies):
    def replay(direction, frame):
        if direction == "down" and frame["type"] == "private":
            again = copy.deepcopy(frame)
            again["id"] = frame["id"] + 1000
            return [frame, again]
        return [frame]

    bob = client_factory(proxies(chat_server, replay), "bob")
    alice = client_factory(chat_server, "alice")
    alice.execute("/pm bob only once")
    assert bob.recorder.wait_for(private_from("alice")).text == "only once"
    rejected = bob.recorder.wait_for(PrivateRejected)
    assert "replayed" in rejected.reason
    assert len(bob.recorder.of_type(PrivateMessage)) == 1


@pytest.mark.parametrize("field", ["wrapped_key", "nonce", "ciphertext", "tag", "signature",
                                   "message_id", "sent_at", "sender"])
def test_a_tampered_envelope_field_is_refused_and_nothing_shown(
        chat_server, client_factory, proxies, field):
    def tamper(direction, frame):
        if direction == "down" and frame["type"] == "private":
            envelope = dict(frame["envelope"])
            value = envelope[field]
            if field in ("message_id",):
                envelope[field] = ("0" if value[0] != "0" else "1") + value[1:]
            elif field == "sent_at":
                envelope[field] = value[:-2] + ("0" if value[-2] != "0" else "1") + "Z"
            elif field == "sender":
                envelope[field] = value.upper() + "x"
            else:
                raw = bytearray(base64.b64decode(value))
                raw[len(raw) // 2] ^= 0x01  # one bit
                envelope[field] = base64.b64encode(bytes(raw)).decode()
            return [{**frame, "envelope": envelope}]
        return [frame]

    bob = client_factory(proxies(chat_server, tamper), "bob")
    alice = client_factory(chat_server, "alice")
    alice.execute("/pm bob tamper with me")
    assert bob.recorder.wait_for(PrivateRejected).peer == "alice"
    assert not bob.recorder.of_type(PrivateMessage)


def test_impersonation_with_another_key_is_refused(chat_server, client_factory):
    alice = client_factory(chat_server, "alice")
    alice.close()
    with pytest.raises(LoginError) as refused:
        client_factory(chat_server, "Alice", key=5, home="mallory")
    assert refused.value.code == "key_mismatch"
    assert client_factory(chat_server, "alice").username == "alice"  # the real key still works


def test_operator_can_forget_a_registration(chat_server, client_factory, tmp_path):
    client_factory(chat_server, "alice").close()
    registry = chat_server.config.registry
    out = subprocess.run([sys.executable, "server.py", "--registry", str(registry),
                          "--forget-user", "ALICE"], cwd=ROOT, capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 0 and "registration removed" in out.stdout
    chat_server.registry = type(chat_server.registry)(registry)  # the running server rereads
    assert client_factory(chat_server, "alice", key=5, home="alice-new").username == "alice"


def test_fingerprints_are_readable_and_match_on_both_sides(chat_server, client_factory):
    alice = client_factory(chat_server, "alice")
    bob = client_factory(chat_server, "bob")
    alice.execute("/fingerprint")
    own = alice.recorder.wait_for(Notice).text.split(": ", 1)[1]
    assert len(own.split()) == 12 and all(len(g) == 5 and g.isdigit() for g in own.split())
    bob.execute("/fingerprint alice")
    seen_by_bob = bob.recorder.wait_for(Notice).text
    assert f"alice's key fingerprint: {own}" in seen_by_bob
    mark = bob.recorder.mark()
    bob.execute("/fingerprint")
    bobs_own = bob.recorder.wait_for(Notice, after=mark).text
    assert f"yours: {bobs_own.split(': ', 1)[1]}" in seen_by_bob
