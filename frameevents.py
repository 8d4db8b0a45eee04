"""Events the client makes from one server frame alone: presence batches, users joining
and leaving a room, status changes, and the text of a private message's receipt.

Apart from `client` because these need nothing of a client's state (no conversation, no
pending message, no key): each is a plain function of the frame, tested on its own, and
`ChatClient`'s frame table only routes frames to them. Frames whose events depend on what
the client sent or follows (messages, joins, privates, listings) stay in client.py.
"""
from __future__ import annotations

import listings
import sanitize
from events import PresenceBatch, StatusChanged, UserJoined, UserLeft
from protocol import Frame

__all__ = [
    "PRESENCE_NAMES_KEPT", "presence_batch", "receipt_text", "status_changed", "user_joined",
    "user_left",
]

#: Names of a presence batch the client keeps: the server sends at most 10 of each kind, and
#: a hostile one cannot make a batch cost more than this.
PRESENCE_NAMES_KEPT = 50


def presence_batch(frame: Frame) -> PresenceBatch:
    """A `presence` frame: who joined and left a big room lately, and the counts."""
    joined = tuple(str(name) for name in frame.get("joined", [])[:PRESENCE_NAMES_KEPT])
    left = tuple((str(item["user"]), str(item.get("reason", "")))
                 for item in frame.get("left", [])[:PRESENCE_NAMES_KEPT])
    return PresenceBatch(str(frame["room"]), listings.count(frame.get("member_count"), 0),
                         joined, listings.count(frame.get("joined_count"), len(joined)),
                         left, listings.count(frame.get("left_count"), len(left)),
                         str(frame["time"]))


def user_joined(frame: Frame) -> UserJoined:
    return UserJoined(frame["room"], frame["user"], frame["status"], frame.get("note", ""),
                      frame["time"])


def user_left(frame: Frame) -> UserLeft:
    return UserLeft(frame["room"], frame["user"], frame.get("reason", ""), frame["time"])


def status_changed(frame: Frame) -> StatusChanged:
    return StatusChanged(frame["user"], frame["status"], frame.get("note", ""), frame["time"])


def receipt_text(frame: Frame) -> str:
    """What a `private_queued`, `private_delivered` or `private_expired` frame tells the
    sender about a private message that waited for its offline recipient."""
    to = sanitize.inert(str(frame.get("to", "")))
    kind = frame["type"]
    if kind == "private_queued":
        return (f"{to} is offline: your private message waits on the server (sealed) "
                "and will be delivered when they log in")
    if kind == "private_delivered":
        return f"your private message {frame.get('id')} to {to} was delivered"
    return (f"your private message {frame.get('id')} to {to} was NOT delivered: it "
            "waited longer than the server keeps messages")
