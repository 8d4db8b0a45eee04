"""conversations.py: the client's model of conversations, unread counts, mentions and the
gap at login. Pure logic, so plain calls (and Hypothesis for the invariants)."""
from __future__ import annotations

import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

import conversations as cv
from conversations import ConversationKey, Conversations, Gap, mentions_me

ROOM = ConversationKey.room
PRIV = ConversationKey.private


def say(model: Conversations, key: ConversationKey, text: str = "hi", *, sender: str = "bob",
        message_id: int | None = None, own: bool = False, history: bool = False) -> bool:
    return model.note(key, sender=sender, text=text, message_id=message_id, own=own,
                      history=history)


# -- keys ---------------------------------------------------------------------------------

def test_keys_normalize_rooms_and_keep_usernames_as_spelled() -> None:
    assert ROOM("Work") == ROOM("#work") == ConversationKey("room", "#work")
    assert ROOM("#Work").label == "#work"
    assert PRIV("Bob").label == "@Bob"
    assert PRIV("@Bob") == PRIV("Bob")
    assert ConversationKey.parse("#x") == ROOM("x")
    assert ConversationKey.parse("@bob") == ConversationKey.parse("bob") == PRIV("bob")


def test_keys_order_rooms_before_contacts() -> None:
    keys = [PRIV("amy"), ROOM("zed"), ROOM("abc"), PRIV("Zoe")]
    assert sorted(keys) == [ROOM("abc"), ROOM("zed"), PRIV("Zoe"), PRIV("amy")]


# -- mentions -----------------------------------------------------------------------------

@pytest.mark.parametrize("text", ["bob", "hi bob", "Bob: look", "@BOB!", "ask bob.", "(bob)",
                                  "hey @bob, there"])
def test_mentions(text: str) -> None:
    assert mentions_me("bob", text)


@pytest.mark.parametrize("text", ["bobby", "kebob", "bob.smith", "bob-2", "bob_x", "x@bob",
                                  "b o b", ""])
def test_not_mentions(text: str) -> None:
    assert not mentions_me("bob", text)


def test_mentions_a_name_with_dots_and_regex_characters() -> None:
    assert mentions_me("a.b", "hello a.b!")
    assert not mentions_me("a.b", "hello axb")
    assert not mentions_me("", "anything")


# -- unread -------------------------------------------------------------------------------

def test_unread_counts_other_conversations_only() -> None:
    model = Conversations("alice")
    model.open(ROOM("work"))
    say(model, ROOM("work"), message_id=1)  # current: seen
    say(model, ROOM("common"), message_id=2)
    say(model, ROOM("common"), message_id=3)
    say(model, PRIV("bob"), message_id=4)
    say(model, ROOM("common"), "mine", sender="alice", message_id=5, own=True)
    say(model, ROOM("common"), "old", message_id=1, history=True)
    assert model.unread(ROOM("work")) == 0
    assert model.unread(ROOM("common")) == 2
    assert model.unread(PRIV("bob")) == 1
    assert model.total_unread() == 3
    assert model.summaries()[0] == cv.Summary(ROOM("common"), 2, 0, 5, None)


def test_mention_counted_and_returned() -> None:
    model = Conversations("alice")
    model.open(ROOM("work"))
    assert say(model, ROOM("common"), "alice: ping")
    assert not say(model, ROOM("common"), "nothing")
    assert say(model, ROOM("work"), "hi @alice")  # returned, but current: not counted
    assert not say(model, ROOM("common"), "alice", own=True)
    assert model.mentions(ROOM("common")) == 1
    assert model.mentions(ROOM("work")) == 0
    assert model.unread(ROOM("common")) == 2


def test_open_clears_and_close_forgets() -> None:
    model = Conversations("alice")
    say(model, PRIV("Bob"), "alice?")
    assert model.open(PRIV("bob")) == PRIV("Bob")  # the spelling first seen is kept
    assert model.current == PRIV("Bob")
    assert (model.unread(PRIV("bob")), model.mentions(PRIV("bob"))) == (0, 0)
    model.close(PRIV("BOB"))
    assert model.current is None
    assert model.summaries() == []


def test_current_can_be_set() -> None:
    model = Conversations("alice")
    say(model, ROOM("x"))
    model.current = ROOM("x")
    assert model.unread(ROOM("x")) == 0
    model.current = None
    say(model, ROOM("x"))
    assert model.unread(ROOM("x")) == 1


def test_summaries_rooms_first_sorted() -> None:
    model = Conversations("alice")
    for key in (PRIV("zoe"), ROOM("b"), PRIV("Amy"), ROOM("a")):
        say(model, key)
    assert [s.key.label for s in model.summaries()] == ["#a", "#b", "@Amy", "@zoe"]


# -- login: unread after last_seen, and the gap ---------------------------------------------

def test_joined_counts_history_after_last_seen() -> None:
    model = Conversations("alice")
    gap = model.joined("#common", last_seen=5, history_ids=[3, 4, 6, 9], newest_id=9,
                       mention_ids=[4, 9])
    assert gap is None  # fewer than 10: that is all the room has
    assert model.unread(ROOM("common")) == 2
    assert model.mentions(ROOM("common")) == 1
    assert model.summaries()[0].last_id == 9


def test_joined_gap_when_all_history_is_new() -> None:
    model = Conversations("alice")
    ids = list(range(60, 70))
    gap = model.joined("#common", last_seen=2, history_ids=ids, newest_id=69)
    assert gap == Gap("#common", 2, 60)
    assert gap.at_most == 57
    assert model.gap("#common") == gap
    assert model.summaries()[0].gap == gap
    # a /history page narrows it, then one that reaches last_seen closes it
    assert model.history_loaded("#common", list(range(30, 60)), more=True) == Gap("#common", 2, 30)
    assert model.history_loaded("#common", [3, 10], more=True) is None
    assert model.gap("#common") is None


def test_no_gap_without_last_seen_or_when_history_reaches_it() -> None:
    model = Conversations("alice")
    assert model.joined("#a", last_seen=None, history_ids=list(range(1, 11)), newest_id=10) is None
    assert model.unread(ROOM("a")) == 0
    assert model.joined("#b", last_seen=4, history_ids=list(range(5, 15)), newest_id=14) is None
    assert model.unread(ROOM("b")) == 10


def test_joined_current_room_counts_nothing_but_shows_gap() -> None:
    model = Conversations("alice")
    model.open(ROOM("work"))
    gap = model.joined("#work", last_seen=0, history_ids=list(range(20, 30)), newest_id=29)
    assert gap == Gap("#work", 0, 20)
    assert model.unread(ROOM("work")) == 0


def test_history_end_closes_the_gap() -> None:
    model = Conversations("alice")
    model.joined("#a", last_seen=1, history_ids=list(range(50, 60)), newest_id=59)
    assert model.history_loaded("#a", [40, 45], more=False) is None


# -- bounds -------------------------------------------------------------------------------

def test_contacts_are_bounded_and_the_current_one_stays() -> None:
    model = Conversations("alice")
    model.open(PRIV("first"))
    for n in range(cv.CONTACT_CAP + 50):
        say(model, PRIV(f"u{n}"))
    contacts = [s.key for s in model.summaries() if not s.key.is_room]
    assert len(contacts) == cv.CONTACT_CAP
    assert PRIV("first") in contacts
    assert PRIV(f"u{cv.CONTACT_CAP + 49}") in contacts
    assert PRIV("u0") not in contacts  # least recently active goes first


def test_rooms_are_bounded() -> None:
    model = Conversations("alice")
    for n in range(cv.ROOM_CAP + 5):
        model.joined(f"#r{n}", last_seen=None, history_ids=[], newest_id=None)
    assert len(model.summaries()) == cv.ROOM_CAP


def test_threads_do_not_lose_counts() -> None:
    model = Conversations("alice")

    def writer(name: str) -> None:
        for _ in range(500):
            say(model, ROOM(name))

    threads = [threading.Thread(target=writer, args=(f"r{n}",)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert model.total_unread() == 2000


# -- invariants ---------------------------------------------------------------------------

_events = st.lists(st.tuples(
    st.sampled_from(["note", "open", "close"]),
    st.sampled_from([ROOM("a"), ROOM("b"), PRIV("bob"), PRIV("Bob"), PRIV("carol")]),
    st.booleans(), st.booleans(), st.sampled_from(["hi", "alice!", "@ALICE", "alicex"])),
    max_size=60)


@given(_events)
def test_counts_match_a_simple_replay(events: list[tuple[str, ConversationKey, bool, bool, str]]) -> None:
    """unread == messages since the conversation was last current, not own, not history;
    mentions likewise; the current one is always at zero."""
    model = Conversations("alice")
    expected: dict[tuple[str, str], list[int]] = {}
    current: tuple[str, str] | None = None
    for action, key, own, history, text in events:
        folded = key.folded
        if action == "open":
            model.open(key)
            expected[folded] = [0, 0]
            current = folded
        elif action == "close":
            model.close(key)
            expected.pop(folded, None)
            current = None if current == folded else current
        else:
            mention = say(model, key, text, own=own, history=history)
            assert mention == (not own and text in ("alice!", "@ALICE"))
            counts = expected.setdefault(folded, [0, 0])
            if not own and not history and folded != current:
                counts[0] += 1
                counts[1] += mention
        assert model.current is None or model.unread(model.current) == 0
    for summary in model.summaries():
        assert [summary.unread, summary.mentions] == expected[summary.key.folded]
    assert model.total_unread() == sum(u for u, _ in expected.values())
    assert len(model.summaries()) == len(expected)
