"""Issue 9, item 1: key verification that really protects, over real sockets.

A rewriting proxy (tests/mitm.py) plays the malicious server: it hands out its own key
for a contact, shows the genuine one when the user checks, pushes keys nobody asked for,
or swaps the key that comes with a message.
"""
from __future__ import annotations

import base64
import copy
from collections import Counter

from Crypto.Cipher.PKCS1_OAEP import PKCS1OAEP_Cipher
from Crypto.Signature.pss import PSS_SigScheme

import auth
import identity
from client import (
    ErrorEvent,
    KeyWarning,
    Notice,
    NotSent,
    PrivateMessage,
    PrivateRejected,
    RoomList,
    RoomMessage,
    describe,
)


def private_from(peer: str, outgoing: bool = False, text: str | None = None):
    return lambda e: (isinstance(e, PrivateMessage) and e.peer == peer and e.outgoing == outgoing
                      and (text is None or e.text == text))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def key_frame_with(frame: dict, der: bytes) -> dict:
    return {**frame, "public_key": b64(der), "fingerprint": auth.key_fingerprint(der)}


def readable(der: bytes) -> str:
    return auth.readable_fingerprint(der)


def wait_count(recorder, kind: type, count: int, after: int = 0) -> list:
    """Wait until `count` events of `kind` arrived after index `after`; return them."""
    def enough(_event) -> bool:
        return sum(isinstance(e, kind) for e in recorder.events[after:]) >= count
    recorder.wait_for(enough, after=after)
    return [e for e in recorder.events[after:] if isinstance(e, kind)]




def alice_knows_bob(chat_server, client_factory):
    """alice and bob meet once through the honest server: alice pins bob's real key."""
    alice = client_factory(chat_server, "alice")
    bob = client_factory(chat_server, "bob")
    alice.execute("/pm bob hello, honest server")
    bob.recorder.wait_for(private_from("alice"))
    alice.close()
    return bob


def test_fingerprint_shows_the_key_trust_would_take_not_a_fresh_fetch(
        chat_server, client_factory, key_pool, proxies):
    """The bypass of issue 9: the server offers its own key for bob, then answers the
    user's /fingerprint check with bob's genuine key. The check must show the offered key,
    and trusting with the digits bob reads out must not pin the attacker's key."""
    bob = alice_knows_bob(chat_server, client_factory)
    genuine_der, mallory_der = bob.identity.public_der, auth.public_key_der(key_pool.get(6))
    key_requests: list[str] = []

    def attack(direction, frame):
        if direction == "up" and frame["type"] == "get_key":
            key_requests.append(frame["user"])
        if direction == "down" and frame["type"] == "key" and len(key_requests) == 1:
            return [key_frame_with(frame, mallory_der)]  # first answer: mallory's key
        return [frame]  # any later answer: the genuine key, to fool a fresh check

    alice = client_factory(proxies(chat_server, attack), "alice")
    alice.execute("/pm bob are you there?")
    warning = alice.recorder.wait_for(KeyWarning)
    assert (warning.pinned_fingerprint, warning.offered_fingerprint) == (
        readable(genuine_der), readable(mallory_der))
    assert alice.recorder.wait_for(NotSent).code == "key_changed"

    mark = alice.recorder.mark()
    alice.execute("/fingerprint bob")
    shown = alice.recorder.wait_for(
        lambda e: isinstance(e, Notice) and e.topic == "fingerprint", after=mark)
    assert f"offered: {readable(mallory_der)} (the key /trust bob would accept)" in shown.text
    assert f"Pinned: {readable(genuine_der)}" in shown.text
    assert f"bob's key fingerprint: {readable(genuine_der)}" not in shown.text
    assert not shown.verified and shown.user == "bob"
    assert key_requests == ["bob"], "the check fetched a fresh key instead of showing the offer"

    # bob reads his real fingerprint out on the phone; alice types it: it is not on offer.
    alice.execute(f"/trust bob {readable(genuine_der)}")
    refused = alice.recorder.wait_for(lambda e: isinstance(e, ErrorEvent)
                                      and e.code == "trust_refused")
    assert "NOT trusted" in refused.message
    assert alice.known_keys.get("bob").fingerprint == auth.key_fingerprint(genuine_der)

    # Sending still works, to the genuine key only (the proxy now serves it): bob opens it.
    alice.execute("/pm bob sealed for your real key")
    assert bob.recorder.wait_for(private_from("alice", text="sealed for your real key"))


def test_trust_is_refused_when_yet_another_key_was_offered_since_the_warning(
        chat_server, client_factory, key_pool, proxies):
    bob = alice_knows_bob(chat_server, client_factory)
    first, second = (auth.public_key_der(key_pool.get(n)) for n in (5, 6))
    served: list[bytes] = []

    def attack(direction, frame):
        if direction == "down" and frame["type"] == "key":
            served.append(first if not served else second)
            return [key_frame_with(frame, served[-1])]
        return [frame]

    alice = client_factory(proxies(chat_server, attack), "alice")
    alice.execute("/pm bob one")
    assert alice.recorder.wait_for(KeyWarning).offered_fingerprint == readable(first)
    mark = alice.recorder.mark()
    alice.execute("/pm bob two")
    again = alice.recorder.wait_for(KeyWarning, after=mark)
    assert again.offered_fingerprint == readable(second)

    # The user compared the first key and types /trust: not that one, and not blindly this one.
    mark = alice.recorder.mark()
    alice.execute("/trust bob")
    refused = alice.recorder.wait_for(ErrorEvent, after=mark)
    assert refused.code == "trust_refused" and "yet another key" in refused.message
    shown = alice.recorder.wait_for(KeyWarning, after=mark)
    assert shown.offered_fingerprint == readable(second)
    assert alice.known_keys.get("bob").fingerprint == auth.key_fingerprint(bob.identity.public_der)

    mark = alice.recorder.mark()
    alice.execute(f"/trust bob {readable(first)}")  # digits of a key no longer on offer
    assert alice.recorder.wait_for(ErrorEvent, after=mark).code == "trust_refused"
    assert alice.known_keys.get("bob").fingerprint == auth.key_fingerprint(bob.identity.public_der)

    mark = alice.recorder.mark()
    alice.execute(f"/trust bob {readable(second)}")  # exactly the key shown last
    trusted = alice.recorder.wait_for(Notice, after=mark)
    assert trusted.topic == "trust" and readable(second) in trusted.text
    assert alice.known_keys.get("bob").fingerprint == auth.key_fingerprint(second)


def test_a_key_nobody_asked_for_is_never_pinned_or_offered(
        chat_server, client_factory, key_pool, proxies):
    mallory_der = auth.public_key_der(key_pool.get(6))

    def push_keys(direction, frame):
        if direction == "down" and frame["type"] == "rooms":
            return [frame] + [{"type": "key", "user": user, "public_key": b64(mallory_der),
                               "fingerprint": auth.key_fingerprint(mallory_der)}
                              for user in ("carol", "bob")]
        return [frame]

    alice = client_factory(proxies(chat_server, push_keys), "alice")
    bob = client_factory(chat_server, "bob")
    carol = client_factory(chat_server, "carol")
    alice.execute("/pm bob hi")  # alice asks for (and pins) bob's real key
    bob.recorder.wait_for(private_from("alice"))
    alice.request("rooms")
    alice.recorder.wait_for(RoomList)
    alice.say("after the pushed keys")  # a round trip: the pushed frames were handled
    alice.recorder.wait_for(lambda e: isinstance(e, RoomMessage) and e.text == "after the pushed keys")

    assert alice.known_keys.get("carol") is None
    assert alice.known_keys.get("bob").fingerprint == auth.key_fingerprint(bob.identity.public_der)
    assert not alice.recorder.of_type(KeyWarning)
    alice.execute("/pm carol hello carol")  # asked for now: the real key is pinned
    assert carol.recorder.wait_for(private_from("alice")).text == "hello carol"
    assert alice.known_keys.get("carol").fingerprint == auth.key_fingerprint(carol.identity.public_der)


def test_a_from_key_that_fails_verification_is_never_pinned(
        chat_server, client_factory, key_pool, proxies):
    """The server attaches its own key to alice's first message to bob. Pinning it before
    checking the envelope would lock bob out of alice's real messages for good."""
    mallory_der = auth.public_key_der(key_pool.get(6))
    swapped: list[int] = []

    def swap_from_key(direction, frame):
        if direction == "down" and frame["type"] == "private" and not swapped:
            swapped.append(frame["id"])
            return [{**frame, "from_key": b64(mallory_der)}]
        return [frame]

    bob = client_factory(proxies(chat_server, swap_from_key), "bob")
    alice = client_factory(chat_server, "alice")
    alice.execute("/pm bob first")
    assert bob.recorder.wait_for(PrivateRejected).peer == "alice"
    assert bob.known_keys.get("alice") is None
    alice.execute("/pm bob second")
    assert bob.recorder.wait_for(private_from("alice")).text == "second"
    assert bob.known_keys.get("alice").fingerprint == auth.key_fingerprint(alice.identity.public_der)
    assert not bob.recorder.of_type(KeyWarning)


def test_verify_marks_a_key_and_a_key_change_clears_the_mark(chat_server, client_factory):
    alice = client_factory(chat_server, "alice")
    bob = client_factory(chat_server, "bob")
    alice.execute("/pm bob one")
    first = bob.recorder.wait_for(private_from("alice"))
    assert not first.verified and first.fingerprint == readable(alice.identity.public_der)
    assert describe(first) == "[private, encrypted, not verified] alice -> you: one"

    wrong = "12345 " * 12
    bob.execute(f"/verify alice {wrong}")
    refused = bob.recorder.wait_for(ErrorEvent)
    assert refused.code == "verify_refused" and "do not verify" in refused.message
    assert not identity.is_verified(bob.known_keys.get("alice"))

    bob.execute(f"/verify alice {readable(alice.identity.public_der)}")
    done = bob.recorder.wait_for(lambda e: isinstance(e, Notice) and e.topic == "verify")
    assert done.verified and done.user == "alice"
    mark = bob.recorder.mark()
    alice.execute("/pm bob two")
    second = bob.recorder.wait_for(private_from("alice"), after=mark)
    assert second.verified
    assert describe(second) == "[private, encrypted, verified] alice -> you: two"
    mark = bob.recorder.mark()
    bob.execute("/fingerprint alice")
    shown = bob.recorder.wait_for(lambda e: isinstance(e, Notice) and e.topic == "fingerprint",
                                  after=mark)
    assert shown.verified and "verified by you" in shown.text
    # On disk: another start of bob's client sees the mark.
    assert identity.is_verified(identity.known_keys(bob.data_dir, "bob").get("alice"))

    # alice's key changes: the warning says the old key was verified, /trust clears the mark.
    alice.close()
    assert chat_server.registry.forget("alice")
    alice2 = client_factory(chat_server, "alice", key=5, home="alice-new-laptop")
    alice2.execute("/pm bob new laptop")
    warning = bob.recorder.wait_for(KeyWarning)
    assert warning.verified and warning.offered_fingerprint == readable(alice2.identity.public_der)
    mark = bob.recorder.mark()
    bob.execute("/verify alice")  # not while the change is pending
    assert bob.recorder.wait_for(ErrorEvent, after=mark).code == "verify_refused"
    bob.execute("/trust alice")
    bob.recorder.wait_for(lambda e: isinstance(e, Notice) and e.topic == "trust", after=mark)
    mark = bob.recorder.mark()
    alice2.execute("/pm bob again")
    third = bob.recorder.wait_for(private_from("alice"), after=mark)
    assert not third.verified
    assert not identity.is_verified(bob.known_keys.get("alice"))


def test_a_replayed_envelope_costs_no_rsa_operation(chat_server, client_factory, proxies,
                                                    monkeypatch):
    """The replay guard is consulted before any RSA work: five replays of one sealed
    message cost bob no decryption and no signature check."""
    def replay(direction, frame):
        if direction == "down" and frame["type"] == "private":
            copies = [copy.deepcopy(frame) for _ in range(5)]
            for n, again in enumerate(copies, 1):
                again["id"] = frame["id"] + n
            return [frame, *copies]
        return [frame]

    bob = client_factory(proxies(chat_server, replay), "bob")
    alice = client_factory(chat_server, "alice")
    alice.execute("/pm bob warm up")  # alice fetches bob's key; bob pins alice's
    bob.recorder.wait_for(private_from("alice", text="warm up"))
    wait_count(bob.recorder, PrivateRejected, 5)
    mark = bob.recorder.mark()

    calls: Counter[str] = Counter()  # real primitives, wrapped to count the calls

    def counting(name, real):
        def wrapper(self, *args, **kwargs):
            calls[name] += 1
            return real(self, *args, **kwargs)
        return wrapper

    monkeypatch.setattr(PKCS1OAEP_Cipher, "decrypt", counting("decrypt", PKCS1OAEP_Cipher.decrypt))
    monkeypatch.setattr(PSS_SigScheme, "verify", counting("verify", PSS_SigScheme.verify))
    alice.execute("/pm bob only once")
    assert bob.recorder.wait_for(private_from("alice"), after=mark).text == "only once"
    rejected = wait_count(bob.recorder, PrivateRejected, 5, after=mark)
    assert all("replayed" in r.reason for r in rejected)
    assert calls == Counter(decrypt=1, verify=1)
