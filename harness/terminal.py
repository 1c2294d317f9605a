"""Text from a server or a model, made safe to print to a terminal.

A server's error body or a model's answer can hold bytes a terminal acts on rather than shows: ANSI colours,
cursor moves and clear-screen (CSI, `ESC [ ... m`), window-title changes and hyperlinks (OSC, `ESC ] ... BEL`),
a full reset (`ESC c`), a bell, NUL, or a carriage return that lets later text overwrite earlier text on the line.
`printable` removes all of them before such text reaches stdout or stderr; what is stored keeps the text as sent.
"""

from __future__ import annotations

import re

# ESC-introduced strings (OSC `]`, DCS `P`, SOS `X`, PM `^`, APC `_`) run to BEL or the string terminator ST
# (`ESC \` or 0x9C); the 8-bit C1 introducers (0x9D OSC, 0x90 DCS, 0x98 SOS, 0x9E PM, 0x9F APC) likewise.
_STRING = r"(?:\x1b[\]PX^_]|[\x90\x98\x9d\x9e\x9f])[^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)"
# CSI: `ESC [` or 0x9B, parameter bytes, intermediate bytes, one final byte
_CSI = r"(?:\x1b\[|\x9b)[\x30-\x3f]*[\x20-\x2f]*[\x40-\x7e]"
# any other escape sequence: ESC, intermediate bytes, one final byte (`ESC c` resets the terminal, `ESC ( B`...)
_ESCAPE = r"\x1b[\x20-\x2f]*[\x30-\x7e]"
# what is left: C0 controls but tab and newline, DEL, C1 controls (a lone ESC or an unterminated string included)
_CONTROL = r"[\x00-\x08\x0b-\x1f\x7f-\x9f]"
_UNSAFE = re.compile("|".join((_STRING, _CSI, _ESCAPE, _CONTROL)))
_SPACES = re.compile(r"[\t\n]+")


def printable(text: str, *, one_line: bool = False) -> str:
    """`text` with every terminal escape sequence (CSI, OSC and the other ESC sequences, 7- and 8-bit) and every
    C0/C1 control character removed, newline and tab excepted; a carriage return is removed (so `\\r\\n` reads as
    `\\n`, and text after a lone `\\r` cannot overwrite the text before it). With `one_line`, each run of newlines
    and tabs becomes one space, for a one-line message."""
    if not isinstance(text, str):
        text = str(text)
    out = _UNSAFE.sub("", text)
    return _SPACES.sub(" ", out) if one_line else out
