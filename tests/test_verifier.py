"""The login verifier (verifier.py): proofs checked in child processes, answers routed to
the threads that asked, a dead child's checks failed and the child replaced, and a login
during the gap told to try again (server_busy) over a real socket."""
from __future__ import annotations

import base64
import os
import signal
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from Crypto.PublicKey import RSA

import auth
from hostile_net import wait_until
from protocol import PROTOCOL_VERSION
from racing import race
from rawclient import RawClient
from server import build_parser, config_from_args
from verifier import LoginVerifier, VerifierUnavailable

SERVER_ID = "verifier-test"
NONCE = bytes(range(32))


def proof(key: RSA.RsaKey, username: str, nonce: bytes = NONCE) -> tuple[bytes, bytes, bytes, str, str]:
    """verify()'s arguments for `username`'s login with `key`."""
    return (auth.public_key_der(key), auth.sign_login(key, nonce, username, SERVER_ID), nonce,
            username, SERVER_ID)


def process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def verifiers() -> Iterator[Callable[..., LoginVerifier]]:
    made: list[LoginVerifier] = []

    def make(processes: int = 1, **options: Any) -> LoginVerifier:
        verifier = LoginVerifier(processes, **options)
        made.append(verifier)
        return verifier

    yield make
    for verifier in made:
        verifier.close()


@pytest.mark.parametrize("processes", [1, 0])
def test_a_valid_proof_passes_and_others_are_refused(
        verifiers: Callable[..., LoginVerifier], alice: RSA.RsaKey, bob: RSA.RsaKey,
        processes: int) -> None:
    verifier = verifiers(processes)
    verifier.verify(*proof(alice, "alice"))
    public_der, signature, nonce, _, server_id = proof(alice, "alice")
    with pytest.raises(auth.AuthError, match="does not prove"):
        verifier.verify(public_der, signature, nonce, "mallory", server_id)  # another name
    with pytest.raises(auth.AuthError, match="does not prove"):
        verifier.verify(auth.public_key_der(bob), signature, nonce, "alice", server_id)
    with pytest.raises(auth.AuthError, match="not a valid RSA key"):
        verifier.verify(b"\x30\x03garbage", signature, nonce, "alice", server_id)


def test_fields_too_large_for_the_pipe_are_refused_before_it(
        verifiers: Callable[..., LoginVerifier], alice: RSA.RsaKey) -> None:
    verifier = verifiers(1)
    public_der, _, nonce, username, server_id = proof(alice, "alice")
    with pytest.raises(auth.AuthError, match="too large"):
        verifier.verify(public_der, bytes(70_000), nonce, username, server_id)
    verifier.verify(*proof(alice, "alice"))  # the pipe is still in step


def test_answers_reach_the_threads_that_asked(verifiers: Callable[..., LoginVerifier],
                                              alice: RSA.RsaKey) -> None:
    """60 threads at once over two children, every second proof for the wrong name: each
    thread gets its own verdict, none another's."""
    verifier = verifiers(2)
    assert len(verifier.child_pids()) == 2
    good = [proof(alice, f"user{i}", nonce=os.urandom(32)) for i in range(60)]
    requests = [(args if i % 2 == 0 else (*args[:3], "someone-else", args[4]))
                for i, args in enumerate(good)]
    outcomes = race([(lambda args=args: verifier.verify(*args)) for args in requests])
    assert [outcome is None for outcome in outcomes] == [i % 2 == 0 for i in range(len(requests))]
    assert all(isinstance(outcome, auth.AuthError) for outcome in outcomes[1::2])


def test_a_killed_child_fails_its_checks_and_is_replaced(
        verifiers: Callable[..., LoginVerifier], alice: RSA.RsaKey) -> None:
    verifier = verifiers(1, respawn_pause=0.5)
    [first] = verifier.child_pids()
    os.kill(first, signal.SIGKILL)
    wait_until(lambda: not verifier.child_pids(), what="the death noticed")
    with pytest.raises(VerifierUnavailable):  # in the pause before the replacement
        verifier.verify(*proof(alice, "alice"))
    [second] = wait_until(verifier.child_pids, what="a new verifier process")
    assert second != first
    verifier.verify(*proof(alice, "alice"))


def test_a_stuck_child_holds_no_caller_for_ever(verifiers: Callable[..., LoginVerifier],
                                                 alice: RSA.RsaKey) -> None:
    """A child that stops reading (SIGSTOP) while its pipe fills: every caller gets
    VerifierUnavailable within the timeout, none hangs, and a new child takes over."""
    verifier = verifiers(1, answer_timeout=0.5, respawn_pause=0.1)
    [stuck] = verifier.child_pids()
    os.kill(stuck, signal.SIGSTOP)
    public_der, _, nonce, username, server_id = proof(alice, "alice")
    big = (public_der, bytes(60_000), nonce, username, server_id)  # a few fill the pipe
    outcomes = race([(lambda: verifier.verify(*big)) for _ in range(40)])
    assert all(isinstance(outcome, VerifierUnavailable) for outcome in outcomes), outcomes
    wait_until(lambda: [p for p in verifier.child_pids() if p != stuck],
               what="a new verifier process")
    wait_until(lambda: not process_exists(stuck), what="the stuck child gone")
    verifier.verify(*proof(alice, "alice"))


def test_close_ends_every_child(alice: RSA.RsaKey) -> None:
    verifier = LoginVerifier(2)
    pids = verifier.child_pids()
    verifier.verify(*proof(alice, "alice"))
    verifier.close()
    assert not [pid for pid in pids if process_exists(pid)]
    with pytest.raises(VerifierUnavailable):
        verifier.verify(*proof(alice, "alice"))


def test_the_command_line_sets_the_processes() -> None:
    assert config_from_args(build_parser().parse_args(["--verify-processes", "0"])
                            ).verify_processes == 0
    assert config_from_args(build_parser().parse_args([])).verify_processes >= 1


def test_a_login_while_the_verifier_is_down_is_asked_to_retry(
        server_factory: Callable[..., Any], alice: RSA.RsaKey, tmp_path: Path) -> None:
    chat = server_factory()
    chat.verifier.respawn_pause = 60.0  # keep the gap open for the length of the test
    [pid] = chat.verifier.child_pids()
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not chat.verifier.child_pids(), what="the death noticed")
    raw = RawClient(chat.address)
    hello = {"type": "hello", "version": PROTOCOL_VERSION, "username": "alice",
             "public_key": base64.b64encode(auth.public_key_der(alice)).decode()}
    raw.send(hello)
    challenge = raw.expect("challenge")
    signature = auth.sign_login(alice, base64.b64decode(challenge["nonce"]), "alice",
                                challenge["server_id"])
    raw.send({"type": "auth", "signature": base64.b64encode(signature).decode()})
    error = raw.expect("error")
    assert error["code"] == "server_busy" and "try again" in error["message"]
    assert chat.state.member("alice") is None
    raw.send(hello)  # the connection stays: the login can start over
    assert raw.expect("challenge")["nonce"] != challenge["nonce"]
    raw.close()
