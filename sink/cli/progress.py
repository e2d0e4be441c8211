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
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeRemainingColumn)
    # what the command prints meanwhile goes through rich's proxy of stdout: unwrapped and
    # uncoloured, so a JSON line stays exactly the line a pipe would get
    console = Console(soft_wrap=True, highlight=False)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn(), transient=True, console=console) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n=1: bar.advance(task, n)
