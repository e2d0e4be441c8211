"""The rule pipeline: a pure function from a parsed message to a Decision.

``evaluate(msg, box, directory, seen, records)`` runs the rules below in this order. A rule that
returns a verdict ends the pipeline (a *terminal* rule); every rule leaves one trace entry. There
is no I/O here: ``directory`` is a read-only snapshot, ``seen`` answers whether dedup keys were
already processed for the box, and ``records`` (:mod:`sink.pipeline.records`) answers read-only
questions about tasks, flags, forbidden addresses and invitations.
"""

from __future__ import annotations

from sink.config import BoxConfig
from sink.directory import Directory
from sink.mail.parse import ParsedMessage
from sink.pipeline import bounces, invitations, rules, side_effects, troubleshooting
from sink.pipeline.context import Context, Seen, dedup_keys
from sink.pipeline.decision import Decision, TraceEntry, Verdict
from sink.pipeline.records import MemoryRecords, Records

# The order of SPEC section 5, in one place. Names are stable: they appear in stored traces.
PIPELINE = (
    ("duplicate", rules.duplicate),                  # 1
    ("troubleshooting", troubleshooting.troubleshooting),  # 2
    ("spam", rules.spam),                            # 3
    ("system-sender", rules.system_sender),          # 4
    ("inform-other-users", rules.inform_other_users),  # 5
    ("ignored-subject", rules.ignored_subject),      # 6
    ("exception-address", rules.exception_address),  # 7
    ("exception-domain", rules.exception_domain),    # 7
    ("opt-out", side_effects.opt_out),               # 8
    ("bounce", bounces.bounce),                      # 8
    ("invitations", invitations.invitations),        # 8
    ("new-task", side_effects.new_task),             # 8
    ("direction", rules.direction),                  # 9
    ("incoming", rules.incoming),                    # 10
    ("outgoing", rules.outgoing),                    # 11
)

RULE_NAMES = tuple(name for name, _ in PIPELINE)
RECORDS = ("activities", "tasks", "contact_flags", "forbidden", "invitations")


def evaluate(msg: ParsedMessage, box: BoxConfig, directory: Directory, seen: Seen,
             records: Records | None = None) -> Decision:
    records = MemoryRecords() if records is None else records
    ctx = Context(msg, box, directory, seen, records=records)
    decision = Decision(verdict=Verdict.NOT_PROCESSED, dedup_keys=dedup_keys(msg))
    for name, rule in PIPELINE:
        result = rule(ctx)
        decision.trace.append(TraceEntry(name, result.outcome, result.detail))
        if result.direction:
            ctx.direction = result.direction
        ctx.facts.update(result.facts)
        for kind in RECORDS:
            getattr(decision, kind).extend(getattr(result, kind))
        if result.verdict:
            decision.verdict = result.verdict
            break
    decision.direction = ctx.direction
    return decision


__all__ = ["PIPELINE", "RULE_NAMES", "evaluate", "Decision", "Verdict"]
