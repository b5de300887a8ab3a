"""Optuna through Ray Tune, told what the scheduler knows: Ray Tune's public ``Searcher``
interface over Optuna's public ask-and-tell and storage APIs (no private field of either).

A trial that ran its whole budget is COMPLETE with its final value; one the scheduler stopped
is PRUNED at the epoch it reached (TPE ranks pruned trials by how far they got, then by their
last value), so partial-budget scores are never mixed with final ones as if they were final.
Both keep their per-epoch values as Optuna intermediate values, which optuna-dashboard draws
as learning curves. The study of an experiment in cloud storage is copied there each time Tune
saves the searcher, so the copy is never older than the searcher's saved state (a resume
elsewhere finds every trial the searcher knows).

The study can also be newer than the saved search state: a driver killed after telling a
trial's end to the study, before Tune saved its state, leaves a trial the resumed search runs
again (deterministically, to the same values). Its reports to a trial the study has already
finished are dropped, not a crash of the resumed search.
"""

from __future__ import annotations

import pickle
import sqlite3
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState
from ray.tune.search import Searcher

from analysis import STUDY_FILE, study_file
from trainable import StoragePath, atomic_write_bytes, storage_path

__all__ = ["OptunaSearcher", "upload_study"]

Space = Callable[[optuna.Trial], dict[str, Any] | None]  # define-by-run: draws, returns extras


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


class OptunaSearcher(Searcher):
    """Suggests a trial's config from ``space`` (a define-by-run function of an Optuna trial
    that draws the parameters and may return resolved values to add), and tells the study
    each trial's epochs and end.

    The Trainable reports ``trial_complete`` (True once its last epoch is done); Tune's own
    ``done`` is also set on a trial its scheduler stops, so it cannot tell the two apart.
    ``storage``: an Optuna storage URL, or a storage object (an in-memory one for
    benchmarks); ``study_copy``: the URI of an experiment in cloud storage to copy the study
    to.
    """

    def __init__(self, space: Space, *, metric: str | list[str], mode: str | list[str],
                 sampler: optuna.samplers.BaseSampler, study_name: str,
                 storage: str | optuna.storages.BaseStorage,
                 study_copy: str | None = None) -> None:
        super().__init__(metric=metric, mode=mode)
        self.space, self.sampler, self.study_name = space, sampler, study_name
        self.storage, self.study_copy = storage, study_copy
        self.numbers: dict[str, int] = {}  # Tune trial id -> Optuna trial number
        self.told: set[str] = set()  # trials whose end the study knows
        self._study: optuna.Study | None = None
        self._backend: optuna.storages.BaseStorage | None = None

    # ------------------------------------------------------------------- the study
    @property
    def backend(self) -> optuna.storages.BaseStorage:
        """The study's storage, opened once (the study and the intermediate values share it)."""
        if self._backend is None:
            self._backend = optuna.storages.get_storage(self.storage)
        return self._backend

    @property
    def study(self) -> optuna.Study:
        if self._study is None:
            modes = self.mode if isinstance(self.mode, list) else [self.mode]
            self._study = optuna.create_study(
                storage=self.backend, sampler=self.sampler,
                study_name=self.study_name, load_if_exists=True,
                directions=["maximize" if m == "max" else "minimize" for m in modes])
        return self._study

    def __getstate__(self) -> dict[str, Any]:
        """Tune pickles the searcher with the search: the study is opened again from its
        storage, not pickled."""
        return {**self.__dict__, "_study": None, "_backend": None}

    def _values(self, result: dict[str, Any] | None) -> list[float] | None:
        metrics = self.metric if isinstance(self.metric, list) else [self.metric]
        values = [(result or {}).get(m) for m in metrics]
        return None if any(v is None for v in values) else [float(v) for v in values]

    def _storage_id(self, trial_id: str) -> int:
        """The storage's id of the Optuna trial behind a Tune trial."""
        study_id = self.backend.get_study_id_from_name(self.study_name)
        return self.backend.get_trial_id_from_study_id_trial_number(study_id,
                                                                   self.numbers[trial_id])

    def _report(self, trial_id: str, result: dict[str, Any]) -> None:
        """An epoch's value as the trial's intermediate value (single objective only)."""
        values = self._values(result)
        if values is None or len(values) > 1 or trial_id not in self.numbers \
                or trial_id in self.told:
            return
        try:
            self.backend.set_trial_intermediate_value(
                self._storage_id(trial_id), int(result["training_iteration"]), values[0])
        except optuna.exceptions.UpdateFinishedTrialError:
            self.told.add(trial_id)  # finished in the study before a resume

    def _tell(self, trial_id: str, **outcome: Any) -> None:
        """The trial's end, unless the study has it already (told before a resume)."""
        if not self.backend.get_trial(self._storage_id(trial_id)).state.is_finished():
            try:
                self.study.tell(self.numbers[trial_id], **outcome)
            except RuntimeError:
                # the GridSampler of fixed points asks the study to stop once every point has
                # a trial, which Optuna allows inside optimize() only; the end is stored first
                if not isinstance(self.sampler, optuna.samplers.GridSampler):
                    raise
        self.told.add(trial_id)

    # ------------------------------------------------------------ Tune's Searcher
    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        trial = self.study.ask()
        self.numbers[trial_id] = trial.number
        extra = self.space(trial) or {}
        return {**trial.params, **extra}

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        self._report(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None,
                          error: bool = False) -> None:
        if trial_id not in self.numbers or trial_id in self.told:
            return
        values = self._values(result)
        if error or values is None:
            self._tell(trial_id, state=TrialState.FAIL)
            return
        self._report(trial_id, result)  # Tune hands the last epoch to this method alone
        if trial_id in self.told:
            return
        stopped = len(values) == 1 and not result.get("trial_complete", True)
        if stopped:
            self._tell(trial_id, state=TrialState.PRUNED)
        else:
            self._tell(trial_id, values=values if len(values) > 1 else values[0])

    def save(self, checkpoint_path: str) -> None:
        atomic_write_bytes(checkpoint_path, pickle.dumps(
            {"numbers": self.numbers, "told": self.told, "sampler": self.sampler}))
        if self.study_copy:
            upload_study(storage_path(self.study_copy))

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            state = pickle.load(f)
        self.numbers, self.told, self.sampler = state["numbers"], state["told"], state["sampler"]
        self._study = None  # opened again with the restored sampler
