"""Make Assets/demo.gif: a short recording of a real session with the desktop client.

    python tools/demo.py [--out Assets/demo.gif] [--width 840]

Like tools/screenshot.py it runs everything for real on a virtual display: Xvfb, openbox,
`server.py`, two ChatClients (bob and carol) and `clientgui.py` as alice, typed into with
xdotool. The story: alice logs in, talks in #common, goes to #design and talks there,
gets and answers an end-to-end encrypted private message (the lock), and sets herself
away. Each scene is captured with ImageMagick's `import` and the frames are put together
with Pillow (tools/requirements.txt).

Debian packages: xvfb, xdotool, openbox, x11-utils, imagemagick, fonts-noto-color-emoji.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from screenshot import (  # noqa: E402
    ROOT,
    Window,
    say,
    start_cast,
    start_window_manager,
    start_xvfb,
    stop_stage,
    wait_event,
)

from client import PrivateMessage, RoomMessage  # noqa: E402


class Film:
    """Frames of one window, each shown for its own time."""

    def __init__(self, window: Window, workdir: Path) -> None:
        self.window, self.workdir = window, workdir
        self.frames: list[tuple[Path, int]] = []

    def shoot(self, title: str, duration_ms: int = 1400) -> None:
        window_id = self.window.xdo("search", "--onlyvisible", "--name", title).split()[-1]
        path = self.workdir / f"frame-{len(self.frames):03d}.png"
        subprocess.run(["import", "-window", window_id, str(path)], env=self.window.env,
                       check=True)
        self.frames.append((path, duration_ms))

    def save(self, out: Path, width: int) -> None:
        from PIL import Image

        images = [Image.open(path).convert("RGB") for path, _ in self.frames]
        size = (max(i.width for i in images), max(i.height for i in images))
        backdrop = images[-1].getpixel((2, size[1] // 2))
        frames = []
        for image in images:
            canvas = Image.new("RGB", size, backdrop)
            canvas.paste(image, ((size[0] - image.width) // 2, (size[1] - image.height) // 2))
            if width and size[0] > width:
                canvas = canvas.resize((width, round(size[1] * width / size[0])),
                                       Image.Resampling.LANCZOS)
            frames.append(canvas.quantize(colors=128, method=Image.Quantize.MEDIANCUT,
                                          dither=Image.Dither.NONE))
        frames[0].save(out, save_all=True, append_images=frames[1:], loop=0, optimize=True,
                       duration=[duration for _, duration in self.frames], disposal=1)


def record(out: Path, workdir: Path, width: int) -> None:
    for tool in ("Xvfb", "xdotool", "import"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is missing: apt-get install xvfb xdotool imagemagick")
    xvfb, display = start_xvfb("1280x800x24", 96)
    manager = start_window_manager(display)
    server = window = None
    try:
        server, host, port, home, bob, carol = start_cast(workdir)
        carol.join("#design")
        say(carol, "Here are the new icons, what do you think? 🎨")
        carol.join("#common")
        say(bob, "Good morning everyone ☀️")

        window = Window(display, home, workdir / "probe.json", host, port)
        film = Film(window, workdir)
        window.wait(lambda s: s["screen"] == "login" and s["settled"], "the login window")
        login = window.xdo("search", "--onlyvisible", "--name", "Log in").split()[-1]
        window.xdo("windowactivate", "--sync", login)
        film.shoot("Log in", 1600)
        window.xdo("key", "Return")
        state = window.wait(lambda s: s["screen"] == "main" and len(s["members"]) == 3
                            and s["settled"], "the main window")
        film.shoot("alice in", 1600)

        bob.say("Hi alice! Ready for the release? 🚀")
        window.wait(lambda s: "Ready for the release" in s["conversation"], "bob's message")
        film.shoot("alice in")
        window.click(state["boxes"]["input"])
        window.type("Almost: one last check of the installer", enter=False)
        film.shoot("alice in", 900)
        window.xdo("key", "Return")
        wait_event(bob, lambda e: isinstance(e, RoomMessage) and e.user == "alice")
        window.wait(lambda s: "one last check" in s["conversation"] and not s["input"], "sent")
        film.shoot("alice in")

        design = next(r for r in window.wait(lambda s: any(r["name"] == "#design" and r["box"]
                                                           for r in s["rooms"]), "#design")
                      ["rooms"] if r["name"] == "#design")
        carol.join("#design")
        window.click(design["box"])
        window.wait(lambda s: s["room"] == "#design" and len(s["members"]) == 2, "#design")
        film.shoot("alice in #design")
        window.type("Love the new icons 😍 ship them!")
        wait_event(carol, lambda e: isinstance(e, RoomMessage) and e.user == "alice")
        say(carol, "Thanks! Merging now.")
        window.wait(lambda s: "Merging now" in s["conversation"], "carol's answer")
        film.shoot("alice in #design")

        bob.send_private("alice", "Can you read me the signing key fingerprint?")
        state = window.wait(lambda s: any(c["name"] == "bob" and c["badge"] and c["box"]
                                          for c in s["contacts"]), "bob's private message")
        film.shoot("alice in #design", 1600)
        window.click(next(c for c in state["contacts"] if c["name"] == "bob")["box"])
        window.wait(lambda s: s["view"] == "@bob" and "bob → you" in s["conversation"],
                    "the private conversation with bob")
        film.shoot("alice in private", 1200)
        window.type("Sure, calling you in 5 minutes.")  # typed in bob's view: private
        wait_event(bob, lambda e: isinstance(e, PrivateMessage) and not e.outgoing)
        window.wait(lambda s: "you → bob" in s["conversation"], "alice's private answer")
        film.shoot("alice in private", 1600)

        window.type("/status away on a call with bob")
        window.wait(lambda s: s["status"] == "Away" and s["members"][0]["status"].startswith(
            "away"), "alice away")
        film.shoot("alice in private", 2600)
        film.save(out, width)
        print(f"wrote {out}: {len(film.frames)} frames, {out.stat().st_size // 1024} KiB")
        window.type("/quit")
        window.process.wait(10)
        bob.close()
        carol.close()
    finally:
        stop_stage(window, server, manager, xvfb)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "Assets" / "demo.gif")
    parser.add_argument("--width", type=int, default=840, help="width of the GIF in pixels")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="gapshape-demo-") as workdir:
        record(args.out.resolve(), Path(workdir), args.width)
    return 0


if __name__ == "__main__":
    sys.exit(main())
