"""Login proofs and key fingerprints: the part of Gapshape's cryptography the server needs.

The server imports this module (and never ``crypto.py``): it checks that a public key
is acceptable, remembers its fingerprint, and verifies the login proof, an RSA-PSS
signature over a fresh server nonce. Clients use the same functions to sign that proof and
to show fingerprints that people compare out of band.

Byte layout of the login message (see ``docs/SECURITY.md``), every field length-prefixed
with ``length_prefixed``::

    u32be(17) "gapshape-login-v1" | u32be(len) nonce
    | u32be(len) UTF-8(casefold(username)) | u32be(len) UTF-8(server_id)

Algorithms: RSA-PSS, SHA-256, MGF1-SHA-256, salt length 32 bytes (= digest size, which is
pycryptodome's default); keys of 3072 to 4096 bits with public exponent 65537, in
SubjectPublicKeyInfo DER.
"""
from __future__ import annotations

import hashlib
import logging

from Crypto.Hash import SHA256
from Crypto.PublicKey import RSA
from Crypto.PublicKey.RSA import RsaKey
from Crypto.Signature import pss

logger = logging.getLogger(__name__)

MIN_KEY_BITS = 3072
MAX_KEY_BITS = 4096
PUBLIC_EXPONENT = 65537

#: A 4096-bit SubjectPublicKeyInfo is about 550 bytes (a private key about 2400, let
#: through to get a clear error); anything longer never reaches the ASN.1 parser.
MAX_PUBLIC_DER_BYTES = 4096

#: A shorter challenge could repeat, which would let an old login proof be replayed.
MIN_NONCE_BYTES = 16

#: RSA-PSS salt length. It equals the SHA-256 digest size, pycryptodome's default, and
#: is stated here so other implementations (OpenSSL: ``salt_length=32``) can match it.
PSS_SALT_BYTES = 32

LOGIN_LABEL = b"gapshape-login-v1"

READABLE_FINGERPRINT_GROUPS = 12
READABLE_FINGERPRINT_GROUP_DIGITS = 5


class AuthError(Exception):
    """A public key or a login proof was refused; the message says why."""


def length_prefixed(*fields: bytes) -> bytes:
    """Encode ``fields`` as ``u32be(len(field)) || field`` each, concatenated.

    Every signed or authenticated structure in Gapshape uses this one encoding, so no two
    different field lists can produce the same bytes (no ambiguity at field boundaries).
    """
    return b"".join(len(field).to_bytes(4, "big") + field for field in fields)


def load_public_key(der: bytes) -> RsaKey:
    """Parse an RSA public key given as SubjectPublicKeyInfo DER and check its size.

    Only the canonical DER that ``public_key_der`` produces is accepted: PEM, PKCS#1,
    trailing bytes, private keys, non-RSA keys and sizes outside
    [MIN_KEY_BITS, MAX_KEY_BITS] all raise AuthError.
    """
    if not isinstance(der, bytes) or not der:
        raise AuthError("the public key is missing")
    if len(der) > MAX_PUBLIC_DER_BYTES:
        raise AuthError("the public key is too large")
    key = _parse_rsa_key(der)
    if key.has_private():
        raise AuthError("a private key was sent where a public key belongs")
    _check_key_shape(key)
    if key.export_key(format="DER") != der:
        # Re-encoding must give back the same bytes, so that one key has exactly one
        # fingerprint and other encodings cannot smuggle in extra data.
        raise AuthError("the public key is not in canonical SubjectPublicKeyInfo DER form")
    return key


def _parse_rsa_key(der: bytes) -> RsaKey:
    """Run pycryptodome's parser, turning any of its parse failures into AuthError."""
    try:
        return RSA.import_key(der)
    except (ValueError, IndexError, TypeError) as exc:
        logger.debug("public key refused by the parser: %s", exc)
        raise AuthError("the public key is not a valid RSA key") from None


def _check_key_shape(key: RsaKey) -> None:
    """Refuse keys that are too small, too large, or have an unusable exponent."""
    bits = key.size_in_bits()
    if not MIN_KEY_BITS <= bits <= MAX_KEY_BITS:
        raise AuthError(
            f"the RSA key has {bits} bits; Gapshape accepts {MIN_KEY_BITS} to {MAX_KEY_BITS}"
        )
    # Every RSA library makes keys with e = 65537. A huge exponent is legal RSA but makes
    # each verification (a refused login, a forged envelope) 15-35x dearer to check.
    if key.e != PUBLIC_EXPONENT:
        raise AuthError(f"the RSA key's public exponent must be {PUBLIC_EXPONENT}")


def public_key_der(key: RsaKey) -> bytes:
    """Return the SubjectPublicKeyInfo DER of the public half of ``key``."""
    return key.publickey().export_key(format="DER")


def key_fingerprint(public_der: bytes) -> str:
    """Return the lowercase hex SHA-256 of the public key DER (64 characters)."""
    return hashlib.sha256(public_der).hexdigest()


def readable_fingerprint(public_der: bytes) -> str:
    """Return the fingerprint as 12 groups of 5 decimal digits, for reading aloud.

    Derivation: take SHA-256 of the SubjectPublicKeyInfo DER, read the 32 bytes as a
    big-endian unsigned integer, reduce it modulo 10**60, write the result as 60 decimal
    digits with leading zeros, and split it into 12 groups of 5 separated by spaces.
    This keeps about 199 bits of the hash; the modulo bias is below 2**-56.
    """
    digits = READABLE_FINGERPRINT_GROUPS * READABLE_FINGERPRINT_GROUP_DIGITS
    digest = hashlib.sha256(public_der).digest()
    number = int.from_bytes(digest, "big") % (10**digits)
    text = f"{number:0{digits}d}"
    step = READABLE_FINGERPRINT_GROUP_DIGITS
    return " ".join(text[i : i + step] for i in range(0, digits, step))


def login_message(nonce: bytes, username: str, server_id: str) -> bytes:
    """Return the exact bytes a client signs to log in (layout in the module docstring).

    ``server_id`` must be something the client knows on its own (the host and port it
    dialled, or the pinned TLS certificate fingerprint), never a value the server sends:
    that is what stops a malicious server from relaying another server's challenge.
    """
    if not isinstance(nonce, bytes) or len(nonce) < MIN_NONCE_BYTES:
        raise AuthError("the login challenge is missing or too short")
    return length_prefixed(
        LOGIN_LABEL,
        nonce,
        _utf8(username.casefold(), "username"),
        _utf8(server_id, "server name"),
    )


def _utf8(text: str, what: str) -> bytes:
    """Encode as UTF-8, refusing strings (such as lone surrogates) that cannot be."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise AuthError(f"the {what} is not valid text") from None


def sign_login(private_key: RsaKey, nonce: bytes, username: str, server_id: str) -> bytes:
    """Prove possession of ``private_key`` by signing the login message (RSA-PSS SHA-256)."""
    if not private_key.has_private():
        raise AuthError("signing the login needs the private key")
    digest = SHA256.new(login_message(nonce, username, server_id))
    return pss.new(private_key, salt_bytes=PSS_SALT_BYTES).sign(digest)


def verify_login(
    public_der: bytes, signature: bytes, nonce: bytes, username: str, server_id: str
) -> None:
    """Check a login proof; return None if it is valid, else raise AuthError."""
    key = load_public_key(public_der)
    if not isinstance(signature, bytes):
        raise AuthError("the login signature is missing")
    digest = SHA256.new(login_message(nonce, username, server_id))
    try:
        pss.new(key, salt_bytes=PSS_SALT_BYTES).verify(digest, signature)
    except (ValueError, TypeError):
        raise AuthError("the signature does not prove the key") from None
