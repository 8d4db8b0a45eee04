"""The desktop client's sidebar: the rooms the user is in and the private conversations,
each with its unread badge, the one shown highlighted; the other rooms of the server
below them, and the box that creates a room. What it lists comes from
`chatview.ChatModel.sidebar_rows`; it only draws rows and reports clicks.

A ttk.Treeview holds the rows: it scrolls, takes the keyboard (Up/Down, Enter) and
stays fast with hundreds of entries, since only the rows that changed are touched.
"""
from __future__ import annotations

import tkinter as tk
from tkinter import ttk
from typing import TYPE_CHECKING, Callable

import chatsidebar
import chatview
import guitheme
from chatview import SidebarRow

if TYPE_CHECKING:
    from guipopups import Tooltip

#: Headings between the sections (not selectable).
SECTIONS = {"private": "PRIVATE", "other": "OTHER ROOMS"}
_PREFIX = {"room": "r:", "private": "p:", "other": "o:"}


class Sidebar(ttk.Frame):
    """Rooms and contacts with badges. `choose(key, kind)` is called when the person picks
    a row (click or Enter): kind "room"/"private" shows it, "other" joins that room."""

    def __init__(self, master: tk.Misc, fonts: guitheme.Fonts, px: Callable[[float], int],
                 tooltip: Tooltip, choose: Callable[[str, str], None],
                 create_room: Callable[[str], None], autohide: Callable[..., None],
                 done: Callable[[], None], lock: tk.PhotoImage | None = None) -> None:
        super().__init__(master, style="Sidebar.TFrame",
                         padding=(px(8), px(12), px(4), px(10)))
        self.fonts, self.tooltip = fonts, tooltip
        self.choose, self.create_room, self.done = choose, create_room, done
        self.lock = lock  # drawn before a private conversation's name
        self.title = tk.StringVar(self, "ROOMS")
        self.hint = tk.StringVar(self)
        self.stale = False
        self.last_current = ""  # the current row at the last refresh
        self.rows: dict[str, SidebarRow] = {}  # tree item -> what it shows
        self.rowconfigure(1, weight=1)
        self.columnconfigure(0, weight=1)
        ttk.Label(self, textvariable=self.title, style="Sidebar.TLabel").grid(
            row=0, column=0, sticky="w", padx=4, pady=(0, 6))
        self.tree = self._create_tree(autohide)
        self._create_new_room()

    def _create_tree(self, autohide: Callable[..., None]) -> ttk.Treeview:
        fonts = self.fonts
        tree = ttk.Treeview(self, style="Sidebar.Treeview", columns=("badge", "count"),
                            displaycolumns=("badge",), show="tree", selectmode="browse",
                            takefocus=True)
        self.width = fonts.ui.measure("#a-room-name") + 8
        tree.column("#0", width=self.width, minwidth=fonts.ui.measure("#ab"), stretch=True)
        tree.column("badge", width=fonts.ui_bold.measure("@000"), anchor="e", stretch=False)
        tree.tag_configure("current", font=fonts.ui_bold, background=guitheme.CURRENT_BG)
        tree.tag_configure("unread", font=fonts.ui_bold)
        tree.tag_configure("mention", font=fonts.ui_bold, foreground=guitheme.ERROR_FG)
        tree.tag_configure("header", font=fonts.small_bold, foreground=guitheme.MUTED)
        tree.tag_configure("other", foreground=guitheme.MUTED)
        tree.tag_configure("stale", foreground=guitheme.STALE_FG)
        tree.grid(row=1, column=0, sticky="nsew")
        scroll = ttk.Scrollbar(self, command=tree.yview, style="QuietSide.Vertical.TScrollbar")
        tree.configure(yscrollcommand=lambda a, b: autohide(scroll, a, b))
        scroll.grid(row=1, column=1, sticky="ns")
        tree.bind("<ButtonRelease-1>", self._clicked)
        tree.bind("<Return>", lambda _e: self._picked(tree.focus()))
        tree.bind("<KP_Enter>", lambda _e: self._picked(tree.focus()))
        tree.bind("<Motion>", self._hover)
        tree.bind("<Leave>", lambda _e: self.tooltip.hide())
        return tree

    def _create_new_room(self) -> None:
        new_room = ttk.Frame(self, style="Sidebar.TFrame")
        new_room.grid(row=2, column=0, columnspan=2, sticky="we", pady=(10, 0))
        ttk.Label(new_room, text="NEW ROOM", style="Sidebar.TLabel").grid(
            row=0, column=0, columnspan=2, sticky="w", padx=4, pady=(0, 4))
        self.new_room = ttk.Entry(new_room, width=8)
        self.new_room.grid(row=1, column=0, sticky="we")
        self.new_room.bind("<Return>", lambda _e: self._create_room())
        self.new_room_button = ttk.Button(new_room, text="Create", style="Small.TButton",
                                          command=self._create_room)
        self.new_room_button.grid(row=1, column=1, padx=(4, 0))
        hint = ttk.Label(new_room, textvariable=self.hint, style="Hint.TLabel",
                         wraplength=self.width)
        hint.grid(row=2, column=0, columnspan=2, sticky="w")
        new_room.columnconfigure(0, weight=1)
        new_room.bind("<Configure>", lambda e: hint.configure(wraplength=max(60, e.width)))

    # -- drawing --------------------------------------------------------------------------

    def show(self, rows: list[SidebarRow], *, stale: bool = False) -> None:
        """Bring the tree in line with `rows`, touching only what changed, and keep the
        current row in view."""
        tree = self.tree
        top = tree.yview()[0]  # the scroll position, kept unless the current row changed
        self.stale = stale
        self.title.set("ROOMS · offline, not up to date" if stale else "ROOMS")
        wanted: list[tuple[str, str, tuple[str, ...], tuple[str, str], bool]] = []
        section = "room"
        for row in rows:
            if row.kind != section:
                section = row.kind
                wanted.append((f"h:{section}", SECTIONS[section], ("header",), ("", ""), False))
            tags = (("current",) if row.current else ()) + (
                ("mention",) if row.mentions else ("unread",) if row.unread else ()) + (
                ("other",) if row.kind == "other" else ()) + (("stale",) if stale else ())
            people = "" if stale or not row.people else str(row.people)
            wanted.append((_PREFIX[row.kind] + row.key, f"  {row.label}", tags,
                           (row.badge, people), row.kind == "private"))
        self.rows = {_PREFIX[row.kind] + row.key: row for row in rows}
        keep = {item for item, *_rest in wanted}
        for item in tree.get_children():
            if item not in keep:
                tree.delete(item)
        for index, (item, text, tags, values, locked) in enumerate(wanted):
            if tree.exists(item):
                if (tree.item(item, "text"), tuple(tree.item(item, "tags") or ()),
                        tuple(str(v) for v in tree.item(item, "values"))) != (text, tags, values):
                    tree.item(item, text=text, tags=tags, values=values)
                if tree.index(item) != index:
                    tree.move(item, "", index)
            else:
                image = {"image": self.lock} if locked and self.lock is not None else {}
                tree.insert("", index, iid=item, text=text, tags=tags, values=values, **image)
        current = next((item for item, row in self.rows.items() if row.current), "")
        self._place(current, top)

    def _place(self, current: str, top: float) -> None:
        """Keyboard focus and scrolling after a refresh (see chatsidebar.keyboard_place)."""
        tree = self.tree
        focus, show = chatsidebar.keyboard_place(self.last_current, current, tree.focus(),
                                                 set(tree.get_children()))
        self.last_current = current
        if not focus:
            tree.selection_set(())
            return
        if tree.selection() != (focus,):
            tree.selection_set(focus)
        tree.focus(focus)
        if show:
            tree.see(focus)
        else:
            tree.yview_moveto(top)

    # -- the person's actions -------------------------------------------------------------

    def _clicked(self, event: tk.Event) -> None:
        self._picked(self.tree.identify_row(event.y))

    def _picked(self, item: str) -> None:
        row = self.rows.get(item)
        if row is not None:
            self.choose(row.key, row.kind)
        self.done()

    def _create_room(self) -> None:
        try:
            room = chatview.check_room_name(self.new_room.get())
        except ValueError as exc:
            self.hint.set(str(exc))
            self.done()
            return
        self.hint.set("")
        self.new_room.delete(0, "end")
        self.create_room(room)
        self.done()

    def _hover(self, event: tk.Event) -> None:
        row = self.rows.get(self.tree.identify_row(event.y))
        if row is None:
            self.tooltip.hide()
            return
        self.tooltip.show_later(tooltip_text(row, self.stale), event.x_root, event.y_root)


def tooltip_text(row: SidebarRow, stale: bool) -> str:
    """What hovering over a row says: who is there, and what is unread."""
    if row.kind == "private":
        about = f"private conversation with {row.label}"
        if row.status:
            about += f" · {chatview.STATUS_LABELS.get(row.status, row.status)}"
    elif stale:
        about = f"{row.label} (offline: count not up to date)"
    else:
        about = f"{row.label} · {row.people} here" if row.people else row.label
        if row.kind == "other":
            about += " · click to join"
    unread = []
    if row.unread:
        unread.append(f"{row.unread} unread")
    if row.mentions:
        unread.append(f"{row.mentions} mentioning you")
    return about + (f"\n{', '.join(unread)}" if unread else "")
