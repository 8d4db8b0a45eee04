"""The Gapshape desktop client: Tkinter and ttk on top of client.py.

    python clientgui.py [--host H] [--port P] [--username U] [--data-dir D]

This module builds widgets and wires them to chatview.py, which decides what they show:
`chatview.ChatModel` holds the session, `chatview.ClientLink` drives the network from its
own thread. Threads never touch Tk: everything they report goes into `self.inbox`, which
`App.poll` drains with `after()` in batches of at most `BATCH` events, then redraws only
what changed. docs/GUI.md describes the window and its keys.

Test hook (off unless set): with GAPSHAPE_GUI_PROBE=path the window writes a JSON snapshot
of what its widgets show to that file whenever it changes (see `Probe`).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import queue
import sys
import time
import tkinter as tk
import tkinter.font as tkfont
from pathlib import Path
from tkinter import ttk
from typing import Any, Callable

import chatview
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
    Line,
    LoginRequest,
    Progress,
    Settings,
    TabCompleter,
)
from client import Disconnected, Event, RoomJoined, TlsSettings
from commands import manual_text

log = logging.getLogger("gapshape.gui")

ASSETS = Path(__file__).resolve().parent / "Assets"
POLL_MS = 40  # how often the inbox is drained when it was empty
BATCH = 200  # events handled per tick, so a flood cannot freeze the window
ROOMS_REFRESH_MS = 15_000  # the server does not push room counts; ask now and then
QUIT_GRACE_MS = 1500  # how long closing waits for the server's goodbye

# Colours of the window (conversation tags are configured in MainView._configure_tags).
BG = "#ffffff"
SIDEBAR = "#f3f4f8"
INK = "#1f2937"
MUTED = "#6b7280"
ACCENT = "#4338ca"
WARNING_BG = "#b91c1c"
OFFLINE_BG = "#fef3c7"


# -- small helpers ------------------------------------------------------------------------

def load_image(name: str, scale2x: bool = False) -> tk.PhotoImage | None:
    """An image from Assets/ (the @2x variant on high-DPI screens); None if missing."""
    path = ASSETS / name
    if scale2x:
        hi = path.with_name(path.stem + "@2x" + path.suffix)
        path = hi if hi.exists() else path
    try:
        return tk.PhotoImage(file=str(path))
    except (tk.TclError, OSError):
        return None


def ui_scale(widget: tk.Misc) -> float:
    """How much larger than on a 96 DPI screen things should be (Tk measures points)."""
    try:
        return max(1.0, float(widget.tk.call("tk", "scaling")) / (96 / 72))
    except (tk.TclError, ValueError):
        return 1.0


class Fonts:
    """Named fonts derived from Tk's defaults, in points, so they follow the screen's DPI."""

    def __init__(self, root: tk.Misc) -> None:
        base = tkfont.nametofont("TkDefaultFont", root=root)
        size = int(base.cget("size"))
        if size < 0:  # given in pixels: turn into points, which follow the screen's DPI
            size = round(-size / float(root.tk.call("tk", "scaling")))
        family = base.cget("family")
        self.size = max(size, 10)
        self.ui = tkfont.Font(root=root, family=family, size=self.size)
        self.ui_bold = tkfont.Font(root=root, family=family, size=self.size, weight="bold")
        self.small = tkfont.Font(root=root, family=family, size=self.size - 1)
        self.small_bold = tkfont.Font(root=root, family=family, size=self.size - 1, weight="bold")
        self.small_italic = tkfont.Font(root=root, family=family, size=self.size - 1, slant="italic")
        self.title = tkfont.Font(root=root, family=family, size=self.size + 5, weight="bold")
        self.text = tkfont.Font(root=root, family=family, size=self.size + 1)
        self.text_bold = tkfont.Font(root=root, family=family, size=self.size + 1, weight="bold")
        fixed = tkfont.nametofont("TkFixedFont", root=root)
        self.mono = tkfont.Font(root=root, family=fixed.cget("family"), size=self.size)
        for name in ("TkDefaultFont", "TkTextFont", "TkHeadingFont", "TkMenuFont"):
            try:
                tkfont.nametofont(name, root=root).configure(size=self.size)
            except tk.TclError:
                pass


def setup_style(root: tk.Tk, fonts: Fonts) -> ttk.Style:
    style = ttk.Style(root)
    if "clam" in style.theme_names():
        # Every Tk has "clam", and it honours the colours below (native themes ignore some,
        # which would leave white text on a light button), so the window looks the same on
        # every platform.
        style.theme_use("clam")
    row = int(fonts.ui.metrics("linespace") * 1.75)
    style.configure(".", font=fonts.ui)
    style.configure("Sidebar.TFrame", background=SIDEBAR)
    style.configure("Main.TFrame", background=BG)
    style.configure("Sidebar.TLabel", background=SIDEBAR, foreground=MUTED, font=fonts.small_bold)
    style.configure("Hint.TLabel", background=SIDEBAR, foreground=MUTED, font=fonts.small)
    style.configure("Room.TLabel", background=BG, foreground=INK, font=fonts.title)
    style.configure("Sub.TLabel", background=BG, foreground=MUTED, font=fonts.small)
    style.configure("Login.TFrame", background=BG)
    style.configure("Login.TLabel", background=BG, foreground=INK)
    style.configure("LoginTitle.TLabel", background=BG, foreground=INK, font=fonts.title)
    style.configure("LoginSub.TLabel", background=BG, foreground=MUTED)
    style.configure("LoginError.TLabel", background=BG, foreground=WARNING_BG)
    style.configure("LoginBusy.TLabel", background=BG, foreground=ACCENT)
    style.configure("Sidebar.Treeview", background=SIDEBAR, fieldbackground=SIDEBAR,
                    foreground=INK, rowheight=row, borderwidth=0, relief="flat")
    style.layout("Sidebar.Treeview", [("Treeview.treearea", {"sticky": "nswe"})])
    style.map("Sidebar.Treeview", background=[("selected", "#dfe3f3")],
              foreground=[("selected", INK)])
    # A flat look: no bevels, light borders, white fields.
    border = "#d1d5db"
    style.configure("TButton", background="#e5e7eb", bordercolor=border, lightcolor="#e5e7eb",
                    darkcolor="#e5e7eb", focuscolor=ACCENT, padding=(10, 4), relief="flat")
    style.map("TButton", background=[("active", "#d9dce3"), ("pressed", "#cfd3db")],
              lightcolor=[("active", "#d9dce3")], darkcolor=[("active", "#d9dce3")])
    style.configure("Accent.TButton", foreground="#ffffff", background=ACCENT,
                    lightcolor=ACCENT, darkcolor=ACCENT, bordercolor=ACCENT,
                    font=fonts.ui_bold, padding=(16, 5))
    style.map("Accent.TButton", background=[("active", "#3730a3"), ("disabled", "#a5b4fc")],
              lightcolor=[("active", "#3730a3")], darkcolor=[("active", "#3730a3")])
    style.configure("TEntry", fieldbackground="#ffffff", bordercolor=border,
                    lightcolor="#ffffff", darkcolor="#ffffff", padding=(6, 3))
    style.map("TEntry", bordercolor=[("focus", ACCENT)], lightcolor=[("focus", "#c7d2fe")])
    style.configure("TCombobox", fieldbackground="#ffffff", background="#ffffff",
                    bordercolor=border, lightcolor="#ffffff", darkcolor="#ffffff",
                    arrowcolor=MUTED, padding=(6, 3))
    style.map("TCombobox", fieldbackground=[("readonly", "#ffffff")],
              background=[("readonly", "#ffffff"), ("active", "#f3f4f6")],
              bordercolor=[("focus", ACCENT)], selectbackground=[("readonly", "#ffffff")],
              selectforeground=[("readonly", INK)])
    # A slim scrollbar without arrows, as chat programs have.
    style.layout("Slim.Vertical.TScrollbar", [
        ("Vertical.Scrollbar.trough", {"sticky": "ns", "children": [
            ("Vertical.Scrollbar.thumb", {"expand": "1", "sticky": "nswe"})]})])
    style.configure("Slim.Vertical.TScrollbar", troughcolor=BG, background="#cfd4dc",
                    bordercolor=BG, lightcolor="#cfd4dc", darkcolor="#cfd4dc", gripcount=0,
                    arrowsize=10, relief="flat")
    style.map("Slim.Vertical.TScrollbar", background=[("active", "#aeb5c0")])
    style.layout("Quiet.Vertical.TScrollbar", style.layout("Slim.Vertical.TScrollbar"))
    style.configure("Quiet.Vertical.TScrollbar", troughcolor=BG, background=BG, bordercolor=BG,
                    lightcolor=BG, darkcolor=BG, gripcount=0, arrowsize=10, relief="flat")
    style.map("Quiet.Vertical.TScrollbar", background=[("active", BG)])
    return style


# -- login --------------------------------------------------------------------------------

class LoginView(ttk.Frame):
    """Username, server and port (remembered), an optional key passphrase, Connect."""

    def __init__(self, master: tk.Misc, app: App, settings: Settings) -> None:
        super().__init__(master, style="Login.TFrame", padding=(36, 28))
        self.app = app
        self.username = tk.StringVar(self, settings.username)
        self.host = tk.StringVar(self, settings.host)
        self.port = tk.StringVar(self, str(settings.port))
        self.passphrase = tk.StringVar(self, os.environ.get("GAPSHAPE_PASSPHRASE", ""))
        self.error = tk.StringVar(self)
        self.busy = tk.StringVar(self)
        self.create_widgets()

    def create_widgets(self) -> None:
        self.columnconfigure(1, weight=1)
        self.icon = load_image("icon-64.png")
        if self.icon is not None:
            ttk.Label(self, image=self.icon, style="Login.TLabel").grid(row=0, column=0,
                                                                      columnspan=2, pady=(0, 8))
        ttk.Label(self, text="Gapshape", style="LoginTitle.TLabel").grid(row=1, column=0,
                                                                        columnspan=2)
        ttk.Label(self, text="End-to-end encrypted chat", style="LoginSub.TLabel").grid(
            row=2, column=0, columnspan=2, pady=(0, 18))
        self.entries: dict[str, ttk.Entry] = {}
        fields = (("username", "Username", self.username, {}),
                  ("host", "Server", self.host, {}),
                  ("port", "Port", self.port, {"width": 8}),
                  ("passphrase", "Key passphrase", self.passphrase, {"show": "•"}))
        for row, (name, label, var, options) in enumerate(fields, start=3):
            ttk.Label(self, text=label, style="Login.TLabel").grid(row=row, column=0, sticky="w",
                                                                   padx=(0, 12), pady=4)
            entry = ttk.Entry(self, textvariable=var, **options)
            entry.grid(row=row, column=1, sticky="we" if name != "port" else "w", pady=4)
            self.entries[name] = entry
        ttk.Label(self, text="optional: only if your key has one",
                  style="LoginSub.TLabel").grid(row=7, column=1, sticky="w")
        self.error_label = ttk.Label(self, textvariable=self.error, style="LoginError.TLabel",
                                     wraplength=340, justify="left")
        self.error_label.grid(row=8, column=0, columnspan=2, sticky="we", pady=(14, 0))
        ttk.Label(self, textvariable=self.busy, style="LoginBusy.TLabel").grid(
            row=9, column=0, columnspan=2, sticky="w")
        self.connect_button = ttk.Button(self, text="Connect", style="Accent.TButton",
                                         command=self.submit)
        self.connect_button.grid(row=10, column=0, columnspan=2, pady=(14, 0))
        for widget in (*self.entries.values(), self.connect_button):
            widget.bind("<Return>", lambda _e: self.submit())
            widget.bind("<KP_Enter>", lambda _e: self.submit())
        self.after_idle(self._focus_first)

    def _focus_first(self) -> None:
        """Start in the username box, its text selected so typing replaces it."""
        entry = self.entries["username"]
        entry.focus_set()
        entry.selection_range(0, "end")
        entry.icursor("end")

    def submit(self) -> None:
        if str(self.connect_button.cget("state")) == "disabled":
            return
        result = chatview.check_login(self.username.get(), self.host.get(), self.port.get(),
                                      self.passphrase.get())
        if isinstance(result, str):
            self.show_error(result)
            return
        self.show_error("")
        self.set_busy("Connecting…")
        self.app.login(result)

    def show_error(self, text: str) -> None:
        self.error.set(text)
        if text:
            self.set_busy("")

    def set_busy(self, text: str) -> None:
        self.busy.set(text)
        self.connect_button.configure(state="disabled" if text else "normal")


# -- the manual ---------------------------------------------------------------------------

class ManualWindow(tk.Toplevel):
    """The /manual text in its own window; Escape or Close shuts it."""

    def __init__(self, master: tk.Misc, fonts: Fonts, on_close: Callable[[], None]) -> None:
        super().__init__(master, background=BG)
        self.title("Gapshape manual")
        self._on_close = on_close
        scale = ui_scale(self)
        self.geometry(f"{round(640 * scale)}x{round(480 * scale)}")
        self.text = tk.Text(self, wrap="word", font=fonts.text, background=BG, foreground=INK,
                            relief="flat", padx=16, pady=12, highlightthickness=0)
        scroll = ttk.Scrollbar(self, command=self.text.yview, style="Slim.Vertical.TScrollbar")
        self.text.configure(yscrollcommand=scroll.set)
        lines = manual_text().splitlines()
        self.text.tag_configure("title", font=fonts.title, spacing3=8)
        self.text.tag_configure("command", font=fonts.text_bold, foreground=ACCENT, spacing1=6)
        indent = fonts.text.measure("    ")
        self.text.tag_configure("summary", lmargin1=indent, lmargin2=indent)
        for number, line in enumerate(lines):
            tag = ("title" if number == 0 else "command" if line.startswith("/")
                   else "summary" if line.startswith("    ") else "")
            self.text.insert("end", line.strip() + "\n", tag)
        self.text.configure(state="disabled")
        close = ttk.Button(self, text="Close", command=self.close)
        self.text.grid(row=0, column=0, sticky="nsew")
        scroll.grid(row=0, column=1, sticky="ns")
        close.grid(row=1, column=0, columnspan=2, pady=8)
        self.rowconfigure(0, weight=1)
        self.columnconfigure(0, weight=1)
        self.bind("<Escape>", lambda _e: self.close())
        self.protocol("WM_DELETE_WINDOW", self.close)
        self.after_idle(self.text.focus_set)

    def close(self) -> None:
        self.destroy()
        self._on_close()


# -- the main window ----------------------------------------------------------------------

class MainView(ttk.Frame):
    """Rooms on the left, the conversation in the middle, people on the right, input below."""

    def __init__(self, master: tk.Misc, app: App) -> None:
        super().__init__(master, style="Main.TFrame")
        self.app = app
        self.fonts = app.fonts
        hidpi = ui_scale(self) >= 1.4
        self.lock_image = load_image("lock.png", hidpi)
        self.dots = {status: load_image(f"status-{status}.png", hidpi)
                     for status in chatview.STATUS_COLOURS}
        self.status_var = tk.StringVar(self, "Online")
        self.hint = tk.StringVar(self)
        self.room_hint = tk.StringVar(self)
        self.room_title = tk.StringVar(self)
        self.room_sub = tk.StringVar(self)
        self.people_title = tk.StringVar(self, "PEOPLE")
        self.offline_text = tk.StringVar(self)
        self.warning_text = tk.StringVar(self)
        self._colour_tags: set[str] = set()
        self._member_tags: set[str] = set()
        self.create_widgets()

    def create_widgets(self) -> None:
        self.columnconfigure(1, weight=1)
        self.rowconfigure(2, weight=1)

        # Banners: a key warning (red) and the connection state (amber), hidden when unused.
        self.warning_banner = tk.Frame(self, background=WARNING_BG)
        warning = tk.Label(self.warning_banner, textvariable=self.warning_text,
                           background=WARNING_BG, foreground="#ffffff", font=self.fonts.ui_bold,
                           justify="left", anchor="w", wraplength=600, padx=12, pady=8)
        warning.pack(side="left", fill="x", expand=True)
        dismiss = ttk.Button(self.warning_banner, text="Dismiss", command=self.app.dismiss_warnings)
        dismiss.pack(side="right", padx=8)
        self.warning_banner.bind("<Configure>", lambda e: warning.configure(
            wraplength=max(200, e.width - dismiss.winfo_reqwidth() - 48)))
        self.offline_banner = tk.Frame(self, background=OFFLINE_BG)
        tk.Label(self.offline_banner, textvariable=self.offline_text, background=OFFLINE_BG,
                 foreground="#78350f", font=self.fonts.ui, anchor="w", padx=12,
                 pady=6).pack(side="left", fill="x", expand=True)
        self.reconnect_button = ttk.Button(self.offline_banner, text="Reconnect now",
                                           command=self.app.reconnect_now)
        self.reconnect_button.pack(side="right", padx=8, pady=4)

        # Rooms.
        rooms = ttk.Frame(self, style="Sidebar.TFrame", padding=(10, 12, 6, 10))
        rooms.grid(row=2, column=0, sticky="nsw")
        rooms.rowconfigure(1, weight=1)
        ttk.Label(rooms, text="ROOMS", style="Sidebar.TLabel").grid(row=0, column=0, sticky="w",
                                                                   padx=4, pady=(0, 6))
        self.rooms = ttk.Treeview(rooms, style="Sidebar.Treeview", columns=("count",),
                                  show="tree", selectmode="browse", takefocus=True)
        width = self.fonts.ui.measure("#a-long-room-name") + 8
        self.rooms.column("#0", width=width, stretch=True)
        self.rooms.column("count", width=self.fonts.ui.measure("0000"), anchor="e", stretch=False)
        self.rooms.tag_configure("current", font=self.fonts.ui_bold, background="#e3e7f8")
        self.rooms.grid(row=1, column=0, sticky="nsew")
        self.rooms.bind("<ButtonRelease-1>", self._room_clicked)
        self.rooms.bind("<Return>", lambda _e: self._join_focused_room())
        new_room = ttk.Frame(rooms, style="Sidebar.TFrame")
        new_room.grid(row=2, column=0, sticky="we", pady=(10, 0))
        ttk.Label(new_room, text="NEW ROOM", style="Sidebar.TLabel").grid(row=0, column=0,
                                                                         columnspan=2, sticky="w",
                                                                         padx=4, pady=(0, 4))
        self.new_room = ttk.Entry(new_room, width=14)
        self.new_room.grid(row=1, column=0, sticky="we")
        self.new_room.bind("<Return>", lambda _e: self._create_room())
        self.new_room_button = ttk.Button(new_room, text="Create", width=7,
                                          command=self._create_room)
        self.new_room_button.grid(row=1, column=1, padx=(4, 0))
        ttk.Label(new_room, textvariable=self.room_hint, style="Hint.TLabel",
                  wraplength=width).grid(row=2, column=0, columnspan=2, sticky="w")
        new_room.columnconfigure(0, weight=1)

        # Conversation with its header.
        middle = ttk.Frame(self, style="Main.TFrame")
        middle.grid(row=2, column=1, sticky="nsew")
        middle.rowconfigure(1, weight=1)
        middle.columnconfigure(0, weight=1)
        header = ttk.Frame(middle, style="Main.TFrame", padding=(16, 10, 16, 6))
        header.grid(row=0, column=0, columnspan=2, sticky="we")
        ttk.Label(header, textvariable=self.room_title, style="Room.TLabel").pack(side="left")
        ttk.Label(header, textvariable=self.room_sub, style="Sub.TLabel").pack(side="left",
                                                                             padx=(10, 0), pady=(6, 0))
        ttk.Separator(middle).grid(row=0, column=0, columnspan=2, sticky="swe")
        self.text = tk.Text(middle, wrap="word", font=self.fonts.text, background=BG,
                            foreground=INK, relief="flat", borderwidth=0, highlightthickness=0,
                            padx=14, pady=8, cursor="arrow", state="disabled",
                            spacing1=2, spacing3=2, insertwidth=0, takefocus=False)
        self.scroll = ttk.Scrollbar(middle, command=self.text.yview,
                                    style="Quiet.Vertical.TScrollbar")
        self.text.configure(yscrollcommand=self._scrolled)
        self.text.grid(row=1, column=0, sticky="nsew")
        self.scroll.grid(row=1, column=1, sticky="ns")
        self.text.bind("<Key>", self._typed_into_conversation)
        self._configure_tags()

        # People.
        people = ttk.Frame(self, style="Sidebar.TFrame", padding=(6, 12, 10, 10))
        people.grid(row=2, column=2, sticky="nse")
        people.rowconfigure(1, weight=1)
        ttk.Label(people, textvariable=self.people_title, style="Sidebar.TLabel").grid(
            row=0, column=0, sticky="w", padx=4, pady=(0, 6))
        self.members = tk.Text(people, width=24, wrap="none", font=self.fonts.ui,
                               background=SIDEBAR, foreground=INK, relief="flat", borderwidth=0,
                               highlightthickness=0, cursor="arrow", state="disabled",
                               spacing1=5, spacing3=5, padx=4, insertwidth=0, takefocus=False)
        self.members.tag_configure("me", font=self.fonts.ui_bold)
        self.members.tag_configure("status", foreground=MUTED, font=self.fonts.small)
        self.members.grid(row=1, column=0, sticky="nsew")
        self.members.bind("<Double-Button-1>", self._member_double_clicked)
        self.member_names: list[str] = []
        ttk.Label(people, text="Double-click a name to send\nan encrypted private message.",
                  style="Hint.TLabel", justify="left").grid(row=2, column=0, sticky="w",
                                                            padx=4, pady=(8, 0))

        # Input row.
        bottom = ttk.Frame(self, style="Sidebar.TFrame", padding=(10, 8, 10, 4))
        bottom.grid(row=3, column=0, columnspan=3, sticky="we")
        bottom.columnconfigure(1, weight=1)
        selector = ttk.Frame(bottom, style="Sidebar.TFrame")
        selector.grid(row=0, column=0, padx=(0, 8))
        self.status_dot = ttk.Label(selector, image=self.dots.get("online") or "",
                                    style="Hint.TLabel")
        self.status_dot.pack(side="left", padx=(2, 6))
        self.status_box = ttk.Combobox(selector, textvariable=self.status_var, state="readonly",
                                       width=14, values=("Online", "Away", "Do not disturb"))
        self.status_box.pack(side="left")
        self.status_box.bind("<<ComboboxSelected>>", self._status_chosen)
        self.input = ttk.Entry(bottom, font=self.fonts.text)
        self.input.grid(row=0, column=1, sticky="we", ipady=3)
        self.send_button = ttk.Button(bottom, text="Send", style="Accent.TButton",
                                      command=self.app.submit_input)
        self.send_button.grid(row=0, column=2, padx=(8, 0))
        ttk.Label(bottom, textvariable=self.hint, style="Hint.TLabel").grid(
            row=1, column=1, sticky="w", pady=(3, 0))
        for key, handler in (("<Return>", self.app.submit_input), ("<KP_Enter>", self.app.submit_input),
                             ("<Up>", self.app.history_older), ("<Down>", self.app.history_newer),
                             ("<Tab>", self.app.complete), ("<Escape>", self.app.clear_input),
                             ("<Prior>", lambda: self.text.yview_scroll(-1, "pages")),
                             ("<Next>", lambda: self.text.yview_scroll(1, "pages"))):
            self.input.bind(key, lambda _e, h=handler: (h(), "break")[1])

    def _configure_tags(self) -> None:
        t, f = self.text, self.fonts
        indent = f.small.measure("00:00  ") + 2
        # Tags created later win: line kinds first, then spans, then (on demand) colours.
        t.tag_configure("message", lmargin2=indent)
        t.tag_configure("own", background="#eef2ff", lmargin2=indent, lmargincolor="#eef2ff")
        t.tag_configure("mention", background="#fff7d6", lmargin2=indent, lmargincolor="#fff7d6")
        t.tag_configure("history", foreground="#7c8594", lmargin2=indent)
        t.tag_configure("system", foreground=MUTED, font=f.small_italic, lmargin2=indent)
        t.tag_configure("notice", foreground="#0f766e", lmargin2=indent)
        t.tag_configure("error", foreground="#b91c1c", lmargin2=indent)
        t.tag_configure("private", background="#f3edff", lmargin2=indent, lmargincolor="#f3edff",
                        spacing1=4, spacing3=4)
        t.tag_configure("warning", background=WARNING_BG, foreground="#ffffff", font=f.text_bold,
                        lmargin1=8, lmargin2=8, rmargin=8, lmargincolor=WARNING_BG,
                        spacing1=3, spacing3=3)
        t.tag_configure("divider", foreground="#9aa0a6", font=f.small, justify="center",
                        spacing1=8, spacing3=6)
        t.tag_configure("time", foreground="#9aa0a6", font=f.small)
        t.tag_configure("time-light", foreground="#fecaca", font=f.small)
        t.tag_configure("mono", font=f.mono)
        t.tag_configure("name", font=f.text_bold)
        t.tag_configure("private-label", foreground="#6d28d9", font=f.text_bold)
        t.tag_configure("body")
        t.tag_raise("sel")

    def _scrolled(self, first: str, last: str) -> None:
        """Show the scrollbar's thumb only when there is something to scroll (its width
        stays reserved, so hiding it cannot re-wrap the text)."""
        needed = float(first) > 0.0 or float(last) < 1.0
        self.scroll.configure(style="Slim.Vertical.TScrollbar" if needed
                              else "Quiet.Vertical.TScrollbar")
        self.scroll.set(first, last)

    # -- drawing --------------------------------------------------------------------------

    def show_lines(self, lines: list[Line], *, replace: bool = False) -> None:
        """Append lines (or replace everything) and follow the end unless scrolled up."""
        follow = replace or chatview.should_autoscroll(self.text.yview()[1])
        self.text.configure(state="normal")
        if replace:
            self.text.delete("1.0", "end")
        for line in lines:
            self._insert_line(line)
        excess = int(self.text.index("end-1c").split(".")[0]) - chatview.TRANSCRIPT_LIMIT
        if excess > 200:
            self.text.delete("1.0", f"{excess + 1}.0")
        self.text.configure(state="disabled")
        if follow:
            self.text.see("end")

    def _insert_line(self, line: Line) -> None:
        """Insert one line; its kind's tag covers its newline too, so a background fills
        the whole width."""
        t = self.text
        start = t.index("end-1c")
        for span in line.spans:
            if span.image:
                if span.image == "lock" and self.lock_image is not None:
                    t.image_create("end", image=self.lock_image, align="center", padx=1)
                else:
                    t.insert("end", "[private]", span.tags)
                continue
            for tag in span.tags:
                if tag.startswith("fg#") and tag not in self._colour_tags:
                    t.tag_configure(tag, foreground=tag[2:])
                    self._colour_tags.add(tag)
            t.insert("end", span.text, span.tags)
        t.insert("end", "\n")
        t.tag_add(line.kind, start, "end-1c")

    def show_rooms(self, rows: list[tuple[str, int, bool]]) -> None:
        tree = self.rooms
        wanted = [name for name, _count, _current in rows]
        for item in tree.get_children():
            if item not in wanted:
                tree.delete(item)
        for index, (name, count, current) in enumerate(rows):
            values = (str(count) if count else "",)
            tags = ("current",) if current else ()
            if tree.exists(name):
                tree.item(name, text=f"  {name}", values=values, tags=tags)
                tree.move(name, "", index)
            else:
                tree.insert("", index, iid=name, text=f"  {name}", values=values, tags=tags)
            if current:
                tree.selection_set(name)
                tree.focus(name)

    def show_members(self, rows: list[tuple[str, str, str]], me: str,
                     colour: Callable[[str], str]) -> None:
        """One line per person: a status dot, the name in its colour, the status in words."""
        t = self.members
        t.configure(state="normal")
        t.delete("1.0", "end")
        self.member_names = []
        for number, (name, status, text) in enumerate(rows):
            if number:
                t.insert("end", "\n")
            tag = chatview.colour_tag(colour(name))
            if tag not in self._member_tags:
                t.tag_configure(tag, foreground=colour(name))
                self._member_tags.add(tag)
            image = self.dots.get(status)
            if image is not None:
                t.image_create("end", image=image, align="center", padx=2)
            mine = name.casefold() == me.casefold()
            t.insert("end", f" {name}", (tag, "me") if mine else (tag,))
            t.insert("end", " (you)" if mine else "", ("status",))
            t.insert("end", f"  {text}", ("status",))
            self.member_names.append(name)
        t.configure(state="disabled")
        self.people_title.set(f"PEOPLE — {len(rows)}")

    def member_at(self, y: int) -> str | None:
        line = int(self.members.index(f"@0,{y}").split(".")[0])
        if 0 < line <= len(self.member_names):
            return self.member_names[line - 1]
        return None

    def show_status(self, status: str) -> None:
        self.status_var.set({"online": "Online", "away": "Away",
                             "dnd": "Do not disturb"}.get(status, "Online"))
        self.status_dot.configure(image=self.dots.get(status) or "")

    def show_warnings(self, warnings: list[chatview.KeyWarning]) -> None:
        if not warnings:
            self.warning_banner.grid_remove()
            return
        names = ", ".join(w.user for w in warnings)
        first = warnings[0].user
        self.warning_text.set(
            f"⚠  The key of {names} has CHANGED. Private messages with them are blocked. "
            f"Compare fingerprints in person or by phone, then type /trust {first}.")
        self.warning_banner.grid(row=0, column=0, columnspan=3, sticky="we")

    def show_connection(self, text: str) -> None:
        if not text:
            self.offline_banner.grid_remove()
            return
        self.offline_text.set(text)
        self.offline_banner.grid(row=1, column=0, columnspan=3, sticky="we")

    # -- user actions ---------------------------------------------------------------------

    def _room_clicked(self, event: tk.Event) -> None:
        item = self.rooms.identify_row(event.y)
        if item:
            self.app.join_room(item)

    def _join_focused_room(self) -> None:
        item = self.rooms.focus()
        if item:
            self.app.join_room(item)

    def _create_room(self) -> None:
        try:
            room = chatview.check_room_name(self.new_room.get())
        except ValueError as exc:
            self.room_hint.set(str(exc))
            return
        self.room_hint.set("")
        self.new_room.delete(0, "end")
        self.app.join_room(room)
        self.input.focus_set()

    def _member_double_clicked(self, event: tk.Event) -> str:
        name = self.member_at(event.y)
        if name and name.casefold() != self.app.model.me.casefold():
            self.input.delete(0, "end")
            self.input.insert(0, f"/privatemsg {name} ")
            self.input.focus_set()
            self.input.icursor("end")
        return "break"

    def _status_chosen(self, _event: tk.Event) -> None:
        self.status_box.selection_clear()
        self.app.set_status(chatview.status_word(self.status_var.get()))
        self.input.focus_set()

    def _typed_into_conversation(self, event: tk.Event) -> str | None:
        """Typing while the conversation has focus goes to the input box."""
        if event.char and event.char.isprintable() and not (event.state & 0x4):
            self.input.focus_set()
            self.input.insert("end", event.char)
            return "break"
        return None


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
        self.astral = chatview.tk_can_show_astral(str(root.tk.call("info", "patchlevel")))
        self.fonts = Fonts(root)
        setup_style(root, self.fonts)
        root.configure(background=BG)
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
        self.request: LoginRequest | None = None
        self.main: MainView | None = None
        self.manual: ManualWindow | None = None
        self.closing = False
        self.destroyed = False
        self.bells = 0
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
        else:
            self.model.apply(event)
            if isinstance(event, RoomJoined):
                self._refresh_rooms(delay_ms=300)

    def render(self, changes: chatview.Changes) -> None:
        main, model = self.main, self.model
        assert main is not None
        if changes.redraw:
            main.show_lines(model.transcript(), replace=True)
        elif changes.lines:
            main.show_lines(changes.lines)
        if changes.redraw or changes.members or changes.rooms or changes.title:
            main.room_title.set(model.room)
            count = len(model.members)
            main.room_sub.set(f"{count} {'person' if count == 1 else 'people'} here"
                              if model.connection == CONNECTED else "")
        if changes.members or changes.redraw:
            main.show_members(model.member_rows(), model.me, model.colours)
        if changes.rooms or changes.redraw:
            main.show_rooms(model.room_rows())
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
        if event.retry and not self.closing:
            self._schedule_retry(event.message)
        else:
            self.model.set_connection(OFFLINE, event.message)
            self.model.say("error", f"Could not reconnect: {event.message}")

    def _disconnected(self, event: Disconnected) -> None:
        if self.closing:
            self._finish_close()
            return
        if self.main is None:
            return
        delay = self.backoff.next_delay()
        self.model.connection_lost(event.reason, delay)
        self._start_retry_timer(delay)

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
        if self.request is None or self.closing:
            return
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
        if model.connection == OFFLINE:
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
        self.size_window(1120, 700, minimum=(720, 440))
        self.main.input.focus_set()

    def size_window(self, width: int, height: int, minimum: tuple[int, int]) -> None:
        """Sizes are given for a 96 DPI screen; scale them with the fonts, within the screen."""
        scale = ui_scale(self.root)
        screen_w, screen_h = self.root.winfo_screenwidth(), self.root.winfo_screenheight()
        fit = (min(round(width * scale), screen_w - 40), min(round(height * scale), screen_h - 80))
        self.root.minsize(min(round(minimum[0] * scale), fit[0]), min(round(minimum[1] * scale), fit[1]))
        self.root.geometry(f"{fit[0]}x{fit[1]}")

    # -- what the user does ---------------------------------------------------------------

    def submit_input(self) -> None:
        assert self.main is not None
        entry = self.main.input
        line = chatview.join_surrogates(entry.get())
        action = chatview.interpret_input(line)
        if action.kind == "nothing":
            return
        self.history.add(line)
        entry.delete(0, "end")
        self.completer.reset()
        self.set_hint("")
        if action.kind == "error":
            self.model.say("error", action.message)
        elif action.kind == "manual":
            self.open_manual()
        elif action.kind == "quit":
            self.close()
        else:
            self.model.expect_listing(action.command)
            self.link.execute(action.line)
        if self.main is not None:
            self.render(self.model.take_changes())

    def history_older(self) -> None:
        self._recall(self.history.older(self.main.input.get()) if self.main else None)

    def history_newer(self) -> None:
        self._recall(self.history.newer(self.main.input.get()) if self.main else None)

    def _recall(self, line: str | None) -> None:
        if line is None or self.main is None:
            return
        self.main.input.delete(0, "end")
        self.main.input.insert(0, line)
        self.main.input.icursor("end")

    def complete(self) -> None:
        assert self.main is not None
        entry = self.main.input
        text = entry.get()[: entry.index("insert")]
        rest = entry.get()[entry.index("insert"):]
        rooms = [name for name, _count, _current in self.model.room_rows()]
        new, hint = self.completer.complete(text, self.model.usernames(), rooms)
        entry.delete(0, "end")
        entry.insert(0, new + rest)
        entry.icursor(len(new))
        self.set_hint(hint)

    def clear_input(self) -> None:
        if self.main is not None:
            self.main.input.delete(0, "end")
            self.set_hint("")

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
        if room != self.model.room:
            self.link.join(room)

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


# -- the test hook ------------------------------------------------------------------------

class Probe:
    """Writes what the widgets show as JSON to `path` whenever it changes (tests read it).

    Off by default; clientgui.py turns it on only when GAPSHAPE_GUI_PROBE names a file.
    Screen positions are root-window coordinates, for tests that click with xdotool."""

    def __init__(self, app: App, path: Path, interval_ms: int = 100) -> None:
        self.app, self.path, self.interval_ms = app, Path(path), interval_ms
        self._last = ""
        self.app.root.after(interval_ms, self._tick)

    def _tick(self) -> None:
        root = self.app.root
        if self.app.destroyed:
            return
        try:
            text = json.dumps(self.snapshot(), ensure_ascii=False, indent=1)
        except tk.TclError:
            return
        if text != self._last:
            temp = self.path.with_name(self.path.name + ".tmp")
            temp.write_text(text, "utf-8")
            os.replace(temp, self.path)
            self._last = text
        root.after(self.interval_ms, self._tick)

    @staticmethod
    def _box(widget: tk.Misc) -> list[int]:
        if not widget.winfo_ismapped():
            return []
        return [widget.winfo_rootx(), widget.winfo_rooty(), widget.winfo_width(),
                widget.winfo_height()]

    def snapshot(self) -> dict[str, Any]:
        app = self.app
        root = app.root
        shot: dict[str, Any] = {
            "pid": os.getpid(),
            "title": root.title(),
            "window": root.winfo_id(),
            "frame": root.wm_frame(),
            "focused": app.model.focused,
            "bells": app.bells,
            "manual": bool(app.manual is not None and app.manual.winfo_exists()),
            "astral": app.astral,
            "stats": dict(app.stats),
        }
        if app.main is None:
            view = app.login_view
            shot["screen"] = "login"
            shot["login"] = {"username": view.username.get(), "host": view.host.get(),
                             "port": view.port.get(), "error": view.error.get(),
                             "busy": view.busy.get(),
                             "boxes": {name: self._box(entry) for name, entry in view.entries.items()}
                             | {"connect": self._box(view.connect_button)}}
            return shot
        main = app.main
        shot["screen"] = "main"
        shot["conversation"] = main.text.get("1.0", "end-1c")
        shot["conversation_images"] = len(main.text.image_names())
        shot["conversation_view"] = [round(v, 4) for v in main.text.yview()]
        shot["room"] = main.room_title.get()
        shot["rooms"] = []
        for item in main.rooms.get_children():
            box = main.rooms.bbox(item)
            shot["rooms"].append({
                "name": item, "count": main.rooms.set(item, "count"),
                "current": "current" in main.rooms.item(item, "tags"),
                "box": [main.rooms.winfo_rootx() + box[0], main.rooms.winfo_rooty() + box[1],
                        box[2], box[3]] if box else []})
        shot["members"] = []
        for number, name in enumerate(main.member_names, start=1):
            line = main.members.get(f"{number}.0", f"{number}.end").strip()
            status = [main.members.get(start, end) for start, end in
                      _pairs(main.members.tag_ranges("status")) if str(start).startswith(f"{number}.")]
            shot["members"].append({"name": name, "text": line,
                                    "status": "".join(status).replace("(you)", "").strip()})
        shot["status"] = main.status_var.get()
        shot["input"] = main.input.get()
        shot["hint"] = main.hint.get()
        shot["warning_banner"] = main.warning_text.get() if main.warning_banner.winfo_ismapped() else ""
        shot["connection_banner"] = (main.offline_text.get()
                                     if main.offline_banner.winfo_ismapped() else "")
        shot["boxes"] = {"input": self._box(main.input), "send": self._box(main.send_button),
                         "status": self._box(main.status_box), "new_room": self._box(main.new_room),
                         "new_room_button": self._box(main.new_room_button),
                         "conversation": self._box(main.text), "members": self._box(main.members)}
        shot["member_boxes"] = {}
        for number, name in enumerate(main.member_names, start=1):
            box = main.members.dlineinfo(f"{number}.0")
            if box:
                shot["member_boxes"][name] = [main.members.winfo_rootx() + box[0],
                                              main.members.winfo_rooty() + box[1],
                                              main.members.winfo_width() - box[0], box[3]]
        return shot


def _pairs(items: tuple[Any, ...]) -> list[tuple[Any, Any]]:
    return list(zip(items[::2], items[1::2], strict=False))


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
        app.link.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
