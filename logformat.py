"""The message log's line format: encoding, decoding and checking records, and the
scanner that reads a log back line by line.

Apart from `messagelog` because this is what the file *is*, with no state, locks or
threads: the log, its checkpoint, its index and the benchmarks all read lines this way,
and a reader of the format need not wade through the writer.

File format
-----------
`messageslog.json` is JSON Lines: one JSON object per line, UTF-8, compact separators,
non-ASCII written as itself (`ensure_ascii=False`), each line ended by a single b"\\n".
JSON escapes every control character, so a record never contains a raw newline and the
file can be split on b"\\n" without parsing. Every record has "event" and "time" (UTC,
ISO 8601 with milliseconds and "Z", see `timestamp`):

    {"event":"message","time":"2024-05-01T12:00:00.123Z","id":7,"room":"lobby","user":"ann",
     "text":"hi"}                                       (all on one line in the file)
    {"event":"private","time":"...","id":8,"from":"ann","to":"bob","size":412}   (metadata only)
    {"event":"connect","time":"...","user":"ann","address":"10.0.0.5:51234"}
    {"event":"disconnect","time":"...","user":"ann","reason":"quit"}
    {"event":"join" | "leave","time":"...","user":"ann","room":"lobby"}
    {"event":"status","time":"...","user":"ann","status":"away","note":"lunch"}

"message" and "private" share one id sequence; `MessageLog.next_id` is 1 + the largest
id in the file. A string holding a lone surrogate cannot be UTF-8, so such a record is
written with `ensure_ascii=True` instead; both decode to the same record.

Why JSON Lines and not one JSON array: appending a record is one write at the end of the
file, whatever its size, while an array must be rewritten, or the closing bracket sought
and overwritten, to stay valid. A crash can damage only the last line, and each line is
checked on its own, so the damage is found and cut off without touching the rest; `jq`
and any JSON-lines reader can read the file as it is.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, BinaryIO, Callable, TypeGuard

__all__ = [
    "ID_EVENTS", "LineHandler", "Record", "Scan", "decode_line", "encode_record", "is_id",
    "is_message_of", "scan_lines", "timestamp",
]

Record = dict[str, Any]

ID_EVENTS = frozenset({"message", "private"})  # the events that share one id sequence

_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)
_ASCII_ENCODER = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"), allow_nan=False)


def timestamp(moment: datetime | None = None) -> str:
    """`moment` (default: now) as UTC ISO 8601 with milliseconds and Z, as records carry it."""
    moment = datetime.now(timezone.utc) if moment is None else moment.astimezone(timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def encode_record(record: Record) -> bytes:
    """One log line (with its newline) for `record`; TypeError/ValueError if it is not one."""
    _check_record(record)
    try:
        text = _ENCODER.encode(record)
        return text.encode("utf-8") + b"\n"
    except UnicodeEncodeError:  # a lone surrogate: valid JSON only when escaped
        return _ASCII_ENCODER.encode(record).encode("ascii") + b"\n"


def line_around(record: Record, members: bytes) -> bytes:
    """The log line of `record` when every field but "event" is already encoded
    (`protocol.encode_members`, the encoding its frame shares): {"event": ..., <members>}.
    `record` is checked as encode_record checks it; the caller vouches that `members`
    encodes the rest of it. (Lone surrogates were written as "?" there, as on the wire.)"""
    _check_record(record)
    return b'{"event":' + _ENCODER.encode(record["event"]).encode() + b"," + members + b"}\n"


def decode_line(line: bytes) -> Record | None:
    """The record on a log line, or None when the line is not a JSON object."""
    try:
        record = json.loads(line.decode("utf-8"))  # json.loads(bytes) sniffs the encoding: slower
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return None
    return record if isinstance(record, dict) else None


def _check_record(record: Record) -> None:
    if not isinstance(record, dict):
        raise TypeError(f"a log record is a dict, not {type(record).__name__}")
    event = record.get("event")
    if not isinstance(event, str) or not isinstance(record.get("time"), str):
        raise ValueError("a log record needs string 'event' and 'time' fields")
    if event in ID_EVENTS and not is_id(record.get("id")):
        raise ValueError(f"a {event!r} record needs an integer 'id'")
    if event == "message" and not isinstance(record.get("room"), str):
        raise ValueError("a 'message' record needs a string 'room'")


def is_id(value: object) -> TypeGuard[int]:
    """A record id: a non-negative int (a bool is not one)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def is_message_of(record: Record | None, room: str, record_id: int) -> bool:
    """Whether `record` is the message `record_id` of `room` (what an index entry names)."""
    return (record is not None and record.get("event") == "message"
            and record.get("room") == room and record.get("id") == record_id)


@dataclass(frozen=True)
class Scan:
    """What `scan_lines` found."""

    good_end: int  # offset just past the last good line
    end: int  # offset where reading stopped: the end of the file (or `stop`)
    lines: int
    skipped: list[int]  # offsets of bad lines that have good lines after them


LineHandler = Callable[[Record, int, int], None]  # record, offset of its line, line length


def scan_lines(
    reader: BinaryIO, start: int, on_record: LineHandler, stop: int | None = None
) -> Scan:
    """Parse the lines from `start` to the end (or `stop`), feeding good records on."""
    reader.seek(start)
    pos = good_end = start
    lines = 0
    skipped: list[int] = []
    bad_since_good: list[int] = []
    for line in reader:
        line_start, pos = pos, pos + len(line)
        if not line.endswith(b"\n"):
            break  # only the last line can lack its newline: a torn write
        record = decode_line(line)
        if record is None:
            bad_since_good.append(line_start)
        else:
            skipped += bad_since_good
            bad_since_good.clear()
            on_record(record, line_start, len(line))
            lines += 1
            good_end = pos
        if stop is not None and pos >= stop:
            skipped += bad_since_good
            good_end = pos
            break
    return Scan(good_end, pos, lines, skipped)
