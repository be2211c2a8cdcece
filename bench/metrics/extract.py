"""Answer extraction applied by the generation shape before exact match (pure functions, no `evaluate`).

A plain module file, not a metric folder: ``bench.metrics.available()`` lists only ``<name>/<name>.py`` folders.
"""
from __future__ import annotations

import re

# a number: optional minus (not glued to a preceding word, digit or dot, so "5-3" yields 5 and 3),
# then digits with thousands commas ("1,000") or plain digits, optional fraction, or a bare fraction (".5")
_NUMBER = re.compile(r"(?:(?<![\w.])-)?(?:\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)")


def extract_last_number(text: str) -> str | None:
    """The last number in ``text`` with thousands commas removed, or None when there is none.

    ``"so 3 + 4 = 7.\\n#### 1,250"`` -> ``"1250"``; ``"It costs $-2.50."`` -> ``"-2.50"``; a trailing sentence
    dot is not part of the number (``"is 7."`` -> ``"7"``).
    """
    matches = _NUMBER.findall(text or "")
    return matches[-1].replace(",", "") if matches else None
