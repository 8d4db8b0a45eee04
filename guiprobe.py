"""The desktop client's test hook: a JSON snapshot of what the widgets show."""
from __future__ import annotations

import json
import os
import tkinter as tk
from pathlib import Path
from typing import TYPE_CHECKING, Any

import chatview
import guitheme
from guitheme import ui_scale

if TYPE_CHECKING:
    from clientgui import App


def _pairs(items: tuple[Any, ...]) -> list[tuple[Any, Any]]:
    return list(zip(items[::2], items[1::2], strict=False))


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
            # Geometry is computed at idle time: without this, a tick that runs between a
            # text change and the layout it causes reports the change with the old boxes
            # (a login error grows its label, and the Connect button moves down after it).
            root.update_idletasks()
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
        shot["view"] = app.model.view
        shot["rooms"], shot["contacts"] = [], []
        for item in main.rooms.get_children():
            row = main.sidebar.rows.get(item)
            if row is None:  # a section's heading
                continue
            box = main.rooms.bbox(item)
            tags = main.rooms.item(item, "tags")
            (shot["contacts"] if row.kind == "private" else shot["rooms"]).append({
                "name": row.label if row.kind == "private" else row.key, "key": row.key,
                "kind": row.kind, "count": main.rooms.set(item, "count"),
                "badge": main.rooms.set(item, "badge"), "mention": "mention" in tags,
                "unread": "unread" in tags, "current": "current" in tags,
                "box": [main.rooms.winfo_rootx() + box[0], main.rooms.winfo_rooty() + box[1],
                        box[2], box[3]] if box else []})
        gap = main.text.tag_ranges("gap-link")
        box = main.text.bbox(gap[0]) if gap else None
        shot["gap_box"] = self._text_box(main.text, box) if box else []
        shot["sidebar_view"] = [round(v, 4) for v in main.rooms.yview()]
        focus_row = main.sidebar.rows.get(main.rooms.focus())
        shot["sidebar_focus"] = focus_row.key if focus_row is not None else main.rooms.focus()
        shot["loading_older"] = app.model.scrollback.loading
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
        shot["rooms_title"] = main.sidebar.title.get()
        shot["rooms_stale"] = main.sidebar.stale
        shot["members_view"] = [round(v, 4) for v in main.members.yview()]
        top = int(main.members.index("@0,0").split(".")[0])
        shot["members_top"] = (main.member_names[top - 1]
                               if 0 < top <= len(main.member_names) else "")
        shot["picked"] = main.picked_member
        shot["tooltip"] = main.tooltip.text
        shot["notifications"] = [list(item) for item in app.notifier.sent]
        shot["theme"] = guitheme.THEME
        shot["search"] = main.search.count.get() if main.search.winfo_ismapped() else None
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
                         "new_room_button": self._box(main.sidebar.new_room_button),
                         "conversation": self._box(main.text), "members": self._box(main.members)}
        shot["member_boxes"] = {}
        for number, name in enumerate(main.member_names, start=1):
            box = main.members.dlineinfo(f"{number}.0")
            if box:
                shot["member_boxes"][name] = [main.members.winfo_rootx() + box[0],
                                              main.members.winfo_rooty() + box[1],
                                              main.members.winfo_width() - box[0], box[3]]
        return shot
