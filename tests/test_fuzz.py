"""Issue 5, point 4: fuzzing the frame decoder, every request handler, and a live server.

Three layers:
- the decoder alone (Hypothesis): any bytes, in any chunking, give the same frames and
  errors, only ever `ProtocolError`, and never buffer more than one frame's worth;
- every request handler of a live server (Hypothesis): for each frame type in
  protocol.REQUEST_FIELDS, arbitrary JSON values (or none) in every field, sent over a
  logged-in raw connection (and, for the login frames, over a fresh one). The server must
  answer with error frames, or disconnect that client only; it must keep serving a
  bystander, and log no traceback;
- a bounded-time fuzz of the whole server: several raw connections send random bytes and
  mutated valid frames while a normal client chats; the server stays up, logs no
  traceback, and the normal client gets every one of its messages, in order.

Replaying: Hypothesis prints a `@reproduce_failure` blob on failure. The time-bounded fuzz
runs with a fixed seed and a random one, both printed; `GAPSHAPE_FUZZ_SEED=<n>` replays
one (what each connection sends is a function of the seed; thread timing is not).
`GAPSHAPE_FUZZ_BUDGET=<seconds>` lengthens the run for a soak.
"""
from __future__ import annotations

import base64
import collections
import itertools
import json
import logging
import os
import random
import secrets
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import auth
import errors
from client import Disconnected, ErrorEvent, RoomMessage
from hostile_net import WAIT, PeerClosed, RawPeer, wait_until
from protocol import (
    DEFAULT_MAX_FRAME_SIZE,
    HEADER,
    PROTOCOL_VERSION,
    REQUEST_FIELDS,
    FrameDecoder,
    encode_frame,
    validate_request,
)
from server import ChatServer, ServerConfig

pytestmark = pytest.mark.timeout(90)

ERROR_CODES = {cls.code for cls in vars(errors).values()
               if isinstance(cls, type) and issubclass(cls, errors.GapshapeError)}
FATAL_CODES = {cls.code for cls in vars(errors).values()
               if isinstance(cls, type) and issubclass(cls, errors.GapshapeError) and cls.fatal}
SERVER_FRAMES = {"challenge", "welcome", "joined", "left", "message", "user_joined", "user_left",
                 "status", "members", "rooms", "users", "key", "private", "private_sent",
                 "private_queued", "private_delivered", "private_expired", "history", "error", "ping",
                 "pong", "bye"}

FIXED_SEED = 0x6A95_0005
_replay = os.environ.get("GAPSHAPE_FUZZ_SEED")
SEEDS = ([pytest.param(int(_replay, 0), id="replay-seed")] if _replay else
         [pytest.param(FIXED_SEED, id="fixed-seed"),
          pytest.param(secrets.randbits(32), id="random-seed")])
BUDGET = float(os.environ.get("GAPSHAPE_FUZZ_BUDGET", "4.0"))  # seconds per seed


def tracebacks(records: list[logging.LogRecord]) -> list[str]:
    return [f"{r.name}: {r.getMessage()}" for r in records
            if r.levelno >= logging.ERROR or r.exc_info]


def raw_frame(value: Any) -> bytes:
    """Frame any JSON value (even a non-object) with ASCII escapes, so lone surrogates in
    strings travel as valid JSON \\u escapes instead of failing to encode here."""
    body = json.dumps(value, ensure_ascii=True, allow_nan=False).encode("ascii")
    return HEADER.pack(len(body)) + body


# -- strategies ---------------------------------------------------------------------------

MISSING = object()

json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
    st.sampled_from([2 ** 64, -(2 ** 63) - 1, -0.0, 1e308, 5e-324, ""]),
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(
        st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)

NAMES = ["witness", "fuzzer", "WITNESS", "nobody", "a" * 32, "a" * 33, "", " ", "bad name",
         "é", "\udc80", "steady"]
ROOMS = ["#common", "common", "#Fuzz", "fuzz.room", "#", "##", "#" + "r" * 33, "#a b", "#\u0000"]
STATUS_WORDS = ["online", "away", "dnd", "BUSY", " afk ", "sleeping", "", "x" * 300]


def _plausible_strings(kind: str, field: str) -> st.SearchStrategy[str]:
    """Strings a handler looks at closely: near-valid names, rooms, sizes, base64."""
    common = st.sampled_from(["", " ", "x" * 8001, "\x00", "\udcff"]) | st.text(max_size=60)
    if field in ("to", "user", "username"):
        return st.sampled_from(NAMES) | common
    if field == "room":
        return st.sampled_from(ROOMS) | common
    if field == "status":
        return st.sampled_from(STATUS_WORDS) | common
    if field in ("public_key", "signature"):
        encoded = st.binary(max_size=600).map(lambda b: base64.b64encode(b).decode())
        return encoded | st.sampled_from(["AAAA", "====", "not base64!", "QUJD\n", "é"]) | common
    if field == "note":
        return st.sampled_from(["", "lunch", "n" * 201]) | common
    return common


def _field_values(kind: str, field: str, expected: type) -> st.SearchStrategy[Any]:
    if expected is str:
        typed: st.SearchStrategy[Any] = _plausible_strings(kind, field)
    elif expected is int:
        typed = st.sampled_from([1, 0, 2, -1, 2 ** 31]) | st.integers()
    else:  # dict: the private envelope, opaque to the server
        typed = st.dictionaries(st.text(max_size=10), json_values, max_size=6)
    return st.one_of(st.just(MISSING), typed, typed, json_values)


@st.composite
def request_frames(draw: Callable[..., Any], kinds: list[str] | None = None) -> dict[str, Any]:
    """A frame of a type from REQUEST_FIELDS, each field absent, well-typed or anything."""
    kind = draw(st.sampled_from(kinds or sorted(REQUEST_FIELDS)))
    frame: dict[str, Any] = {}
    for field, (expected, _required) in REQUEST_FIELDS[kind].items():
        value = draw(_field_values(kind, field, expected))
        if value is not MISSING:
            frame[field] = value
    if kind not in ("hello", "auth") and draw(st.booleans()):
        frame.setdefault("ref", draw(st.text(max_size=10) | json_scalars))
    frame.update(draw(st.dictionaries(st.text(max_size=10), json_values, max_size=2)))
    frame["type"] = draw(st.just(kind) | st.just(kind) | st.just(kind) | json_scalars)
    return frame


# -- 1. the decoder -----------------------------------------------------------------------

def _decode_all(stream: bytes, cuts: list[int]) -> list[Any]:
    """Feed `stream` cut at `cuts`, then EOF; the frames and error classes, in order."""
    decoder = FrameDecoder(max_frame_size=256)
    results: list[Any] = []
    pieces = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)] + [b""]
    for piece in pieces:
        decoder.receive_data(piece)
        while True:
            try:
                frame = decoder.next_frame()
            except errors.ProtocolError as exc:
                results.append(type(exc).__name__)
                if exc.fatal:
                    return results
                continue
            if frame is None:
                break
            results.append(frame)
        assert decoder.buffered <= HEADER.size + decoder.max_frame_size
    return results


@st.composite
def hostile_streams(draw: Callable[..., Any]) -> bytes:
    """Valid frames, bad bodies, wrong lengths and random bytes, interleaved."""
    parts = []
    for _ in range(draw(st.integers(0, 6))):
        choice = draw(st.integers(0, 4))
        if choice == 0:
            parts.append(raw_frame(draw(request_frames())))
        elif choice == 1:
            body = draw(st.binary(max_size=80))
            parts.append(HEADER.pack(len(body)) + body)
        elif choice == 2:
            parts.append(HEADER.pack(draw(st.integers(0, 2 ** 32 - 1))))
        else:
            parts.append(draw(st.binary(max_size=40)))
    return b"".join(parts)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stream=hostile_streams(), data=st.data())
def test_decoder_gives_the_same_answer_in_any_chunking(stream: bytes, data: st.DataObject) -> None:
    whole = _decode_all(stream, [])
    one_by_one = _decode_all(stream, list(range(1, len(stream))))
    cuts = sorted(data.draw(st.sets(st.integers(1, max(1, len(stream) - 1)), max_size=8)))
    chunked = _decode_all(stream, [c for c in cuts if c < len(stream)])
    assert whole == one_by_one == chunked
    for item in whole:  # a frame is an object with a string type, or a ProtocolError name
        assert isinstance(item, str) or isinstance(item.get("type"), str)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frame=request_frames())
def test_validation_of_any_decoded_frame_raises_only_protocol_errors(frame: dict[str, Any]) -> None:
    try:
        [decoded] = FrameDecoder().feed(raw_frame(frame))
        validate_request(decoded)
    except errors.ProtocolError:
        pass


@pytest.mark.parametrize("number", ["1e999", "-1e999", "1E400", "0.1e1000"])
def test_anything_the_decoder_accepts_can_be_encoded_again(number: str) -> None:
    body = ('{"type":"private","to":"bob","envelope":{"n":%s}}' % number).encode()
    try:
        [frame] = FrameDecoder().feed(HEADER.pack(len(body)) + body)
    except errors.ProtocolError:
        return  # refused at the door: fine
    encode_frame(frame)  # what the server does to relay an envelope


# -- 2. every handler of a live server ----------------------------------------------------

class Live:
    """A server shared by the handler fuzz tests, with a bystander and a fuzzing client."""

    def __init__(self, directory: Path, keys: Any) -> None:
        self.keys = keys
        self.chat = ChatServer(ServerConfig(host="127.0.0.1", port=0, rate=0,
                                            log_path=directory / "messageslog.json"))
        self.chat.start()
        self.witness = RawPeer(self.chat.address)
        self.witness.login("witness", keys.get(1))
        self._fuzzer: RawPeer | None = None
        self.tokens = itertools.count()
        self.reconnects = 0

    def fuzzer(self) -> RawPeer:
        """The logged-in fuzzing connection; a new one if the last was disconnected."""
        if self._fuzzer is None or self._fuzzer.closed:
            if self._fuzzer is not None:
                self._fuzzer.close()
                self.reconnects += 1
            # The server may not have logged the old session out yet.
            peer = wait_until(self._try_login, what="the fuzzer logged in again")
            self._fuzzer = peer
        return self._fuzzer

    def _try_login(self) -> RawPeer | None:
        peer = RawPeer(self.chat.address)
        challenge = peer.hello("fuzzer", self.keys.get(0))
        if challenge["type"] != "challenge":
            peer.close()
            assert challenge.get("code") == "name_taken", challenge
            return None
        signature = auth.sign_login(self.keys.get(0), base64.b64decode(challenge["nonce"]),
                                    "fuzzer", challenge["server_id"])
        peer.send({"type": "auth", "signature": base64.b64encode(signature).decode()})
        welcome = peer.wait_for("welcome")
        for room in welcome["rooms"]:  # fuzzed `leave` frames may have emptied the list
            peer.wait_for(lambda f, room=room: f["type"] == "joined" and f["room"] == room)
        return peer

    def exchange(self, peer: RawPeer, data: bytes) -> tuple[list[dict[str, Any]], bool]:
        """Send `data`, then a ping; return the frames that came before its pong (all of
        them, if the server hung up instead) and whether the connection is still open."""
        token = f"sentinel-{next(self.tokens)}"
        start = len(peer.frames)
        if peer.try_send(data) and peer.try_send(encode_frame({"type": "ping", "data": token})):
            try:
                peer.wait_for(lambda f: f["type"] == "pong" and f.get("data") == token)
                return peer.frames[start:-1], True
            except PeerClosed:
                pass
        try:
            peer.wait_closed()
        except PeerClosed:
            pass
        return peer.frames[start:], False

    def bystander_is_served(self) -> None:
        token = f"witness-{next(self.tokens)}"
        self.witness.send({"type": "ping", "data": token})
        self.witness.wait_for(lambda f: f["type"] == "pong" and f.get("data") == token)

    def close(self) -> None:
        for peer in (self._fuzzer, self.witness):
            if peer is not None:
                peer.close()
        self.chat.stop()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, key_pool: Any) -> Iterator[Live]:
    server = Live(tmp_path_factory.mktemp("fuzz-live"), key_pool)
    yield server
    server.close()


def _expected_validity(frame: Any) -> bool:
    try:
        validate_request(frame)
        return True
    except (errors.ProtocolError, KeyError, TypeError):
        return False


# Frames the server sends only in answer to a request of this connection.
ANSWERS = {"joined", "members", "rooms", "users", "key", "private_sent", "bye", "challenge",
           "welcome"}


def _check_answer(frame: dict[str, Any], answer: list[dict[str, Any]], open_: bool) -> None:
    """What came back for one fuzzed frame on a logged-in connection is acceptable.

    `answer` may also hold room traffic that happened meanwhile (others' messages, joins),
    so only the error frames and the request-specific answers are compared exactly."""
    for reply in answer:
        assert reply.get("type") in SERVER_FRAMES, reply
        if reply["type"] == "error":
            assert reply.get("code") in ERROR_CODES and isinstance(reply.get("message"), str), reply
        assert reply["type"] not in ("welcome", "challenge"), f"{frame!r} got {reply!r}"
    codes = [r["code"] for r in answer if r["type"] == "error"]
    if not isinstance(frame.get("type"), str) or not _expected_validity(frame):
        assert codes == ["bad_frame"] and open_, (frame, answer)
        assert not [r for r in answer if r["type"] in ANSWERS], (frame, answer)
    if not open_:  # only a goodbye or a fatal error may end the connection
        assert frame.get("type") == "quit" or any(
            r["type"] == "bye" or r.get("code") in FATAL_CODES for r in answer
        ) or len(raw_frame(frame)) > DEFAULT_MAX_FRAME_SIZE, (frame, answer)


@settings(max_examples=250, deadline=None, print_blob=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(frame=request_frames())
def test_every_handler_answers_arbitrary_fields_with_errors_only(
    live: Live, caplog: pytest.LogCaptureFixture, frame: dict[str, Any]
) -> None:
    seen = len(caplog.records)
    answer, open_ = live.exchange(live.fuzzer(), raw_frame(frame))
    _check_answer(frame, answer, open_)
    live.bystander_is_served()
    assert not tracebacks(caplog.records[seen:]), frame


@settings(max_examples=120, deadline=None, print_blob=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(frame=request_frames(kinds=["hello", "auth", "ping", "pong", "quit", "message", "join"]),
       after_valid_hello=st.booleans())
def test_login_handlers_answer_arbitrary_fields_on_a_fresh_connection(
    live: Live, caplog: pytest.LogCaptureFixture, frame: dict[str, Any], after_valid_hello: bool
) -> None:
    seen = len(caplog.records)
    with RawPeer(live.chat.address) as peer:
        if after_valid_hello:  # the fuzzed frame answers a real challenge
            assert peer.hello("newcomer", live.keys.get(2))["type"] == "challenge"
        answer, open_ = live.exchange(peer, raw_frame(frame))
    for reply in answer:
        assert reply.get("type") in SERVER_FRAMES and reply["type"] != "welcome", (frame, reply)
        if reply["type"] == "error":
            assert reply.get("code") in ERROR_CODES, reply
    # The connection ends exactly when the server said it would: a goodbye or a fatal error.
    ended = any(r["type"] == "bye" or r.get("code") in FATAL_CODES for r in answer)
    assert open_ is not ended, (frame, answer, open_)
    live.bystander_is_served()
    assert not tracebacks(caplog.records[seen:]), frame


@settings(max_examples=60, deadline=None, print_blob=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(1, 255)), min_size=1,
                      max_size=4),
       cut=st.none() | st.integers(0, 600))
def test_hello_with_a_mutated_public_key_is_refused_cleanly(
    live: Live, caplog: pytest.LogCaptureFixture, flips: list[tuple[int, int]], cut: int | None
) -> None:
    """Bit flips and truncations of a real key reach the ASN.1 parser; it must only refuse."""
    der = bytearray(auth.public_key_der(live.keys.get(2)))
    for position, mask in flips:
        der[position % len(der)] ^= mask
    if cut is not None:
        der = der[:cut]
    seen = len(caplog.records)
    with RawPeer(live.chat.address) as peer:
        answer, _open = live.exchange(peer, encode_frame({
            "type": "hello", "version": PROTOCOL_VERSION, "username": "mutant",
            "public_key": base64.b64encode(bytes(der)).decode()}))
    kinds = [r["type"] if r["type"] != "error" else r["code"] for r in answer]
    assert kinds in (["challenge"], ["auth_failed"], ["bad_frame"]), kinds
    live.bystander_is_served()
    assert not tracebacks(caplog.records[seen:])


@pytest.mark.parametrize("number", ["9" * 5000, "-" + "1" * 4301, "1e99999", "1" * 400 + ".5"])
def test_numbers_json_cannot_hold_are_bad_frames(
    live: Live, caplog: pytest.LogCaptureFixture, number: str
) -> None:
    seen = len(caplog.records)
    body = ('{"type":"message","text":"n","ref":%s}' % number).encode()
    answer, open_ = live.exchange(live.fuzzer(), HEADER.pack(len(body)) + body)
    kinds = [r["type"] if r["type"] != "error" else r["code"] for r in answer]
    assert open_ and kinds in (["bad_frame"], ["bad_request"]), kinds
    live.bystander_is_served()
    assert not tracebacks(caplog.records[seen:])


def test_an_envelope_holding_an_out_of_range_number_is_refused_without_a_traceback(
    live: Live, caplog: pytest.LogCaptureFixture
) -> None:
    seen = len(caplog.records)
    body = b'{"type":"private","to":"witness","envelope":{"n":1e999}}'
    answer, open_ = live.exchange(live.fuzzer(), HEADER.pack(len(body)) + body)
    assert open_, f"the server dropped the connection after {answer!r}"
    assert [r.get("code") for r in answer if r["type"] == "error"] == ["bad_frame"], answer
    live.bystander_is_served()
    assert not tracebacks(caplog.records[seen:])


def test_deeply_nested_json_is_refused_without_a_traceback(
    live: Live, caplog: pytest.LogCaptureFixture
) -> None:
    seen = len(caplog.records)
    depths = [*range(1, 200, 37), *range(900, 1001), 5000, 30000]
    for depth in depths:
        envelope = "[" * depth + "]" * depth
        body = ('{"type":"private","to":"witness","envelope":{"x":%s}}' % envelope).encode()
        answer, open_ = live.exchange(live.fuzzer(), HEADER.pack(len(body)) + body)
        assert open_, f"depth {depth}: the server dropped the connection after {answer!r}"
        assert [r["type"] for r in answer if r["type"] in ("private_sent", "error")] in (
            [["private_sent"], ["error"]]), (depth, answer)
    live.bystander_is_served()
    assert not tracebacks(caplog.records[seen:])


# -- 3. the whole server, for a fixed time budget ------------------------------------------

def _plausible_frame(rng: random.Random, victim: str) -> dict[str, Any]:
    kind = rng.choice(sorted(REQUEST_FIELDS))
    frame: dict[str, Any] = {"type": kind}
    for field, (expected, _required) in REQUEST_FIELDS[kind].items():
        if expected is int:
            frame[field] = rng.choice([1, 1, 0, 2, -1])
        elif expected is dict:
            frame[field] = {"v": 1, "sender": rng.choice([victim, "fz"]),
                            "ct": base64.b64encode(rng.randbytes(rng.randrange(64))).decode()}
        elif field in ("to", "user", "username"):
            frame[field] = rng.choice([victim, "nobody", "fz" + str(rng.randrange(9)), ""])
        elif field == "room":
            frame[field] = rng.choice(ROOMS)
        elif field == "status":
            frame[field] = rng.choice(STATUS_WORDS)
        else:
            length = rng.randrange(30)
            frame[field] = "".join(rng.choice("ab \u00e9\U0001d11e") for _ in range(length))
    return frame


def _mutate(rng: random.Random, data: bytes) -> bytes:
    """One of the classic mutations of a framed message."""
    body = bytearray(data[HEADER.size:])
    choice = rng.randrange(8)
    if choice == 0 and body:  # flip bits in the body, keep the length honest
        for _ in range(rng.randrange(1, 4)):
            body[rng.randrange(len(body))] ^= 1 << rng.randrange(8)
        return HEADER.pack(len(body)) + bytes(body)
    if choice == 1:  # a lying length header
        length = rng.choice([0, 1, len(body) - 1, len(body) + 1, 2 ** 16, 2 ** 31, 2 ** 32 - 1])
        return HEADER.pack(max(0, length)) + bytes(body)
    if choice == 2:  # truncated: the rest of the stream is out of step
        return data[: rng.randrange(len(data) + 1)]
    if choice == 3 and body:  # insert random bytes, length fixed up
        at = rng.randrange(len(body) + 1)
        body[at:at] = rng.randbytes(rng.randrange(1, 8))
        return HEADER.pack(len(body)) + bytes(body)
    if choice == 4:  # a JSON token swapped for another
        text = body.decode("utf-8", "replace")
        for old, new in [('"', "'"), (":", ","), ("{", "["), ("}", ""), ("1", "1e999"),
                         ('"type"', '"type","type"')]:
            if old in text and rng.random() < 0.5:
                text = text.replace(old, new, 1)
        encoded = text.encode("utf-8", "surrogatepass")
        return HEADER.pack(len(encoded)) + encoded
    if choice == 5:  # random bytes, framed
        junk = rng.randbytes(rng.randrange(200))
        return HEADER.pack(len(junk)) + junk
    if choice == 6:  # random bytes, unframed
        return rng.randbytes(rng.randrange(1, 64))
    return data + data[: rng.randrange(len(data))]  # one and a bit


class Fuzzer(threading.Thread):
    """One hostile connection after another, until the deadline."""

    def __init__(self, index: int, seed: int, address: tuple[str, int], key: Any,
                 deadline: float, victim: str) -> None:
        super().__init__(name=f"fuzzer-{index}", daemon=True)
        self.rng = random.Random(seed * 1_000 + index)
        self.index, self.address, self.key = index, address, key
        self.deadline, self.victim = deadline, victim
        self.stats: collections.Counter[str] = collections.Counter()
        self.failure: BaseException | None = None

    def run(self) -> None:
        try:
            while time.monotonic() < self.deadline:
                self._one_connection()
        except BaseException as exc:  # reported by the test, in its own thread
            self.failure = exc

    def _one_connection(self) -> None:
        rng = self.rng
        try:
            peer = RawPeer(self.address, timeout=2.0)
        except OSError:
            self.stats["connect_refused"] += 1
            return
        self.stats["connections"] += 1
        with peer:
            if rng.random() < 0.5:
                try:
                    peer.login(f"fz{self.index}", self.key)
                    self.stats["logins"] += 1
                except (AssertionError, PeerClosed, TimeoutError, OSError):
                    self.stats["login_refused"] += 1
            for _ in range(rng.randrange(1, 60)):
                if time.monotonic() >= self.deadline or peer.closed:
                    break
                data = raw_frame(_plausible_frame(rng, self.victim))
                if rng.random() < 0.7:
                    data = _mutate(rng, data)
                if rng.random() < 0.2:  # in dribbles
                    ok = all(peer.try_send(data[i:i + 3]) for i in range(0, len(data), 3))
                else:
                    ok = peer.try_send(data)
                self.stats["sends"] += 1
                if not ok:
                    break
                try:
                    for frame in peer.drain_available():
                        self.stats["frames_" + str(frame.get("type"))] += 1
                        if frame.get("type") == "error":
                            self.stats["error_" + str(frame.get("code"))] += 1
                except errors.ProtocolError as exc:
                    raise AssertionError(f"the server sent an invalid frame: {exc}") from None
        self.stats["closed_by_server" if peer.closed else "closed_by_fuzzer"] += 1


@pytest.mark.parametrize("seed", SEEDS)
def test_server_survives_a_timed_fuzz_while_a_normal_client_chats(
    tmp_path: Path, key_pool: Any, client_factory: Any, caplog: pytest.LogCaptureFixture,
    seed: int
) -> None:
    print(f"\nfuzz seed {seed} (replay: GAPSHAPE_FUZZ_SEED={seed}), budget {BUDGET}s")
    chat = ChatServer(ServerConfig(host="127.0.0.1", port=0, rate=0, login_timeout=2.0,
                                   log_path=tmp_path / "messageslog.json"))
    chat.start()
    try:
        steady = client_factory(chat, "steady", key=1)
        deadline = time.monotonic() + BUDGET
        fuzzers = [Fuzzer(i, seed, chat.address, key_pool.get(0), deadline, "steady")
                   for i in range(6)]
        for fuzzer in fuzzers:
            fuzzer.start()
        sent = []
        while time.monotonic() < deadline:
            text = f"steady {len(sent)}"
            steady.say(text)
            sent.append(text)
            time.sleep(0.02)  # a brisk human's pace, not a synchronization
        for fuzzer in fuzzers:
            fuzzer.join(WAIT)
            assert not fuzzer.is_alive(), f"seed {seed}: fuzzer {fuzzer.index} is stuck"
        failures = [f.failure for f in fuzzers if f.failure is not None]
        assert not failures, f"seed {seed}: {failures[0]!r}"

        steady.recorder.wait_for(lambda e: isinstance(e, RoomMessage) and e.text == sent[-1])
        received = [e.text for e in steady.recorder.of_type(RoomMessage)
                    if e.own and not e.history]
        assert received == sent, f"seed {seed}: the normal client lost or reordered messages"
        assert not steady.recorder.of_type(Disconnected), f"seed {seed}"
        assert not [e for e in steady.recorder.of_type(ErrorEvent) if e.request == "message"]

        late = client_factory(chat, "late", key=2)  # the server still accepts and serves
        late.say("after the storm")
        late.recorder.wait_for(lambda e: isinstance(e, RoomMessage) and e.text == "after the storm")
        wait_until(lambda: chat.connection_count() == 2,
                   what=f"seed {seed}: only the two real clients still connected")
        assert not tracebacks(caplog.records), f"seed {seed}: {tracebacks(caplog.records)[:3]}"

        totals: collections.Counter[str] = collections.Counter()
        for fuzzer in fuzzers:
            totals.update(fuzzer.stats)
        print(f"steady sent {len(sent)} messages, all received in order; fuzzers: "
              + ", ".join(f"{k}={v}" for k, v in sorted(totals.items())))
        assert totals["sends"] > 200, f"the fuzz did little: {totals}"
    finally:
        chat.stop()
