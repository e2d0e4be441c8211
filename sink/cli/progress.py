"""Progress of a long command on a terminal (rich): nothing when standard output is not a
terminal or the command prints JSON for a program, so pipes and scripts see the same output
as before."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Callable, Iterator


def wanted(json_output: bool = False) -> bool:
    return not json_output and sys.stdout.isatty()


@contextmanager
def progress(label: str, total: int | None, *, enabled: bool | None = None
             ) -> Iterator[Callable[[int], None]]:
    """``with progress("replay", len(ids)) as advance: ... advance(1)``; lines written to
    stdout meanwhile appear above the bar."""
    if enabled is None:
        enabled = wanted()
    if not enabled:
        yield lambda n=1: None
        return
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeRemainingColumn)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn(), transient=True) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n=1: bar.advance(task, n)
