"""How the desktop client's text reads, with no Tk in it: what Tk 8.6 can take
(`tk_safe`), right-to-left text, times, name colours, and the `Line`/`Span` records.
"""
from __future__ import annotations

import hashlib
import unicodedata
from dataclasses import dataclass
from datetime import datetime
from typing import Sequence

# -- text Tk can take ---------------------------------------------------------------------

REPLACEMENT = "\ufffd"
# Characters that would let one message rearrange or hide the text around it.
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_INVISIBLE_ASTRAL = (
    (0x1F3FB, 0x1F3FF),  # skin-tone modifiers: meaningless once the emoji is replaced
    (0xE0000, 0xE007F),  # tag characters (subdivision flags)
    (0xE0100, 0xE01EF),  # variation selectors supplement
)
_REGIONAL_A = 0x1F1E6


def tk_can_show_astral(tcl_patchlevel: str, windowing: str = "x11",
                       emoji_font: bool = True) -> bool:
    """Whether Tk draws characters beyond the Basic Multilingual Plane (emoji) as glyphs.

    Tcl/Tk 9 stores any code point. 8.6 (TCL_UTF_MAX 3) stores them as surrogate pairs,
    but from 8.6.10 on it joins the pairs when drawing and moves the cursor over a pair
    as one character (checked under Xvfb with Tk 8.6.13). On X11 a glyph also needs a
    font that has it (fontconfig falls back to any installed font, e.g. Noto Color Emoji,
    Symbola or DejaVu Sans for the emoticons): `emoji_font` says whether one exists.
    Windows and macOS ship emoji fonts."""
    try:
        parts = [int(part) for part in tcl_patchlevel.split(".")[:3]]
    except ValueError:
        return False
    if parts and parts[0] >= 9:
        return True
    return tuple(parts) >= (8, 6, 10) and (windowing != "x11" or emoji_font)


# -- right-to-left text -------------------------------------------------------------------

_RTL_FIRST, _RTL_LAST = 0x0590, 0x08FF  # Hebrew, Arabic, Syriac, Thaana, NKo, ...


def has_rtl(text: str) -> bool:
    return any(_RTL_FIRST <= ord(ch) <= _RTL_LAST or 0xFB1D <= ord(ch) <= 0xFEFC for ch in text)


def bidi_display(text: str) -> str:
    """`text` in visual order for Tk 8.6, which draws every run left to right and does not
    join Arabic letters (seen under Xvfb): Arabic is shaped into its presentation forms
    (arabic-reshaper), then each line is reordered by the Unicode bidirectional algorithm
    (python-bidi). Without those libraries the text is returned as it is."""
    if not has_rtl(text):
        return text
    try:
        from bidi import get_display
    except ImportError:
        return text
    try:
        import arabic_reshaper
        shaped = arabic_reshaper.reshape(text)
    except ImportError:
        shaped = text
    return "\n".join(get_display(line) for line in shaped.split("\n"))


def tk_safe(text: str, *, astral: bool = False, newlines: bool = True) -> str:
    """`text` as something Tk displays faithfully and cannot be crashed or garbled by.

    - Characters outside the Basic Multilingual Plane (emoji, rare CJK, maths letters)
      become a visible substitute unless `astral` says Tk can take them: a symbol reads as
      its name in brackets ("[grinning face]"), a pair of regional indicators as
      "[flag US]", anything else as U+FFFD; skin-tone modifiers and tag characters vanish.
    - Lone surrogates (which make Tk raise) and control characters (NUL cuts the text
      short in Tk) become U+FFFD; tabs stay, and newlines stay when `newlines` is true
      (carriage returns are dropped).
    - Bidirectional override and isolate controls become U+FFFD, so one message cannot
      reorder the rest of its line.
    """
    if text.isascii() and text.isprintable():
        return text
    out: list[str] = []
    pending_flag = ""
    for ch in text:
        code = ord(ch)
        if _REGIONAL_A <= code < _REGIONAL_A + 26 and not astral:
            letter = chr(ord("A") + code - _REGIONAL_A)
            if pending_flag:
                out.append(f"[flag {pending_flag}{letter}]")
                pending_flag = ""
            else:
                pending_flag = letter
            continue
        if pending_flag:
            out.append(f"[{pending_flag}]")
            pending_flag = ""
        if code > 0xFFFF:
            if astral:
                out.append(ch)
            elif any(low <= code <= high for low, high in _INVISIBLE_ASTRAL):
                continue
            else:
                out.append(_astral_substitute(ch))
        elif 0xD800 <= code <= 0xDFFF or ch in _BIDI_CONTROLS:
            out.append(REPLACEMENT)
        elif ch == "\n":
            out.append("\n" if newlines else " ")
        elif ch == "\r":
            continue
        elif ch == "\t":
            out.append(ch)
        elif unicodedata.category(ch) == "Cc":
            out.append(REPLACEMENT)
        else:
            out.append(ch)
    if pending_flag:
        out.append(f"[{pending_flag}]")
    return "".join(out)


def _astral_substitute(ch: str) -> str:
    if unicodedata.category(ch) in ("So", "Sk", "Sm"):
        name = unicodedata.name(ch, "")
        if name:
            return f"[{name.lower()}]"
    return REPLACEMENT


def join_surrogates(text: str) -> str:
    """Text read back from a Tk 8.6 widget, with surrogate pairs joined into code points.

    A lone surrogate (which no encoder accepts) becomes U+FFFD."""
    if not any(0xD800 <= ord(ch) <= 0xDFFF for ch in text):
        return text
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


# -- times and colours --------------------------------------------------------------------

def server_time(stamp: str) -> datetime | None:
    """A server time ('2026-11-29T19:40:00.123Z') as a local datetime; None if unreadable."""
    try:
        moment = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except (ValueError, AttributeError):
        return None
    return moment.astimezone() if moment.tzinfo is not None else None


def format_time(stamp: str, now: datetime | None = None) -> str:
    """A server time ('2026-11-29T19:40:00.123Z') in local time: '20:40', or with the
    date ('28 Nov 20:40') when it is not today. Unreadable stamps give ''."""
    local = server_time(stamp)
    if local is None:
        return ""
    today = (now or datetime.now().astimezone()).astimezone().date()
    if local.date() == today:
        return local.strftime("%H:%M")
    if local.year == today.year:
        return f"{local.day} {local.strftime('%b %H:%M')}"
    return f"{local.day} {local.strftime('%b %Y %H:%M')}"


# Twelve hues, each readable on white (WCAG contrast of at least 4.5:1).
NAME_PALETTE = (
    "#c62828", "#1565c0", "#2e7d32", "#7b1fa2", "#bf360c", "#00838f",
    "#ad1457", "#3949ab", "#827717", "#6d4c41", "#00796b", "#5e35b1",
)
OWN_COLOUR = "#1f2937"


def _name_hash(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.casefold().encode("utf-8")).digest()[:4], "big")


class NameColours:
    """A colour per sender: stable for a name, and distinct while the palette lasts.

    A name's first choice comes from a hash of the name (the same in every run and on
    every machine); a name whose first choice is already taken by another name moves to
    the next free colour. Once assigned, a name keeps its colour for the session.
    """

    def __init__(self, me: str = "", palette: Sequence[str] = NAME_PALETTE) -> None:
        self.me = me
        self.palette = tuple(palette)
        self._assigned: dict[str, str] = {}

    def __call__(self, name: str) -> str:
        key = name.casefold()
        if self.me and key == self.me.casefold():
            return OWN_COLOUR
        colour = self._assigned.get(key)
        if colour is None:
            start = _name_hash(name) % len(self.palette)
            used = set(self._assigned.values())
            colour = self.palette[start]
            for step in range(len(self.palette)):
                candidate = self.palette[(start + step) % len(self.palette)]
                if candidate not in used:
                    colour = candidate
                    break
            self._assigned[key] = colour
        return colour


# -- lines of the conversation ------------------------------------------------------------

@dataclass(frozen=True)
class Span:
    """A run of text with style tags; `image` names a picture shown instead (e.g. "lock")."""

    text: str
    tags: tuple[str, ...] = ()
    image: str = ""


@dataclass(frozen=True)
class Line:
    """One line of the conversation. `kind` styles the whole line: message, own, history,
    mention, system, private, warning, error, notice, divider."""

    kind: str
    spans: tuple[Span, ...]
    message_id: int | None = None
    stamp: str = ""  # the server's time, for the full date on hover
    sender: str = ""  # who wrote it (for "message this person" and "fingerprint")
    body: str = ""  # the text as it was sent, for "copy"

    @property
    def text(self) -> str:
        return "".join(span.text for span in self.spans)


def colour_tag(colour: str) -> str:
    """The tag that paints text in `colour` (the window creates it on first use)."""
    return f"fg{colour}"
