"""The rule chain: its order, in one place, and the loop that runs it.

A rule is a small named function from the :class:`Context` to a :class:`Result`. The chain runs
them in order; every rule leaves one trace entry, a rule that returns a verdict ends the chain
(a *terminal* rule), and the only things handed from one rule to the next are the Result's
``direction`` and ``completed`` (:mod:`sink.pipeline.result`). Names are stable: they appear
in stored traces.

Each box runs :func:`chain_for` its box: the built-in order of SPEC section 5 with the box's own
rules (admin rules, tickets: SPEC steps 7a and 7b) in their slot after the exception filters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from sink.config import BoxConfig
from sink.directory import Directory
from sink.mail.parse import ParsedMessage
from sink.pipeline import (activities, automatic, bounces, filters, helpdesk, invitations,
                           side_effects, troubleshooting)
from sink.pipeline.context import Context, Seen
from sink.pipeline.decision import RECORD_KINDS, Decision, TraceEntry, Verdict
from sink.pipeline.records import MemoryRecords, Records
from sink.pipeline.result import PASS, Result


@dataclass(frozen=True)
class Rule:
    name: str
    run: Callable[[Context], Result]


# SPEC section 5, in order.
BUILT_IN: tuple[Rule, ...] = (
    Rule("duplicate", filters.duplicate),                      # 1
    Rule("troubleshooting", troubleshooting.troubleshooting),  # 2
    Rule("spam", filters.spam),                                # 3
    Rule("auto-reply", automatic.auto_reply),                  # 3a
    Rule("loop", automatic.loop),                              # 3a
    Rule("system-sender", filters.system_sender),              # 4
    Rule("inform-other-users", filters.inform_other_users),    # 5
    Rule("ignored-subject", filters.ignored_subject),          # 6
    Rule("exception-address", filters.exception_address),      # 7
    Rule("exception-domain", filters.exception_domain),        # 7
    # <- a box's own rules go here (7a, 7b)
    Rule("opt-out", side_effects.opt_out),                     # 8
    Rule("bounce", bounces.bounce),                            # 8
    Rule("invitations", invitations.invitations),              # 8
    Rule("new-task", side_effects.new_task),                   # 8
    Rule("thread", helpdesk.thread),                           # threads
    Rule("direction", activities.direction),                   # 9
    Rule("incoming", activities.incoming),                     # 10
    Rule("outgoing", activities.outgoing),                     # 11
)
BOX_RULES_AFTER = "exception-domain"
RULE_NAMES = tuple(rule.name for rule in BUILT_IN)


def chain_for(box: BoxConfig, own: Sequence[Rule] = ()) -> tuple[Rule, ...]:
    """The chain a box runs: the built-in one with the box's ``own`` rules in their slot."""
    if not own:
        return BUILT_IN
    at = RULE_NAMES.index(BOX_RULES_AFTER) + 1
    return BUILT_IN[:at] + tuple(own) + BUILT_IN[at:]


def own_rules(box: BoxConfig) -> tuple[Rule, ...]:
    """A box's own rules, from its config: its admin rules in the order written (7a), then the
    ticket rule (7b) when the box makes tickets at all."""
    rules = [Rule(rule.trace_name, helpdesk.admin_rule(rule.name)) for rule in box.rules]
    if helpdesk.has_tickets(box):
        rules.append(Rule("tickets", helpdesk.tickets))
    return tuple(rules)


# Trace entries without a detail, shared by every message (a TraceEntry is an immutable value;
# building one costs more than finding it). Bounded: names come from the chain and the config.
_BARE_ENTRIES: dict[tuple[str, str], TraceEntry] = {}
_BARE_LIMIT = 4096


def _trace_entry(name: str, outcome: str, detail: str) -> TraceEntry:
    if detail:
        return TraceEntry(name, outcome, detail)
    entry = _BARE_ENTRIES.get((name, outcome))
    if entry is None:
        entry = TraceEntry(name, outcome, detail)
        if len(_BARE_ENTRIES) < _BARE_LIMIT:
            _BARE_ENTRIES[name, outcome] = entry
    return entry


def evaluate(msg: ParsedMessage, box: BoxConfig, directory: Directory, seen: Seen,
             records: Records | None = None, chain: Sequence[Rule] | None = None) -> Decision:
    """Run ``chain`` (default: the box's) on ``msg``; pure - ``directory`` is a snapshot,
    ``seen`` and ``records`` answer read-only questions (:mod:`sink.pipeline.records`)."""
    ctx = Context(msg, box, directory, seen, records=MemoryRecords() if records is None
                  else records)
    found: dict[str, list] = {kind: [] for kind in RECORD_KINDS}
    trace: list[TraceEntry] = []
    verdict = Verdict.NOT_PROCESSED
    for rule in chain_for(box, own_rules(box)) if chain is None else chain:
        result = rule.run(ctx)
        trace.append(_trace_entry(rule.name, result.outcome, result.detail))
        if result is PASS:
            continue         # most rules: nothing handed over, recorded or decided
        if result.direction is not None:
            ctx.direction = result.direction
        if result.completed is not None:
            ctx.completed = result.completed
        for kind in RECORD_KINDS:
            items = getattr(result, kind)
            if items:
                found[kind].extend(items)
        if result.verdict:
            verdict = result.verdict
            break
    return Decision(verdict=verdict, direction=ctx.direction, trace=tuple(trace),
                    dedup_keys=ctx.dedup_keys, **{k: tuple(v) for k, v in found.items()})
