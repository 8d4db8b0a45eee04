"""What the server asks of the operating system before it opens: enough file descriptors for
its clients, and few malloc arenas for its threads.

Each does what the platform allows and does without where it cannot (Windows has no
descriptor limit, musl no mallopt); the server reports the descriptor limit it ends up
with and fits --max-clients to it (`server.fit_descriptor_limit`).
"""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

log = logging.getLogger("gapshape.server")

WANTED_FDS = 1_048_576  # asked for when the hard limit is unlimited
OPEN_MAX = 10_240  # macOS's OPEN_MAX: the most its setrlimit accepted on older releases


def raise_fd_limit() -> int | None:
    """Each client holds a descriptor: lift the soft limit as far as the system allows.

    Tries the best limit first and steps down when refused (macOS refuses more than
    kern.maxfilesperproc). Returns the soft limit in force afterwards, or None where
    there is none (Windows); `server.fit_descriptor_limit` reports it and fits --max-clients."""
    try:
        import resource
    except ImportError:  # Windows: sockets are not counted against a descriptor limit
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return None
    unlimited = hard == resource.RLIM_INFINITY
    for target in fd_limit_candidates(soft, None if unlimited else hard, _system_max_files()):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            log.debug("descriptor limit %d refused (%s); asking for less", target, exc)
            continue
        break
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def fd_limit_candidates(soft: int, hard: int | None, system_max: int | None) -> list[int]:
    """Soft descriptor limits to ask for, best first, all above `soft`: the hard limit
    (WANTED_FDS when it is unlimited, `hard` None) but no more than the system's
    per-process maximum, then halvings of it, with OPEN_MAX among them."""
    wanted = WANTED_FDS if hard is None else hard
    if system_max is not None and system_max > 0:
        wanted = min(wanted, system_max)
    candidates = set()
    value = wanted
    while value > soft:
        candidates.add(value)
        value //= 2
    if soft < OPEN_MAX < wanted:
        candidates.add(OPEN_MAX)
    return sorted(candidates, reverse=True)


def _system_max_files() -> int | None:
    """The most descriptors one process may have, where the system says: macOS's
    kern.maxfilesperproc, Linux's fs.nr_open; None elsewhere or when it cannot be read."""
    if sys.platform == "darwin":
        try:
            import ctypes
            import ctypes.util

            libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
            value = ctypes.c_int(0)
            size = ctypes.c_size_t(ctypes.sizeof(value))
            if libc.sysctlbyname(b"kern.maxfilesperproc", ctypes.byref(value),
                                 ctypes.byref(size), None, ctypes.c_size_t(0)) == 0:
                return value.value
        except (OSError, AttributeError):
            pass
        return None
    try:
        return int(Path("/proc/sys/fs/nr_open").read_text())
    except (OSError, ValueError):
        return None


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
