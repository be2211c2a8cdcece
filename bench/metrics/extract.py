"""Answers of generation tasks (pure functions, no `evaluate`): the extraction the generation shape applies
before exact match, and the comparison exact match makes (shared by the shipped metric and the report).

A plain module file, not a metric folder: ``bench.metrics.available()`` lists only ``<name>/<name>.py`` folders.
"""
from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

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


# a whole answer that reads as a plain decimal number: optional sign, digits with optional thousands commas
# ("1,000"), optional fraction
_PLAIN_NUMBER = re.compile(r"[+-]?(?:\d{1,3}(?:,\d{3})+|\d+)?(?:\.\d+)?")


def _as_number(text: str) -> Decimal | None:
    if not any(c.isdigit() for c in text) or not _PLAIN_NUMBER.fullmatch(text):
        return None
    try:
        return Decimal(text.replace(",", ""))
    except InvalidOperation:
        return None


def same_answer(prediction: str, reference: str) -> bool:
    """Exact match of one prediction and one reference: both stripped of surrounding whitespace, then equal as
    strings (case-sensitive), or both plain decimal numbers of equal value (``"72" ~ "72.0"``, ``"1,000" ~ "1000"``)."""
    prediction, reference = prediction.strip(), reference.strip()
    if prediction == reference:
        return True
    p, r = _as_number(prediction), _as_number(reference)
    return p is not None and r is not None and p == r
