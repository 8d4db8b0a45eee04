"""Rendering text from the network inert: pure functions, no I/O.

Anything a peer or the server sends (names, room names, messages, status notes, reasons,
error messages) may try to take over the display it is shown on: a newline forges a whole
line (a fake "[private, encrypted, verified] alice -> you: ..."), ESC/CSI/OSC sequences
move the cursor, clear the screen or retitle the window, and bidi controls reorder what
follows so that "you -> bob" reads as something else.

`inert(text)` is the one-line terminal form: every such character is replaced by a
visible escape (`\\x1b`, `\\n`, `\\u202e`), so the text is shown, never obeyed, and a
message never spans more lines than the client chooses. Only the dangerous characters
change: letters of every script, emoji (including zero-width joiners inside them) and
combining marks pass through untouched.

For displays that do their own line layout (the Tk client), `strip_bidi_controls` removes
just the reordering controls and `escape_controls(text, keep_newlines=True)` keeps the
line breaks of a multi-line message while escaping everything else.
"""
from __future__ import annotations

import json
from typing import Any

#: Explicit bidi embeddings/overrides (LRE RLE PDF LRO RLO), isolates (LRI RLI FSI PDI),
#: the implicit marks LRM/RLM and the Arabic letter mark: each can reorder the display.
BIDI_CONTROLS: frozenset[str] = frozenset(
    [chr(c) for c in range(0x202A, 0x202F)]
    + [chr(c) for c in range(0x2066, 0x206A)]
    + ["\u200e", "\u200f", "\u061c"]
)

#: Line and paragraph separators: some displays break lines on them.
LINE_SEPARATORS: frozenset[str] = frozenset(["\u2028", "\u2029"])

_SHORT_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def is_unsafe(char: str) -> bool:
    """Whether one character must not reach a terminal as it is.

    C0 controls (U+0000-U+001F, including ESC, CR, LF, TAB, BEL), DEL, C1 controls
    (U+0080-U+009F, which some terminals treat as CSI/OSC introducers), bidi controls,
    line/paragraph separators and lone surrogates (not encodable, not displayable).
    """
    code = ord(char)
    return (
        code < 0x20
        or 0x7F <= code <= 0x9F
        or char in BIDI_CONTROLS
        or char in LINE_SEPARATORS
        or 0xD800 <= code <= 0xDFFF
    )


def escape_char(char: str) -> str:
    """The visible form of an unsafe character: \\n \\r \\t, \\xHH below 256, else \\uHHHH."""
    short = _SHORT_ESCAPES.get(char)
    if short is not None:
        return short
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape_controls(text: str, *, keep_newlines: bool = False) -> str:
    """Replace every unsafe character by its visible escape.

    With `keep_newlines`, "\\n" stays a line break (for displays that lay out lines
    themselves and show each message as its own block); "\\r" is still escaped, since it
    would let a message overwrite its own start.
    """
    if not any(is_unsafe(char) for char in text):
        return text  # the common case: nothing to copy
    return "".join(
        char if (keep_newlines and char == "\n") or not is_unsafe(char) else escape_char(char)
        for char in text
    )


def inert(text: object) -> str:
    """One line of terminal text from any network value: str() of it, every unsafe
    character visibly escaped. Never longer in lines than one."""
    return escape_controls(text if isinstance(text, str) else str(text))


def strip_bidi_controls(text: str) -> str:
    """`text` without bidi reordering controls (for displays that show other controls
    their own way)."""
    if not any(char in BIDI_CONTROLS for char in text):
        return text
    return "".join(char for char in text if char not in BIDI_CONTROLS)


def json_line(value: Any) -> str:
    """JSON on one line that is also inert on a terminal: `json.dumps` leaves C1
    controls, DEL, bidi controls, U+2028/9 and lone surrogates unescaped when
    ensure_ascii is off; they are written as \\uXXXX escapes here, which is still valid
    JSON for the same value."""
    text = json.dumps(value, ensure_ascii=False)
    if not any(is_unsafe(char) for char in text):
        return text
    # json.dumps already escaped C0 controls, so every unsafe character left is inside a
    # string literal, where \\uXXXX means exactly that character.
    return "".join(f"\\u{ord(char):04x}" if is_unsafe(char) else char for char in text)
