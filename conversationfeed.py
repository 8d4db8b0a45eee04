"""What the client's reader thread tells its conversations: each message shown is counted
in its room or private conversation, and an `UnreadChanged` event goes out whenever the
counts, a gap or the current conversation changed.

Apart from `client` because it is the one bridge between the frames (client.py) and the
unread bookkeeping (conversations.py), with its own small state, the last summary sent
and the lock that keeps summaries in order; it knows no sockets and no keys.
"""
from __future__ import annotations

import threading
from typing import Callable

from conversations import ConversationKey, Conversations
from events import Event, PrivateMessage, RoomMessage, UnreadChanged

__all__ = ["ConversationFeed"]


class ConversationFeed:
    """Feeds `conversations` with the messages shown and emits `UnreadChanged`."""

    def __init__(self, conversations: Conversations, emit: Callable[[Event], None],
                 username: Callable[[], str]) -> None:
        self.conversations = conversations
        self._emit = emit
        self._username = username  # ours as the server spells it, read when needed
        self._last_unread: object = None  # what the last UnreadChanged said
        self._unread_lock = threading.RLock()

    def shown(self, event: RoomMessage | PrivateMessage) -> None:
        """Emit a message as it arrives, then count it in its conversation."""
        self._emit(event)
        if isinstance(event, RoomMessage):
            key, sender, own = ConversationKey.room(event.room), event.user, event.own
        else:
            key, own = ConversationKey.private(event.peer), event.outgoing
            sender = self._username() if own else event.peer
        self.conversations.note(key, sender=sender, text=event.text, message_id=event.id or None,
                                own=own, history=False)
        self.changed()

    def changed(self) -> None:
        """Emit UnreadChanged if a count, a gap or the current conversation changed."""
        with self._unread_lock:  # held while emitting, so no older state overtakes a newer
            summaries = tuple(self.conversations.summaries())
            current = self.conversations.current
            state = (current, [(s.key, s.unread, s.mentions, s.gap) for s in summaries])
            if state != self._last_unread:
                self._last_unread = state
                self._emit(UnreadChanged(summaries, current))
