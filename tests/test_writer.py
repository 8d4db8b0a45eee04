"""The writer's selector without select()'s socket cap (Windows), checked here on Linux by
forcing the select()-based implementation with tiny sets."""
from __future__ import annotations

import selectors
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

import transport
from rawclient import RawClient
from transport import ShardedSelector


@pytest.fixture
def pairs() -> Iterator[list[tuple[socket.socket, socket.socket]]]:
    made: list[tuple[socket.socket, socket.socket]] = []
    yield made
    for left, right in made:
        left.close()
        right.close()


def socket_pairs(made: list[tuple[socket.socket, socket.socket]], count: int
                 ) -> list[tuple[socket.socket, socket.socket]]:
    for _ in range(count):
        made.append(socket.socketpair())
    return made[-count:]


def test_sockets_are_spread_over_sets_of_the_given_size(pairs: list[Any]) -> None:
    selector = ShardedSelector(set_size=4)
    try:
        for number, (left, _right) in enumerate(socket_pairs(pairs, 10)):
            selector.register(left, selectors.EVENT_WRITE, number)
        assert [len(shard.get_map()) for shard in selector.shards] == [4, 4, 2]
        ready = selector.select(timeout=5)
        assert sorted(key.data for key, events in ready) == list(range(10))
        assert all(events == selectors.EVENT_WRITE for _key, events in ready)
        with pytest.raises(KeyError):
            selector.register(pairs[0][0], selectors.EVENT_WRITE, "again")
        for left, _right in pairs[:8]:
            selector.unregister(left)
        assert sorted(key.data for key, _ in selector.select(timeout=5)) == [8, 9]
        # Freed room is used again before a new set is made.
        selector.register(pairs[0][0], selectors.EVENT_WRITE, "back")
        assert len(selector.shards) == 3 and len(selector.shards[0].get_map()) == 1
    finally:
        selector.close()


def test_a_wait_wakes_for_a_socket_in_a_later_set(pairs: list[Any]) -> None:
    selector = ShardedSelector(set_size=2)
    try:
        made = socket_pairs(pairs, 5)
        for number, (left, _right) in enumerate(made):
            selector.register(left, selectors.EVENT_READ, number)  # nothing to read yet
        assert len(selector.shards) == 3
        assert selector.select(timeout=0) == []
        last_peer = made[4][1]  # its partner is alone in the third set
        timer = threading.Timer(0.2, last_peer.send, args=(b"x",))
        timer.start()
        try:
            ready = selector.select(timeout=10)  # nothing else will ever be ready
        finally:
            timer.join()
        assert [key.data for key, _ in ready] == [4]
    finally:
        selector.close()


def test_a_set_size_below_one_is_refused() -> None:
    with pytest.raises(ValueError):
        ShardedSelector(set_size=0)


def test_the_writer_serves_slow_clients_spread_over_several_sets(
    monkeypatch: pytest.MonkeyPatch, server_factory: Any, key_pool: Any
) -> None:
    """Readers that stop reading fill their sockets; the writer then watches all of them at
    once, in sets of two, and every message reaches every reader once they read again."""
    made: list[ShardedSelector] = []

    def tiny_sets() -> ShardedSelector:
        made.append(ShardedSelector(set_size=2))
        return made[-1]

    monkeypatch.setattr(transport, "make_write_selector", tiny_sets)
    chat = server_factory(rate=0, outbox_limit=256 * 1024 * 1024)
    readers = []
    for number in range(4):
        reader = RawClient(chat.address)
        reader.sock.close()  # for one whose receive buffer is small from the handshake on
        reader.sock = small_buffer_connection(chat.address)
        reader.login(f"reader{number}", key_pool.get(number))
        readers.append(reader)
    sender = RawClient(chat.address)
    sender.login("sender", key_pool.get(4))
    text = "x" * 7000
    count = 800  # about 5.6 MB for each reader: far more than its sockets buffer
    stop_reading = threading.Event()
    echoes = threading.Thread(target=drain_until, args=(sender, stop_reading), daemon=True)
    echoes.start()
    try:
        for number in range(count):
            sender.send({"type": "message", "text": text, "ref": str(number)})
        received = [0] * len(readers)

        def read_all(number: int) -> None:
            while received[number] < count:
                frame = readers[number].expect(
                    lambda f: f["type"] == "message" and f["user"] == "sender")
                if frame["text"] != text:
                    return
                received[number] += 1

        threads = [threading.Thread(target=read_all, args=(n,)) for n in range(len(readers))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert received == [count] * len(readers)
    finally:
        stop_reading.set()
        for client in (*readers, sender):
            client.close()
        echoes.join(10)
    assert len(made) == 1 and len(made[0].shards) >= 2, [len(s.get_map()) for s in made[0].shards]


def small_buffer_connection(address: tuple[str, int]) -> socket.socket:
    """A connection whose receive buffer (and so TCP window) is small from the start: set
    after the handshake, a smaller buffer makes the kernel drop data already in flight."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(10.0)
    sock.connect(address)
    return sock


def drain_until(client: RawClient, stop: threading.Event) -> None:
    """Read and drop everything (the sender's own echoes) so the sender is no slow consumer."""
    client.sock.settimeout(0.5)
    while not stop.is_set():
        try:
            if not client.sock.recv(1 << 16):
                return
        except TimeoutError:
            continue
        except OSError:
            return
