"""Evaluating a box's admin rules (SPEC 5 "Admin rules"): conditions on from / to / subject /
body, ``all`` or ``any`` of them, the first rule whose conditions hold wins.

Pure and total: whatever the text, evaluation returns (a hostile body cannot make it raise).
Every field is cut to :data:`sink.config.rules.MAX_TEXT` characters first; a regex runs with a
timeout (:data:`REGEX_SECONDS`, the ``regex`` module's, which it checks now and then, so a
search may overrun it a little), all of a message's searches within :data:`REGEX_BUDGET`;
a regex that times out counts as not holding - the trace says so - rather than stalling a
storage worker. (Deterministic it is not: a pattern that needs longer than its time decides
differently on a slower machine; the trace shows when that happened.)
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from sink.config.rules import MAX_TEXT, AdminRule, Condition
from sink.mail.textnorm import fold

REGEX_SECONDS = 0.25        # one search
REGEX_BUDGET = 1.0          # every search for one message together


@dataclass(frozen=True)
class Fields:
    """The texts conditions read: addresses as compared (lower-cased, no display names)."""
    sender: str
    to: tuple[str, ...]           # To and Cc
    subject: str
    body: str
    folded: tuple[tuple[str, str], ...] = ()   # (field, text already folded), e.g. the body

    def values(self, name: str) -> tuple[str, ...]:
        if name == "from":
            return (self.sender,)
        if name == "to":
            return self.to
        return (self.subject if name == "subject" else self.body,)


@dataclass(frozen=True)
class Match:
    rule: AdminRule | None        # None: no rule held (``notes`` says what timed out)
    number: str | None = None     # update_ticket: the first group of the first regex
    notes: tuple[str, ...] = ()   # regex timeouts met on the way


@dataclass
class _Run:
    fields: Fields
    folded: dict[str, tuple[str, ...]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    deadline: float = field(default_factory=lambda: time.monotonic() + REGEX_BUDGET)

    def folded_values(self, name: str) -> tuple[str, ...]:
        if name not in self.folded:
            known = dict(self.fields.folded).get(name)
            self.folded[name] = ((known[:MAX_TEXT],) if known is not None
                                 else tuple(fold(v) for v in self.fields.values(name)))
        return self.folded[name]


def _text_op(op: str, value: str, wanted: str) -> bool:
    if op == "contains":
        return wanted in value
    if op == "not_contains":
        return wanted not in value
    if op == "equals":
        return value == wanted
    if op == "starts_with":
        return value.startswith(wanted)
    return value.endswith(wanted)            # ends_with


def _regex(run: _Run, rule: AdminRule, cond: Condition):
    for value in run.fields.values(cond.field):
        left = min(REGEX_SECONDS, run.deadline - time.monotonic())
        if left <= 0:
            run.notes.append(f"admin:{rule.name}: no regex time left for this message")
            return None
        try:
            found = cond.pattern.search(value, timeout=left)
        except TimeoutError:
            run.notes.append(f"admin:{rule.name}: regex {cond.value!r} timed out")
            continue
        if found:
            return found
    return None


def holds(run: _Run, rule: AdminRule, cond: Condition):
    """Whether ``cond`` holds (for ``to``: for one of the addresses); a regex answers with its
    match object."""
    if cond.op == "regex":
        return _regex(run, rule, cond)
    return any(_text_op(cond.op, v, cond.folded) for v in run.folded_values(cond.field))


def _rule_holds(run: _Run, rule: AdminRule) -> tuple[bool, str | None]:
    number = None
    combine = all if rule.match == "all" else any
    results = []
    first_regex = rule.number_condition()
    for cond in rule.conditions:
        result = holds(run, rule, cond)
        if cond is first_regex and result:
            number = result.group(1) if result.re.groups else None
        results.append(bool(result))
    return combine(results), number


def first_match(rules: tuple[AdminRule, ...], fields: Fields) -> Match | None:
    """The first rule whose conditions hold, with what it captured; when none holds but a
    regex timed out, a Match with ``rule`` None carrying the notes."""
    bounded = Fields(fields.sender[:MAX_TEXT], tuple(a[:MAX_TEXT] for a in fields.to[:1000]),
                     fields.subject[:MAX_TEXT], fields.body[:MAX_TEXT], fields.folded)
    run = _Run(bounded)
    for rule in rules:
        ok, number = _rule_holds(run, rule)
        if ok:
            return Match(rule, number.strip() if number else None, tuple(run.notes))
    return Match(None, None, tuple(run.notes)) if run.notes else None
