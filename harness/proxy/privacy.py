"""What the proxy keeps out of the store: `--redact` patterns applied to every text before it is written (the
captured messages, both answers, error messages), and API keys whatever the patterns say.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from harness.errors import HarnessError
from harness.providers.base import redact

# named patterns `--redact` takes besides a regular expression of the user's own
NAMED = {
    "email": re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}"),
    # 13 to 19 digits, in groups split by spaces or dashes; replaced only when the Luhn check passes
    "card": re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])"),
    "phone": re.compile(r"(?<![\w+])\+?\d[\d ().-]{7,}\d(?!\w)"),
}


class Redactor:
    """Replaces what the patterns match by `[REDACTED:name]`; API keys and bearer tokens always go
    (`providers.base.redact`). Built from `--redact` values: a name of `NAMED` or a regular expression."""

    def __init__(self, patterns: Iterable[str] = ()) -> None:
        self.patterns: list[tuple[str, re.Pattern[str]]] = []
        for number, value in enumerate(patterns, start=1):
            if value in NAMED:
                self.patterns.append((value, NAMED[value]))
                continue
            try:
                self.patterns.append((f"custom{number}", re.compile(value)))
            except re.error as exc:
                raise HarnessError(f"--redact {value!r}: not a regular expression ({exc}); give one of "
                                   f"{', '.join(NAMED)} or a valid Python regular expression") from None

    def text(self, value: str) -> str:
        """`value` with every match replaced and keys redacted."""
        for name, pattern in self.patterns:
            value = pattern.sub(_card if name == "card" else f"[REDACTED:{name}]", value)
        return redact(value)

    def value(self, value: Any) -> Any:
        """`value` (text, or JSON-like lists and objects of text) with `text` applied to every string in it."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, list):
            return [self.value(item) for item in value]
        if isinstance(value, dict):
            return {key: self.value(item) for key, item in value.items()}
        return value


def _card(match: re.Match[str]) -> str:
    digits = [int(c) for c in match.group(0) if c.isdigit()]
    return "[REDACTED:card]" if _luhn(digits) else match.group(0)


def _luhn(digits: list[int]) -> bool:
    total = 0
    for i, digit in enumerate(reversed(digits)):
        if i % 2:
            digit *= 2
            digit -= 9 if digit > 9 else 0
        total += digit
    return total % 10 == 0
