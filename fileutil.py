"""Replacing small files so that a crash leaves the old version or the new one, never half.

Used by the key registry, the client's key and pin files, and the log's checkpoint. It
imports nothing of Gapshape, so both the server and the clients can use it.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomically(path: Path, data: bytes, *, durable: bool = True,
                     dir_mode: int = 0o777) -> None:
    """Replace `path` with `data` through a temporary file and `os.replace`.

    The temporary file comes from mkstemp (O_CREAT | O_EXCL, mode 0600), so a secret is
    never readable by others, not even for a moment before a chmod. `durable` also fsyncs
    the file and its directory, so the rename survives a power cut, not only a crash.
    """
    path.parent.mkdir(mode=dir_mode, parents=True, exist_ok=True)
    fd, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as temp_file:
            temp_file.write(data)
            if durable:
                temp_file.flush()
                os.fsync(temp_file.fileno())
        os.replace(temp_name, path)
    except BaseException:
        try:
            os.unlink(temp_name)
        except OSError:
            pass
        raise
    if durable:
        fsync_directory(path.parent)


def fsync_directory(directory: Path) -> None:
    """Make a rename in `directory` durable (POSIX; Windows cannot open a directory)."""
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
