"""The Gapshape server: it listens, admits connections and holds the shared state.

    python server.py [--host 127.0.0.1] [--port 5050] [--log messageslog.json] ...

The pieces, one module each:
- `transport.py`: each connection's socket, TLS, reader thread and outbox, and the shared
  writer thread; how bytes move (its docstring).
- `session.py`: each connection's login and request handlers.
- `rooms.py`: users, rooms, presence and history (`ChatState`), with no sockets in it.
- `messagelog.py` and `keyregistry.py`: what is kept on disk.

This module has the configuration, the listening socket, admission (connection limits),
start-up and shutdown, and the command line.
"""
from __future__ import annotations

import _thread
import argparse
import collections
import concurrent.futures
import hashlib
import logging
import os
import secrets
import signal
import socket
import ssl
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from errors import GapshapeError, ServerFull
from keyregistry import KeyRegistry
from messagelog import MessageLog
from protocol import DEFAULT_MAX_FRAME_SIZE, encode_frame
from floodcontrol import FloodLedger, RegistrationQuota
from rooms import MAX_NOTE_CHARS, MAX_TEXT_CHARS, ChatState
from transport import BacklogBudget, Connection, Writer
from userstore import MailboxLimits, UserStore

log = logging.getLogger("gapshape.server")

THREAD_STACK_SIZE = 512 * 1024  # readers recurse little; small stacks let 10,000 fit


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 5050
    log_path: Path = Path("messageslog.json")
    registry_path: Path | None = None  # default: keyregistry.json beside the log
    user_store_path: Path | None = None  # default: userstate.sqlite3 beside the log
    queue_per_user: int = 200  # private messages waiting for one offline user
    queue_total: int = 100_000
    queue_bytes: int = 512 * 1024 * 1024
    queue_max_age: float = 7 * 24 * 3600.0  # seconds
    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE
    outbox_limit: int = 4 * 1024 * 1024
    outbox_total: int = 256 * 1024 * 1024  # all outboxes' backlogs together (BacklogBudget)
    ping_interval: float = 30.0
    ping_timeout: float = 15.0
    login_timeout: float = 10.0
    rate: float = 5.0  # frames per second a client may sustain; 0 turns flood control off
    burst: int = 20
    flood_kick_after: float = 30.0  # seconds of backlog (frames ahead of the rate) that disconnect
    max_names_per_key: int = 3
    registrations_per_address: int = 20  # a day
    registrations_per_day: int = 1000
    max_clients: int = 10_000
    max_per_address: int = 100
    tls_cert: Path | None = None
    tls_key: Path | None = None

    @property
    def registry(self) -> Path:
        return self.registry_path or self.log_path.with_name("keyregistry.json")

    @property
    def user_store(self) -> Path:
        return self.user_store_path or self.log_path.with_name("userstate.sqlite3")



class ChatServer:
    """The listening socket, the connections and the shared state."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.tls_context = _make_tls_context(config)
        self.server_id = _server_id(config)
        self.log = MessageLog(config.log_path)
        self.registry = KeyRegistry(config.registry, max_names_per_key=config.max_names_per_key)
        self.registration_lock = threading.Lock()
        self.registrations = RegistrationQuota(config.registrations_per_address,
                                               config.registrations_per_day)
        self.registrations.seed(self.registry.registration_times())
        self.flood = FloodLedger(config.rate, config.burst, kick_after=config.flood_kick_after)
        self.users = UserStore(config.user_store, MailboxLimits(
            config.queue_per_user, config.queue_total, config.queue_bytes, config.queue_max_age))
        self.state = ChatState(self.log, self.users, server_id=self.server_id,
                               registered_name=self._registered_name, limits={
            "rate": config.rate, "burst": config.burst, "max_frame": config.max_frame_size,
            "max_text": MAX_TEXT_CHARS, "max_note": MAX_NOTE_CHARS})
        self.dirty: collections.deque[Connection] = collections.deque()
        self.backlog = BacklogBudget(config.outbox_total)
        self.writer = Writer(self)
        self.stopping = False
        self._connections: set[Connection] = set()
        self._per_ip: collections.Counter[str] = collections.Counter()
        self._conn_lock = threading.Lock()
        self._conn_gone = threading.Condition(self._conn_lock)
        # Closing connections wait for their outbox to empty. One condition for the whole
        # server, touched only while someone waits, keeps an Event out of every connection.
        self._drain_cond = threading.Condition()
        self._drain_waiters = 0
        # RSA work runs here, not on the connection threads: GMP's big-number scratch space
        # lives on the stack, and a thread's stack pages stay resident for its whole life.
        self.crypto_pool = concurrent.futures.ThreadPoolExecutor(2, "gapshape-crypto")
        self._stopped = threading.Event()
        self._listener = socket.create_server((config.host, config.port), backlog=1024)
        self._listener.settimeout(0.2)
        self.address: tuple[str, int] = self._listener.getsockname()[:2]

    def _registered_name(self, name: str) -> str | None:
        entry = self.registry.lookup(name)
        return entry.username if entry is not None else None

    # -- lifecycle ------------------------------------------------------------------------

    def serve_forever(self) -> None:
        """Accept connections until stop(); never dies on an accept error."""
        self.writer.thread.start()
        backoff = 0.05
        while not self.stopping:
            try:
                sock, address = self._listener.accept()
            except socket.timeout:
                continue
            except OSError as exc:
                if self.stopping:
                    break
                # Out of descriptors or memory: wait for some to be freed instead of dying.
                log.warning("accept failed (%s); retrying in %.2f s", exc, backoff)
                self._stopped.wait(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            backoff = 0.05
            self._admit(sock, address)
        self._shutdown()

    def start(self) -> threading.Thread:
        """Serve in a background thread (tests and embedding)."""
        thread = threading.Thread(target=self.serve_forever, name="gapshape-accept", daemon=True)
        thread.start()
        return thread

    def stop(self, timeout: float = 2.0) -> None:
        self.stopping = True
        self._stopped.wait(timeout)

    def _admit(self, sock: socket.socket, address: tuple[str, int]) -> None:
        ip = address[0]
        with self._conn_lock:
            refusal = None
            if len(self._connections) >= self.config.max_clients:
                refusal = "the server is full; try again later"
            elif self._per_ip[ip] >= self.config.max_per_address:
                refusal = "too many connections from your address"
            if refusal is None:
                conn = Connection(self, sock, address)
                self._connections.add(conn)
                self._per_ip[ip] += 1
        if refusal is not None:
            _refuse(sock, ServerFull(refusal), tls=self.tls_context is not None)
            log.info("refused %s:%s: %s", ip, address[1], refusal)
            return
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            # A bare thread, not a threading.Thread: the object, its Event and its entry in
            # threading's tables cost about 2 KiB a client (see docs/PERFORMANCE.md).
            _thread.start_new_thread(conn.run, ())
        except RuntimeError:  # cannot start a thread: out of resources
            log.warning("cannot start a thread for %s; refusing it", conn.peer)
            self.forget(conn)
            sock.close()

    def forget(self, conn: Connection) -> None:
        with self._conn_lock:
            if conn in self._connections:
                self._connections.discard(conn)
                self._per_ip[conn.ip] -= 1
                if self._per_ip[conn.ip] <= 0:
                    del self._per_ip[conn.ip]
                self._conn_gone.notify_all()

    def announce_drained(self) -> None:
        if self._drain_waiters:
            with self._drain_cond:
                self._drain_cond.notify_all()

    def wait_for_drain(self, predicate: Callable[[], bool], timeout: float) -> bool:
        with self._drain_cond:
            self._drain_waiters += 1
            try:
                return self._drain_cond.wait_for(predicate, timeout)
            finally:
                self._drain_waiters -= 1

    def connection_count(self) -> int:
        with self._conn_lock:
            return len(self._connections)

    def flush(self) -> None:
        """Send every outbox with data (each drain writes the log first; module docstring)."""
        dirty = self.dirty
        while dirty:
            try:
                conn = dirty.popleft()
            except IndexError:
                return
            conn.flush()

    def _shutdown(self) -> None:
        """Say goodbye to everyone, let the frames leave, close the log: within 2 s."""
        log.info("shutting down")
        self._listener.close()
        self.state.broadcast_all({"type": "bye", "reason": "server shutting down"})
        self.flush()
        with self._conn_lock:
            connections = list(self._connections)
        deadline = time.monotonic() + 1.0
        for conn in connections:
            conn.wait_drained(max(0.0, deadline - time.monotonic()))
            conn.abort("server shutting down")
        with self._conn_gone:
            self._conn_gone.wait_for(lambda: not self._connections, timeout=0.7)
        self.writer.stop()
        self.crypto_pool.shutdown(wait=False)
        self.log.close()
        self.users.close()
        log.info("stopped")
        self._stopped.set()


def _refuse(sock: socket.socket, error: GapshapeError, tls: bool) -> None:
    """Tell a refused client why, if its socket takes the bytes at once, then close."""
    try:
        if not tls:
            sock.setblocking(False)
            sock.send(encode_frame({"type": "error", "code": error.code, "message": error.message}))
    except OSError:
        pass
    finally:
        sock.close()


def _server_id(config: ServerConfig) -> str:
    """What login proofs are bound to. Under TLS it is the SHA-256 of our certificate, which
    the client computes itself from the certificate it sees: a proof made for one server
    cannot be relayed to another. In plain TCP anyone in the path can relay anything, so a
    random id per run only separates servers."""
    if config.tls_cert is None:
        return secrets.token_hex(8)
    pem = config.tls_cert.read_text("ascii")
    first = pem[pem.index("-----BEGIN CERTIFICATE-----"):]
    first = first[: first.index("-----END CERTIFICATE-----") + len("-----END CERTIFICATE-----")]
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(first)).hexdigest()


def _make_tls_context(config: ServerConfig) -> ssl.SSLContext | None:
    if config.tls_cert is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(config.tls_cert), str(config.tls_key or config.tls_cert))
    return context


def raise_fd_limit() -> None:
    """Each client holds a descriptor; lift the soft limit as far as the hard one allows."""
    try:
        import resource
    except ImportError:  # Windows has no such limit to raise
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else 1_048_576
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            pass


def limit_malloc_arenas(arenas: int = 2) -> None:
    """glibc gives busy threads malloc arenas of their own, up to 8 per core, and each keeps
    freed memory of its own. With one thread per client, a couple of shared arenas cost
    less memory per client for no measurable speed (docs/PERFORMANCE.md). This is what the
    MALLOC_ARENA_MAX environment variable does; elsewhere than glibc it does nothing."""
    if not sys.platform.startswith("linux") or "MALLOC_ARENA_MAX" in os.environ:
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return
    M_ARENA_MAX = -8
    mallopt(M_ARENA_MAX, arenas)


def build_parser() -> argparse.ArgumentParser:
    d = ServerConfig()
    p = argparse.ArgumentParser(description="Gapshape chat server.")
    p.add_argument("--host", default=d.host, help="address to listen on (default %(default)s)")
    p.add_argument("--port", type=int, default=d.port, help="TCP port; 0 picks a free one (default %(default)s)")
    p.add_argument("--log", type=Path, default=d.log_path, help="message log, JSON Lines (default %(default)s)")
    p.add_argument("--registry", type=Path, help="username -> key registry (default: keyregistry.json beside the log)")
    p.add_argument("--user-store", type=Path, help="users' rooms and waiting private messages, SQLite (default: userstate.sqlite3 beside the log)")
    p.add_argument("--queue-per-user", type=int, default=d.queue_per_user, help="private messages kept for one offline user (default %(default)s)")
    p.add_argument("--queue-total", type=int, default=d.queue_total, help="private messages kept for all offline users (default %(default)s)")
    p.add_argument("--queue-bytes", type=int, default=d.queue_bytes, help="bytes of private messages kept for all offline users (default %(default)s)")
    p.add_argument("--queue-max-age", type=float, default=d.queue_max_age, help="seconds a private message waits for its recipient before it is given up (default %(default)s: 7 days)")
    p.add_argument("--max-frame", type=int, default=d.max_frame_size, help="largest frame accepted, bytes (default %(default)s)")
    p.add_argument("--outbox-limit", type=int, default=d.outbox_limit, help="bytes queued for one client before it is dropped as a slow consumer (default %(default)s)")
    p.add_argument("--outbox-total", type=int, default=d.outbox_total, help="bytes waiting in all outboxes together (beyond 64 KiB each) before slow consumers are dropped (default %(default)s)")
    p.add_argument("--ping-interval", type=float, default=d.ping_interval, help="seconds of silence before the server pings a client (default %(default)s)")
    p.add_argument("--ping-timeout", type=float, default=d.ping_timeout, help="seconds to wait for any answer to a ping (default %(default)s)")
    p.add_argument("--login-timeout", type=float, default=d.login_timeout, help="seconds a new connection has to log in (default %(default)s)")
    p.add_argument("--rate", type=float, default=d.rate, help="frames per second a client may sustain; 0 = no flood control (default %(default)s)")
    p.add_argument("--burst", type=int, default=d.burst, help="frames a client may send at once above the rate (default %(default)s)")
    p.add_argument("--flood-kick-after", type=float, default=d.flood_kick_after, help="a client whose frames are this many seconds ahead of the rate is disconnected (default %(default)s)")
    p.add_argument("--max-names-per-key", type=int, default=d.max_names_per_key, help="usernames one key may register; 0 = no limit (default %(default)s)")
    p.add_argument("--registrations-per-address", type=int, default=d.registrations_per_address, help="new usernames one IP address may register in 24 hours; 0 = no limit (default %(default)s)")
    p.add_argument("--registrations-per-day", type=int, default=d.registrations_per_day, help="new usernames the server registers in 24 hours; 0 = no limit (default %(default)s)")
    p.add_argument("--max-clients", type=int, default=d.max_clients, help="connections the server holds at once (default %(default)s)")
    p.add_argument("--max-per-address", type=int, default=d.max_per_address, help="connections from one IP address (default %(default)s)")
    p.add_argument("--tls-cert", type=Path, help="PEM certificate chain: serve TLS")
    p.add_argument("--tls-key", type=Path, help="PEM private key of --tls-cert (if not in the same file)")
    p.add_argument("--forget-user", metavar="NAME", help="operator: remove NAME's key registration (lost key) and exit")
    p.add_argument("--verbose", action="store_true", help="debug logging")
    return p


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    return ServerConfig(
        host=args.host, port=args.port, log_path=args.log, registry_path=args.registry,
        user_store_path=args.user_store, queue_per_user=args.queue_per_user,
        queue_total=args.queue_total, queue_bytes=args.queue_bytes,
        queue_max_age=args.queue_max_age,
        max_frame_size=args.max_frame, outbox_limit=args.outbox_limit,
        outbox_total=args.outbox_total,
        ping_interval=args.ping_interval, ping_timeout=args.ping_timeout,
        login_timeout=args.login_timeout, rate=args.rate, burst=args.burst,
        flood_kick_after=args.flood_kick_after, max_names_per_key=args.max_names_per_key,
        registrations_per_address=args.registrations_per_address,
        registrations_per_day=args.registrations_per_day,
        max_clients=args.max_clients, max_per_address=args.max_per_address,
        tls_cert=args.tls_cert, tls_key=args.tls_key,
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s.%(msecs)03d %(levelname)s %(message)s", datefmt="%Y-%m-%d %H:%M:%S",
    )
    # Thread names are not in our format, and asking for one on a bare connection thread
    # would make threading keep a dummy Thread object for it.
    logging.logThreads = False
    config = config_from_args(args)
    if args.forget_user:
        removed = KeyRegistry(config.registry).forget(args.forget_user)
        print(f"{args.forget_user}: {'registration removed' if removed else 'was not registered'}")
        return 0
    raise_fd_limit()
    limit_malloc_arenas()
    threading.stack_size(THREAD_STACK_SIZE)
    server = ChatServer(config)
    host, port = server.address
    scheme = "TLS" if server.tls_context else "plain TCP"
    print(f"Gapshape server listening on {host}:{port} ({scheme})", flush=True)

    def request_stop(signum: int, _frame: Any) -> None:
        server.stopping = True

    signal.signal(signal.SIGINT, request_stop)
    if hasattr(signal, "SIGTERM"):
        signal.signal(signal.SIGTERM, request_stop)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
