"""What one rule returns: an outcome for the trace, and optionally a verdict (which ends the
chain), records to create as plain data, and the two things a rule may hand to the rules after
it - nothing else passes between rules:

- ``direction``: the message's direction from here on (the ``direction`` rule sets it; ``incoming``
  hands a message without a recipient user over to ``outgoing`` by setting it to outgoing);
- ``completed``: whether the activities made from it are completed (a bounce's are not).
"""

from __future__ import annotations

from dataclasses import dataclass

from sink.pipeline.decision import (ActivityAction, BounceAction, FlagAction,
                                    ForbiddenAction, InvitationAction, SpamMarkAction,
                                    TaskAction, TicketAction)


@dataclass(frozen=True)
class Result:
    outcome: str = "pass"            # "pass" | "hit" | "skip", for the trace
    verdict: str | None = None       # ends the chain
    detail: str = ""
    direction: str | None = None     # handed over: see the module docstring
    completed: bool | None = None    # handed over: see the module docstring
    activities: tuple[ActivityAction, ...] = ()
    tasks: tuple[TaskAction, ...] = ()
    contact_flags: tuple[FlagAction, ...] = ()
    forbidden: tuple[ForbiddenAction, ...] = ()
    invitations: tuple[InvitationAction, ...] = ()
    bounces: tuple[BounceAction, ...] = ()
    tickets: tuple[TicketAction, ...] = ()
    spam_marks: tuple[SpamMarkAction, ...] = ()


PASS = Result()


def hit(verdict: str, detail: str = "") -> Result:
    return Result("hit", verdict, detail)
