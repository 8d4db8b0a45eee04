"""The desktop client's main window: the sidebar (guisidebar.py), the conversation,
people, the input box, the search bar (guisearch.py) and the right-click menus. It draws
what `App` hands it and calls back into `App`.
"""
from __future__ import annotations

import collections
import tkinter as tk
from tkinter import ttk
from typing import TYPE_CHECKING, Callable

import chatview
import guitheme
from chatview import Line
from guipopups import Tooltip
from guisearch import SearchBar
from guisidebar import Sidebar
from guitheme import load_image, on_theme, ui_scale

if TYPE_CHECKING:
    from clientgui import App


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
        self.room_title = tk.StringVar(self)
        self.room_sub = tk.StringVar(self)
        self.people_title = tk.StringVar(self, "PEOPLE")
        self.offline_text = tk.StringVar(self)
        self.warning_text = tk.StringVar(self)
        self.unsent_text = tk.StringVar(self)
        self.unsent_line = ""
        self.new_count = 0
        self.following = True  # the view follows new lines until the person scrolls up
        self.picked_member = ""
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
        self.sidebar = self.rooms_pane = Sidebar(
            self.panes, self.fonts, self.px, self.tooltip, self.app.choose_view,
            self.app.join_room, self._autohide, self.input_focus, self.lock_image)
        self.rooms, self.new_room = self.sidebar.tree, self.sidebar.new_room
        self.middle = self._create_conversation(self.panes)
        self.people_pane = self._create_people(self.panes)
        self.panes.add(self.rooms_pane, weight=1)
        self.panes.add(self.middle, weight=5)
        self.panes.add(self.people_pane, weight=1)
        self._create_input()
        self.bind("<Configure>", self._resized)

    def _create_banners(self) -> None:
        # A key warning (red) and the connection state (amber), hidden when unused.
        self.warning_banner = tk.Frame(self, background=guitheme.WARNING_BG)
        warning = tk.Label(self.warning_banner, textvariable=self.warning_text,
                           background=guitheme.WARNING_BG, foreground="#ffffff",
                           font=self.fonts.ui_bold,
                           justify="left", anchor="w", wraplength=600, padx=12, pady=8)
        warning.pack(side="left", fill="x", expand=True)
        dismiss = ttk.Button(self.warning_banner, text="Dismiss", command=self.app.dismiss_warnings)
        dismiss.pack(side="right", padx=8)
        self.warning_banner.bind("<Configure>", lambda e: warning.configure(
            wraplength=max(200, e.width - dismiss.winfo_reqwidth() - 48)))
        self.offline_banner = tk.Frame(self, background=guitheme.OFFLINE_BG)
        offline = tk.Label(self.offline_banner, textvariable=self.offline_text,
                           background=guitheme.OFFLINE_BG, foreground=guitheme.OFFLINE_FG,
                           font=self.fonts.ui,
                           anchor="w", justify="left", padx=12, pady=6)
        offline.pack(side="left", fill="x", expand=True)
        self.reconnect_button = ttk.Button(self.offline_banner, text="Reconnect now",
                                           command=self.app.reconnect_now)
        self.reconnect_button.pack(side="right", padx=8, pady=4)
        self.offline_banner.bind("<Configure>", lambda e: offline.configure(
            wraplength=max(200, e.width - self.reconnect_button.winfo_reqwidth() - 48)))

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
        self.text = tk.Text(middle, wrap="word", font=self.fonts.text, background=guitheme.BG,
                            foreground=guitheme.INK, relief="flat", borderwidth=0,
                            highlightthickness=0,
                            padx=self.px(14), pady=self.px(8), cursor="arrow", state="disabled",
                            spacing1=2, spacing3=2, insertwidth=0, takefocus=False,
                            selectbackground=guitheme.SELECTED_BG, selectforeground=guitheme.INK,
                            inactiveselectbackground=guitheme.SELECTED_BG)
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
        # Ctrl+F: a search bar over the conversation, hidden until asked for.
        self.search = SearchBar(middle, self.text, lambda: self._user_scrolled(load=False),
                                self.input_focus)
        self.search_bar, self.search_entry = self.search, self.search.entry
        self.new_button = tk.Button(middle, text="", command=self.jump_to_end, relief="flat",
                                    background=guitheme.ACCENT, foreground="#ffffff",
                                    activebackground=guitheme.ACCENT_ACTIVE,
                                    activeforeground="#ffffff",
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
                               background=guitheme.SIDEBAR, foreground=guitheme.INK, relief="flat",
                               borderwidth=0,
                               highlightthickness=0, cursor="arrow", state="disabled",
                               spacing1=5, spacing3=5, padx=4, insertwidth=0, takefocus=False,
                               selectbackground=guitheme.SIDEBAR, selectforeground=guitheme.INK)
        self.members.tag_configure("me", font=self.fonts.ui_bold)
        self.members.tag_configure("status", foreground=guitheme.MUTED, font=self.fonts.small)
        self.members.tag_configure("picked", background=guitheme.PICKED_BG)
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
        self.people_hint = ttk.Label(people, text="Double-click a name for an encrypted "
                                     "private conversation.", style="Hint.TLabel", justify="left",
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
        self.unsent_bar = tk.Frame(bottom, background=guitheme.UNSENT_BG)
        tk.Label(self.unsent_bar, textvariable=self.unsent_text, background=guitheme.UNSENT_BG,
                 foreground=guitheme.UNSENT_FG, font=self.fonts.small, anchor="w", justify="left",
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
                             background=guitheme.FIELD_BG, foreground=guitheme.INK,
                             insertbackground=guitheme.INK,
                             relief="flat", borderwidth=0, highlightthickness=self.px(1),
                             highlightbackground=guitheme.BORDER, highlightcolor=guitheme.ACCENT,
                             padx=self.px(6), pady=self.px(4), undo=True, maxundo=200,
                             selectbackground=guitheme.ACCENT, selectforeground="#ffffff")
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
        self.bind_view_keys(self.input)
        self.bind_view_keys(self.text)
        self.bind_view_keys(self.rooms)
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
        t.tag_configure("own", background=guitheme.OWN_BG, lmargin2=indent,
                        lmargincolor=guitheme.OWN_BG)
        t.tag_configure("mention", background=guitheme.MENTION_BG, lmargin2=indent,
                        lmargincolor=guitheme.MENTION_BG)
        t.tag_configure("history", foreground=guitheme.HISTORY_FG, lmargin2=indent)
        t.tag_configure("system", foreground=guitheme.MUTED, font=f.small_italic, lmargin2=indent)
        t.tag_configure("notice", foreground=guitheme.NOTICE_FG, lmargin2=indent)
        t.tag_configure("error", foreground=guitheme.ERROR_FG, lmargin2=indent)
        t.tag_configure("private", background=guitheme.PRIVATE_BG, lmargin2=indent,
                        lmargincolor=guitheme.PRIVATE_BG, spacing1=4, spacing3=4)
        t.tag_configure("warning", background=guitheme.WARNING_BG, foreground="#ffffff",
                        font=f.text_bold,
                        lmargin1=8, lmargin2=8, rmargin=8, lmargincolor=guitheme.WARNING_BG,
                        spacing1=3, spacing3=3)
        t.tag_configure("divider", foreground=guitheme.TIME_FG, font=f.small, justify="center",
                        spacing1=8, spacing3=6)
        for kind in ("gap", "beginning"):
            t.tag_configure(kind, foreground=guitheme.TIME_FG, font=f.small, justify="center",
                            spacing1=8, spacing3=6)
        t.tag_configure("gap-link", foreground=guitheme.LINK_FG, underline=True)
        t.tag_bind("gap-link", "<Enter>", lambda _e: t.configure(cursor="hand2"))
        t.tag_bind("gap-link", "<Leave>", lambda _e: t.configure(cursor="arrow"))
        t.tag_bind("gap-link", "<ButtonRelease-1>", lambda _e: self.app.load_older())
        t.tag_configure("time", foreground=guitheme.TIME_FG, font=f.small)
        t.tag_configure("time-light", foreground="#fecaca", font=f.small)
        t.tag_configure("mono", font=f.mono)
        t.tag_configure("name", font=f.text_bold)
        t.tag_configure("private-label", foreground=guitheme.PRIVATE_FG, font=f.text_bold)
        t.tag_configure("body")
        t.tag_configure("link", foreground=guitheme.LINK_FG, underline=True)
        t.tag_bind("link", "<Enter>", lambda _e: t.configure(cursor="hand2"))
        t.tag_bind("link", "<Leave>", lambda _e: t.configure(cursor="arrow"))
        t.tag_bind("link", "<ButtonRelease-1>", self._link_clicked)
        t.tag_configure("found", background=guitheme.FOUND_BG)
        t.tag_configure("found-now", background=guitheme.FOUND_NOW_BG, foreground="#ffffff")
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

    def _user_scrolled(self, load: bool = True) -> None:
        """The person moved the view: follow new lines only if they are at the end now;
        at the top, older messages are asked for (the model allows one request at a time)."""
        first, last = self.text.yview()
        self.following = chatview.should_autoscroll(last)
        if self.following:
            self._show_new_button(0)
        if first <= 0.0 and load:
            self.app.load_older()

    def scroll_to_top(self) -> None:
        """Ctrl+Home: the top of the transcript, and older messages below it."""
        self.text.yview_moveto(0.0)
        self._user_scrolled()

    def _reading_place(self) -> tuple[Line, int] | None:
        """The line at the top of the view and how far it is scrolled past (pixels)."""
        line = self.line_at("@0,0")
        box = self.text.dlineinfo("@0,0")
        return (line, box[1]) if line is not None and box else None

    def _restore_place(self, place: tuple[Line, int]) -> None:
        line, offset = place
        for tag, shown in self._line_tags.items():
            if shown is line:
                ranges = self.text.tag_ranges(tag)
                if ranges:
                    self.text.yview(ranges[0])
                    if offset < 0:
                        self.text.yview_scroll(-offset, "pixels")
                return

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

    def show_lines(self, lines: list[Line], *, replace: bool = False,
                   keep_place: bool = False) -> None:
        """Append lines (or replace everything) and follow the end unless scrolled up;
        lines that arrive below the view are counted on the "new messages" button.
        `keep_place`: older lines came in above, so the line being read stays put."""
        place = self._reading_place() if keep_place else None
        follow = (replace and place is None) or self.following
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
        self.search.refresh()
        if place is not None:
            self._restore_place(place)
            self.following = chatview.should_autoscroll(self.text.yview()[1])
        elif follow:
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
        self.search.open()

    def close_search(self) -> None:
        self.search.close()

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

    def bind_view_keys(self, widget: tk.Misc) -> None:
        """Ctrl+PageUp/PageDown and Alt+Up/Down: the previous/next room or conversation
        of the sidebar; Ctrl+Home: the top of the transcript (and older messages)."""
        for key, step in (("<Control-Prior>", -1), ("<Control-Next>", 1),
                          ("<Alt-Up>", -1), ("<Alt-Down>", 1)):
            widget.bind(key, lambda _e, s=step: (self.app.step_view(s), "break")[1])
        widget.bind("<Control-Home>", lambda _e: (self.scroll_to_top(), "break")[1])

    def input_focus(self) -> None:
        self.input.focus_set()

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
        """The private conversation with `name`, shown, the keyboard in the input box."""
        self.app.open_private(name)

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
        menu = tk.Menu(self, tearoff=False, background=guitheme.FIELD_BG, foreground=guitheme.INK,
                       activebackground=guitheme.SELECTED_BG, activeforeground=guitheme.INK)
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
