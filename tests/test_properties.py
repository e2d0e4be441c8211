"""Property-based tests (hypothesis) for the normaliser, the reference parser and the parser."""

from __future__ import annotations

import random
import unicodedata

from hypothesis import HealthCheck, given, settings, strategies as st

from sink.mail.parse import parse_message
from sink.pipeline.references import find_references, scope_token
from sink.ruledata import default_list
from sink.mail.textnorm import fold

KEYWORDS = {k: default_list(f"{k}_keywords") for k in ("contract", "order", "task")}
ALL_KEYWORDS = [(kind, word) for kind, words in KEYWORDS.items() for word in words]
NUMBER = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9\-/]{0,12}[A-Za-z0-9]", fullmatch=True)


def variant(word: str, rng: random.Random) -> str:
    """Random case per letter; diacritics kept, stripped, or decomposed (NFD)."""
    out = "".join(c.upper() if rng.random() < 0.5 else c.lower() for c in word)
    choice = rng.random()
    if choice < 0.33:
        out = "".join(c for c in unicodedata.normalize("NFD", out) if not unicodedata.combining(c))
    elif choice < 0.66:
        out = unicodedata.normalize("NFD", out)
    return out


@given(st.text())
def test_fold_is_idempotent_ascii_and_caseless(text):
    folded = fold(text)
    assert folded.isascii()
    assert fold(folded) == folded
    assert fold(text.upper()) == fold(text.lower()) or not text.isascii()


@given(st.text(alphabet="ÁáČčĎďÉéĚěÍíŇňÓóŘřŠšŤťÚúŮůÝýŽž abc"))
def test_fold_ignores_czech_diacritics_and_case(text):
    stripped = "".join(c for c in unicodedata.normalize("NFD", text)
                       if not unicodedata.combining(c))
    assert fold(text) == fold(stripped) == fold(stripped.swapcase())


@given(st.sampled_from(ALL_KEYWORDS), NUMBER, st.randoms(use_true_random=False),
       st.booleans(), st.text(alphabet=" abc.,", max_size=10))
def test_keyword_variants_parse_identically(kw, number, rng, space, prefix):
    kind, word = kw
    canonical = find_references(f"{word}:{number}", KEYWORDS)
    text = f"{prefix} {variant(word, rng)}:{' ' if space else ''}{number} rest"
    found = find_references(text, KEYWORDS)
    assert [(r.kind, r.number) for r in found][:1] == [(kind, fold(number))]
    assert [(r.kind, r.number) for r in canonical] == [(kind, fold(number))]


@given(st.text())
def test_arbitrary_text_never_raises(text):
    for ref in find_references(text, KEYWORDS):
        assert ref.kind in KEYWORDS and ref.number and " " not in ref.number


@given(st.text(max_size=3))
def test_scope_token_is_exactly_two_characters(word):
    token = scope_token(word)
    if token is not None:
        assert len(token) == 2 and token[0] == "p" and (token[1] == "-" or token[1].isdigit())


@settings(suppress_health_check=[HealthCheck.too_slow], max_examples=200)
@given(st.binary(max_size=4000))
def test_parser_never_raises_on_arbitrary_bytes(raw):
    msg = parse_message(raw)
    assert isinstance(msg.subject, str) and isinstance(msg.body_text, str)
    assert msg.sender_valid in (True, False)


HEADER_VALUE = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=200)


@settings(suppress_health_check=[HealthCheck.too_slow], max_examples=200)
@given(st.dictionaries(st.sampled_from(["From", "To", "Cc", "Subject", "Date", "Message-ID",
                                        "Content-Type", "Content-Transfer-Encoding"]),
                       HEADER_VALUE), st.binary(max_size=1000))
def test_parser_never_raises_on_arbitrary_headers(headers, body):
    head = "".join(f"{k}: {v}\r\n".replace("\n", "\n ") for k, v in headers.items())
    msg = parse_message(head.encode("utf-8", "surrogatepass") + b"\r\n" + body)
    assert isinstance(msg.recipients, tuple)
