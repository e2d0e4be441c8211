"""Two things every storing path does the same way: try again when another transaction won a
unique key, and turn a storage failure into the transient error the caller answers 4xx for."""

from __future__ import annotations

from typing import Callable, TypeVar

from sqlalchemy import exc as sa_exc

from sink.errors import TransientStorageError, classify

RACE_RETRIES = 3
T = TypeVar("T")


class RaceLost(TransientStorageError):
    """Every attempt lost a unique-key race: only this message is answered 4xx."""


def retry_races(attempt: Callable[[], T]) -> T:
    """``attempt()`` again while it raises IntegrityError: another session or instance committed
    the same bytes or dedup key first, and the next attempt sees its row (one PROCESSED, the
    rest DUPLICATE or already stored). ``attempt`` must leave nothing behind when it raises (its
    transaction or savepoint rolled back). Gives up as a transient error after RACE_RETRIES."""
    for _ in range(RACE_RETRIES):
        try:
            return attempt()
        except sa_exc.IntegrityError:
            continue
    raise RaceLost("kept racing on a unique key")


def transient(error: BaseException) -> TransientStorageError:
    """``error`` as the transient error to answer 4xx for; re-raises ``error`` itself when it
    is not transient (a bug of ours must not pass for a busy database)."""
    found = classify(error)
    if found is None:
        raise error
    return found
