"""Tests for auth.py: login proofs, public key checks, fingerprints."""
from __future__ import annotations

import hashlib
import math
from pathlib import Path

import pytest
from Crypto.PublicKey import RSA
from Crypto.Util.number import getRandomNBitInteger
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding
from hypothesis import given, settings
from hypothesis import strategies as st

import auth
from auth import AuthError, load_public_key, public_key_der, sign_login, verify_login

DATA = Path(__file__).parent / "data"
NONCE = bytes(range(32))
SERVER = "chat.example.org:7000"


@pytest.fixture(scope="module")
def alice_der(alice) -> bytes:
    return public_key_der(alice)


@pytest.fixture(scope="module")
def proof(alice) -> bytes:
    return sign_login(alice, NONCE, "Alice", SERVER)


def fake_public_der(bits: int, e: int = 65537) -> bytes:
    """A public key of any size without the cost of making one: n need not be a product
    of two primes for load_public_key, which only sees the public half."""
    n = getRandomNBitInteger(bits) | 1
    while math.gcd(n, e) != 1:  # pycryptodome's parser rightly refuses such pairs
        n = getRandomNBitInteger(bits) | 1
    return RSA.construct((n, e), consistency_check=False).export_key(format="DER")


# ---------------------------------------------------------------------------------------
# Login proofs


def test_login_round_trip(alice_der, proof):
    assert verify_login(alice_der, proof, NONCE, "Alice", SERVER) is None


def test_username_is_case_insensitive(alice_der, proof):
    verify_login(alice_der, proof, NONCE, "ALICE", SERVER)


@pytest.mark.parametrize("nonce, username, server_id", [
    (bytes(32), "Alice", SERVER),
    (NONCE, "Alicf", SERVER),
    (NONCE, "Alice", "chat.example.org:7001"),
])
def test_proof_is_bound_to_nonce_username_and_server(alice_der, proof, nonce, username,
                                                     server_id):
    with pytest.raises(AuthError, match="does not prove the key"):
        verify_login(alice_der, proof, nonce, username, server_id)


def test_proof_from_another_key_is_refused(bob, proof):
    with pytest.raises(AuthError, match="does not prove the key"):
        verify_login(public_key_der(bob), proof, NONCE, "Alice", SERVER)


def test_garbage_signatures_are_refused(alice_der, proof):
    for signature in (b"", proof[:-1], proof + b"\0", bytes(len(proof)), "text"):
        with pytest.raises(AuthError):
            verify_login(alice_der, signature, NONCE, "Alice", SERVER)


def test_short_nonce_is_refused(alice):
    with pytest.raises(AuthError, match="challenge"):
        sign_login(alice, bytes(15), "Alice", SERVER)


def test_signing_needs_the_private_key(alice):
    with pytest.raises(AuthError, match="private key"):
        sign_login(alice.publickey(), NONCE, "Alice", SERVER)


def test_unencodable_username_is_refused(alice):
    with pytest.raises(AuthError, match="username"):
        sign_login(alice, NONCE, "\ud800", SERVER)


def test_login_message_layout_known_answer():
    # 'Straße' case-folds to 'strasse' (7 bytes); the layout is length-prefixed throughout.
    expected = (
        b"\x00\x00\x00\x11gapshape-login-v1"
        b"\x00\x00\x00\x10" + bytes(range(16))
        + b"\x00\x00\x00\x07strasse"
        + b"\x00\x00\x00\x05srv:1"
    )
    assert auth.login_message(bytes(range(16)), "Straße", "srv:1") == expected


def test_login_message_field_boundaries_are_unambiguous():
    assert auth.login_message(NONCE, "ab", "c") != auth.login_message(NONCE, "a", "bc")


def test_openssl_verifies_the_proof_with_a_32_byte_salt(alice_der, proof):
    public = serialization.load_der_public_key(alice_der)
    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
    public.verify(proof, auth.login_message(NONCE, "alice", SERVER), pss, hashes.SHA256())


# ---------------------------------------------------------------------------------------
# Public keys


def test_public_key_round_trip(alice, alice_der):
    key = load_public_key(alice_der)
    assert key.n == alice.n and not key.has_private()
    assert public_key_der(key) == alice_der


@pytest.mark.parametrize("bits", [1024, 2048, 3071, 4097, 8192])
def test_keys_outside_the_size_range_are_refused(bits):
    with pytest.raises(AuthError, match="bits"):
        load_public_key(fake_public_der(bits))


@pytest.mark.parametrize("bits", [3072, 4096])
def test_keys_at_the_size_limits_are_accepted(bits):
    assert load_public_key(fake_public_der(bits)).size_in_bits() == bits


def test_even_public_exponent_is_refused():
    with pytest.raises(AuthError, match="exponent"):
        load_public_key(fake_public_der(3072, e=65538))


def test_other_encodings_of_a_good_key_are_refused(alice, alice_der):
    others = [
        alice.export_key(format="DER", pkcs=8),         # the private key
        alice.publickey().export_key(format="PEM"),     # PEM, not DER
        alice_der + b"\0",                              # trailing data
        alice.publickey().export_key(format="OpenSSH"),
    ]
    pkcs1 = serialization.load_der_public_key(alice_der).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.PKCS1)
    for encoded in others + [pkcs1]:
        with pytest.raises(AuthError):
            load_public_key(encoded)


def test_private_key_is_refused_with_a_clear_message(alice):
    with pytest.raises(AuthError, match="private key"):
        load_public_key(alice.export_key(format="DER", pkcs=8))


def test_non_rsa_key_is_refused():
    ec_der = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    with pytest.raises(AuthError, match="not a valid RSA key"):
        load_public_key(ec_der)


@pytest.mark.parametrize("garbage", [b"", b"\x30", b"\x30\x82\xff\xff", b"hello", "text",
                                     None, b"\x30" * 5000])
def test_garbage_is_refused(garbage):
    with pytest.raises(AuthError):
        load_public_key(garbage)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=600) | st.binary(max_size=600).map(lambda b: b"\x30" + b))
def test_arbitrary_bytes_only_raise_auth_error(data):
    with pytest.raises(AuthError):
        load_public_key(data)


@settings(max_examples=150, deadline=None)
@given(index=st.integers(min_value=0, max_value=421), bit=st.integers(0, 7))
def test_bit_flipped_key_is_refused_or_is_a_different_key(alice_der, index, bit):
    damaged = bytearray(alice_der)
    damaged[index % len(damaged)] ^= 1 << bit
    try:
        key = load_public_key(bytes(damaged))
    except AuthError:
        return
    assert public_key_der(key) == bytes(damaged) != alice_der


# ---------------------------------------------------------------------------------------
# Fingerprints


def test_key_fingerprint_is_sha256_hex():
    assert auth.key_fingerprint(b"abc") == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")


def test_readable_fingerprint_known_answers():
    # SHA-256("abc") as an integer is 8434236848709080036652383492814226366010488369501651
    # 4377462985829716817089965; its last 60 digits, in groups of five:
    assert auth.readable_fingerprint(b"abc") == (
        "36652 38349 28142 26366 01048 83695 01651 43774 62985 82971 68170 89965")
    kat_key = RSA.import_key((DATA / "kat_sender.pem").read_bytes())
    der = public_key_der(kat_key)
    assert auth.key_fingerprint(der) == (
        "5a06410a8a218360db57f35b1597b6c16de64ca4887ccc7a54910b44f89b4904")
    assert auth.readable_fingerprint(der) == (
        "09745 19000 16841 72368 12281 78518 74298 27302 87750 66283 03524 51844")


def test_readable_fingerprint_keeps_leading_zeros():
    # Find an input whose reduced number is short, to see the zero padding at work.
    data = next(i.to_bytes(4, "big") for i in range(10**6)
                if int.from_bytes(hashlib.sha256(i.to_bytes(4, "big")).digest(), "big")
                % 10**60 < 10**59)
    groups = auth.readable_fingerprint(data).split(" ")
    assert len(groups) == 12 and all(len(g) == 5 and g.isdigit() for g in groups)
    assert groups[0].startswith("0")
