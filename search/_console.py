"""The command line's terminal output: the console, progress bars, metric lines, and the
watcher that draws a search's events (the search API itself never prints)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from analysis import check_attacks

from ._events import (
    EvaluationDone,
    EvaluationProgress,
    Event,
    FinalStageStarted,
    SearchStarted,
    StopRequested,
    TrialsEnded,
    TrialSkipped,
    WarmStartsStarted,
    WarmStartsTrained,
)

console = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 160)

__all__ = ["console", "progress_bar", "format_metrics", "attack_list", "Watcher", "say"]


def say(text: str) -> None:
    """One line to the terminal (standard error), as written."""
    console.print(text, markup=False, highlight=False)


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


class Watcher:
    """Draws a search's events: where to watch it, the warm starts, the final stage's progress
    (a bar per evaluation and stage on a terminal, a line per stage finished in a log). Use it
    as a context manager, so that a bar or spinner never outlives the command."""

    def __init__(self) -> None:
        self._stack: list[Any] = []
        self._status = None
        self._bar: Callable[[str, int, int], None] | None = None

    def __enter__(self) -> Watcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop_status()
        while self._stack:
            self._stack.pop().__exit__(None, None, None)

    def _stop_status(self) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None

    def __call__(self, event: Event) -> None:
        if isinstance(event, SearchStarted):
            self._started(event)
        elif isinstance(event, WarmStartsStarted):
            self._status = console.status("training the warm starts before the trials start")
            self._status.start()
        elif isinstance(event, WarmStartsTrained):
            self._stop_status()
            if event.count:
                say(f"CE warm start: {event.count} trained in {event.seconds:.0f} s -> "
                    f"{event.folder}")
        elif isinstance(event, TrialsEnded):
            self._ended(event)
        elif isinstance(event, StopRequested):
            say("stopping once every running trial's last epoch is checkpointed; Ctrl-C again "
                "to stop at once")
        elif isinstance(event, TrialSkipped):
            say(f"trial {event.trial_id}: {event.reason}, skipped")
        elif isinstance(event, FinalStageStarted):
            say(f"final stage: AutoAttack ({event.audit}) on {event.examples} test images for "
                f"{event.evaluations} evaluation(s) -> {event.folder}")
        elif isinstance(event, EvaluationProgress):
            self._progress(event)
        elif isinstance(event, EvaluationDone):
            say(f"final stage: {event.name}.json done ({event.done}/{event.total})")

    def _started(self, event: SearchStarted) -> None:
        uri = event.experiment.uri
        if event.resumed:
            say(f"resuming {event.experiment}")
            return
        say(f"experiment:        {uri}")
        if event.dashboard:
            say(f"Ray dashboard:     {event.dashboard}")
        say(f"TensorBoard:       tensorboard --logdir {uri}")
        say(f"Optuna dashboard:  clustune dashboard {uri}  (or optuna-dashboard "
            f"{event.study_storage})")
        say(f"trial table:       clustune status {uri}")

    def _ended(self, event: TrialsEnded) -> None:
        from analysis import to_rich, trials_table

        console.print(to_rich(trials_table(event.experiment, top=10)))
        if event.stopped_early:
            say(f"search stopped early after {event.seconds:.0f} s: continue it with "
                f"`clustune resume {event.experiment.path.uri}`")
        else:
            say(f"search finished: {len(event.experiment.trials)} trials in "
                f"{event.seconds:.0f} s")

    def _progress(self, event: EvaluationProgress) -> None:
        if not console.is_terminal:
            if event.done >= event.total:
                say(f"final stage: {event.name} {event.stage} {event.done}/{event.total}")
            return
        if self._bar is None:
            context = progress_bar()
            self._bar = context.__enter__()
            self._stack.append(context)
        self._bar(f"{event.name}: {event.stage}", event.done, event.total)
