"""The desktop client's looks: the light and dark palettes, fonts in points, the
ttk style, images from Assets/, the screen's scale, and what the system's theme is.

The colour names are module globals that `apply_palette` swaps; other modules read them
as `guitheme.NAME` when they build a widget, so they always get the current theme.
"""
from __future__ import annotations

import os
import subprocess
import tkinter as tk
import tkinter.font as tkfont
from pathlib import Path
from tkinter import ttk

import chatview

ASSETS = Path(__file__).resolve().parent / "Assets"


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
