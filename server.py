"""The Gapshape server: it listens, admits connections and holds the shared state.

    python server.py [--host 127.0.0.1] [--port 5050] [--log messageslog.json] ...

The pieces, one module each:
- `transport.py`: each connection's socket, TLS, reader thread and outbox, and the shared
  writer thread; how bytes move (its docstring).
- `session.py`: each connection's login and request handlers.
- `rooms.py`: users, rooms, presence and history (`ChatState`), with no sockets in it.
- `messagelog.py` and `keyregistry.py`: what is kept on disk.
- `verifier.py`: login proofs checked in a child process, off this process's GIL.
- `processlimits.py`: the descriptor limit and malloc arenas asked of the system at start.

This module has the configuration, the listening socket, admission (connection limits),
start-up and shutdown, and the command line.
"""
from __future__ import annotations

import _thread
import argparse
import collections
import dataclasses
import errno
import hashlib
import logging
import logging.handlers
import math
import os
import secrets
import signal
import socket
import ssl
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, NoReturn, cast

from errors import ClusterUnavailable, GapshapeError, ServerFull
from fanout import FanOutSender
from floodcontrol import FloodLedger, RegistrationQuota
from gapshape_version import __version__
from keyregistry import KeyRegistry, KeyRegistryError
from messagelog import HISTORY_BUDGET, MessageLog, decode_line
from processlimits import limit_malloc_arenas, raise_fd_limit
from protocol import DEFAULT_MAX_FRAME_SIZE, encode_frame
from rooms import MAX_NOTE_CHARS, MAX_TEXT_CHARS, ChatState
from transport import BacklogBudget, Connection, Writer
from userstore import MailboxLimits, UserStore
from verifier import LoginVerifier, default_processes

if TYPE_CHECKING:
    from cluster import ClusterChat
    from clusterlink import RedisLink

log = logging.getLogger("gapshape.server")

THREAD_STACK_SIZE = 512 * 1024  # readers recurse little; small stacks let 10,000 fit


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 5050
    log_path: Path = Path("messageslog.json")
    registry_path: Path | None = None  # default: keyregistry.json beside the log
    user_store_path: Path | None = None  # default: userstate.sqlite3 beside the log
    history_budget: int = HISTORY_BUDGET  # bytes of room history the log keeps in memory
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
    redis_url: str | None = None  # a node of the cluster sharing this Redis (cluster.py)
    node_id: str | None = None  # default: host-pid-random
    reuse_port: bool = False  # SO_REUSEPORT: several processes on one port
    # Processes that check login proofs (verifier.py); 0: a thread of the server's own.
    verify_processes: int = dataclasses.field(default_factory=default_processes)

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
        self.log = MessageLog(config.log_path, history_budget=config.history_budget)
        self.registration_lock = threading.Lock()
        limits = MailboxLimits(config.queue_per_user, config.queue_total, config.queue_bytes,
                               config.queue_max_age)
        if config.redis_url is None:
            self.registry: Any = KeyRegistry(config.registry,
                                             max_names_per_key=config.max_names_per_key)
            self.registrations = RegistrationQuota(config.registrations_per_address,
                                                   config.registrations_per_day)
            self.flood = FloodLedger(config.rate, config.burst,
                                     kick_after=config.flood_kick_after)
            self.users: Any = UserStore(config.user_store, limits)
            self.registrations.seed(self.registry.registration_times())
        else:  # a cluster node: what must hold cluster-wide lives in Redis (redisstores.py)
            from clusterlink import open_shared_stores

            self.registry, self.registrations, self.flood, self.users = open_shared_stores(
                config, limits)  # seeds the quota only if Redis lost its window
        self.fan_out = FanOutSender(self.log)  # its helper thread shares big rooms' sends
        options: dict[str, Any] = {"server_id": self.server_id, "fan_out": self.fan_out,
                                   "registered_name": self._registered_name, "limits": {
            "rate": config.rate, "burst": config.burst, "max_frame": config.max_frame_size,
            "max_text": MAX_TEXT_CHARS, "max_note": MAX_NOTE_CHARS}}
        self.link: RedisLink | None = None
        if config.redis_url is None:
            self.state = ChatState(self.log, self.users, **options)
        else:  # a node of a cluster: the state's changes go through Redis (cluster.py)
            from cluster import ClusterChat
            from clusterlink import RedisLink

            self.link = RedisLink(config.redis_url, config.node_id)
            self.state = ClusterChat(self.link, self.log, self.users, **options)
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
        self._stopped = threading.Event()
        self._listener = socket.create_server((config.host, config.port), backlog=1024,
                                              reuse_port=config.reuse_port)
        self._listener.settimeout(0.2)
        self.address: tuple[str, int] = self._listener.getsockname()[:2]
        # Login proofs are checked in a child process: the RSA work of a login storm then
        # runs on another core, and not under the GIL the reader threads need. Started
        # once the port is ours, so a start-up mistake leaves no process behind.
        self.verifier = LoginVerifier(config.verify_processes)
        if self.link is not None:
            self.link.flush = self.flush
            try:
                self.link.start(cast("ClusterChat", self.state), self.log.next_id)
            except Exception:
                self._listener.close()
                self.verifier.close()
                self.fan_out.stop()
                raise

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
            except TimeoutError:
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
        self.fan_out.stop()
        self.verifier.close()
        if self.link is not None:
            self.link.stop()
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


FD_RESERVE = 50  # descriptors kept for the log, the registry, the listener, the writer, stdio


def fit_descriptor_limit(config: ServerConfig, fd_limit: int | None) -> ServerConfig:
    """Say how many clients the descriptor limit allows, and hold --max-clients to it."""
    if fd_limit is None:
        log.info("no descriptor limit here: up to --max-clients %d clients", config.max_clients)
        return config
    capacity = fd_limit - FD_RESERVE
    if capacity < 1:
        # No room for a reserve: serve as many as fit; accept() then fails and backs off.
        log.warning(
            "descriptor limit %d: only a few clients, and new ones wait while it is used up "
            "(raise it above %d with ulimit -n, or LimitNOFILE= in a systemd unit)",
            fd_limit, FD_RESERVE)
        return config
    log.info("descriptor limit %d: about %d clients", fd_limit, capacity)
    if config.max_clients <= capacity:
        return config
    log.warning(
        "--max-clients %d is more than the descriptor limit %d allows: holding at most %d "
        "clients (raise it with ulimit -n, or LimitNOFILE= in a systemd unit)",
        config.max_clients, fd_limit, capacity)
    return dataclasses.replace(config, max_clients=capacity)


# -- the command line ---------------------------------------------------------------------

LOG_FORMAT = "%(asctime)s.%(msecs)03d %(levelname)s %(message)s"
LOG_DATE_FORMAT = "%Y-%m-%d %H:%M:%S"


class StartupError(Exception):
    """An operator's mistake found at start-up. The message is one line that names the file
    or value and says what to do; main() prints it and exits with status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line (it exits with status 2, as main() does)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _whole_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


def _finite_number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def port_number(text: str) -> int:
    value = _whole_number(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text} is not a TCP port: use 0 to 65535")
    return value


def whole_number(text: str) -> int:
    """0 or more (0 turns a limit off)."""
    value = _whole_number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative: use 0 (no limit) or more")
    return value


def at_least_one(text: str) -> int:
    value = _whole_number(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is too small: use 1 or more")
    return value


MIN_FRAME_SIZE = 1024  # a login's hello carries a 3072-bit key: about 700 bytes


def frame_size(text: str) -> int:
    value = _whole_number(text)
    if value < MIN_FRAME_SIZE:
        raise argparse.ArgumentTypeError(
            f"{text} bytes cannot hold a login: use {MIN_FRAME_SIZE} or more")
    return value


def seconds(text: str) -> float:
    value = _finite_number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} is not a duration: use a number of seconds above 0")
    return value


def rate(text: str) -> float:
    value = _finite_number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative: use 0 (no flood control) or more")
    return value


def build_parser() -> argparse.ArgumentParser:
    d = ServerConfig()
    p = _Parser(description="Gapshape chat server.")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument("--host", default=d.host, help="address to listen on (default %(default)s)")
    p.add_argument("--port", type=port_number, default=d.port, help="TCP port; 0 picks a free one (default %(default)s)")
    p.add_argument("--log", type=Path, default=d.log_path, help="message log, JSON Lines (default %(default)s)")
    p.add_argument("--registry", type=Path, help="username -> key registry (default: keyregistry.json beside the log)")
    p.add_argument("--history-budget", type=at_least_one, default=d.history_budget, help="bytes of room history kept in memory; rooms used least lately are read back from disk (default %(default)s)")
    p.add_argument("--user-store", type=Path, help="users' rooms and waiting private messages, SQLite (default: userstate.sqlite3 beside the log)")
    p.add_argument("--queue-per-user", type=at_least_one, default=d.queue_per_user, help="private messages kept for one offline user (default %(default)s)")
    p.add_argument("--queue-total", type=at_least_one, default=d.queue_total, help="private messages kept for all offline users (default %(default)s)")
    p.add_argument("--queue-bytes", type=at_least_one, default=d.queue_bytes, help="bytes of private messages kept for all offline users (default %(default)s)")
    p.add_argument("--queue-max-age", type=seconds, default=d.queue_max_age, help="seconds a private message waits for its recipient before it is given up (default %(default)s: 7 days)")
    p.add_argument("--max-frame", type=frame_size, default=d.max_frame_size, help="largest frame accepted, bytes (default %(default)s)")
    p.add_argument("--outbox-limit", type=at_least_one, default=d.outbox_limit, help="bytes queued for one client before it is dropped as a slow consumer (default %(default)s)")
    p.add_argument("--outbox-total", type=at_least_one, default=d.outbox_total, help="bytes waiting in all outboxes together (beyond 64 KiB each) before slow consumers are dropped (default %(default)s)")
    p.add_argument("--ping-interval", type=seconds, default=d.ping_interval, help="seconds of silence before the server pings a client (default %(default)s)")
    p.add_argument("--ping-timeout", type=seconds, default=d.ping_timeout, help="seconds to wait for any answer to a ping (default %(default)s)")
    p.add_argument("--login-timeout", type=seconds, default=d.login_timeout, help="seconds a new connection has to log in (default %(default)s)")
    p.add_argument("--rate", type=rate, default=d.rate, help="frames per second a client may sustain; 0 = no flood control (default %(default)s)")
    p.add_argument("--burst", type=at_least_one, default=d.burst, help="frames a client may send at once above the rate (default %(default)s)")
    p.add_argument("--flood-kick-after", type=seconds, default=d.flood_kick_after, help="a client whose frames are this many seconds ahead of the rate is disconnected (default %(default)s)")
    p.add_argument("--max-names-per-key", type=whole_number, default=d.max_names_per_key, help="usernames one key may register; 0 = no limit (default %(default)s)")
    p.add_argument("--registrations-per-address", type=whole_number, default=d.registrations_per_address, help="new usernames one IP address may register in 24 hours; 0 = no limit (default %(default)s)")
    p.add_argument("--registrations-per-day", type=whole_number, default=d.registrations_per_day, help="new usernames the server registers in 24 hours; 0 = no limit (default %(default)s)")
    p.add_argument("--max-clients", type=at_least_one, default=d.max_clients, help="connections the server holds at once (default %(default)s)")
    p.add_argument("--verify-processes", type=whole_number, default=d.verify_processes, help="processes that check login proofs, beside the server's own; 0 = a thread of the server's (default %(default)s: one per core beyond the first, at most 4)")
    p.add_argument("--max-per-address", type=at_least_one, default=d.max_per_address, help="connections from one IP address (default %(default)s)")
    p.add_argument("--tls-cert", type=Path, help="PEM certificate chain: serve TLS")
    p.add_argument("--tls-key", type=Path, help="PEM private key of --tls-cert (if not in the same file)")
    p.add_argument("--redis", metavar="URL", default=os.environ.get("GAPSHAPE_REDIS") or None, help="redis://HOST:PORT/DB: be a node of the cluster sharing this Redis (default: $GAPSHAPE_REDIS; none: a single server)")
    p.add_argument("--node-id", help="this node's name in the cluster (default: host-pid-random)")
    p.add_argument("--reuse-port", action="store_true", help="SO_REUSEPORT: let several server processes listen on the same port (Linux, BSD)")
    p.add_argument("--console-log", type=Path, metavar="FILE", help="write the console log to FILE instead of stderr; SIGHUP reopens it (logrotate)")
    p.add_argument("--forget-user", metavar="NAME", help="operator: remove NAME's key registration (lost key) and exit")
    p.add_argument("--verbose", action="store_true", help="debug logging, and tracebacks with start-up errors")
    return p


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    return ServerConfig(
        host=args.host, port=args.port, log_path=args.log, registry_path=args.registry,
        user_store_path=args.user_store, history_budget=args.history_budget,
        queue_per_user=args.queue_per_user,
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
        verify_processes=args.verify_processes, tls_cert=args.tls_cert, tls_key=args.tls_key,
        redis_url=args.redis, node_id=args.node_id, reuse_port=args.reuse_port,
    )


# -- start-up -----------------------------------------------------------------------------

def setup_logging(console_log: Path | None, verbose: bool) -> logging.Handler:
    """The console log on stderr, or in `console_log` (a WatchedFileHandler: logrotate may
    move it; SIGHUP reopens it, see `reopen_on_sighup`)."""
    handler: logging.Handler
    if console_log is None:
        handler = logging.StreamHandler()
    else:
        try:
            handler = logging.handlers.WatchedFileHandler(console_log, encoding="utf-8")
        except OSError as exc:
            raise StartupError(
                f"cannot write --console-log {console_log}: {exc.strerror}: check that its "
                "folder exists and that the server may write there") from exc
    handler.setFormatter(logging.Formatter(LOG_FORMAT, LOG_DATE_FORMAT))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler],
                        force=True)
    # Thread names are not in our format, and asking for one on a bare connection thread
    # would make threading keep a dummy Thread object for it.
    logging.logThreads = False
    return handler


def reopen_on_sighup(handler: logging.Handler) -> None:
    """SIGHUP reopens a console log file, so that logrotate can move it away."""
    if not isinstance(handler, logging.handlers.WatchedFileHandler) or not hasattr(signal, "SIGHUP"):
        return

    def reopen() -> None:
        try:
            stream = open(handler.baseFilename, "a", encoding="utf-8")
        except OSError as exc:
            log.error("SIGHUP: cannot reopen the console log %s: %s; writing on in the old file",
                      handler.baseFilename, exc.strerror)
            return
        old = handler.setStream(stream)
        if old is not None:
            old.close()
        log.info("SIGHUP: console log reopened")

    def on_sighup(signum: int, _frame: Any) -> None:
        # Not in the handler itself: the main thread may be inside the log handler's lock.
        threading.Thread(target=reopen, name="gapshape-sighup", daemon=True).start()

    signal.signal(signal.SIGHUP, on_sighup)


def check_files(config: ServerConfig) -> None:
    """Refuse, with a StartupError naming it, any file the server could not use."""
    _check_data_file(config.log_path, "--log")
    _check_is_gapshape_log(config.log_path)
    _check_data_file(config.registry, "--registry" if config.registry_path else
                     "--registry (beside --log)")
    if config.tls_key is not None and config.tls_cert is None:
        raise StartupError(f"--tls-key {config.tls_key} needs --tls-cert: give both, or neither")
    if config.tls_cert is not None:
        _check_tls_files(config.tls_cert, config.tls_key)


def _check_data_file(path: Path, option: str) -> None:
    folder = path.parent
    if not folder.is_dir():
        raise StartupError(f"{option} {path}: the folder {folder} does not exist: create it, "
                           "or choose another path")
    if path.is_dir():
        raise StartupError(f"{option} {path} is a folder: give a file name")
    if path.exists() and not os.access(path, os.R_OK | os.W_OK):
        raise StartupError(f"{option} {path}: not readable and writable by this user: check "
                           "its owner and permissions")
    if not path.exists() and not os.access(folder, os.W_OK | os.X_OK):
        raise StartupError(f"{option} {path}: cannot create files in {folder}: check its owner "
                           "and permissions, or choose another path")


LOG_SNIFF_SIZE = 1 << 20  # a log record is far shorter than this: its first line is here


def _check_is_gapshape_log(path: Path) -> None:
    """A non-empty --log must begin with a Gapshape record: the server appends to it and
    cuts off what it cannot read, so it must not be handed someone else's file."""
    try:
        with open(path, "rb") as file:
            head = file.read(LOG_SNIFF_SIZE)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise StartupError(f"cannot read --log {path}: {exc.strerror}") from exc
    if not head:
        return
    first, newline, _ = head.partition(b"\n")
    record = decode_line(first) if newline else None
    ours = (isinstance(record, dict) and isinstance(record.get("event"), str)
            and isinstance(record.get("time"), str))
    # A first line without its newline is a torn first write, which the log repairs itself.
    torn_first_write = not newline and len(head) < LOG_SNIFF_SIZE and head.startswith(b'{"')
    if not ours and not torn_first_write:
        raise StartupError(f"--log {path} is not a Gapshape message log (its first line is not "
                           "a log record): choose another file, or move this one away")


def _check_tls_files(cert: Path, key: Path | None) -> None:
    for option, path in (("--tls-cert", cert), ("--tls-key", key)):
        if path is None:
            continue
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise StartupError(f"cannot read {option} {path}: {exc.strerror}: check the path "
                               "and that the server may read it") from exc
        if option == "--tls-cert" and b"-----BEGIN CERTIFICATE-----" not in data:
            raise StartupError(f"--tls-cert {path} holds no PEM certificate (-----BEGIN "
                               "CERTIFICATE-----): give the certificate chain file")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)

    def no_passphrase() -> bytes:
        raise StartupError(f"the TLS key {key or cert} is protected by a passphrase: give the "
                           "server an unencrypted key file that only it can read")

    try:
        context.load_cert_chain(str(cert), str(key or cert), password=no_passphrase)
    except ssl.SSLError as exc:
        raise StartupError(
            f"cannot use --tls-cert {cert} with the key {key or cert}: {exc.reason or exc}: both "
            "must be PEM files, and the key must be the certificate's") from exc


def start_server(config: ServerConfig) -> ChatServer:
    """Check the configuration and open the server, or raise StartupError saying why not."""
    check_files(config)
    config = fit_descriptor_limit(config, raise_fd_limit())
    limit_malloc_arenas()
    threading.stack_size(THREAD_STACK_SIZE)
    if config.reuse_port and not hasattr(socket, "SO_REUSEPORT"):
        raise StartupError("--reuse-port: this platform has no SO_REUSEPORT; run the "
                           "processes on different ports behind haproxy (deploy/README.md)")
    from cluster import ClusterStartError

    try:
        return ChatServer(config)
    except ClusterStartError as exc:
        raise StartupError(f"{exc}: check the --redis URL and that redis-server runs") from exc
    except ClusterUnavailable as exc:
        raise StartupError(f"--redis {config.redis_url}: {exc.message}") from exc
    except KeyRegistryError as exc:
        raise StartupError(str(exc)) from exc
    except OSError as exc:
        raise StartupError(_describe_os_error(exc, config)) from exc


# What binding to an address this machine does not have fails with (create_server hands a
# name that does not resolve on as a plain OSError with the resolver's code).
_NOT_HERE = {errno.EADDRNOTAVAIL, socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)}


def _describe_os_error(exc: OSError, config: ServerConfig) -> str:
    where = f"{config.host}:{config.port}"
    if exc.filename is not None:
        return f"cannot open {exc.filename}: {exc.strerror}"
    if exc.errno == errno.EADDRINUSE:
        return (f"cannot listen on {where}: the address is already in use (another server?): "
                "stop that program, or choose another --port")
    if exc.errno == errno.EACCES:
        return (f"cannot listen on {where}: permission denied (ports below 1024 need "
                "privileges): choose another --port")
    if exc.errno in _NOT_HERE or isinstance(exc, socket.gaierror):
        return (f"cannot listen on {where}: {config.host} is not an address of this machine: "
                "use 127.0.0.1, 0.0.0.0 or one of its addresses or names")
    return f"cannot start the server on {where}: {exc.strerror or exc}"


def forget_user(config: ServerConfig, username: str) -> int:
    try:
        if config.redis_url is not None:  # the cluster's registry: every node at once
            import redisstores

            removed = redisstores.forget_user(config.redis_url, username)
        else:
            removed = KeyRegistry(config.registry).forget(username)
    except (KeyRegistryError, ValueError) as exc:
        raise StartupError(str(exc)) from exc
    except ClusterUnavailable as exc:
        raise StartupError(f"--forget-user: {exc.message} (Redis at {config.redis_url})") from exc
    print(f"{username}: {'registration removed' if removed else 'was not registered'}")
    return 0


def report_startup_error(prog: str, exc: StartupError, verbose: bool) -> int:
    if verbose:
        traceback.print_exception(exc)
    print(f"{prog}: {exc}", file=sys.stderr, flush=True)
    return 2


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        handler = setup_logging(args.console_log, args.verbose)
        config = config_from_args(args)
        if args.forget_user:
            return forget_user(config, args.forget_user)
        server = start_server(config)
    except StartupError as exc:
        return report_startup_error(parser.prog, exc, args.verbose)

    def request_stop(signum: int, _frame: Any) -> None:
        server.stopping = True

    # Every handler is in place before the line that tells supervisors (and tests) we run.
    signal.signal(signal.SIGINT, request_stop)
    if hasattr(signal, "SIGTERM"):
        signal.signal(signal.SIGTERM, request_stop)
    reopen_on_sighup(handler)
    host, port = server.address
    scheme = "TLS" if server.tls_context else "plain TCP"
    print(f"Gapshape server listening on {host}:{port} ({scheme})", flush=True)
    server.serve_forever()
    return 0

if __name__ == "__main__":
    sys.exit(main())
