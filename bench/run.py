"""Gapshape against a bare relay, side by side: one table of medians and ratios.

    python bench/run.py                 # every default row: about 10 minutes on 2 cores
                                        # with --idle 10000 (run 3 of docs/PERFORMANCE.md)
    python bench/run.py --quick         # the default rows but ngircd, small: under a minute
    python bench/run.py --rows soak --soak-minutes 6   # churn and RSS; only when named
    python bench/run.py --rows throughput,latency --receivers 100 --repeats 5 --latency-repeats 9
    python bench/run.py --profile /tmp/prof   # also py-spy the server in each network run
    python bench/run.py --table bench/results.json   # print an earlier run's table again

Each network run starts a fresh server, either Gapshape's `server.py` (message log on, a
key registry that already knows the bench users, flood control off, no pings within a
run, and a login timeout long enough for 10,000 clients queueing to log in)
or `bench/relay.py` (the bare relay), on loopback, and drives it from separate
load-generator processes (`bench/loadgen.py`). The two are measured in alternation, run
by run, and the table gives the median of each and the ratio Gapshape / baseline (the
median of the ratios of runs measured back to back):

  throughput  deliveries/s with N receivers in one room; 4 members send with a window of
              `--window` own messages in flight; deliveries counted at the receivers
  latency     p50/p99/p99.9 send-to-receive at `--rate` messages/s in total, N = 100,
              in `--latency-repeats` pairs (7)
  idle        N logged-in idle clients: server RSS per client (VmRSS after - before the
              logins, / N) and the time for one message to reach all N members
  crypto      crypto.seal / crypto.open_envelope against the pycryptodome calls they make
              (the baseline: PSS sign + OAEP wrap + GCM; PSS verify + OAEP unwrap + GCM)
  log         messagelog append cost at 0 and at --log-entries entries (bench/logbench.py)
              and the time `server.py` takes to print its "listening" line with that log
  scrollback  a history page (100 messages) on the --log-entries log against a 1,000-line one
  storm       N clients log in and join at once, against the crypto floor of the same run:
              the load generator signing N proofs plus the server's kind of pool verifying N
  reconnect   N clients connected, the server restarted: until all are back in their rooms
  ngircd      Debian's ngircd over IRC, same shapes: deliveries/s N=100, latency (skipped
              with a note when it is not installed)
  soak        churn (300 clients, 6 rooms, 200 msg/s, a tenth reconnecting abruptly):
              RSS per sample and 10 s after all left; only with --rows soak

Results also go to a JSON file (default bench/results.json, or bench/results-quick.json).
This script asserts nothing about timings; it fails only if a run goes wrong (a refused
login, a dropped client, a lost message).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
for _path in (str(ROOT), str(BENCH)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from loadgen import (  # noqa: E402
    GAPSHAPE,
    IRC,
    RELAY,
    BenchError,
    LoadGen,
    Signer,
    make_key,
    raise_nofile_limit,
)

NGIRCD = "ngircd"
ROWS = ("throughput", "latency", "idle", "crypto", "log", "scrollback", "storm", "reconnect",
        "ngircd", "cluster", "soak")
# Without --rows: every row but the soak (minutes long by design).
DEFAULT_ROWS = ("throughput", "latency", "idle", "crypto", "log", "scrollback", "storm",
                "reconnect", "ngircd", "cluster")
QUICK_ROWS = ("throughput", "latency", "idle", "crypto", "log", "scrollback", "storm",
              "reconnect", "cluster")
SENDERS = 4
STORM_IN_FLIGHT = 32  # logins a load-generator process keeps in flight when connecting
BENCH_ROOM = "#bench"


@dataclass
class Settings:
    rows: tuple[str, ...] = DEFAULT_ROWS
    receivers: tuple[int, ...] = (10, 100, 500, 2000)
    idle: tuple[int, ...] = (1000, 5000, 10000)
    repeats: int = 3
    # The latency row's pairs: one pair's p99 ratio ranged 0.53-1.46x on a quiet machine
    # (the relay's own p99 1.25-2.70 ms), so a median of three landed either side of 1.2x
    # by chance (docs/PERFORMANCE.md, run 9).
    latency_repeats: int = 7
    idle_repeats: int = 1
    fanouts: int = 5
    warmup: float = 1.0
    duration: float = 3.0
    latency_duration: float = 5.0
    latency_receivers: int = 100
    rate: float = 200.0
    window: int = 16
    crypto_seconds: float = 2.0
    log_entries: int = 1_000_000
    log_ops: int = 20_000
    log_starts: int = 3
    log_repeats: int = 7  # single pairs range 0.86-1.15x on a quiet machine
    processes: int = 2
    storm: tuple[int, ...] = (10_000,)
    reconnect: int = 10_000
    scroll_pages: int = 3000
    ngircd_receivers: int = 100
    soak_minutes: float = 6.0
    soak_clients: int = 300
    soak_rooms: int = 6
    soak_rate: float = 200.0
    profile: Path | None = None
    quick: bool = False

    @classmethod
    def quick_settings(cls) -> Settings:
        return cls(rows=QUICK_ROWS, receivers=(10, 100), idle=(200,), repeats=1,
                   latency_repeats=1, idle_repeats=1, fanouts=3, warmup=0.3, duration=1.0,
                   latency_duration=1.5, crypto_seconds=0.3, log_entries=20_000, log_ops=2_000,
                   log_starts=1, log_repeats=1, storm=(300,), reconnect=300, scroll_pages=300,
                   soak_minutes=1.0, quick=True)


@dataclass
class Row:
    """One line of the table: Gapshape's median, the baseline's, their ratio, the target."""

    key: str
    label: str
    unit: str
    gapshape: list[float]
    baseline: list[float]
    baseline_name: str
    target: str = ""  # e.g. ">= 3x", "<= 1.2x", "<= 32 KiB", "< 1 MiB/min", "< 2 s"
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def g(self) -> float | None:
        return statistics.median(self.gapshape) if self.gapshape else None

    @property
    def b(self) -> float | None:
        return statistics.median(self.baseline) if self.baseline else None

    @property
    def ratio(self) -> float | None:
        """Gapshape / baseline: the median of the per-repeat ratios when the runs come in
        pairs measured back to back (robust to a machine whose load drifts), else the
        ratio of the medians."""
        if self.g is None or not self.b:
            return None
        if len(self.gapshape) == len(self.baseline) > 1 and all(self.baseline):
            return statistics.median(g / b for g, b in zip(self.gapshape, self.baseline, strict=True))
        return self.g / self.b

    @property
    def met(self) -> bool | None:
        match = re.fullmatch(r"(>=|<=|<) ([\d.]+) ?(x|KiB|MiB/min|s)", self.target)
        if not match:
            return None
        op, bound, unit = match.group(1), float(match.group(2)), match.group(3)
        value = self.ratio if unit == "x" else self.g
        if value is None:
            return None
        return {">=": value >= bound, "<=": value <= bound, "<": value < bound}[op]

    @classmethod
    def from_json(cls, row: dict[str, Any]) -> Row:
        return cls(row["key"], row["label"], row["unit"], row["runs"]["gapshape"],
                   row["runs"]["baseline"], row["baseline_name"], row["target"] or "",
                   row.get("notes") or {})

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "label": self.label, "unit": self.unit,
                "gapshape": self.g, "baseline": self.b, "baseline_name": self.baseline_name,
                "ratio": self.ratio, "target": self.target or None, "met": self.met,
                "runs": {"gapshape": self.gapshape, "baseline": self.baseline},
                "notes": self.notes}


# ---------------------------------------------------------------------------------------
# Servers under test


class ServerProcess:
    """server.py or bench/relay.py in a child process, on 127.0.0.1 and a free port."""

    def __init__(self, kind: str, workdir: Path, *, log: Path | None = None,
                 registry: Path | None = None, extra: tuple[str, ...] = ()) -> None:
        self.kind = kind
        if kind == GAPSHAPE:
            log = log or workdir / "messageslog.json"
            command = [sys.executable, str(ROOT / "server.py"), "--host", "127.0.0.1",
                       "--port", "0", "--log", str(log), "--rate", "0",
                       "--max-per-address", "20000", "--max-clients", "20000",
                       "--ping-interval", "3600", "--login-timeout", "600", *extra]
            if registry is not None:
                command += ["--registry", str(registry)]
        else:
            command = [sys.executable, str(BENCH / "relay.py"), "--host", "127.0.0.1",
                       "--port", "0"]
        self.stderr_path = workdir / f"{kind}.stderr"
        self._stderr = open(self.stderr_path, "ab")
        started = time.monotonic()
        self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=self._stderr,
                                     cwd=workdir, start_new_session=True)
        line = self._read_line(timeout=120.0)
        self.start_seconds = time.monotonic() - started
        match = re.search(r"listening on ([\d.]+):(\d+)", line)
        if not match:
            self.kill()
            raise BenchError(f"{kind} did not start: {line!r}; see {self.stderr_path}")
        self.address = (match.group(1), int(match.group(2)))

    def _read_line(self, timeout: float) -> str:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            return ""
        return self.proc.stdout.readline().decode(errors="replace")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def status(self, field_name: str) -> int:
        """An integer field of /proc/PID/status (VmRSS in KiB, Threads)."""
        text = Path(f"/proc/{self.pid}/status").read_text()
        match = re.search(rf"^{field_name}:\s+(\d+)", text, re.M)
        return int(match.group(1)) if match else 0

    def rss_kib(self) -> int:
        """VmRSS of the server and every process under it (Gapshape's login verifier and
        the forkserver it forks from), in KiB: what the server costs the machine. Pages the
        children share are counted once per process, so this errs high."""
        total, seen, todo = 0, set(), [self.pid]
        while todo:
            pid = todo.pop()
            if pid in seen:
                continue
            seen.add(pid)
            try:
                text = Path(f"/proc/{pid}/status").read_text()
                tasks = list(Path(f"/proc/{pid}/task").iterdir())
            except OSError:
                continue  # it ended meanwhile
            match = re.search(r"^VmRSS:\s+(\d+)", text, re.M)
            total += int(match.group(1)) if match else 0
            for task in tasks:  # threads come and go while they are read
                try:
                    todo.extend(int(c) for c in (task / "children").read_text().split())
                except OSError:
                    pass
        return total

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM and wait: the server closes its log and writes its checkpoint."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        self.kill()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.close()
        self._stderr.close()


class NgircdProcess(ServerProcess):
    """Debian's ngircd as a second baseline: its own config in the run's folder, on a free
    loopback port, in the foreground; no DNS, ident or PAM lookups, no flood penalties."""

    def __init__(self, workdir: Path) -> None:  # not super().__init__: that runs server.py
        self.kind = NGIRCD
        port = free_port()
        config = workdir / "ngircd.conf"
        config.write_text(NGIRCD_CONFIG.format(port=port, motd=workdir / "motd"))
        (workdir / "motd").write_text("bench\n")
        self.stderr_path = workdir / "ngircd.stderr"
        self._stderr = open(self.stderr_path, "ab")
        started = time.monotonic()
        self.proc = subprocess.Popen(["ngircd", "--nodaemon", "--config", str(config)],
                                     stdout=self._stderr, stderr=self._stderr, cwd=workdir,
                                     start_new_session=True)
        self.address = ("127.0.0.1", port)
        deadline = started + 20
        while True:
            try:
                socket.create_connection(self.address, timeout=1).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.kill()
                    raise BenchError(f"ngircd did not start; see {self.stderr_path}") from None
                time.sleep(0.05)
        self.start_seconds = time.monotonic() - started


NGIRCD_CONFIG = """\
[Global]
Name = bench.gapshape.invalid
Info = Gapshape benchmark baseline
Listen = 127.0.0.1
Ports = {port}
MotdFile = {motd}
[Limits]
MaxConnections = 0
MaxConnectionsIP = 0
MaxJoins = 0
MaxNickLength = 16
MaxPenaltyTime = 0
PingTimeout = 3600
PongTimeout = 3600
[Options]
DNS = no
Ident = no
PAM = no
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def profiled(settings: Settings, server: ServerProcess, name: str, seconds: float,
             rate: int = 200) -> Iterator[None]:
    """With --profile, py-spy the Gapshape server for `seconds` while the body runs: the
    thread holding the GIL (--gil), which is what limits a server of many threads."""
    if settings.profile is None or server.kind != GAPSHAPE or not shutil.which("py-spy"):
        yield
        return
    settings.profile.mkdir(parents=True, exist_ok=True)
    out = settings.profile / f"{name}.txt"
    spy = subprocess.Popen(
        ["py-spy", "record", "--pid", str(server.pid), "--duration", str(max(1, round(seconds))),
         "--rate", str(rate), "--format", "raw", "--gil", "--nonblocking", "-o", str(out)],
        stdout=subprocess.DEVNULL, stderr=open(settings.profile / f"{name}.log", "wb"))
    try:
        yield
    finally:
        try:
            spy.wait(seconds + 30)
        except subprocess.TimeoutExpired:
            spy.kill()


# ---------------------------------------------------------------------------------------
# Context shared by the network rows


class Bench:
    def __init__(self, settings: Settings, workdir: Path) -> None:
        self.settings = settings
        self.workdir = workdir
        self.private_der, self.public_der = make_key()
        self.loadgen = LoadGen(settings.processes)
        sizes = {"throughput": settings.receivers, "latency": (settings.latency_receivers,),
                 "idle": settings.idle, "storm": settings.storm,
                 "reconnect": (settings.reconnect,), "soak": (settings.soak_clients,),
                 "ngircd": (settings.ngircd_receivers,)}
        biggest = max(n for row in settings.rows for n in sizes.get(row, (1,)))
        self.registry = workdir / "keyregistry.json"
        started = time.monotonic()
        write_registry(self.registry, self.all_names(biggest + SENDERS), self.public_der)
        say(f"  key registry of {biggest + SENDERS} users written in {time.monotonic() - started:.1f} s")
        self.run_count = 0

    def close(self) -> None:
        self.loadgen.shutdown()

    def all_names(self, count: int) -> list[str]:
        return [name for group in self.split(count, senders=SENDERS) for name in group]

    def split(self, clients: int, senders: int = 0) -> list[list[str]]:
        """Names for `clients` clients spread over the workers; worker 0's first `senders`
        clients are the senders (and worker 0's first client sends the fan-outs)."""
        workers = self.settings.processes
        rest = clients - senders
        groups = [[] for _ in range(workers)]
        counts = [rest // workers + (1 if i < rest % workers else 0) for i in range(workers)]
        counts[0] += senders
        for i, count in enumerate(counts):
            groups[i] = [f"w{i}c{j:05d}" for j in range(count)]
        return groups

    @contextmanager
    def server(self, kind: str) -> Iterator[ServerProcess]:
        self.run_count += 1
        rundir = self.workdir / f"run{self.run_count:03d}-{kind}"
        rundir.mkdir()
        server: ServerProcess = (NgircdProcess(rundir) if kind == NGIRCD else
                                 ServerProcess(kind, rundir, registry=self.registry))
        try:
            yield server
        except BenchError:
            server.kill()
            tail = server.stderr_path.read_text(errors="replace").splitlines()[-15:]
            say(f"{kind} stderr, last lines:\n  " + "\n  ".join(tail))
            raise
        finally:
            server.kill()  # nothing left to keep: skip the O(N) goodbyes
            self.loadgen.close_clients()
            shutil.rmtree(rundir, ignore_errors=True)

    def connect(self, server: ServerProcess, groups: list[list[str]], room: str = BENCH_ROOM,
                quiet: float = 0.3) -> float:
        dialect = IRC if server.kind == NGIRCD else server.kind
        seconds = self.loadgen.connect(dialect, server.address, groups, room=room,
                                       private_der=self.private_der, public_der=self.public_der,
                                       concurrency=STORM_IN_FLIGHT, timeout=3600)
        if quiet:
            self.loadgen.quiet(quiet)
        return seconds




def write_registry(path: Path, names: list[str], public_der: bytes) -> None:
    """A key registry that already knows every bench user, so that the runs measure
    logins, not first registrations. It is written through keyregistry.KeyRegistry, so
    it follows whatever format that module writes; its fsync per registration is skipped
    here (a throwaway file), which is the only liberty taken."""
    from unittest import mock

    from keyregistry import KeyRegistry

    with mock.patch.object(os, "fsync", lambda fd: None):
        registry = KeyRegistry(path, max_names_per_key=0)  # every load client shares one key
        for name in names:
            registry.register(name, public_der)


def alternate(repeats: int) -> Iterator[tuple[int, str]]:
    """(repeat, kind) pairs, relay and Gapshape in turns, so both see the same noise."""
    for repeat in range(repeats):
        kinds = (RELAY, GAPSHAPE) if repeat % 2 == 0 else (GAPSHAPE, RELAY)
        for kind in kinds:
            yield repeat, kind


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------
# Rows


def throughput_rows(bench: Bench, n: int) -> list[Row]:
    s = bench.settings
    results: dict[str, list[float]] = {GAPSHAPE: [], RELAY: []}
    notes: dict[str, Any] = {"senders": SENDERS, "window": s.window, "sent_per_s": {}}
    for _, kind in alternate(s.repeats):
        with bench.server(kind) as server:
            bench.connect(server, bench.split(n + SENDERS, SENDERS))
            with profiled(s, server, f"throughput-{n}", s.duration):
                result = bench.loadgen.throughput({0: SENDERS}, s.window, s.warmup, s.duration)
        results[kind].append(result["deliveries_per_s"])
        notes["sent_per_s"].setdefault(kind, []).append(
            round(result["sent"] / (s.warmup + s.duration + 0.2)))
        say(f"  throughput N={n} {kind}: {result['deliveries_per_s']:,.0f} deliveries/s")
    target = {100: ">= 3 x", 500: ">= 1 x", 2000: ">= 1 x"}.get(n, "")
    return [Row(f"deliveries_{n}", f"deliveries/s, N={n}", "/s", results[GAPSHAPE],
                results[RELAY], "relay", target, notes)]


def percentile(sorted_values: list[int], fraction: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(fraction * len(sorted_values)) - 1))
    return sorted_values[index]


def latency_rows(bench: Bench, _: int = 0) -> list[Row]:
    s = bench.settings
    n = s.latency_receivers
    marks = (("p50", 0.50, ""), ("p99", 0.99, "<= 1.2 x"), ("p99.9", 0.999, ""))
    results: dict[str, dict[str, list[float]]] = {k: {GAPSHAPE: [], RELAY: []} for k, _, _ in marks}
    samples_count: dict[str, list[int]] = {GAPSHAPE: [], RELAY: []}
    for _, kind in alternate(s.latency_repeats):
        with bench.server(kind) as server:
            bench.connect(server, bench.split(n + SENDERS, SENDERS))
            with profiled(s, server, "latency", s.latency_duration):
                samples = sorted(bench.loadgen.latency({0: SENDERS}, s.rate, s.warmup,
                                                       s.latency_duration))
        expected = s.rate * s.latency_duration * n
        if len(samples) < 0.95 * expected:
            raise BenchError(f"latency run on {kind}: {len(samples)} samples of {expected:.0f}")
        samples_count[kind].append(len(samples))
        for name, fraction, _ in marks:
            results[name][kind].append(percentile(samples, fraction) / 1e6)
        say(f"  latency {kind}: p50 {results['p50'][kind][-1]:.2f} ms, "
            f"p99 {results['p99'][kind][-1]:.2f} ms, p99.9 {results['p99.9'][kind][-1]:.2f} ms")
    return [Row(f"latency_{name}", f"latency {name}, {s.rate:g} msg/s, N={n}", "ms",
                results[name][GAPSHAPE], results[name][RELAY], "relay", target,
                {"samples": samples_count} if name == "p50" else {})
            for name, _, target in marks]


def idle_rows(bench: Bench, n: int) -> list[Row]:
    s = bench.settings
    rss: dict[str, list[float]] = {GAPSHAPE: [], RELAY: []}
    fanout: dict[str, list[float]] = {GAPSHAPE: [], RELAY: []}
    notes: dict[str, Any] = {"login_s": {}, "threads": {}, "rss_before_kib": {},
                             "fanout_runs_ms": {}}
    for _, kind in alternate(s.idle_repeats):
        with bench.server(kind) as server:
            time.sleep(0.3)
            before = server.rss_kib()
            login = bench.connect(server, bench.split(n))
            time.sleep(0.5)
            after = server.rss_kib()
            rss[kind].append((after - before) / n)
            notes["login_s"].setdefault(kind, []).append(round(login, 2))
            notes["threads"].setdefault(kind, []).append(server.status("Threads"))
            notes["rss_before_kib"].setdefault(kind, []).append(before)
            times = []
            with profiled(s, server, f"fanout-{n}", 0.5 * s.fanouts + 2):
                for i in range(s.fanouts):
                    times.append(bench.loadgen.fanout(f"f{i}")["seconds"])
                    bench.loadgen.quiet(0.1)
            fanout[kind].append(statistics.median(times))
            notes["fanout_runs_ms"].setdefault(kind, []).append([round(t * 1e3, 2) for t in times])
        say(f"  idle N={n} {kind}: login {login:.1f} s, {rss[kind][-1]:.1f} KiB/client, "
            f"fan-out {fanout[kind][-1] * 1e3:.1f} ms")
    big = n == 10_000
    return [
        Row(f"idle_rss_{n}", f"idle N={n}: server RSS per client", "KiB", rss[GAPSHAPE],
            rss[RELAY], "relay", "<= 32 KiB" if big else "", notes),
        Row(f"idle_fanout_{n}", f"idle N={n}: one message to all", "ms",
            [t * 1e3 for t in fanout[GAPSHAPE]], [t * 1e3 for t in fanout[RELAY]], "relay",
            "<= 1.2 x" if big else ""),
    ]


def verify_floor(bench: Bench, n: int) -> float:
    """Seconds for the server's verifier (verifier.LoginVerifier with the server's default
    number of processes; auth.verify_login parses the key each time, as for a login) to
    verify `n` login proofs, asked by as many threads at once as a storm has logins in
    flight, so that its pipes are kept as full as in the storm."""
    import concurrent.futures

    from server import ServerConfig
    from verifier import LoginVerifier

    signer = Signer(bench.private_der)
    proofs = []
    for number in range(64):  # distinct proofs, cycled: the cost does not depend on which
        nonce, user = os.urandom(32), f"w0c{number:05d}"
        proofs.append((bench.public_der, signer(nonce, user, "0123456789abcdef"), nonce, user,
                       "0123456789abcdef"))
    verifier = LoginVerifier(ServerConfig().verify_processes)
    in_flight = STORM_IN_FLIGHT * bench.settings.processes
    try:
        with concurrent.futures.ThreadPoolExecutor(in_flight, "floor-verify") as pool:
            started = time.monotonic()
            futures = [pool.submit(verifier.verify, *proofs[i % len(proofs)]) for i in range(n)]
            for future in futures:
                future.result()
            return time.monotonic() - started
    finally:
        verifier.close()


def crypto_floor(bench: Bench, n: int) -> tuple[float, float]:
    """The login storm's floor: (seconds for the load generator's workers to sign n login
    proofs, seconds for the server's kind of pool to verify them)."""
    counts = [len(group) for group in bench.split(n)]
    return bench.loadgen.sign(counts, bench.private_der), verify_floor(bench, n)


def storm_rows(bench: Bench, n: int) -> list[Row]:
    """N clients log in and join one room at once (32 in flight per load-generator
    process), against the crypto floor of the same N logins measured in this run."""
    sign, verify = crypto_floor(bench, n)
    floor = sign + verify
    say(f"  storm N={n}: crypto floor {floor:.2f} s (sign {sign:.2f} s + verify {verify:.2f} s)")
    times: dict[str, list[float]] = {GAPSHAPE: [], RELAY: []}
    for _, kind in alternate(1):
        with bench.server(kind) as server, profiled(bench.settings, server, f"storm-{n}",
                                                    max(3.0, floor * 2), rate=50):
            times[kind].append(bench.connect(server, bench.split(n)))
        say(f"  storm N={n} {kind}: {times[kind][-1]:.2f} s")
    notes = {"sign_s": round(sign, 3), "verify_s": round(verify, 3),
             "relay_s": [round(t, 3) for t in times[RELAY]]}
    return [
        Row(f"storm_floor_{n}", f"login storm N={n}: crypto floor (sign + verify)", "s",
            [floor], [], "", "", notes),
        Row(f"storm_{n}", f"login storm N={n}: all logged in and joined", "s", times[GAPSHAPE],
            [floor], "crypto floor", "<= 1.5 x" if n >= 10_000 else "", notes),
        Row(f"storm_relay_{n}", f"login storm N={n}, against the relay", "s", times[GAPSHAPE],
            times[RELAY], "relay"),
    ]


def reconnect_rows(bench: Bench, _: int = 0) -> list[Row]:
    """N clients connected, the server restarted (SIGTERM, then a new process on the same
    files): seconds from the restart until every client is logged in again and back in
    its rooms (Gapshape puts them back from its user store)."""
    n = bench.settings.reconnect
    groups = bench.split(n)
    results: dict[str, list[float]] = {GAPSHAPE: [], RELAY: []}
    notes: dict[str, Any] = {"start_s": {}, "stop_s": {}}
    for _, kind in alternate(1):
        bench.run_count += 1
        rundir = bench.workdir / f"run{bench.run_count:03d}-{kind}-reconnect"
        rundir.mkdir()
        server = ServerProcess(kind, rundir, registry=bench.registry)
        try:
            bench.connect(server, groups)
            stopped = time.monotonic()
            server.stop()
            notes["stop_s"].setdefault(kind, []).append(round(time.monotonic() - stopped, 2))
            bench.loadgen.close_clients()  # they saw the server go; drop the dead sockets
            started = time.monotonic()
            server = ServerProcess(kind, rundir, registry=bench.registry)
            bench.connect(server, groups, quiet=0)
            results[kind].append(time.monotonic() - started)
            notes["start_s"].setdefault(kind, []).append(round(server.start_seconds, 2))
        finally:
            server.kill()
            bench.loadgen.close_clients()
            shutil.rmtree(rundir, ignore_errors=True)
        say(f"  reconnect N={n} {kind}: {results[kind][-1]:.2f} s from restart to all back")
    return [Row(f"reconnect_{n}", f"reconnect storm N={n}: restart to all back in rooms", "s",
                results[GAPSHAPE], results[RELAY], "relay", "", notes)]


def scrollback_rows(settings: Settings, workdir: Path) -> list[Row]:
    """Issue 10's row: a history page (100 messages) on a --log-entries-line log against
    one on a 1,000-line log, one page of each in turn (bench/logbench.py's page_rows)."""
    import logbench

    folder = workdir / "scroll"
    folder.mkdir()
    big = workdir / "log" / "big.json"  # the log row's big log, when it ran
    entries = settings.log_entries
    if not big.exists():
        big = folder / "big.json"
        logbench.generate_log(big, entries)
    pages = logbench.page_rows(folder, big, entries, settings.scroll_pages)
    small, large = pages["page_small"], pages["page_big"]
    say(f"  scrollback: {large['median_us']:.0f} µs a page on {entries:,} lines, "
        f"{small['median_us']:.0f} µs on 1,000")
    return [Row("scrollback_page", f"history page, {entries:,} vs 1,000 lines", "µs",
                [large["median_us"]], [small["median_us"]], "1,000 lines", "<= 1.2 x",
                {"pages": settings.scroll_pages, "mean_records": large["mean_records"]})]


def ngircd_rows(bench: Bench, _: int = 0) -> list[Row]:
    """ngircd (C, one thread, no log, no crypto) as a second baseline, over IRC with the
    same workload shapes: deliveries/s at N receivers, latency at --rate msg/s."""
    s = bench.settings
    n = s.ngircd_receivers
    if not shutil.which("ngircd"):
        say("  ngircd is not installed: its rows are skipped (apt-get install ngircd)")
        return [Row("ngircd_skipped", "ngircd rows: skipped, ngircd not installed", "", [], [],
                    NGIRCD)]
    deliveries: dict[str, list[float]] = {GAPSHAPE: [], NGIRCD: []}
    p50: dict[str, list[float]] = {GAPSHAPE: [], NGIRCD: []}
    p99: dict[str, list[float]] = {GAPSHAPE: [], NGIRCD: []}
    for repeat in range(s.repeats):
        for kind in ((NGIRCD, GAPSHAPE) if repeat % 2 == 0 else (GAPSHAPE, NGIRCD)):
            with bench.server(kind) as server:
                bench.connect(server, bench.split(n + SENDERS, SENDERS))
                result = bench.loadgen.throughput({0: SENDERS}, s.window, s.warmup, s.duration)
                deliveries[kind].append(result["deliveries_per_s"])
                samples = sorted(bench.loadgen.latency({0: SENDERS}, s.rate, s.warmup,
                                                       s.latency_duration))
            if len(samples) < 0.95 * s.rate * s.latency_duration * n:
                raise BenchError(f"latency run on {kind}: only {len(samples)} samples")
            p50[kind].append(percentile(samples, 0.5) / 1e6)
            p99[kind].append(percentile(samples, 0.99) / 1e6)
            say(f"  {kind} N={n}: {deliveries[kind][-1]:,.0f} deliveries/s, "
                f"p50 {p50[kind][-1]:.2f} ms, p99 {p99[kind][-1]:.2f} ms")
    return [
        Row(f"ngircd_deliveries_{n}", f"deliveries/s, N={n}, against ngircd", "/s",
            deliveries[GAPSHAPE], deliveries[NGIRCD], NGIRCD, ">= 1 x"),
        Row("ngircd_latency_p50", f"latency p50, {s.rate:g} msg/s, N={n}, against ngircd", "ms",
            p50[GAPSHAPE], p50[NGIRCD], NGIRCD, "<= 1.1 x"),
        Row("ngircd_latency_p99", f"latency p99, {s.rate:g} msg/s, N={n}, against ngircd", "ms",
            p99[GAPSHAPE], p99[NGIRCD], NGIRCD),
    ]


def soak_rows(bench: Bench, _: int = 0) -> list[Row]:
    """Churn: --soak-clients over --soak-rooms rooms, --rate messages/s in total, a tenth
    of the clients dropping abruptly and logging in again (each every 10 s); server RSS
    once a minute, and 10 s after every client has gone."""
    s = bench.settings
    rooms = [f"#soak{i}" for i in range(s.soak_rooms)]
    names = bench.all_names(s.soak_clients)
    workers = s.processes
    per_room: list[list[list[str]]] = [[[] for _ in range(workers)] for _ in rooms]
    for number, name in enumerate(names):  # room by number, worker by the name's prefix
        per_room[number % len(rooms)][int(name[1:name.index("c")])].append(name)
    seconds = s.soak_minutes * 60
    sample_every = min(60.0, max(5.0, seconds / 6))
    with bench.server(GAPSHAPE) as server:
        for room, groups in zip(rooms, per_room, strict=True):
            bench.connect(server, groups, room=room, quiet=0)
        bench.loadgen.quiet(0.5)
        baseline = server.rss_kib()
        say(f"  soak: {len(names)} clients in {len(rooms)} rooms, RSS after login "
            f"{baseline / 1024:.1f} MiB")
        # The first clients of each worker send (one per room per worker, as near as fits).
        senders = {i: min(len(rooms), sum(len(g[i]) for g in per_room)) for i in range(workers)}
        churners = {i: sum(len(g[i]) for g in per_room) // 10 for i in range(workers)}
        t_end = bench.loadgen.start_soak(senders, churners, s.soak_rate, 10.0, seconds)
        started = time.monotonic()
        samples: list[tuple[float, int]] = []
        while time.monotonic() < t_end:
            time.sleep(min(sample_every, max(0.0, t_end - time.monotonic())))
            samples.append((round(time.monotonic() - started, 1), server.rss_kib()))
            say(f"  soak: {samples[-1][0]:.0f} s, RSS {samples[-1][1] / 1024:.1f} MiB")
        done = bench.loadgen.finish_soak(120)
        bench.loadgen.close_clients()
        time.sleep(10.0)  # the row's definition: RSS 10 s after everyone quit
        after = server.rss_kib()
    say(f"  soak: {done['reconnects']} reconnects; RSS 10 s after all left {after / 1024:.1f} MiB")
    later = [rss for t, rss in samples if t >= min(120.0, seconds / 2)]
    span_min = (samples[-1][0] - next(t for t, r in samples if r == later[0])) / 60 if later else 0
    growth = (later[-1] - later[0]) / 1024 / span_min if later and span_min > 0 else 0.0
    notes = {"rss_kib": samples, "baseline_kib": baseline, "reconnects": done["reconnects"],
             "minutes": s.soak_minutes}
    return [
        Row("soak_rss_growth", f"soak {s.soak_minutes:g} min: RSS growth after the first minutes",
            "MiB/min", [growth], [], "", "< 1 MiB/min", notes),
        Row("soak_rss_after", "soak: RSS 10 s after all left, against after login", "MiB",
            [after / 1024], [baseline / 1024], "after login", "<= 1.2 x"),
    ]


def crypto_rows(settings: Settings) -> list[Row]:
    """crypto.seal/open_envelope against the bare pycryptodome calls they are built from."""
    from Crypto.Cipher import AES, PKCS1_OAEP
    from Crypto.Hash import SHA256
    from Crypto.PublicKey import RSA
    from Crypto.Random import get_random_bytes
    from Crypto.Signature import pss

    import crypto

    sender = RSA.import_key(make_key()[0])
    recipient = RSA.import_key(make_key()[0])
    sender_pub, recipient_pub = sender.public_key(), recipient.public_key()
    plaintext = ("see you at eight, the usual place? " * 3).encode()
    header = b"h" * 120  # about the size of crypto.envelope_header for short names

    def seal() -> Any:
        return crypto.seal(plaintext, sender="alice", recipient="bob",
                           sender_private_key=sender, recipient_public_key=recipient_pub)

    envelope = seal()

    def open_() -> bytes:
        return crypto.open_envelope(envelope, recipient="bob", recipient_private_key=recipient,
                                    sender_public_key=sender_pub)

    def bare_seal() -> tuple[bytes, ...]:
        aes_key, nonce = get_random_bytes(32), get_random_bytes(12)
        cipher = AES.new(aes_key, AES.MODE_GCM, nonce=nonce, mac_len=16)
        cipher.update(header)
        ciphertext, tag = cipher.encrypt_and_digest(plaintext)
        wrapped = PKCS1_OAEP.new(recipient_pub, hashAlgo=SHA256).encrypt(aes_key)
        signature = pss.new(sender).sign(SHA256.new(header + wrapped + nonce + ciphertext + tag))
        return wrapped, nonce, ciphertext, tag, signature

    sealed = bare_seal()

    def bare_open() -> bytes:
        wrapped, nonce, ciphertext, tag, signature = sealed
        pss.new(sender_pub).verify(SHA256.new(header + wrapped + nonce + ciphertext + tag),
                                   signature)
        aes_key = PKCS1_OAEP.new(recipient, hashAlgo=SHA256).decrypt(wrapped)
        cipher = AES.new(aes_key, AES.MODE_GCM, nonce=nonce, mac_len=16)
        cipher.update(header)
        return cipher.decrypt_and_verify(ciphertext, tag)

    assert open_() == plaintext and bare_open() == plaintext
    timings: dict[str, list[float]] = {"seal": [], "open": [], "bare_seal": [], "bare_open": []}
    functions: dict[str, Callable[[], Any]] = {"seal": seal, "open": open_,
                                               "bare_seal": bare_seal, "bare_open": bare_open}
    # Rounds of a few calls of each function in turn, so that drift hits all four alike;
    # a round of 20 calls takes about 0.5 s.
    rounds = max(3, round(settings.crypto_seconds * 4))
    per_round = 8 if settings.quick else 20
    for _ in range(rounds):
        for name, function in functions.items():
            started = time.perf_counter()
            for _ in range(per_round):
                function()
            timings[name].append((time.perf_counter() - started) / per_round * 1e3)
    both = [s + o for s, o in zip(timings["seal"], timings["open"], strict=True)]
    bare_both = [s + o for s, o in zip(timings["bare_seal"], timings["bare_open"], strict=True)]
    notes = {"rounds": rounds, "ops_per_round": per_round, "key_bits": sender.size_in_bits()}
    rate = lambda values: [1e3 / v for v in values]  # noqa: E731 - ms per op -> ops per s
    return [
        Row("crypto_seal", "seal / s", "/s", rate(timings["seal"]), rate(timings["bare_seal"]),
            "primitives", "", notes),
        Row("crypto_open", "open / s", "/s", rate(timings["open"]), rate(timings["bare_open"]),
            "primitives"),
        Row("crypto_seal_open", "seal + open, ms per message", "ms", both, bare_both,
            "primitives", "<= 1.1 x"),
    ]


def log_rows(settings: Settings, workdir: Path) -> list[Row]:
    import logbench  # bench/logbench.py: the message log's own benchmark

    logdir = workdir / "log"
    logdir.mkdir()
    entries = settings.log_entries
    empty_costs, big_costs = [], []
    big = logdir / "big.json"
    logbench.append_costs(logdir / "warmup.json", max(200, settings.log_ops // 10))
    started = time.perf_counter()
    logbench.generate_log(big, entries)
    generated = time.perf_counter() - started
    say(f"  log: generated {entries:,} entries in {generated:.1f} s")

    def start_time(log: Path) -> float:
        server = ServerProcess(GAPSHAPE, logdir, log=log)
        seconds = server.start_seconds
        server.stop()
        return seconds

    first_start = start_time(big)  # no checkpoint yet: the whole log is scanned
    starts = [start_time(big) for _ in range(settings.log_starts)]
    empty_starts = [start_time(logdir / "fresh.json") for _ in range(settings.log_starts)]
    for repeat in range(settings.log_repeats):  # a fresh empty log each time, in turns
        empty_costs.append(logbench.append_costs(logdir / f"empty{repeat}.json", settings.log_ops))
        big_costs.append(logbench.append_costs(big, settings.log_ops))
    say(f"  log: start {statistics.median(starts):.2f} s with checkpoint, {first_start:.2f} s "
        f"scanning, {statistics.median(empty_starts):.2f} s empty")
    label = f"{entries:,}"
    return [
        Row("log_append", f"log append+write, {label} vs 0 entries", "µs",
            [c["batch_1_us"] for c in big_costs], [c["batch_1_us"] for c in empty_costs],
            "empty log", "<= 1.1 x", {"generate_s": round(generated, 2)}),
        Row("log_append_only", f"log append alone, {label} vs 0", "µs",
            [c["append_only_us"] for c in big_costs], [c["append_only_us"] for c in empty_costs],
            "empty log"),
        Row("log_start", f"server start, {label}-entry log (checkpoint)", "s", starts,
            empty_starts, "empty log", "< 2 s"),
        Row("log_start_scan", f"server start, {label}-entry log, no checkpoint", "s",
            [first_start], empty_starts, "empty log"),
    ]


# ---------------------------------------------------------------------------------------
# Output


NETWORK_ROWS: dict[str, Callable[[Bench, int], list[Row]]] = {
    "throughput": throughput_rows, "latency": latency_rows, "idle": idle_rows,
    "storm": storm_rows, "reconnect": reconnect_rows, "ngircd": ngircd_rows, "soak": soak_rows,
}


CPU_ID_FIELDS = ("cpu family", "model", "stepping", "microcode", "cache size")


def machine() -> dict[str, Any]:
    # A hypervisor may show every CPU as "AMD EPYC": family, model and stepping still tell
    # two CPU models apart (issue 14 asks for runs on two).
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if not line.strip():
                break  # the first processor's block is enough
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    model = fields.get("model name", "")
    cpu_id = ", ".join(f"{key} {fields[key]}" for key in CPU_ID_FIELDS if key in fields)
    try:
        import Crypto
        pycryptodome = Crypto.__version__
    except ImportError:
        pycryptodome = None
    return {"cores": os.cpu_count(), "cpu": model, "cpu_id": cpu_id,
            "python": platform.python_version(),
            "load_average_at_start": os.getloadavg(),
            "implementation": platform.python_implementation(), "kernel": platform.release(),
            "pycryptodome": pycryptodome}


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "/s":
        return f"{value:,.0f}"
    if unit in ("ms", "µs", "MiB", "MiB/min"):
        return f"{value:.3g}" if value < 10 else f"{value:,.1f}"
    if unit == "s":
        return f"{value:.2f}"
    return f"{value:.1f}"


def table(rows: list[Row]) -> str:
    header = ("row", "unit", "Gapshape", "baseline", "ratio", "target", "met")
    lines = []
    for row in rows:
        met = {True: "yes", False: "NO", None: ""}[row.met]
        ratio = f"{row.ratio:.2f}x" if row.ratio is not None else "-"
        lines.append((row.label, row.unit, fmt(row.g, row.unit),
                      f"{fmt(row.b, row.unit)} ({row.baseline_name})" if row.baseline_name
                      else "-", ratio,
                      row.target.replace(" x", "x"), met))
    widths = [max(len(str(line[i])) for line in [header, *lines]) for i in range(len(header))]
    out = []
    for number, line in enumerate([header, *lines]):
        cells = [str(cell).ljust(widths[i]) if i in (0, 1, 3, 5, 6) else str(cell).rjust(widths[i])
                 for i, cell in enumerate(line)]
        out.append("| " + " | ".join(cells) + " |")
        if number == 0:
            out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(out)


def print_tables(paths: list[Path]) -> int:
    rows: dict[str, Row] = {}
    for path in paths:
        document = json.loads(path.read_text(encoding="utf-8"))
        machine_info = document["machine"]
        print(f"{path}: {document['when']}, {document['seconds']:.0f} s, "
              f"{machine_info['cores']} cores, {machine_info['cpu']}, "
              f"Python {machine_info['python']}"
              f"{'' if document.get('complete', True) else ' (incomplete run)'}")
        for row in document["rows"]:
            rows[row["key"]] = Row.from_json(row)
    print(table(list(rows.values())))
    return 0


# ---------------------------------------------------------------------------------------
# Main


def parse_ints(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(",") if part.strip())


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Benchmark Gapshape against a bare relay.",
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Rows: " + ", ".join(ROWS) + " (soak only when named)")
    p.add_argument("--quick", action="store_true", help="small, short runs of every row (< 1 min)")
    p.add_argument("--rows", help="comma-separated rows to run (default: all)")
    p.add_argument("--receivers", type=parse_ints, help="throughput: receivers per run, e.g. 10,100,500")
    p.add_argument("--idle", type=parse_ints, help="idle: clients per run, e.g. 1000,5000,10000")
    p.add_argument("--repeats", type=int, help="runs of each system per throughput/ngircd row")
    p.add_argument("--latency-repeats", type=int, help="runs of each system in the latency row "
                   "(default 7)")
    p.add_argument("--idle-repeats", type=int, help="runs of each system per idle size")
    p.add_argument("--fanouts", type=int, help="idle: fan-outs timed per run (median)")
    p.add_argument("--duration", type=float, help="throughput: seconds measured per run")
    p.add_argument("--warmup", type=float, help="seconds of load before measuring")
    p.add_argument("--latency-duration", type=float, help="latency: seconds measured per run")
    p.add_argument("--rate", type=float, help="latency: messages per second in, in total")
    p.add_argument("--window", type=int, help="throughput: own messages in flight per sender")
    p.add_argument("--log-entries", type=int, help="log: entries in the big log")
    p.add_argument("--processes", type=int, help="load-generator processes (default 2)")
    p.add_argument("--storm", type=parse_ints, help="storm: clients per login storm, e.g. 2000,10000")
    p.add_argument("--reconnect", type=int, help="reconnect: clients that reconnect after a restart")
    p.add_argument("--scroll-pages", type=int, help="scrollback: pages timed on each log")
    p.add_argument("--soak-minutes", type=float, help="soak: minutes of churn (default 6)")
    p.add_argument("--soak-clients", type=int, help="soak: clients (default 300)")
    p.add_argument("--profile", type=Path, help="py-spy record the Gapshape server into this folder")
    p.add_argument("--json", type=Path, help="result file (default bench/results.json, "
                                             "bench/results-quick.json with --quick)")
    p.add_argument("--table", type=Path, nargs="+", metavar="RESULTS",
                   help="run nothing: print the table of result files (a row of a later "
                        "file replaces the same row of an earlier one)")
    return p


def settings_from_args(args: argparse.Namespace) -> Settings:
    s = Settings.quick_settings() if args.quick else Settings()
    if args.rows:
        rows = tuple(r.strip() for r in args.rows.split(",") if r.strip())
        unknown = set(rows) - set(ROWS)
        if unknown:
            raise SystemExit(f"unknown rows: {', '.join(sorted(unknown))} (rows: {', '.join(ROWS)})")
        s.rows = rows
    for name in ("receivers", "idle", "repeats", "latency_repeats", "idle_repeats", "fanouts",
                 "duration", "warmup", "latency_duration", "rate", "window", "log_entries",
                 "processes", "profile", "storm", "reconnect", "scroll_pages", "soak_minutes",
                 "soak_clients"):
        value = getattr(args, name)
        if value is not None:
            setattr(s, name, value)
    return s


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.table:
        return print_tables(args.table)
    # A SIGTERM (CI's timeout, `timeout`) unwinds like an error, so servers get stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("bench/run.py: terminated"))
    s = settings_from_args(args)
    out = args.json or BENCH / ("results-quick.json" if s.quick else "results.json")
    limit = raise_nofile_limit()
    most = max([0, *(s.idle if "idle" in s.rows else ()), *(s.storm if "storm" in s.rows else ()),
                s.reconnect if "reconnect" in s.rows else 0])
    if most + 64 > limit:
        raise SystemExit(f"the open-file limit is {limit}; {most} clients need more")
    info = machine()
    say(f"Gapshape bench: {info['cores']} cores, {info['cpu']}, Python {info['python']}"
        f"{' (quick)' if s.quick else ''}")
    started = time.monotonic()
    rows: list[Row] = []
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(s).items()}

    def save(complete: bool) -> None:
        """Write the JSON file after every row, so an interrupted run still leaves data."""
        document = {"when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    "seconds": round(time.monotonic() - started, 1), "complete": complete,
                    "machine": info, "load_average_now": os.getloadavg(), "settings": settings,
                    "rows": [row.to_json() for row in rows]}
        out.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")

    # The idle row goes last but for the soak: its 10,000 logins take the longest.
    order = [name for name in ("throughput", "latency", "crypto", "log", "scrollback", "storm",
                               "reconnect", "ngircd", "idle", "soak") if name in s.rows]
    # The cluster rows (bench/clusterbench.py) start their own redis-server and nodes, and
    # print a table of their own: their baselines are the plain node, not the relay.
    cluster: list[tuple[str, str, str]] = []
    with tempfile.TemporaryDirectory(prefix="gapshape-bench-") as tmp:
        workdir = Path(tmp)
        bench = None
        try:
            for name in order:
                say(f"{name} ...")
                if name in NETWORK_ROWS:
                    bench = bench or Bench(s, workdir)
                    function = NETWORK_ROWS[name]
                    sizes = {"throughput": s.receivers, "idle": s.idle,
                             "storm": s.storm}.get(name, (0,))
                    for n in sizes:
                        rows += function(bench, n)
                        save(complete=False)
                elif name == "crypto":
                    rows += crypto_rows(s)
                elif name == "scrollback":
                    rows += scrollback_rows(s, workdir)
                else:
                    rows += log_rows(s, workdir)
                save(complete=False)
        finally:
            if bench is not None:
                bench.close()
        if "cluster" in s.rows:
            say("cluster ...")
            import clusterbench

            cluster = clusterbench.cluster_rows(s.quick)
            settings["cluster_rows"] = [list(row) for row in cluster]
    elapsed = time.monotonic() - started
    save(complete=True)
    print(table(rows))
    if cluster:
        print("\nCluster (bench/clusterbench.py; ratios to one plain node):")
        import clusterbench

        clusterbench.print_table(cluster)
    print(f"\nmedians; ratio = median of Gapshape / baseline over runs measured back to back; "
          f"{elapsed:.0f} s on {info['cores']} cores, "
          f"{info['cpu']}, Python {info['python']}")
    print(f"model name: {info['cpu']} ({info['cpu_id']})")
    print(f"results written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
