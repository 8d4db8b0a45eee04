"""Gapshape's wire format, with no sockets in it (sans-IO).

A frame on the wire is

    +----------------------------+-----------------------------------------+
    | length: 4 bytes, unsigned, | body: `length` bytes of UTF-8 JSON that |
    | big-endian                 | decode to an object with a string "type"|
    +----------------------------+-----------------------------------------+

`encode_frame` turns a frame (a dict) into bytes. `FrameDecoder` is fed whatever bytes the
transport produced, in any chunking, and hands back complete frames. Its one rule, as in
h11's readers: `next_frame()` returns a frame, returns None when it needs more bytes, or
raises a `ProtocolError`. The length is checked against the limit as soon as the 4 header
bytes are in, so an oversized body is never buffered. A bad body (not UTF-8, not JSON, not
an object, no "type") consumes exactly that frame: the stream stays in step and the caller
may carry on; a bad header is fatal.

`validate_request` checks a client frame against `REQUEST_FIELDS`, the one table of what
each request type carries; docs/PROTOCOL.md documents the same table.
"""
from __future__ import annotations

import json
import math
import struct
from typing import Any, Mapping

from errors import FrameTooLarge, ProtocolError, TruncatedFrame

# 2: flood control slows instead of refusing, `ref` only to the sender, paged member, room
# and user lists, `limits` in `welcome`, takeover of a session by a new login.
PROTOCOL_VERSION = 2
DEFAULT_MAX_FRAME_SIZE = 64 * 1024
# What a client accepts from the server: a `joined` frame carries ten messages of up to
# 8,000 characters (up to 4 bytes each in UTF-8) and the room's member list.
MAX_SERVER_FRAME_SIZE = 16 * 1024 * 1024
MAX_NESTING = 32  # objects and arrays inside one another; real frames need 3
MAX_REF_CHARS = 64  # a client's own label for a request, echoed back only to it
HEADER = struct.Struct(">I")

Frame = dict[str, Any]

_encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def encode_body(frame: Mapping[str, Any]) -> bytes:
    """The JSON body of a frame, without its header.

    JSON's \\u escapes can smuggle lone surrogates into a str, which UTF-8 cannot carry;
    they go out as "?" so that no peer input can make encoding fail.
    """
    return _encoder.encode(frame).encode("utf-8", "replace")


def encode_frame(frame: Mapping[str, Any]) -> bytes:
    """A frame as wire bytes: length header + UTF-8 JSON body."""
    body = encode_body(frame)
    return HEADER.pack(len(body)) + body


def encode_members(fields: Mapping[str, Any]) -> bytes:
    """The members of a JSON object as encode_body writes them, without the braces: one
    encoding shared by a frame and a log line (`frame_around`, `logformat.line_around`)."""
    return encode_body(fields)[1:-1]


def frame_around(kind: str, members: bytes) -> bytes:
    """The frame {"type": kind, <members>} as wire bytes; `members` from encode_members."""
    body = b'{"type":' + encode_json(kind) + (b"," + members if members else b"") + b"}"
    return HEADER.pack(len(body)) + body


def encode_frame_with(frame: Mapping[str, Any], key: str, raw_json: bytes) -> bytes:
    """A frame as wire bytes with `key` set to `raw_json`, JSON already encoded (by
    encode_body or encode_json): a part shared by many frames, such as a room's first page
    of members, is encoded once, not once per frame. `frame` must not hold `key`."""
    rest = encode_body(frame)  # ends with "}"; `key` goes last, so "type" stays first
    tail = b'"' + key.encode() + b'":' + raw_json + b"}"
    body = rest[:-1] + (b"," + tail if len(rest) > 2 else tail)
    return HEADER.pack(len(body)) + body


def with_field(data: bytes, key: str, value: Any) -> bytes:
    """Wire bytes `data` (from encode_frame, an object with at least one field) with
    `key`: `value` added last, without encoding the rest again: the sender's echo of a
    message is everyone's frame plus its "ref". `key` is a plain name (no escaping) and
    `data` must not hold it."""
    body = b"".join((data[HEADER.size:-1], b',"', key.encode(), b'":', encode_json(value), b"}"))
    return HEADER.pack(len(body)) + body


def encode_json(value: Any) -> bytes:
    """Any JSON value as UTF-8, as encode_body writes it (for encode_frame_with)."""
    return _encoder.encode(value).encode("utf-8", "replace")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    """A JSON number as a float; one too large for a double (1e999) would become inf,
    which JSON cannot carry, so no frame holding it could be encoded again."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:20]} is out of range")
    return value


def decode_body(body: bytes) -> Frame:
    """Parse one frame body; raise ProtocolError saying what is wrong with it."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"frame is not valid UTF-8 (byte {exc.start})") from None
    try:
        frame = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    except RecursionError:
        raise ProtocolError("frame JSON is nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, NaN/Infinity, over-long integers
        raise ProtocolError(f"frame is not valid JSON: {exc}") from None
    if not isinstance(frame, dict):
        raise ProtocolError("frame must be a JSON object")
    if not isinstance(frame.get("type"), str):
        raise ProtocolError('frame must have a string "type"')
    # Only a body with more brackets than the limit can nest that deep; counting bytes in C
    # spares the walk for every ordinary frame on the reader's hot path.
    brackets = body.count(b"[") + body.count(b"{")
    if brackets > MAX_NESTING and _nesting_exceeds(frame, MAX_NESTING):
        # json.loads stops near the recursion limit, but anything that deep cannot be
        # encoded again a few stack frames further down (rooms.send_private would fail).
        raise ProtocolError(f"frame JSON is nested more than {MAX_NESTING} levels deep")
    return frame


def _nesting_exceeds(value: Any, limit: int) -> bool:
    """Whether objects/arrays nest more than `limit` deep; iterative, so any depth is safe."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = list(item.values())
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


class FrameDecoder:
    """Reassembles frames from a byte stream fed in arbitrary chunks."""

    __slots__ = ("max_frame_size", "_buffer", "_start", "_eof")

    def __init__(self, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        self.max_frame_size = max_frame_size
        self._buffer = bytearray()
        self._start = 0  # consumed prefix of _buffer, dropped lazily to keep feeding O(n)
        self._eof = False

    def receive_data(self, data: bytes) -> None:
        """Add bytes from the transport; b"" means the peer closed the stream."""
        if not data:
            self._eof = True
            return
        if self._start and self._start * 2 >= len(self._buffer):
            del self._buffer[: self._start]
            self._start = 0
        self._buffer += data

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as frames."""
        return len(self._buffer) - self._start

    def complete_frames(self, limit: int) -> int:
        """How many whole frames are buffered (counting stops at `limit`); reads headers
        only. Flood control uses it to see how far ahead of its rate a client is."""
        count, position, end = 0, self._start, len(self._buffer)
        while count < limit and position + HEADER.size <= end:
            (length,) = HEADER.unpack_from(self._buffer, position)
            position += HEADER.size + length
            if position > end:
                break
            count += 1
        return count

    def next_frame(self) -> Frame | None:
        """The next complete frame, None if more bytes are needed, or raise ProtocolError."""
        available = len(self._buffer) - self._start
        if available < HEADER.size:
            self._check_not_truncated(available)
            return None
        (length,) = HEADER.unpack_from(self._buffer, self._start)
        if length > self.max_frame_size:
            raise FrameTooLarge(
                f"frame of {length} bytes is over the limit of {self.max_frame_size} bytes"
            )
        end = self._start + HEADER.size + length
        if end > len(self._buffer):
            self._check_not_truncated(available)
            return None
        body = bytes(self._buffer[self._start + HEADER.size : end])
        if end == len(self._buffer):  # all consumed: drop the buffer's capacity while idle
            self._buffer = bytearray()
            self._start = 0
        else:
            self._start = end
        return decode_body(body)

    def _check_not_truncated(self, available: int) -> None:
        if self._eof and available:
            raise TruncatedFrame(f"connection closed in the middle of a frame ({available} bytes)")

    def feed(self, data: bytes) -> list[Frame]:
        """Convenience: receive `data` and return every frame now complete."""
        self.receive_data(data)
        frames = []
        while (frame := self.next_frame()) is not None:
            frames.append(frame)
        return frames


# What each client request carries: field -> (type, required). Strings are further checked
# by the handlers (names, lengths); the table guarantees presence and JSON type only.
# `version` may be of any type: whatever it is, a version this server does not speak gets
# `unsupported_version` (checked by the handler), so a future client learns the right thing.
REQUEST_FIELDS: dict[str, dict[str, tuple[type, bool]]] = {
    "hello": {"version": (object, True), "username": (str, True), "public_key": (str, True),
              "client": (str, False)},
    "auth": {"signature": (str, True)},
    "message": {"text": (str, True), "room": (str, False), "ref": (str, False)},
    "join": {"room": (str, True)},
    "leave": {"room": (str, False)},
    "history": {"room": (str, True), "before": (int, False), "limit": (int, False)},
    "rooms": {"after": (str, False)},
    "list": {"room": (str, False), "after": (str, False)},
    "users": {"after": (str, False)},
    "status": {"status": (str, True), "note": (str, False)},
    "private": {"to": (str, True), "envelope": (dict, True), "ref": (str, False)},
    "get_key": {"user": (str, True)},
    "ack": {"ids": (list, True)},
    "ping": {"data": (str, False)},
    "pong": {"data": (str, False)},
    "quit": {},
}


def validate_request(frame: Frame) -> Frame:
    """Check a client frame's type and field types against REQUEST_FIELDS."""
    kind = frame["type"]
    fields = REQUEST_FIELDS.get(kind)
    if fields is None:
        raise ProtocolError(f'unknown frame type "{kind[:40]}"')
    for name, (expected, required) in fields.items():
        if name not in frame:
            if required:
                raise ProtocolError(f'"{kind}" frame is missing the field "{name}"')
            continue
        value = frame[name]
        # bool is an int subclass in Python, but true/false is not a version number.
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise ProtocolError(
                f'field "{name}" of a "{kind}" frame must be a JSON {_json_type_name(expected)}'
            )
    return frame


def _json_type_name(python_type: type) -> str:
    return {str: "string", int: "integer", dict: "object", list: "array"}.get(
        python_type, python_type.__name__
    )
