"""Tests for crypto.py: round trips, tampering, hostile input, known answers, OpenSSL interop."""
from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import os
import struct
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from Crypto.Hash import SHA256
from Crypto.PublicKey import RSA
from Crypto.Signature import pss
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import crypto
from crypto import CryptoError, DecryptionError, Envelope, open_envelope, seal

DATA = Path(__file__).parent / "data"
PLAINTEXT = "Meet at the café at nine ☕".encode()
SENT_AT = "2026-11-29T19:40:00.123Z"
MESSAGE_ID = "0123456789abcdef0123456789abcdef"
BYTES_FIELDS = ("wrapped_key", "nonce", "ciphertext", "tag", "signature")


class CounterRandom:
    """Deterministic 'randomness' for known answers: SHA-256(seed || counter) blocks."""

    def __init__(self, seed: bytes) -> None:
        self.seed = seed
        self.counter = 0

    def __call__(self, count: int) -> bytes:
        out = b""
        while len(out) < count:
            out += hashlib.sha256(self.seed + self.counter.to_bytes(8, "big")).digest()
            self.counter += 1
        return out[:count]


@pytest.fixture(scope="module")
def envelope(alice, bob) -> Envelope:
    return seal(PLAINTEXT, sender="Alice", recipient="Bob",
                sender_private_key=alice, recipient_public_key=bob.publickey())


def open_as_bob(env: Envelope, alice, bob) -> bytes:
    return open_envelope(env, recipient="bob", recipient_private_key=bob,
                         sender_public_key=alice.publickey())


def flip_bit(data: bytes, index: int) -> bytes:
    changed = bytearray(data)
    changed[index] ^= 0x01
    return bytes(changed)


# ---------------------------------------------------------------------------------------
# Round trips


def test_round_trip(envelope, alice, bob):
    assert open_as_bob(envelope, alice, bob) == PLAINTEXT


def test_round_trip_through_json_fields(envelope, alice, bob):
    fields = json.loads(json.dumps(envelope.to_fields()))
    assert list(fields) == list(crypto.FIELD_NAMES)
    assert fields["version"] == 1 and fields["sender"] == "Alice"
    rebuilt = Envelope.from_fields(fields)
    assert rebuilt == envelope
    assert open_as_bob(rebuilt, alice, bob) == PLAINTEXT


def test_empty_plaintext_and_case_insensitive_recipient(alice, bob):
    env = seal(b"", sender="alice", recipient="BOB",
               sender_private_key=alice, recipient_public_key=bob)
    assert open_as_bob(env, alice, bob) == b""


def test_each_seal_is_fresh(alice, bob):
    one, two = (seal(PLAINTEXT, sender="alice", recipient="bob", sender_private_key=alice,
                     recipient_public_key=bob) for _ in range(2))
    assert one.message_id != two.message_id
    assert one.nonce != two.nonce
    assert one.wrapped_key != two.wrapped_key
    assert len(one.message_id) == 32 and len(one.nonce) == 12 and len(one.tag) == 16
    assert len(one.wrapped_key) == len(one.signature) == 384


def test_sent_at_defaults_to_now(envelope):
    sent = crypto.parse_timestamp(envelope.sent_at)
    assert abs(datetime.now(timezone.utc) - sent) < timedelta(minutes=1)


# ---------------------------------------------------------------------------------------
# Tampering: every field, one bit or one character


@pytest.mark.parametrize("name", BYTES_FIELDS)
@pytest.mark.parametrize("where", ["first", "last"])
def test_flipped_bit_in_any_bytes_field_is_rejected(envelope, alice, bob, name, where):
    value = getattr(envelope, name)
    index = 0 if where == "first" else len(value) - 1
    tampered = dataclasses.replace(envelope, **{name: flip_bit(value, index)})
    with pytest.raises(DecryptionError):
        open_as_bob(tampered, alice, bob)


@pytest.mark.parametrize("name, value", [
    ("version", 2),
    ("sender", "Alicf"),
    ("recipient", "Bob2"),
    ("message_id", "1123456789abcdef0123456789abcdef"),
    ("sent_at", "2026-11-29T19:40:00.124Z"),
])
def test_altered_header_field_is_rejected(alice, bob, name, value):
    env = seal(PLAINTEXT, sender="Alice", recipient="Bob", sender_private_key=alice,
               recipient_public_key=bob, message_id=MESSAGE_ID, sent_at=SENT_AT)
    with pytest.raises(DecryptionError):
        # A version nobody supports is refused as soon as the envelope is built.
        tampered = dataclasses.replace(env, **{name: value})
        # Open as the named recipient, so the addressing check is not what fails.
        open_envelope(tampered, recipient=tampered.recipient, recipient_private_key=bob,
                      sender_public_key=alice.publickey())


def test_truncated_ciphertext_is_rejected(envelope, alice, bob):
    tampered = dataclasses.replace(envelope, ciphertext=envelope.ciphertext[:-1])
    with pytest.raises(DecryptionError):
        open_as_bob(tampered, alice, bob)


def test_gcm_catches_tampering_even_if_the_signature_is_redone(envelope, alice, bob):
    """The AEAD layer stands on its own: a valid signature over a changed body fails too."""
    tampered = dataclasses.replace(envelope, ciphertext=flip_bit(envelope.ciphertext, 0))
    resigned = dataclasses.replace(tampered, signature=_sign(alice, tampered))
    with pytest.raises(DecryptionError, match="could not be decrypted"):
        open_as_bob(resigned, alice, bob)


def test_stolen_envelope_cannot_be_claimed_by_another_sender(envelope, bob, carol):
    """Carol re-signs Alice's envelope as hers; the GCM associated data names Alice."""
    stolen = dataclasses.replace(envelope, sender="Carol")
    stolen = dataclasses.replace(stolen, signature=_sign(carol, stolen))
    with pytest.raises(DecryptionError, match="could not be decrypted"):
        open_envelope(stolen, recipient="bob", recipient_private_key=bob,
                      sender_public_key=carol.publickey())


def _sign(key, env: Envelope) -> bytes:
    return pss.new(key).sign(SHA256.new(env.signed_bytes()))


# ---------------------------------------------------------------------------------------
# Wrong keys and re-addressing


def test_wrong_recipient_key_is_rejected(envelope, alice, carol):
    with pytest.raises(DecryptionError, match="could not be decrypted"):
        open_envelope(envelope, recipient="bob", recipient_private_key=carol,
                      sender_public_key=alice.publickey())


def test_wrong_sender_key_is_rejected(envelope, bob, carol):
    with pytest.raises(DecryptionError, match="signature"):
        open_envelope(envelope, recipient="bob", recipient_private_key=bob,
                      sender_public_key=carol.publickey())


def test_envelope_for_someone_else_is_refused(envelope, alice, carol):
    with pytest.raises(DecryptionError, match="addressed to someone else"):
        open_envelope(envelope, recipient="carol", recipient_private_key=carol,
                      sender_public_key=alice.publickey())


def test_readdressed_envelope_is_rejected(envelope, alice, carol):
    readdressed = dataclasses.replace(envelope, recipient="Carol")
    with pytest.raises(DecryptionError):
        open_envelope(readdressed, recipient="carol", recipient_private_key=carol,
                      sender_public_key=alice.publickey())


def test_expected_sender_is_checked(envelope, alice, bob):
    with pytest.raises(DecryptionError, match="someone else"):
        open_envelope(envelope, recipient="bob", recipient_private_key=bob,
                      sender_public_key=alice.publickey(), expected_sender="carol")
    assert open_envelope(envelope, recipient="bob", recipient_private_key=bob,
                         sender_public_key=alice.publickey(), expected_sender="ALICE")


# ---------------------------------------------------------------------------------------
# Hostile input to from_fields


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=8,
)
BASE64_OF_ANY_LENGTH = st.binary(max_size=600).map(lambda b: base64.b64encode(b).decode())
HOSTILE_FIELD_VALUES = JSON_VALUES | BASE64_OF_ANY_LENGTH


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_from_fields_with_hostile_field_values_only_raises_decryption_error(envelope, data):
    fields = envelope.to_fields()
    for name in data.draw(st.sets(st.sampled_from(crypto.FIELD_NAMES), min_size=1)):
        fields[name] = data.draw(HOSTILE_FIELD_VALUES, label=name)
    try:
        Envelope.from_fields(fields)
    except DecryptionError:
        pass


@settings(max_examples=200, deadline=None)
@given(obj=JSON_VALUES)
def test_from_fields_with_arbitrary_json_only_raises_decryption_error(obj):
    with pytest.raises(DecryptionError):
        Envelope.from_fields(obj)


@pytest.mark.parametrize("change", [
    lambda f: f.pop("tag"),
    lambda f: f.update(extra="x"),
    lambda f: f.update(version=True),
    lambda f: f.update(version=1.0),
    lambda f: f.update(version="1"),
    lambda f: f.update(sender=""),
    lambda f: f.update(sender="a" * 65),
    lambda f: f.update(sender="ali\nce"),
    lambda f: f.update(recipient="\ud800"),
    lambda f: f.update(message_id=MESSAGE_ID.upper()),
    lambda f: f.update(message_id=MESSAGE_ID[:-1]),
    lambda f: f.update(sent_at="2026-11-29T19:40:00Z"),
    lambda f: f.update(sent_at="2026-02-30T19:40:00.000Z"),
    lambda f: f.update(sent_at="２026-11-29T19:40:00.000Z"),
    lambda f: f.update(nonce=base64.b64encode(bytes(11)).decode()),
    lambda f: f.update(tag=base64.b64encode(bytes(17)).decode()),
    lambda f: f.update(wrapped_key=base64.b64encode(bytes(100)).decode()),
    lambda f: f.update(tag=f["tag"].rstrip("=")),
    lambda f: f.update(nonce=f["nonce"] + "\n"),
    lambda f: f.update(nonce="AAAAAAAAAAAAAAAB"[:-1] + "é"),
    lambda f: f.update(ciphertext="A" * 100_000),
])
def test_from_fields_refuses_malformed_fields(envelope, change):
    fields = envelope.to_fields()
    change(fields)
    with pytest.raises(DecryptionError):
        Envelope.from_fields(fields)


def test_from_fields_refuses_non_canonical_base64():
    assert base64.b64decode("AB==") == base64.b64decode("AA==")
    with pytest.raises(DecryptionError, match="canonical"):
        crypto._b64decode("AB==", "tag")


# ---------------------------------------------------------------------------------------
# Bad requests to seal are the caller's mistake: CryptoError, not DecryptionError


@pytest.mark.parametrize("kwargs", [
    {"message_id": "not hex"},
    {"sent_at": "yesterday"},
    {"sender": ""},
    {"recipient": "x" * 65},
])
def test_seal_refuses_bad_arguments(alice, bob, kwargs):
    args = dict(sender="alice", recipient="bob", sender_private_key=alice,
                recipient_public_key=bob)
    args.update(kwargs)
    with pytest.raises(CryptoError) as caught:
        seal(PLAINTEXT, **args)
    assert type(caught.value) is CryptoError


def test_seal_refuses_oversized_plaintext_and_public_sender_key(alice, bob):
    with pytest.raises(CryptoError, match="plaintext"):
        seal(bytes(crypto.MAX_PLAINTEXT_BYTES + 1), sender="alice", recipient="bob",
             sender_private_key=alice, recipient_public_key=bob)
    with pytest.raises(CryptoError, match="private"):
        seal(PLAINTEXT, sender="alice", recipient="bob",
             sender_private_key=alice.publickey(), recipient_public_key=bob)


def test_seal_refuses_a_random_source_that_returns_too_little(alice, bob):
    with pytest.raises(CryptoError, match="random"):
        seal(PLAINTEXT, sender="alice", recipient="bob", sender_private_key=alice,
             recipient_public_key=bob, randbytes=lambda n: bytes(n // 2))


# ---------------------------------------------------------------------------------------
# Timestamps


def test_utc_timestamp_format_and_round_trip():
    moment = datetime(2026, 11, 29, 20, 40, 0, 123456, tzinfo=timezone(timedelta(hours=1)))
    assert crypto.utc_timestamp(moment) == SENT_AT
    assert crypto.parse_timestamp(SENT_AT) == moment.replace(microsecond=123000)
    early = datetime(5, 1, 2, tzinfo=timezone.utc)
    assert crypto.utc_timestamp(early) == "0005-01-02T00:00:00.000Z"


def test_timestamps_refuse_naive_and_malformed_values():
    with pytest.raises(CryptoError):
        crypto.utc_timestamp(datetime(2026, 1, 1))
    for bad in ("2026-11-29 19:40:00.123Z", "2026-13-01T00:00:00.000Z", 5, ""):
        with pytest.raises(DecryptionError):
            crypto.parse_timestamp(bad)


# ---------------------------------------------------------------------------------------
# Known answers: byte layouts and one complete envelope


def test_header_layout_known_answer():
    expected = (
        b"\x00\x00\x00\x14" b"gapshape-envelope-v1"
        b"\x00\x00\x00\x04" b"\x00\x00\x00\x01"
        b"\x00\x00\x00\x05" b"alice"
        b"\x00\x00\x00\x03" b"bob"
        b"\x00\x00\x00\x20" + MESSAGE_ID.encode()
        + b"\x00\x00\x00\x18" + SENT_AT.encode()
    )
    assert crypto.envelope_header(1, "ALICE", "Bob", MESSAGE_ID, SENT_AT) == expected


def test_signed_message_layout_known_answer():
    expected = (
        b"\x00\x00\x00\x1e" b"gapshape-envelope-signature-v1"
        b"\x00\x00\x00\x02" b"HH"
        b"\x00\x00\x00\x01" b"W"
        b"\x00\x00\x00\x01" b"N"
        b"\x00\x00\x00\x00"
        b"\x00\x00\x00\x01" b"T"
    )
    assert crypto.signed_message(b"HH", b"W", b"N", b"", b"T") == expected


def _kat_key(name: str):
    return RSA.import_key((DATA / f"{name}.pem").read_bytes())


def _kat_envelope() -> Envelope:
    return seal(PLAINTEXT, sender="Alice", recipient="Bob",
                sender_private_key=_kat_key("kat_sender"),
                recipient_public_key=_kat_key("kat_recipient").publickey(),
                message_id=MESSAGE_ID, sent_at=SENT_AT,
                randbytes=CounterRandom(b"gapshape known-answer test"))


# SHA-256 of the canonical JSON (sorted keys, no spaces) of the known-answer envelope.
KAT_ENVELOPE_SHA256 = "30381bf0c0cdb69ba7af919e53a9010782f30e9128806dd92f84cb14d1627aab"


def test_seal_known_answer():
    env = _kat_envelope()
    golden = json.loads((DATA / "kat_envelope.json").read_text())
    assert env.to_fields() == golden
    canonical = json.dumps(env.to_fields(), sort_keys=True, separators=(",", ":"))
    assert hashlib.sha256(canonical.encode()).hexdigest() == KAT_ENVELOPE_SHA256
    # The first draws of the stream are the AES key then the nonce (documented order).
    stream = CounterRandom(b"gapshape known-answer test")
    stream(32)
    assert env.nonce == stream(12)


def test_known_answer_envelope_still_opens():
    golden = Envelope.from_fields(json.loads((DATA / "kat_envelope.json").read_text()))
    plaintext = open_envelope(golden, recipient="bob",
                              recipient_private_key=_kat_key("kat_recipient"),
                              sender_public_key=_kat_key("kat_sender").publickey())
    assert plaintext == PLAINTEXT


# ---------------------------------------------------------------------------------------
# Interoperability with OpenSSL (through `cryptography`), which re-implements the layout
# from docs/SECURITY.md instead of calling crypto.envelope_header / signed_message.

OAEP = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)


def _lp(*fields: bytes) -> bytes:
    return b"".join(struct.pack(">I", len(f)) + f for f in fields)


def _ossl_header(version, sender, recipient, message_id, sent_at) -> bytes:
    return _lp(b"gapshape-envelope-v1", struct.pack(">I", version),
               sender.casefold().encode(), recipient.casefold().encode(),
               message_id.encode(), sent_at.encode())


def _ossl_signed(header, wrapped_key, nonce, ciphertext, tag) -> bytes:
    return _lp(b"gapshape-envelope-signature-v1", header, wrapped_key, nonce, ciphertext, tag)


def _ossl_private(key):
    return serialization.load_pem_private_key(key.export_key(format="PEM", pkcs=8), None)


def _ossl_public(key):
    return serialization.load_der_public_key(key.publickey().export_key(format="DER"))


def test_openssl_opens_our_envelope(envelope, alice, bob):
    e = envelope
    header = _ossl_header(e.version, e.sender, e.recipient, e.message_id, e.sent_at)
    signed = _ossl_signed(header, e.wrapped_key, e.nonce, e.ciphertext, e.tag)
    _ossl_public(alice).verify(e.signature, signed, PSS, hashes.SHA256())
    aes_key = _ossl_private(bob).decrypt(e.wrapped_key, OAEP)
    assert AESGCM(aes_key).decrypt(e.nonce, e.ciphertext + e.tag, header) == PLAINTEXT


def test_openssl_rejects_a_tampered_envelope(envelope, alice):
    e = envelope
    header = _ossl_header(e.version, e.sender, "mallory", e.message_id, e.sent_at)
    signed = _ossl_signed(header, e.wrapped_key, e.nonce, e.ciphertext, e.tag)
    with pytest.raises(InvalidSignature):
        _ossl_public(alice).verify(e.signature, signed, PSS, hashes.SHA256())


def test_we_open_an_envelope_built_by_openssl(alice, bob):
    aes_key, nonce = os.urandom(32), os.urandom(12)
    header = _ossl_header(1, "Alice", "Bob", MESSAGE_ID, SENT_AT)
    sealed = AESGCM(aes_key).encrypt(nonce, PLAINTEXT, header)
    ciphertext, tag = sealed[:-16], sealed[-16:]
    wrapped_key = _ossl_public(bob).encrypt(aes_key, OAEP)
    signed = _ossl_signed(header, wrapped_key, nonce, ciphertext, tag)
    signature = _ossl_private(alice).sign(signed, PSS, hashes.SHA256())
    env = Envelope(1, "Alice", "Bob", MESSAGE_ID, SENT_AT,
                   wrapped_key, nonce, ciphertext, tag, signature)
    assert open_as_bob(env, alice, bob) == PLAINTEXT


# ---------------------------------------------------------------------------------------
# Cost: the construction adds no expensive work to the RSA operations that dominate it.
# Its time against the bare primitives is bench/run.py's crypto_seal_open row (target
# 1.1x); a test counts the operations instead, so a busy machine cannot make it flake.


def test_seal_and_open_do_one_rsa_operation_of_each_kind_and_no_key_parsing(
    envelope, alice, bob, monkeypatch
):
    alice_public, bob_public = alice.publickey(), bob.publickey()
    counts = {"public": 0, "private": 0, "key parsing": 0}

    def counting(kind: str, original):
        def wrapper(*args, **kwargs):
            counts[kind] += 1
            return original(*args, **kwargs)
        return wrapper

    # pycryptodome's OAEP encrypt and PSS verify call RsaKey._encrypt; OAEP decrypt and
    # PSS sign call RsaKey._decrypt_to_bytes. Parsing a key costs about a millisecond more.
    monkeypatch.setattr(RSA.RsaKey, "_encrypt", counting("public", RSA.RsaKey._encrypt))
    monkeypatch.setattr(RSA.RsaKey, "_decrypt_to_bytes",
                        counting("private", RSA.RsaKey._decrypt_to_bytes))
    monkeypatch.setattr(RSA, "import_key", counting("key parsing", RSA.import_key))

    sealed = seal(PLAINTEXT, sender="alice", recipient="bob", sender_private_key=alice,
                  recipient_public_key=bob_public)
    assert counts == {"public": 1, "private": 1, "key parsing": 0}  # wrap, sign
    assert open_envelope(sealed, recipient="bob", recipient_private_key=bob,
                         sender_public_key=alice_public) == PLAINTEXT
    assert counts == {"public": 2, "private": 2, "key parsing": 0}  # + verify, unwrap


def test_verify_signature_checks_only_the_signature(envelope, alice, bob):
    crypto.verify_signature(envelope, alice.publickey())
    with pytest.raises(DecryptionError):
        crypto.verify_signature(envelope, bob.publickey())
    with pytest.raises(DecryptionError):
        crypto.verify_signature("not an envelope", alice.publickey())  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------
# Data at rest: the local key wrapped for one's own identity, and records sealed with it.

LOCAL_KEY = bytes(range(32))
LOCAL_AD = b"row 7 of store 42"
LOCAL_OAEP = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(),
                          label=crypto.LOCAL_KEY_LABEL)


def test_local_key_round_trip_and_wrong_identity(alice, bob):
    wrapped = crypto.wrap_local_key(LOCAL_KEY, alice.publickey())
    assert crypto.unwrap_local_key(wrapped, alice) == LOCAL_KEY
    assert crypto.wrap_local_key(LOCAL_KEY, alice.publickey()) != wrapped  # OAEP is randomized
    with pytest.raises(DecryptionError):
        crypto.unwrap_local_key(wrapped, bob)
    flipped = bytearray(wrapped)
    flipped[len(flipped) // 2] ^= 1
    with pytest.raises(DecryptionError):
        crypto.unwrap_local_key(bytes(flipped), alice)
    with pytest.raises(DecryptionError):
        crypto.unwrap_local_key(wrapped[:-1], alice)


def test_local_key_label_keeps_envelope_keys_apart(envelope, alice, bob):
    """An envelope's wrapped message key (empty OAEP label) is not a local key, and a
    local key does not unwrap as an envelope's."""
    with pytest.raises(DecryptionError):
        crypto.unwrap_local_key(envelope.wrapped_key, bob)
    wrapped = crypto.wrap_local_key(LOCAL_KEY, bob.publickey())
    forged = dataclasses.replace(envelope, wrapped_key=wrapped)
    with pytest.raises(DecryptionError):
        crypto._unwrap_key(forged, bob)


def test_openssl_unwraps_our_local_key_and_we_unwrap_its(alice):
    wrapped = crypto.wrap_local_key(LOCAL_KEY, alice.publickey())
    assert _ossl_private(alice).decrypt(wrapped, LOCAL_OAEP) == LOCAL_KEY
    theirs = _ossl_public(alice).encrypt(LOCAL_KEY, LOCAL_OAEP)
    assert crypto.unwrap_local_key(theirs, alice) == LOCAL_KEY


def test_wrapping_refuses_bad_keys(alice):
    with pytest.raises(CryptoError):
        crypto.wrap_local_key(bytes(16), alice.publickey())
    with pytest.raises(CryptoError):
        crypto.unwrap_local_key(bytes(384), alice.publickey())  # no private half
    with pytest.raises(CryptoError):
        crypto.wrap_local_key(LOCAL_KEY, "not a key")  # type: ignore[arg-type]


def test_seal_local_round_trip_layout_and_openssl():
    sealed = crypto.seal_local(LOCAL_KEY, PLAINTEXT, LOCAL_AD)
    assert len(sealed) == len(PLAINTEXT) + crypto.LOCAL_SEAL_OVERHEAD
    assert crypto.open_local(LOCAL_KEY, sealed, LOCAL_AD) == PLAINTEXT
    nonce, rest = sealed[:12], sealed[12:]
    assert AESGCM(LOCAL_KEY).decrypt(nonce, rest, LOCAL_AD) == PLAINTEXT
    theirs = os.urandom(12)
    theirs += AESGCM(LOCAL_KEY).encrypt(theirs, PLAINTEXT, LOCAL_AD)
    assert crypto.open_local(LOCAL_KEY, theirs, LOCAL_AD) == PLAINTEXT
    assert crypto.seal_local(LOCAL_KEY, PLAINTEXT, LOCAL_AD) != sealed  # fresh nonce


def test_seal_local_known_answer():
    sealed = crypto.seal_local(LOCAL_KEY, b"hello", LOCAL_AD, randbytes=lambda n: bytes(n))
    expected = AESGCM(LOCAL_KEY).encrypt(bytes(12), b"hello", LOCAL_AD)
    assert sealed == bytes(12) + expected


def test_open_local_refuses_any_flipped_bit_other_data_or_key():
    sealed = crypto.seal_local(LOCAL_KEY, b"short text", LOCAL_AD)
    for index in range(len(sealed)):
        for bit in (0x01, 0x80):
            flipped = bytearray(sealed)
            flipped[index] ^= bit
            with pytest.raises(DecryptionError):
                crypto.open_local(LOCAL_KEY, bytes(flipped), LOCAL_AD)
    with pytest.raises(DecryptionError):
        crypto.open_local(LOCAL_KEY, sealed, b"row 8 of store 42")
    with pytest.raises(DecryptionError):
        crypto.open_local(bytes(32), sealed, LOCAL_AD)
    for short in (b"", sealed[: crypto.LOCAL_SEAL_OVERHEAD - 1], sealed[:-1]):
        with pytest.raises(DecryptionError):
            crypto.open_local(LOCAL_KEY, short, LOCAL_AD)
    with pytest.raises(CryptoError):
        crypto.open_local(bytes(31), sealed, LOCAL_AD)
