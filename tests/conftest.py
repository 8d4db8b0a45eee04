"""Shared fixtures: RSA identity keys are slow to make, so a session-wide pool hands them out."""
from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest
from Crypto.PublicKey import RSA

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


class KeyPool:
    """Lazily generated RSA-3072 keys, made once per test session and reused by index."""

    def __init__(self) -> None:
        self._keys: list[RSA.RsaKey] = []
        self._lock = threading.Lock()

    def get(self, index: int) -> RSA.RsaKey:
        with self._lock:
            while len(self._keys) <= index:
                self._keys.append(RSA.generate(3072))
            return self._keys[index]


_POOL = KeyPool()


@pytest.fixture(scope="session")
def key_pool() -> KeyPool:
    return _POOL
