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
import collections
import dataclasses
import json
import logging
import os
import queue
import subprocess
import sys
import threading
import time
import tkinter as tk
import tkinter.font as tkfont
import webbrowser
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
    ServerProbe,
    ServerReachable,
    Settings,
    TabCompleter,
)
from client import Disconnected, Event, RoomJoined, TlsSettings
from commands import manual_text
from notify import Notifier

log = logging.getLogger("gapshape.gui")

ASSETS = Path(__file__).resolve().parent / "Assets"
POLL_MS = 40  # how often the inbox is drained when it was empty
BATCH = 200  # events handled per tick, so a flood cannot freeze the window
ROOMS_REFRESH_MS = 15_000  # the server does not push room counts; ask now and then
QUIT_GRACE_MS = 1500  # how long closing waits for the server's goodbye

# Colours of the window. The names are module globals that `apply_palette` swaps (light
# or dark); every widget reads them when it is built, so a theme change rebuilds the view.
PALETTES: dict[str, dict[str, str]] = {
    "light": {
        "BG": "#ffffff", "SIDEBAR": "#f3f4f8", "INK": "#1f2937", "MUTED": "#6b7280",
        "ACCENT": "#4338ca", "ACCENT_ACTIVE": "#3730a3", "WARNING_BG": "#b91c1c",
        "OFFLINE_BG": "#fef3c7", "OFFLINE_FG": "#78350f", "OWN_BG": "#eef2ff",
        "MENTION_BG": "#fff7d6", "PRIVATE_BG": "#f3edff", "PRIVATE_FG": "#6d28d9",
        "HISTORY_FG": "#7c8594", "NOTICE_FG": "#0f766e", "ERROR_FG": "#b91c1c",
        "TIME_FG": "#9aa0a6", "SELECTED_BG": "#dfe3f3", "CURRENT_BG": "#e3e7f8",
        "BORDER": "#d1d5db", "BUTTON_BG": "#e5e7eb", "BUTTON_ACTIVE": "#d9dce3",
        "FIELD_BG": "#ffffff", "THUMB": "#b8bec9", "THUMB_ACTIVE": "#8f97a3",
        "LINK_FG": "#1d4ed8", "FOUND_BG": "#fde68a", "FOUND_NOW_BG": "#f59e0b",
        "UNSENT_BG": "#fee2e2", "UNSENT_FG": "#7f1d1d", "STALE_FG": "#a3a8b1",
        "TIP_BG": "#111827", "TIP_FG": "#f9fafb", "PICKED_BG": "#dde3fb",
    },
    "dark": {
        "BG": "#1b1c21", "SIDEBAR": "#24252c", "INK": "#e5e7eb", "MUTED": "#a1a7b3",
        "ACCENT": "#6366f1", "ACCENT_ACTIVE": "#4f46e5", "WARNING_BG": "#b91c1c",
        "OFFLINE_BG": "#4a3b12", "OFFLINE_FG": "#fde68a", "OWN_BG": "#262a44",
        "MENTION_BG": "#3f3514", "PRIVATE_BG": "#2e2541", "PRIVATE_FG": "#c4b5fd",
        "HISTORY_FG": "#8d95a3", "NOTICE_FG": "#5eead4", "ERROR_FG": "#fca5a5",
        "TIME_FG": "#7d828c", "SELECTED_BG": "#363b58", "CURRENT_BG": "#30354d",
        "BORDER": "#41444e", "BUTTON_BG": "#34363f", "BUTTON_ACTIVE": "#3f424c",
        "FIELD_BG": "#2a2b32", "THUMB": "#555966", "THUMB_ACTIVE": "#727786",
        "LINK_FG": "#93c5fd", "FOUND_BG": "#854d0e", "FOUND_NOW_BG": "#c2410c",
        "UNSENT_BG": "#4c1d1d", "UNSENT_FG": "#fecaca", "STALE_FG": "#6b7080",
        "TIP_BG": "#f3f4f6", "TIP_FG": "#111827", "PICKED_BG": "#313757",
    },
}
BG = SIDEBAR = INK = MUTED = ACCENT = ACCENT_ACTIVE = WARNING_BG = OFFLINE_BG = OFFLINE_FG = ""
OWN_BG = MENTION_BG = PRIVATE_BG = PRIVATE_FG = HISTORY_FG = NOTICE_FG = ERROR_FG = ""
TIME_FG = SELECTED_BG = CURRENT_BG = BORDER = BUTTON_BG = BUTTON_ACTIVE = FIELD_BG = ""
THUMB = THUMB_ACTIVE = LINK_FG = FOUND_BG = FOUND_NOW_BG = UNSENT_BG = UNSENT_FG = ""
STALE_FG = TIP_BG = TIP_FG = PICKED_BG = ""
THEME = "light"


def apply_palette(theme: str) -> None:
    """Make `theme` ('light' or 'dark') the colours every widget built from now on uses."""
    global THEME
    THEME = theme if theme in PALETTES else "light"
    globals().update(PALETTES[THEME])


apply_palette("light")


def on_theme(colour: str) -> str:
    """A name colour (chosen to be readable on white) made readable on the dark theme by
    mixing it halfway with white; unchanged on the light one."""
    if THEME != "dark" or not colour.startswith("#") or len(colour) != 7:
        return colour
    channels = [int(colour[i:i + 2], 16) for i in (1, 3, 5)]
    return "#" + "".join(f"{round(c + (255 - c) * 0.5):02x}" for c in channels)


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


def emoji_font_installed() -> bool:
    """Whether fontconfig knows a font with emoji (X11 draws astral characters only then;
    Debian: fonts-noto-color-emoji). Asked once at start; True when fc-list is missing,
    since Tk then falls back as best it can and a box is no worse than a name."""
    try:
        found = subprocess.run(["fc-list", ":charset=1f600", "family"], capture_output=True,
                               text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return True
    return bool(found.stdout.strip())


def read_system_theme(windowing: str) -> str:
    """'dark' or 'light' as the desktop says (GNOME color-scheme, the GTK theme's name,
    macOS's AppleInterfaceStyle), 'light' when it cannot be read."""
    def ask(*command: str) -> str:
        try:
            return subprocess.run(command, capture_output=True, text=True, timeout=2).stdout
        except (OSError, subprocess.SubprocessError):
            return ""
    if windowing == "aqua":
        return chatview.system_theme(apple_style=ask("defaults", "read", "-g",
                                                     "AppleInterfaceStyle"))
    if windowing != "x11":
        return "light"
    scheme = theme = ""
    if os.environ.get("GTK_THEME"):
        theme = os.environ["GTK_THEME"]
    else:
        scheme = ask("gsettings", "get", "org.gnome.desktop.interface", "color-scheme")
        theme = ask("gsettings", "get", "org.gnome.desktop.interface", "gtk-theme")
    return chatview.system_theme(gtk_theme=theme, color_scheme=scheme)


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
    scale = ui_scale(root)
    row = int(fonts.ui.metrics("linespace") * 1.75)
    style.configure(".", font=fonts.ui, background=BG, foreground=INK, troughcolor=BG,
                    selectbackground=ACCENT, selectforeground="#ffffff",
                    insertcolor=INK, fieldbackground=FIELD_BG)
    style.configure("TFrame", background=BG)
    style.configure("TLabel", background=BG, foreground=INK)
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
    style.configure("LoginError.TLabel", background=BG, foreground=ERROR_FG)
    style.configure("LoginBusy.TLabel", background=BG, foreground=ACCENT)
    style.configure("Sidebar.Treeview", background=SIDEBAR, fieldbackground=SIDEBAR,
                    foreground=INK, rowheight=row, borderwidth=0, relief="flat")
    style.layout("Sidebar.Treeview", [("Treeview.treearea", {"sticky": "nswe"})])
    style.map("Sidebar.Treeview", background=[("selected", SELECTED_BG)],
              foreground=[("selected", INK)])
    style.configure("TPanedwindow", background=BORDER)
    style.configure("Sash", sashthickness=max(2, round(3 * scale)), gripcount=0,
                    background=BORDER, lightcolor=BORDER, bordercolor=BORDER)
    # A flat look: no bevels, light borders, plain fields.
    pad = (round(10 * scale), round(4 * scale))
    style.configure("TButton", background=BUTTON_BG, foreground=INK, bordercolor=BORDER,
                    lightcolor=BUTTON_BG, darkcolor=BUTTON_BG, focuscolor=ACCENT,
                    padding=pad, relief="flat")
    style.map("TButton", background=[("active", BUTTON_ACTIVE), ("pressed", BUTTON_ACTIVE)],
              lightcolor=[("active", BUTTON_ACTIVE)], darkcolor=[("active", BUTTON_ACTIVE)])
    style.configure("Small.TButton", padding=(round(6 * scale), round(1 * scale)),
                    font=fonts.small, width=-4)
    style.configure("Accent.TButton", foreground="#ffffff", background=ACCENT,
                    lightcolor=ACCENT, darkcolor=ACCENT, bordercolor=ACCENT,
                    font=fonts.ui_bold, padding=(round(16 * scale), round(5 * scale)))
    style.map("Accent.TButton", background=[("active", ACCENT_ACTIVE), ("disabled", MUTED)],
              lightcolor=[("active", ACCENT_ACTIVE)], darkcolor=[("active", ACCENT_ACTIVE)])
    style.configure("TEntry", fieldbackground=FIELD_BG, foreground=INK, bordercolor=BORDER,
                    lightcolor=FIELD_BG, darkcolor=FIELD_BG, insertcolor=INK,
                    padding=(round(6 * scale), round(3 * scale)))
    style.map("TEntry", bordercolor=[("focus", ACCENT)], lightcolor=[("focus", ACCENT)])
    style.configure("TCombobox", fieldbackground=FIELD_BG, background=FIELD_BG,
                    foreground=INK, bordercolor=BORDER, lightcolor=FIELD_BG,
                    darkcolor=FIELD_BG, arrowcolor=MUTED, arrowsize=round(12 * scale),
                    padding=(round(6 * scale), round(3 * scale)))
    style.map("TCombobox", fieldbackground=[("readonly", FIELD_BG)],
              background=[("readonly", FIELD_BG), ("active", BUTTON_BG)],
              foreground=[("readonly", INK)],
              bordercolor=[("focus", ACCENT)], selectbackground=[("readonly", FIELD_BG)],
              selectforeground=[("readonly", INK)])
    root.option_add("*TCombobox*Listbox.background", FIELD_BG)
    root.option_add("*TCombobox*Listbox.foreground", INK)
    # A slim scrollbar without arrows, as chat programs have; its thumb is always drawn
    # when there is something to scroll.
    width = max(8, round(10 * scale))
    style.layout("Slim.Vertical.TScrollbar", [
        ("Vertical.Scrollbar.trough", {"sticky": "ns", "children": [
            ("Vertical.Scrollbar.thumb", {"expand": "1", "sticky": "nswe"})]})])
    style.configure("Slim.Vertical.TScrollbar", troughcolor=BG, background=THUMB,
                    bordercolor=BG, lightcolor=THUMB, darkcolor=THUMB, gripcount=0,
                    arrowsize=width, relief="flat")
    style.map("Slim.Vertical.TScrollbar", background=[("active", THUMB_ACTIVE)])
    style.layout("Quiet.Vertical.TScrollbar", style.layout("Slim.Vertical.TScrollbar"))
    style.configure("Quiet.Vertical.TScrollbar", troughcolor=BG, background=BG, bordercolor=BG,
                    lightcolor=BG, darkcolor=BG, gripcount=0, arrowsize=width, relief="flat")
    style.map("Quiet.Vertical.TScrollbar", background=[("active", BG)])
    style.layout("QuietSide.Vertical.TScrollbar", style.layout("Slim.Vertical.TScrollbar"))
    style.configure("QuietSide.Vertical.TScrollbar", troughcolor=SIDEBAR, background=SIDEBAR,
                    bordercolor=SIDEBAR, lightcolor=SIDEBAR, darkcolor=SIDEBAR, gripcount=0,
                    arrowsize=width, relief="flat")
    style.map("QuietSide.Vertical.TScrollbar", background=[("active", SIDEBAR)])
    for name, trough in (("SlimSide", SIDEBAR),):
        style.layout(f"{name}.Vertical.TScrollbar", style.layout("Slim.Vertical.TScrollbar"))
        style.configure(f"{name}.Vertical.TScrollbar", troughcolor=trough, background=THUMB,
                        bordercolor=trough, lightcolor=THUMB, darkcolor=THUMB, gripcount=0,
                        arrowsize=width, relief="flat")
        style.map(f"{name}.Vertical.TScrollbar", background=[("active", THUMB_ACTIVE)])
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


# -- small widgets ------------------------------------------------------------------------

class Tooltip:
    """A small window of text near the pointer; one per top-level, reused."""

    def __init__(self, master: tk.Misc, font: tkfont.Font) -> None:
        self.master, self.font = master, font
        self.window: tk.Toplevel | None = None
        self.text = ""
        self._job: str | None = None

    def show_later(self, text: str, x: int, y: int, delay_ms: int = 400) -> None:
        """Show `text` at screen position x, y after `delay_ms` (unless hidden first)."""
        if text == self.text and self.window is not None:
            return
        self.hide()
        self._job = self.master.after(delay_ms, lambda: self._show(text, x, y))

    def _show(self, text: str, x: int, y: int) -> None:
        self._job = None
        window = self.window = tk.Toplevel(self.master, background=TIP_BG)
        window.wm_overrideredirect(True)
        tk.Label(window, text=text, background=TIP_BG, foreground=TIP_FG, font=self.font,
                 justify="left", wraplength=round(360 * ui_scale(window)), padx=8,
                 pady=4).pack()
        window.wm_geometry(f"+{x + 14}+{y + 18}")
        self.text = text

    def hide(self) -> None:
        if self._job is not None:
            self.master.after_cancel(self._job)
            self._job = None
        if self.window is not None:
            self.window.destroy()
            self.window = None
        self.text = ""


def _pairs(items: tuple[Any, ...]) -> list[tuple[Any, Any]]:
    return list(zip(items[::2], items[1::2], strict=False))


# -- the main window ----------------------------------------------------------------------

INPUT_MAX_LINES = 6  # the input box grows with what is typed, up to this many lines


class MainView(ttk.Frame):
    """Rooms on the left, the conversation in the middle, people on the right (in a
    PanedWindow, so the person can drag the borders, and the side panes fold away on a
    narrow window), the input box below."""

    def __init__(self, master: tk.Misc, app: App) -> None:
        super().__init__(master, style="Main.TFrame")
        self.app = app
        self.fonts = app.fonts
        self.scale = ui_scale(self)
        hidpi = self.scale >= 1.4
        self.lock_image = load_image("lock.png", hidpi)
        self.dots = {status: load_image(f"status-{status}.png", hidpi)
                     for status in chatview.STATUS_COLOURS}
        self.status_var = tk.StringVar(self, "Online")
        self.hint = tk.StringVar(self)
        self.room_hint = tk.StringVar(self)
        self.room_title = tk.StringVar(self)
        self.room_sub = tk.StringVar(self)
        self.rooms_title = tk.StringVar(self, "ROOMS")
        self.people_title = tk.StringVar(self, "PEOPLE")
        self.offline_text = tk.StringVar(self)
        self.warning_text = tk.StringVar(self)
        self.unsent_text = tk.StringVar(self)
        self.unsent_line = ""
        self.new_count = 0
        self.following = True  # the view follows new lines until the person scrolls up
        self.rooms_stale = False
        self.picked_member = ""
        self.search_var = tk.StringVar(self)
        self.search_count = tk.StringVar(self)
        self.search_matches: list[str] = []
        self.search_index = -1
        self.panes_wanted = {"rooms": True, "people": True}  # the person's choice
        self.panes_shown = {"rooms": True, "people": True}
        self.panes_forced = {"rooms": False, "people": False}
        self._colour_tags: set[str] = set()
        self._member_tags: set[str] = set()
        self._line_tags: collections.OrderedDict[str, Line] = collections.OrderedDict()
        self._links: dict[str, str] = {}
        self._line_number = 0
        self.tooltip = Tooltip(self, self.fonts.small)
        self.create_widgets()

    def px(self, value: float) -> int:
        return round(value * self.scale)

    def create_widgets(self) -> None:
        self.columnconfigure(0, weight=1)
        self.rowconfigure(2, weight=1)
        self._create_banners()
        self.panes = ttk.PanedWindow(self, orient="horizontal")
        self.panes.grid(row=2, column=0, sticky="nsew")
        self.rooms_pane = self._create_rooms(self.panes)
        self.middle = self._create_conversation(self.panes)
        self.people_pane = self._create_people(self.panes)
        self.panes.add(self.rooms_pane, weight=1)
        self.panes.add(self.middle, weight=5)
        self.panes.add(self.people_pane, weight=1)
        self._create_input()
        self.bind("<Configure>", self._resized)

    def _create_banners(self) -> None:
        # A key warning (red) and the connection state (amber), hidden when unused.
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
        offline = tk.Label(self.offline_banner, textvariable=self.offline_text,
                           background=OFFLINE_BG, foreground=OFFLINE_FG, font=self.fonts.ui,
                           anchor="w", justify="left", padx=12, pady=6)
        offline.pack(side="left", fill="x", expand=True)
        self.reconnect_button = ttk.Button(self.offline_banner, text="Reconnect now",
                                           command=self.app.reconnect_now)
        self.reconnect_button.pack(side="right", padx=8, pady=4)
        self.offline_banner.bind("<Configure>", lambda e: offline.configure(
            wraplength=max(200, e.width - self.reconnect_button.winfo_reqwidth() - 48)))

    def _create_rooms(self, parent: tk.Misc) -> ttk.Frame:
        rooms = ttk.Frame(parent, style="Sidebar.TFrame",
                          padding=(self.px(8), self.px(12), self.px(4), self.px(10)))
        rooms.rowconfigure(1, weight=1)
        rooms.columnconfigure(0, weight=1)
        ttk.Label(rooms, textvariable=self.rooms_title, style="Sidebar.TLabel").grid(
            row=0, column=0, sticky="w", padx=4, pady=(0, 6))
        self.rooms = ttk.Treeview(rooms, style="Sidebar.Treeview", columns=("count",),
                                  show="tree", selectmode="browse", takefocus=True)
        width = self.fonts.ui.measure("#a-room-name") + 8
        self.rooms.column("#0", width=width, minwidth=self.fonts.ui.measure("#ab"), stretch=True)
        self.rooms.column("count", width=self.fonts.ui.measure("0000"), anchor="e", stretch=False)
        self.rooms.tag_configure("current", font=self.fonts.ui_bold, background=CURRENT_BG)
        self.rooms.tag_configure("stale", foreground=STALE_FG)
        self.rooms.grid(row=1, column=0, sticky="nsew")
        self.rooms_scroll = ttk.Scrollbar(rooms, command=self.rooms.yview,
                                          style="QuietSide.Vertical.TScrollbar")
        self.rooms.configure(yscrollcommand=lambda a, b: self._autohide(self.rooms_scroll, a, b))
        self.rooms_scroll.grid(row=1, column=1, sticky="ns")
        self.rooms.bind("<ButtonRelease-1>", self._room_clicked)
        self.rooms.bind("<Return>", lambda _e: self._join_focused_room())
        self.rooms.bind("<Motion>", self._room_hover)
        self.rooms.bind("<Leave>", lambda _e: self.tooltip.hide())
        new_room = ttk.Frame(rooms, style="Sidebar.TFrame")
        new_room.grid(row=2, column=0, columnspan=2, sticky="we", pady=(10, 0))
        ttk.Label(new_room, text="NEW ROOM", style="Sidebar.TLabel").grid(
            row=0, column=0, columnspan=2, sticky="w", padx=4, pady=(0, 4))
        self.new_room = ttk.Entry(new_room, width=8)
        self.new_room.grid(row=1, column=0, sticky="we")
        self.new_room.bind("<Return>", lambda _e: self._create_room())
        self.new_room_button = ttk.Button(new_room, text="Create", style="Small.TButton",
                                          command=self._create_room)
        self.new_room_button.grid(row=1, column=1, padx=(4, 0))
        self.room_hint_label = ttk.Label(new_room, textvariable=self.room_hint,
                                         style="Hint.TLabel", wraplength=width)
        self.room_hint_label.grid(row=2, column=0, columnspan=2, sticky="w")
        new_room.columnconfigure(0, weight=1)
        new_room.bind("<Configure>", lambda e: self.room_hint_label.configure(
            wraplength=max(60, e.width)))
        return rooms

    def _create_conversation(self, parent: tk.Misc) -> ttk.Frame:
        middle = ttk.Frame(parent, style="Main.TFrame")
        middle.rowconfigure(2, weight=1)
        middle.columnconfigure(0, weight=1)
        header = ttk.Frame(middle, style="Main.TFrame",
                           padding=(self.px(12), self.px(8), self.px(8), self.px(6)))
        header.grid(row=0, column=0, columnspan=2, sticky="we")
        header.columnconfigure(2, weight=1)
        self.rooms_toggle = ttk.Button(header, text="Rooms", style="Small.TButton",
                                       takefocus=False,
                                       command=lambda: self.toggle_pane("rooms"))
        self.rooms_toggle.grid(row=0, column=0, padx=(0, 8))
        ttk.Label(header, textvariable=self.room_title, style="Room.TLabel").grid(
            row=0, column=1, sticky="w")
        ttk.Label(header, textvariable=self.room_sub, style="Sub.TLabel").grid(
            row=0, column=2, sticky="w", padx=(10, 0), pady=(6, 0))
        self.people_toggle = ttk.Button(header, text="People", style="Small.TButton",
                                        takefocus=False,
                                        command=lambda: self.toggle_pane("people"))
        self.people_toggle.grid(row=0, column=3, padx=(8, 0))
        ttk.Separator(middle).grid(row=0, column=0, columnspan=2, sticky="swe")
        # Ctrl+F: a search bar over the conversation, hidden until asked for.
        self.search_bar = ttk.Frame(middle, style="Sidebar.TFrame", padding=(8, 4))
        ttk.Label(self.search_bar, text="Find", style="Hint.TLabel").pack(side="left")
        self.search_entry = ttk.Entry(self.search_bar, textvariable=self.search_var, width=20)
        self.search_entry.pack(side="left", padx=6, fill="x", expand=True)
        ttk.Label(self.search_bar, textvariable=self.search_count,
                  style="Hint.TLabel").pack(side="left", padx=(0, 6))
        ttk.Button(self.search_bar, text="Close", style="Small.TButton",
                   command=self.close_search).pack(side="right")
        self.search_var.trace_add("write", lambda *_a: self.run_search())
        self.search_entry.bind("<Return>", lambda _e: self.next_match(1))
        self.search_entry.bind("<Shift-Return>", lambda _e: self.next_match(-1))
        self.search_entry.bind("<Escape>", lambda _e: self.close_search())

        self.text = tk.Text(middle, wrap="word", font=self.fonts.text, background=BG,
                            foreground=INK, relief="flat", borderwidth=0, highlightthickness=0,
                            padx=self.px(14), pady=self.px(8), cursor="arrow", state="disabled",
                            spacing1=2, spacing3=2, insertwidth=0, takefocus=False,
                            selectbackground=SELECTED_BG, selectforeground=INK,
                            inactiveselectbackground=SELECTED_BG)
        self.scroll = ttk.Scrollbar(middle, command=self._scrollbar_moved,
                                    style="Quiet.Vertical.TScrollbar")
        self.text.configure(yscrollcommand=self._scrolled)
        self.text.grid(row=2, column=0, sticky="nsew")
        self.scroll.grid(row=2, column=1, sticky="ns")
        self.text.bind("<Key>", self._typed_into_conversation)
        for wheel in ("<Button-4>", "<Button-5>", "<MouseWheel>", "<Shift-MouseWheel>"):
            self.text.bind(wheel, lambda _e: self.after_idle(self._user_scrolled), add=True)
        self.text.bind("<Configure>", lambda _e: self._keep_following())
        self.text.bind("<Button-3>", self._conversation_menu)
        if self.app.windowing == "aqua":
            self.text.bind("<Button-2>", self._conversation_menu)
            self.text.bind("<Control-Button-1>", self._conversation_menu)
        self.text.bind("<Motion>", self._conversation_hover)
        self.text.bind("<Leave>", lambda _e: self.tooltip.hide())
        self._configure_tags()
        self.new_button = tk.Button(middle, text="", command=self.jump_to_end, relief="flat",
                                    background=ACCENT, foreground="#ffffff",
                                    activebackground=ACCENT_ACTIVE, activeforeground="#ffffff",
                                    font=self.fonts.small_bold, borderwidth=0, cursor="hand2",
                                    padx=self.px(12), pady=self.px(4), takefocus=False)
        return middle

    def _create_people(self, parent: tk.Misc) -> ttk.Frame:
        people = ttk.Frame(parent, style="Sidebar.TFrame",
                           padding=(self.px(4), self.px(12), self.px(6), self.px(10)))
        people.rowconfigure(1, weight=1)
        people.columnconfigure(0, weight=1)
        ttk.Label(people, textvariable=self.people_title, style="Sidebar.TLabel").grid(
            row=0, column=0, sticky="w", padx=4, pady=(0, 6))
        self.members = tk.Text(people, width=20, wrap="none", font=self.fonts.ui,
                               background=SIDEBAR, foreground=INK, relief="flat", borderwidth=0,
                               highlightthickness=0, cursor="arrow", state="disabled",
                               spacing1=5, spacing3=5, padx=4, insertwidth=0, takefocus=False,
                               selectbackground=SIDEBAR, selectforeground=INK)
        self.members.tag_configure("me", font=self.fonts.ui_bold)
        self.members.tag_configure("status", foreground=MUTED, font=self.fonts.small)
        self.members.tag_configure("picked", background=PICKED_BG)
        self.members.grid(row=1, column=0, sticky="nsew")
        self.members_scroll = ttk.Scrollbar(people, command=self.members.yview,
                                            style="QuietSide.Vertical.TScrollbar")
        self.members.configure(
            yscrollcommand=lambda a, b: self._autohide(self.members_scroll, a, b))
        self.members_scroll.grid(row=1, column=1, sticky="ns")
        self.members.bind("<Double-Button-1>", self._member_double_clicked)
        self.members.bind("<ButtonRelease-1>", self._member_clicked)
        self.members.bind("<Button-3>", self._member_menu)
        self.members.bind("<Motion>", self._member_hover)
        self.members.bind("<Leave>", lambda _e: self.tooltip.hide())
        self.member_names: list[str] = []
        self.people_hint = ttk.Label(people, text="Double-click a name to send an encrypted "
                                     "private message.", style="Hint.TLabel", justify="left",
                                     wraplength=self.px(150))
        self.people_hint.grid(row=2, column=0, columnspan=2, sticky="we", padx=4, pady=(8, 0))
        people.bind("<Configure>", lambda e: self.people_hint.configure(
            wraplength=max(60, e.width - self.px(28))))
        return people

    def _create_input(self) -> None:
        bottom = ttk.Frame(self, style="Sidebar.TFrame",
                           padding=(self.px(8), self.px(6), self.px(8), self.px(4)))
        bottom.grid(row=3, column=0, sticky="we")
        bottom.columnconfigure(1, weight=1)
        # Text that could not be sent: kept, said so, and one click from being sent again.
        self.unsent_bar = tk.Frame(bottom, background=UNSENT_BG)
        tk.Label(self.unsent_bar, textvariable=self.unsent_text, background=UNSENT_BG,
                 foreground=UNSENT_FG, font=self.fonts.small, anchor="w", justify="left",
                 padx=8, pady=3).pack(side="left", fill="x", expand=True)
        self.discard_button = ttk.Button(self.unsent_bar, text="Discard", style="Small.TButton",
                                         command=self.app.discard_unsent)
        self.discard_button.pack(side="right", padx=(4, 6), pady=2)
        self.resend_button = ttk.Button(self.unsent_bar, text="Resend", style="Small.TButton",
                                        command=self.app.resend)
        self.resend_button.pack(side="right", pady=2)
        selector = ttk.Frame(bottom, style="Sidebar.TFrame")
        selector.grid(row=1, column=0, padx=(0, 8), sticky="s")
        self.status_dot = ttk.Label(selector, image=self.dots.get("online") or "",
                                    style="Hint.TLabel")
        self.status_dot.pack(side="left", padx=(2, 6))
        self.status_box = ttk.Combobox(selector, textvariable=self.status_var, state="readonly",
                                       width=12, values=("Online", "Away", "Do not disturb"))
        self.status_box.pack(side="left")
        self.status_box.bind("<<ComboboxSelected>>", self._status_chosen)
        # A Text, not an Entry: Shift+Enter starts a new line and pasted text keeps its lines.
        self.input = tk.Text(bottom, height=1, wrap="word", font=self.fonts.text,
                             background=FIELD_BG, foreground=INK, insertbackground=INK,
                             relief="flat", borderwidth=0, highlightthickness=self.px(1),
                             highlightbackground=BORDER, highlightcolor=ACCENT,
                             padx=self.px(6), pady=self.px(4), undo=True, maxundo=200,
                             selectbackground=ACCENT, selectforeground="#ffffff")
        self.input.grid(row=1, column=1, sticky="we")
        self.send_button = ttk.Button(bottom, text="Send", style="Accent.TButton",
                                      command=self.app.submit_input)
        self.send_button.grid(row=1, column=2, padx=(8, 0), sticky="s")
        ttk.Label(bottom, textvariable=self.hint, style="Hint.TLabel").grid(
            row=2, column=1, sticky="w", pady=(3, 0))
        bindings: tuple[tuple[str, Callable[[], object]], ...] = (
            ("<Return>", self.app.submit_input), ("<KP_Enter>", self.app.submit_input),
            ("<Control-Return>", self.app.submit_input),
            ("<Shift-Return>", self._new_line), ("<Shift-KP_Enter>", self._new_line),
            ("<Tab>", self.app.complete), ("<Escape>", self.app.clear_input),
            ("<Prior>", lambda: self._scroll_pages(-1)), ("<Next>", lambda: self._scroll_pages(1)))
        for key, handler in bindings:
            self.input.bind(key, lambda _e, h=handler: (h(), "break")[1])
        self.input.bind("<Up>", lambda _e: self._history_key(older=True))
        self.input.bind("<Down>", lambda _e: self._history_key(older=False))
        self.input.bind("<<Modified>>", self._input_changed)
        self.input.bind("<Configure>", lambda _e: self._fit_input())
        copy_keys = ["<Control-c>"] + (["<Command-c>"] if self.app.windowing == "aqua" else [])
        for key in copy_keys:
            self.input.bind(key, self._copy_from_input)

    def _configure_tags(self) -> None:
        t, f = self.text, self.fonts
        indent = f.small.measure("00:00  ") + 2
        # Tags created later win: line kinds first, then spans, then (on demand) colours.
        t.tag_configure("message", lmargin2=indent)
        t.tag_configure("own", background=OWN_BG, lmargin2=indent, lmargincolor=OWN_BG)
        t.tag_configure("mention", background=MENTION_BG, lmargin2=indent,
                        lmargincolor=MENTION_BG)
        t.tag_configure("history", foreground=HISTORY_FG, lmargin2=indent)
        t.tag_configure("system", foreground=MUTED, font=f.small_italic, lmargin2=indent)
        t.tag_configure("notice", foreground=NOTICE_FG, lmargin2=indent)
        t.tag_configure("error", foreground=ERROR_FG, lmargin2=indent)
        t.tag_configure("private", background=PRIVATE_BG, lmargin2=indent,
                        lmargincolor=PRIVATE_BG, spacing1=4, spacing3=4)
        t.tag_configure("warning", background=WARNING_BG, foreground="#ffffff", font=f.text_bold,
                        lmargin1=8, lmargin2=8, rmargin=8, lmargincolor=WARNING_BG,
                        spacing1=3, spacing3=3)
        t.tag_configure("divider", foreground=TIME_FG, font=f.small, justify="center",
                        spacing1=8, spacing3=6)
        t.tag_configure("time", foreground=TIME_FG, font=f.small)
        t.tag_configure("time-light", foreground="#fecaca", font=f.small)
        t.tag_configure("mono", font=f.mono)
        t.tag_configure("name", font=f.text_bold)
        t.tag_configure("private-label", foreground=PRIVATE_FG, font=f.text_bold)
        t.tag_configure("body")
        t.tag_configure("link", foreground=LINK_FG, underline=True)
        t.tag_bind("link", "<Enter>", lambda _e: t.configure(cursor="hand2"))
        t.tag_bind("link", "<Leave>", lambda _e: t.configure(cursor="arrow"))
        t.tag_bind("link", "<ButtonRelease-1>", self._link_clicked)
        t.tag_configure("found", background=FOUND_BG)
        t.tag_configure("found-now", background=FOUND_NOW_BG, foreground="#ffffff")
        t.tag_raise("sel")

    # -- scrolling ------------------------------------------------------------------------

    def _autohide(self, bar: ttk.Scrollbar, first: str, last: str) -> None:
        """A scrollbar's thumb shows whenever there is something to scroll (its width
        stays reserved, so showing it cannot re-wrap the text)."""
        needed = float(first) > 0.0 or float(last) < 1.0
        if bar is not self.scroll:
            bar.configure(style="SlimSide.Vertical.TScrollbar" if needed
                          else "QuietSide.Vertical.TScrollbar")
        else:
            bar.configure(style="Slim.Vertical.TScrollbar" if needed
                          else "Quiet.Vertical.TScrollbar")
        bar.set(first, last)

    def _scrolled(self, first: str, last: str) -> None:
        self._autohide(self.scroll, first, last)
        if float(last) >= 0.999:
            self.following = True
            self._show_new_button(0)

    def _scrollbar_moved(self, *args: str) -> None:
        self.text.yview(*args)
        self._user_scrolled()

    def _scroll_pages(self, pages: int) -> None:
        self.text.yview_scroll(pages, "pages")
        self._user_scrolled()

    def _user_scrolled(self) -> None:
        """The person moved the view: follow new lines only if they are at the end now."""
        self.following = chatview.should_autoscroll(self.text.yview()[1])
        if self.following:
            self._show_new_button(0)

    def _keep_following(self) -> None:
        """After a resize (window, banner, pane, input box growing) stay at the end if the
        view was following."""
        if self.following:
            self.text.see("end")

    def jump_to_end(self) -> None:
        self.text.see("end")
        self.following = True
        self._show_new_button(0)
        self.input.focus_set()

    def _show_new_button(self, count: int) -> None:
        self.new_count = count
        if count <= 0:
            self.new_button.place_forget()
            return
        self.new_button.configure(
            text=f"↓  {count} new message{'s' if count != 1 else ''}")
        self.new_button.place(in_=self.text, relx=0.5, rely=1.0, y=-self.px(10), anchor="s")
        self.new_button.lift()

    # -- drawing --------------------------------------------------------------------------

    def show_lines(self, lines: list[Line], *, replace: bool = False) -> None:
        """Append lines (or replace everything) and follow the end unless scrolled up;
        lines that arrive below the view are counted on the "new messages" button."""
        follow = replace or self.following
        self.text.configure(state="normal")
        if replace:
            self.text.delete("1.0", "end")
            self._line_tags.clear()
            self._links.clear()
        for line in lines:
            self._insert_line(line)
        excess = int(self.text.index("end-1c").split(".")[0]) - chatview.TRANSCRIPT_LIMIT
        if excess > 200:
            self.text.delete("1.0", f"{excess + 1}.0")
            while len(self._line_tags) > chatview.TRANSCRIPT_LIMIT:
                tag, _line = self._line_tags.popitem(last=False)
                self.text.tag_delete(tag)
        self.text.configure(state="disabled")
        if self.search_bar.winfo_ismapped() and self.search_var.get():
            self.run_search(keep_place=True)
        if follow:
            self.following = True
            self.text.see("end")
            self._show_new_button(0)
        elif not replace:
            worth = sum(1 for line in lines if line.kind in
                        ("message", "own", "mention", "private", "warning", "error"))
            if worth:
                self._show_new_button(self.new_count + worth)

    def _insert_line(self, line: Line) -> None:
        """Insert one line; its kind's tag covers its newline too, so a background fills
        the whole width. A tag per line finds the Line again (time tooltip, menu)."""
        t = self.text
        self._line_number += 1
        line_tag = f"L{self._line_number}"
        self._line_tags[line_tag] = line
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
                    t.tag_configure(tag, foreground=on_theme(tag[2:]))
                    self._colour_tags.add(tag)
            if "body" in span.tags:
                self._insert_with_links(span)
            else:
                t.insert("end", span.text, span.tags)
        t.insert("end", "\n")
        t.tag_add(line.kind, start, "end-1c")
        t.tag_add(line_tag, start, "end-1c")

    def _insert_with_links(self, span: chatview.Span) -> None:
        t, position = self.text, 0
        for begin, end, url in chatview.find_links(span.text):
            t.insert("end", span.text[position:begin], span.tags)
            link_tag = f"url{len(self._links) + 1}"
            self._links[link_tag] = url
            t.insert("end", span.text[begin:end], (*span.tags, "link", link_tag))
            position = end
        t.insert("end", span.text[position:], span.tags)

    def line_at(self, index: str) -> Line | None:
        for tag in self.text.tag_names(index):
            if tag.startswith("L") and tag in self._line_tags:
                return self._line_tags[tag]
        return None

    def link_at(self, index: str) -> str:
        for tag in self.text.tag_names(index):
            if tag.startswith("url") and tag in self._links:
                return self._links[tag]
        return ""

    def _link_clicked(self, event: tk.Event) -> None:
        if self.text.tag_ranges("sel"):  # the person was selecting text, not clicking
            return
        url = self.link_at(f"@{event.x},{event.y}")
        if url:
            self.app.open_link(url)

    def _conversation_hover(self, event: tk.Event) -> None:
        index = f"@{event.x},{event.y}"
        tags = self.text.tag_names(index)
        if "time" in tags:
            line = self.line_at(index)
            when = chatview.full_time(line.stamp) if line and line.stamp else ""
            if when:
                self.tooltip.show_later(when, event.x_root, event.y_root)
                return
        elif "link" in tags:
            self.tooltip.show_later(self.link_at(index), event.x_root, event.y_root)
            return
        self.tooltip.hide()

    def show_rooms(self, rows: list[tuple[str, int, bool]], *, stale: bool = False) -> None:
        """The room list; while offline its counts are greyed and the header says they are
        not up to date."""
        tree = self.rooms
        self.rooms_stale = stale
        self.rooms_title.set("ROOMS · offline, not up to date" if stale else "ROOMS")
        wanted = [name for name, _count, _current in rows]
        for item in tree.get_children():
            if item not in wanted:
                tree.delete(item)
        for index, (name, count, current) in enumerate(rows):
            values = (("" if stale else str(count)) if count else "",)
            tags = (("current",) if current else ()) + (("stale",) if stale else ())
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
        """One line per person: a status dot, the name in its colour, the status in words.
        The list keeps its scroll position and the picked person across updates."""
        t = self.members
        top = t.yview()[0]
        top_line = int(t.index("@0,0").split(".")[0])
        top_name = (self.member_names[top_line - 1]
                    if top > 0 and 0 < top_line <= len(self.member_names) else "")
        t.configure(state="normal")
        t.delete("1.0", "end")
        self.member_names = []
        for number, (name, status, text) in enumerate(rows):
            if number:
                t.insert("end", "\n")
            tag = chatview.colour_tag(colour(name))
            if tag not in self._member_tags:
                t.tag_configure(tag, foreground=on_theme(colour(name)))
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
        self._mark_picked()
        if top_name in self.member_names:  # the same person stays at the top of the view
            t.yview(f"{self.member_names.index(top_name) + 1}.0")
        else:
            t.yview_moveto(top)
        self.people_title.set(f"PEOPLE — {len(rows)}")

    def _mark_picked(self) -> None:
        self.members.tag_remove("picked", "1.0", "end")
        if self.picked_member in self.member_names:
            number = self.member_names.index(self.picked_member) + 1
            self.members.tag_add("picked", f"{number}.0", f"{number}.0 lineend +1c")

    def member_at(self, y: int) -> str | None:
        line = int(self.members.index(f"@0,{y}").split(".")[0])
        if 0 < line <= len(self.member_names):
            box = self.members.dlineinfo(f"{line}.0")
            if box and box[1] <= y < box[1] + box[3]:
                return self.member_names[line - 1]
        return None

    def _member_hover(self, event: tk.Event) -> None:
        name = self.member_at(event.y)
        text = self.app.model.member_tooltip(name) if name else ""
        if text:
            self.tooltip.show_later(text, event.x_root, event.y_root)
        else:
            self.tooltip.hide()

    def _room_hover(self, event: tk.Event) -> None:
        item = self.rooms.identify_row(event.y)
        if item:
            count = self.rooms.set(item, "count")
            more = " (offline: count not up to date)" if self.rooms_stale else (
                f" · {count} here" if count else "")
            self.tooltip.show_later(f"{item}{more}", event.x_root, event.y_root)
        else:
            self.tooltip.hide()

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
        self.warning_banner.grid(row=0, column=0, sticky="we")

    def show_connection(self, text: str) -> None:
        if not text:
            self.offline_banner.grid_remove()
            return
        self.offline_text.set(text)
        self.offline_banner.grid(row=1, column=0, sticky="we")

    def show_unsent(self, line: str, why: str) -> None:
        """Say that `line` was not sent (it is back in the input box, or kept here)."""
        self.unsent_line = line
        if not line:
            self.unsent_bar.grid_remove()
            return
        preview = " ".join(line.split())
        preview = preview if len(preview) <= 60 else preview[:59] + "…"
        self.unsent_text.set(f"⚠ {why}  “{preview}”")
        self.unsent_bar.grid(row=0, column=0, columnspan=3, sticky="we", pady=(0, 6))

    # -- panes ----------------------------------------------------------------------------

    def toggle_pane(self, name: str) -> None:
        show = not self.panes_shown[name]
        self.panes_wanted[name] = show
        self.panes_forced[name] = show  # opened by hand: stays even on a narrow window
        self._layout_panes()
        self.input.focus_set()

    def _resized(self, event: tk.Event) -> None:
        if event.widget is self:
            self._layout_panes()

    def _layout_panes(self) -> None:
        """Side panes fold away on a narrow window (people first, then rooms), unless the
        person opened them by hand; the toggles in the header bring them back."""
        width = self.winfo_width()
        fits = {"people": width >= self.px(700), "rooms": width >= self.px(560)}
        for name, pane, index in (("rooms", self.rooms_pane, 0),
                                  ("people", self.people_pane, None)):
            show = self.panes_wanted[name] and (fits[name] or self._opened_by_hand(name))
            if show == self.panes_shown[name]:
                continue
            if show:
                if index == 0:
                    self.panes.insert(0, pane, weight=1)
                else:
                    self.panes.add(pane, weight=1)
            else:
                self.panes.forget(pane)
            self.panes_shown[name] = show
        self.after_idle(self._keep_following)

    def _opened_by_hand(self, name: str) -> bool:
        return self.panes_forced[name]

    # -- search ---------------------------------------------------------------------------

    def open_search(self) -> None:
        self.search_bar.grid(row=1, column=0, columnspan=2, sticky="we")
        self.search_entry.focus_set()
        self.search_entry.selection_range(0, "end")
        self.run_search()

    def close_search(self) -> None:
        self.search_bar.grid_remove()
        self.text.tag_remove("found", "1.0", "end")
        self.text.tag_remove("found-now", "1.0", "end")
        self.search_matches, self.search_index = [], -1
        self.search_count.set("")
        self.input.focus_set()

    def run_search(self, keep_place: bool = False) -> None:
        """Mark every match of the search text (case-insensitive) and show the last one."""
        t, query = self.text, self.search_var.get()
        t.tag_remove("found", "1.0", "end")
        t.tag_remove("found-now", "1.0", "end")
        self.search_matches = []
        if not query:
            self.search_count.set("")
            return
        start = "1.0"
        count = tk.IntVar(self)
        while len(self.search_matches) < 1000:
            where = t.search(query, start, "end", nocase=True, count=count)
            if not where:
                break
            end = f"{where}+{count.get()}c"
            t.tag_add("found", where, end)
            self.search_matches.append(where)
            start = end
        if not keep_place or not (0 <= self.search_index < len(self.search_matches)):
            self.search_index = len(self.search_matches) - 1
        self._show_match()

    def next_match(self, step: int) -> None:
        if self.search_matches:
            self.search_index = (self.search_index - step) % len(self.search_matches)
            self._show_match()

    def _show_match(self) -> None:
        t = self.text
        t.tag_remove("found-now", "1.0", "end")
        total = len(self.search_matches)
        if not total:
            self.search_count.set("no matches")
            return
        where = self.search_matches[self.search_index]
        t.tag_add("found-now", where, f"{where}+{len(self.search_var.get())}c")
        t.see(where)
        self._user_scrolled()
        self.search_count.set(f"{total - self.search_index} of {total}")

    # -- user actions ---------------------------------------------------------------------

    def get_input(self) -> str:
        return self.input.get("1.0", "end-1c")

    def set_input(self, text: str) -> None:
        self.input.delete("1.0", "end")
        self.input.insert("1.0", text)
        self.input.mark_set("insert", "end-1c")
        self.input.see("insert")
        self._fit_input()

    def _new_line(self) -> None:
        self.input.insert("insert", "\n")
        self.input.see("insert")
        self._fit_input()

    def _history_key(self, *, older: bool) -> str | None:
        """Up on the first line / Down on the last recalls history; otherwise the cursor
        moves between the lines of a multi-line message."""
        line = int(self.input.index("insert").split(".")[0])
        last = int(self.input.index("end-1c").split(".")[0])
        if older and line == 1:
            self.app.history_older()
            return "break"
        if not older and line == last:
            self.app.history_newer()
            return "break"
        return None

    def _input_changed(self, _event: tk.Event) -> None:
        if self.input.edit_modified():
            self.input.edit_modified(False)
            self._fit_input()

    def _fit_input(self) -> None:
        """Grow the input box with its text, up to INPUT_MAX_LINES lines, then scroll."""
        try:
            shown = self.input.count("1.0", "end", "displaylines")
        except tk.TclError:
            return
        lines = max(1, min(INPUT_MAX_LINES, int(shown[0]) if shown else 1))
        if int(self.input.cget("height")) != lines:
            self.input.configure(height=lines)
            self.after_idle(self._keep_following)

    def _copy_from_input(self, _event: tk.Event) -> str | None:
        """Ctrl+C (Cmd+C) copies the input's selection, or else the conversation's (which
        never takes the keyboard focus)."""
        if self.input.tag_ranges("sel"):
            return None
        if self.text.tag_ranges("sel"):
            self.app.copy(self.text.get("sel.first", "sel.last"))
            return "break"
        return None

    def _room_clicked(self, event: tk.Event) -> None:
        item = self.rooms.identify_row(event.y)
        if item:
            self.app.join_room(item)
        self.input.focus_set()

    def _join_focused_room(self) -> None:
        item = self.rooms.focus()
        if item:
            self.app.join_room(item)
        self.input.focus_set()

    def _create_room(self) -> None:
        try:
            room = chatview.check_room_name(self.new_room.get())
        except ValueError as exc:
            self.room_hint.set(str(exc))
            self.input.focus_set()
            return
        self.room_hint.set("")
        self.new_room.delete(0, "end")
        self.app.join_room(room)
        self.input.focus_set()

    def _member_clicked(self, event: tk.Event) -> None:
        name = self.member_at(event.y)
        if name:
            self.picked_member = name
            self._mark_picked()
        self.input.focus_set()

    def _member_double_clicked(self, event: tk.Event) -> str:
        name = self.member_at(event.y)
        if name and name.casefold() != self.app.model.me.casefold():
            self.message_person(name)
        return "break"

    def message_person(self, name: str) -> None:
        self.set_input(f"/privatemsg {name} ")
        self.input.focus_set()

    def _status_chosen(self, _event: tk.Event) -> None:
        self.status_box.selection_clear()
        self.app.set_status(chatview.status_word(self.status_var.get()))
        self.input.focus_set()

    def _typed_into_conversation(self, event: tk.Event) -> str | None:
        """Typing while the conversation has focus goes to the input box."""
        if event.char and event.char.isprintable() and not (event.state & 0x4):
            self.input.focus_set()
            self.input.insert("insert", event.char)
            return "break"
        return None

    # -- context menus --------------------------------------------------------------------

    def _popup(self, event: tk.Event, items: list[tuple[str, Callable[[], object]]]) -> None:
        menu = tk.Menu(self, tearoff=False, background=FIELD_BG, foreground=INK,
                       activebackground=SELECTED_BG, activeforeground=INK)
        for label, action in items:
            if label == "-":
                menu.add_separator()
            else:
                menu.add_command(label=label, command=action)
        self.app.open_menu = menu
        try:
            menu.tk_popup(event.x_root, event.y_root)
        finally:
            menu.grab_release()

    def _conversation_menu(self, event: tk.Event) -> str:
        index = f"@{event.x},{event.y}"
        line, url = self.line_at(index), self.link_at(index)
        items: list[tuple[str, Callable[[], object]]] = []
        if self.text.tag_ranges("sel"):
            selected = self.text.get("sel.first", "sel.last")
            items.append(("Copy", lambda: self.app.copy(selected)))
        if line is not None and line.body:
            items.append(("Copy message", lambda: self.app.copy(line.body)))
        if url:
            items += [("Open link", lambda: self.app.open_link(url)),
                      ("Copy link", lambda: self.app.copy(url))]
        if line is not None and line.sender:
            items += self._person_items(line.sender)
        items += [("-", lambda: None), ("Find…", self.open_search)]
        self._popup(event, items)
        return "break"

    def _member_menu(self, event: tk.Event) -> str:
        name = self.member_at(event.y)
        if name:
            self.picked_member = name
            self._mark_picked()
            self._popup(event, [("Copy name", lambda: self.app.copy(name)),
                                *self._person_items(name)])
        return "break"

    def _person_items(self, name: str) -> list[tuple[str, Callable[[], object]]]:
        if name.casefold() == self.app.model.me.casefold():
            return [("My fingerprint", lambda: self.app.run_command("/fingerprint"))]
        return [(f"Message {name}", lambda: self.message_person(name)),
                (f"Fingerprint of {name}", lambda: self.app.run_command(f"/fingerprint {name}"))]


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
        if changes.rooms or changes.redraw or changes.connection:
            main.show_rooms(model.room_rows(), stale=model.connection != CONNECTED)
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
        if chatview.logged_in_elsewhere(event.reason):
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
        else:
            self.model.expect_listing(action.command)
            self.model.sent(line)
            self.link.execute(action.line)
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
        self.root.configure(background=BG)
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
        colours = {"background": SIDEBAR, "foreground": INK, "activebackground": SELECTED_BG,
                   "activeforeground": INK, "relief": "flat", "borderwidth": 0}
        bar = tk.Menu(root, tearoff=False, **colours)
        root.option_add("*Menu.background", SIDEBAR)
        root.option_add("*Menu.foreground", INK)
        root.option_add("*Menu.activeBackground", SELECTED_BG)
        root.option_add("*Menu.activeForeground", INK)
        root.option_add("*Menu.selectColor", ACCENT)
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
    def _text_box(widget: tk.Misc, box: tuple[int, int, int, int]) -> list[int]:
        return [widget.winfo_rootx() + box[0], widget.winfo_rooty() + box[1], box[2], box[3]]

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
            # laid out at the size it asked for (tests click only then)
            "settled": bool(root.winfo_ismapped() and app.wanted_size is not None and
                            (root.winfo_width(), root.winfo_height()) == app.wanted_size),
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
        shot["top_line"] = main.text.get("@0,0 linestart", "@0,0 lineend")
        shot["link_boxes"] = {}
        for tag, url in main._links.items():
            ranges = main.text.tag_ranges(tag)
            box = main.text.bbox(ranges[0]) if ranges else None
            if box:
                shot["link_boxes"][url] = self._text_box(main.text, box)
        last = main.text.bbox("end-2c linestart")
        shot["last_line_box"] = self._text_box(main.text, last) if last else []
        astral = next((ch for ch in shot["conversation"] if ord(ch) > 0xFFFF), "")
        where = main.text.search(astral, "1.0", "end") if astral else ""
        box = main.text.bbox(where) if where else None
        shot["emoji_box"] = self._text_box(main.text, box) if box else []
        shot["menu_open"] = bool(app.open_menu is not None and app.open_menu.winfo_exists()
                                 and app.open_menu.winfo_ismapped())
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
        shot["input"] = chatview.join_surrogates(main.get_input())
        shot["input_lines"] = int(main.input.cget("height"))
        shot["hint"] = main.hint.get()
        shot["following"] = main.following
        shot["new_messages"] = (main.new_button.cget("text")
                                if main.new_button.winfo_ismapped() else "")
        shot["unsent"] = main.unsent_text.get() if main.unsent_bar.winfo_ismapped() else ""
        shot["unsent_line"] = main.unsent_line
        shot["panes"] = {name: shown for name, shown in main.panes_shown.items()}
        shot["rooms_title"] = main.rooms_title.get()
        shot["rooms_stale"] = main.rooms_stale
        shot["members_view"] = [round(v, 4) for v in main.members.yview()]
        top = int(main.members.index("@0,0").split(".")[0])
        shot["members_top"] = (main.member_names[top - 1]
                               if 0 < top <= len(main.member_names) else "")
        shot["picked"] = main.picked_member
        shot["tooltip"] = main.tooltip.text
        shot["notifications"] = [list(item) for item in app.notifier.sent]
        shot["theme"] = THEME
        shot["search"] = main.search_count.get() if main.search_bar.winfo_ismapped() else None
        shot["copied"] = app.copied
        shot["opened_links"] = list(app.opened_links)
        try:
            focused = root.focus_get()
        except (KeyError, tk.TclError):  # the status list's popdown has no Python widget
            focused = None
        shot["focus"] = ("input" if focused is main.input else
                         "search" if focused is main.search_entry else
                         "new_room" if focused is main.new_room else
                         str(focused) if focused is not None else "")
        shot["size"] = [root.winfo_width(), root.winfo_height()]
        shot["scale"] = round(ui_scale(root), 3)
        shot["input_font_px"] = self.app.fonts.text.metrics("linespace")
        shot["warning_banner"] = main.warning_text.get() if main.warning_banner.winfo_ismapped() else ""
        shot["connection_banner"] = (main.offline_text.get()
                                     if main.offline_banner.winfo_ismapped() else "")
        shot["boxes"] = {"input": self._box(main.input), "send": self._box(main.send_button),
                         "new_messages": self._box(main.new_button),
                         "resend": self._box(main.resend_button),
                         "rooms_toggle": self._box(main.rooms_toggle),
                         "people_toggle": self._box(main.people_toggle),
                         "rooms": self._box(main.rooms), "search": self._box(main.search_entry),
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
