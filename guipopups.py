"""Windows that pop up over the desktop client: the manual and tooltips."""
from __future__ import annotations

import tkinter as tk
import tkinter.font as tkfont
from tkinter import ttk
from typing import Callable

import guitheme
from commands import manual_text
from guitheme import Fonts, ui_scale


class ManualWindow(tk.Toplevel):
    """The /manual text in its own window; Escape or Close shuts it."""

    def __init__(self, master: tk.Misc, fonts: Fonts, on_close: Callable[[], None]) -> None:
        super().__init__(master, background=guitheme.BG)
        self.title("Gapshape manual")
        self._on_close = on_close
        scale = ui_scale(self)
        self.geometry(f"{round(640 * scale)}x{round(480 * scale)}")
        self.text = tk.Text(self, wrap="word", font=fonts.text, background=guitheme.BG,
                            foreground=guitheme.INK,
                            relief="flat", padx=16, pady=12, highlightthickness=0)
        scroll = ttk.Scrollbar(self, command=self.text.yview, style="Slim.Vertical.TScrollbar")
        self.text.configure(yscrollcommand=scroll.set)
        lines = manual_text().splitlines()
        self.text.tag_configure("title", font=fonts.title, spacing3=8)
        self.text.tag_configure("command", font=fonts.text_bold, foreground=guitheme.ACCENT,
                                spacing1=6)
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
        window = self.window = tk.Toplevel(self.master, background=guitheme.TIP_BG)
        window.wm_overrideredirect(True)
        tk.Label(window, text=text, background=guitheme.TIP_BG, foreground=guitheme.TIP_FG,
                 font=self.font,
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
