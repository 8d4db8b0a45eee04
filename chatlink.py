"""Driving a `client.ChatClient` without blocking the desktop client's window.

`ClientLink`'s methods only queue work for its own worker thread; everything that comes back
(client events and the link's own `Connected` / `ConnectFailed`) is handed to `post`, which
the window points at a queue it drains with `after()`. Nothing here touches Tk.
"""
from __future__ import annotations

import logging
import queue
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import identity
import privatestore
from chatsettings import LoginRequest, login_error_text
from client import ChatClient, Disconnected, ErrorEvent, Event, LoginError, TlsSettings, Welcome
from commands import CommandError
from conversations import CONTACT_CAP

log = logging.getLogger("gapshape.gui")


# -- driving a ChatClient without blocking the window ------------------------------------

@dataclass(frozen=True)
class NotSent(ErrorEvent):
    """The link could not send a typed `line` (offline, or the client refused it)."""

    line: str = ""


@dataclass(frozen=True)
class ServerReachable(Event):
    """`ServerProbe` found the server's port answering again."""

    where: str



@dataclass(frozen=True)
class Connected(Event):
    """The link logged in (first time or again); `where` is host:port."""

    welcome: Welcome
    where: str


@dataclass(frozen=True)
class ConnectFailed(Event):
    """A login attempt failed; `message` is for the user, `retry` says whether trying
    again later may help (a refused connection may; a key mismatch will not)."""

    code: str
    message: str
    retry: bool


@dataclass(frozen=True)
class Progress(Event):
    """Something slow is happening (creating the key on first login)."""

    text: str


@dataclass(frozen=True)
class PrivateContacts(Event):
    """At login: the contacts the private history holds, most recently active first."""

    contacts: tuple[privatestore.Contact, ...]


@dataclass(frozen=True)
class PrivateHistoryLoaded(Event):
    """The newest private messages with `peer` from the history, oldest first."""

    peer: str
    entries: tuple[privatestore.HistoryEntry, ...]


class ClientLink:
    """The window's handle on the network. No method blocks: each queues work for one
    worker thread, which connects, sends and closes in order.

    Client events, and `Connected` / `ConnectFailed` / `Progress`, are handed to `post`
    (any thread; the window passes a queue's `put`). Each connection attempt has a
    generation number, and events from a connection that was replaced are dropped, so a
    late `Disconnected` from the old connection never reaches the window.
    """

    def __init__(self, post: Callable[[Event], None], data_dir: Path, *,
                 make_client: Callable[..., ChatClient] = ChatClient, timeout: float = 10.0,
                 tls: TlsSettings | None = None) -> None:
        self._post = post
        self.data_dir = Path(data_dir)
        self._tls = tls
        self._make_client = make_client
        self._timeout = timeout
        self._work: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._client: ChatClient | None = None
        self._generation = 0
        self._ready = False  # whether the current connection's Connected has been posted
        self._held: list[Event] = []
        self._identities: dict[str, identity.Identity] = {}  # casefolded user -> loaded key
        # The private history of the user logged in: opened once per login (not once per
        # reconnect, so its integrity check runs once), closed at shutdown or when another
        # user logs in. Only the worker thread uses it (it may wait on SQLite's lock).
        self._history: privatestore.PrivateHistory | None = None
        self._history_user = ""
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="gapshape-link", daemon=True)
        self._thread.start()

    @property
    def online(self) -> bool:
        return self._client is not None

    # -- what the window calls ------------------------------------------------------------

    def connect(self, request: LoginRequest) -> None:
        """Drop any current connection and log in anew."""
        self._work.put(lambda: self._connect(request))

    def execute(self, line: str) -> None:
        self._work.put(lambda: self._call(lambda c: c.execute(line), line=line))

    def join(self, room: str) -> None:
        self._work.put(lambda: self._call(lambda c: c.join(room)))

    def say(self, text: str, room: str, line: str) -> None:
        """A message to `room` by name (`line` is what was typed, for a refusal)."""
        self._work.put(lambda: self._call(lambda c: c.say(text, room), line=line))

    def history(self, room: str, count: int) -> None:
        """Older messages of `room`: a HistoryPage (or an error) comes back."""
        self._work.put(lambda: self._call(lambda c: c.history(room, count), quiet=True))

    def set_status(self, status: str, note: str = "") -> None:
        self._work.put(lambda: self._call(lambda c: c.set_status(status, note)))

    def request(self, kind: str, *, quiet: bool = True) -> None:
        self._work.put(lambda: self._call(lambda c: c.request(kind), quiet=quiet))

    def load_private(self, peer: str, limit: int) -> None:
        """The newest `limit` private messages with `peer`: a PrivateHistoryLoaded (or an
        ErrorEvent) comes back. Read here, on the worker, not on the Tk thread: a read can
        wait up to privatestore.BUSY_TIMEOUT for another writer."""
        self._work.put(lambda: self._read_history(
            lambda h: PrivateHistoryLoaded(peer, tuple(h.conversation(peer, limit=limit)))))

    def quit(self) -> None:
        """Say goodbye to the server; `Disconnected(clean=True)` follows."""
        self._work.put(self._quit)

    def drop(self) -> None:
        """Close the connection without reporting it (before reconnecting by hand)."""
        self._work.put(self._drop)

    def shutdown(self, timeout: float = 3.0) -> None:
        """Close everything and stop the worker (waits at most `timeout`)."""
        self._work.put(self._drop)
        self._work.put(self._close_history)
        self._work.put(None)
        self._thread.join(timeout)

    # -- the worker -----------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            job = self._work.get()
            if job is None:
                return
            try:
                job()
            except Exception:  # a bug must not kill the link; the log says what happened
                log.exception("link job failed")

    def _deliver(self, generation: int, event: Event) -> None:
        """From a client's reader thread: pass the event on if its connection is current.
        Until `Connected` is posted, events wait, so the window hears of the login first."""
        with self._lock:
            if generation != self._generation:
                return
            if not self._ready:
                self._held.append(event)
                return
            if isinstance(event, Disconnected):
                self._client = None
            self._post(event)

    def _connect(self, request: LoginRequest) -> None:
        self._drop()
        with self._lock:
            generation = self._generation
        known = self._identities.get(request.username.casefold())
        if known is None and not _identity_exists(self.data_dir, request.username):
            self._post(Progress("Creating your encryption key (first login only)…"))
        try:
            if known is None:
                known = identity.load_or_create_identity(self.data_dir, request.username,
                                                          request.passphrase or None)
            # Reconnecting reuses the unlocked key: no passphrase needed, no file read.
            self._identities[request.username.casefold()] = known
            history = self._open_history(request.username, known)
            client = self._make_client(
                request.username, request.host, request.port, data_dir=self.data_dir,
                passphrase=request.passphrase or None, ident=known, timeout=self._timeout,
                tls=self._tls, private_history=history,
                on_event=lambda event, g=generation: self._deliver(g, event))
            welcome = client.connect()
        except (LoginError, identity.IdentityError, OSError) as exc:
            code, message, retry = login_error_text(exc, request.username, request.host,
                                                    request.port)
            self._post(ConnectFailed(code, message, retry))
            return
        with self._lock:
            self._client = client
            self._post(Connected(welcome, f"{request.host}:{request.port}"))
            held, self._held = self._held, []
            for event in held:
                if isinstance(event, Disconnected):
                    self._client = None
                self._post(event)
            self._ready = True
        self._read_history(_contacts)

    def _open_history(self, username: str, ident: identity.Identity
                      ) -> privatestore.PrivateHistory:
        """The user's private history, opened at their first login here (PrivateHistoryError,
        an IdentityError, fails the login as ChatClient would)."""
        if self._history is not None and self._history_user == username.casefold():
            return self._history
        self._close_history()
        self._history = privatestore.open_private_history(self.data_dir, username,
                                                          ident.private_key)
        self._history_user = username.casefold()
        return self._history

    def _close_history(self) -> None:
        history, self._history, self._history_user = self._history, None, ""
        if history is not None:
            history.close()

    def _read_history(self, read: Callable[[privatestore.PrivateHistory], Event | None]
                      ) -> None:
        if self._history is None:
            return
        try:
            event = read(self._history)
        except privatestore.PrivateHistoryError as exc:
            event = ErrorEvent("private_history", f"Your private history could not be "
                                                  f"read: {exc}")
        if event is not None:
            self._post(event)

    def _call(self, action: Callable[[ChatClient], object], quiet: bool = False,
              line: str = "") -> None:
        """Run `action` on the current client; a failure to send a typed `line` comes back
        as `NotSent`, so the window can give the text back."""
        client = self._client
        if client is None:
            if not quiet:
                self._post(NotSent("offline", "Not sent: you are not connected right now.",
                                   line=line))
            return
        try:
            action(client)
        except CommandError as exc:
            self._post(NotSent("command", str(exc), line=line))
        except ConnectionError:
            pass  # the library went offline and has emitted its own NotSent for the line
        except OSError as exc:
            if not quiet:
                self._post(NotSent("offline", f"Not sent: the connection failed "
                                              f"({exc.strerror or exc}).", line=line))

    def _quit(self) -> None:
        client = self._client
        if client is None:
            self._post(Disconnected("not connected", True))
            return
        client.quit()

    def _drop(self) -> None:
        """Forget the current connection (its events stop here) and close it."""
        with self._lock:
            client, self._client = self._client, None
            self._generation += 1
            self._ready, self._held = False, []
        if client is not None:
            client.close()


def _contacts(history: privatestore.PrivateHistory) -> PrivateContacts | None:
    """The history's contacts for the sidebar (None when it holds none)."""
    contacts = tuple(history.contacts(limit=CONTACT_CAP))  # the sidebar lists no more
    return PrivateContacts(contacts) if contacts else None


def _identity_exists(data_dir: Path, username: str) -> bool:
    """Whether `username` already has a key here (a missing one takes a moment to make)."""
    try:
        return (identity.user_dir(data_dir, username) / identity.IDENTITY_FILE).exists()
    except identity.IdentityError:
        return True  # the name is unusable; ChatClient will say so


class ServerProbe:
    """While the window waits to reconnect, knocks on the server's port every `interval`
    seconds from its own thread and posts `ServerReachable` once something accepts, so
    the window reconnects within a fraction of a second of the server's return instead
    of at the end of a backoff delay. A TCP connect that is closed at once costs the
    server an accept and a close. Never touches Tk."""

    def __init__(self, post: Callable[[Event], None], interval: float = 0.25,
                 timeout: float = 1.0) -> None:
        self._post, self.interval, self.timeout = post, interval, timeout
        self._stop: threading.Event | None = None

    @property
    def running(self) -> bool:
        return self._stop is not None

    def start(self, host: str, port: int) -> None:
        self.stop()
        stop = self._stop = threading.Event()
        threading.Thread(target=self._run, args=(host, port, stop), name="gapshape-probe",
                         daemon=True).start()

    def stop(self) -> None:
        if self._stop is not None:
            self._stop.set()
            self._stop = None

    def _run(self, host: str, port: int, stop: threading.Event) -> None:
        while not stop.wait(self.interval):
            try:
                with socket.create_connection((host, port), timeout=self.timeout):
                    pass
            except OSError:
                continue
            if not stop.is_set():
                self._post(ServerReachable(f"{host}:{port}"))
            return
def batch(items: queue.Queue[Any], limit: int) -> Iterable[Any]:
    """Up to `limit` items that are waiting in `items`, without blocking."""
    for _ in range(limit):
        try:
            yield items.get_nowait()
        except queue.Empty:
            return
