"""Optuna through Ray Tune, told what the scheduler knows.

Ray's ``OptunaSearch`` reports a trial that ASHA stopped after one epoch to the study as
COMPLETE with its one-epoch score, so TPE mixes partial-budget scores with final ones. Here a
trial that ran its whole budget is COMPLETE with its final value, and one the scheduler stopped
is PRUNED at the epoch it reached (TPE ranks pruned trials by how far they got, then by their
last value); both keep their per-epoch values as Optuna intermediate values, which
optuna-dashboard draws as learning curves. The study of an experiment in cloud storage is
copied there each time Tune saves the searcher, so the copy is never older than the searcher's
saved state (a resume elsewhere finds every trial the searcher knows).

The study can also be newer than the saved search state: a driver killed after telling a
trial's end to the study, before Tune saved its state, leaves a trial the resumed search runs
again (deterministically, to the same values). Its reports to a trial the study has already
finished are dropped, not a crash of the resumed search.
"""

from __future__ import annotations

import sqlite3
import tempfile
from pathlib import Path
from typing import Any

import optuna
from ray.tune.search.optuna import OptunaSearch

from analysis import STUDY_FILE, study_file
from trainable import StoragePath, storage_path

__all__ = ["FidelityOptunaSearch", "upload_study"]


def upload_study(experiment: StoragePath) -> None:
    """Copy the driver's Optuna study to the experiment in cloud storage (a consistent copy,
    taken with sqlite's backup API while the search may be writing)."""
    local = study_file(experiment)
    if experiment.is_local or not local.is_file():
        return
    with tempfile.TemporaryDirectory() as scratch:
        snapshot = Path(scratch) / STUDY_FILE
        with sqlite3.connect(local) as source, sqlite3.connect(snapshot) as target:
            source.backup(target)
        (experiment / STUDY_FILE).upload(snapshot)


class FidelityOptunaSearch(OptunaSearch):
    """OptunaSearch that marks scheduler-stopped trials PRUNED.

    The Trainable reports ``trial_complete`` (True once its last epoch is done); Tune's own
    ``done`` is also set on a trial its scheduler stops, so it cannot tell the two apart.
    ``study_copy``: the URI of an experiment in cloud storage to copy the study to.
    """

    def __init__(self, *args: Any, study_copy: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.study_copy = study_copy

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        try:
            super().on_trial_result(trial_id, result)
        except optuna.exceptions.UpdateFinishedTrialError:
            self._completed_trials.add(trial_id)  # finished in the study before a resume

    def save(self, checkpoint_path: str) -> None:
        super().save(checkpoint_path)
        if self.study_copy:
            upload_study(storage_path(self.study_copy))

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None,
                          error: bool = False) -> None:
        single = not isinstance(self.metric, list)
        value = result.get(self.metric) if single and result else None
        if value is not None and trial_id not in self._completed_trials:
            # Tune hands the last epoch's result to on_trial_complete, not on_trial_result
            try:
                self._ot_trials[trial_id].report(value, result["training_iteration"])
            except optuna.exceptions.UpdateFinishedTrialError:
                self._completed_trials.add(trial_id)  # finished in the study before a resume
        stopped = value is not None and not error and not result.get("trial_complete", True)
        if not stopped or trial_id in self._completed_trials:
            try:
                super().on_trial_complete(trial_id, result, error)
            except optuna.exceptions.UpdateFinishedTrialError:
                self._completed_trials.add(trial_id)  # finished in the study before a resume
            return
        try:
            self._ot_study.tell(self._ot_trials[trial_id], state=optuna.trial.TrialState.PRUNED)
        except (ValueError, RuntimeError) as err:  # e.g. the trial was told already
            optuna.logging.get_logger(__name__).warning(str(err))
        self._completed_trials.add(trial_id)
