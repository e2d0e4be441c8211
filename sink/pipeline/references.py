"""``KEYWORD:NUMBER [TYPE] [SCOPE]`` references in a subject or body (seed 000 ch. 10-12).

Matching runs on the folded text (:func:`sink.mail.textnorm.fold`), so "ZAKÁZKA: 2023-015" and
"zakazka:2023-015" are the same reference. A reference is only *found* here; whether its number,
type and scope mean anything is decided against the directory by the rules.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from sink.mail.textnorm import fold, may_fold_to_colon

KINDS = ("contract", "order", "task")
_TRAILING = ".,;:!?)]}>\"'"
_SCOPE = re.compile(r"p(?:-|[0-9])")
_WORDS_AFTER = 6


@dataclass(frozen=True)
class Reference:
    kind: str                 # contract | order | task
    number: str               # folded, trailing punctuation removed
    words: tuple[str, ...]    # folded words after the number: candidates for TYPE and SCOPE


@dataclass(frozen=True)
class _Matcher:
    pattern: re.Pattern
    # each alternative of the pattern with its colon ("contract:", "zakazka:", ...): the
    # pattern matches only where one of these stands, so their absence decides without it
    literals: tuple[str, ...]

    def may_match(self, folded: str) -> bool:
        return any(literal in folded for literal in self.literals)


@lru_cache(maxsize=64)
def _matcher(keywords: tuple[tuple[str, tuple[str, ...]], ...]) -> _Matcher:
    alternatives = []
    literals: list[str] = []
    for kind, words in keywords:
        folded = sorted({fold(w).rstrip(":").strip() for w in words} - {""}, key=len, reverse=True)
        if folded:
            alternatives.append(f"(?P<{kind}>{'|'.join(re.escape(w) for w in folded)})")
            literals.extend(f"{w}:" for w in folded)
    if not alternatives:
        return _Matcher(re.compile(r"(?!x)x"), ())
    # The keyword stands on its own (no letter or digit before it), the colon follows it
    # directly, one optional space, then the number up to the next space.
    return _Matcher(re.compile(r"(?<![a-z0-9])(?:" + "|".join(alternatives)
                               + r"): ?(?P<number>[^ ]+)"), tuple(literals))


def find_references(text: str, keywords: dict[str, tuple[str, ...]]) -> list[Reference]:
    """All references in ``text`` in order of appearance. ``keywords`` maps kind -> words."""
    if not may_fold_to_colon(text):
        return []            # no reference without a colon: not even folded
    return folded_references(fold(text), keywords)


def folded_references(folded: str, keywords: dict[str, tuple[str, ...]]) -> list[Reference]:
    """:func:`find_references` of a text already folded (``folded == fold(text)``)."""
    matcher = _matcher(tuple((k, tuple(keywords.get(k, ()))) for k in KINDS))
    if not matcher.may_match(folded):
        return []            # most text: a few substring searches instead of the regex
    found = []
    for match in matcher.pattern.finditer(folded):
        kind = next(k for k in KINDS if match.groupdict().get(k))
        token = match.group("number")
        number = token.rstrip(_TRAILING)
        if not number:
            continue
        words: tuple[str, ...] = ()
        if number == token:  # "Contract:1, thanks" - punctuation ends the reference
            after = folded[match.end(): match.end() + 200].split(" ", _WORDS_AFTER + 1)
            words = tuple(w for w in after[1:_WORDS_AFTER + 1] if w)
        found.append(Reference(kind, number, words))
    return found


def scope_token(word: str) -> str | None:
    """'p-' (no scope) or 'pN' (level N): exactly two characters, p then '-' or a digit."""
    word = word.rstrip(".,;")
    return word if len(word) == 2 and _SCOPE.fullmatch(word) else None
