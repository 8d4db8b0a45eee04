"""Load generator for bench/run.py: thousands of chat clients in a few processes, no threads.

`LoadGen(processes)` starts worker processes; each runs one epoll loop over its share of
client sockets (non-blocking) plus the pipe it takes commands from, and keeps reading every
socket at all times, so no server ever sees a client stop reading. The parent sends a
command to workers and waits for their replies; timed phases use absolute times on the
system-wide monotonic clock (CLOCK_MONOTONIC on Linux), which every process shares, so
workers start and stop together and a latency is `receive time - send time` even when
sender and receiver live in different workers.

Two dialects, one load generator:
- "gapshape": the real login (hello, challenge, auth signed with the bench key, then a
  join of the bench room), pipelined; the client is ready when it gets `joined` for the
  room. Room messages are sent as {"type":"message","text":...}.
- "relay": bench/relay.py; no login, the client is ready on the relay's `ready` frame;
  messages are sent as the same JSON body, which the relay passes on unread.
In both, a delivered room message is a frame whose body starts with {"type":"message"
and whose "text" is `tag|send_time_ns|padding`, padded so that the delivered frame is
FRAME_BYTES long (4-byte header included) in both dialects.

Hot path: a ready client walks the length headers of what it received and counts room
messages by their first bytes; it decodes nothing unless the phase needs the text (a
latency sample, a fan-out mark, a sender's own echo). Linux only (epoll, /proc).
"""
from __future__ import annotations

import array
import base64
import errno
import json
import multiprocessing
import os
import select
import socket
import struct
import sys
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import auth  # noqa: E402
from protocol import PROTOCOL_VERSION, encode_frame  # noqa: E402

FRAME_BYTES = 190  # a delivered room message, header included, in both dialects
RECV_SIZE = 256 * 1024
HEADER = struct.Struct(">I")
MSG_PREFIX = b'{"type":"message"'
PING_PREFIX = b'{"type":"ping"'
TEXT_KEY = b'"text":"'
GAPSHAPE, RELAY, IRC = "gapshape", "relay", "irc"
IRC_MSG_MARK = b" PRIVMSG "  # a delivered IRC room message: ":nick!user@host PRIVMSG #room :text"

# Client states
CONNECTING, LOGGING_IN, READY, CLOSED = range(4)

_EPOLLIN = select.EPOLLIN | select.EPOLLERR | select.EPOLLHUP
_EPOLLOUT = select.EPOLLOUT


class BenchError(Exception):
    """A benchmark run went wrong (a refused login, a dropped client, a timeout)."""


def raise_nofile_limit() -> int:
    """Lift RLIMIT_NOFILE to the hard limit; return the soft limit now in force."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


def text_length(dialect: str, room: str) -> int:
    """Characters of text that make a delivered room message FRAME_BYTES long."""
    if dialect == RELAY:
        empty = encode_frame({"type": "message", "text": ""})
    elif dialect == IRC:  # ngircd: no DNS or ident lookups, so the host is the address
        return FRAME_BYTES - len(f":w0c00000!~w0c00000@127.0.0.1 PRIVMSG {room} :\r\n")
    else:  # the server adds id, room, user and time; ids have 5-6 digits in a run
        empty = encode_frame({"type": "message", "id": 123456, "room": room, "user": "w0c00000",
                              "text": "", "time": "2026-01-01T00:00:00.000Z"})
    return FRAME_BYTES - len(empty)


def make_text(tag: str, send_ns: int, length: int) -> str:
    head = f"{tag}|{send_ns}|"
    return head + "x" * max(0, length - len(head))


class Signer:
    """Signs login proofs with the bench key: OpenSSL through `cryptography` when it is
    installed (about 0.7 ms for RSA-3072), else pycryptodome (about 5 ms), as client.py."""

    def __init__(self, private_der: bytes) -> None:
        self._sign: Callable[[bytes, str, str], bytes]
        try:
            from cryptography.hazmat.primitives import hashes, serialization
            from cryptography.hazmat.primitives.asymmetric import padding
        except ImportError:
            from Crypto.PublicKey import RSA

            key = RSA.import_key(private_der)
            self._sign = lambda nonce, user, server: auth.sign_login(key, nonce, user, server)
            return
        key = serialization.load_der_private_key(private_der, password=None)
        pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=auth.PSS_SALT_BYTES)

        def sign(nonce: bytes, user: str, server: str) -> bytes:
            return key.sign(auth.login_message(nonce, user, server), pss, hashes.SHA256())

        self._sign = sign

    def __call__(self, nonce: bytes, username: str, server_id: str) -> bytes:
        return self._sign(nonce, username, server_id)


# ---------------------------------------------------------------------------------------
# The worker side: one process, one epoll loop


class Client:
    """One chat connection inside a worker."""

    __slots__ = ("worker", "sock", "fd", "name", "room", "state", "rest", "out", "events",
                 "sender", "tag", "outstanding", "sent", "due", "seq", "error")

    def __init__(self, worker: Worker, name: str) -> None:
        self.worker = worker
        self.name = name
        self.room = worker.room  # the room it joins (and, in the soak, talks in)
        self.sock: socket.socket | None = None
        self.fd = -1
        self.state = CONNECTING
        self.rest = b""
        self.out = b""
        self.events = 0
        self.sender = False
        self.tag = b""
        self.outstanding = 0
        self.sent = 0
        self.due = 0.0
        self.seq = 0
        self.error = ""

    # -- socket events --------------------------------------------------------------------

    def start(self, address: tuple[str, int]) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        code = sock.connect_ex(address)
        if code not in (0, errno.EINPROGRESS):
            sock.close()
            self.fail(f"connect failed: {os.strerror(code)}")
            return
        self.sock, self.fd = sock, sock.fileno()
        self.worker.register(self, _EPOLLIN | _EPOLLOUT)

    def connected(self) -> bool:
        """The non-blocking connect finished: say hello (Gapshape). False if it failed."""
        code = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code:
            self.fail(f"connect failed: {os.strerror(code)}")
            return False
        self.state = LOGGING_IN
        if self.worker.dialect == IRC:
            self.send(f"NICK {self.name}\r\nUSER {self.name} 0 * :{self.name}\r\n".encode())
        elif self.worker.dialect == GAPSHAPE:
            self.send(encode_frame({"type": "hello", "version": PROTOCOL_VERSION,
                                    "username": self.name,
                                    "public_key": self.worker.public_b64}))
        return True

    def writable(self) -> None:
        if self.state == CONNECTING and not self.connected():
            return
        if self.out:
            data, self.out = self.out, b""
            self.send(data)
        elif self.events & _EPOLLOUT:
            self.worker.modify(self, _EPOLLIN)

    def send(self, data: bytes) -> None:
        if self.state == CLOSED:
            return
        if self.out:
            self.out += data
            return
        try:
            sent = self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            self.fail(f"send failed: {exc}")
            return
        if sent < len(data):
            self.out = data[sent:]
            if not self.events & _EPOLLOUT:
                self.worker.modify(self, _EPOLLIN | _EPOLLOUT)
        elif self.events & _EPOLLOUT and self.state != CONNECTING:
            self.worker.modify(self, _EPOLLIN)

    def readable(self) -> None:
        if self.state == CONNECTING and not self.connected():
            return
        try:
            data = self.sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.fail(f"receive failed: {exc}")
            return
        if not data:
            self.fail("the server closed the connection")
            return
        worker = self.worker
        worker.last_data = time.monotonic()
        if worker.dialect == IRC:
            self.irc_lines(data)
            return
        buf = self.rest + data if self.rest else data
        end = len(buf)
        pos = 0
        parse = worker.parse_all or self.sender
        now_ns = time.monotonic_ns() if parse else 0
        unpack = HEADER.unpack_from
        count = 0
        while end - pos >= 4:
            body = pos + 4
            stop = body + unpack(buf, pos)[0]
            if stop > end:
                break
            if buf.startswith(MSG_PREFIX, body):
                count += 1
                if parse:
                    worker.on_message(self, buf, body, stop, now_ns)
            elif buf.startswith(PING_PREFIX, body):
                self.pong(buf[body:stop])
            elif self.state == LOGGING_IN:
                self.on_control(buf[body:stop])
            pos = stop
        self.rest = buf[pos:] if pos < end else b""
        self.counted(count)

    def counted(self, count: int) -> None:
        """Add the messages one read brought to its worker's tally (a sender's apart)."""
        if count:
            if self.sender:
                self.worker.sender_messages += count
            else:
                self.worker.messages += count

    def irc_lines(self, data: bytes) -> None:
        """The IRC dialect (ngircd): lines, not frames; the same counting and parsing."""
        worker = self.worker
        buf = self.rest + data if self.rest else data
        end = len(buf)
        pos = 0
        parse = worker.parse_all or self.sender or self is worker.witness
        now_ns = time.monotonic_ns() if parse else 0
        count = 0
        while True:
            stop = buf.find(b"\n", pos)
            if stop < 0:
                break
            mark = buf.find(IRC_MSG_MARK, pos, stop)
            if mark > 0 and buf[pos:pos + 1] == b":":
                count += 1
                if parse:
                    colon = buf.find(b" :", mark + len(IRC_MSG_MARK), stop)
                    if colon > 0:
                        worker.on_text(self, buf, colon + 2, stop, now_ns)
            elif buf.startswith(b"PING", pos):
                self.send(b"PONG" + buf[pos + 4:stop + 1])
            elif self.state == LOGGING_IN:
                self.on_irc_control(buf[pos:stop].rstrip(b"\r"))
            pos = stop + 1
        self.rest = buf[pos:] if pos < end else b""
        self.counted(count)

    def on_irc_control(self, line: bytes) -> None:
        """Registration: 001 (welcome) -> JOIN; 366 (end of NAMES) -> ready."""
        parts = line.split(b" ", 3)
        code = parts[1] if len(parts) > 1 else b""
        if code == b"001":
            self.send(f"JOIN {self.room}\r\n".encode())
        elif code == b"366":
            self.state = READY
            self.worker.on_ready(self)
        elif code in (b"432", b"433", b"471", b"473", b"474", b"475") or line.startswith(b"ERROR"):
            self.fail(f"refused: {line[:200].decode(errors='replace')}")

    def pong(self, body: bytes) -> None:
        ping = json.loads(body)
        self.send(encode_frame({"type": "pong", "data": str(ping.get("data", ""))}))

    def on_control(self, body: bytes) -> None:
        """Frames during login; the frames that need no answer are told by their prefix."""
        worker = self.worker
        if body.startswith(worker.ready_prefix(self.room)):
            self.state = READY
            worker.on_ready(self)
        elif body.startswith(b'{"type":"challenge"'):
            frame = json.loads(body)
            signature = worker.signer(base64.b64decode(frame["nonce"]), self.name,
                                      str(frame.get("server_id", "")))
            data = encode_frame({"type": "auth", "signature": base64.b64encode(signature).decode()})
            if self.room != "#common":
                data += encode_frame({"type": "join", "room": self.room})
            self.send(data)
        elif body.startswith(b'{"type":"error"'):
            frame = json.loads(body)
            self.fail(f"refused: {frame.get('code')}: {frame.get('message')}")

    def fail(self, reason: str) -> None:
        if self.state == CLOSED:
            return
        was_ready = self.state == READY
        self.state = CLOSED
        self.error = reason
        self.close()
        self.worker.on_lost(self, reason, was_ready)

    def abort(self) -> None:
        """Drop the connection the rude way: a reset, no goodbye (the soak's churn)."""
        if self.sock is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close()

    def close(self) -> None:
        self.state = CLOSED
        if self.sock is not None:
            self.worker.unregister(self)
            self.sock.close()
            self.sock = None


class Phase:
    """What a worker is doing for the parent; `result()` is sent back once `done(now)`."""

    deadline = float("inf")

    def on_message(self, client: Client, tag: bytes, send_ns: int, now_ns: int) -> None:
        pass

    def on_ready(self, client: Client) -> None:
        pass

    def tick(self, now: float) -> None:
        pass

    def next_time(self, now: float) -> float:
        return now + 0.1

    def done(self, now: float) -> bool:
        return True

    def result(self) -> dict[str, Any]:
        return {}


class ConnectPhase(Phase):
    def __init__(self, worker: Worker, clients: list[Client], address: tuple[str, int],
                 concurrency: int, timeout: float) -> None:
        self.worker, self.address = worker, address
        self.waiting = list(reversed(clients))
        self.concurrency = concurrency
        self.in_flight = 0
        self.ready = 0
        self.started = time.monotonic()
        self.deadline = self.started + timeout
        self.finished = 0.0
        self._fill()

    def _fill(self) -> None:
        while self.waiting and self.in_flight < self.concurrency:
            client = self.waiting.pop()
            self.in_flight += 1
            client.start(self.address)

    def on_ready(self, client: Client) -> None:
        self.in_flight -= 1
        self.ready += 1
        self._fill()

    def tick(self, now: float) -> None:
        self._fill()

    def done(self, now: float) -> bool:
        if self.worker.failures or now > self.deadline:
            return True
        if not self.waiting and self.in_flight == 0:
            self.finished = self.finished or now
            return True
        return False

    def result(self) -> dict[str, Any]:
        end = self.finished or time.monotonic()
        return {"ready": self.ready, "seconds": end - self.started,
                "timed_out": bool(self.waiting or self.in_flight) and not self.worker.failures}


class ThroughputPhase(Phase):
    """Senders keep `window` own messages in flight until t2; everyone counts deliveries."""

    def __init__(self, worker: Worker, senders: list[Client], window: int, t1: float,
                 t2: float) -> None:
        self.worker, self.senders, self.window = worker, senders, window
        self.t1, self.t2 = t1, t2
        self.count_t1: int | None = None
        self.count_t2: int | None = None
        self.deadline = t2 + 10.0
        self.by_tag = {sender.tag: sender for sender in senders}
        for sender in senders:
            sender.outstanding = 0
            sender.sent = 0
            self._top_up(sender)

    def _top_up(self, sender: Client) -> None:
        if time.monotonic() >= self.t2:
            return
        length = self.worker.text_length
        while sender.outstanding < self.window:
            sender.seq += 1
            text = make_text(sender.tag.decode(), time.monotonic_ns(), length)
            sender.send(self.worker.message(text))
            sender.outstanding += 1
            sender.sent += 1

    def on_message(self, client: Client, tag: bytes, send_ns: int, now_ns: int) -> None:
        if client.sender and tag == client.tag:
            client.outstanding -= 1
            self._top_up(client)
        elif client is self.worker.witness:  # IRC: no echo, the witness saw it arrive
            sender = self.by_tag.get(tag)
            if sender is not None:
                sender.outstanding -= 1
                self._top_up(sender)

    def tick(self, now: float) -> None:
        if self.count_t1 is None and now >= self.t1:
            self.count_t1 = self.worker.messages
        if self.count_t2 is None and now >= self.t2:
            self.count_t2 = self.worker.messages

    def next_time(self, now: float) -> float:
        if self.count_t1 is None:
            return self.t1
        if self.count_t2 is None:
            return self.t2
        return now + 0.05

    def done(self, now: float) -> bool:
        if self.worker.failures or now > self.deadline:
            return True
        return self.count_t2 is not None and all(s.outstanding <= 0 for s in self.senders)

    def result(self) -> dict[str, Any]:
        return {"count_t1": self.count_t1, "count_t2": self.count_t2,
                "sent": sum(s.sent for s in self.senders)}


class LatencyPhase(Phase):
    """Senders send at a fixed total rate until t2; receivers record latencies of the
    messages sent between t1 and t2."""

    def __init__(self, worker: Worker, senders: list[Client], first_index: int, total: int,
                 rate: float, t0: float, t1: float, t2: float) -> None:
        self.worker, self.senders = worker, senders
        self.t1_ns, self.t2_ns = int(t1 * 1e9), int(t2 * 1e9)
        self.t2 = t2
        self.deadline = t2 + 10.0
        self.grace_until = t2 + 1.0
        self.samples = array.array("q")
        self.interval = total / rate  # between two messages of one sender
        for offset, sender in enumerate(senders):
            sender.due = t0 + (first_index + offset) / rate
            sender.sent = 0

    def on_message(self, client: Client, tag: bytes, send_ns: int, now_ns: int) -> None:
        if not client.sender and self.t1_ns <= send_ns <= self.t2_ns:
            self.samples.append(now_ns - send_ns)

    def tick(self, now: float) -> None:
        length = self.worker.text_length
        for sender in self.senders:
            while sender.due <= now and sender.due < self.t2:
                text = make_text(sender.tag.decode(), time.monotonic_ns(), length)
                sender.send(self.worker.message(text))
                sender.sent += 1
                sender.due += self.interval

    def next_time(self, now: float) -> float:
        pending = [s.due for s in self.senders if s.due < self.t2]
        return min(pending) if pending else self.grace_until

    def done(self, now: float) -> bool:
        return bool(self.worker.failures) or now >= self.grace_until

    def result(self) -> dict[str, Any]:
        return {"samples": self.samples.tobytes(), "sent": sum(s.sent for s in self.senders)}


class FanoutPhase(Phase):
    """Wait until every ready client of this worker got the message tagged `tag`."""

    def __init__(self, worker: Worker, tag: bytes, timeout: float) -> None:
        self.worker, self.tag = worker, tag
        self.expect = sum(1 for c in worker.clients if c.state == READY)
        self.got = 0
        self.last_ns = 0
        self.send_ns = 0
        self.deadline = time.monotonic() + timeout

    def fire(self, sender: Client) -> None:
        self.send_ns = time.monotonic_ns()
        text = make_text(self.tag.decode(), self.send_ns, self.worker.text_length)
        sender.send(self.worker.message(text))

    def on_message(self, client: Client, tag: bytes, send_ns: int, now_ns: int) -> None:
        if tag == self.tag:
            self.got += 1
            self.last_ns = max(self.last_ns, now_ns)

    def done(self, now: float) -> bool:
        return bool(self.worker.failures) or self.got >= self.expect or now > self.deadline

    def result(self) -> dict[str, Any]:
        return {"got": self.got, "expect": self.expect, "last_ns": self.last_ns,
                "send_ns": self.send_ns}


class SoakPhase(Phase):
    """Churn until `t_end`: senders talk at a fixed total rate in their own rooms, and each
    churner drops its connection abruptly (RST, no quit) every `period` seconds, staggered,
    then logs in again at once (the server puts it back in its rooms)."""

    def __init__(self, worker: Worker, senders: list[Client], churners: list[Client],
                 first_index: int, total: int, rate: float, period: float, t_end: float) -> None:
        self.worker, self.senders, self.churners = worker, senders, churners
        self.t_end = t_end
        self.deadline = t_end + 60.0
        self.interval = total / rate
        self.period = period
        self.reconnects = 0
        now = time.monotonic()
        for offset, sender in enumerate(senders):
            sender.due = now + (first_index + offset) / rate
        for offset, churner in enumerate(churners):
            churner.due = now + period * (offset + 1) / max(1, len(churners))

    def tick(self, now: float) -> None:
        worker = self.worker
        for sender in self.senders:
            while sender.due <= now and sender.due < self.t_end:
                if sender.state == READY:
                    sender.send(worker.message(make_text(sender.tag.decode(),
                                                         time.monotonic_ns(), worker.text_length)))
                sender.due += self.interval
        for churner in self.churners:
            if churner.due <= now < self.t_end:
                churner.due = now + self.period
                if churner.state == READY:
                    churner.abort()
                    churner.state = CONNECTING
                    churner.rest = churner.out = b""
                    churner.start(worker.address)
                    self.reconnects += 1

    def next_time(self, now: float) -> float:
        dues = [c.due for c in (*self.senders, *self.churners) if c.due < self.t_end]
        return min([*dues, self.t_end]) if dues else self.t_end

    def done(self, now: float) -> bool:
        if self.worker.failures or now > self.deadline:
            return True
        return now >= self.t_end and all(c.state == READY for c in self.churners)

    def result(self) -> dict[str, Any]:
        return {"reconnects": self.reconnects,
                "sent": sum(1 for _ in self.senders)}


class QuietPhase(Phase):
    """Done once nothing has arrived for `quiet` seconds: the server has sent everything."""

    def __init__(self, worker: Worker, quiet: float, timeout: float) -> None:
        self.worker, self.quiet = worker, quiet
        self.started = time.monotonic()
        self.deadline = self.started + timeout

    def next_time(self, now: float) -> float:
        return max(now, self.worker.last_data) + self.quiet

    def done(self, now: float) -> bool:
        return bool(self.worker.failures) or now - self.worker.last_data >= self.quiet \
            or now > self.deadline

    def result(self) -> dict[str, Any]:
        return {"seconds": time.monotonic() - self.started}


class Worker:
    """A load-generator process: its clients, its epoll loop, its command pipe."""

    def __init__(self, pipe: Any, index: int) -> None:
        self.pipe = pipe
        self.index = index
        self.epoll = select.epoll()
        self.by_fd: dict[int, Client] = {}
        self.clients: list[Client] = []
        self.phase: Phase | None = None
        self.failures: list[str] = []
        self.messages = 0  # room messages received by non-senders
        self.sender_messages = 0
        self.last_data = time.monotonic()
        self.parse_all = False
        self.dialect = GAPSHAPE
        self.room = "#bench"
        self.address: tuple[str, ...] = ("127.0.0.1", 0)
        self.text_length = 0
        self.public_b64 = ""
        self.signer: Signer | None = None
        # IRC does not echo a sender's own messages: this receiver reports them instead.
        self.witness: Client | None = None
        self.running = True

    # -- epoll bookkeeping ----------------------------------------------------------------

    def register(self, client: Client, events: int) -> None:
        self.by_fd[client.fd] = client
        client.events = events
        self.epoll.register(client.fd, events)

    def modify(self, client: Client, events: int) -> None:
        client.events = events
        self.epoll.modify(client.fd, events)

    def unregister(self, client: Client) -> None:
        self.by_fd.pop(client.fd, None)
        try:
            self.epoll.unregister(client.fd)
        except (OSError, ValueError):
            pass

    # -- the loop -------------------------------------------------------------------------

    def run(self) -> None:
        raise_nofile_limit()
        pipe_fd = self.pipe.fileno()
        self.epoll.register(pipe_fd, select.EPOLLIN)
        by_fd = self.by_fd
        while self.running:
            now = time.monotonic()
            phase = self.phase
            timeout = 0.5 if phase is None else max(0.0, min(phase.next_time(now), phase.deadline) - now)
            for fd, mask in self.epoll.poll(timeout, 8192):
                if fd == pipe_fd:
                    self.command(self.pipe.recv())
                    continue
                client = by_fd.get(fd)
                if client is None:
                    continue
                if mask & _EPOLLIN:
                    client.readable()
                if mask & _EPOLLOUT and client.state != CLOSED:
                    client.writable()
            phase = self.phase
            if phase is not None:
                now = time.monotonic()
                phase.tick(now)
                if phase.done(now):
                    self.phase = None
                    self.parse_all = False
                    reply = phase.result()
                    reply["failures"] = self.failures[:5]
                    reply["failed"] = len(self.failures)
                    self.pipe.send(reply)

    def start_phase(self, phase: Phase, parse_all: bool = False) -> None:
        self.phase = phase
        self.parse_all = parse_all

    def on_message(self, client: Client, buf: bytes, start: int, stop: int, now_ns: int) -> None:
        i = buf.find(TEXT_KEY, start, stop)
        if i < 0 or self.phase is None:
            return
        self.on_text(client, buf, i + len(TEXT_KEY), stop, now_ns)

    def on_text(self, client: Client, buf: bytes, i: int, stop: int, now_ns: int) -> None:
        """`buf[i:]` starts with a message's text, `tag|send_ns|padding`."""
        j = buf.find(b"|", i, stop)
        k = buf.find(b"|", j + 1, stop)
        if j < 0 or k < 0:
            return
        if self.phase is not None:
            self.phase.on_message(client, buf[i:j], int(buf[j + 1:k]), now_ns)

    def on_ready(self, client: Client) -> None:
        if self.phase is not None:
            self.phase.on_ready(client)

    def on_lost(self, client: Client, reason: str, was_ready: bool) -> None:
        self.failures.append(f"{client.name}: {reason}")
        if self.phase is not None and not was_ready:
            self.phase.on_ready(client)  # no longer in flight

    def ready_prefix(self, room: str) -> bytes:
        """How the frame that makes a logging-in client ready begins."""
        if self.dialect == RELAY:
            return b'{"type":"ready"'
        return b'{"type":"joined","room":' + json.dumps(room).encode()

    def message(self, text: str) -> bytes:
        if self.dialect == IRC:
            return f"PRIVMSG {self.room} :{text}\r\n".encode()
        return encode_frame({"type": "message", "text": text})

    # -- commands from the parent ---------------------------------------------------------

    def command(self, msg: dict[str, Any]) -> None:
        getattr(self, "op_" + msg["op"])(msg)

    def op_connect(self, msg: dict[str, Any]) -> None:
        self.dialect = msg["dialect"]
        self.room = msg["room"]
        self.text_length = text_length(self.dialect, self.room)
        self.address = tuple(msg["address"])
        if self.dialect == GAPSHAPE:
            self.public_b64 = base64.b64encode(msg["public_der"]).decode()
            self.signer = Signer(msg["private_der"])
        self.failures.clear()
        clients = [Client(self, name) for name in msg["names"]]
        for index, client in enumerate(clients):
            client.tag = f"s{self.index}x{index}".encode()
        self.clients.extend(clients)
        self.start_phase(ConnectPhase(self, clients, tuple(msg["address"]), msg["concurrency"],
                                      msg["timeout"]))

    def op_throughput(self, msg: dict[str, Any]) -> None:
        senders = self._senders(msg["senders"])
        self.start_phase(ThroughputPhase(self, senders, msg["window"], msg["t1"], msg["t2"]))

    def op_latency(self, msg: dict[str, Any]) -> None:
        senders = self._senders(msg["senders"])
        self.start_phase(LatencyPhase(self, senders, msg["first_index"], msg["total_senders"],
                                      msg["rate"], msg["t0"], msg["t1"], msg["t2"]), parse_all=True)

    def op_fanout_arm(self, msg: dict[str, Any]) -> None:
        self.start_phase(FanoutPhase(self, msg["tag"].encode(), msg["timeout"]), parse_all=True)
        self.pipe.send({"armed": True})

    def op_fanout_fire(self, msg: dict[str, Any]) -> None:
        assert isinstance(self.phase, FanoutPhase)
        self.phase.fire(self.clients[0])

    def op_sign(self, msg: dict[str, Any]) -> None:
        """The crypto floor of a login storm, this worker's share: sign `count` login
        proofs (fresh nonces) as the connect phase does, nothing else."""
        signer = Signer(msg["private_der"])
        nonces = [os.urandom(32) for _ in range(msg["count"])]
        started = time.monotonic()
        for number, nonce in enumerate(nonces):
            signer(nonce, f"w{self.index}c{number:05d}", msg["server_id"])
        self.pipe.send({"seconds": time.monotonic() - started, "failed": 0})

    def op_soak(self, msg: dict[str, Any]) -> None:
        firsts: dict[str, Client] = {}  # one sender per room, as far as `senders` goes
        for client in self.clients:
            firsts.setdefault(client.room, client)
        chosen = list(firsts.values())[: msg["senders"]]
        for client in self.clients:
            client.sender = client in chosen
        senders = chosen
        pool = [c for c in self.clients if not c.sender]
        churners = pool[: msg["churners"]]
        self.start_phase(SoakPhase(self, senders, churners, msg["first_index"],
                                   msg["total_senders"], msg["rate"], msg["period"],
                                   msg["t_end"]))

    def op_quiet(self, msg: dict[str, Any]) -> None:
        self.start_phase(QuietPhase(self, msg["quiet"], msg["timeout"]))

    def op_close(self, msg: dict[str, Any]) -> None:
        for client in self.clients:
            client.close()
        self.clients.clear()
        self.failures.clear()
        self.pipe.send({"closed": True})

    def op_exit(self, msg: dict[str, Any]) -> None:
        self.op_close(msg)
        self.running = False

    def _senders(self, count: int) -> list[Client]:
        for client in self.clients:
            client.sender = False
        senders = self.clients[:count]
        for sender in senders:
            sender.sender = True
        others = [c for c in self.clients[count:] if c.state == READY]
        self.witness = others[0] if self.dialect == IRC and count and others else None
        return senders


def _worker_main(pipe: Any, index: int, inherited: list[Any]) -> None:
    # Close the parent's ends this fork inherited, so that each worker sees EOF on its
    # pipe (and exits) when the parent dies, whatever way it dies.
    for end in inherited:
        end.close()
    try:
        Worker(pipe, index).run()
    except (KeyboardInterrupt, EOFError, BrokenPipeError):
        pass


# ---------------------------------------------------------------------------------------
# The parent side


class LoadGen:
    """The parent's handle on the worker processes. Use as a context manager."""

    def __init__(self, processes: int = 2) -> None:
        raise_nofile_limit()
        context = multiprocessing.get_context("fork")
        self.pipes = []
        self.processes = []
        for index in range(processes):
            parent_end, child_end = context.Pipe()
            process = context.Process(target=_worker_main,
                                      args=(child_end, index, [*self.pipes, parent_end]),
                                      name=f"bench-loadgen-{index}", daemon=True)
            process.start()
            child_end.close()
            self.pipes.append(parent_end)
            self.processes.append(process)

    def __enter__(self) -> LoadGen:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes]

    def _ask(self, messages: dict[int, dict[str, Any]], timeout: float) -> dict[int, dict[str, Any]]:
        for index, msg in messages.items():
            self.pipes[index].send(msg)
        replies = {}
        deadline = time.monotonic() + timeout
        for index in messages:
            if not self.pipes[index].poll(max(0.0, deadline - time.monotonic())):
                raise BenchError(f"load generator {index} did not answer {messages[index]['op']!r} "
                                 f"within {timeout:.0f} s")
            replies[index] = self.pipes[index].recv()
        for index, reply in replies.items():
            if reply.get("failed"):
                raise BenchError(f"load generator {index}: {reply['failed']} client(s) failed, "
                                 f"e.g. {reply['failures'][:3]}")
        return replies

    def connect(self, dialect: str, address: tuple[str, int], names: list[list[str]], *,
                room: str = "#bench", private_der: bytes = b"", public_der: bytes = b"",
                concurrency: int = 128, timeout: float = 600.0) -> float:
        """Connect (and log in) `names[i]` from worker i; return the seconds it took."""
        started = time.monotonic()
        replies = self._ask({
            index: {"op": "connect", "dialect": dialect, "address": address, "names": group,
                    "room": room, "private_der": private_der, "public_der": public_der,
                    "concurrency": concurrency, "timeout": timeout}
            for index, group in enumerate(names) if group
        }, timeout + 30)
        for index, reply in replies.items():
            if reply.get("timed_out"):
                raise BenchError(f"load generator {index}: only {reply['ready']} clients logged in "
                                 f"within {timeout:.0f} s")
        return time.monotonic() - started

    def sign(self, counts: list[int], private_der: bytes, timeout: float = 600.0) -> float:
        """Seconds for the workers, together, to sign counts[i] login proofs each."""
        started = time.monotonic()
        self._ask({i: {"op": "sign", "count": count, "private_der": private_der,
                       "server_id": "0123456789abcdef"}
                   for i, count in enumerate(counts) if count}, timeout)
        return time.monotonic() - started

    def quiet(self, quiet: float = 0.5, timeout: float = 300.0) -> float:
        """Wait until no worker has received anything for `quiet` seconds."""
        started = time.monotonic()
        self._ask({i: {"op": "quiet", "quiet": quiet, "timeout": timeout}
                   for i in range(len(self.pipes))}, timeout + 30)
        return time.monotonic() - started

    def throughput(self, senders: dict[int, int], window: int, warmup: float,
                   duration: float) -> dict[str, Any]:
        """Deliveries per second to the non-sender clients between warmup and its end."""
        t1 = time.monotonic() + 0.2 + warmup
        t2 = t1 + duration
        replies = self._ask({
            i: {"op": "throughput", "senders": senders.get(i, 0), "window": window,
                "t1": t1, "t2": t2}
            for i in range(len(self.pipes))
        }, warmup + duration + 30)
        missing = [i for i, r in replies.items() if r["count_t2"] is None or r["count_t1"] is None]
        if missing:
            raise BenchError(f"load generators {missing} missed the measurement window")
        delivered = sum(r["count_t2"] - r["count_t1"] for r in replies.values())
        return {"deliveries_per_s": delivered / (t2 - t1), "delivered": delivered,
                "sent": sum(r["sent"] for r in replies.values())}

    def latency(self, senders: dict[int, int], rate: float, warmup: float,
                duration: float) -> array.array:
        """Latency samples (ns) of the messages sent between warmup and its end."""
        t0 = time.monotonic() + 0.2
        t1 = t0 + warmup
        t2 = t1 + duration
        total = sum(senders.values())
        first, messages = 0, {}
        for i in range(len(self.pipes)):
            count = senders.get(i, 0)
            messages[i] = {"op": "latency", "senders": count, "first_index": first,
                           "total_senders": total, "rate": rate, "t0": t0, "t1": t1, "t2": t2}
            first += count
        replies = self._ask(messages, warmup + duration + 30)
        samples = array.array("q")
        for reply in replies.values():
            samples.frombytes(reply["samples"])
        return samples

    def start_soak(self, senders: dict[int, int], churners: dict[int, int], rate: float,
                   period: float, seconds: float) -> float:
        """Start the soak in every worker (it runs `seconds`); `finish_soak` waits for it.
        Returns the monotonic time it ends."""
        t_end = time.monotonic() + seconds
        total, first = sum(senders.values()), 0
        for i, pipe in enumerate(self.pipes):
            pipe.send({"op": "soak", "senders": senders.get(i, 0), "first_index": first,
                       "total_senders": total, "churners": churners.get(i, 0), "rate": rate,
                       "period": period, "t_end": t_end})
            first += senders.get(i, 0)
        return t_end

    def finish_soak(self, timeout: float) -> dict[str, Any]:
        replies = {}
        deadline = time.monotonic() + timeout
        for index, pipe in enumerate(self.pipes):
            if not pipe.poll(max(0.0, deadline - time.monotonic())):
                raise BenchError(f"load generator {index} did not finish the soak")
            replies[index] = pipe.recv()
        for index, reply in replies.items():
            if reply.get("failed"):
                raise BenchError(f"load generator {index}: {reply['failed']} client(s) failed "
                                 f"in the soak, e.g. {reply['failures'][:3]}")
        return {"reconnects": sum(r["reconnects"] for r in replies.values())}

    def fanout(self, tag: str, timeout: float = 60.0) -> dict[str, Any]:
        """Worker 0's first client sends one message; seconds until all clients have it."""
        count = len(self.pipes)
        self._ask({i: {"op": "fanout_arm", "tag": tag, "timeout": timeout} for i in range(count)},
                  30)
        self.pipes[0].send({"op": "fanout_fire"})
        replies: dict[int, dict[str, Any]] = {}
        deadline = time.monotonic() + timeout + 30
        for i in range(count):
            if not self.pipes[i].poll(max(0.0, deadline - time.monotonic())):
                raise BenchError(f"load generator {i} did not report the fan-out")
            replies[i] = self.pipes[i].recv()
        got = sum(r["got"] for r in replies.values())
        expect = sum(r["expect"] for r in replies.values())
        if got < expect:
            raise BenchError(f"fan-out {tag}: {got} of {expect} clients got the message")
        failed = [r for r in replies.values() if r.get("failed")]
        if failed:
            raise BenchError(f"fan-out {tag}: clients failed: {failed[0]['failures'][:3]}")
        last = max(r["last_ns"] for r in replies.values())
        return {"seconds": (last - replies[0]["send_ns"]) / 1e9, "clients": got}

    def close_clients(self) -> None:
        for pipe in self.pipes:
            pipe.send({"op": "close"})
        for pipe in self.pipes:
            if pipe.poll(30):
                pipe.recv()

    def shutdown(self) -> None:
        for pipe in self.pipes:
            try:
                pipe.send({"op": "exit"})
            except OSError:
                pass
        for process in self.processes:
            process.join(10)
            if process.is_alive():
                process.kill()
                process.join()
        self.processes.clear()
        self.pipes.clear()

def make_key() -> tuple[bytes, bytes]:
    """One RSA-3072 key per benchmark run, shared by every bench username: (private DER
    PKCS#8, public SubjectPublicKeyInfo DER)."""
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
    except ImportError:
        from Crypto.PublicKey import RSA

        key = RSA.generate(3072)
        return key.export_key("DER", pkcs=8), key.public_key().export_key("DER")
    key = rsa.generate_private_key(public_exponent=65537, key_size=3072)
    private = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.DER,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return private, public
