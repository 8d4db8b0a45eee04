"""One chat across several server processes: the state each node keeps (`server.py --redis`).

Every node holds a *replica* of the whole cluster's presence in an ordinary
`rooms.ChatState`: its own users are members with their real connection as outbox, the
other nodes' users are members whose outbox is a `RemoteOutbox` (it drops what is pushed
to it: their own node delivers to them). Every operation that changes the chat (a login,
a join, a room message, a status, a private message...) is not carried out where it is
asked for: it becomes an *op*, appended to one Redis stream (clusterlink.py), and every
node, the asking one included, applies the ops in the stream's order by calling the very
ChatState method a single server would call. So:

- every member hears each room message, join, leave and status once, from their own
  node, and all members of all nodes hear them in the stream's one order;
- a message id is allocated by the same Redis script that appends the op (INCR, then
  XADD), so ids increase in stream order cluster-wide, and every node writes every message
  to its own messageslog.json in that order: each node's log is the cluster's whole log;
- `/list`, `/users`, `/rooms`, DND and "is this name online" read the replica, which
  holds everyone.

Only the node an op came from (its *origin*) does what must happen once: the writes to
the shared member store (rooms, last seen, mailbox, receipts) and the replies to its
client. While another node's op is applied, `ReplicaStore` answers reads from the op
itself and ignores writes, and `ReplicaJournal` hands out the op's id; the clock gives the
op's time, so every node logs and sends the same time. A request's caller waits until its
own op has been applied, so errors (DND, not in that room...) come back as usual.
"""
from __future__ import annotations

import base64
import contextlib
import logging
import secrets
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence, cast

from errors import ClusterUnavailable, DoNotDisturb, GapshapeError, RequestError
from rooms import (
    COMMON_ROOM,
    ChatState,
    Journal,
    Member,
    MemberStore,
    normalize_room,
    normalize_status,
    utc_now,
    validate_name,
)

if TYPE_CHECKING:
    from clusterlink import RedisLink

log = logging.getLogger("gapshape.cluster")

Op = dict[str, Any]


class ClusterStartError(Exception):
    """The node cannot join its cluster (a bad URL, Redis not reachable at start-up)."""


UNAVAILABLE = ("the chat cluster's shared Redis is not reachable right now, so this cannot be "
               "done correctly; try again in a moment")


@dataclass(eq=False, slots=True)
class RemoteOutbox:
    """The outbox of a user connected to another node: what is pushed here is dropped,
    because that node applies the same op and pushes the frame to the real connection."""

    node: str
    sid: str  # the session: a later login under the same name is another one

    def push(self, data: bytes, urgent: bool = True) -> None:
        pass

    def flush(self) -> None:  # session.py closes a replaced session's outbox like this
        pass

    def abort(self, reason: str) -> None:
        pass


class _Applying(threading.local):
    """The op being applied on this thread, if any, and whether it came from this node."""

    op: Op | None = None
    origin: bool = True


@dataclass(frozen=True, slots=True)
class Removed:
    """A waiting private message the recipient's node took out of the mailbox."""

    id: int
    sender: str


class ReplicaStore:
    """The member store as the chat state sees it: the real one while this node works for
    its own users; while another node's op is applied, reads come from the op and writes
    are that node's business (the store is shared, one write is enough)."""

    def __init__(self, store: MemberStore, ctx: _Applying) -> None:
        self.store = store
        self._ctx = ctx

    def _foreign(self) -> Op | None:
        return self._ctx.op if not self._ctx.origin else None

    def known(self, user: str) -> bool:
        return True if self._foreign() is not None else self.store.known(user)

    def rooms(self, user: str) -> list[str]:
        op = self._foreign()
        return list(op.get("rooms", [])) if op is not None else self.store.rooms(user)

    def add_room(self, user: str, room: str) -> None:
        if self._foreign() is None:
            self.store.add_room(user, room)

    def remove_room(self, user: str, room: str) -> None:
        if self._foreign() is None:
            self.store.remove_room(user, room)

    def last_seen(self, user: str) -> int | None:
        return None if self._foreign() is not None else self.store.last_seen(user)

    def set_last_seen(self, user: str, message_id: int) -> None:
        if self._foreign() is None:
            self.store.set_last_seen(user, message_id)

    def enqueue(self, recipient: str, sender: str, message_id: int, frame: bytes) -> None:
        if self._foreign() is None:
            self.store.enqueue(recipient, sender, message_id, frame)

    def waiting(self, recipient: str) -> list[Any]:
        return [] if self._foreign() is not None else self.store.waiting(recipient)

    def remove(self, recipient: str, ids: list[int]) -> list[Any]:
        # The recipient's node removed them before its op (so that only it can): every
        # node, that one included, takes the list from the op.
        op = self._ctx.op
        if op is not None and "removed" in op:
            return [Removed(int(i), str(s)) for i, s in op["removed"]]
        return self.store.remove(recipient, ids)

    def expire(self) -> list[tuple[int, str, str]]:
        return [] if self._foreign() is not None else self.store.expire()

    def keep_receipt(self, sender: str, frame: bytes) -> None:
        if self._foreign() is None:
            self.store.keep_receipt(sender, frame)

    def take_receipts(self, sender: str) -> list[bytes]:
        return [] if self._foreign() is not None else self.store.take_receipts(sender)


class ReplicaJournal:
    """The node's message log, whose ids come from the op being applied (Redis's INCR)."""

    def __init__(self, journal: Journal, ctx: _Applying) -> None:
        self.journal = journal
        self._ctx = ctx

    @property
    def next_id(self) -> int:
        return self.journal.next_id

    def allocate_id(self) -> int:
        op = self._ctx.op
        if op is None or not op.get("id"):
            raise RuntimeError("a cluster node allocates ids only in Redis")
        return int(op["id"])

    def append(self, record: dict[str, Any], line: bytes | None = None) -> None:
        self.journal.append(record, line)

    def history(self, room: str) -> list[dict[str, Any]]:
        return self.journal.history(room)

    def history_before(self, room: str, before_id: int | None = None,
                       limit: int = 100) -> list[dict[str, Any]]:
        return self.journal.history_before(room, before_id, limit)

    def rooms(self, *, after: str | None = None, limit: int | None = None) -> list[str]:
        return self.journal.rooms(after=after, limit=limit)


class ClusterChat(ChatState):
    """A ChatState whose changes go through the cluster's op stream (module docstring).

    The request methods (login, join, post...) run on connection threads: they check what
    they can, submit an op and wait for it to be applied here. `apply` runs on the link's
    reader thread, the only thread that changes the replica."""

    def __init__(self, link: RedisLink, journal: Journal, store: MemberStore,
                 **options: Any) -> None:
        self._ctx = _Applying()
        super().__init__(ReplicaJournal(journal, self._ctx), ReplicaStore(store, self._ctx),
                         clock=self._op_clock, **options)
        self.link = link
        self.node_id = link.node_id
        self._sids: dict[Member, str] = {}  # this node's members -> their session ids
        self._appliers: dict[str, Callable[[Op, dict[str, Any] | None], Any]] = {
            "login": self._apply_login, "logout": self._apply_logout,
            "join": self._apply_join, "leave": self._apply_leave,
            "message": self._apply_message, "status": self._apply_status,
            "private": self._apply_private, "ack": self._apply_ack,
            "node_sync": self._apply_node_sync,
        }

    # -- requests (connection threads) ----------------------------------------------------

    def login(self, name: str, outbox: Any, *, public_der: bytes = b"",
              address: str = "", take_over: bool = False) -> tuple[Member, Member | None]:
        validate_name(name)
        self.link.require()
        store = cast(ReplicaStore, self.store).store
        rooms = store.rooms(name) if store.known(name) else [COMMON_ROOM]
        op = {"op": "login", "user": name, "sid": secrets.token_hex(8), "rooms": rooms,
              "key": base64.b64encode(public_der).decode(), "address": address}
        result = self.link.submit(op, local={"outbox": outbox, "take_over": take_over})
        return cast("tuple[Member, Member | None]", result)

    def logout(self, member: Member, reason: str) -> None:
        sid = self._sids.get(member)
        if sid is not None and self.link.available:
            try:
                self.link.submit({"op": "logout", "user": member.name, "sid": sid,
                                  "reason": reason})
                return
            except (ClusterUnavailable, RequestError):
                pass  # Redis went away meanwhile: leave here at least
        # Redis is away: the user leaves this node now; the others learn it from this
        # node's resynchronisation when Redis is back (or from its heartbeat's end).
        with self._applying({"op": "logout", "node": ""}):  # no store writes: Redis is away
            ChatState.logout(self, member, reason)
        if self._sids.pop(member, None) is not None:
            self.link.forget_presence(member.name)

    def join(self, member: Member, room_name: str) -> None:
        self._submit_for(member, {"op": "join", "room": normalize_room(room_name)})

    def leave(self, member: Member, room_name: str | None = None) -> None:
        room = self._current(member) if room_name is None else normalize_room(room_name)
        self._submit_for(member, {"op": "leave", "room": room})

    def post(self, member: Member, text: str, ref: str | None = None,
             room_name: str | None = None) -> int:
        room = self.room_to_post(member, text, room_name)
        with self.lock:
            if room not in member.rooms:
                raise RequestError(f"you are not in {room}; join it first")
        op = {"op": "message", "room": room, "text": text, "ref": ref}
        return int(self._submit_for(member, op, numbered=True))

    def post_run(self, member: Member, room: str,
                 messages: Sequence[tuple[str, str | None]]) -> list[tuple[int, GapshapeError]]:
        """One by one: each message is its own operation on the cluster's stream, and any
        of them may fail on its own."""
        refused: list[tuple[int, GapshapeError]] = []
        for index, (text, ref) in enumerate(messages):
            try:
                self.post(member, text, ref, room)
            except GapshapeError as error:
                refused.append((index, error))
        return refused

    def set_status(self, member: Member, status_word: str, note: str | None = None) -> None:
        self._submit_for(member, {"op": "status", "status": normalize_status(status_word),
                                  "note": note or ""})

    def send_private(self, sender: Member, to: str, envelope: dict[str, Any],
                     ref: str | None = None) -> int:
        online = self.member(to)
        if online is not None and online.status == "dnd":  # refused before it costs an id
            raise DoNotDisturb(f"{online.name} does not want to be disturbed right now")
        op = {"op": "private", "to": to, "envelope": envelope, "ref": ref}
        return int(self._submit_for(sender, op, numbered=True))

    def acknowledge(self, member: Member, ids: list[int]) -> None:
        self.link.require()
        store = cast(ReplicaStore, self.store).store
        removed = [[queued.id, queued.sender] for queued in store.remove(member.name, ids)]
        if removed:
            self._submit_for(member, {"op": "ack", "ids": ids, "removed": removed})

    def _submit_for(self, member: Member, op: Op, *, numbered: bool = False) -> Any:
        sid = self._sids.get(member)
        if sid is None:
            raise RequestError("this session has ended (logged in elsewhere)")
        op.update(user=member.name, sid=sid)
        return self.link.submit(op, numbered=numbered)

    # -- applying ops (the link's reader thread) -------------------------------------------

    def apply(self, op: Op, local: dict[str, Any] | None) -> Any:
        """Carry out one op from the stream; `local` holds what only its origin has (the
        connection of a login). Raises what the same request raises on a single server."""
        applier = self._appliers.get(str(op.get("op")))
        if applier is None:
            log.debug("ignoring unknown cluster op %r", op.get("op"))
            return None
        with self._applying(op):
            return applier(op, local)

    @contextlib.contextmanager
    def _applying(self, op: Op) -> Iterator[None]:
        ctx = self._ctx
        saved = ctx.op, ctx.origin
        ctx.op, ctx.origin = op, op.get("node") == self.node_id
        try:
            yield
        finally:
            ctx.op, ctx.origin = saved

    def _op_clock(self) -> str:
        op = self._ctx.op
        return str(op["time"]) if op is not None and "time" in op else utc_now()

    def _sid_of(self, member: Member) -> str | None:
        if isinstance(member.outbox, RemoteOutbox):
            return member.outbox.sid
        return self._sids.get(member)

    def _resolve(self, op: Op) -> Member | None:
        """The online session an op is about (None: it has ended since)."""
        member = self.member(str(op.get("user", "")))
        if member is None or self._sid_of(member) != op.get("sid"):
            return None
        return member

    def _apply_login(self, op: Op, local: dict[str, Any] | None) -> Any:
        ours = op["node"] == self.node_id
        if ours and local is None:
            return None  # our own login whose caller gave up waiting: it never started
        existing = self.member(op["user"])
        if existing is not None and self._sid_of(existing) == op["sid"]:
            return existing, None  # already known (a resynchronisation came first)
        outbox = local["outbox"] if local is not None else RemoteOutbox(op["node"], op["sid"])
        member, replaced = ChatState.login(
            self, op["user"], outbox, public_der=base64.b64decode(op.get("key", "")),
            address=str(op.get("address", "")), take_over=True)
        if ours:
            self._sids[member] = op["sid"]
        if replaced is not None:
            self._end_replaced(replaced, by_us=ours)
        if ours:
            self.link.write_presence(self._presence(member))
        return member, replaced

    def _end_replaced(self, replaced: Member, *, by_us: bool) -> None:
        """A login elsewhere took over one of our sessions: close its connection (a login
        here hands the old one back to its caller, session.py, which does the same)."""
        if self._sids.pop(replaced, None) is None:
            return
        if not by_us:
            self.link.forget_presence(replaced.name)
            outbox = cast(Any, replaced.outbox)
            outbox.flush()
            outbox.abort("logged in elsewhere")

    def _apply_logout(self, op: Op, local: dict[str, Any] | None) -> None:
        member = self._resolve(op)
        if member is None:
            return
        ChatState.logout(self, member, str(op.get("reason", "disconnected")))
        if self._sids.pop(member, None) is not None:
            self.link.forget_presence(member.name)

    def _apply_join(self, op: Op, local: dict[str, Any] | None) -> None:
        member = self._resolve(op)
        if member is not None:
            ChatState.join(self, member, op["room"])
            self._note_presence(member)

    def _apply_leave(self, op: Op, local: dict[str, Any] | None) -> None:
        member = self._resolve(op)
        if member is not None:
            ChatState.leave(self, member, op["room"])
            self._note_presence(member)

    def _apply_status(self, op: Op, local: dict[str, Any] | None) -> None:
        member = self._resolve(op)
        if member is not None:
            ChatState.set_status(self, member, op["status"], op.get("note"))
            self._note_presence(member)

    def _apply_message(self, op: Op, local: dict[str, Any] | None) -> int:
        member = self._resolve(op)
        if member is not None and op["room"] in member.rooms:
            return ChatState.post(self, member, op["text"], op.get("ref"), op["room"])
        if op["node"] == self.node_id:
            raise RequestError("this session has ended (logged in elsewhere)")
        # Our replica has lost the sender (a resynchronisation is on its way): the message
        # was sent all the same, so it is logged and delivered here too.
        self._deliver_orphan(op)
        return int(op["id"])

    def _deliver_orphan(self, op: Op) -> None:
        record = {"event": "message", "time": op["time"], "id": int(op["id"]),
                  "room": op["room"], "user": op["user"], "text": op["text"]}
        with self.lock:
            self.journal.append(record)
            frame = {"type": "message", **{k: v for k, v in record.items() if k != "event"}}
            self._broadcast(op["room"], frame)

    def _apply_private(self, op: Op, local: dict[str, Any] | None) -> int | None:
        sender = self._resolve(op)
        if sender is None:
            if op["node"] == self.node_id:
                raise RequestError("this session has ended (logged in elsewhere)")
            return None
        return ChatState.send_private(self, sender, op["to"], op["envelope"], op.get("ref"))

    def _apply_ack(self, op: Op, local: dict[str, Any] | None) -> None:
        member = self._resolve(op)
        if member is not None:
            ChatState.acknowledge(self, member, [int(i) for i, _ in op["removed"]])

    def _apply_node_sync(self, op: Op, local: dict[str, Any] | None) -> None:
        if op["node"] != self.node_id:
            self.sync_node(op["node"], list(op.get("users", [])))

    # -- presence of whole nodes ----------------------------------------------------------

    def sync_node(self, node: str, users: list[dict[str, Any]]) -> None:
        """Make the replica hold exactly `users` (presence entries) for another node: its
        users that are gone leave, those that are new arrive, rooms and status follow."""
        with self._applying({"op": "node_sync", "node": node, "time": utc_now()}):
            wanted = {str(entry["sid"]): entry for entry in users}
            for member in self.remote_members(node):
                if self._sid_of(member) not in wanted:
                    ChatState.logout(self, member, "disconnected")
            for entry in users:
                self._sync_user(node, entry)

    def _sync_user(self, node: str, entry: dict[str, Any]) -> None:
        existing = self.member(str(entry["user"]))
        if existing is not None and not isinstance(existing.outbox, RemoteOutbox):
            return  # online here too: the stream's login ops say who took over whom
        rooms = [str(room) for room in entry.get("rooms", [])]
        if existing is None or self._sid_of(existing) != entry["sid"]:
            login = {**entry, "op": "login", "node": node, "rooms": rooms,
                     "time": self._op_clock()}
            with self._applying(login):
                self._apply_login(login, None)
            existing = self.member(str(entry["user"]))
            if existing is None:
                return
        for room in rooms:
            if room not in existing.rooms:
                ChatState.join(self, existing, room)
        for room in [room for room in existing.rooms if room not in rooms]:
            ChatState.leave(self, existing, room)
        status, note = str(entry.get("status", "online")), str(entry.get("note", ""))
        if (existing.status, existing.note) != (status, note):
            ChatState.set_status(self, existing, status, note)

    def remote_members(self, node: str | None = None) -> list[Member]:
        """The members connected to `node` (any other node if None)."""
        with self.lock:
            members = list(self._members.values())
        return [m for m in members if isinstance(m.outbox, RemoteOutbox)
                and (node is None or m.outbox.node == node)]

    def remote_nodes(self) -> set[str]:
        return {cast(RemoteOutbox, m.outbox).node for m in self.remote_members()}

    def local_presence(self) -> list[dict[str, Any]]:
        """What the other nodes should know of each of our users (clusterlink keeps it in
        this node's presence hash and sends it in a node_sync)."""
        return [self._presence(member) for member in list(self._sids)]

    def _presence(self, member: Member) -> dict[str, Any]:
        return {"user": member.name, "sid": self._sids.get(member, ""),
                "rooms": list(member.rooms), "room": member.room, "status": member.status,
                "note": member.note, "key": base64.b64encode(member.public_der).decode(),
                "address": member.address}

    def _note_presence(self, member: Member) -> None:
        if member in self._sids:
            self.link.write_presence(self._presence(member))
