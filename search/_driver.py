"""The driver's side of a running search: a Ctrl-C that loses and repeats nothing, and a retry
that keeps every recorded epoch.

Ray Tune writes a trial's result before its checkpoint is recorded; stopped in between (its own
Ctrl-C handling does that), a trial resumes from its previous checkpoint and runs the recorded
epoch again. So clustune takes SIGINT itself: the first Ctrl-C waits until every running
trial's last result has its checkpoint, then asks Tune to stop (SIGUSR1, Tune's own stop
signal), which saves the search state and ends the run; a second Ctrl-C stops at once.

The driver writes each trial's result.json (and progress.csv) in a staging folder and copies
them to the experiment every few minutes; when a crashed trial restarts from its checkpoint,
Ray first copies the experiment's copy back over the staging file, so rows written since the
last copy vanished (seen as a retried trial whose first epochs were missing). So before a
retry the staging files are copied to the experiment (:class:`CurrentResultsBeforeRetry`).

The state lives in this module, not in the callbacks: Tune pickles its callbacks with the
search and a resumed search runs the restored copies.
"""

from __future__ import annotations

import os
import signal
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
from ray import tune

from ._events import OnEvent, StopRequested, ignore

__all__ = ["GracefulInterrupt", "CurrentResultsBeforeRetry", "graceful_interrupts"]


class _State:
    requested = False  # a Ctrl-C is waiting for a consistent point
    signalled = False  # Tune has been asked to stop
    awaiting: set[str] = set()  # trials whose last result has no checkpoint yet
    on_event: OnEvent = ignore


_STATE = _State()


def _on_sigint(signum: int, frame: Any) -> None:
    if _STATE.requested:
        raise KeyboardInterrupt
    _STATE.requested = True
    _STATE.on_event(StopRequested())


@contextmanager
def graceful_interrupts(on_event: OnEvent = ignore):
    """Take SIGINT for the duration of a search (in the main thread; elsewhere a no-op); a
    first Ctrl-C is told to on_event."""
    _STATE.requested, _STATE.signalled, _STATE.awaiting = False, False, set()
    _STATE.on_event = on_event
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"  # Tune keeps its SIGUSR1 stop handler
    try:
        previous = signal.signal(signal.SIGINT, _on_sigint)
    except ValueError:  # not the main thread: Tune cannot install its handlers either
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


class GracefulInterrupt(tune.Callback):
    """Tracks results awaiting their checkpoint; stops Tune at the first consistent point
    after a Ctrl-C."""

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict,
                        **info: Any) -> None:
        _STATE.awaiting.add(trial.trial_id)

    def on_checkpoint(self, iteration: int, trials: list, trial: Any, checkpoint: Any,
                      **info: Any) -> None:
        _STATE.awaiting.discard(trial.trial_id)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        _STATE.awaiting.discard(trial.trial_id)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        _STATE.awaiting.discard(trial.trial_id)

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        running = {t.trial_id for t in trials if t.status == "RUNNING"}
        if _STATE.requested and not _STATE.signalled and not (_STATE.awaiting & running):
            _STATE.signalled = True
            os.kill(os.getpid(), signal.SIGUSR1)


class CurrentResultsBeforeRetry(tune.Callback):
    """Copies a recovering trial's staged result files to the experiment, so the copy Ray
    restores them from when the trial restarts holds every row written so far."""

    FILES = ("result.json", "progress.csv")

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        storage = trial.storage
        for name in self.FILES:
            staged = Path(trial.local_path, name)
            if staged.is_file():
                pafs.copy_files(str(staged), f"{storage.trial_fs_path}/{name}",
                                destination_filesystem=storage.storage_filesystem)
