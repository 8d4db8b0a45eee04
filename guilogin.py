"""The desktop client's login window: server, username, password, Connect."""
from __future__ import annotations

import os
import tkinter as tk
from tkinter import ttk
from typing import TYPE_CHECKING

import chatview
from chatview import Settings
from guitheme import load_image

if TYPE_CHECKING:
    from clientgui import App


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
