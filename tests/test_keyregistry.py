"""Tests for keyregistry.py: the server's username -> public key record."""
from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
import threading
from datetime import datetime, timezone
from pathlib import Path

import pytest

from auth import AuthError, key_fingerprint
from keyregistry import KeyRegistry, KeyRegistryError, RegisteredKey, RegistrationConflict

ROOT = Path(__file__).resolve().parent.parent
WHEN = datetime(2026, 11, 29, 19, 40, 0, 123000, tzinfo=timezone.utc)




@pytest.fixture
def path(tmp_path) -> Path:
    return tmp_path / "keyregistry.json"


def test_missing_file_is_an_empty_registry(path):
    registry = KeyRegistry(path)
    assert registry.lookup("alice") is None
    assert registry.usernames() == []
    assert not path.exists()  # nothing is written until something changes


def test_register_then_lookup(path, der_a):
    entry = KeyRegistry(path).register("Alice", der_a, now=WHEN)
    assert entry == RegisteredKey("Alice", key_fingerprint(der_a), der_a,
                                  "2026-11-29T19:40:00.123Z")
    assert KeyRegistry(path).lookup("alice") == entry


def test_names_are_case_insensitive_and_keep_their_display_form(path, der_a, der_b):
    registry = KeyRegistry(path)
    registry.register("Alice", der_a)
    assert registry.lookup("ALICE").username == "Alice"
    with pytest.raises(RegistrationConflict, match="Alice is already registered"):
        registry.register("aLiCe", der_b)
    assert registry.lookup("alice").public_der == der_a


def test_registering_the_same_key_again_returns_the_first_entry(path, der_a):
    registry = KeyRegistry(path)
    first = registry.register("alice", der_a, now=WHEN)
    assert registry.register("ALICE", der_a) == first


def test_forget_releases_the_name(path, der_a, der_b):
    registry = KeyRegistry(path)
    registry.register("alice", der_a)
    assert registry.forget("ALICE") is True
    assert registry.forget("alice") is False
    assert KeyRegistry(path).lookup("alice") is None
    assert registry.register("alice", der_b).public_der == der_b


def test_persistence_and_file_layout(path, der_a, der_b):
    registry = KeyRegistry(path)
    registry.register("Bob", der_b, now=WHEN)
    registry.register("alice", der_a)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(line["op"], line["username"]) for line in lines] == [("register", "Bob"),
                                                                 ("register", "alice")]
    assert lines[0]["fingerprint"] == key_fingerprint(der_b)
    assert KeyRegistry(path).usernames() == ["alice", "Bob"]
    if os.name == "posix":
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp files left


def test_registration_appends_one_line_whatever_the_size(path, der_a, der_b):
    registry = KeyRegistry(path, max_names_per_key=0)  # fifty names on one test key
    for n in range(50):
        registry.register(f"user{n}", der_a)
    before = path.stat().st_size
    registry.register("one-more", der_b)
    added = path.stat().st_size - before
    assert added < 1000  # one line, not a rewrite of fifty entries
    assert registry.forget("user3") and KeyRegistry(path).lookup("user3") is None


def test_a_forget_by_another_process_is_seen_by_the_running_server(path, der_a, der_b):
    running = KeyRegistry(path)
    running.register("alice", der_a)
    KeyRegistry(path).forget("alice")  # the operator's --forget-user, elsewhere
    assert running.lookup("alice") is None
    assert running.register("alice", der_b).public_der == der_b


def test_bad_keys_are_never_stored(path, der_a):
    registry = KeyRegistry(path)
    for bad in (b"", der_a + b"\0", der_a[:-1]):
        with pytest.raises(AuthError):
            registry.register("alice", bad)
    assert registry.lookup("alice") is None and not path.exists()


def test_unprintable_username_is_refused(path, der_a):
    with pytest.raises(KeyRegistryError):
        KeyRegistry(path).register("al\nice", der_a)


def _registered_twice(line: dict, der_b: bytes) -> str:
    """The name registered again, with another key, without a forget in between."""
    other = {**line, "public_key": base64.b64encode(der_b).decode(),
             "fingerprint": key_fingerprint(der_b)}
    return json.dumps(line) + "\n" + json.dumps(other)


@pytest.mark.parametrize("damage", [
    lambda line, der_b: "{not json",
    lambda line, der_b: json.dumps([line]),
    lambda line, der_b: json.dumps({**line, "op": "steal"}),
    lambda line, der_b: json.dumps({**line, "username": ""}),
    lambda line, der_b: json.dumps({**line, "fingerprint": "0" * 64}),
    lambda line, der_b: json.dumps({**line, "public_key": "!!"}),
    _registered_twice,
])
def test_damaged_file_is_refused(path, der_a, der_b, damage):
    KeyRegistry(path).register("alice", der_a)
    line = json.loads(path.read_text().splitlines()[0])
    path.write_text(damage(line, der_b) + "\n")
    with pytest.raises(KeyRegistryError, match="damaged"):
        KeyRegistry(path)


def test_concurrent_registrations_of_one_name_have_one_winner(path, der_a, der_b):
    registry = KeyRegistry(path)
    outcomes: list[str] = []

    def register(der: bytes) -> None:
        try:
            registry.register("alice", der)
            outcomes.append("registered")
        except RegistrationConflict:
            outcomes.append("conflict")

    threads = [threading.Thread(target=register, args=(d,)) for d in [der_a, der_b] * 5]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winner = KeyRegistry(path).lookup("alice").public_der
    assert outcomes.count("registered") == 5 and outcomes.count("conflict") == 5
    assert winner in (der_a, der_b)


def test_server_side_modules_do_not_import_crypto():
    """The server imports auth and keyregistry; neither may pull in crypto.py."""
    code = "import sys, auth, keyregistry; sys.exit('crypto' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0
