"""Tests for privatestore.py: the client's encrypted private history in SQLite.

Real SQLite files in tmp_path; the pooled RSA keys from conftest (alice, bob). Damage is
made the way it happens: bytes of the closed file cut off or flipped, or rows changed
with sqlite3 directly (someone with the file but not the key)."""
from __future__ import annotations

import os
import sqlite3
import stat
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

import crypto
import identity
import privatestore
from auth import key_fingerprint, public_key_der
from privatestore import (
    Contact,
    DamagedHistoryError,
    ForeignHistoryError,
    Limits,
    PrivateHistory,
    PrivateHistoryError,
)

START = datetime(2026, 11, 30, 12, 0, tzinfo=timezone.utc)
SECRET = "the vault code is 7741-ALPHA-ZULU"


def when(seconds: int) -> str:
    return crypto.utc_timestamp(START + timedelta(seconds=seconds))


def mid(number: int) -> str:
    return f"{number:032x}"


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "alice" / privatestore.HISTORY_FILE


@pytest.fixture
def history(path: Path, alice) -> PrivateHistory:
    store = PrivateHistory(path, alice)
    yield store
    store.close()


def fill(store: PrivateHistory, peer: str, count: int, *, first: int = 0,
         text: str = "message {}") -> None:
    for number in range(first, first + count):
        store.record(peer, "in" if number % 2 else "out", text.replace("{}", str(number)),
                     mid(number), when(number), when(number))


def file_bytes(path: Path) -> bytes:
    """The database and its write-ahead log, as an attacker copying them would have them."""
    data = b""
    for name in (path, path.with_name(path.name + "-wal")):
        if name.exists():
            data += name.read_bytes()
    return data


# -- recording and reading ----------------------------------------------------------------

def test_record_and_read_back_oldest_first(history):
    assert history.record("Bob", "out", "hi Bob", mid(1), when(1), when(2))
    assert history.record("Bob", "in", "hi Alice ☕", mid(2), when(3), when(4))
    assert history.record("carol", "in", "hello", mid(3), when(5))
    page = history.conversation("BOB")  # contacts are case-insensitive
    assert [(e.direction, e.text, e.sent_at, e.received_at) for e in page] == [
        ("out", "hi Bob", when(1), when(2)), ("in", "hi Alice ☕", when(3), when(4))]
    assert page[0].id < page[1].id
    assert [e.text for e in history.conversation("carol")] == ["hello"]
    assert history.conversation("dave") == []


def test_contacts_most_recent_first_with_counts(history):
    fill(history, "Bob", 3)
    fill(history, "Carol", 2, first=10)
    history.record("Bob", "in", "late", mid(99), when(99), when(100))
    assert history.contacts() == [Contact("Bob", when(100), 4), Contact("Carol", when(11), 2)]


def test_duplicate_message_ids_are_recorded_once(history):
    assert history.record("bob", "in", "once", mid(7), when(7))
    assert not history.record("bob", "in", "once", mid(7), when(7))
    assert not history.record("Bob", "in", "a different text", mid(7), when(8))
    assert [e.text for e in history.conversation("bob")] == ["once"]
    assert history.contacts()[0].messages == 1
    # The id is only a duplicate for the same contact and direction: nobody can have a
    # message of ours dropped by sending one with its id.
    assert history.record("bob", "out", "mine", mid(7), when(9))
    assert history.record("carol", "in", "hers", mid(7), when(9))
    assert len(history.conversation("bob")) == 2


def test_paging_through_1000_messages_has_no_duplicates_or_holes(history):
    for number in range(1000):
        history.record("bob", "in", f"to bob {number}", mid(number), when(number))
        if number % 10 == 0:  # another conversation interleaved: never in bob's pages
            history.record("carol", "in", f"to carol {number}", mid(5000 + number), when(number))
    seen: list[str] = []
    before = None
    pages = 0
    while True:
        page = history.conversation("bob", before=before, limit=37)
        if not page:
            break
        assert [e.id for e in page] == sorted(e.id for e in page)
        seen = [e.text for e in page] + seen
        before = page[0].id
        pages += 1
    assert seen == [f"to bob {number}" for number in range(1000)]
    assert pages == 28  # ceil(1000 / 37)


def test_page_size_is_bounded(history):
    with pytest.raises(ValueError):
        history.conversation("bob", limit=0)
    with pytest.raises(ValueError):
        history.conversation("bob", limit=privatestore.MAX_PAGE + 1)


@pytest.mark.parametrize("kwargs", [
    {"direction": "sideways"},
    {"peer": ""},
    {"peer": "a" * 65},
    {"peer": "bob\n"},
    {"sent_at": "yesterday"},
    {"message_id": ""},
    {"text": "x" * (crypto.MAX_PLAINTEXT_BYTES + 1)},
])
def test_record_refuses_bad_arguments(history, kwargs):
    args = {"peer": "bob", "direction": "in", "text": "t", "message_id": mid(1),
            "sent_at": when(1), **kwargs}
    with pytest.raises(ValueError):
        history.record(**args)
    assert history.contacts() == []


def test_history_survives_reopening(path, alice):
    with PrivateHistory(path, alice) as store:
        fill(store, "bob", 5)
    with PrivateHistory(path, alice) as store:
        assert [e.text for e in store.conversation("bob")] == [f"message {n}" for n in range(5)]
        assert store.record("bob", "in", "after", mid(50), when(50))
        assert not store.record("bob", "in", "message 1", mid(1), when(1))  # still deduped


def test_closed_history_says_so(history):
    history.close()
    history.close()  # twice is fine
    with pytest.raises(PrivateHistoryError, match="closed"):
        history.conversation("bob")
    with pytest.raises(PrivateHistoryError, match="closed"):
        history.record("bob", "in", "t", mid(1), when(1))


def test_two_clients_of_one_user_share_the_file(path, alice):
    with PrivateHistory(path, alice) as first, PrivateHistory(path, alice) as second:
        first.record("bob", "in", "one", mid(1), when(1))
        second.record("bob", "in", "two", mid(2), when(2))
        assert not second.record("bob", "in", "one", mid(1), when(1))
        assert [e.text for e in first.conversation("bob")] == ["one", "two"]
        assert [c.messages for c in first.contacts()] == [2]


def test_open_private_history_lives_in_the_user_folder(tmp_path, alice):
    with privatestore.open_private_history(tmp_path, "Alice", alice) as store:
        assert store.path == identity.user_dir(tmp_path, "Alice") / "private_history.sqlite3"
        assert store.path.exists()


# -- at rest: unreadable without the key --------------------------------------------------

def test_the_file_holds_no_plaintext_names_or_ids(path, alice):
    store = PrivateHistory(path, alice)
    store.record("Zebedee", "in", SECRET, "5ec12e7" * 4 + "abcd", when(1))
    store.record("Zebedee", "out", SECRET + " (sent)", mid(2), when(2))
    try:
        # While open the rows are in the write-ahead log; afterwards, in the database file.
        data = file_bytes(path)
        assert len(data) > 4096
        for needle in (SECRET, "7741", "Zebedee", "zebedee", "5ec12e7" * 4, mid(2)):
            assert needle.encode() not in data, needle
            assert needle.encode("utf-16-le") not in data, needle
    finally:
        store.close()
    data = file_bytes(path)
    assert len(data) > 4096
    for needle in (SECRET, "7741", "Zebedee", "zebedee", "5ec12e7" * 4, mid(2)):
        assert needle.encode() not in data, needle


@pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")
def test_files_are_private_to_the_user(history, path):
    history.record("bob", "in", "t", mid(1), when(1))
    for name in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        assert name.exists(), name
        assert stat.S_IMODE(name.stat().st_mode) == 0o600, name
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_journal_is_write_ahead(history, path):
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        db.close()


def test_another_identity_cannot_open_it(path, alice, bob):
    with PrivateHistory(path, alice) as store:
        fill(store, "carol", 3)
    before = path.read_bytes()
    with pytest.raises(ForeignHistoryError, match="belongs to another identity") as caught:
        PrivateHistory(path, bob)
    assert str(path) in str(caught.value)
    assert isinstance(caught.value, identity.IdentityError)  # both clients show these
    assert path.read_bytes() == before  # left exactly as it was


def test_an_owner_fingerprint_rewritten_to_the_intruders_does_not_help(path, alice, bob):
    """Someone with the file and their own key points the owner field at their key: the
    wrapped key still opens only for Alice."""
    with PrivateHistory(path, alice) as store:
        fill(store, "carol", 3)
    intruder = key_fingerprint(public_key_der(bob))
    with_sqlite(path, "UPDATE meta SET value = ? WHERE name = 'owner'", (intruder.encode(),))
    with pytest.raises(DamagedHistoryError, match="does not open with your identity key"):
        PrivateHistory(path, bob)


def test_a_key_wrapped_for_the_intruder_does_not_pass_the_key_check(path, alice, bob):
    """Replacing the wrapped key with one made for Bob (and the owner with Bob's) gives
    Bob a key, but not the one the store's key check and records were sealed with."""
    with PrivateHistory(path, alice) as store:
        fill(store, "carol", 3)
    fake = crypto.wrap_local_key(os.urandom(32), bob.publickey())
    intruder = key_fingerprint(public_key_der(bob))
    with_sqlite(path, "UPDATE meta SET value = ? WHERE name = 'wrapped_key'", (fake,))
    with_sqlite(path, "UPDATE meta SET value = ? WHERE name = 'owner'", (intruder.encode(),))
    with pytest.raises(DamagedHistoryError, match="does not open"):
        PrivateHistory(path, bob)


def with_sqlite(path: Path, sql: str, params: tuple = ()) -> None:
    db = sqlite3.connect(path)
    try:
        db.execute(sql, params)
        db.commit()
    finally:
        db.close()


# -- tampering with rows ------------------------------------------------------------------

def rows(path: Path) -> list[tuple]:
    db = sqlite3.connect(path)
    try:
        return db.execute("SELECT id, peer_tag, direction, body FROM messages ORDER BY id").fetchall()
    finally:
        db.close()


def test_swapping_two_ciphertexts_is_detected(path, alice):
    with PrivateHistory(path, alice) as store:
        store.record("bob", "in", "first", mid(1), when(1))
        store.record("bob", "in", "second", mid(2), when(2))
    (one, _, _, body_one), (two, _, _, body_two) = rows(path)
    with_sqlite(path, "UPDATE messages SET body = ? WHERE id = ?", (body_two, one))
    with_sqlite(path, "UPDATE messages SET body = ? WHERE id = ?", (body_one, two))
    with PrivateHistory(path, alice) as store:
        with pytest.raises(DamagedHistoryError, match=f"message {one} was altered, moved"):
            store.conversation("bob")


@pytest.mark.parametrize("change", [
    "UPDATE messages SET direction = 'out' WHERE id = 1",
    "UPDATE messages SET sent_at = '2020-01-01T00:00:00.000Z' WHERE id = 1",
    "UPDATE messages SET received_at = '2020-01-01T00:00:00.000Z' WHERE id = 1",
    # Move Carol's message into Bob's conversation.
    "UPDATE messages SET peer_tag = (SELECT peer_tag FROM messages WHERE id = 1) WHERE id = 2",
    # Renumber a row (as if moved in the order).
    "UPDATE messages SET id = 99 WHERE id = 1",
    "UPDATE messages SET body = substr(body, 1, length(body) - 1) WHERE id = 1",
    "UPDATE messages SET body = x'00' WHERE id = 1",
])
def test_altered_or_moved_rows_are_detected(path, alice, change):
    with PrivateHistory(path, alice) as store:
        store.record("bob", "in", "for bob", mid(1), when(1))
        store.record("carol", "in", "for carol", mid(2), when(2))
    with_sqlite(path, change)
    with PrivateHistory(path, alice) as store:
        with pytest.raises(DamagedHistoryError, match=str(path)):
            store.conversation("bob")


def test_a_flipped_bit_in_any_stored_text_is_detected(path, alice):
    with PrivateHistory(path, alice) as store:
        store.record("bob", "in", "short", mid(1), when(1))
    (row, _, _, body), = rows(path)
    for index in range(len(body)):
        flipped = bytearray(body)
        flipped[index] ^= 0x01
        with_sqlite(path, "UPDATE messages SET body = ? WHERE id = ?", (bytes(flipped), row))
        with PrivateHistory(path, alice) as store, pytest.raises(DamagedHistoryError):
            store.conversation("bob")
    with_sqlite(path, "UPDATE messages SET body = ? WHERE id = ?", (body, row))
    with PrivateHistory(path, alice) as store:
        assert [e.text for e in store.conversation("bob")] == ["short"]


def test_a_swapped_contact_name_is_detected(path, alice):
    with PrivateHistory(path, alice) as store:
        store.record("bob", "in", "b", mid(1), when(1))
        store.record("carol", "in", "c", mid(2), when(2))
    db = sqlite3.connect(path)
    try:
        (tag_1, name_1), (tag_2, name_2) = db.execute("SELECT peer_tag, name FROM contacts").fetchall()
        db.execute("UPDATE contacts SET name = ? WHERE peer_tag = ?", (name_2, tag_1))
        db.execute("UPDATE contacts SET name = ? WHERE peer_tag = ?", (name_1, tag_2))
        db.commit()
    finally:
        db.close()
    with PrivateHistory(path, alice) as store:
        with pytest.raises(DamagedHistoryError, match="name was altered"):
            store.contacts()


# -- damaged and foreign files ------------------------------------------------------------

@pytest.fixture
def closed_history(path: Path, alice) -> bytes:
    """A closed history of 200 messages (about 40 pages); returns the file's bytes."""
    with PrivateHistory(path, alice) as store:
        fill(store, "bob", 200, text="message number {} " * 10)
    assert not path.with_name(path.name + "-wal").exists()  # all of it in the one file
    return path.read_bytes()


def open_and_read(path: Path, key) -> None:
    with PrivateHistory(path, key) as store:
        for contact in store.contacts():
            store.conversation(contact.peer, limit=privatestore.MAX_PAGE)


@pytest.mark.parametrize("damage", [
    pytest.param(lambda data: data[: len(data) // 2], id="cut-in-half"),
    pytest.param(lambda data: data[:4096 * 3], id="cut-after-three-pages"),
    pytest.param(lambda data: data[:1000], id="cut-inside-the-first-page"),
    pytest.param(lambda data: b"", id="emptied"),
    pytest.param(lambda data: bytes(100) + data[100:], id="header-zeroed"),
    pytest.param(lambda data: os.urandom(len(data)), id="random-bytes"),
    pytest.param(lambda data: b"{\"version\": 1}\n", id="a-json-file"),
])
def test_a_damaged_file_is_refused_clearly_and_left_alone(path, alice, closed_history, damage):
    damaged = damage(closed_history)
    path.write_bytes(damaged)
    with pytest.raises(DamagedHistoryError) as caught:
        open_and_read(path, alice)
    message = str(caught.value)
    assert str(path) in message and "cannot be read" in message and "move it aside" in message
    assert path.read_bytes() == damaged  # never replaced, never "repaired"


def test_flipped_bytes_anywhere_in_the_file_never_go_unnoticed(path, alice, closed_history):
    """Flip 16 bytes near the end of each page in turn (where SQLite keeps the cells):
    either the damage hit nothing in use and every message reads back, or opening or
    reading says so. Never a message silently missing or changed."""
    page = 4096
    errors = 0
    for start in range(page - 300, len(closed_history), page):
        damaged = bytearray(closed_history)
        for index in range(start, start + 16):
            damaged[index] ^= 0xA5
        path.write_bytes(bytes(damaged))
        try:
            with PrivateHistory(path, alice) as store:
                texts = [e.text for e in store.conversation("bob", limit=privatestore.MAX_PAGE)]
                count = store.contacts()[0].messages
        except DamagedHistoryError as exc:
            assert str(path) in str(exc)
            errors += 1
            continue
        assert texts == [f"message number {n} " * 10 for n in range(200)]
        assert count == 200
    assert errors >= len(closed_history) // page // 2  # most pages hold data


def test_a_foreign_sqlite_database_is_refused_and_left_alone(path, alice):
    path.parent.mkdir(parents=True)
    with_sqlite(path, "CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT)")
    with_sqlite(path, "INSERT INTO notes (text) VALUES ('not a chat')")
    before = path.read_bytes()
    with pytest.raises(DamagedHistoryError, match="not a Gapshape private history"):
        PrivateHistory(path, alice)
    assert path.read_bytes() == before


def test_a_newer_format_is_refused_with_a_reason(path, alice):
    with PrivateHistory(path, alice):
        pass
    with_sqlite(path, "UPDATE meta SET value = ? WHERE name = 'version'", (b"2",))
    with pytest.raises(DamagedHistoryError, match="format version '2'"):
        PrivateHistory(path, alice)


def test_a_directory_in_the_way_is_a_clear_error(path, alice):
    path.mkdir(parents=True)
    with pytest.raises(PrivateHistoryError, match=str(path)):
        PrivateHistory(path, alice)


# -- retention ----------------------------------------------------------------------------

def test_a_contact_keeps_its_newest_messages_up_to_its_cap(path, alice):
    with PrivateHistory(path, alice, Limits(max_rows_per_contact=10)) as store:
        fill(store, "bob", 25)
        fill(store, "carol", 3, first=100)
        assert [e.text for e in store.conversation("bob")] == [
            f"message {n}" for n in range(15, 25)]
        assert {c.peer: c.messages for c in store.contacts()} == {"bob": 10, "carol": 3}


def test_the_store_cap_takes_from_the_contact_holding_the_most(path, alice):
    with PrivateHistory(path, alice, Limits(max_rows=20)) as store:
        fill(store, "carol", 5, first=1000)
        fill(store, "dave", 5, first=2000)
        fill(store, "flooder", 50)
        counts = {c.peer: c.messages for c in store.contacts()}
        assert counts == {"carol": 5, "dave": 5, "flooder": 10}
        assert [e.text for e in store.conversation("flooder")] == [
            f"message {n}" for n in range(40, 50)]
        assert len(store.conversation("carol")) == 5


def test_a_contacts_byte_cap_counts_the_stored_texts(path, alice):
    big = "x" * 30_000  # two fit in the smallest cap allowed, three do not
    limits = Limits(max_bytes_per_contact=privatestore._LARGEST_ROW)
    with PrivateHistory(path, alice, limits) as store:
        for number in range(5):
            store.record("bob", "in", big + str(number), mid(number), when(number))
        assert [e.text[-1] for e in store.conversation("bob")] == ["3", "4"]


def test_the_stores_byte_cap_takes_from_the_contact_holding_the_most(path, alice):
    big = "x" * 30_000  # four fit in the store, five do not
    with PrivateHistory(path, alice, Limits(max_bytes=2 * privatestore._LARGEST_ROW)) as store:
        for number in range(2):
            store.record("carol", "in", big + str(number), mid(number), when(number))
        for number in range(10, 20):
            store.record("flooder", "in", big + str(number), mid(number), when(number))
        assert {c.peer: c.messages for c in store.contacts()} == {"carol": 2, "flooder": 2}
        assert [e.text[-2:] for e in store.conversation("flooder")] == ["18", "19"]


def test_caps_must_leave_room_for_a_message():
    with pytest.raises(ValueError):
        Limits(max_rows=0)
    with pytest.raises(ValueError):
        Limits(max_bytes_per_contact=1000)


# -- the client library, over real sockets ------------------------------------------------

def history_file(client) -> Path:
    return privatestore.history_path(client.data_dir, client.username)


@pytest.mark.timeout(60)
def test_private_history_survives_a_client_restart_and_stays_sealed(
        chat_server, client_factory, carol):
    from client import PrivateMessage

    alice = client_factory(chat_server, "alice")
    carl = client_factory(chat_server, "carl")
    alice.send_private("carl", SECRET)
    got = carl.recorder.wait_for(PrivateMessage)
    assert (got.text, got.outgoing) == (SECRET, False)
    alice.recorder.wait_for(lambda e: isinstance(e, PrivateMessage) and e.outgoing)
    carl.send_private("alice", "thanks")
    alice.recorder.wait_for(lambda e: isinstance(e, PrivateMessage) and not e.outgoing)
    carl.recorder.wait_for(lambda e: isinstance(e, PrivateMessage) and e.outgoing)

    assert [(e.direction, e.text) for e in alice.private_history.conversation("carl")] == [
        ("out", SECRET), ("in", "thanks")]
    carl.close()
    path = history_file(carl)
    assert SECRET.encode() not in file_bytes(path) and b"alice" not in file_bytes(path)

    again = client_factory(chat_server, "carl")  # a new ChatClient on the same data folder
    assert history_file(again) == path
    assert [(e.direction, e.text) for e in again.private_history.conversation("alice")] == [
        ("in", SECRET), ("out", "thanks")]
    assert [(c.peer, c.messages) for c in again.private_history.contacts()] == [("alice", 2)]
    again.close()
    # Keys 0 and 1 of the pool went to alice and carl: key 2 (carol) is someone else's.
    with pytest.raises(ForeignHistoryError, match="belongs to another identity"):
        PrivateHistory(path, carol)


@pytest.mark.timeout(60)
def test_a_message_that_waited_is_recorded_once_on_each_side(server_factory, client_factory):
    from client import Notice, PrivateMessage
    from hostile_net import wait_until

    chat = server_factory()
    alice = client_factory(chat, "alice")
    bob = client_factory(chat, "bob")  # registers bob's key, then goes away
    bob.close()
    wait_until(lambda: chat.state.member("bob") is None, what="bob went offline")
    alice.send_private("bob", "while you were away")
    alice.recorder.wait_for(lambda e: isinstance(e, Notice) and "waits on the server" in e.text)
    assert [(e.direction, e.text) for e in alice.private_history.conversation("bob")] == [
        ("out", "while you were away")]

    back = client_factory(chat, "bob")
    back.recorder.wait_for(PrivateMessage)
    wait_until(lambda: chat.users.mailbox_size() == (0, 0), what="the mailbox emptied")
    back.close()
    wait_until(lambda: chat.state.member("bob") is None, what="bob went offline")
    again = client_factory(chat, "bob")
    entries = again.private_history.conversation("alice")
    assert [(e.direction, e.text) for e in entries] == [("in", "while you were away")]


@pytest.mark.timeout(60)
def test_a_history_that_cannot_be_written_is_reported_and_the_message_still_shown(
        chat_server, client_factory):
    from client import ErrorEvent, PrivateMessage

    alice = client_factory(chat_server, "alice")
    bob = client_factory(chat_server, "bob")
    bob.private_history.close()  # as if the disk went away under it
    alice.send_private("bob", "still here")
    assert bob.recorder.wait_for(PrivateMessage).text == "still here"
    error = bob.recorder.wait_for(ErrorEvent)
    assert error.code == "private_history" and "could not be saved" in error.message


def test_a_foreign_history_stops_the_terminal_client_with_a_sentence(tmp_path, key_pool, bob):
    """No server is needed: the client refuses before it connects, and says why."""
    import subprocess
    import sys

    from conftest import ROOT, make_identity

    data_dir = tmp_path / "home"
    make_identity(data_dir, "ann", key_pool.get(0))
    with PrivateHistory(privatestore.history_path(data_dir, "ann"), bob):
        pass  # a history of someone else's identity where ann's belongs
    result = subprocess.run(
        [sys.executable, str(ROOT / "client.py"), "--username", "ann", "--data-dir",
         str(data_dir), "--port", "9"],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "GAPSHAPE_PASSPHRASE": ""})
    assert result.returncode == 1
    assert "cannot log in: this private history belongs to another identity" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_conversation_refuses_bad_cursors(history):
    for before in ("10", 1.5, True):
        with pytest.raises(ValueError):
            history.conversation("bob", before=before)
    with pytest.raises(ValueError):
        history.record("bob", "in", "t", mid(1), when(1), received_at="now")


@pytest.mark.timeout(60)
def test_replayed_and_forged_copies_never_reach_the_history(chat_server, client_factory,
                                                            proxies):
    """A malicious server delivers each private message twice more: once as it was (a
    replay) and once with its text altered. Bob refuses both, and his history holds each
    message once, as sent."""
    import copy
    import secrets

    from client import PrivateMessage, PrivateRejected

    def replay_and_forge(direction, frame):
        if direction == "down" and frame["type"] == "private":
            again, forged = copy.deepcopy(frame), copy.deepcopy(frame)
            again["id"] = frame["id"] + 1
            forged["id"] = frame["id"] + 2
            # A fresh id, so the replay guard lets it by and the signature check refuses it.
            forged["envelope"]["message_id"] = secrets.token_hex(16)
            forged["envelope"]["ciphertext"] = forged["envelope"]["ciphertext"][::-1]
            return [frame, again, forged]
        return [frame]

    bob = client_factory(proxies(chat_server, replay_and_forge), "bob")
    alice = client_factory(chat_server, "alice")
    for text in ("one", "two"):
        alice.send_private("bob", text)
        bob.recorder.wait_for(lambda e, t=text: isinstance(e, PrivateMessage) and e.text == t)
    events = bob.recorder.events  # read under the recorder's lock, in its predicate
    bob.recorder.wait_for(lambda _: sum(isinstance(e, PrivateRejected) for e in events) == 4)
    reasons = [e.reason for e in bob.recorder.of_type(PrivateRejected)]
    assert sum("replayed" in r for r in reasons) == 2, reasons
    assert [(e.direction, e.text) for e in bob.private_history.conversation("alice")] == [
        ("in", "one"), ("in", "two")]


def test_the_message_just_recorded_is_never_the_one_removed(path, alice):
    """At the store's cap, a new contact's first message (the biggest single message
    there is) pushes out the older small ones, never itself."""
    with PrivateHistory(path, alice, Limits(max_rows=3, max_bytes=privatestore._LARGEST_ROW)) as store:
        fill(store, "carol", 3)
        big = "x" * crypto.MAX_PLAINTEXT_BYTES
        assert store.record("dave", "in", big, mid(100), when(100), when(100))
        assert [e.text for e in store.conversation("dave")] == [big]
        assert store.record("erin", "in", "hi", mid(101), when(101), when(101))
        assert [e.text for e in store.conversation("erin")] == ["hi"]
        counts = {c.peer: c.messages for c in store.contacts()}
        assert counts["erin"] == 1 and sum(counts.values()) <= 3
