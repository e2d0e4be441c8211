"""The rules' fast paths (issue 16) decide exactly what the plain code decides.

The plain code is kept here, as it was before the fast paths: the MIME walks of the bounce and
invitation rules (each asking every part its type), the reference regex run on every folded
text with a colon, fold by its definition, the chain loop recording every result, and the
per-message rebuilds of the free-mail set and the header names. :func:`reference_evaluate`
runs the chain with all of them in place, and the differential tests compare its decisions -
verdict, direction, every record, the trace, the dedup keys - with :func:`evaluate`'s over the
bench corpora and the real-world corpora under tests/data.
"""

from __future__ import annotations

import re
import unicodedata
import warnings
from contextlib import contextmanager
from email.message import Message
from functools import cached_property
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench import corpus
from sink.config import parse_config
from sink.mail import textnorm
from sink.mail.parse import own_parts, parse_message, part_text
from sink.mail.textnorm import fold, may_fold_to_colon
from sink.pipeline import automatic, bounce_report, chain, context, invitations
from sink.pipeline.decision import RECORD_KINDS, Decision, TraceEntry, Verdict
from sink.pipeline.parts import read_own_parts
from sink.pipeline.records import MemoryRecords
from sink.pipeline.references import KINDS, Reference, find_references, folded_references
from tests.test_fastpaths import reference_fold

DATA = Path(__file__).parent / "data"
KEYWORDS = {"contract": ("Contract", "Project", "Zakázka", "Projekt"),
            "order": ("Order", "Objednávka"), "task": ("Task", "Úkol")}


# ------------------------------------------------------------------ the plain code, kept

def reference_references(text: str, keywords) -> list[Reference]:
    """``find_references`` before its prefilters: the regex over every folded text with ':'."""
    folded = reference_fold(text)
    if ":" not in folded:
        return []
    alternatives = []
    for kind in KINDS:
        words = sorted({reference_fold(w).rstrip(":").strip() for w in keywords.get(kind, ())}
                       - {""}, key=len, reverse=True)
        if words:
            alternatives.append(f"(?P<{kind}>{'|'.join(re.escape(w) for w in words)})")
    if not alternatives:
        return []
    pattern = re.compile(r"(?<![a-z0-9])(?:" + "|".join(alternatives)
                         + r"): ?(?P<number>[^ ]+)")
    found = []
    for match in pattern.finditer(folded):
        kind = next(k for k in KINDS if match.groupdict().get(k))
        token = match.group("number")
        number = token.rstrip(".,;:!?)]}>\"'")
        if not number:
            continue
        words: tuple[str, ...] = ()
        if number == token:
            after = folded[match.end(): match.end() + 200].split(" ", 7)
            words = tuple(w for w in after[1:7] if w)
        found.append(Reference(kind, number, words))
    return found


def _reference_folded_references(folded: str, keywords) -> list[Reference]:
    return reference_references(folded, keywords)     # fold(fold(x)) == fold(x)


def _reference_rfc3464(msg: Message | None, parts=None):
    """rfc3464 walking the tree for status parts, then again for a multipart/report."""
    found = []
    status = [p for p in own_parts(msg) if p.get_content_type() in bounce_report.STATUS_TYPES]
    if not status and not any(
            p.get_content_type() == "multipart/report"
            and bounce_report._param(p, "report-type") in bounce_report.REPORT_TYPES
            for p in own_parts(msg)):
        return None
    for part in status:
        blocks = bounce_report._status_blocks(part)[: bounce_report.MAX_RECIPIENTS + 1]
        for block in bounce_report._split_merged(blocks):
            failure = bounce_report._failure(block)
            if failure is not None and len(found) < bounce_report.MAX_RECIPIENTS:
                found.append(failure)
    return bounce_report.Report("delivery report", tuple(found))


def _reference_texts(msg, parts=None) -> list[str]:
    texts = []
    for part in own_parts(msg.message):
        kind = part.get_content_type()
        if kind.split()[0] == "text/plain" and not part.get_filename():
            texts.append(part_text(part, bounce_report.MAX_SCAN))
        elif kind.startswith("multipart/") and isinstance(part.get_payload(), str):
            texts.append(part.get_payload()[:bounce_report.MAX_SCAN])
    return texts


def _reference_calendar_events(msg):
    newest = {}
    for part in own_parts(msg):
        if part.get_content_type() not in invitations.CALENDAR_TYPES:
            continue
        try:
            method_param = str(part.get_param("method") or "").strip()
            events = invitations._calendar_events(part_text(part, invitations.MAX_CALENDAR),
                                                  method_param)
        except Exception:
            continue
        for event in events:
            key = (event.invitation.method, event.invitation.uid)
            if key not in newest or newest[key].invitation.revision < event.invitation.revision:
                newest[key] = event
    return tuple(newest.values())


def _reference_invitations(ctx):
    events = _reference_calendar_events(ctx.msg.message)
    if not events:
        return invitations.PASS
    actions, notes = [], []
    for event in events:
        handler = (invitations._reply if event.invitation.method == "REPLY"
                   else invitations._for_recipients)
        actions.extend(handler(ctx, event, notes))
    done = [f"{a.method} {a.uid} for {a.user}" for a in actions]
    detail = "; ".join(done + notes)[:1000]
    return invitations.Result("hit" if actions else "pass", detail=detail,
                              invitations=tuple(actions))


def _reference_auto_reply_reason(msg, box, present=None):
    present = automatic.header_names(msg.message)
    submitted = automatic._header(msg.message, "Auto-Submitted", present)
    if submitted and submitted.split(";")[0].strip().lower() != "no":
        return f"Auto-Submitted: {submitted[:60]}"
    found = automatic._listed_header(msg.message, box.rule_list("auto_reply_headers"), present)
    if found:
        return f"header {found}"
    subject = reference_fold(msg.subject[:automatic._HEADER_TEXT])
    prefix = next((p for p in automatic._folded(box.rule_list("auto_reply_subject_prefixes"))
                   if subject.startswith(p)), None)
    if prefix:
        ms_header = automatic._listed_header(msg.message, box.rule_list("auto_reply_ms_headers"),
                                             present)
        if ms_header:
            return f"subject {prefix!r} with {ms_header}"
    return None


class ReferenceContext(context.Context):
    """Facts rebuilt per message, as before the caches."""

    @cached_property
    def free_mail(self):
        return frozenset(d.lower() for d in self.box.rule_list("free_mail_domains"))

    def folded_list(self, name):
        return tuple(f for f in (reference_fold(v) for v in self.box.rule_list(name)) if f)

    @cached_property
    def header_names(self):
        raise AssertionError("the plain code reads no shared header names")

    @cached_property
    def thread(self):
        from sink.pipeline import threads
        return self.records.thread(self.box.address, threads.followed_ids(self.msg.message))

    @cached_property
    def auto_reply(self):
        reason = automatic.auto_reply_reason(self.msg, self.box)
        return None if reason is None or automatic.is_bounce(self) else reason

    @cached_property
    def automatic(self):
        if self.auto_reply:
            return self.auto_reply
        if automatic.is_bounce(self):
            return "a delivery report"
        return automatic.automatic_reason(self.msg, self.box)

    @cached_property
    def delivery_report(self):
        return bounce_report.read_report(self.msg)


def reference_evaluate(msg, box, directory, seen, records=None) -> Decision:
    """``evaluate`` as it was: every result's records looked at, every trace entry new."""
    ctx = ReferenceContext(msg, box, directory, seen,
                           records=MemoryRecords() if records is None else records)
    found: dict[str, list] = {kind: [] for kind in RECORD_KINDS}
    trace: list[TraceEntry] = []
    verdict = Verdict.NOT_PROCESSED
    rules = [chain.Rule(r.name, _reference_invitations) if r.name == "invitations" else r
             for r in chain.chain_for(box, chain.own_rules(box))]
    for rule in rules:
        result = rule.run(ctx)
        trace.append(TraceEntry(rule.name, result.outcome, result.detail))
        if result.direction is not None:
            ctx.direction = result.direction
        if result.completed is not None:
            ctx.completed = result.completed
        for kind in RECORD_KINDS:
            found[kind].extend(getattr(result, kind))
        if result.verdict:
            verdict = result.verdict
            break
    return Decision(verdict=verdict, direction=ctx.direction, trace=tuple(trace),
                    dedup_keys=ctx.dedup_keys, **{k: tuple(v) for k, v in found.items()})


@pytest.fixture
def plain_code(monkeypatch):
    """A context manager putting the plain paths in place of the fast ones."""
    @contextmanager
    def in_place():
        with monkeypatch.context() as patch:
            patch.setattr(bounce_report, "rfc3464", _reference_rfc3464)
            patch.setattr(bounce_report, "_texts", _reference_texts)
            patch.setattr(context, "folded_references", _reference_folded_references)
            patch.setattr(context, "may_fold_to_colon", lambda text: True)
            patch.setattr(context, "fold", reference_fold)
            patch.setattr(automatic, "auto_reply_reason", _reference_auto_reply_reason)
            yield
    return in_place


# ------------------------------------------------------------------ the differential

def _decisions(run, parsed, box, directory) -> list[Decision]:
    """Each message decided in turn, with the bench's dedup memory (so DUPLICATE is met)."""
    seen_keys: set = set()
    out = []
    for msg in parsed:
        decision = run(msg, box, directory, lambda keys: any(k in seen_keys for k in keys))
        if decision.verdict != Verdict.DUPLICATE:
            seen_keys.update(decision.dedup_keys)
        out.append(decision)
    return out


def _compare(parsed, boxes, directory, plain_code) -> int:
    """Fast and plain decisions of every message in every box; returns how many compared."""
    fast = {b.address: _decisions(chain.evaluate, parsed, b, directory) for b in boxes}
    with warnings.catch_warnings(), plain_code():
        warnings.simplefilter("ignore")                # unidecode and lone surrogates
        plain = {b.address: _decisions(reference_evaluate, parsed, b, directory)
                 for b in boxes}
    compared = 0
    for address in fast:
        for i, (f, p) in enumerate(zip(fast[address], plain[address])):
            assert f == p, (address, i, f.verdict, p.verdict)
            compared += 1
    return compared


def _boxes(*boxes: tuple[str, dict]):
    return parse_config({"boxes": [{"address": a, **s} for a, s in boxes]}).boxes


@pytest.fixture(scope="module")
def bench_directory(tmp_path_factory):
    from bench.rules_profile import setup
    return setup(tmp_path_factory.mktemp("bench"))


@pytest.mark.parametrize("profile,count", [("4k-1", 2000), ("100k-1", 600)])
def test_bench_corpus_decisions_identical(profile, count, bench_directory, plain_code,
                                          capsys):
    box, directory = bench_directory
    parsed = [parse_message(m.raw) for m in corpus.build(profile, count, seed=101)]
    kinds = {}
    compared = _compare(parsed, [box], directory, plain_code)
    for d in _decisions(chain.evaluate, parsed, box, directory):
        for kind in ("invitations", "bounces", "activities"):
            kinds[kind] = kinds.get(kind, 0) + bool(d.records(kind))
    with capsys.disabled():
        print(f"\n{profile}: {compared} decisions identical; with invitations "
              f"{kinds['invitations']}, bounces {kinds['bounces']}, activities "
              f"{kinds['activities']}")
    assert compared == count
    assert kinds["invitations"] and kinds["bounces"] and kinds["activities"]


def _real_world_mail() -> list[Path]:
    return sorted(p for p in DATA.rglob("*") if p.suffix in (".eml", ".tnef") and p.is_file())


def test_real_world_corpora_decisions_identical(directory, plain_code, capsys):
    """Every message under tests/data (bounces, auto-replies, TNEF), in a plain box and in a
    help-desk box with the box's own rules off and on."""
    files = _real_world_mail()
    parsed = [parse_message(p.read_bytes()) for p in files]
    boxes = _boxes(("crm@firma.cz", {}),
                   ("crm-support@firma.cz", {"support_addresses": ["crm-support@firma.cz"],
                                             "record_auto_replies": True}),
                   ("crm-sales@firma.cz", {"block_free_mail": True}))
    compared = _compare(parsed, boxes, directory, plain_code)
    with capsys.disabled():
        print(f"\nreal-world corpora: {len(files)} messages x {len(boxes)} boxes = {compared} "
              "decisions identical")
    assert len(files) >= 600
    assert compared == len(files) * len(boxes)


# ------------------------------------------------------------------ the parts, read once

def test_own_parts_read_once_are_own_parts(directory):
    """read_own_parts yields what own_parts yields, with each part's type."""
    messages = [parse_message(p.read_bytes()).message for p in _real_world_mail()]
    messages += [parse_message(m.raw).message for m in corpus.build("4k-1", 300, seed=7)]
    nested = 0
    for msg in messages:
        parts = read_own_parts(msg)
        assert [p for p, _ in parts.parts] == list(own_parts(msg))
        assert [k for _, k in parts.parts] == [p.get_content_type() for p in own_parts(msg)]
        nested += len(parts.parts) > 1
    assert nested > 100
    assert read_own_parts(None).parts == ()


# ------------------------------------------------------------------ the colon prefilter

def test_colon_like_characters_are_every_one_in_unicode():
    """The characters whose fold holds ':' are exactly textnorm's list, and no combining mark
    after one takes its colon away: so a text with none of them folds to one without ':'."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        found = {chr(c) for c in range(0x110000) if ":" in reference_fold(chr(c))}
        marks = [chr(c) for c in range(0x300, 0x110000) if unicodedata.combining(chr(c))]
        assert all(":" in reference_fold(c + m) for c in found for m in marks)
    assert found == set(textnorm._COLON_LIKE)


_COLONISH = st.sampled_from([*textnorm._COLON_LIKE, "\u0301", "\u0308", "\uff9e", "a", " "])


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.text(), st.text(alphabet=st.one_of(st.characters(), _COLONISH))))
def test_colon_prefilter_is_exact(text):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert may_fold_to_colon(text) == (":" in fold(text))


# ------------------------------------------------------------------ the keyword prefilter

_KEYWORD = st.one_of(
    st.sampled_from([w for words in KEYWORDS.values() for w in words]),
    st.sampled_from(["ZAKÁZKA", "úkol", "ＯＲＤＥＲ", "proJEKT", "xorder", "task_", "OBJEDNÁVKA"]))
_SEPARATOR = st.sampled_from([":", ": ", " :", "：", "::", "-", "\n", " ", ".", ",", "#", ""])
_NUMBER = st.from_regex(r"[0-9]{1,5}(-[0-9]{1,3})?[.,]?", fullmatch=True)
_WORD = st.sampled_from(["E-mail", "p1", "p-", "Meeting", "neznámý", " ", "\n"])
_REFERENCE = st.tuples(_KEYWORD, _SEPARATOR, _NUMBER, _WORD, _WORD).map("".join)
_KEYWORD_TEXT = st.lists(st.one_of(_REFERENCE, _KEYWORD, _SEPARATOR, _NUMBER, _WORD,
                                   st.text(max_size=5)), max_size=20).map("".join)


@settings(max_examples=600, deadline=None)
@given(st.one_of(st.text(), _KEYWORD_TEXT))
def test_reference_prefilters_change_no_reference(text):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = reference_references(text, KEYWORDS)
        assert find_references(text, KEYWORDS) == expected
        assert folded_references(fold(text), KEYWORDS) == expected


def test_keyword_text_finds_references():
    """The strategy above does reach the regex: a reference is found in it."""
    assert [(r.kind, r.number) for r in find_references("ZAKÁZKA:2023-015 e-mail p2",
                                                        KEYWORDS)] == [("contract", "2023-015")]
    assert find_references("xorder:5 and order :6", KEYWORDS) == []


# ------------------------------------------------------------------ the transliteration

def _unidecode(text: str) -> str:
    from unidecode import unidecode
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return unidecode(text)


@settings(max_examples=500, deadline=None)
@given(st.one_of(
    st.text(alphabet=st.characters(blacklist_categories=())),          # surrogates too
    st.text(alphabet=st.sampled_from("ěščřžýáíéúůťďň ĚŠČŘŽÝÁÍÉÚŮ ßæœ€ a\ufffe\U0001f600"
                                     "\u0301北京")),
    st.lists(st.characters(min_codepoint=0x80, max_codepoint=0x3000), min_size=100,
             max_size=300).map("".join)))                              # > 128 distinct
def test_transliteration_is_unidecode(text):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert textnorm._transliterate(text) == _unidecode(text)


def test_transliteration_of_a_czech_mail():
    text = "Dobrý den,\n\nposíláme upravenou nabídku. Straße, Œuvre, 10 €.\n" * 40
    assert textnorm._transliterate(text) == _unidecode(text)
    assert textnorm._transliterate("x" * 10) == "x" * 10
