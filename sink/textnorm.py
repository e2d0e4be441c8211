"""Comparison form of text: keywords, phrases and type names ignore case and diacritics.

"ZAKÁZKA:" and "zakazka:" must compare equal (seed 000 ch. 10), so every comparison goes
through :func:`fold`: Unicode NFKC (full-width and compatibility forms), unidecode
transliteration (diacritics and non-Latin scripts to ASCII) and casefolding. Whitespace runs
collapse to one space so that a line break inside a phrase still matches.
"""

from __future__ import annotations

import re
import unicodedata

from unidecode import unidecode

_SPACES = re.compile(r"\s+")


def fold(text: str) -> str:
    """Return the comparison form of ``text`` (ASCII, case-folded, single-spaced)."""
    if not text:
        return ""
    if not text.isascii():
        text = unidecode(unicodedata.normalize("NFKC", text))
    return _SPACES.sub(" ", text.casefold())


def fold_address(address: str) -> str:
    """Addresses compare lower-cased, without surrounding space or angle brackets."""
    return address.strip().strip("<>").strip().lower()


def domain_of(address: str) -> str:
    """The domain part of a folded address ('' when there is none)."""
    return address.rpartition("@")[2] if "@" in address else ""
