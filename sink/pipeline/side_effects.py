"""SPEC 5 step 8: side effects that do not end the pipeline — opt-out (seed 000 ch. 13) and
new task (15.6) here; bounces and invitations in their own modules.

Contacts and companies are found by an exact address (a company by one of its addresses),
never by domain. Only flags whose value changes are reported; an address nobody has becomes a
forbidden address, once.
"""

from __future__ import annotations

from typing import Iterable, Mapping

from sink.pipeline.context import Context
from sink.pipeline.decision import FlagAction, ForbiddenAction, TaskAction
from sink.pipeline.result import PASS, Result
from sink.mail.textnorm import fold

DO_NOT_SEND, BROKEN = "do-not-send", "broken"
OPT_OUT_FLAGS: Mapping[str, bool] = {"allow_emails": False, "allow_bulk_emails": False}
NEW_TASK = "new-task"


def entities_of(ctx: Context, address: str) -> tuple[tuple[str, int], ...]:
    """(kind, id) of every contact and company with exactly this address."""
    return (tuple(("contact", c.id) for c in ctx.directory.contacts.get(address, ()))
            + tuple(("company", c.id) for c in ctx.directory.companies_by_address.get(address, ())))


def set_flags(ctx: Context, addresses: Iterable[str], wanted: Mapping[str, bool]
              ) -> tuple[tuple[FlagAction, ...], tuple[str, ...]]:
    """Flag changes for everyone with one of ``addresses``, and the addresses nobody has."""
    changes: list[FlagAction] = []
    unknown: list[str] = []
    done: set[tuple[str, int]] = set()
    for address in dict.fromkeys(addresses):
        entities = entities_of(ctx, address)
        if not entities:
            unknown.append(address)
        for kind, entity_id in entities:
            if (kind, entity_id) in done:
                continue
            done.add((kind, entity_id))
            current = ctx.records.flags(kind, entity_id)
            changed = tuple((f, v) for f, v in wanted.items() if current.get(f) != v)
            if changed:
                changes.append(FlagAction(kind, entity_id, address, changed))
    return tuple(changes), tuple(unknown)


def forbid(ctx: Context, addresses: Iterable[str], kind: str) -> tuple[ForbiddenAction, ...]:
    """Forbidden addresses of ``kind`` not yet recorded."""
    return tuple(ForbiddenAction(a, kind) for a in dict.fromkeys(addresses)
                 if not ctx.records.forbidden(a, kind))


def describe(flags: tuple[FlagAction, ...], forbidden: tuple[ForbiddenAction, ...],
             unchanged: str = "") -> str:
    parts = [f"{f.entity} {f.email}: " + ", ".join(f"{k}={str(v).lower()}" for k, v in f.changes)
             for f in flags]
    parts += [f"forbidden {f.type} {f.email}" for f in forbidden]
    return "; ".join(parts) or unchanged


# --------------------------------------------------------------------------------- opt-out

def opt_out(ctx: Context) -> Result:
    phrase = next((p for p in ctx.folded_list("optout_phrases") if p in ctx.subject), None)
    if phrase is None:
        return PASS
    sender = ctx.sender
    if not sender or ctx.is_ours(sender):
        return Result("skip", detail=f"{phrase!r} from our own address")
    if ctx.box.authenticated_side_effects and not ctx.msg.authenticated:
        # SPEC 2.3: anybody can write any From; with this box setting only a sender whose
        # mail is authenticated (DKIM / trusted Authentication-Results) may opt out
        return Result("skip", detail=f"{phrase!r}: {sender} is not authenticated "
                                     f"(dkim={ctx.msg.dkim}), authenticated_side_effects: "
                                     f"nothing changed")
    flags, unknown = set_flags(ctx, (sender,), OPT_OUT_FLAGS)
    forbidden = forbid(ctx, unknown, DO_NOT_SEND)
    return Result("hit", detail=f"{phrase!r}: " + describe(flags, forbidden, "already recorded"),
                  contact_flags=flags, forbidden=forbidden)


# --------------------------------------------------------------------------------- new task

def _after_prefix(subject: str, prefix: str) -> str:
    """The subject after the prefix's colon(s); the whole subject when nothing follows."""
    colons = prefix.count(":")
    rest = subject.split(":", colons)[-1] if colons and subject.count(":") >= colons else ""
    return rest.strip() or subject


def _new_task_prefix(ctx: Context) -> str | None:
    for prefix in ctx.box.rule_list("new_task_prefixes"):
        head = fold(prefix).rstrip(":").strip()
        if head and ctx.subject.startswith(head) and \
                ctx.subject[len(head):].lstrip().startswith(":" if prefix.endswith(":") else ""):
            return prefix
    return None


def new_task(ctx: Context) -> Result:
    prefix = _new_task_prefix(ctx)
    if prefix is None:
        return PASS
    approver = ctx.user(ctx.sender)
    if approver is None:
        return Result("skip", detail="unknown user: the sender is not a user, no task")
    solvers = tuple(u.email for u in ctx.recipient_users)
    task = TaskAction(action="created", number=None, subject=_after_prefix(ctx.msg.subject, prefix),
                      solvers=solvers, approver=approver.email, origin=NEW_TASK)
    return Result("hit", detail=f"task for {', '.join(solvers) or 'no solver'}, "
                                f"approver {approver.email}", tasks=(task,))
