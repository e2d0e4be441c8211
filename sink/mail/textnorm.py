"""Comparison form of text: keywords, phrases and type names ignore case and diacritics.

"ZAKÁZKA:" and "zakazka:" must compare equal (seed 000 ch. 10), so every comparison goes
through :func:`fold`: Unicode NFKC (full-width and compatibility forms), unidecode
transliteration (diacritics and non-Latin scripts to ASCII) and casefolding. Whitespace runs
collapse to one space so that a line break inside a phrase still matches.
"""

from __future__ import annotations

import codecs
import re
import unicodedata
from functools import lru_cache

from unidecode import unidecode


class _Transliteration(dict):
    """Code point -> its unidecode replacement, computed on first use.

    unidecode replaces each character on its own, so replacing character by character from
    this table equals ``unidecode(text)`` - and str.translate does the loop in C, about ten
    times faster than unidecode's Python loop."""

    LIMIT = 65536         # distinct characters remembered; a hostile text cannot grow it more

    def __missing__(self, codepoint: int) -> str:
        value = unidecode(chr(codepoint))
        if len(self) < self.LIMIT:
            self[codepoint] = value
        return value


_TRANSLITERATION = _Transliteration()


# Below U+0800 (Latin, Greek, Cyrillic, Hebrew, Arabic, ...) a list indexed by code point:
# str.translate looks a list up fastest. Other text goes through the dictionary.
_TABLE_SIZE = 0x800
_TABLE = [_TRANSLITERATION[codepoint] for codepoint in range(_TABLE_SIZE)]


_BEYOND_TABLE = re.compile(f"[^\\x00-\\u{_TABLE_SIZE - 1:04x}]")


def _translate(text: str) -> str:
    """``unidecode(text)``: the same per-character replacements, the loop in C."""
    if _BEYOND_TABLE.search(text) is None:
        return text.translate(_TABLE)
    return text.translate(_TRANSLITERATION)


_ASCII_BYTES = bytes(range(128))
_ASCII_CHARS = "".join(map(chr, range(128)))
_IDENTITY = bytes(range(256))
_UNMAPPED = "\ufffe"       # what a charmap decoding table says for "no character here"


def _replacement(codepoint: int) -> str:
    return _TABLE[codepoint] if codepoint < _TABLE_SIZE else _TRANSLITERATION[codepoint]


def _transliterate(text: str) -> str:
    """``unidecode(text)``, three times faster than :func:`_translate` on real text.

    str.translate looks every character up, ASCII ones too (nineteen in twenty of a Czech
    mail). Here a charmap codec, built for the few distinct non-ASCII characters the text has
    (UTF-8 bytes with the ASCII ones deleted), encodes the text in C: ASCII as itself, the
    i-th of those characters as byte 0x80 + i; bytes.translate and bytes.replace then put each
    one's replacement in."""
    distinct = sorted(set(text.encode("utf-8", "surrogatepass").translate(None, _ASCII_BYTES)
                          .decode("utf-8", "surrogatepass")))
    if not distinct:
        return text
    if len(distinct) > 128 or _UNMAPPED in distinct:
        return _translate(text)           # more than one byte can tell apart
    codec = codecs.charmap_build(_ASCII_CHARS + "".join(distinct)
                                 + _UNMAPPED * (128 - len(distinct)))
    data = codecs.charmap_encode(text, "strict", codec)[0]
    table = bytearray(_IDENTITY)
    for byte, char in enumerate(distinct, start=0x80):
        replacement = _replacement(ord(char))
        if not replacement.isascii():
            return _translate(text)       # unidecode's output is ASCII: not reached
        if len(replacement) == 1:
            table[byte] = ord(replacement)
        else:                             # "ß" -> "ss", "€" -> "EUR", a mark -> ""
            data = data.replace(bytes((byte,)), replacement.encode("ascii"))
    return data.translate(table).decode("ascii")


def _collapse_spaces(text: str) -> str:
    """``re.sub(r"\\s+", " ", text)``, three times faster (split() knows the same spaces)."""
    words = text.split()
    if not words:
        return " " if text else ""
    out = " ".join(words)
    if text[0].isspace():
        out = " " + out
    if text[-1].isspace():
        out += " "
    return out


def _fold(text: str) -> str:
    if not text.isascii():
        text = _transliterate(unicodedata.normalize("NFKC", text))
    return _collapse_spaces(text.casefold())


_fold_short = lru_cache(maxsize=8192)(_fold)     # keywords, phrases, subjects, names
_fold_long = lru_cache(maxsize=8)(_fold)         # a body, which several rules fold


def fold(text: str) -> str:
    """Return the comparison form of ``text`` (ASCII, case-folded, single-spaced)."""
    if not text:
        return ""
    return _fold_short(text) if len(text) <= 256 else _fold_long(text)


# Every character whose fold holds a colon (NFKC, then unidecode: the fullwidth and small
# colons, the ratio sign, IPA's length mark, ...); tests/test_rules_speed.py derives the list
# again from all of Unicode. A text with none of them folds to a text without ':'.
_COLON_LIKE = tuple(chr(c) for c in (
    0x3a, 0x2d0, 0x589, 0xfbf, 0x1038, 0x1365, 0x1366, 0x16ec, 0x17d6, 0x1804, 0x2236, 0x2831,
    0x2a74, 0x2e2c, 0xfe13, 0xfe55, 0xff1a, 0x10781))


def may_fold_to_colon(text: str) -> bool:
    """Whether ``fold(text)`` can contain ':' - without folding ``text``. Exact: False means
    it does not; True that it does."""
    if text.isascii():
        return ":" in text
    return any(c in text for c in _COLON_LIKE)


def fold_address(address: str) -> str:
    """Addresses compare lower-cased, without surrounding space or angle brackets."""
    return address.strip().strip("<>").strip().lower()


def domain_of(address: str) -> str:
    """The domain part of a folded address ('' when there is none)."""
    return address.rpartition("@")[2] if "@" in address else ""
