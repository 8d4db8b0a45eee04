"""Running test workers at once, for races that must come out right."""
from __future__ import annotations

import threading
from typing import Any, Callable


def race(workers: list[Callable[[], Any]]) -> list[Any]:
    """Run the workers at once (released together by a barrier); their results or errors."""
    barrier = threading.Barrier(len(workers))
    results: list[Any] = [None] * len(workers)

    def run(index: int) -> None:
        barrier.wait()
        try:
            results[index] = workers[index]()
        except Exception as exc:  # the outcome under test, kept for the assertions
            results[index] = exc

    threads = [threading.Thread(target=run, args=(n,)) for n in range(len(workers))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not any(t.is_alive() for t in threads), "a racing worker hung"
    return results
