"""Store-then-decide: raw bytes, message row, rule outcome and records in one transaction per
box. Every ingress ends here - through the storage's ``submit`` (:mod:`sink.storage`), which
stores many messages in one transaction, each delivery in its own savepoint, or directly
(``sink ingest``: :meth:`Intake.deliver`).

- :mod:`~sink.intake.core`: :class:`Intake` - prepare (digest, parse, unwrap), store and decide
  in one body, the log lines;
- :mod:`~sink.intake.replay`: ``sink replay`` of failed messages;
- :mod:`~sink.intake.model`: Envelope, Prepared, Delivery;
- :mod:`~sink.intake.rows`: the statements every message runs;
- :mod:`~sink.intake.races`: retrying unique-key races, classifying failures;
- :mod:`~sink.intake.directory_cache`: the directory snapshot the rules read.

Guarantees, in the order they are established:
- the same bytes for the same box are stored once (unique ``(box, sha256)``): an MTA that lost
  our 250 and resends gets 250 again without a second row;
- a message whose dedup key was already processed is stored as DUPLICATE and creates nothing
  (the keys are unique rows, so two instances racing on PostgreSQL cannot both process it);
- a rule that raises leaves the message stored as ``failed`` with the error, never lost;
- a storage failure raises :class:`~sink.errors.TransientStorageError`: nothing was committed,
  the caller answers 4xx and the MTA retries.
"""

from sink.intake.core import Intake
from sink.intake.model import UNWRAPPED, Delivery, Envelope, Prepared
from sink.intake.races import RACE_RETRIES

__all__ = ["Intake", "Envelope", "Delivery", "Prepared", "UNWRAPPED", "RACE_RETRIES"]
