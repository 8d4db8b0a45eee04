"""The frame codec, fed whole, byte by byte, in random chunks, and with hostile bytes."""
from __future__ import annotations

import json
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from errors import FrameTooLarge, ProtocolError, TruncatedFrame
from protocol import (
    DEFAULT_MAX_FRAME_SIZE,
    FrameDecoder,
    decode_body,
    encode_frame,
    validate_request,
    with_field,
)

FRAMES = [
    {"type": "message", "text": "hello"},
    {"type": "message", "text": "emoji 😀 and astral 𝄞, RTL שלום, NUL \u0000"},
    {"type": "join", "room": "#gaming"},
    {"type": "status", "status": "dnd", "note": ""},
]
STREAM = b"".join(encode_frame(f) for f in FRAMES)


def frame_with_body(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def test_encode_is_length_prefixed_utf8_json() -> None:
    data = encode_frame({"type": "message", "text": "é"})
    (length,) = struct.unpack(">I", data[:4])
    assert length == len(data) - 4
    assert json.loads(data[4:].decode("utf-8")) == {"type": "message", "text": "é"}
    assert "é".encode() in data  # not \u-escaped: UTF-8 on the wire


def test_whole_stream() -> None:
    assert FrameDecoder().feed(STREAM) == FRAMES


def test_byte_by_byte() -> None:
    decoder = FrameDecoder()
    out = []
    for i in range(len(STREAM)):
        out += decoder.feed(STREAM[i : i + 1])
    assert out == FRAMES
    assert decoder.buffered == 0


def test_trailing_partial_frame_waits() -> None:
    decoder = FrameDecoder()
    extra = encode_frame({"type": "ping"})
    assert decoder.feed(STREAM + extra[:3]) == FRAMES
    assert decoder.next_frame() is None
    assert decoder.feed(extra[3:]) == [{"type": "ping"}]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=len(STREAM)), max_size=20))
def test_random_chunks(cuts: list[int]) -> None:
    points = sorted(set(cuts))
    pieces = [STREAM[a:b] for a, b in zip([0, *points], [*points, len(STREAM)], strict=True)]
    decoder = FrameDecoder()
    out = []
    for piece in pieces:
        out += decoder.feed(piece)
    assert out == FRAMES


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(max_size=10), st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=10)), st.data())
def test_any_json_object_round_trips(payload: dict, data: st.DataObject) -> None:
    frame = {**payload, "type": "x"}
    wire = encode_frame(frame)
    split = data.draw(st.integers(min_value=0, max_value=len(wire)))
    decoder = FrameDecoder()
    assert decoder.feed(wire[:split]) + decoder.feed(wire[split:]) == [frame]


def test_oversized_frame_rejected_from_header_alone() -> None:
    decoder = FrameDecoder(max_frame_size=100)
    # Only the header: the body is never sent, and the decoder must not wait for it.
    with pytest.raises(FrameTooLarge, match="101 bytes"):
        decoder.feed(struct.pack(">I", 101))


def body_of_size(size: int) -> bytes:
    empty = b'{"type":"m","t":""}'
    return b'{"type":"m","t":"' + b"x" * (size - len(empty)) + b'"}'


def test_frame_at_the_limit_is_accepted_and_one_byte_more_is_not() -> None:
    at_limit = body_of_size(DEFAULT_MAX_FRAME_SIZE)
    assert len(at_limit) == DEFAULT_MAX_FRAME_SIZE
    assert FrameDecoder().feed(frame_with_body(at_limit))[0]["type"] == "m"
    with pytest.raises(FrameTooLarge):
        FrameDecoder().feed(frame_with_body(body_of_size(DEFAULT_MAX_FRAME_SIZE + 1)))


@pytest.mark.parametrize("body, message", [
    (b"\xff\xfe{}", "UTF-8"),
    (b'{"type": "x"', "JSON"),
    (b"[1, 2]", "object"),
    (b'{"text": "no type"}', '"type"'),
    (b'{"type": 5}', '"type"'),
    (b'{"type": "x", "n": NaN}', "JSON"),
    (b"[" * 100_000, "nested"),
    (b'{"type": "x", "n": ' + b"9" * 5000 + b"}", "JSON"),
])
def test_bad_bodies_are_skipped_and_the_stream_stays_in_step(body: bytes, message: str) -> None:
    decoder = FrameDecoder(max_frame_size=1 << 20)
    decoder.receive_data(frame_with_body(body) + encode_frame({"type": "ping"}))
    with pytest.raises(ProtocolError, match=message):
        decoder.next_frame()
    assert decoder.next_frame() == {"type": "ping"}


def test_eof_mid_frame_is_reported() -> None:
    decoder = FrameDecoder()
    decoder.receive_data(encode_frame({"type": "ping"})[:-1])
    assert decoder.next_frame() is None
    decoder.receive_data(b"")
    with pytest.raises(TruncatedFrame):
        decoder.next_frame()


def test_clean_eof_is_not_an_error() -> None:
    decoder = FrameDecoder()
    decoder.receive_data(encode_frame({"type": "ping"}))
    decoder.receive_data(b"")
    assert decoder.next_frame() == {"type": "ping"}
    assert decoder.next_frame() is None


def test_lone_surrogates_cannot_break_encoding() -> None:
    frame = decode_body(b'{"type": "message", "text": "\\ud800 ok"}')
    assert FrameDecoder().feed(encode_frame(frame)) == [{"type": "message", "text": "? ok"}]


@pytest.mark.parametrize("frame, message", [
    ({"type": "nope"}, "unknown frame type"),
    ({"type": "message"}, "missing"),
    ({"type": "message", "text": 5}, "string"),
    ({"type": "status", "status": True}, "string"),
    ({"type": "list", "after": 3}, "string"),
    ({"type": "private", "to": "bob", "envelope": "x"}, "object"),
])
def test_request_validation(frame: dict, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        validate_request(frame)


def test_valid_requests_pass() -> None:
    assert validate_request({"type": "message", "text": "hi", "ref": "r1"})["text"] == "hi"
    assert validate_request({"type": "rooms"}) == {"type": "rooms"}


def decode_in_chunks(data: bytes, step: int) -> list[str]:
    """Feed `data` `step` bytes at a time, then end the stream; what came out, in order:
    each frame (a dict) or ProtocolError, going on after the ones that are not fatal."""
    decoder = FrameDecoder(max_frame_size=256)
    outcomes: list[str] = []

    def drain() -> bool:  # False once a fatal error ends the stream
        while True:
            try:
                frame = decoder.next_frame()
            except ProtocolError as error:  # anything else escapes and fails the test
                outcomes.append(f"{type(error).__name__}: {error.message}")
                if error.fatal:
                    return False
                continue
            if frame is None:
                return True
            assert isinstance(frame, dict), frame
            outcomes.append(repr(frame))  # repr: NaN compares equal to itself

    for i in range(0, len(data), step):
        decoder.receive_data(data[i : i + step])
        if not drain():
            return outcomes
    decoder.receive_data(b"")
    drain()
    return outcomes


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_only_raise_protocol_errors(data: bytes) -> None:
    outcomes = decode_in_chunks(data, 7)
    # How the bytes were cut up changes nothing: same frames, same errors, same order.
    assert decode_in_chunks(data, 1) == outcomes
    assert decode_in_chunks(data, max(1, len(data))) == outcomes
    # A stream that ends in the middle of a frame says so, and only at its end.
    truncated = [i for i, outcome in enumerate(outcomes) if outcome.startswith("TruncatedFrame")]
    assert truncated in ([], [len(outcomes) - 1]), outcomes


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(min_size=1).filter(lambda k: k not in ("ref", "type")), st.text()),
       st.text())
def test_with_field_is_the_frame_encoded_with_the_field_last(fields: dict, ref: str) -> None:
    """The echo's bytes (everyone's frame plus "ref") equal encoding the whole frame, for
    any text, lone surrogates included: the splice never encodes differently."""
    frame = {"type": "message", **fields}
    spliced = with_field(encode_frame(frame), "ref", ref)
    assert spliced == encode_frame({**frame, "ref": ref})
    assert decode_body(spliced[4:])["ref"] == ref.encode("utf-8", "replace").decode("utf-8")
