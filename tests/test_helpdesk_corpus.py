"""The auto-reply corpus (tests/data/autoreplies, sources in its README): the share of real
auto-replies recognised, and real bounces and ordinary mail that never are."""

from __future__ import annotations

from pathlib import Path

import pytest

from sink.config import parse_config
from sink.mail.parse import parse_message
from sink.pipeline import evaluate

CORPUS = Path(__file__).parent / "data" / "autoreplies"
BOX = parse_config({"boxes": [{"address": "crm@firma.cz"}]}).boxes[0]
POSITIVE = sorted(CORPUS.glob("*.eml"))
NEGATIVE = sorted((CORPUS / "negative").glob("*.eml"))


def verdict(directory, path: Path) -> str:
    return evaluate(parse_message(path.read_bytes()), BOX, directory, lambda keys: False).verdict


def test_share_of_real_auto_replies_recognised(directory, capsys):
    recognised = [p.name for p in POSITIVE if verdict(directory, p) == "AUTO_REPLY"]
    missed = sorted({p.name for p in POSITIVE} - set(recognised))
    with capsys.disabled():
        print(f"\nauto-replies recognised: {len(recognised)}/{len(POSITIVE)}; missed: {missed}")
    assert len(POSITIVE) >= 10
    # The one miss expected: Exchange's header set under an unprefixed subject (Outlook puts
    # those headers on ordinary mail too, SPEC 5 step 3a wants a subject prefix with them).
    assert len(recognised) >= len(POSITIVE) - 1, missed


@pytest.mark.parametrize("path", NEGATIVE, ids=lambda p: p.name)
def test_bounces_and_ordinary_mail_are_never_auto_replies(directory, path):
    assert verdict(directory, path) != "AUTO_REPLY"
