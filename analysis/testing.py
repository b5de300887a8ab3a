"""Experiment folders written by hand in the layout a search leaves (Ray Tune's trial folders,
its saved state, clustune.json, an Optuna study, final-stage results), so that tests of
analysis, and of tools built on it, need neither Ray nor a search (as ``optuna.testing`` does
for Optuna).

    from analysis.testing import make_experiment
    fake = make_experiment(tmp_path)                 # a finished search with one audit
    fake = make_experiment(tmp_path, running=True)   # one trial running, one pending

A finished search: three TERMINATED trials, an Optuna study and one AutoAttack result in
final/. A running one: the third trial RUNNING with one epoch and a half-written line, a
fourth PENDING without result.json, and no final/ yet.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from ._results import META_FILE, STUDY_FILE, ExperimentMeta

__all__ = ["FakeExperiment", "make_experiment", "write_study", "TRAIN", "SEARCH", "SPACE", "POINTS",
           "SPACE_TRIALS", "PENDING", "AA_TRIAL", "AA_RESULT"]

TRAIN = {
    "data": {"dataset": "digits"},
    "model": {"width": 8, "embedding_dim": 16},
    "clusters": {"k": 1, "l": 10, "m": 10, "d": 4},
    "objective": {"variant": "qtrades"},
    "optim": {"lr": 1e-3, "epochs": 3, "batches_per_epoch": 4},
    "warm_start": {"ce_epochs": 1},
    "eval": {"examples": 40, "pgd_steps": 2},
}
SPACE = {
    "clusters.k": {"type": "int", "low": 1, "high": 2},
    "clusters.l": {"type": "int", "low": 2, "high": 20},
    "objective.lam": {"type": "float", "low": 0.5, "high": 10.0, "log": True},
}
# the search settings analysis reads (a search writes all of them: search.SearchSettings)
SEARCH = {"num_samples": 4, "metric": "val_robust_acc", "mode": "max", "sampler": "tpe",
          "objectives": ["val_clean_acc", "val_robust_acc"], "scheduler": "asha",
          "max_concurrent": 2, "final_top_k": 1}
POINTS = {"qtrades": {}, "trades": {"objective": {"variant": "trades", "lam": 6.0}}}

# trial id -> (params, validation robust accuracy per epoch)
SPACE_TRIALS = {
    "a1b2c3d4": ({"clusters.k": 2, "clusters.l": 15, "objective.lam": 3.0}, [0.10, 0.30, 0.25]),
    "b2c3d4e5": ({"clusters.k": 1, "clusters.l": 10, "objective.lam": 8.0}, [0.12, 0.20]),
    "c3d4e5f6": ({"clusters.k": 2, "clusters.l": 20, "objective.lam": 1.5}, [0.05, 0.15, 0.18]),
}
PENDING = "d4e5f6a7"
AA_TRIAL = "a1b2c3d4"
AA_RESULT = {
    "schema_version": "clustune-robustness-v1", "trial_id": AA_TRIAL, "head": "logprob",
    "dataset": "digits", "eps": 0.1, "norm": "Linf", "version": "standard", "n_examples": 100,
    "clean_acc": 0.62, "autoattack_acc": 0.04, "ce_only_acc": 0.27,
    "per_attack_acc": {"apgd-ce": 0.27, "apgd-t": 0.09, "fab-t": 0.05, "square": 0.04},
    "masking_flags": ["ce_gap"],
}


def _row(trial_id: str, epoch: int, robust: float, params: dict[str, Any]) -> dict[str, Any]:
    """One line of Ray Tune's result.json, with the Trainer's metrics and Tune's bookkeeping."""
    return {
        "train_loss": 5.0 - epoch, "sigma2": 0.01 * epoch, "cluster_size_min": 20 + epoch,
        "val_clean_acc": min(1.0, 2 * robust + 0.1), "val_pgd_acc": robust + 0.02,
        "val_robust_acc": robust, "val_margin": 0.05 * epoch, "epoch_time_s": 0.4,
        "done": False, "training_iteration": epoch, "trial_id": trial_id,
        "date": "2026-11-25_14-49-14", "timestamp": 1795618154 + epoch,
        "time_this_iter_s": 0.4, "time_total_s": 0.4 * epoch, "pid": 4538, "hostname": "vm",
        "node_ip": "192.0.2.2", "config": params, "time_since_restore": 0.4 * epoch,
        "iterations_since_restore": epoch,
    }


def _distributions(params: dict[str, Any]) -> dict[str, Any]:
    if "point" in params:
        return {"point": CategoricalDistribution(list(POINTS))}
    return {"clusters.k": IntDistribution(1, 2),
            "clusters.l": IntDistribution(2, min(20, 10 * params["clusters.k"])),
            "objective.lam": FloatDistribution(0.5, 10.0, log=True)}


def write_study(path: Path, name: str, trials: list[tuple[dict[str, Any], float | None]]) -> None:
    """An Optuna study as OptunaSearch leaves it: a finished trial has its last value, an
    unfinished one (value None) is RUNNING."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = f"sqlite:///{path / 'optuna.db'}"
    study = optuna.create_study(storage=storage, study_name=name, direction="maximize")
    for params, value in trials:
        state = optuna.trial.TrialState.COMPLETE if value is not None else \
            optuna.trial.TrialState.RUNNING
        study.add_trial(optuna.trial.create_trial(
            params=params, distributions=_distributions(params), value=value, state=state))


@dataclass
class FakeExperiment:
    """A written experiment folder and what the tests expect to read back from it."""

    path: Path
    trials: dict[str, tuple[dict[str, Any], list[float]]]  # id -> (params, robust per epoch)
    running: bool
    pending: str = PENDING
    aa_trial: str = AA_TRIAL
    aa_result: dict[str, Any] = field(default_factory=lambda: dict(AA_RESULT))


def make_experiment(root: Path, name: str = "fake", running: bool = False,
                    points: bool = False) -> FakeExperiment:
    """Write an experiment folder under root."""
    config = {"train": TRAIN, "search": dict(SEARCH), "space": {} if points else SPACE,
              "points": POINTS if points else {}}
    path = root / name
    path.mkdir(parents=True)
    meta = ExperimentMeta(name=name, created="2026-11-25T14:48:57", study_name=f"clustune-{name}",
                          study_storage=f"sqlite:///{path / STUDY_FILE}", config=config,
                          base={**TRAIN, "threads": 1})
    (path / META_FILE).write_text(meta.model_dump_json(indent=2))
    trials = dict(SPACE_TRIALS)
    if points:
        trials = {tid: ({"point": point}, curve)
                  for (tid, (_, curve)), point in zip(SPACE_TRIALS.items(), POINTS, strict=False)}
    statuses, study = [], []
    for i, (tid, (params, curve)) in enumerate(trials.items(), 1):
        folder = path / f"ClusteringTrainable_{tid}_{i}_trial_2026-11-25_14-48-58"
        folder.mkdir()
        (folder / "params.json").write_text(json.dumps(params))
        unfinished = running and i == len(trials)
        rows = [_row(tid, e, r, params) for e, r in enumerate(curve[:1] if unfinished else curve,
                                                               1)]
        text = "".join(json.dumps(r) + "\n" for r in rows)
        if unfinished:
            text += json.dumps(_row(tid, 2, curve[1], params))[:40]  # a line being written
        (folder / "result.json").write_text(text)
        statuses.append((tid, "RUNNING" if unfinished else "TERMINATED"))
        study.append((params, None if unfinished else curve[-1]))
    if running:
        params = {"point": "trades"} if points else \
            {"clusters.k": 1, "clusters.l": 5, "objective.lam": 2.0}
        folder = path / f"ClusteringTrainable_{PENDING}_{len(trials) + 1}_trial_2026-11-25"
        folder.mkdir()
        (folder / "params.json").write_text(json.dumps(params))
        statuses.append((PENDING, "PENDING"))
        study.append((params, None))
    else:
        (path / "final").mkdir()
        (path / "final" / f"{AA_TRIAL}-logprob.json").write_text(json.dumps(AA_RESULT))
    state = {"trial_data": [[json.dumps({"trial_id": tid, "status": status}), "{}"]
                            for tid, status in statuses]}
    (path / "experiment_state-2026-11-25_14-48-58.json").write_text(json.dumps(state))
    write_study(path, meta.study_name, study)
    return FakeExperiment(path, trials, running)
