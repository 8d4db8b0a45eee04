"""The desktop client's search bar (Ctrl+F): every match of the text in the conversation
marked, the current one shown; Enter for the previous match, Shift+Enter the next."""
from __future__ import annotations

import tkinter as tk
from tkinter import ttk
from typing import Callable

MAX_MATCHES = 1000  # marked at most, so a one-letter search in a long transcript stays quick


class SearchBar(ttk.Frame):
    """Searches `text`; `moved()` after it scrolled the conversation, `done()` on close."""

    def __init__(self, master: tk.Misc, text: tk.Text, moved: Callable[[], None],
                 done: Callable[[], None]) -> None:
        super().__init__(master, style="Sidebar.TFrame", padding=(8, 4))
        self.text, self.moved, self.done = text, moved, done
        self.var = tk.StringVar(self)
        self.count = tk.StringVar(self)
        self.matches: list[str] = []
        self.index = -1
        ttk.Label(self, text="Find", style="Hint.TLabel").pack(side="left")
        self.entry = ttk.Entry(self, textvariable=self.var, width=20)
        self.entry.pack(side="left", padx=6, fill="x", expand=True)
        ttk.Label(self, textvariable=self.count, style="Hint.TLabel").pack(side="left",
                                                                          padx=(0, 6))
        ttk.Button(self, text="Close", style="Small.TButton",
                   command=self.close).pack(side="right")
        self.var.trace_add("write", lambda *_a: self.run())
        self.entry.bind("<Return>", lambda _e: self.next_match(1))
        self.entry.bind("<Shift-Return>", lambda _e: self.next_match(-1))
        self.entry.bind("<Escape>", lambda _e: self.close())

    def open(self) -> None:
        self.grid(row=1, column=0, columnspan=2, sticky="we")
        self.entry.focus_set()
        self.entry.selection_range(0, "end")
        self.run()

    def close(self) -> None:
        self.grid_remove()
        self.text.tag_remove("found", "1.0", "end")
        self.text.tag_remove("found-now", "1.0", "end")
        self.matches, self.index = [], -1
        self.count.set("")
        self.done()

    def refresh(self) -> None:
        """The conversation changed: mark the matches again, keeping the current one."""
        if self.winfo_ismapped() and self.var.get():
            self.run(keep_place=True)

    def run(self, keep_place: bool = False) -> None:
        """Mark every match of the search text (case-insensitive) and show the last one."""
        t, query = self.text, self.var.get()
        t.tag_remove("found", "1.0", "end")
        t.tag_remove("found-now", "1.0", "end")
        self.matches = []
        if not query:
            self.count.set("")
            return
        start = "1.0"
        count = tk.IntVar(self)
        while len(self.matches) < MAX_MATCHES:
            where = t.search(query, start, "end", nocase=True, count=count)
            if not where:
                break
            end = f"{where}+{count.get()}c"
            t.tag_add("found", where, end)
            self.matches.append(where)
            start = end
        if not keep_place or not (0 <= self.index < len(self.matches)):
            self.index = len(self.matches) - 1
        self._show_match()

    def next_match(self, step: int) -> None:
        if self.matches:
            self.index = (self.index - step) % len(self.matches)
            self._show_match()

    def _show_match(self) -> None:
        t = self.text
        t.tag_remove("found-now", "1.0", "end")
        total = len(self.matches)
        if not total:
            self.count.set("no matches")
            return
        where = self.matches[self.index]
        t.tag_add("found-now", where, f"{where}+{len(self.var.get())}c")
        t.see(where)
        self.moved()
        self.count.set(f"{total - self.index} of {total}")
