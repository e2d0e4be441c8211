"""The rule pipeline: a pure function from a parsed message to a :class:`Decision`.

No I/O here - no asyncio, SQLAlchemy or logging: the directory is a read-only snapshot, ``seen``
answers whether dedup keys were already processed for the box, and ``records``
(:mod:`sink.pipeline.records`) answers read-only questions about tasks, flags, forbidden
addresses and invitations. The map:

- :mod:`~sink.pipeline.chain`: the order of the rules (one place) and the loop running them;
- :mod:`~sink.pipeline.result` / :mod:`~sink.pipeline.decision`: what a rule returns, what the
  chain decides (records as plain data, a trace of every rule);
- :mod:`~sink.pipeline.context`: what every rule may read about the message in its box;
- the rules: :mod:`~sink.pipeline.filters` (terminal filters), :mod:`~sink.pipeline.troubleshooting`,
  :mod:`~sink.pipeline.side_effects` (opt-out, new task), :mod:`~sink.pipeline.bounces`,
  :mod:`~sink.pipeline.invitations`, :mod:`~sink.pipeline.activities` (direction, incoming,
  outgoing); :mod:`~sink.pipeline.references` finds ``Contract:NUMBER`` and the like.
"""

from sink.pipeline.chain import BUILT_IN, RULE_NAMES, Rule, chain_for, evaluate
from sink.pipeline.decision import Decision, Verdict

__all__ = ["BUILT_IN", "RULE_NAMES", "Rule", "chain_for", "evaluate", "Decision", "Verdict"]
