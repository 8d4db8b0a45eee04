"""Measure what the Redis stores cost: commands per call and memory per item.

    python tools/redis_costs.py

Starts its own redis-server (Debian's package) on a free loopback port in a temporary
directory, like the tests, and prints the figures docs/CLUSTER.md and docs/SECURITY.md
quote: the commands each store call makes Redis run (`total_commands_processed`, which
counts the commands inside a script too, and `INFO commandstats`), and `used_memory` per
waiting message, user, receipt, registration and flood bucket.
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from Crypto.PublicKey import RSA  # noqa: E402

from auth import public_key_der  # noqa: E402
from redisflood import RedisFloodLedger, RedisRegistrationQuota  # noqa: E402
from redisserver import RedisServer  # noqa: E402
from redisstores import RedisKeyRegistry, RedisMemberStore, connect  # noqa: E402
from userstore import MailboxLimits  # noqa: E402


def commands(redis: Any, label: str, call: Callable[[], object]) -> None:
    """Print the commands `call` made Redis run (INFO itself excluded)."""
    def snapshot() -> tuple[dict[str, int], int]:
        stats = {name[len("cmdstat_"):]: value["calls"]
                 for name, value in redis.info("commandstats").items()}
        return stats, int(redis.info("stats")["total_commands_processed"])
    before, total_before = snapshot()
    call()
    after, total_after = snapshot()
    ran = {name: n - before.get(name, 0) for name, n in after.items()
           if n != before.get(name, 0) and name != "info"}
    print(f"  {label:34s} {total_after - total_before - 2:3d} commands  {ran}")


def memory(redis: Any, label: str, count: int, fill: Callable[[], object],
           less: int = 0) -> None:
    before = int(redis.info("memory")["used_memory"])
    fill()
    grown = int(redis.info("memory")["used_memory"]) - before
    print(f"  {label:44s} {grown / count - less:8.0f} bytes each")


def measure_commands(url: str, redis: Any, der: bytes) -> None:
    print("Commands per call (a script's first call also loads it; warmed up here):")
    store = RedisMemberStore(url)
    store.add_room("warm", "#up"), store.remove("warm", [0]), store.expire()
    store.enqueue("ben", "ann", 1, b"x" * 100)
    for label, call in [
        ("known", lambda: store.known("ann")), ("rooms", lambda: store.rooms("ann")),
        ("add_room", lambda: store.add_room("ann", "#a")),
        ("remove_room", lambda: store.remove_room("ann", "#a")),
        ("last_seen", lambda: store.last_seen("ann")),
        ("set_last_seen", lambda: store.set_last_seen("ann", 4)),
        ("enqueue", lambda: store.enqueue("ben", "ann", 2, b"x" * 100)),
        ("expire (nothing old)", store.expire), ("waiting", lambda: store.waiting("ben")),
        ("remove (2 ids)", lambda: store.remove("ben", [1, 2])),
        ("mailbox_size", store.mailbox_size),
        ("keep_receipt", lambda: store.keep_receipt("ann", b"r")),
        ("take_receipts", lambda: store.take_receipts("ann")),
    ]:
        commands(redis, label, call)
    registry = RedisKeyRegistry(url)
    registry.lookalike("warm"), registry.register("warm", der), registry.forget("warm")
    for label, call in [
        ("registry lookup", lambda: registry.lookup("ann")),
        ("registry lookalike", lambda: registry.lookalike("ann")),
        ("registry refusal", lambda: registry.refusal("ann", der)),
        ("registry register", lambda: registry.register("ann", der)),
        ("registry forget", lambda: registry.forget("ann")),
    ]:
        commands(redis, label, call)
    quota = RedisRegistrationQuota(url)
    quota.refusal("warm")
    commands(redis, "quota refusal", lambda: quota.refusal("192.0.2.1"))
    commands(redis, "quota record", lambda: quota.record("192.0.2.1"))
    ledger = RedisFloodLedger(url, 5.0, 20)  # ServerConfig's rate and burst
    user, address = ledger.user("ann"), ledger.address("192.0.2.1")
    commands(redis, "flood: 100 frames", lambda: [ledger.charge(user, address)
                                                 for _ in range(100)])
    print(f"  flood round trips per frame: {ledger.round_trips / ledger.frames:.2f}")


def measure_memory(url: str, redis: Any, der: bytes) -> None:
    print("Memory per item (used_memory deltas):")
    store = RedisMemberStore(url, MailboxLimits(per_user=100_000))
    memory(redis, "waiting message, beyond its 1000-byte frame", 20_000, lambda: [
        store.enqueue(f"user{n % 100}", "sender_name_here", 10**9 + n, b"x" * 1000)
        for n in range(20_000)], less=1000)
    memory(redis, "user with 50 rooms of 32 characters", 1000, lambda: [
        (store.add_room(f"member{u}", f"#room-name-of-32-characters-{k:04d}"),
         store.set_last_seen(f"member{u}", 10**9)) for u in range(1000) for k in range(50)])
    frame = (b'{"type":"private_delivered","id":1000000000,"to":"somebody_name",'
             b'"time":"2026-12-02T01:33:18.123Z"}')
    memory(redis, f"receipt of {len(frame)} bytes", 10_000, lambda: [
        store.keep_receipt(f"sender{u}", frame) for u in range(100) for _ in range(100)])
    registry = RedisKeyRegistry(url, max_names_per_key=0)
    memory(redis, "registered name (RSA-3072 key)", 3000, lambda: [
        registry.register(f"username{n:06d}", der) for n in range(3000)])
    ledger = RedisFloodLedger(url, 5.0, 20)
    memory(redis, "active client (user and address bucket)", 5000, lambda: [
        ledger.charge(ledger.user(f"flood{n}"), ledger.address(f"10.0.{n // 256}.{n % 256}"))
        for n in range(5000)])


def main() -> int:
    with tempfile.TemporaryDirectory() as directory:
        server = RedisServer(Path(directory) / "redis")
        server.start()
        try:
            redis = connect(server.url)
            der = public_key_der(RSA.generate(3072))
            measure_commands(server.url, redis, der)
            redis.flushall()
            measure_memory(server.url, redis, der)
        finally:
            server.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
