"""Private messages in the client: how large one may be, sealing one, and the checks an
incoming one passes before it is shown. No socket; `client.ChatClient` sends and receives.

Sealing and opening are crypto.py's; this module adds the client's side of the rules in
docs/SECURITY.md: the envelope must name this sender and this recipient, a message id is
accepted once (the replay guard, identity.py), the sender's key must match the pin
(keytrust.py), and only a message that verified and opened pins a first-seen key.
"""
from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

import auth
import crypto
import identity
import sanitize
from keytrust import KeyTrust
from protocol import Frame, encode_frame

__all__ = ["PendingPrivate", "Refused", "largest_private_text", "open_private",
           "private_frame", "seal"]


class Refused(Exception):
    """An incoming private message was refused; the message says why."""


@dataclass
class PendingPrivate:
    """A private message the user wrote, until it is sealed and sent (or refused)."""

    peer: str
    text: str
    ref: str


def private_frame(peer: str, envelope: crypto.Envelope, ref: str) -> dict[str, Any]:
    return {"type": "private", "to": peer, "envelope": envelope.to_fields(), "ref": ref}


def largest_private_text(max_frame: int, sender: str, recipient: str, ref: str,
                         sender_key_bits: int, recipient_key_bits: int) -> int:
    """The most plaintext bytes whose sealed `private` frame fits in `max_frame` bytes.

    The frame is measured, not estimated: a template envelope with fields of the exact
    lengths (wrapped key and signature as long as the two RSA moduli, 12-byte nonce,
    16-byte tag, 32-digit id, 24-character time) and an empty ciphertext gives the
    overhead; the ciphertext is as long as the plaintext (GCM) and grows by 4 base64
    characters per 3 bytes.
    """
    template = crypto.Envelope(
        crypto.ENVELOPE_VERSION, sender, recipient, "0" * 32, "2000-01-01T00:00:00.000Z",
        bytes((recipient_key_bits + 7) // 8), bytes(crypto.NONCE_BYTES), b"",
        bytes(crypto.TAG_BYTES), bytes((sender_key_bits + 7) // 8))
    overhead = len(encode_frame(private_frame(recipient, template, ref)))
    room = max(0, max_frame - overhead)
    return min(crypto.MAX_PLAINTEXT_BYTES, room // 4 * 3)


def seal(pending: PendingPrivate, me: identity.Identity, username: str,
         peer_key: Any) -> crypto.Envelope:
    return crypto.seal(pending.text.encode("utf-8", "replace"), sender=username,
                       recipient=pending.peer, sender_private_key=me.private_key,
                       recipient_public_key=peer_key)


def open_private(frame: Frame, *, username: str, me: identity.Identity,
                 replay_guard: identity.ReplayGuard, trust: KeyTrust) -> tuple[str, str]:
    """Check and open a private frame: (text, sender's hex fingerprint), or Refused.

    Order: strict parsing and addressing (no crypto), the replay guard (no RSA: a
    replayed copy costs a lookup), the pin, the RSA signature and decryption, and only
    after all succeeded: record the id and pin a first-seen key. A `from_key` that does
    not verify is never pinned."""
    sender = str(frame.get("from", ""))
    try:
        sender_der = base64.b64decode(str(frame.get("from_key", "")), validate=True)
        envelope = crypto.Envelope.from_fields(frame.get("envelope"))
        if envelope.sender.casefold() != sender.casefold():
            raise crypto.DecryptionError("the envelope was written by someone else")
        if envelope.recipient.casefold() != username.casefold():
            raise crypto.DecryptionError("the message is addressed to someone else")
        replay_guard.check(envelope.message_id, envelope.sent_at)
        sender_key = auth.load_public_key(sender_der)
    except (crypto.DecryptionError, auth.AuthError, ValueError) as exc:
        raise Refused(str(exc) or "the message failed verification") from None
    fingerprint = auth.key_fingerprint(sender_der)
    check = trust.known_keys.check(sender, fingerprint)
    if check.status is identity.PinStatus.MISMATCH:
        trust.offer_if_signed(sender, sender_der, sender_key, envelope,
                              check.pinned_fingerprint or "")
        raise Refused("the sender's key changed; message refused "
                      f"(check it, then /trust {sanitize.inert(sender)})")
    try:
        plaintext = crypto.open_envelope(
            envelope, recipient=username, recipient_private_key=me.private_key,
            sender_public_key=sender_key, expected_sender=sender)
        text = plaintext.decode("utf-8")
        replay_guard.check_and_record(envelope.message_id, envelope.sent_at)
    except (crypto.DecryptionError, UnicodeDecodeError) as exc:
        raise Refused(str(exc) or "the message failed verification") from None
    if check.status is identity.PinStatus.NEW:
        try:
            trust.known_keys.pin(sender, fingerprint)  # only now: it proved the key
        except identity.IdentityError as exc:
            raise Refused(str(exc)) from None
    trust.remember(sender, sender_key)
    return text, fingerprint
