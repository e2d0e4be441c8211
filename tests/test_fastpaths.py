"""The fast paths of the hot loop give exactly what the plain code gives.

``fold`` (every keyword and phrase comparison) is checked against its reference definition:
``re.sub(r"\\s+", " ", unidecode(NFKC(text)).casefold())`` for non-ASCII text.
"""

from __future__ import annotations

import re
import unicodedata
import warnings

from hypothesis import given, settings
from hypothesis import strategies as st
from unidecode import unidecode

from sink.textnorm import fold

_SPACES = re.compile(r"\s+")


def reference_fold(text: str) -> str:
    if not text:
        return ""
    if not text.isascii():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")          # unidecode warns about lone surrogates
            text = unidecode(unicodedata.normalize("NFKC", text))
    return _SPACES.sub(" ", text.casefold())


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet=st.characters(), max_size=300))
def test_fold_equals_its_definition(text):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert fold(text) == reference_fold(text)


def test_fold_examples():
    cases = ["ZAKÁZKA: 2023-015", " \t Nový\u00a0úkol:\n\nDetails ", "北京 ", "\u2028x\u3000y",
             "Straße", "ǅemal", "", " ", "\n", "ａｂｃ", "x" * 300 + " Ž " + "y" * 300,
             "mixed\udce9surrogate"]
    for text in cases:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert fold(text) == reference_fold(text), text
    assert fold("ZAKÁZKA:") == fold("zakazka:")
