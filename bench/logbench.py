"""Benchmark of messagelog: cost of logging a message, start-up time, scrollback pages.

    python bench/logbench.py                  # 1,000,000-entry log, prints a table
    python bench/logbench.py --entries 100000 --json
    python bench/logbench.py --baseline /tmp/old/messagelog.py   # also: append, old vs new

What it measures, on a log in a temporary directory (or --dir):
  * append + write_pending per entry, one entry per write (the server's usual case) and
    100 entries per write (group commit under load), and append alone (the part that runs
    under the server's lock); with an empty log and with an --entries-line log, to show
    that the cost does not grow with the file. Periodic checkpoints are included.
  * MessageLog() on the big log: with a current checkpoint (a clean restart), with a
    checkpoint one interval old (restart after kill -9: the tail since it is parsed), with
    no checkpoint (a full scan, for reference), and with no index (a full scan that also
    rebuilds <log>.index).
  * Scrollback: `history_before(room, before_id, 100)` at random rooms and ids, a page of
    100 messages each, on the --entries-line log (100 rooms) and on a 1,000-line log
    (5 rooms, so that its pages are full too), both indexed and in the page cache, one
    page of each in turn.
  * With --baseline PATH (another messagelog.py, e.g. `git show COMMIT:messagelog.py`):
    the append costs of that implementation and of this one, on fresh logs, in turns.
This is a script, not a test: it asserts nothing.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from messagelog import MessageLog, timestamp  # noqa: E402

ROOMS = 100
CHUNK = 10_000  # lines generated and written per write
CHECKPOINT_EVERY = 10_000  # MessageLog's default
TEXT = "The quick brown fox — jumps over the lazy dog, again and again 😀 #"


def record(record_id: int) -> dict[str, Any]:
    """A message like the server logs: about 150 bytes, with some non-ASCII."""
    return {
        "event": "message", "time": timestamp(), "id": record_id,
        "room": f"room{record_id % ROOMS}", "user": f"user{record_id % 997}",
        "text": f"{TEXT}{record_id}",
    }


def generate_log(path: Path, entries: int, rooms: int = ROOMS) -> None:
    """Write `entries` lines straight to `path`: 90% messages, the rest other events."""
    stamp = timestamp()
    with open(path, "wb") as out:
        for first in range(1, entries + 1, CHUNK):
            last = min(first + CHUNK, entries + 1)
            out.write("".join(_line(n, stamp, rooms) for n in range(first, last)).encode())


def _line(n: int, stamp: str, rooms: int = ROOMS) -> str:
    room, user = f"room{n % rooms}", f"user{n % 997}"
    if n % 20 == 0:
        return (
            f'{{"event":"private","time":"{stamp}","id":{n},"from":"{user}","to":"x",'
            f'"size":420}}\n'
        )
    if n % 20 == 1:
        return f'{{"event":"join","time":"{stamp}","user":"{user}","room":"{room}"}}\n'
    return (
        f'{{"event":"message","time":"{stamp}","id":{n},"room":"{room}","user":"{user}",'
        f'"text":"{TEXT}{n}"}}\n'
    )


def per_entry_us(log: MessageLog, ops: int, batch: int) -> float:
    """Mean microseconds per entry of append (+ write_pending every `batch` entries)."""
    records = [record(record_id) for record_id in range(log.next_id, log.next_id + ops)]
    started = time.perf_counter()
    for count, item in enumerate(records, 1):
        log.append(item)
        if count % batch == 0:
            log.write_pending()
    log.write_pending()
    return (time.perf_counter() - started) / ops * 1e6


def append_only_us(log: MessageLog, ops: int) -> float:
    """Mean microseconds of append alone; the lines are written afterwards, untimed."""
    records = [record(record_id) for record_id in range(log.next_id, log.next_id + ops)]
    started = time.perf_counter()
    for item in records:
        log.append(item)
    elapsed = time.perf_counter() - started
    log.write_pending()
    return elapsed / ops * 1e6


def append_costs(path: Path, ops: int, implementation: Any = MessageLog) -> dict[str, float]:
    with implementation(path) as log:
        return {
            "batch_1_us": per_entry_us(log, ops, 1),
            "batch_100_us": per_entry_us(log, ops * 5, 100),
            "append_only_us": append_only_us(log, ops),
        }


def compare_append_costs(
    directory: Path, big: Path, ops: int, rounds: int
) -> tuple[dict[str, float], dict[str, float]]:
    """Median costs on a new empty log and on `big`, measured in turns to share the noise."""
    empty_runs, big_runs = [], []
    for turn in range(rounds):
        empty_runs.append(append_costs(directory / f"empty{turn}.json", ops))
        big_runs.append(append_costs(big, ops))
    return _medians(empty_runs), _medians(big_runs)


def _medians(runs: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


def compare_implementations(
    directory: Path, baseline: Path, ops: int, rounds: int
) -> tuple[dict[str, float], dict[str, float]]:
    """Median append costs of the messagelog.py at `baseline` and of this one, in turns."""
    spec = importlib.util.spec_from_file_location("baseline_messagelog", baseline)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    old_runs, new_runs = [], []
    for turn in range(rounds):
        old_runs.append(append_costs(directory / f"old{turn}.json", ops, module.MessageLog))
        new_runs.append(append_costs(directory / f"new{turn}.json", ops))
    return _medians(old_runs), _medians(new_runs)


PAGE = 100
SMALL_LOG = 1_000
SMALL_ROOMS = 5


def page_targets(entries: int, rooms: int, pages: int) -> list[tuple[str, int]]:
    """Random (room, before_id) whose page of 100 is full, in a log from generate_log."""
    chooser = random.Random(entries)
    # generate_log gives some rooms only joins; the others have at least 3 messages in 4 of
    # their ids, so 100 of them below `lowest`: every page is full.
    talking = [room for room in range(rooms)
               if any(n % 20 not in (0, 1) for n in range(room, room + 20 * rooms, rooms))]
    lowest = PAGE * rooms * 3 // 2
    return [(f"room{chooser.choice(talking)}", chooser.randrange(lowest, entries + 1))
            for _ in range(pages)]


def page_rows(directory: Path, big: Path, entries: int, pages: int) -> dict[str, Any]:
    """Page latency on the big log and on a 1,000-line one, one page of each in turn (so
    that both see the same noise), after 50 pages of warm-up on each."""
    small = directory / "small.json"
    generate_log(small, SMALL_LOG, SMALL_ROOMS)
    times: dict[str, list[float]] = {"small": [], "big": []}
    sizes: dict[str, list[int]] = {"small": [], "big": []}
    with MessageLog(small) as small_log, MessageLog(big) as big_log:
        logs = {"small": small_log, "big": big_log}
        targets = {"small": page_targets(SMALL_LOG, SMALL_ROOMS, pages + 50),
                   "big": page_targets(entries, ROOMS, pages + 50)}
        for number in range(pages + 50):
            for name, log in logs.items():
                room, before = targets[name][number]
                started = time.perf_counter()
                page = log.history_before(room, before, PAGE)
                if number >= 50:
                    times[name].append(time.perf_counter() - started)
                    sizes[name].append(len(page))
    return {f"page_{name}": {"median_us": statistics.median(times[name]) * 1e6,
                             "mean_us": statistics.fmean(times[name]) * 1e6,
                             "mean_records": statistics.fmean(sizes[name])}
            for name in logs}


def timed_open(path: Path, prepare: Callable[[], None] = lambda: None, repeat: int = 3) -> float:
    """Median seconds of MessageLog(path), calling `prepare` before each attempt."""
    times = []
    for _ in range(repeat):
        prepare()
        started = time.perf_counter()
        log = MessageLog(path)
        times.append(time.perf_counter() - started)
        log.close()
    return statistics.median(times)


def stale_copy(path: Path, directory: Path) -> Path:
    """A copy of the log as kill -9 leaves it: CHECKPOINT_EVERY - 1 lines past the checkpoint."""
    log = MessageLog(path, checkpoint_every=CHECKPOINT_EVERY)
    for record_id in range(log.next_id, log.next_id + CHECKPOINT_EVERY - 1):
        log.append(record(record_id))
        log.write_pending()
    directory.mkdir()
    copy = directory / path.name
    shutil.copyfile(path, copy)
    shutil.copyfile(log.checkpoint_path, directory / log.checkpoint_path.name)
    log.close()
    return copy


def run(directory: Path, entries: int, ops: int, repeat: int, pages: int = 6000,
        baseline: Path | None = None) -> dict[str, Any]:
    big = directory / "big.json"
    results: dict[str, Any] = {"entries": entries, "ops": ops, "repeat": repeat}
    started = time.perf_counter()
    generate_log(big, entries)
    results["generate_s"] = time.perf_counter() - started
    results["big_log_bytes"] = big.stat().st_size
    checkpoint = big.with_name(big.name + ".checkpoint")
    results["open_full_scan_s"] = timed_open(
        big, lambda: checkpoint.unlink(missing_ok=True), repeat
    )
    results["open_checkpoint_s"] = timed_open(big, repeat=repeat)
    index_files = [big.with_name(big.name + suffix) for suffix in (".index", ".index-wal",
                                                                   ".index-shm")]
    results["open_no_index_s"] = timed_open(
        big, lambda: [name.unlink(missing_ok=True) for name in index_files], 1
    )
    results.update(page_rows(directory, big, entries, pages))
    stale = stale_copy(big, directory / "stale")
    stale_checkpoint = stale.with_name(stale.name + ".checkpoint")
    saved = stale_checkpoint.read_bytes()  # each open writes a current one: put it back
    results["open_stale_checkpoint_s"] = timed_open(
        stale, lambda: stale_checkpoint.write_bytes(saved), repeat
    )
    results["append_empty"], results["append_big"] = compare_append_costs(
        directory, big, ops, repeat
    )
    if baseline is not None:
        results["append_baseline"], results["append_current"] = compare_implementations(
            directory, baseline, ops, repeat
        )
    return results


def print_table(results: dict[str, Any]) -> None:
    entries = f"{results['entries']:,}"
    empty, big = results["append_empty"], results["append_big"]
    print(f"messagelog benchmark: Python {platform.python_version()}, {platform.platform()}")
    print(f"big log: {entries} entries, {results['big_log_bytes'] / 2**20:.0f} MiB, "
          f"generated in {results['generate_s']:.2f} s\n")
    print(f"{'per entry (µs)':32} {'empty log':>12} {entries + ' entries':>18}")
    for key, label in (("batch_1_us", "append + write_pending, batch 1"),
                       ("batch_100_us", "append + write_pending, batch 100"),
                       ("append_only_us", "append alone")):
        print(f"{label:32} {empty[key]:12.2f} {big[key]:18.2f}")
    print(f"\n{'MessageLog() on the big log':44} {'seconds':>8}")
    for key, label in (("open_checkpoint_s", "current checkpoint (clean restart)"),
                       ("open_stale_checkpoint_s", "checkpoint 9,999 lines behind (kill -9)"),
                       ("open_full_scan_s", "no checkpoint: full scan"),
                       ("open_no_index_s", "no index: full scan and index rebuild")):
        print(f"{label:44} {results[key]:8.3f}")
    small, big = results["page_small"], results["page_big"]
    print(f"\n{'history_before(room, id, 100)':32} {SMALL_LOG:>12,} {entries + ' entries':>18}")
    for key, label in (("median_us", "median µs per page"), ("mean_us", "mean µs per page"),
                       ("mean_records", "records per page")):
        print(f"{label:32} {small[key]:12.1f} {big[key]:18.1f}")
    print(f"{'ratio of medians':32} {'':12} {big['median_us'] / small['median_us']:17.2f}x")
    if "append_baseline" in results:
        old, new = results["append_baseline"], results["append_current"]
        print(f"\n{'per entry (µs), fresh log':32} {'baseline':>12} {'this one':>12} {'ratio':>7}")
        for key in ("batch_1_us", "batch_100_us", "append_only_us"):
            print(f"{key:32} {old[key]:12.2f} {new[key]:12.2f} {new[key] / old[key]:6.2f}x")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=1_000_000, help="lines in the big log")
    parser.add_argument("--ops", type=int, default=20_000, help="entries per append measurement")
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure (median)")
    parser.add_argument("--dir", type=Path, help="where to put the logs (default: a temp dir)")
    parser.add_argument("--pages", type=int, default=6000, help="pages per log for latency")
    parser.add_argument("--baseline", type=Path, help="another messagelog.py to compare with")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.dir) as directory:
        results = run(Path(directory), args.entries, args.ops, args.repeat, args.pages,
                      args.baseline)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print_table(results)


if __name__ == "__main__":
    main()
