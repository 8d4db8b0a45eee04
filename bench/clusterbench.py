"""The cluster's cost, measured: 1 plain node vs 1 node + Redis vs 2 nodes + Redis.

    python bench/clusterbench.py           # every row, about two minutes on 2 cores
    python bench/clusterbench.py --quick   # small and short (a few seconds); prints a skip
                                           # line and succeeds when redis-server is missing

Everything is real: a `redis-server` of our own (a free loopback port, a temp directory,
`appendonly yes` with Redis's default `appendfsync everysec`, as docs/CLUSTER.md asks),
`server.py` node processes (`--redis URL --node-id ...`, port 0, their "listening" line read
from stdout) and the load generator of bench/loadgen.py (imported, not changed): worker 0's
clients go to node A, worker 1's to node B (both to the one node in the 1-node setups).
The same clients in each setup: SENDERS senders and N receivers in one room; in the 2-node
setup the senders and half the receivers are on A, the other half on B.

Rows (each a (name, value, note) triple of strings):
  deliveries/s    open-loop max (senders keep a window of own messages in flight), per
                  setup, and its ratio to the plain node
  latency p99     at a steady RATE msg/s, per setup, and its ratio to the plain node
  redis ops       Redis commands per room message, per login (+ join of the bench room),
                  per join, per private message: the difference of redis-server's
                  `INFO commandstats` before/after (the real cost, no hooks), with the
                  commands named in the note; also redis-server's CPU per message, both from
                  commandstats (usec inside commands) and from /proc (the whole process)
  kill -9         N clients on A, A killed with SIGKILL, they log in again on B at once:
                  seconds until every one is back in the bench room; and seconds until B
                  has dropped A (A gone from `gapshape:nodes`, its presence hash removed)
  storm           N logins split over 2 nodes vs all on 1 node (both with Redis), and ratio
  prediction      messages/s one Redis instance can carry (1 / its CPU per message) and
                  deliveries/s one node core can push (1 / node CPU per local delivery)

`cluster_rows(quick) -> list[tuple[str, str, str]]`: those rows, for bench/run.py; it
returns [("cluster", "skipped", reason)] when redis-server is not installed, and raises
loadgen.BenchError when a run goes wrong. Nothing here asserts a timing.
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
for _path in (str(ROOT), str(BENCH)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from loadgen import GAPSHAPE, BenchError, LoadGen, Signer, make_key  # noqa: E402
from protocol import PROTOCOL_VERSION, encode_frame  # noqa: E402

Row = tuple[str, str, str]
SENDERS = 4
ROOM = "#bench"
PLAIN, ONE, TWO = "1 plain node", "1 node + Redis", "2 nodes + Redis"
CLK_TCK = os.sysconf("SC_CLK_TCK")
# commandstats counts the commands a Lua script runs as calls of their own (and includes
# their time in the script's): XADD and INCR are only ever run inside the engine's scripts
# (clusterlink.py), so they are left out of "sent" and of the time. Other commands run
# both ways (HGET, HSET, ZADD...), so they stay in: "sent" is an upper bound.
SCRIPT_ONLY = frozenset({"xadd", "incr"})


@dataclass
class Settings:
    receivers: int = 100
    rate: float = 200.0
    warmup: float = 1.0
    duration: float = 4.0
    window: int = 16
    joins: int = 20
    privates: int = 50
    kill_clients: int = 100
    storm: int = 400
    quick_mode: bool = False

    @classmethod
    def quick(cls) -> Settings:
        return cls(receivers=10, rate=100.0, warmup=0.2, duration=0.6, joins=3, privates=5,
                   kill_clients=10, storm=20, quick_mode=True)


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc/PID/stat (fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


# ---------------------------------------------------------------------------------------
# Redis and nodes


class Redis:
    """Our own redis-server, and a raw RESP connection to it (no client library needed)."""

    def __init__(self, directory: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed")
        self.port = free_port()
        directory.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(directory),
             "--save", "", "--appendonly", "yes", "--protected-mode", "no",
             "--daemonize", "no", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.sock: socket.socket | None = None
        self.buf = b""
        deadline = time.monotonic() + 10
        while True:  # polling a process start-up: there is no event to wait on
            try:
                self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
                break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise BenchError("redis-server did not start") from None
                time.sleep(0.02)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def call(self, *args: str) -> Any:
        assert self.sock is not None
        out = f"*{len(args)}\r\n".encode()
        for arg in args:
            data = arg.encode()
            out += b"$%d\r\n%s\r\n" % (len(data), data)
        self.sock.sendall(out)
        return self._reply()

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            assert self.sock is not None
            chunk = self.sock.recv(65536)
            if not chunk:
                raise BenchError("redis-server closed the connection")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _reply(self) -> Any:
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise BenchError(f"redis: {rest.decode()}")
        if kind == b":":
            return int(rest)
        if kind == b"$":
            size = int(rest)
            if size < 0:
                return None
            while len(self.buf) < size + 2:
                assert self.sock is not None
                self.buf += self.sock.recv(65536)
            data, self.buf = self.buf[:size], self.buf[size + 2:]
            return data.decode()
        if kind == b"*":
            return [self._reply() for _ in range(max(0, int(rest)))]
        raise BenchError(f"redis: unexpected reply {line!r}")

    def snapshot(self) -> dict[str, Any]:
        """Calls and usec per command (INFO commandstats), the process's CPU, the last id."""
        stats: dict[str, tuple[int, int]] = {}
        for line in str(self.call("INFO", "commandstats")).splitlines():
            match = re.match(r"cmdstat_(\S+?):calls=(\d+),usec=(\d+)", line)
            if match and match.group(1) not in ("info",):
                stats[match.group(1)] = (int(match.group(2)), int(match.group(3)))
        return {"stats": stats, "cpu": cpu_seconds(self.proc.pid),
                "msgid": int(self.call("GET", "gapshape:msgid") or 0)}

    def stop(self) -> None:
        if self.sock is not None:
            self.sock.close()
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def spent(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """What Redis did between two snapshots: calls per command, usec, CPU, ids handed out."""
    calls: dict[str, int] = {}
    usec = 0
    for name, (count, micros) in after["stats"].items():
        old_count, old_micros = before["stats"].get(name, (0, 0))
        if count > old_count:
            calls[name] = count - old_count
            if name not in SCRIPT_ONLY:  # their time is inside their script's already
                usec += micros - old_micros
    sent = sum(count for name, count in calls.items() if name not in SCRIPT_ONLY)
    per_call = {name: (after["stats"][name][1] - before["stats"].get(name, (0, 0))[1])
                / calls[name] for name in ("evalsha", "xread") if name in calls}
    return {"calls": calls, "total": sum(calls.values()), "sent": sent, "usec": usec,
            "per_call": per_call,
            "cpu": after["cpu"] - before["cpu"], "ids": after["msgid"] - before["msgid"]}


def describe(calls: dict[str, int], per: float) -> str:
    return ", ".join(f"{name} {count / per:.2f}" for name, count
                     in sorted(calls.items(), key=lambda kv: -kv[1]))


class Node:
    """One server.py process on 127.0.0.1 and a free port."""

    def __init__(self, home: Path, *, redis_url: str | None, node_id: str,
                 registry: Path | None = None) -> None:
        home.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, str(ROOT / "server.py"), "--host", "127.0.0.1",
                   "--port", "0", "--log", str(home / "messageslog.json"), "--rate", "0",
                   "--max-per-address", "20000", "--max-clients", "20000",
                   "--ping-interval", "3600", "--login-timeout", "600",
                   "--max-names-per-key", "0", "--registrations-per-address", "0",
                   "--registrations-per-day", "0"]
        if redis_url is not None:
            command += ["--redis", redis_url, "--node-id", node_id]
        if registry is not None:
            command += ["--registry", str(registry)]
        self.node_id = node_id
        self.stderr_path = home / "stderr.txt"
        self._stderr = open(self.stderr_path, "ab")
        self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=self._stderr,
                                     cwd=home, start_new_session=True)
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 60)
        line = self.proc.stdout.readline().decode(errors="replace") if ready else ""
        match = re.search(r"listening on ([\d.]+):(\d+)", line)
        if not match:
            self.kill()
            tail = self.stderr_path.read_text(errors="replace")[-800:]
            raise BenchError(f"server.py did not start: {line!r}; {tail}")
        self.address = (match.group(1), int(match.group(2)))

    def cpu(self) -> float:
        return cpu_seconds(self.proc.pid)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.close()
        self._stderr.close()


# ---------------------------------------------------------------------------------------
# A small blocking client, for the joins and private messages counted one by one


class RawClient:
    HEADER = struct.Struct(">I")

    def __init__(self, address: tuple[str, int], name: str, keys: tuple[bytes, bytes],
                 signer: Signer) -> None:
        self.name = name
        self.sock = socket.create_connection(address, timeout=30)
        self.buf = b""
        self.send({"type": "hello", "version": PROTOCOL_VERSION, "username": name,
                   "public_key": base64.b64encode(keys[1]).decode()})
        challenge = self.wait_for(lambda f: f.get("type") == "challenge")
        signature = signer(base64.b64decode(challenge["nonce"]), name,
                           str(challenge.get("server_id", "")))
        self.send({"type": "auth", "signature": base64.b64encode(signature).decode()})
        self.wait_for(lambda f: f.get("type") == "joined")

    def send(self, frame: dict[str, Any]) -> None:
        self.sock.sendall(encode_frame(frame))

    def wait_for(self, match: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        while True:
            while len(self.buf) >= 4:
                size = self.HEADER.unpack_from(self.buf)[0]
                if len(self.buf) < 4 + size:
                    break
                frame: dict[str, Any] = json.loads(self.buf[4:4 + size])
                self.buf = self.buf[4 + size:]
                if frame.get("type") == "ping":
                    self.send({"type": "pong", "data": str(frame.get("data", ""))})
                elif frame.get("type") == "error":
                    raise BenchError(f"{self.name}: {frame}")
                elif match(frame):
                    return frame
            chunk = self.sock.recv(65536)  # the socket's 30 s timeout bounds the wait
            if not chunk:
                raise BenchError(f"{self.name}: the server closed the connection")
            self.buf += chunk

    def close(self) -> None:
        self.sock.close()


def joined_frame(room: str) -> Callable[[dict[str, Any]], bool]:
    return lambda f: f.get("type") == "joined" and f.get("room") == room


def envelope(sender: str, recipient: str, i: int) -> dict[str, Any]:
    """An envelope of the right shape: the server relays it unread, so its bytes are
    never opened here (the crypto's cost is the clients', measured in bench/run.py)."""
    blob = base64.b64encode(os.urandom(384)).decode()
    return {"version": 1, "sender": sender, "recipient": recipient,
            "message_id": f"{i:032x}", "sent_at": "2026-01-01T00:00:00.000Z",
            "wrapped_key": blob, "nonce": base64.b64encode(os.urandom(12)).decode(),
            "ciphertext": base64.b64encode(os.urandom(64)).decode(), "signature": blob}


# ---------------------------------------------------------------------------------------
# The runs




class ClusterBench:
    def __init__(self, settings: Settings, workdir: Path) -> None:
        self.s = settings
        self.workdir = workdir
        self.keys = make_key()
        self.signer = Signer(self.keys[0])
        self.loadgen = LoadGen(2)
        self.runs = 0

    def close(self) -> None:
        self.loadgen.shutdown()

    def names(self, count: int, prefix: str) -> list[str]:
        return [f"{prefix}{i:05d}" for i in range(count)]

    def register(self, names: list[str], redis: Redis | None) -> Path | None:
        """Every bench user known beforehand, so that logins are logins, not first
        registrations: in Redis (the cluster's registry) or in a registry file."""
        if redis is not None:
            from redisstores import RedisKeyRegistry

            registry = RedisKeyRegistry(redis.url, max_names_per_key=0)
            for name in names:
                registry.register(name, self.keys[1])
            return None
        from unittest import mock

        from keyregistry import KeyRegistry

        path = self.workdir / f"registry{self.runs}.json"
        with mock.patch.object(os, "fsync", lambda fd: None):  # a throwaway file
            plain = KeyRegistry(path, max_names_per_key=0)
            for name in names:
                plain.register(name, self.keys[1])
        return path

    def setup(self, kind: str, names: list[str]) -> tuple[Redis | None, list[Node]]:
        self.runs += 1
        home = self.workdir / f"run{self.runs}"
        redis = None if kind == PLAIN else Redis(home / "redis")
        try:
            registry = self.register(names, redis)
            count = 2 if kind == TWO else 1
            nodes: list[Node] = []
            for i in range(count):
                nodes.append(Node(home / f"node{i}", redis_url=redis.url if redis else None,
                                  node_id=f"n{i}", registry=registry))
        except BaseException:
            if redis is not None:
                redis.stop()
            raise
        return redis, nodes

    def teardown(self, redis: Redis | None, nodes: list[Node]) -> None:
        for node in nodes:
            node.kill()
        self.loadgen.close_clients()
        if redis is not None:
            redis.stop()

    def connect(self, nodes: list[Node], groups: list[list[str]]) -> float:
        """Worker i's clients to node i (to the only node when there is one)."""
        started = time.monotonic()
        for i, group in enumerate(groups):
            if group:
                node = nodes[min(i, len(nodes) - 1)]
                only = [group if j == i else [] for j in range(len(groups))]
                self.loadgen.connect(GAPSHAPE, node.address, only, room=ROOM,
                                     private_der=self.keys[0], public_der=self.keys[1],
                                     concurrency=32, timeout=600)
        return time.monotonic() - started

    def connect_all(self, nodes: list[Node], groups: list[list[str]]) -> float:
        """Both workers log in at once (the storm), each to its node."""
        if len(nodes) == 1:
            return self.loadgen.connect(GAPSHAPE, nodes[0].address, groups, room=ROOM,
                                        private_der=self.keys[0], public_der=self.keys[1],
                                        concurrency=32, timeout=600)
        return self.connect(nodes, groups)  # two addresses: see storm()

    # -- row 1 and 2: throughput, latency, Redis ops ------------------------------------------

    def traffic(self, kind: str) -> dict[str, Any]:
        s = self.s
        rest = s.receivers
        groups = [self.names(SENDERS + rest - rest // 2, "a"), self.names(rest // 2, "b")]
        redis, nodes = self.setup(kind, groups[0] + groups[1] + ["pm-alice", "pm-bob"])
        out: dict[str, Any] = {}
        try:
            before = redis.snapshot() if redis else None
            self.connect(nodes, groups)
            self.loadgen.quiet(0.3)
            if redis and before:
                out["login"] = spent(before, redis.snapshot())
                out["logins"] = len(groups[0]) + len(groups[1])
            cpu0 = [n.cpu() for n in nodes]
            before = redis.snapshot() if redis else None
            result = self.loadgen.throughput({0: SENDERS}, s.window, s.warmup, s.duration)
            out["node_cpu"] = [n.cpu() - c for n, c in zip(nodes, cpu0, strict=True)]
            if redis and before:
                out["max"] = spent(before, redis.snapshot())
            out["deliveries"] = result["deliveries_per_s"]
            out["sent"] = result["sent"]
            self.loadgen.quiet(0.3)
            before = redis.snapshot() if redis else None
            samples = sorted(self.loadgen.latency({0: SENDERS}, s.rate, s.warmup, s.duration))
            if redis and before:
                out["message"] = spent(before, redis.snapshot())
            expected = s.rate * s.duration * s.receivers
            if len(samples) < 0.95 * expected:
                raise BenchError(f"latency on {kind}: {len(samples)} samples of {expected:.0f}")
            out["p50"] = samples[len(samples) // 2] / 1e6
            out["p99"] = samples[min(len(samples) - 1, int(0.99 * len(samples)))] / 1e6
            self.loadgen.quiet(0.3)
            if redis:
                out.update(self.joins_and_privates(redis, nodes))
        except BenchError:
            for node in nodes:
                say(f"{node.node_id} stderr: {node.stderr_path.read_text(errors='replace')[-600:]}")
            raise
        finally:
            self.teardown(redis, nodes)
        say(f"  {kind}: {out['deliveries']:,.0f} deliveries/s, p50 {out['p50']:.2f} ms, "
            f"p99 {out['p99']:.2f} ms")
        return out

    def joins_and_privates(self, redis: Redis, nodes: list[Node]) -> dict[str, Any]:
        alice = RawClient(nodes[0].address, "pm-alice", self.keys, self.signer)
        bob = RawClient(nodes[-1].address, "pm-bob", self.keys, self.signer)
        try:
            before = redis.snapshot()
            for i in range(self.s.joins):
                room = f"#j{i}"
                alice.send({"type": "join", "room": room})
                alice.wait_for(joined_frame(room))
            joins = spent(before, redis.snapshot())
            before = redis.snapshot()
            for i in range(self.s.privates):
                alice.send({"type": "private", "to": "pm-bob",
                            "envelope": envelope("pm-alice", "pm-bob", i)})
                bob.wait_for(lambda f: f.get("type") == "private")
            privates = spent(before, redis.snapshot())
        finally:
            alice.close()
            bob.close()
        return {"join": joins, "private": privates}

    # -- row 3: kill -9 -----------------------------------------------------------------------

    def kill(self) -> dict[str, float]:
        names = self.names(self.s.kill_clients, "k")
        redis, nodes = self.setup(TWO, names)
        assert redis is not None
        a, b = nodes
        try:
            self.connect(nodes, [names, []])
            self.loadgen.quiet(0.3)
            killed = time.monotonic()
            a.proc.send_signal(signal.SIGKILL)
            a.proc.wait()
            self.loadgen.close_clients()  # their sockets are dead; forget the failures
            self.connect([b, b], [names, []])
            back = time.monotonic() - killed
            deadline = killed + (0 if self.s.quick_mode else 30)  # --quick: no 6 s wait
            gone = float("nan")
            while time.monotonic() < deadline:  # polling Redis: the bench has no hook in B
                if (not redis.call("SISMEMBER", "gapshape:nodes", a.node_id)
                        and not redis.call("EXISTS", f"gapshape:presence:{a.node_id}")):
                    gone = time.monotonic() - killed
                    break
                time.sleep(0.05)
            self.loadgen.quiet(0.3)  # raises if B's drop of A cut off a reconnected client
            present = redis.call("HLEN", f"gapshape:presence:{b.node_id}")
        finally:
            self.teardown(redis, nodes)
        say(f"  kill -9: {len(names)} back on B after {back:.2f} s, A dropped after {gone:.2f} s")
        return {"back": back, "gone": gone, "present": float(present)}

    # -- row 4: the login storm ---------------------------------------------------------------

    def storm(self, kind: str) -> float:
        n = self.s.storm
        groups = [self.names(n - n // 2, "s"), self.names(n // 2, "t")]
        redis, nodes = self.setup(kind, groups[0] + groups[1])
        try:
            if len(nodes) == 1:
                seconds = self.connect_all(nodes, groups)
            else:
                seconds = self.storm_two(nodes, groups)
        finally:
            self.teardown(redis, nodes)
        say(f"  storm {kind}: {n} logins in {seconds:.2f} s")
        return seconds

    def storm_two(self, nodes: list[Node], groups: list[list[str]]) -> float:
        """Both workers at once, worker i to node i: LoadGen.connect takes one address, so
        its commands are sent to both workers directly and their replies awaited."""
        lg = self.loadgen
        started = time.monotonic()
        for i, group in enumerate(groups):
            lg.pipes[i].send({"op": "connect", "dialect": GAPSHAPE,
                              "address": nodes[i].address, "names": group, "room": ROOM,
                              "private_der": self.keys[0], "public_der": self.keys[1],
                              "concurrency": 32, "timeout": 600})
        for i in range(len(groups)):
            if not lg.pipes[i].poll(630):
                raise BenchError(f"load generator {i} did not finish its logins")
            reply = lg.pipes[i].recv()
            if reply.get("failed") or reply.get("timed_out"):
                raise BenchError(f"storm: worker {i}: {reply}")
        return time.monotonic() - started


# ---------------------------------------------------------------------------------------
# The rows


def fmt(value: float, digits: int = 2) -> str:
    return f"{value:,.{digits}f}"


def sent(spend: dict[str, Any], per: float) -> str:
    return f"{spend['sent'] / per:.2f} sent by the nodes (a script's inner XADD/INCR not counted)"


def traffic_rows(results: dict[str, dict[str, Any]], s: Settings) -> list[Row]:
    plain = results[PLAIN]
    rows: list[Row] = []
    for kind, r in results.items():
        rows.append((f"deliveries/s, {kind}", fmt(r["deliveries"], 0),
                     f"{r['deliveries'] / plain['deliveries']:.2f}x the plain node; "
                     f"N={s.receivers}, {SENDERS} senders, window {s.window}"))
    for kind, r in results.items():
        rows.append((f"latency p99, {kind}", f"{r['p99']:.2f} ms",
                     f"{r['p99'] / plain['p99']:.2f}x the plain node; p50 {r['p50']:.2f} ms; "
                     f"{s.rate:g} msg/s, N={s.receivers}"))
    for kind in (ONE, TWO):
        r = results[kind]
        msg = r["message"]
        count = max(1, msg["ids"])
        rows.append((f"redis ops/room message, {kind}", fmt(msg["total"] / count),
                     f"{sent(msg, count)}; {describe(msg['calls'], count)}; {count} messages at "
                     f"{s.rate:g}/s; heartbeats included"))
        for label, spend in ((f"at {s.rate:g} msg/s", msg), ("at the open-loop max", r["max"])):
            n = max(1, spend["ids"])
            calls = ", ".join(f"{name} {usec:.1f} us/call" for name, usec
                              in spend["per_call"].items())
            rows.append((f"redis CPU/room message {label}, {kind}",
                         f"{spend['cpu'] * 1e6 / n:.1f} us",
                         f"whole redis-server process (/proc), {n} messages; inside commands "
                         f"(commandstats usec) {spend['usec'] / n:.1f} us ({calls}); "
                         f"{spend['sent'] / n:.2f} commands sent per message"))
        login = r["login"]
        rows.append((f"redis ops/login, {kind}", fmt(login["total"] / r["logins"]),
                     f"login + join of {ROOM}: {sent(login, r['logins'])}; "
                     f"{describe(login['calls'], r['logins'])}"))
        join = r["join"]
        rows.append((f"redis ops/join, {kind}", fmt(join["total"] / s.joins),
                     f"{sent(join, s.joins)}; {describe(join['calls'], s.joins)}"))
        private = r["private"]
        rows.append((f"redis ops/private message, {kind}", fmt(private["total"] / s.privates),
                     f"recipient online, on {'the other' if kind == TWO else 'the same'} node: "
                     f"{sent(private, s.privates)}; {describe(private['calls'], s.privates)}"))
    return rows


def prediction_rows(results: dict[str, dict[str, Any]], s: Settings) -> list[Row]:
    two = results[TWO]
    msg = two["max"]  # near saturation: Redis's fixed costs (AOF writes, cron) amortized
    count = max(1, msg["ids"])
    cpu_per_msg = msg["cpu"] / count
    usec_per_msg = msg["usec"] / count / 1e6
    per_redis = 1 / cpu_per_msg if cpu_per_msg else float("inf")
    per_redis_cmds = 1 / usec_per_msg if usec_per_msg else float("inf")
    # Node cost: CPU of a node per delivery to its own clients, in the 2-node throughput run
    # (each node applies every op and delivers to its half of the room).
    window = s.warmup + s.duration + 0.2
    local = two["deliveries"] * window / 2  # deliveries per node in the run, about
    per_delivery = max(two["node_cpu"]) / local if local else float("inf")
    return [
        ("prediction: room msg/s per Redis", fmt(per_redis, 0),
         f"1 / redis-server CPU per message ({cpu_per_msg * 1e6:.1f} us, whole process, "
         f"2 nodes reading, open-loop max); {fmt(per_redis_cmds, 0)} counting only time inside commands; "
         f"each more node adds its XREADs (a batch per read, so less than one per message)"),
        ("prediction: deliveries/s per node core", fmt(1 / per_delivery, 0),
         f"1 / node CPU per local delivery ({per_delivery * 1e6:.1f} us, 2-node run); "
         f"a node holds about that many clients each receiving 1 msg/s, on one core"),
    ]


def cluster_rows(quick: bool) -> list[Row]:
    """The rows, as (name, value, note) strings; see the module docstring."""
    if shutil.which("redis-server") is None:
        return [("cluster", "skipped", "redis-server is not installed (Debian: redis-server)")]
    s = Settings.quick() if quick else Settings()
    with tempfile.TemporaryDirectory(prefix="gapshape-clusterbench-") as tmp:
        bench = ClusterBench(s, Path(tmp))
        try:
            results = {kind: bench.traffic(kind) for kind in (PLAIN, ONE, TWO)}
            rows = traffic_rows(results, s)
            killed = bench.kill()
            rows.append(("kill -9: all back on B", f"{killed['back']:.2f} s",
                         f"{s.kill_clients} clients of A log in on B at once after the kill "
                         f"(until each has its {ROOM} joined)"))
            gone = "not waited for (--quick)" if s.quick_mode else f"{killed['gone']:.2f} s"
            rows.append(("kill -9: A's users gone from B", gone,
                         "until A is out of gapshape:nodes and its presence hash is removed "
                         f"(bound 8 s); B's presence then holds {killed['present']:.0f} users"))
            storms = {kind: bench.storm(kind) for kind in (PLAIN, ONE, TWO)}
            for kind, seconds in storms.items():
                rows.append((f"storm, {s.storm} logins, {kind}", f"{seconds:.2f} s",
                             f"{storms[ONE] / seconds:.2f}x the speed of 1 node + Redis; "
                             f"{s.storm / seconds:,.0f} logins/s"))
            rows += prediction_rows(results, s)
        finally:
            bench.close()
    return rows


def print_table(rows: list[Row]) -> None:
    width = max(len(name) for name, _, _ in rows)
    vwidth = max(len(value) for _, value, _ in rows)
    for name, value, note in rows:
        print(f"{name:<{width}}  {value:>{vwidth}}  {note}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small and short")
    parser.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    started = time.monotonic()
    rows = cluster_rows(args.quick)
    print_table(rows)
    say(f"clusterbench: {time.monotonic() - started:.1f} s")
    if args.json:
        args.json.write_text(json.dumps([list(r) for r in rows], indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
