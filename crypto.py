"""Sealing private messages: pure functions from (plaintext, keys) to an Envelope and back.

No sockets, files or JSON I/O live here; the client feeds bytes and key objects in and
gets bytes or an ``Envelope`` out. Every failure to check or open an envelope, whatever
its cause, surfaces as one typed ``DecryptionError`` with a short, user-readable reason.

Construction (hybrid encryption, then a signature over the result):

* A fresh 32-byte AES key per message encrypts the plaintext with AES-256-GCM
  (96-bit random nonce, 128-bit tag). The GCM associated data is ``envelope_header``.
* The AES key is wrapped for the recipient with RSA-OAEP (SHA-256, MGF1-SHA-256, empty
  label).
* The sender signs ``signed_message`` (header + wrapped key + nonce + ciphertext + tag)
  with RSA-PSS (SHA-256, MGF1-SHA-256, 32-byte salt).

Byte layouts, each field encoded as ``u32be(len(field)) || field`` (``auth.length_prefixed``)::

    envelope_header = LP("gapshape-envelope-v1", u32be(version),
                         UTF-8(casefold(sender)), UTF-8(casefold(recipient)),
                         ASCII(message_id), ASCII(sent_at))
    signed_message  = LP("gapshape-envelope-signature-v1", envelope_header,
                         wrapped_key, nonce, ciphertext, tag)

The signature label differs from the login label (``auth.LOGIN_LABEL``), so a login
proof can never be mistaken for a message signature or the other way round.

Randomness is drawn, in this order, from ``randbytes`` (default
``Crypto.Random.get_random_bytes``): message_id (16 bytes, only when not given), AES key
(32), GCM nonce (12), OAEP seed (32), PSS salt (32). Known-answer tests rely on that order.
"""
from __future__ import annotations

import base64
import binascii
import logging
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Callable

from Crypto.Cipher import AES, PKCS1_OAEP
from Crypto.Hash import SHA256
from Crypto.PublicKey.RSA import RsaKey
from Crypto.Random import get_random_bytes
from Crypto.Signature import pss
from Crypto.Signature.pss import MGF1

from auth import MAX_KEY_BITS, MIN_KEY_BITS, PSS_SALT_BYTES, length_prefixed

if TYPE_CHECKING:
    from Crypto.Cipher._mode_gcm import GcmMode

logger = logging.getLogger(__name__)

ENVELOPE_VERSION = 1
HEADER_LABEL = b"gapshape-envelope-v1"
SIGNATURE_LABEL = b"gapshape-envelope-signature-v1"

AES_KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
MESSAGE_ID_BYTES = 16
MIN_RSA_BYTES = MIN_KEY_BITS // 8
MAX_RSA_BYTES = MAX_KEY_BITS // 8
#: A chat message, not a file transfer: this bounds the work a hostile envelope can cause.
MAX_PLAINTEXT_BYTES = 64 * 1024
MAX_NAME_CHARS = 64

FIELD_NAMES = (
    "version", "sender", "recipient", "message_id", "sent_at",
    "wrapped_key", "nonce", "ciphertext", "tag", "signature",
)

_MESSAGE_ID_RE = re.compile(r"[0-9a-f]{32}")
_TIMESTAMP_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z")

RandBytes = Callable[[int], bytes]


class CryptoError(Exception):
    """A message could not be sealed; the message says what was wrong with the request."""


class DecryptionError(CryptoError):
    """A private message could not be opened: it was damaged, altered, or not meant for you."""


class ReplayError(DecryptionError):
    """A private message was already received, or its timestamp is too far from now."""


# ---------------------------------------------------------------------------------------
# Timestamps

def utc_timestamp(now: datetime | None = None) -> str:
    """Format ``now`` (default: the current time) as ``YYYY-MM-DDTHH:MM:SS.mmmZ`` in UTC."""
    if now is None:
        now = datetime.now(timezone.utc)
    if now.tzinfo is None:
        raise CryptoError("a timestamp needs a timezone-aware datetime")
    t = now.astimezone(timezone.utc)
    return (
        f"{t.year:04d}-{t.month:02d}-{t.day:02d}T"
        f"{t.hour:02d}:{t.minute:02d}:{t.second:02d}.{t.microsecond // 1000:03d}Z"
    )


def parse_timestamp(text: object) -> datetime:
    """Parse a ``utc_timestamp`` string into an aware UTC datetime, or raise DecryptionError."""
    if not isinstance(text, str) or not _TIMESTAMP_RE.fullmatch(text):
        raise DecryptionError("the message timestamp is malformed")
    try:
        parsed = datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ")
    except ValueError:
        raise DecryptionError("the message timestamp is not a real date") from None
    return parsed.replace(tzinfo=timezone.utc)


# ---------------------------------------------------------------------------------------
# Byte layouts (the single definition; see the module docstring)

def envelope_header(
    version: int, sender: str, recipient: str, message_id: str, sent_at: str
) -> bytes:
    """Return the header bytes: the GCM associated data and the start of the signed data."""
    return length_prefixed(
        HEADER_LABEL,
        version.to_bytes(4, "big"),
        sender.casefold().encode("utf-8"),
        recipient.casefold().encode("utf-8"),
        message_id.encode("ascii"),
        sent_at.encode("ascii"),
    )


def signed_message(
    header: bytes, wrapped_key: bytes, nonce: bytes, ciphertext: bytes, tag: bytes
) -> bytes:
    """Return the bytes the sender signs: everything in the envelope but the signature."""
    return length_prefixed(SIGNATURE_LABEL, header, wrapped_key, nonce, ciphertext, tag)


# ---------------------------------------------------------------------------------------
# Field checks. Each raises ValueError with a short reason; callers choose the error type
# (CryptoError for our own bad request, DecryptionError for a bad envelope).

def _check_name(value: object, what: str) -> None:
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_NAME_CHARS:
        raise ValueError(f"{what} must be 1 to {MAX_NAME_CHARS} characters")
    # isprintable() also rules out lone surrogates, which cannot be encoded as UTF-8.
    if not value.isprintable():
        raise ValueError(f"{what} contains unprintable characters")


def _check_message_id(value: object) -> None:
    if not isinstance(value, str) or not _MESSAGE_ID_RE.fullmatch(value):
        raise ValueError("message_id must be 32 lowercase hex digits")


def _check_sent_at(value: object) -> None:
    try:
        parse_timestamp(value)
    except DecryptionError as exc:
        raise ValueError(str(exc)) from None


def _check_bytes(value: object, what: str, low: int, high: int) -> None:
    if not isinstance(value, bytes) or not low <= len(value) <= high:
        raise ValueError(f"{what} must be {low} to {high} bytes")


def _check_header(
    version: object, sender: object, recipient: object, message_id: object, sent_at: object
) -> None:
    if type(version) is not int or version != ENVELOPE_VERSION:
        raise ValueError("unsupported envelope version")
    _check_name(sender, "sender")
    _check_name(recipient, "recipient")
    _check_message_id(message_id)
    _check_sent_at(sent_at)


def _check_body(
    wrapped_key: object, nonce: object, ciphertext: object, tag: object, signature: object
) -> None:
    _check_bytes(wrapped_key, "wrapped_key", MIN_RSA_BYTES, MAX_RSA_BYTES)
    _check_bytes(nonce, "nonce", NONCE_BYTES, NONCE_BYTES)
    _check_bytes(ciphertext, "ciphertext", 0, MAX_PLAINTEXT_BYTES)
    _check_bytes(tag, "tag", TAG_BYTES, TAG_BYTES)
    _check_bytes(signature, "signature", MIN_RSA_BYTES, MAX_RSA_BYTES)


# ---------------------------------------------------------------------------------------
# The envelope

@dataclass(frozen=True)
class Envelope:
    """A sealed private message. Constructing one checks every field's type and length."""

    version: int
    sender: str
    recipient: str
    message_id: str
    sent_at: str
    wrapped_key: bytes
    nonce: bytes
    ciphertext: bytes
    tag: bytes
    signature: bytes

    def __post_init__(self) -> None:
        try:
            _check_header(self.version, self.sender, self.recipient,
                          self.message_id, self.sent_at)
            _check_body(self.wrapped_key, self.nonce, self.ciphertext,
                        self.tag, self.signature)
        except ValueError as exc:
            raise DecryptionError(f"malformed envelope: {exc}") from None

    def header(self) -> bytes:
        """The GCM associated data (``envelope_header``) of this envelope."""
        return envelope_header(self.version, self.sender, self.recipient,
                               self.message_id, self.sent_at)

    def signed_bytes(self) -> bytes:
        """The bytes the sender's signature covers (``signed_message``)."""
        return signed_message(self.header(), self.wrapped_key, self.nonce,
                              self.ciphertext, self.tag)

    def to_fields(self) -> dict[str, int | str]:
        """A JSON-able dict: ints and strings as they are, bytes as standard base64."""
        fields: dict[str, int | str] = {}
        for name in FIELD_NAMES:
            value = getattr(self, name)
            fields[name] = _b64encode(value) if isinstance(value, bytes) else value
        return fields

    @classmethod
    def from_fields(cls, obj: object) -> Envelope:
        """Build an Envelope from untrusted decoded JSON; raise DecryptionError if off.

        The object must be a dict with exactly the keys of ``to_fields``; bytes fields
        must be canonical, padded standard base64.
        """
        if not isinstance(obj, dict) or set(obj) != set(FIELD_NAMES):
            raise DecryptionError("malformed envelope: wrong set of fields")
        values = {name: obj[name] for name in FIELD_NAMES}
        for name in ("wrapped_key", "nonce", "ciphertext", "tag", "signature"):
            values[name] = _b64decode(values[name], name)
        return cls(**values)


def _b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _b64decode(text: object, what: str) -> bytes:
    """Decode canonical base64, refusing anything long enough to be a waste of time."""
    longest = 4 * ((max(MAX_PLAINTEXT_BYTES, MAX_RSA_BYTES) + 2) // 3)
    if not isinstance(text, str) or len(text) > longest:
        raise DecryptionError(f"malformed envelope: {what} is not base64 text")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise DecryptionError(f"malformed envelope: {what} is not valid base64") from None
    # Non-zero padding bits decode too; refusing them keeps one text per byte string.
    if _b64encode(data) != text:
        raise DecryptionError(f"malformed envelope: {what} is not canonical base64")
    return data


# ---------------------------------------------------------------------------------------
# Primitives, configured once so seal and open cannot drift apart

def _mgf1_sha256(seed: bytes, length: int) -> bytes:
    return MGF1(seed, length, SHA256)  # type: ignore[arg-type]  # stubs miss hash modules


def _oaep(key: RsaKey, randbytes: RandBytes = get_random_bytes) -> PKCS1_OAEP.PKCS1OAEP_Cipher:
    # pycryptodome's OAEP default hash is SHA-1, so the hash is always given explicitly.
    return PKCS1_OAEP.new(key, hashAlgo=SHA256, mgfunc=_mgf1_sha256, randfunc=randbytes)


def _pss(key: RsaKey, randbytes: RandBytes = get_random_bytes) -> pss.PSS_SigScheme:
    # The stubs give mask_func three arguments; pss calls it with (seed, length).
    return pss.new(key, mask_func=_mgf1_sha256,  # type: ignore[arg-type]
                   salt_bytes=PSS_SALT_BYTES, rand_func=randbytes)


def _gcm(aes_key: bytes, nonce: bytes, header: bytes) -> GcmMode:
    cipher = AES.new(aes_key, AES.MODE_GCM, nonce=nonce, mac_len=TAG_BYTES)
    cipher.update(header)
    return cipher


# ---------------------------------------------------------------------------------------
# Seal and open

def seal(
    plaintext: bytes,
    *,
    sender: str,
    recipient: str,
    sender_private_key: RsaKey,
    recipient_public_key: RsaKey,
    message_id: str | None = None,
    sent_at: str | None = None,
    randbytes: RandBytes | None = None,
) -> Envelope:
    """Encrypt ``plaintext`` for ``recipient`` and sign it as ``sender``.

    ``randbytes`` replaces the system RNG (known-answer tests only); see the module
    docstring for the order in which it is called. Raises CryptoError for bad arguments.
    """
    draw = _checked_source(randbytes or get_random_bytes)
    if message_id is None:
        message_id = draw(MESSAGE_ID_BYTES).hex()
    if sent_at is None:
        sent_at = utc_timestamp()
    _check_seal_request(plaintext, sender, recipient, message_id, sent_at,
                        sender_private_key, recipient_public_key)
    header = envelope_header(ENVELOPE_VERSION, sender, recipient, message_id, sent_at)
    aes_key = draw(AES_KEY_BYTES)
    nonce = draw(NONCE_BYTES)
    ciphertext, tag = _gcm(aes_key, nonce, header).encrypt_and_digest(plaintext)
    wrapped_key = _oaep(recipient_public_key, draw).encrypt(aes_key)
    to_sign = signed_message(header, wrapped_key, nonce, ciphertext, tag)
    signature = _pss(sender_private_key, draw).sign(SHA256.new(to_sign))
    return Envelope(ENVELOPE_VERSION, sender, recipient, message_id, sent_at,
                    wrapped_key, nonce, ciphertext, tag, signature)


def _checked_source(randbytes: RandBytes) -> RandBytes:
    """Wrap a random source so a short read can never silently weaken a key or nonce."""
    def draw(count: int) -> bytes:
        data = randbytes(count)
        if not isinstance(data, bytes) or len(data) != count:
            raise CryptoError("the random source returned the wrong number of bytes")
        return data
    return draw


def _check_seal_request(
    plaintext: object, sender: str, recipient: str, message_id: str, sent_at: str,
    sender_private_key: object, recipient_public_key: object,
) -> None:
    """Refuse requests that would produce an envelope ``Envelope`` itself would refuse."""
    try:
        _check_header(ENVELOPE_VERSION, sender, recipient, message_id, sent_at)
        _check_bytes(plaintext, "plaintext", 0, MAX_PLAINTEXT_BYTES)
    except ValueError as exc:
        raise CryptoError(f"cannot seal: {exc}") from None
    _check_rsa_key(sender_private_key, "sender", need_private=True)
    _check_rsa_key(recipient_public_key, "recipient", need_private=False)


def _check_rsa_key(key: object, whose: str, *, need_private: bool) -> None:
    if not isinstance(key, RsaKey):
        raise CryptoError(f"the {whose} key is not an RSA key object")
    if need_private and not key.has_private():
        raise CryptoError(f"the {whose} key has no private half")
    if not MIN_KEY_BITS <= key.size_in_bits() <= MAX_KEY_BITS:
        raise CryptoError(f"the {whose} key must have {MIN_KEY_BITS} to {MAX_KEY_BITS} bits")


def open_envelope(
    envelope: Envelope,
    *,
    recipient: str,
    recipient_private_key: RsaKey,
    sender_public_key: RsaKey,
    expected_sender: str | None = None,
) -> bytes:
    """Check and decrypt ``envelope``; return the plaintext or raise DecryptionError.

    ``sender_public_key`` must be the key pinned for ``envelope.sender`` (look it up by
    that name, not by any name outside the envelope); pass ``expected_sender`` to have
    the name checked here too. The signature is verified before any private-key work.
    Call ``ReplayGuard.check`` *before* this (a replayed envelope then costs no RSA
    operation at all) and ``ReplayGuard.check_and_record`` only after it succeeded.
    """
    if not isinstance(envelope, Envelope):
        raise DecryptionError("malformed envelope")
    try:
        _check_addressing(envelope, recipient, expected_sender)
        _verify_signature(envelope, sender_public_key)
        aes_key = _unwrap_key(envelope, recipient_private_key)
        return _decrypt(envelope, aes_key)
    except DecryptionError as exc:
        # Ids and names are metadata the server sees anyway; never log content or keys.
        logger.debug("refused envelope %s from %r: %s", envelope.message_id,
                     envelope.sender, exc)
        raise


def _check_addressing(envelope: Envelope, recipient: str,
                      expected_sender: str | None) -> None:
    if envelope.recipient.casefold() != recipient.casefold():
        raise DecryptionError("the message is addressed to someone else")
    if expected_sender is not None and envelope.sender.casefold() != expected_sender.casefold():
        raise DecryptionError("the message claims to come from someone else")


def verify_signature(envelope: Envelope, sender_public_key: RsaKey) -> None:
    """Check only the sender's signature (one RSA public-key operation, no decryption);
    raise DecryptionError if it does not match. The client uses it to decide whether a
    changed key that came with a message is worth offering for /trust at all."""
    if not isinstance(envelope, Envelope):
        raise DecryptionError("malformed envelope")
    _verify_signature(envelope, sender_public_key)


def _verify_signature(envelope: Envelope, sender_public_key: RsaKey) -> None:
    try:
        _pss(sender_public_key).verify(SHA256.new(envelope.signed_bytes()), envelope.signature)
    except (ValueError, TypeError):
        raise DecryptionError("the sender's signature does not match their key") from None


def _decrypt(envelope: Envelope, aes_key: bytes) -> bytes:
    try:
        cipher = _gcm(aes_key, envelope.nonce, envelope.header())
        return cipher.decrypt_and_verify(envelope.ciphertext, envelope.tag)
    except (ValueError, TypeError):
        raise DecryptionError("the message could not be decrypted") from None


def _unwrap_key(envelope: Envelope, recipient_private_key: RsaKey) -> bytes:
    # The same reason is given for an unwrap failure as for a GCM failure, so a sender
    # probing us learns nothing about the OAEP padding (no Manger-style oracle).
    try:
        aes_key = _oaep(recipient_private_key).decrypt(envelope.wrapped_key)
    except (ValueError, TypeError):
        raise DecryptionError("the message could not be decrypted") from None
    if len(aes_key) != AES_KEY_BYTES:
        raise DecryptionError("the message could not be decrypted")
    return aes_key


# ---------------------------------------------------------------------------------------
# Data at rest (the client's private history, privatestore.py)
#
# A local AES-256 key is wrapped for the owner's own identity key with RSA-OAEP (SHA-256,
# MGF1-SHA-256) under the label ``LOCAL_KEY_LABEL``: an envelope's wrapped key (empty
# label) can never be passed off as a local key, nor the other way round. Each record is
# sealed with AES-256-GCM as ``nonce(12) || ciphertext || tag(16)``, its associated data
# chosen by the caller so that a record cannot be moved to another place in the store.

LOCAL_KEY_LABEL = b"gapshape-local-key-v1"
LOCAL_SEAL_OVERHEAD = NONCE_BYTES + TAG_BYTES


def wrap_local_key(aes_key: bytes, public_key: RsaKey, *,
                   randbytes: RandBytes | None = None) -> bytes:
    """Wrap a 32-byte local key for ``public_key`` (RSA-OAEP-SHA256, local label)."""
    _check_local_key(aes_key)
    _check_rsa_key(public_key, "owner's", need_private=False)
    draw = _checked_source(randbytes or get_random_bytes)
    return _local_oaep(public_key, draw).encrypt(aes_key)


def unwrap_local_key(wrapped: bytes, private_key: RsaKey) -> bytes:
    """Unwrap a key made by ``wrap_local_key``; DecryptionError if this key cannot."""
    _check_rsa_key(private_key, "owner's", need_private=True)
    if not isinstance(wrapped, bytes) or len(wrapped) != (private_key.size_in_bits() + 7) // 8:
        raise DecryptionError("the stored key was not wrapped for this identity key")
    try:
        aes_key = _local_oaep(private_key).decrypt(wrapped)
    except (ValueError, TypeError):
        raise DecryptionError("the stored key was not wrapped for this identity key") from None
    if len(aes_key) != AES_KEY_BYTES:
        raise DecryptionError("the stored key was not wrapped for this identity key")
    return aes_key


def seal_local(aes_key: bytes, plaintext: bytes, associated_data: bytes, *,
               randbytes: RandBytes | None = None) -> bytes:
    """AES-256-GCM: ``nonce || ciphertext || tag``, authenticating ``associated_data``."""
    _check_local_key(aes_key)
    if not isinstance(plaintext, bytes) or not isinstance(associated_data, bytes):
        raise CryptoError("seal_local takes bytes")
    nonce = _checked_source(randbytes or get_random_bytes)(NONCE_BYTES)
    ciphertext, tag = _gcm(aes_key, nonce, associated_data).encrypt_and_digest(plaintext)
    return nonce + ciphertext + tag


def open_local(aes_key: bytes, sealed: bytes, associated_data: bytes) -> bytes:
    """Open ``seal_local``'s output; DecryptionError if it was altered or moved (other
    associated data) or the key is wrong."""
    _check_local_key(aes_key)
    if not isinstance(sealed, bytes) or len(sealed) < LOCAL_SEAL_OVERHEAD:
        raise DecryptionError("the stored record is too short")
    nonce, ciphertext, tag = sealed[:NONCE_BYTES], sealed[NONCE_BYTES:-TAG_BYTES], sealed[-TAG_BYTES:]
    try:
        return _gcm(aes_key, nonce, associated_data).decrypt_and_verify(ciphertext, tag)
    except (ValueError, TypeError):
        raise DecryptionError("the stored record was altered, moved or damaged") from None


def _check_local_key(aes_key: object) -> None:
    if not isinstance(aes_key, bytes) or len(aes_key) != AES_KEY_BYTES:
        raise CryptoError(f"a local key must be {AES_KEY_BYTES} bytes")


def _local_oaep(key: RsaKey, randbytes: RandBytes = get_random_bytes) -> PKCS1_OAEP.PKCS1OAEP_Cipher:
    return PKCS1_OAEP.new(key, hashAlgo=SHA256, mgfunc=_mgf1_sha256, label=LOCAL_KEY_LABEL,
                          randfunc=randbytes)
