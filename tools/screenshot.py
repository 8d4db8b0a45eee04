"""Make Assets/screenshot.png: the real GUI in a real conversation on a virtual display.

    python tools/screenshot.py [--theme light|dark] [--out Assets/screenshot.png] [--keep DIR]

It starts Xvfb (on a display number Xvfb picks), `server.py` on a free port, two
terminal-less ChatClients (bob and carol) and `clientgui.py` as alice; logs alice in with
a key press, lets the three talk (alice by typed keys, sent with xdotool), then captures
the window with ImageMagick's `import`, or with `xwd` converted here if `import` is
missing. Everything runs in a temporary directory; keys are made fresh (a few seconds).

Debian packages: xvfb, xdotool, openbox (optional: window decorations and focus as on a
desktop), fonts-noto-color-emoji, and imagemagick (or x11-apps for xwd).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import identity  # noqa: E402
from client import ChatClient, RoomMessage  # noqa: E402

WAIT = 20.0


def start_xvfb(size: str, dpi: int) -> tuple[subprocess.Popen[bytes], str]:
    read_end, write_end = os.pipe()
    xvfb = subprocess.Popen(["Xvfb", "-displayfd", str(write_end), "-screen", "0", size,
                             "-dpi", str(dpi), "-nolisten", "tcp"], pass_fds=(write_end,),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(write_end)
    number = b""
    with os.fdopen(read_end, "rb", buffering=0) as pipe:
        while not number.endswith(b"\n"):
            chunk = pipe.read(16)
            if not chunk:
                raise SystemExit("Xvfb did not start")
            number += chunk
    display = f":{number.decode().strip()}"
    wait_for(lambda: Path(f"/tmp/.X11-unix/X{display[1:]}").exists(), "the X socket")
    return xvfb, display


def wait_for(check: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.05)


def start_server(workdir: Path) -> tuple[subprocess.Popen[str], str, int]:
    server = subprocess.Popen([sys.executable, str(ROOT / "server.py"), "--port", "0",
                               "--log", str(workdir / "messageslog.json")],
                              cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              text=True)
    assert server.stdout is not None
    for line in server.stdout:
        found = re.search(r"listening on (\S+):(\d+)", line)
        if found:
            return server, found.group(1), int(found.group(2))
    raise SystemExit("the server did not start")


class Window:
    """The GUI process, read through its probe, driven with xdotool."""

    def __init__(self, display: str, home: Path, probe: Path, host: str, port: int,
                 *extra: str) -> None:
        self.env = {**os.environ, "DISPLAY": display, "GAPSHAPE_HOME": str(home),
                    "GAPSHAPE_GUI_PROBE": str(probe)}
        self.probe = probe
        self.process = subprocess.Popen([sys.executable, str(ROOT / "clientgui.py"),
                                         "--username", "alice", "--host", host,
                                         "--port", str(port), *extra], env=self.env, cwd=ROOT)

    def state(self) -> dict[str, Any]:
        try:
            return json.loads(self.probe.read_text("utf-8"))
        except (OSError, ValueError):
            return {}

    def wait(self, check: Callable[[dict[str, Any]], Any], what: str) -> dict[str, Any]:
        def ready() -> dict[str, Any] | None:
            state = self.state()
            try:
                return state if state and check(state) else None
            except (KeyError, IndexError, TypeError):
                return None
        return wait_for(ready, what)

    def settled(self) -> dict[str, Any]:
        """The state once the window has the size it asked for (it grows from the login
        size to the main size after logging in) and the input box is on screen."""
        return self.wait(lambda s: s["boxes"]["input"] and s["settled"], "the laid-out window")

    def xdo(self, *args: str) -> str:
        return subprocess.run(["xdotool", *args], env=self.env, check=True, text=True,
                              capture_output=True).stdout.strip()

    def click(self, box: list[int]) -> None:
        x, y, width, height = box
        self.xdo("mousemove", str(x + width // 2), str(y + height // 2), "click", "1")

    def type(self, text: str, enter: bool = True) -> None:
        for char in text:
            # A character missing from the keymap is typed by remapping a key first; a
            # slower pace lets Tk see the new mapping before the key arrives.
            self.xdo("type", "--delay", "12" if char.isascii() else "120", char)
        if enter:
            self.xdo("key", "Return")


def xwd_to_png(xwd: bytes) -> bytes:
    """A 24/32-bit TrueColor XWD dump (what `xwd` writes on Xvfb) as an RGB PNG."""
    fields = struct.unpack(">25I", xwd[:100])
    header_size, width, height = fields[0], fields[4], fields[5]
    byte_order, bits_per_pixel, bytes_per_line = fields[7], fields[11], fields[12]
    masks, colours = fields[14:17], fields[19]
    if bits_per_pixel not in (24, 32):
        raise SystemExit(f"cannot convert a {bits_per_pixel}-bit XWD")
    data = xwd[header_size + 12 * colours:]
    step = bits_per_pixel // 8
    shifts = [(mask & -mask).bit_length() - 1 for mask in masks]
    rows = []
    for y in range(height):
        line = data[y * bytes_per_line: y * bytes_per_line + width * step]
        row = bytearray(b"\x00")
        for x in range(width):
            pixel = int.from_bytes(line[x * step:(x + 1) * step],
                                   "little" if byte_order == 0 else "big")
            row += bytes((pixel & mask) >> shift for mask, shift in zip(masks, shifts, strict=False))
        rows.append(bytes(row))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))

    return (b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"".join(rows), 9)) + chunk(b"IEND", b""))


def capture(window_id: str, out: Path, env: dict[str, str]) -> str:
    if shutil.which("import"):
        subprocess.run(["import", "-window", window_id, str(out)], env=env, check=True)
        return "import"
    if shutil.which("xwd"):
        dump = subprocess.run(["xwd", "-id", window_id, "-silent"], env=env, check=True,
                              capture_output=True).stdout
        out.write_bytes(xwd_to_png(dump))
        return "xwd"
    raise SystemExit("need ImageMagick's import or xwd: apt-get install imagemagick (or x11-apps)")


def start_window_manager(display: str) -> subprocess.Popen[bytes] | None:
    """openbox, if installed, so the window has a frame and real focus; ready once it set
    _NET_SUPPORTING_WM_CHECK on the root window."""
    if shutil.which("openbox") is None or shutil.which("xprop") is None:
        return None
    env = {**os.environ, "DISPLAY": display}
    manager = subprocess.Popen(["openbox", "--sm-disable"], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: "window id" in subprocess.run(
        ["xprop", "-root", "_NET_SUPPORTING_WM_CHECK"], env=env, capture_output=True,
        text=True).stdout, "the window manager")
    return manager


def peer(name: str, host: str, port: int, workdir: Path) -> ChatClient:
    client = ChatClient(name, host, port, data_dir=workdir / name)
    client.connect()
    return client


def wait_event(client: ChatClient, match: Callable[[Any], bool]) -> Any:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        event = client.events.get(timeout=WAIT)
        if match(event):
            return event
    raise SystemExit(f"{client.username} did not see the expected event")


def say(client: ChatClient, text: str) -> None:
    """Say something and wait for the server's echo, so the history keeps this order."""
    client.say(text)
    wait_event(client, lambda e: isinstance(e, RoomMessage) and e.text == text)


def make_screenshot(out: Path, workdir: Path, dpi: int = 96, theme: str = "light") -> None:
    for tool in ("Xvfb", "xdotool"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is missing: apt-get install xvfb xdotool")
    scale = max(1.0, dpi / 96)
    xvfb, display = start_xvfb(f"{round(1280 * scale)}x{round(800 * scale)}x24", dpi)
    manager = start_window_manager(display)
    server = None
    window = None
    try:
        server, host, port, home, bob, carol = start_cast(workdir)

        # Some history before alice arrives, and two more rooms for the sidebar.
        carol.join("#design")
        say(carol, "Mockups for the settings page are up — feedback welcome.")
        carol.join("#common")
        bob.join("#releases")
        say(bob, "2.4.0-rc1 is tagged.")
        bob.join("#common")
        say(bob, "Morning! Did the nightly build go through?")
        say(carol, "It did. The installer is 4 MB smaller now.")

        window = Window(display, home, workdir / "probe.json", host, port, "--theme", theme)
        window.wait(lambda s: s["screen"] == "login" and s["login"]["boxes"]["username"],
                    "the login window")
        login = window.xdo("search", "--onlyvisible", "--name", "Log in").split()[-1]
        window.xdo("windowfocus", "--sync", login)
        window.xdo("key", "Return")
        window.wait(lambda s: s["screen"] == "main" and len(s["members"]) == 3
                            and s["boxes"]["input"], "the main window")
        state = window.settled()
        # alice is in three rooms; #common is shown.
        for room in ("releases", "design"):
            window.type(f"/join {room}")
            window.wait(lambda s, r=room: s["view"] == f"#{r}", f"#{room} shown")
        window.type("/query #common")
        window.wait(lambda s: s["view"] == "#common" and len(s["members"]) == 3, "#common")

        bob.say("Hi alice! Could you check the Windows installer today? 🙏")
        window.wait(lambda s: "Windows installer" in s["conversation"], "bob's message")
        window.click(state["boxes"]["input"])
        window.type("Sure, I'll run it after lunch ☕")
        wait_event(bob, lambda e: isinstance(e, RoomMessage) and e.user == "alice")
        carol.say("Thanks both 🎉 Release notes draft: https://wiki.example.org/release-2.4 "
                  "comments welcome before Thursday so we can ship on time.")
        carol.set_status("away", "lunch")
        # Elsewhere meanwhile: badges in the sidebar, a mention and a private message.
        carol.say("New mockups for the login window.", room="#design")
        carol.say("And the dark theme variant.", room="#design")
        bob.say("alice: the release checklist is pinned here.", room="#releases")
        bob.send_private("alice", "Can you send me the signing key fingerprint?")
        window.type("Let's ship it", enter=False)

        def badge(s: dict[str, Any], name: str) -> str:
            return next((r["badge"] for r in s["rooms"] + s["contacts"] if r["name"] == name), "")

        window.wait(lambda s: badge(s, "#design") == "2" and badge(s, "#releases") == "@1"
                    and badge(s, "bob") == "1"
                    and s["members"][-1]["status"].startswith("away")
                    and s["input"] == "Let's ship it", "the final scene")
        main_window = window.xdo("search", "--onlyvisible", "--name", "alice in").split()[-1]
        how = capture(main_window, out, window.env)
        print(f"wrote {out} with {how}")
        window.xdo("key", "Escape")  # clear the draft, then leave properly
        window.type("/quit")
        window.process.wait(10)
        bob.close()
        carol.close()
    finally:
        stop_stage(window, server, manager, xvfb)


def start_cast(workdir: Path) -> tuple[subprocess.Popen[str], str, int, Path, ChatClient,
                                        ChatClient]:
    """The server, alice's data folder (her key made) and bob and carol logged in."""
    server, host, port = start_server(workdir)
    home = workdir / "alice-home"
    identity.load_or_create_identity(home, "alice")
    return server, host, port, home, peer("bob", host, port, workdir), peer(
        "carol", host, port, workdir)


def stop_stage(window: Any, server: Any, manager: Any, xvfb: Any) -> None:
    """End what a recording started, the window first and the display last."""
    if window is not None and window.process.poll() is None:
        window.process.terminate()
    for process in (server, manager, xvfb):
        if process is not None:
            process.terminate()
            process.wait(10)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "Assets" / "screenshot.png")
    parser.add_argument("--keep", type=Path, help="work in this directory and keep it")
    parser.add_argument("--dpi", type=int, default=96,
                        help="the virtual screen's resolution, to check other DPI settings "
                             "(default %(default)s)")
    parser.add_argument("--theme", choices=("light", "dark"), default="light")
    args = parser.parse_args(argv)
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        make_screenshot(args.out.resolve(), args.keep.resolve(), args.dpi, args.theme)
    else:
        with tempfile.TemporaryDirectory(prefix="gapshape-shot-") as workdir:
            make_screenshot(args.out.resolve(), Path(workdir), args.dpi, args.theme)
    return 0


if __name__ == "__main__":
    sys.exit(main())
