"""Terminal output shared by the commands: one-line errors, progress bars, metric lines."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from analysis import check_attacks
from trainable import ClustuneError

console = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 160)

__all__ = ["console", "UsageError", "progress_bar", "format_metrics", "attack_list"]


class UsageError(ClustuneError):
    """A problem with what the user asked for: one line, exit code 2."""


@contextmanager
def progress_bar() -> Iterator[Callable[[str, int, int], None]]:
    """A progress callback (stage, done, total) drawn as a bar on a terminal; silent when
    output goes to a file or pipe, where a bar is noise (and rich would end it with an empty
    line, before any error message)."""
    if not console.is_terminal:
        yield lambda stage, done, total: None
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn(), console=console, transient=True) as bar:
        tasks: dict[str, int] = {}

        def update(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total)
            bar.update(tasks[stage], completed=done)
            if done >= total:
                bar.remove_task(tasks.pop(stage))

        yield update


def format_metrics(m: dict, keys: tuple[str, ...]) -> str:
    parts = []
    for k in keys:
        if k in m and m[k] is not None:
            v = m[k]
            parts.append(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}")
    return "  ".join(parts)


def attack_list(text: str) -> list[str]:
    """An --attacks value: AutoAttack attack names, comma-separated, each once."""
    try:
        return check_attacks([a.strip() for a in text.split(",") if a.strip()])
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
