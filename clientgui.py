"""The Gapshape desktop client: Tkinter and ttk on top of client.py.

    python clientgui.py [--host H] [--port P] [--username U] [--data-dir D]

This module owns the root window (`App`) and wires the widgets to chatview.py, which decides
what they show:
`chatview.ChatModel` holds the session, `chatview.ClientLink` drives the network from its
own thread. Threads never touch Tk: everything they report goes into `self.inbox`, which
`App.poll` drains with `after()` in batches of at most `BATCH` events, then redraws only
what changed. docs/GUI.md describes the window and its keys.

Test hook (off unless set): with GAPSHAPE_GUI_PROBE=path the window writes a JSON snapshot
of what its widgets show to that file whenever it changes (see `guiprobe.Probe`).

The widgets live beside it: `guimain` (the main window), `guilogin` (the login window),
`guipopups` (the manual window, tooltips), `guitheme` (palettes, fonts, ttk style, images).
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import queue
import sys
import threading
import time
import tkinter as tk
import webbrowser
from pathlib import Path
from tkinter import ttk

import chatview
import guitheme
import identity
from chatview import (
    CONNECTED,
    CONNECTING,
    OFFLINE,
    RECONNECTING,
    Backoff,
    ChatModel,
    ClientLink,
    Connected,
    ConnectFailed,
    InputHistory,
    LoginRequest,
    Progress,
    ServerProbe,
    ServerReachable,
    Settings,
    TabCompleter,
)
from client import Disconnected, Event, RoomJoined, TlsSettings
from guilogin import LoginView
from guimain import MainView
from guipopups import ManualWindow, Tooltip
from guiprobe import Probe
from guitheme import (
    ASSETS,
    PALETTES,
    Fonts,
    apply_palette,
    emoji_font_installed,
    load_image,
    on_theme,
    read_system_theme,
    setup_style,
    ui_scale,
)
from notify import Notifier

# What other code imported from clientgui before the widgets moved to the gui* modules.
# The colour names are not re-exported: they are swapped per theme, so read guitheme.NAME.
__all__ = [
    "ASSETS", "BATCH", "PALETTES", "POLL_MS", "QUIT_GRACE_MS", "ROOMS_REFRESH_MS", "App",
    "Fonts", "LoginView", "MainView", "ManualWindow", "Probe", "Tooltip", "apply_palette",
    "build_parser", "emoji_font_installed", "load_image", "main", "on_theme",
    "read_system_theme", "setup_style", "sharp_text_on_windows", "ui_scale",
]

log = logging.getLogger("gapshape.gui")

POLL_MS = 40  # how often the inbox is drained when it was empty
BATCH = 200  # events handled per tick, so a flood cannot freeze the window
ROOMS_REFRESH_MS = 15_000  # the server does not push room counts; ask now and then
QUIT_GRACE_MS = 1500  # how long closing waits for the server's goodbye

# -- the application ----------------------------------------------------------------------

class App:
    """Owns the root window, the model and the link, and moves events between them."""

    def __init__(self, root: tk.Tk, args: argparse.Namespace) -> None:
        self.root = root
        self.data_dir = Path(args.data_dir) if args.data_dir else identity.default_data_dir()
        remembered = chatview.load_settings(self.data_dir)
        self.settings = Settings(args.username or remembered.username,
                                 args.host or remembered.host,
                                 args.port or remembered.port)
        self.windowing = str(root.tk.call("tk", "windowingsystem"))
        if args.scale:
            root.tk.call("tk", "scaling", args.scale * 96 / 72)
        self.preferences = chatview.load_preferences(self.data_dir)
        if args.theme:
            self.preferences = dataclasses.replace(self.preferences, theme=args.theme)
        apply_palette(self.theme_wanted())
        self.astral = chatview.tk_can_show_astral(str(root.tk.call("info", "patchlevel")),
                                                  self.windowing, emoji_font_installed())
        self.fonts = Fonts(root)
        setup_style(root, self.fonts)
        root.configure(background=guitheme.BG)
        self.icons = [img for img in (load_image(f"icon-{n}.png") for n in (256, 64, 32, 16)) if img]
        if self.icons:
            root.iconphoto(True, *self.icons)
        self.inbox: queue.Queue[Event] = queue.Queue()
        tls = TlsSettings(cafile=args.cafile) if (args.tls or args.cafile) else None
        self.link = ClientLink(self.inbox.put, self.data_dir, tls=tls)
        self.model = ChatModel(astral=self.astral)
        self.history = InputHistory()
        self.completer = TabCompleter()
        self.backoff = Backoff()
        self.probe = ServerProbe(self.inbox.put)
        icon = ASSETS / "icon-64.png"
        self.notifier = Notifier(self.preferences.notifications,
                                 str(icon) if icon.exists() else "")
        self.open_menu: tk.Menu | None = None
        self.stay_offline = False  # logged in elsewhere: do not reconnect by ourselves
        self.request: LoginRequest | None = None
        self.main: MainView | None = None
        self.manual: ManualWindow | None = None
        self.closing = False
        self.destroyed = False
        self.bells = 0
        self.wanted_size: tuple[int, int] | None = None
        self.copied = ""
        self.opened_links: list[str] = []
        self.stats = {"max_batch": 0, "longest_tick_ms": 0}  # how hard the pump has worked
        self._retry_job: str | None = None
        self._retry_at = 0.0
        self._poll_job: str | None = None
        self._rooms_job: str | None = None
        self._hint_job: str | None = None
        self.login_view = LoginView(root, self, self.settings)
        self.login_view.pack(fill="both", expand=True)
        root.title(chatview.window_title("", "", ""))
        self.size_window(460, 560, minimum=(380, 480))
        root.protocol("WM_DELETE_WINDOW", self.close)
        root.bind_all("<Control-q>", lambda _e: self.close())
        root.bind_all("<Control-f>", lambda _e: self.open_search())
        root.bind_all("<ButtonRelease-1>", self._clicked_somewhere, add=True)
        if self.windowing == "aqua":
            root.bind_all("<Command-q>", lambda _e: self.close())
            root.bind_all("<Command-f>", lambda _e: self.open_search())
            root.createcommand("tk::mac::Quit", self.close)
            root.createcommand("tk::mac::ShowPreferences", lambda: None)
        root.bind("<FocusIn>", lambda _e: root.after_idle(self._focus_changed), add=True)
        root.bind("<FocusOut>", lambda _e: root.after_idle(self._focus_changed), add=True)
        self._poll_job = root.after(POLL_MS, self.poll)

    # -- the event pump -------------------------------------------------------------------

    def poll(self) -> None:
        """Handle up to BATCH waiting events, redraw what changed, and come back soon."""
        self._poll_job = None
        started = time.perf_counter()
        handled = 0
        for event in chatview.batch(self.inbox, BATCH):
            if self.destroyed:
                return
            handled += 1
            try:
                self.handle(event)
            except Exception:  # one bad event must not stop the pump
                log.exception("could not handle %r", event)
        if self.destroyed:
            return
        if self.main is not None:
            self.render(self.model.take_changes())
        if handled:
            self.stats["max_batch"] = max(self.stats["max_batch"], handled)
            self.stats["longest_tick_ms"] = max(self.stats["longest_tick_ms"],
                                                round((time.perf_counter() - started) * 1000))
        self._poll_job = self.root.after(1 if handled == BATCH else POLL_MS, self.poll)

    def handle(self, event: Event) -> None:
        if isinstance(event, Progress):
            if self.main is None:
                self.login_view.set_busy(event.text)
        elif isinstance(event, ConnectFailed):
            self._connect_failed(event)
        elif isinstance(event, Connected):
            self._connected(event)
        elif isinstance(event, Disconnected):
            self._disconnected(event)
        elif isinstance(event, ServerReachable):
            if self._retry_job is not None and not self.stay_offline:
                self.reconnect_now()
        else:
            self.model.apply(event)
            if isinstance(event, RoomJoined):
                self._refresh_rooms(delay_ms=300)

    def render(self, changes: chatview.Changes) -> None:
        main, model = self.main, self.model
        assert main is not None
        if changes.redraw:
            main.show_lines(model.transcript(), replace=True, keep_place=changes.keep_place)
            peer = model.want_private_history()  # a private view opened: its last messages
            if peer:
                self.link.load_private(peer, chatview.PRIVATE_HISTORY_LINES)
        elif changes.lines:
            main.show_lines(changes.lines)
        if changes.redraw or changes.members or changes.rooms or changes.title:
            main.room_title.set(model.view_title())
            count = len(model.members)
            main.room_sub.set("private · end-to-end encrypted" if model.peer else
                              f"{count} {'person' if count == 1 else 'people'} here"
                              if model.connection == CONNECTED else "")
        if changes.members or changes.redraw:
            main.show_members(model.member_rows(), model.me, model.colours)
        if changes.rooms or changes.redraw or changes.connection:
            main.sidebar.show(model.sidebar_rows(), stale=model.connection != CONNECTED)
        if changes.status:
            main.show_status(model.status)
        if changes.banner:
            main.show_warnings(list(model.key_warnings.values()))
        if changes.connection:
            self._show_connection()
        if changes.title or changes.connection:
            self.root.title(model.title())
        if changes.bell:
            self.bells += 1
            self.root.bell()
        for title, body in changes.notify:
            self.notifier.notify(title, body)
        for line, why in changes.unsent:
            self._give_back(line, why)
        if changes.manual:
            self.open_manual()

    # -- logging in and staying connected -------------------------------------------------

    def login(self, request: LoginRequest) -> None:
        self.request = request
        self.link.connect(request)

    def _connected(self, event: Connected) -> None:
        assert self.request is not None
        self.backoff.reset()
        self._cancel_retry()
        self.probe.stop()
        self.stay_offline = False
        if self.main is None:
            chatview.save_settings(self.data_dir, Settings(self.request.username,
                                                           self.request.host, self.request.port))
            self.request = dataclasses.replace(self.request, passphrase="")  # the link keeps the key
            self._show_main()
        restore = self.model.logged_in(event.welcome, event.where)
        if restore.room:
            self.link.join(restore.room)
        if restore.status:
            self.link.set_status(restore.status, restore.note)
        self._refresh_rooms(delay_ms=200)

    def _connect_failed(self, event: ConnectFailed) -> None:
        if self.main is None:
            self.login_view.show_error(event.message)
            return
        if event.retry and not self.closing and not self.stay_offline:
            self._schedule_retry(event.message)
            if event.code in ("refused", "network", "timeout", "no_such_host"):
                self._start_probe()  # the server is not there: knock until it is
        else:
            self.model.set_connection(OFFLINE, event.message)
            self.model.say("error", f"Could not reconnect: {event.message}")

    def _disconnected(self, event: Disconnected) -> None:
        if self.closing:
            self._finish_close()
            return
        if self.main is None:
            return
        if event.replaced:  # the same user logged in on another device
            # Coming back by ourselves would throw the other device out, which would do
            # the same to us: say so, and leave it to the person.
            self.stay_offline = True
            self.model.connection_lost(event.reason, None)
            self.model.say("error", "You logged in as " + self.model.me + " from another "
                           "device or window, so this one was disconnected. It will not "
                           "reconnect by itself; click Reconnect now to continue here.")
            self.probe.stop()
            return
        delay = self.backoff.next_delay()
        self.model.connection_lost(event.reason, delay)
        self._start_retry_timer(delay)
        self._start_probe()

    def _start_probe(self) -> None:
        if self.request is not None and not self.probe.running:
            self.probe.start(self.request.host, self.request.port)

    def _schedule_retry(self, reason: str) -> None:
        delay = self.backoff.next_delay()
        self.model.set_connection(RECONNECTING, reason)
        self._start_retry_timer(delay)

    def _start_retry_timer(self, delay: float) -> None:
        self._cancel_retry()
        self._retry_at = time.monotonic() + delay
        self._retry_job = self.root.after(int(delay * 1000), self.reconnect_now)
        self._tick_countdown()

    def _tick_countdown(self) -> None:
        if self._retry_job is None or self.main is None or self.destroyed:
            return
        self._show_connection()
        self.root.after(1000, self._tick_countdown)

    def _cancel_retry(self) -> None:
        if self._retry_job is not None:
            self.root.after_cancel(self._retry_job)
            self._retry_job = None

    def reconnect_now(self) -> None:
        self._cancel_retry()
        self.probe.stop()
        if self.request is None or self.closing:
            return
        self.stay_offline = False
        self.model.set_connection(RECONNECTING if self.model.logged_in_once else CONNECTING,
                                  self.model.connection_detail)
        self._retry_at = 0.0
        self.link.connect(self.request)

    def _show_connection(self) -> None:
        main, model = self.main, self.model
        if main is None:
            return
        if model.connection == CONNECTED:
            main.show_connection("")
            return
        detail = model.connection_detail
        if model.connection == OFFLINE and self.stay_offline:
            text = (f"Offline: you logged in as {model.me} elsewhere. This window will not "
                    "reconnect by itself.")
        elif model.connection == OFFLINE:
            text = f"Offline. {detail}".strip()
        elif self._retry_job is not None:
            wait = max(0, round(self._retry_at - time.monotonic()))
            text = f"{detail} Trying again in {wait} s…"
        else:
            text = f"{detail} Reconnecting now…"
        main.show_connection(text)

    def _refresh_rooms(self, delay_ms: int = 0) -> None:
        """Ask the server for room counts soon, and then every ROOMS_REFRESH_MS."""
        if self._rooms_job is not None:
            self.root.after_cancel(self._rooms_job)

        def ask() -> None:
            self._rooms_job = self.root.after(ROOMS_REFRESH_MS, ask)
            if self.model.connection == CONNECTED:
                self.link.request("rooms")

        self._rooms_job = self.root.after(delay_ms, ask)

    def _show_main(self) -> None:
        self.login_view.destroy()
        self.main = MainView(self.root, self)
        self.main.pack(fill="both", expand=True)
        self.build_menu()  # before the size: a menu bar added later takes from the window
        self.size_window(1120, 700, minimum=(480, 360))
        self.main.input.focus_set()

    def size_window(self, width: int, height: int, minimum: tuple[int, int]) -> None:
        """Sizes are given for a 96 DPI screen; scale them with the fonts, within the screen."""
        scale = ui_scale(self.root)
        screen_w, screen_h = self.root.winfo_screenwidth(), self.root.winfo_screenheight()
        fit = (min(round(width * scale), screen_w - 40), min(round(height * scale), screen_h - 80))
        self.root.minsize(min(round(minimum[0] * scale), fit[0]), min(round(minimum[1] * scale), fit[1]))
        self.root.geometry(f"{fit[0]}x{fit[1]}")
        self.wanted_size = fit

    # -- what the user does ---------------------------------------------------------------

    def submit_input(self) -> None:
        assert self.main is not None
        line = chatview.join_surrogates(self.main.get_input())
        action = chatview.interpret_input(line)
        if action.kind == "nothing":
            return
        if action.kind == "send" and self.model.connection != CONNECTED:
            # Offline: nothing can go out. The text stays where it is, and says so.
            self.history.add(line)
            self._give_back(line, "Not sent: you are offline. It is kept here; press Enter "
                                  "or Resend once reconnected.")
            return
        self.history.add(line)
        self.main.set_input("")
        self.main.show_unsent("", "")
        self.completer.reset()
        self.set_hint("")
        if action.kind == "error":
            self.model.say("error", action.message)
            self.main.set_input(line)  # a mistyped command stays, to be corrected
        elif action.kind == "manual":
            self.open_manual()
        elif action.kind == "quit":
            self.close()
        elif action.command == "query":
            self._query(action.line)
        else:
            self.model.expect_listing(action.command)
            how, where, text = self.model.route(action.line)
            if how == "say":  # a message in a room view goes to that room, by name
                self.model.sent(action.line)
                self.link.say(text, where, line)
            else:  # a command, or a private view's message as its /privatemsg
                self.model.sent(where)
                self.link.execute(where)
        if self.main is not None:
            self.render(self.model.take_changes())

    def _give_back(self, line: str, why: str) -> None:
        """A line that was not sent: back into the input box if that is empty (else kept
        on the bar), marked as not sent, with Resend."""
        main = self.main
        if main is None:
            return
        current = main.get_input()
        if not current.strip() or current == line:
            main.set_input(line)
        main.show_unsent(line, why)

    def resend(self) -> None:
        main = self.main
        if main is None or not main.unsent_line:
            return
        line = main.unsent_line
        if main.get_input() not in ("", line):
            main.show_unsent(line, "Not sent. Clear the box or send what is there first.")
            return
        main.set_input(line)
        main.input.focus_set()
        self.submit_input()

    def discard_unsent(self) -> None:
        main = self.main
        if main is None:
            return
        if main.get_input() == main.unsent_line:
            main.set_input("")
        main.show_unsent("", "")
        main.input.focus_set()

    def history_older(self) -> None:
        self._recall(self.history.older(self.main.get_input()) if self.main else None)

    def history_newer(self) -> None:
        self._recall(self.history.newer(self.main.get_input()) if self.main else None)

    def _recall(self, line: str | None) -> None:
        if line is None or self.main is None:
            return
        self.main.set_input(line)

    def complete(self) -> None:
        assert self.main is not None
        box = self.main.input
        text = box.get("1.0", "insert")
        rest = box.get("insert", "end-1c")
        rooms = [name for name, _count, _current in self.model.room_rows()]
        new, hint = self.completer.complete(text, self.model.usernames(), rooms)
        self.main.set_input(new + rest)
        box.mark_set("insert", f"1.0+{len(new)}c")
        self.set_hint(hint)

    def clear_input(self) -> None:
        if self.main is not None:
            if self.main.search_bar.winfo_ismapped():
                self.main.close_search()
                return
            self.main.set_input("")
            self.main.show_unsent("", "")
            self.set_hint("")

    def open_search(self) -> None:
        if self.main is not None:
            self.main.open_search()

    def copy(self, text: str) -> None:
        self.root.clipboard_clear()
        self.root.clipboard_append(text)
        self.copied = text

    def open_link(self, url: str) -> None:
        """Open a web link with the system's browser (never anything but http/https), on a
        thread: some browsers' launchers only return when the browser does."""
        if not url.lower().startswith(("http://", "https://")):
            return
        self.opened_links.append(url)
        threading.Thread(target=webbrowser.open, args=(url,), daemon=True).start()

    def run_command(self, line: str) -> None:
        """A command chosen from a menu, carried out as if typed."""
        if self.model.connection == CONNECTED:
            self.link.execute(line)

    def _clicked_somewhere(self, event: tk.Event) -> None:
        """After any click that is not in a text field, the keyboard goes back to the input
        box, so what the person types next is never lost on a list or a button."""
        self.root.after_idle(self._refocus_input)

    def _refocus_input(self) -> None:
        main = self.main
        if main is None or self.destroyed:
            return
        try:
            focused = self.root.focus_get()
        except (KeyError, tk.TclError):  # a popdown list Tk does not know by name
            return
        if focused is None or focused.winfo_toplevel() is not self.root:
            return
        if isinstance(focused, (ttk.Entry, ttk.Combobox)) or focused is main.input:
            return
        main.input.focus_set()

    def theme_wanted(self) -> str:
        chosen = self.preferences.theme
        return chosen if chosen in ("light", "dark") else read_system_theme(self.windowing)

    def set_theme(self, theme: str) -> None:
        """Switch between light, dark and the system's choice: the view is rebuilt in the
        new colours from the model (nothing typed is lost)."""
        self.preferences = dataclasses.replace(self.preferences, theme=theme)
        chatview.save_preferences(self.data_dir, self.preferences)
        apply_palette(self.theme_wanted())
        setup_style(self.root, self.fonts)
        self.root.configure(background=guitheme.BG)
        if self.main is None:
            return
        typed, unsent = self.main.get_input(), self.main.unsent_line
        self.main.destroy()
        self.main = MainView(self.root, self)
        self.main.pack(fill="both", expand=True)
        self.main.set_input(typed)
        self.render(chatview.Changes(redraw=True, members=True, rooms=True, title=True,
                                     status=True, banner=True, connection=True))
        if unsent:
            self.main.show_unsent(unsent, "Not sent.")
        self.main.input.focus_set()
        self.build_menu()

    def set_notifications(self) -> None:
        enabled = bool(self.notify_var.get())
        self.notifier.enabled = enabled
        self.preferences = dataclasses.replace(self.preferences, notifications=enabled)
        chatview.save_preferences(self.data_dir, self.preferences)

    def build_menu(self) -> None:
        """The menu bar; on macOS the first menu is the application menu."""
        root = self.root
        colours = {"background": guitheme.SIDEBAR, "foreground": guitheme.INK,
                   "activebackground": guitheme.SELECTED_BG,
                   "activeforeground": guitheme.INK, "relief": "flat", "borderwidth": 0}
        bar = tk.Menu(root, tearoff=False, **colours)
        root.option_add("*Menu.background", guitheme.SIDEBAR)
        root.option_add("*Menu.foreground", guitheme.INK)
        root.option_add("*Menu.activeBackground", guitheme.SELECTED_BG)
        root.option_add("*Menu.activeForeground", guitheme.INK)
        root.option_add("*Menu.selectColor", guitheme.ACCENT)
        if self.windowing == "aqua":
            app_menu = tk.Menu(bar, name="apple", tearoff=False)
            app_menu.add_command(label="About Gapshape", command=self.open_manual)
            bar.add_cascade(menu=app_menu)
            accel = "Command"
        else:
            accel = "Ctrl"
            file_menu = tk.Menu(bar, tearoff=False)
            file_menu.add_command(label="Reconnect now", command=self.reconnect_now)
            file_menu.add_separator()
            file_menu.add_command(label="Quit", accelerator=f"{accel}+Q", command=self.close)
            bar.add_cascade(label="Gapshape", menu=file_menu)
        view = tk.Menu(bar, tearoff=False)
        view.add_command(label="Find in conversation…", accelerator=f"{accel}+F",
                         command=self.open_search)
        if self.main is not None:
            view.add_command(label="Show or hide rooms",
                             command=lambda: self.main and self.main.toggle_pane("rooms"))
            view.add_command(label="Show or hide people",
                             command=lambda: self.main and self.main.toggle_pane("people"))
        view.add_separator()
        self.theme_var = tk.StringVar(root, self.preferences.theme)
        for value, label in (("system", "Theme: as the system"), ("light", "Theme: light"),
                             ("dark", "Theme: dark")):
            view.add_radiobutton(label=label, value=value, variable=self.theme_var,
                                 command=lambda v=value: self.set_theme(v))
        view.add_separator()
        self.notify_var = tk.BooleanVar(root, self.preferences.notifications)
        view.add_checkbutton(label="Desktop notifications", variable=self.notify_var,
                             command=self.set_notifications)
        bar.add_cascade(label="View", menu=view)
        help_menu = tk.Menu(bar, tearoff=False)
        help_menu.add_command(label="Manual", command=self.open_manual)
        bar.add_cascade(label="Help", menu=help_menu)
        root.configure(menu=bar)
        self.menu_bar = bar

    def set_hint(self, text: str) -> None:
        if self.main is None:
            return
        self.main.hint.set(chatview.tk_safe(text, astral=self.astral, newlines=False))
        if self._hint_job is not None:
            self.root.after_cancel(self._hint_job)
            self._hint_job = None
        if text:
            self._hint_job = self.root.after(8000, lambda: self.set_hint(""))

    def join_room(self, room: str) -> None:
        """Go to a room: one the user is in is shown at once, another is joined."""
        if room in self.model.my_rooms:
            self.choose_view(room, "room")
        else:
            self.model.asked_join(room)
            self.link.join(room)

    def choose_view(self, key: str, kind: str) -> None:
        """The sidebar's pick: show a room or a private conversation ("other": join it)."""
        if kind == "other":
            self.join_room(key)
            return
        room = self.model.select(key)
        if room:  # the server's current room follows the view (for /leave, /list, ...)
            self.link.join(room)
        if self.main is not None:
            self.render(self.model.take_changes())

    def step_view(self, step: int) -> None:
        key = self.model.neighbour(step)
        if key:
            self.choose_view(key, "private" if key.startswith("@") else "room")

    def open_private(self, name: str) -> None:
        """Message a person: their private conversation, shown, with the input box ready."""
        self.choose_view(self.model.open_private(name), "private")
        if self.main is not None:
            self.main.input.focus_set()

    def _query(self, line: str) -> None:
        """/query bob, /query #room, /query: what the sidebar does, typed (the window's
        views are its conversations; the library's own current one is left alone)."""
        parsed = chatview.commands.parse_line(line)
        target = parsed.args[0] if isinstance(parsed, chatview.commands.Command) and \
            parsed.args else ""
        if not target:
            if self.model.room:
                self.choose_view(self.model.room, "room")
        elif target.startswith("#"):
            try:
                self.join_room(chatview.check_room_name(target))
            except ValueError as exc:
                self.model.say("error", str(exc))
        elif target.lstrip("@").casefold() == self.model.me.casefold():
            self.model.say("error", "You cannot have a private conversation with yourself.")
        else:
            self.open_private(target.lstrip("@"))

    def load_older(self) -> None:
        """The transcript is at its top: ask for the room's older messages (one page at a
        time; none when its beginning is shown)."""
        room = self.model.want_older() if self.model.connection == CONNECTED else ""
        if room:
            self.link.history(room, chatview.HISTORY_PAGE)

    def set_status(self, status: str) -> None:
        self.link.set_status(status, "")

    def dismiss_warnings(self) -> None:
        for user in list(self.model.key_warnings):
            self.model.dismiss_warning(user)
        self.render(self.model.take_changes())

    def open_manual(self) -> None:
        if self.manual is not None and self.manual.winfo_exists():
            self.manual.lift()
            self.manual.focus_set()
            return
        self.manual = ManualWindow(self.root, self.fonts, self._manual_closed)

    def _manual_closed(self) -> None:
        self.manual = None
        if self.main is not None:
            self.main.input.focus_set()

    def _focus_changed(self) -> None:
        if self.destroyed:
            return
        try:
            focused = bool(str(self.root.tk.call("focus")))
        except tk.TclError:
            focused = False
        self.model.set_focus(focused)
        if self.main is not None:
            self.render(self.model.take_changes())

    # -- closing --------------------------------------------------------------------------

    def close(self) -> None:
        """/quit or the window's close button: say goodbye, then close (at most 1.5 s)."""
        if self.closing:
            return
        self.closing = True
        self._cancel_retry()
        self.probe.stop()
        if self.main is None or self.model.connection != CONNECTED:
            self._finish_close()
            return
        self.model.set_connection(OFFLINE, "closing")
        self.link.quit()
        self.root.after(QUIT_GRACE_MS, self._finish_close)

    def _finish_close(self) -> None:
        if not self.destroyed:
            self.destroyed = True
            self.root.destroy()


# -- starting -----------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Gapshape desktop client.")
    p.add_argument("--version", action="version", version="%(prog)s " + __import__("gapshape_version").__version__)
    p.add_argument("--host", help="server address (default: the last one used, or 127.0.0.1)")
    p.add_argument("--port", type=int, help="server port (default: the last one used, or 5050)")
    p.add_argument("--username", help="your username (default: the last one used)")
    p.add_argument("--tls", action="store_true",
                   help="connect with TLS, pinning the server's certificate on first use")
    p.add_argument("--cafile", help="with TLS: verify the server against this CA file instead")
    p.add_argument("--scale", type=float,
                   help="make everything this much larger, e.g. 1.5 or 2 (default: from the "
                        "screen's DPI)")
    p.add_argument("--theme", choices=("system", "light", "dark"),
                   help="colours (default: the last choice, else as the system)")
    p.add_argument("--data-dir", type=Path,
                   help="where keys, pins and settings live (default: $GAPSHAPE_HOME or the "
                        "platform's data folder)")
    return p


def sharp_text_on_windows() -> None:
    """Tell Windows the window scales itself (Tk sizes fonts in points), so text is drawn
    at the screen's real resolution instead of being blurred by bitmap stretching."""
    if sys.platform == "win32":
        try:
            import ctypes
            ctypes.windll.shcore.SetProcessDpiAwareness(1)  # type: ignore[attr-defined]
        except (AttributeError, OSError):
            pass


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    sharp_text_on_windows()
    try:
        root = tk.Tk(className="Gapshape")
    except tk.TclError as exc:
        print(f"cannot open a window: {exc}", file=sys.stderr)
        return 1
    app = App(root, args)
    probe_path = os.environ.get("GAPSHAPE_GUI_PROBE")
    if probe_path:
        Probe(app, Path(probe_path))
    try:
        root.mainloop()
    except KeyboardInterrupt:
        pass
    finally:
        app.probe.stop()
        app.link.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
