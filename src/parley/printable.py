"""Text from elsewhere, made safe to print on an operator's terminal.

A peer's message, a file name, the first words of a refused message: printed as
they came, a control character could move the cursor, retitle the window or
clear the screen, and a direction override could make "transfer 100" read as
something else. Here each such character is written out as a visible escape
(``\\x1b``, ``\\u202e``); everything else -- every script, every emoji -- is
left as it is.
"""

from __future__ import annotations

import unicodedata

# Joiners that emoji sequences and some scripts need; invisible but harmless.
_KEEP = frozenset("\u200c\u200d")


def printable(text: str, *, newlines: bool = True) -> str:
    out = []
    for ch in text:
        if ch == "\n" and newlines:
            out.append(ch)
        elif ch not in _KEEP and unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Zl",
                                                               "Zp"):
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000
                       else f"\\U{code:08x}")
        else:
            out.append(ch)
    return "".join(out)
