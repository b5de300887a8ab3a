"""Running a search, the public entry points: a new one (:func:`run_search`) or an interrupted
one (:func:`resume_search`). Each returns what happened (:class:`SearchOutcome`) and never
prints or exits: the caller watches through ``on_event`` and Tune ``callbacks`` and decides
what an early stop means (the command line exits 130).

The steps, in order: check the inputs, start Ray, write the experiment's files and take its
lease (one writer at a time), train the warm starts the trials will share, run the trials,
and, when every trial has ended, the final stage's AutoAttack audit of the best. Cloud
credentials in the environment stay out of everything Ray Tune configures meanwhile
(:func:`trainable.credentials_hidden`): the trials get theirs from their own node.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from ray import tune

from analysis import WARM_START_DIR, Experiment, load_experiment, read_meta
from trainable import StoragePath, credentials_hidden, storage_path

from ._driver import graceful_interrupts
from ._events import (
    OnEvent,
    SearchStarted,
    TrialsEnded,
    WarmStartsStarted,
    WarmStartsTrained,
    ignore,
)
from ._experiment import create_experiment, refuse_existing
from ._final import run_final_stage
from ._lease import hold_lease, name_holder
from ._mlflow import check_mlflow
from ._searcher import upload_study
from ._spaces import SearchConfig, check_inputs
from ._trainable import prepare_warm_starts
from ._tuner import (
    build_tuner,
    check_resources,
    check_resumable,
    embedded,
    restore_tuner,
    start_ray,
)

__all__ = ["SearchOutcome", "run_search", "resume_search"]


@dataclass(frozen=True)
class SearchOutcome:
    """What a search did: the experiment as read back (with the final stage's results when it
    ran), whether it stopped before every trial ended (a Ctrl-C: ``clustune resume``
    continues it), and the seconds its trials took."""

    experiment: Experiment
    stopped_early: bool
    seconds: float


def run_search(cfg: SearchConfig, experiment: str | Path | StoragePath,
               address: str | None = None, num_cpus: int | None = None, *,
               callbacks: list[tune.Callback] | None = None, on_event: OnEvent = ignore,
               verbose: bool = False) -> SearchOutcome:
    """Launch a new search in experiment (a folder, or a location in cloud storage) on the Ray
    cluster at address (else an embedded Ray with num_cpus)."""
    experiment = storage_path(experiment).check()
    s = cfg.search
    check_resources(s.cpus_per_trial, s.gpus_per_trial, address,
                    "--cpus-per-trial/--gpus-per-trial", num_cpus)
    if embedded(address):
        check_inputs(cfg)
    if s.mlflow:
        check_mlflow(s.mlflow)
    refuse_existing(experiment)  # before Ray starts
    dashboard = start_ray(address, num_cpus)  # writes nothing: a bad address leaves no folder
    if experiment.is_local:  # its clustune.json, created first, is what the lease locks
        meta = create_experiment(cfg, experiment)
    with hold_lease(experiment, "clustune search"), credentials_hidden():
        if not experiment.is_local:  # a bucket's lease is an object: held before writing
            meta = create_experiment(cfg, experiment)
        on_event(SearchStarted(experiment, meta.study_storage, dashboard, resumed=False))
        tuner = build_tuner(cfg, experiment, callbacks, verbose)
        _warm_starts(cfg, experiment, on_event)
        return _fit(tuner, experiment, on_event)


def resume_search(experiment: str | Path | StoragePath, address: str | None = None,
                  num_cpus: int | None = None, *, on_event: OnEvent = ignore) -> SearchOutcome:
    """Continue an interrupted search: finished trials are kept, unfinished ones continue from
    their last checkpoint. Ray Tune restores the callbacks the search was started with."""
    experiment = storage_path(experiment).check()
    meta = read_meta(experiment)
    cfg = SearchConfig.model_validate(meta.config)
    check_resources(cfg.search.cpus_per_trial, cfg.search.gpus_per_trial, address,
                    "the search's cpus_per_trial/gpus_per_trial", num_cpus)
    check_resumable(experiment, cfg)
    if cfg.search.mlflow:
        check_mlflow(cfg.search.mlflow)
    # the lock before Ray starts (a refusal starts nothing); lease.json, naming this process,
    # once the search state has restored (a damaged state leaves no trace)
    with hold_lease(experiment, "clustune resume", named=False), credentials_hidden():
        dashboard = start_ray(address, num_cpus)
        tuner = restore_tuner(experiment)
        name_holder(experiment)
        on_event(SearchStarted(experiment, meta.study_storage, dashboard, resumed=True))
        _warm_starts(cfg, experiment, on_event)
        return _fit(tuner, experiment, on_event)


def _warm_starts(cfg: SearchConfig, experiment: StoragePath, on_event: OnEvent) -> None:
    start = time.perf_counter()
    on_event(WarmStartsStarted())
    trained = prepare_warm_starts(cfg, experiment)
    on_event(WarmStartsTrained(trained, time.perf_counter() - start,
                               experiment / WARM_START_DIR))


def _fit(tuner: tune.Tuner, experiment_dir: StoragePath, on_event: OnEvent) -> SearchOutcome:
    start = time.perf_counter()
    try:
        with graceful_interrupts(on_event):
            tuner.fit()
    finally:
        upload_study(experiment_dir)
    experiment = load_experiment(experiment_dir)
    seconds = time.perf_counter() - start
    cfg = SearchConfig.model_validate(experiment.meta.config)
    unfinished = [t for t in experiment.trials if t.status not in ("TERMINATED", "ERROR")]
    stopped = bool(unfinished) or \
        len(experiment.trials) < (len(cfg.points) or cfg.search.num_samples)
    on_event(TrialsEnded(experiment, seconds, stopped))
    if stopped:
        return SearchOutcome(experiment, True, seconds)
    s = cfg.search
    if s.final_top_k:
        experiment = run_final_stage(experiment_dir, s.final_top_k, s.final_examples,
                                     gpus_per_task=min(1.0, s.gpus_per_trial),
                                     attacks=s.final_attacks, on_event=on_event)
    return SearchOutcome(experiment, False, seconds)
