"""Whose keys the client trusts: contacts' keys pinned on first use, changed keys on offer
until `/trust`, fingerprints shown for comparing out of band, and `/verify`.

`KeyTrust` is the part of `client.ChatClient` that decides about keys; it knows no socket.
It is given the pin store (known_keys.json, identity.py) and the client's `emit`, and
answers with keys to use (or None: refuse), and with the events to show. The rules are
in docs/SECURITY.md, "When a contact's key changes": a changed key stops all traffic with
that user until `/trust <user>`, which accepts exactly the offered key that was shown.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Callable

import auth
import crypto
import identity
import sanitize
from events import ErrorEvent, Event, KeyWarning, Notice

__all__ = ["KeyTrust"]


@dataclass
class _Offer:
    """A key the server offered for a contact that differs from the pin."""

    der: bytes
    fingerprint: str  # hex SHA-256, as pins store it
    #: Another key was on offer before this one: /trust refuses once (the user may have
    #: compared the earlier one) and shows this one in a new warning.
    replaced_earlier: bool = False


def _digits(text: str) -> str:
    return "".join(ch for ch in text if ch.isdigit())


class KeyTrust:
    """The pins, the keys in use and the keys on offer, for one user's client.

    Thread-safe: the reader thread accepts keys while the user's thread trusts them."""

    def __init__(self, username: str, own_public_der: bytes, known_keys: identity.PinStore,
                 emit: Callable[[Event], None]) -> None:
        self.username = username
        self.own_public_der = own_public_der
        self.known_keys = known_keys
        self._emit = emit
        self._lock = threading.Lock()
        self._peer_keys: dict[str, Any] = {}  # casefolded user -> key matching the pin
        self._offers: dict[str, _Offer] = {}  # casefolded user -> changed key on offer
        self._fingerprint_requests: set[str] = set()  # users whose /fingerprint awaits a key

    # -- keys in use ----------------------------------------------------------------------

    def key_for(self, user: str) -> Any | None:
        """The key to seal for `user` with, if one matching the pin is known."""
        with self._lock:
            return self._peer_keys.get(user.casefold())

    def remember(self, user: str, key: Any) -> None:
        """`key` proved itself (a message it signed opened) and matches the pin."""
        with self._lock:
            self._peer_keys[user.casefold()] = key

    def accept_key(self, user: str, public_der: bytes) -> Any | None:
        """The key to use for `user` (pinned on first use), or None if it differs from the
        pin: then it is on offer for /trust and a KeyWarning is shown. Only for keys we
        asked for (`key` frames answering our get_key)."""
        key = auth.load_public_key(public_der)  # AuthError for unusable keys
        fingerprint = auth.key_fingerprint(public_der)
        check = self.known_keys.check(user, fingerprint)
        if check.status is identity.PinStatus.MISMATCH:
            self.offer(user, public_der, check.pinned_fingerprint or "")
            return None
        if check.status is identity.PinStatus.NEW:
            self.known_keys.pin(user, fingerprint)
        self.remember(user, key)
        return key

    def offer(self, user: str, public_der: bytes, pinned: str) -> None:
        """Put a changed key on offer for /trust, and warn (once per distinct key)."""
        fingerprint = auth.key_fingerprint(public_der)
        with self._lock:
            previous = self._offers.get(user.casefold())
            self._peer_keys.pop(user.casefold(), None)
            if previous is not None and previous.fingerprint == fingerprint:
                return  # already on offer and shown
            self._offers[user.casefold()] = _Offer(public_der, fingerprint, previous is not None)
        self._emit(self._key_warning(user, pinned, fingerprint))

    def offer_if_signed(self, sender: str, der: bytes, key: Any, envelope: crypto.Envelope,
                        pinned: str) -> None:
        """A changed key arriving with a message is put on offer only if that message is
        really signed with it (one RSA public-key operation, no decryption)."""
        try:
            crypto.verify_signature(envelope, key)
        except crypto.DecryptionError:
            return
        self.offer(sender, der, pinned)

    def _key_warning(self, user: str, pinned: str, offered: str) -> KeyWarning:
        return KeyWarning(user, identity.readable_fingerprint_from_hex(pinned),
                          identity.readable_fingerprint_from_hex(offered),
                          identity.is_verified(self.known_keys.get(user)))

    def pin_of(self, user: str) -> tuple[str, bool]:
        """The readable fingerprint pinned for `user` ("" if none) and whether it is verified."""
        pin = self.known_keys.get(user)
        if pin is None:
            return "", False
        return identity.readable_fingerprint_from_hex(pin.fingerprint), identity.is_verified(pin)

    # -- /fingerprint ---------------------------------------------------------------------

    def show_fingerprint(self, user: str | None) -> bool:
        """Emit a Notice with our own fingerprint or a contact's; True if the contact's key
        must be fetched first (the Notice follows when it comes, `key_arrived`).

        While a key change is pending for `user`, the Notice shows the pinned and the
        offered key (the one /trust would accept), from memory: nothing is fetched, so
        what the user compares is exactly what /trust pins."""
        if user is None or user.casefold() == self.username.casefold():
            readable = auth.readable_fingerprint(self.own_public_der)
            self._emit(Notice(f"your key fingerprint: {readable}", "fingerprint"))
            return False
        with self._lock:
            offer = self._offers.get(user.casefold())
            if offer is not None:
                offer.replaced_earlier = False  # shown now: this is the one /trust takes
            else:
                self._fingerprint_requests.add(user.casefold())
        if offer is not None:
            self._emit(self.fingerprint_notice(user))
            return False
        return True

    def wants_fingerprint(self, user: str) -> bool:
        """Whether a /fingerprint waits for `user`'s key (and forget that it does)."""
        with self._lock:
            wanted = user.casefold() in self._fingerprint_requests
            self._fingerprint_requests.discard(user.casefold())
            return wanted

    def fingerprint_notice(self, user: str) -> Notice:
        name = sanitize.inert(user)
        mine = auth.readable_fingerprint(self.own_public_der)
        pinned, verified = self.pin_of(user)
        with self._lock:
            offer = self._offers.get(user.casefold())
        if offer is not None:
            offered = identity.readable_fingerprint_from_hex(offer.fingerprint)
            return Notice(f"{name}'s key has CHANGED and is not trusted. Pinned: {pinned}; "
                          f"offered: {offered} (the key /trust {name} would accept); yours: "
                          f"{mine}. Compare the offered one with {name} in person or by phone.",
                          "fingerprint", user, False)
        mark = ("verified by you" if verified else
                f"not verified: after comparing, type /verify {name}")
        return Notice(f"{name}'s key fingerprint: {pinned}; yours: {mine} (compare both with "
                      f"{name} in person or by phone; {mark})", "fingerprint", user, verified)

    # -- /trust and /verify ---------------------------------------------------------------

    def trust(self, user: str, fingerprint: str | None = None) -> None:
        """Accept the changed key on offer for `user`: exactly the one last shown.

        With `fingerprint` (the digits the user compared), only a key with those digits is
        accepted. Without it, if the server offered yet another key after an earlier
        warning, the first /trust is refused and the new key shown in a new warning."""
        name = sanitize.inert(user)
        with self._lock:
            offer = self._offers.get(user.casefold())
            refusal = _trust_refusal(offer, fingerprint)
            if offer is not None and refusal is None:
                del self._offers[user.casefold()]
            elif offer is not None:
                offer.replaced_earlier = False  # the warning below shows it
        if offer is None:
            self._emit(Notice(f"no changed key is waiting for {name}; nothing to trust",
                              "trust", user, self.pin_of(user)[1]))
            return
        if refusal is not None:
            self._emit(ErrorEvent("trust_refused", f"{name}'s key was NOT trusted: {refusal}",
                                  "trust"))
            pin = self.known_keys.get(user)
            self._emit(self._key_warning(user, pin.fingerprint if pin else "", offer.fingerprint))
            return
        key = auth.load_public_key(offer.der)
        self.known_keys.replace(user, offer.fingerprint)
        self.remember(user, key)
        self._emit(Notice(f"you now trust {name}'s new key: "
                          f"{auth.readable_fingerprint(offer.der)} (not verified yet: after "
                          f"comparing it, type /verify {name})", "trust", user, False))

    def verify(self, user: str, fingerprint: str | None = None) -> None:
        """Record that the user compared `user`'s pinned fingerprint out of band.

        With `fingerprint`, the digits must match the pinned key's. Refused while a key
        change is pending (trust the new key first) or when nothing is pinned yet."""
        name = sanitize.inert(user)
        with self._lock:
            pending = user.casefold() in self._offers
        pin = self.known_keys.get(user)
        if pending:
            problem = f"{name}'s key has changed; compare the offered key, /trust {name}, then /verify"
        elif pin is None:
            problem = f"no key is pinned for {name} yet; type /fingerprint {name} first"
        elif fingerprint is not None and _digits(fingerprint) != _digits(
                identity.readable_fingerprint_from_hex(pin.fingerprint)):
            problem = (f"the fingerprint you typed is not {name}'s pinned key "
                       f"({identity.readable_fingerprint_from_hex(pin.fingerprint)}). Someone "
                       "may be in the middle: do not verify")
        else:
            problem = None
        if problem is not None or pin is None:
            self._emit(ErrorEvent("verify_refused", f"not verified: {problem}", "verify"))
            return
        self.known_keys.mark_verified(user, pin.fingerprint)
        readable = identity.readable_fingerprint_from_hex(pin.fingerprint)
        self._emit(Notice(f"you verified {name}'s key {readable}; private messages with "
                          f"{name} now show as verified", "verify", user, True))


def _trust_refusal(offer: _Offer | None, fingerprint: str | None) -> str | None:
    if offer is None:
        return None
    offered = _digits(identity.readable_fingerprint_from_hex(offer.fingerprint))
    if fingerprint is not None:
        if _digits(fingerprint) != offered:
            return ("the fingerprint you typed is not the one on offer. Do not trust "
                    "it until you find out why")
        return None
    if offer.replaced_earlier:
        return ("the server offered yet another key since the warning you saw. Compare "
                "this one (below) and type /trust again")
    return None
