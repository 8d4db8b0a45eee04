"""Shared fixtures: RSA identity keys are slow to make, so a session-wide pool hands them out."""
from __future__ import annotations

import multiprocessing
import os
import sys
import threading
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest
from Crypto.PublicKey import RSA

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


PRESET_KEYS = 7  # tests name pool indices 0-6 directly (5 and 6 as "someone else's key")


class KeyPool:
    """RSA-3072 keys, made once per test session and reused by index.

    The `key_pool` fixture makes the first PRESET_KEYS before the test that first asks for
    it begins, on every core. Made on demand, a key could be generated while a test holds a
    raw connection that has not logged in yet (`RawPeer(address).login(name, pool.get(n))`
    connects first), and RSA-3072 generation varies enough (two keys once took 11 s on CI)
    to outlast the server's 10 s login timeout. Indices beyond the preset are made on
    demand."""

    def __init__(self) -> None:
        self._keys: list[RSA.RsaKey] = []
        self._lock = threading.Lock()

    def get(self, index: int) -> RSA.RsaKey:
        with self._lock:
            if not self._keys:
                self._keys = _generate_keys(PRESET_KEYS)
            while len(self._keys) <= index:
                self._keys.append(RSA.generate(3072))
            return self._keys[index]


def _new_key_der(_: int) -> bytes:
    return RSA.generate(3072).export_key(format="DER")  # RsaKey itself does not pickle


def _generate_keys(count: int) -> list[RSA.RsaKey]:
    # spawn, not fork: tests may have server threads running when the pool is first used.
    context = multiprocessing.get_context("spawn")
    workers = max(1, min(count, os.cpu_count() or 1))
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        return [RSA.import_key(der) for der in pool.map(_new_key_der, range(count))]


_POOL = KeyPool()


@pytest.fixture(scope="session")
def key_pool() -> KeyPool:
    _POOL.get(PRESET_KEYS - 1)  # now, not inside the test (the class docstring says why)
    return _POOL


# Private keys of three people, for tests of the cryptography itself.
@pytest.fixture(scope="session")
def alice(key_pool: KeyPool) -> RSA.RsaKey:
    return key_pool.get(0)


@pytest.fixture(scope="session")
def bob(key_pool: KeyPool) -> RSA.RsaKey:
    return key_pool.get(1)


@pytest.fixture(scope="session")
def carol(key_pool: KeyPool) -> RSA.RsaKey:
    return key_pool.get(2)


# The registered public keys (DER) of two people, for the key registry's tests.
@pytest.fixture(scope="session")
def der_a(key_pool: KeyPool) -> bytes:
    from auth import public_key_der

    return public_key_der(key_pool.get(0))


@pytest.fixture(scope="session")
def der_b(key_pool: KeyPool) -> bytes:
    from auth import public_key_der

    return public_key_der(key_pool.get(1))


# -- a live server and clients over real sockets --------------------------------------------

import itertools  # noqa: E402
from typing import Any, Callable, Iterator  # noqa: E402

WAIT = 10.0  # seconds any single expected event may take before a test fails


class Recorder:
    """Collects a client's events; tests wait on them with a timeout (never a fixed sleep)."""

    def __init__(self) -> None:
        self.events: list[Any] = []
        self._cond = threading.Condition()

    def __call__(self, event: Any) -> None:
        with self._cond:
            self.events.append(event)
            self._cond.notify_all()

    def wait_for(self, match: Callable[[Any], bool] | type, timeout: float = WAIT,
                 after: int = 0) -> Any:
        """The first event (from index `after` on) that matches; fail after `timeout`."""
        test = (lambda e: isinstance(e, match)) if isinstance(match, type) else match
        with self._cond:
            found = self._cond.wait_for(
                lambda: next((e for e in self.events[after:] if test(e)), None), timeout)
        if found is None:
            raise AssertionError(f"no matching event within {timeout}s; got {self.events!r}")
        return found

    def mark(self) -> int:
        with self._cond:
            return len(self.events)

    def of_type(self, kind: type) -> list[Any]:
        with self._cond:
            return [e for e in self.events if isinstance(e, kind)]


@pytest.fixture(autouse=True)
def close_raw_clients() -> Iterator[None]:
    """Close the raw protocol sockets a test left open (they would leak until collected)."""
    yield
    from rawclient import RawClient

    for client in list(RawClient.open_clients):
        client.close()


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """Start in-process servers on 127.0.0.1, port 0; all are stopped at teardown."""
    from server import ChatServer, ServerConfig

    servers: list[ChatServer] = []

    def start(**overrides: Any) -> ChatServer:
        options: dict[str, Any] = {"host": "127.0.0.1", "port": 0,
                                   "log_path": tmp_path / "messageslog.json"}
        options.update(overrides)
        chat = ChatServer(ServerConfig(**options))
        chat.start()
        servers.append(chat)
        return chat

    yield start
    for chat in servers:
        chat.stop()


@pytest.fixture
def chat_server(server_factory: Callable[..., Any]) -> Any:
    return server_factory()


_key_numbers = itertools.count()


@pytest.fixture
def client_factory(tmp_path: Path, key_pool: KeyPool) -> Iterator[Callable[..., Any]]:
    """connect(server, "alice") -> a logged-in ChatClient whose `.recorder` holds its events.

    Each username gets its own data directory and, unless `key` is given, a pooled key of
    its own (the pool is shared by the whole session, so keys are made once). Keys 5 and 6
    serve as "someone else's key" in tests: reusing them keeps key generation to a few."""
    from client import ChatClient

    clients: list[Any] = []
    assigned: dict[str, int] = {}

    def connect(chat: Any, username: str, *, key: int | None = None, home: str | None = None,
                **options: Any) -> Any:
        """`home` names the user's data directory (default: the username); another home is
        another device, with its own key file and pins."""
        index = key if key is not None else assigned.setdefault(username, len(assigned))
        recorder = Recorder()
        data_dir = tmp_path / "clients" / (home or username)
        client = ChatClient(username, *chat.address, data_dir=data_dir,
                            ident=make_identity(data_dir, username, key_pool.get(index)),
                            on_event=recorder, **options)
        client.recorder = recorder
        client.welcome = client.connect()
        clients.append(client)
        return client

    yield connect
    for client in clients:
        client.close()


def make_identity(data_dir: Path, username: str, key: RSA.RsaKey) -> Any:
    import identity

    return identity.load_or_create_identity(data_dir, username, new_key=lambda: key)


@pytest.fixture
def proxies() -> Iterator[Callable[..., Any]]:
    """proxies(server, transform) -> a rewriting proxy in front of `server` (tests/mitm.py),
    standing in for a malicious server; all are closed at teardown."""
    from mitm import FrameProxy

    made: list[FrameProxy] = []

    def make(server: Any, transform: Callable[..., Any]) -> FrameProxy:
        proxy = FrameProxy(server.address, transform)
        made.append(proxy)
        return proxy

    yield make
    for proxy in made:
        proxy.close()


# -- a real redis-server, for the cluster engine --------------------------------------------

from redisserver import RedisServer, redis_server_binary  # noqa: E402


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A fresh redis-server on a free loopback port; skipped when Debian's package is absent."""
    if redis_server_binary() is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server); CI has it")
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.kill()
