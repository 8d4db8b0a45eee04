"""bench/clusterbench.py --quick against a real redis-server and real server.py nodes.

A smoke test: it checks that the quick run produces every row with a sane shape (names,
values that parse, the Redis costs that must be there), never a timing.
"""
from __future__ import annotations

import math
import re
import sys

import pytest

from conftest import ROOT
from redisserver import redis_server_binary

sys.path.insert(0, str(ROOT / "bench"))

import clusterbench  # noqa: E402

KINDS = (clusterbench.PLAIN, clusterbench.ONE, clusterbench.TWO)


def number(value: str) -> float:
    match = re.match(r"[\d,.]+", value)
    assert match, f"not a number: {value!r}"
    return float(match.group(0).replace(",", ""))


def test_skips_with_a_reason_without_redis(monkeypatch):
    monkeypatch.setattr(clusterbench.shutil, "which", lambda name: None)
    assert clusterbench.cluster_rows(quick=True) == [
        ("cluster", "skipped", "redis-server is not installed (Debian: redis-server)")]


@pytest.mark.skipif(redis_server_binary() is None, reason="redis-server is not installed")
def test_quick_run_gives_every_row(capsys):
    rows = clusterbench.cluster_rows(quick=True)
    assert all(isinstance(part, str) and part for row in rows for part in row)
    table = {name: (value, note) for name, value, note in rows}
    assert len(table) == len(rows), "a row name appears twice"
    for kind in KINDS:
        assert number(table[f"deliveries/s, {kind}"][0]) > 0
        assert table[f"latency p99, {kind}"][0].endswith(" ms")
    assert table[f"deliveries/s, {clusterbench.PLAIN}"][1].startswith("1.00x")
    for kind in KINDS[1:]:
        # Every room message costs Redis at least its script (EVALSHA) and one read.
        per_message = number(table[f"redis ops/room message, {kind}"][0])
        assert per_message >= 2
        assert "evalsha 1.00" in table[f"redis ops/room message, {kind}"][1]
        for what in ("login", "join", "private message"):
            assert number(table[f"redis ops/{what}, {kind}"][0]) >= 1
        cpu = [key for key in table if key.startswith("redis CPU/room message ")
               and key.endswith(kind)]
        assert len(cpu) == 2 and all(table[key][0].endswith(" us") for key in cpu)
    assert "xread" in table[f"redis ops/room message, {clusterbench.TWO}"][1]
    assert math.isfinite(number(table["kill -9: all back on B"][0]))
    assert "kill -9: A's users gone from B" in table
    storms = [key for key in table if key.startswith("storm, ")]
    assert len(storms) == 3
    for key in ("prediction: room msg/s per Redis", "prediction: deliveries/s per node core"):
        assert number(table[key][0]) > 0
    clusterbench.print_table(rows)
    assert "prediction: room msg/s per Redis" in capsys.readouterr().out
