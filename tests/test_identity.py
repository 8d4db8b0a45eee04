"""Tests for identity.py: data directories, the identity key, pin stores, replay guard."""
from __future__ import annotations

import json
import os
import stat
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from Crypto.PublicKey import RSA

import identity
from auth import key_fingerprint, public_key_der
from crypto import DecryptionError, ReplayError, utc_timestamp
from identity import (
    IdentityError,
    PinCheck,
    PinConflictError,
    PinStatus,
    PinStore,
    ReplayGuard,
    load_or_create_identity,
)

POSIX = os.name == "posix"
NOW = datetime(2026, 11, 29, 19, 40, tzinfo=timezone.utc)
FP_A, FP_B = "a" * 64, "b" * 64


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def no_temp_files_left(directory: Path) -> bool:
    return not [p for p in directory.iterdir() if p.name.endswith(".tmp")]


# ---------------------------------------------------------------------------------------
# Where things live


@pytest.mark.parametrize("environ, platform, expected", [
    ({"GAPSHAPE_HOME": "/custom"}, "linux", "/custom"),
    ({"GAPSHAPE_HOME": "/custom", "APPDATA": "C:/Roaming"}, "win32", "/custom"),
    ({"APPDATA": "/appdata"}, "win32", "/appdata/Gapshape"),
    ({}, "win32", "/home/u/AppData/Roaming/Gapshape"),
    ({}, "darwin", "/home/u/Library/Application Support/Gapshape"),
    ({"XDG_DATA_HOME": "/xdg"}, "linux", "/xdg/gapshape"),
    ({"XDG_DATA_HOME": "relative/dir"}, "linux", "/home/u/.local/share/gapshape"),
    ({"GAPSHAPE_HOME": ""}, "linux", "/home/u/.local/share/gapshape"),
])
def test_default_data_dir(environ, platform, expected):
    found = identity.default_data_dir(environ=environ, platform=platform, home=Path("/home/u"))
    assert found == Path(expected)


def test_default_data_dir_reads_the_real_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("GAPSHAPE_HOME", str(tmp_path))
    assert identity.default_data_dir() == tmp_path


def test_user_dir_is_case_folded(tmp_path):
    assert identity.user_dir(tmp_path, "Alice") == tmp_path / "alice"
    assert identity.user_dir(tmp_path, "STRASSE") == identity.user_dir(tmp_path, "straße")


@pytest.mark.parametrize("name", ["", ".", "..", "../evil", "a/b", "a\\b", "c:", "a\0b",
                                  "tab\t"])
def test_user_dir_refuses_names_unsafe_as_paths(tmp_path, name):
    with pytest.raises(IdentityError):
        identity.user_dir(tmp_path, name)


# ---------------------------------------------------------------------------------------
# The identity key


@pytest.fixture
def pooled(key_pool):
    """A new_key function handing out the pooled key 0, counting the calls."""
    calls = []

    def new_key():
        calls.append(1)
        return key_pool.get(0)

    new_key.calls = calls
    return new_key


def test_identity_is_created_then_loaded(tmp_path, pooled, key_pool):
    created = load_or_create_identity(tmp_path, "Alice", new_key=pooled)
    path = tmp_path / "alice" / "identity.pem"
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert created.username == "Alice"
    assert created.private_key.n == key_pool.get(0).n
    assert created.public_der == public_key_der(key_pool.get(0))
    assert created.fingerprint == key_fingerprint(created.public_der)
    loaded = load_or_create_identity(tmp_path, "ALICE", new_key=pooled)
    assert pooled.calls == [1]  # loading does not make a new key
    assert loaded.private_key.n == created.private_key.n
    assert loaded.fingerprint == created.fingerprint
    assert no_temp_files_left(path.parent)


@pytest.mark.skipif(not POSIX, reason="file modes are POSIX")
def test_identity_file_is_private(tmp_path, pooled):
    old_umask = os.umask(0o000)  # even a permissive umask must not widen the mode
    try:
        load_or_create_identity(tmp_path, "alice", new_key=pooled)
    finally:
        os.umask(old_umask)
    assert mode_of(tmp_path / "alice" / "identity.pem") == 0o600
    assert mode_of(tmp_path / "alice") & 0o077 == 0


def test_identity_repr_does_not_show_the_key(tmp_path, pooled):
    ident = load_or_create_identity(tmp_path, "alice", new_key=pooled)
    assert "private_key" not in repr(ident) and ident.fingerprint in repr(ident)


def test_passphrase_round_trip(tmp_path, pooled, key_pool):
    created = load_or_create_identity(tmp_path, "alice", "correct horse ✓", new_key=pooled)
    pem = (tmp_path / "alice" / "identity.pem").read_bytes()
    assert pem.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    with pytest.raises(ValueError):
        RSA.import_key(pem)  # not readable without the passphrase
    loaded = load_or_create_identity(tmp_path, "alice", "correct horse ✓")
    assert loaded.private_key.n == created.private_key.n == key_pool.get(0).n
    with pytest.raises(IdentityError, match="wrong passphrase"):
        load_or_create_identity(tmp_path, "alice", "wrong horse")
    with pytest.raises(IdentityError, match="protected by a passphrase"):
        load_or_create_identity(tmp_path, "alice")


def test_empty_passphrase_means_none(tmp_path, pooled):
    load_or_create_identity(tmp_path, "alice", "", new_key=pooled)
    assert b"ENCRYPTED" not in (tmp_path / "alice" / "identity.pem").read_bytes()
    load_or_create_identity(tmp_path, "alice")


def test_damaged_identity_file_is_refused(tmp_path):
    (tmp_path / "alice").mkdir()
    (tmp_path / "alice" / "identity.pem").write_bytes(b"-----BEGIN PRIVATE KEY-----\nAAAA\n")
    with pytest.raises(IdentityError, match="valid RSA private key"):
        load_or_create_identity(tmp_path, "alice")


def test_small_identity_key_is_refused(tmp_path):
    with pytest.raises(IdentityError, match="bits"):
        load_or_create_identity(tmp_path, "alice", new_key=lambda: RSA.generate(1024))
    assert not (tmp_path / "alice" / "identity.pem").exists()


# ---------------------------------------------------------------------------------------
# Pin stores


def test_pin_store_new_match_mismatch(tmp_path):
    store = PinStore(tmp_path / "pins.json")
    assert store.check("bob", FP_A) == PinCheck(PinStatus.NEW, None)
    store.pin("Bob", FP_A, {"note": "met at FOSDEM"})
    assert store.check("bob", FP_A) == PinCheck(PinCheck.MATCH, FP_A)
    mismatch = store.check("BOB", FP_B)
    assert mismatch.status is PinCheck.MISMATCH and mismatch.pinned_fingerprint == FP_A
    pin = store.get("bob")
    assert (pin.name, pin.fingerprint, pin.extra) == ("Bob", FP_A, {"note": "met at FOSDEM"})
    assert store.get("carol") is None


def test_pin_never_overwrites_and_replace_does(tmp_path):
    store = PinStore(tmp_path / "pins.json")
    store.pin("bob", FP_A)
    store.pin("bob", FP_A)  # the same fingerprint again is fine
    with pytest.raises(PinConflictError, match="/trust"):
        store.pin("bob", FP_B)
    assert store.check("bob", FP_A).status is PinStatus.MATCH
    store.replace("Bob", FP_B)
    assert store.check("bob", FP_B).status is PinStatus.MATCH
    assert PinStore(tmp_path / "pins.json").check("bob", FP_A).status is PinStatus.MISMATCH


def test_pins_persist_and_file_is_private(tmp_path):
    path = tmp_path / "sub" / "pins.json"
    PinStore(path).pin("Bob", FP_A, {"since": 2026})
    reloaded = PinStore(path).get("BOB")
    assert reloaded.fingerprint == FP_A and reloaded.extra == {"since": 2026}
    if POSIX:
        assert mode_of(path) == 0o600
    assert no_temp_files_left(path.parent)


def test_pin_extra_is_copied_not_shared(tmp_path):
    store = PinStore(tmp_path / "pins.json")
    extra = {"k": [1]}
    store.pin("bob", FP_A, extra)
    extra["k"].append(2)
    store.get("bob").extra["k"].append(3)
    assert store.get("bob").extra == {"k": [1]}


def test_pin_refuses_non_json_extra(tmp_path):
    with pytest.raises(IdentityError):
        PinStore(tmp_path / "pins.json").pin("bob", FP_A, {"when": datetime.now()})


def test_known_keys_and_known_servers_locations(tmp_path):
    identity.known_keys(tmp_path, "Alice").pin("bob", FP_A)
    identity.known_servers(tmp_path).pin("Chat.Example.org:7000", FP_B)
    assert (tmp_path / "alice" / "known_keys.json").exists()
    assert identity.known_servers(tmp_path).check("chat.example.org:7000", FP_B).status \
        is PinStatus.MATCH


@pytest.mark.parametrize("content", [b"{not json", b"[]", b'{"version": 2, "pins": {}}',
                                     b'{"version": true, "pins": {}}',
                                     b'{"version": 1, "pins": {"bob": {"name": "carol", '
                                     b'"fingerprint": "x", "pinned_at": "t", "extra": {}}}}'])
def test_damaged_pin_file_is_refused(tmp_path, content):
    path = tmp_path / "pins.json"
    path.write_bytes(content)
    with pytest.raises(IdentityError, match="damaged"):
        PinStore(path)


def test_pin_store_is_thread_safe(tmp_path):
    store = PinStore(tmp_path / "pins.json")
    threads = [threading.Thread(target=store.pin, args=(f"user{i}", FP_A)) for i in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    reloaded = PinStore(tmp_path / "pins.json")
    assert all(reloaded.get(f"user{i}") is not None for i in range(20))


# ---------------------------------------------------------------------------------------
# Replay guard


def stamp(offset: timedelta = timedelta()) -> str:
    return utc_timestamp(NOW + offset)


def test_same_message_id_twice_is_rejected(tmp_path):
    guard = ReplayGuard(tmp_path / "seen.json")
    guard.check_and_record("m1", stamp(), now=NOW)
    guard.check_and_record("m2", stamp(), now=NOW)
    with pytest.raises(ReplayError, match="already received"):
        guard.check_and_record("m1", stamp(), now=NOW + timedelta(seconds=5))


@pytest.mark.parametrize("offset", [timedelta(days=-8, milliseconds=-1),
                                    timedelta(minutes=10, milliseconds=1),
                                    timedelta(days=-400)])
def test_message_outside_the_window_is_rejected(tmp_path, offset):
    guard = ReplayGuard(tmp_path / "seen.json")
    with pytest.raises(ReplayError, match="too far from now"):
        guard.check_and_record("m1", stamp(offset), now=NOW)


@pytest.mark.parametrize("offset", [timedelta(days=-8), timedelta(hours=-30),
                                    timedelta(minutes=10)])
def test_message_at_the_window_edge_is_accepted(tmp_path, offset):
    """Up to 8 days old (it may have waited in the server's mailbox), 10 minutes ahead."""
    ReplayGuard(tmp_path / "seen.json").check_and_record("m1", stamp(offset), now=NOW)


def test_seen_ids_persist_across_restarts(tmp_path):
    path = tmp_path / "alice" / "seen_messages.json"
    ReplayGuard(path).check_and_record("m1", stamp(), now=NOW)
    if POSIX:
        assert mode_of(path) == 0o600
    with pytest.raises(ReplayError):
        ReplayGuard(path).check_and_record("m1", stamp(), now=NOW + timedelta(minutes=1))


def test_old_ids_are_pruned_and_their_replays_still_fail(tmp_path):
    path = tmp_path / "seen.json"
    guard = ReplayGuard(path, horizon=timedelta(days=8))
    guard.check_and_record("old", stamp(), now=NOW)
    later = NOW + timedelta(days=8, minutes=1)
    guard.check_and_record("new", utc_timestamp(later), now=later)
    assert set(json.loads(path.read_text())["seen"]) == {"new"}
    with pytest.raises(ReplayError, match="too far"):
        guard.check_and_record("old", stamp(), now=later)


def test_replay_guard_refuses_bad_input(tmp_path):
    guard = ReplayGuard(tmp_path / "seen.json")
    with pytest.raises(DecryptionError):
        guard.check_and_record("m1", "yesterday", now=NOW)
    with pytest.raises(DecryptionError):
        guard.check_and_record("", stamp(), now=NOW)


def test_damaged_seen_file_is_refused(tmp_path):
    path = tmp_path / "seen.json"
    path.write_text('{"version": 1, "seen": {"m1": "noon"}}')
    with pytest.raises(IdentityError, match="damaged"):
        ReplayGuard(path)


def test_replay_guard_location(tmp_path):
    identity.replay_guard(tmp_path, "Alice").check_and_record("m1", utc_timestamp())
    assert (tmp_path / "alice" / "seen_messages.json").exists()


def test_replay_guard_is_thread_safe(tmp_path):
    guard = ReplayGuard(tmp_path / "seen.json")
    outcomes: list[str] = []

    def receive() -> None:
        try:
            guard.check_and_record("same", stamp(), now=NOW)
            outcomes.append("accepted")
        except ReplayError:
            outcomes.append("rejected")

    threads = [threading.Thread(target=receive) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["accepted"] + ["rejected"] * 9


# ---------------------------------------------------------------------------------------
# Issue 9: checking without recording, the verified mark, readable fingerprints from pins


def test_replay_check_records_nothing(tmp_path):
    guard = ReplayGuard(tmp_path / "seen.json")
    sent = utc_timestamp(NOW)
    guard.check("a" * 32, sent, NOW)
    guard.check("a" * 32, sent, NOW)  # still unseen: check alone never records
    assert not (tmp_path / "seen.json").exists()
    guard.check_and_record("a" * 32, sent, NOW)
    with pytest.raises(ReplayError):
        guard.check("a" * 32, sent, NOW)
    with pytest.raises(ReplayError):
        guard.check("b" * 32, utc_timestamp(NOW - timedelta(days=9)), NOW)


def test_a_message_that_waited_hours_in_the_mailbox_is_accepted_once_across_restarts(tmp_path):
    path = tmp_path / "seen.json"
    sealed = utc_timestamp(NOW - timedelta(hours=20))
    ReplayGuard(path).check_and_record("q" * 32, sealed, now=NOW)
    with pytest.raises(ReplayError, match="already received"):
        ReplayGuard(path).check("q" * 32, sealed, now=NOW + timedelta(days=3))


def test_over_the_id_cap_the_oldest_are_forgotten_and_can_never_come_back(tmp_path):
    path = tmp_path / "seen.json"
    guard = ReplayGuard(path, max_ids=3)
    for n in range(4):
        guard.check_and_record(f"m{n}", utc_timestamp(NOW - timedelta(hours=10 - n)), now=NOW)
    assert set(json.loads(path.read_text())["seen"]) == {"m1", "m2", "m3"}
    for reader in (guard, ReplayGuard(path, max_ids=3)):  # the floor survives a restart
        with pytest.raises(ReplayError, match="older than the ones"):
            reader.check("m0", utc_timestamp(NOW - timedelta(hours=10)), now=NOW)


def test_verified_mark_names_the_fingerprint_and_a_key_change_clears_it(tmp_path):
    store = PinStore(tmp_path / "known_keys.json")
    with pytest.raises(IdentityError):
        store.mark_verified("bob", FP_A)  # nothing pinned
    store.pin("Bob", FP_A)
    assert not identity.is_verified(store.get("bob"))
    with pytest.raises(PinConflictError):
        store.mark_verified("bob", FP_B)  # only the key pinned right now
    store.mark_verified("BOB", FP_A)
    assert identity.is_verified(store.get("bob"))
    assert identity.is_verified(PinStore(tmp_path / "known_keys.json").get("bob"))  # on disk
    store.replace("bob", FP_B)
    assert not identity.is_verified(store.get("bob"))
    assert not identity.is_verified(None)


def test_readable_fingerprint_from_a_pin_matches_auth(key_pool):
    der = public_key_der(key_pool.get(0))
    from auth import readable_fingerprint

    assert identity.readable_fingerprint_from_hex(key_fingerprint(der)) == readable_fingerprint(der)
    assert identity.readable_fingerprint_from_hex("0" * 64) == " ".join(["00000"] * 12)
