"""The message log's checkpoint: its file format, reading and validating one, writing one,
and the fingerprints of the log it carries (which the index carries too).

Apart from `messagelog` because a checkpoint is a small file format of its own with its
own versions; the log only decides when to write one and what to do when one is unusable.
This module does no logging: it returns what is wrong, and `messagelog` says so.

Checkpoint
----------
So that a start does not parse a million lines, `<path>.checkpoint` records the state as
of a byte offset in the log, written atomically (temporary file, then `os.replace`) every
`checkpoint_every` records, at open when the log had lines past it, and at close:

    {"format": "gapshape-messagelog-checkpoint", "version": 2,
     "offset": <bytes of the log it covers; the log's size when it was written>,
     "next_id": <1 + largest id in log[:offset]>,
     "head_sha256": <hex SHA-256 of log[:min(4096, offset)]>,
     "tail_sha256": <hex SHA-256 of log[max(0, offset - 4096):offset]>,
     "written_at": <timestamp, for people>}

Version 1 also held every room's last messages ("history_size", "history"); a version 1
checkpoint is still read (its history is ignored, the index has it). At open the
checkpoint is used only if it parses, has a known version, and the log is at least
`offset` bytes long with the same first and last 4 KiB before the offset; then only the
lines after the offset are parsed for the next id (after `kill -9` those are the records
since the last checkpoint). Otherwise, a replaced or truncated log for instance, the whole
file is scanned, and a new checkpoint written. Edits before the offset that keep both
windows intact are not noticed: delete the checkpoint (and the index) to force a full scan.

Checkpoints during operation never hold up `append` or `write_pending`: the writer only
notes (offset, next_id) under its lock, and the background thread computes the
fingerprints and writes the file. `on_checkpoint_write`, a constructor argument, is called
by that thread with the offset right before each such write (tests hold a write in
progress with it).
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from fileutil import write_atomically
from logformat import is_id, timestamp

__all__ = [
    "ANCHOR_SIZE", "CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "Checkpoint", "Snapshot",
    "load_checkpoint", "log_fingerprints", "write_checkpoint",
]

CHECKPOINT_FORMAT = "gapshape-messagelog-checkpoint"
CHECKPOINT_VERSION = 2
READABLE_CHECKPOINT_VERSIONS = frozenset({1, 2})
ANCHOR_SIZE = 4096  # bytes hashed at the start of the log and right before the offset


@dataclass(frozen=True)
class Snapshot:
    """What a checkpoint stores: the log's size after a write, and the next id then."""

    offset: int
    next_id: int


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint document: a snapshot and the fingerprints of the log it covers."""

    offset: int
    next_id: int
    head_sha256: str
    tail_sha256: str

    def to_bytes(self) -> bytes:
        document = {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "offset": self.offset,
            "next_id": self.next_id,
            "head_sha256": self.head_sha256,
            "tail_sha256": self.tail_sha256,
            "written_at": timestamp(),
        }
        return json.dumps(document, ensure_ascii=True, separators=(",", ":")).encode("ascii")

    @classmethod
    def from_bytes(cls, data: bytes) -> Checkpoint:
        """Parse and validate a checkpoint document; ValueError says what is wrong."""
        document = json.loads(data)
        if not isinstance(document, dict) or document.get("format") != CHECKPOINT_FORMAT:
            raise ValueError("not a message log checkpoint")
        if document.get("version") not in READABLE_CHECKPOINT_VERSIONS:
            raise ValueError(f"unknown checkpoint version {document.get('version')!r}")
        offset, next_id = document.get("offset"), document.get("next_id")
        if not (is_id(offset) and is_id(next_id)):
            raise ValueError("offset and next_id must be integers")
        head, tail = document.get("head_sha256"), document.get("tail_sha256")
        if not (isinstance(head, str) and isinstance(tail, str)):
            raise ValueError("missing log fingerprints")
        return cls(offset, next_id, head, tail)


def log_fingerprints(fd: int, offset: int) -> tuple[str, str]:
    """SHA-256 of the first and of the last ANCHOR_SIZE bytes of log[:offset]."""
    head = os.pread(fd, min(ANCHOR_SIZE, offset), 0)
    tail_start = max(0, offset - ANCHOR_SIZE)
    tail = os.pread(fd, offset - tail_start, tail_start)
    return hashlib.sha256(head).hexdigest(), hashlib.sha256(tail).hexdigest()


def load_checkpoint(path: Path, log_fd: int) -> tuple[Checkpoint | None, str | None]:
    """The checkpoint at `path` if it is valid and matches the log open on `log_fd`, else
    None and the reason ("no checkpoint" when there is no file)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None, "no checkpoint"
    except OSError as error:
        return None, f"unreadable: {error}"
    try:
        checkpoint = Checkpoint.from_bytes(data)
    except (ValueError, TypeError) as error:  # includes JSON and UTF-8 decoding errors
        return None, f"invalid: {error}"
    size = os.fstat(log_fd).st_size
    if size < checkpoint.offset:
        return None, f"the log has {size} bytes, the checkpoint covers {checkpoint.offset}"
    expected = (checkpoint.head_sha256, checkpoint.tail_sha256)
    if log_fingerprints(log_fd, checkpoint.offset) != expected:
        return None, "the log does not match it (replaced or rewritten)"
    return checkpoint, None


def write_checkpoint(path: Path, log_fd: int, snapshot: Snapshot, *, durable: bool) -> None:
    """Write, atomically, the checkpoint of log[:snapshot.offset]; OSError if it fails."""
    head, tail = log_fingerprints(log_fd, snapshot.offset)
    checkpoint = Checkpoint(snapshot.offset, snapshot.next_id, head, tail)
    write_atomically(path, checkpoint.to_bytes(), durable=durable)
