"""Real searches through Ray Tune on digits: metrics, ASHA, the Optuna study, restore."""

from __future__ import annotations

import math
from pathlib import Path

import optuna
import pytest

from analysis import load_experiment, read_meta
from search import ClusteringTrainable, SearchConfig, run_search
from trainable import storage_path


def _config(data: dict) -> SearchConfig:
    return SearchConfig.model_validate(data)


@pytest.fixture(scope="module")
def asha_experiment(ray_session, tmp_path_factory, digits_search):
    cfg = _config(digits_search(True, num_samples=8, reduction_factor=2, grace_period=1))
    return run_search(cfg, tmp_path_factory.mktemp("exp") / "asha").experiment


def test_trials_report_metrics_every_epoch(asha_experiment):
    assert len(asha_experiment.trials) == 8
    for trial in asha_experiment.trials:
        assert trial.status == "TERMINATED"
        assert trial.history, "every trial reports at least one epoch"
        for row in trial.history:
            for key in ("val_clean_acc", "val_robust_acc", "val_pgd_acc", "sigma2"):
                assert 0 <= row[key] <= 1 or key == "sigma2"
                assert math.isfinite(row[key])
            assert row["val_robust_acc"] <= row["val_pgd_acc"] + 1e-9


def test_asha_stops_some_trials_early(asha_experiment):
    epochs = [t.epochs for t in asha_experiment.trials]
    assert max(epochs) == 4
    assert min(epochs) < 4, f"ASHA stopped no trial: {epochs}"


def test_the_study_knows_what_asha_stopped(asha_experiment):
    """A trial ASHA stopped is PRUNED, one that ran its budget COMPLETE with its last value;
    both carry every epoch's value as an intermediate value (optuna-dashboard's curves)."""
    meta = read_meta(asha_experiment.path)
    study = optuna.load_study(study_name=meta.study_name, storage=meta.study_storage)
    assert len(study.trials) == 8
    by_params = {tuple(sorted(t.params.items())): t for t in study.trials}
    states = set()
    for trial in asha_experiment.trials:
        draws = {k: v for k, v in trial.params.items() if k != "clusters.l"}
        frozen = by_params[tuple(sorted(draws.items()))]
        curve = {r["training_iteration"]: r["val_robust_acc"] for r in trial.history}
        assert frozen.intermediate_values == curve
        if trial.epochs == 4:
            assert frozen.state == optuna.trial.TrialState.COMPLETE
            assert frozen.value == curve[4]
        else:
            assert frozen.state == optuna.trial.TrialState.PRUNED
        states.add(frozen.state)
    assert states == {optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED}


def test_l_is_drawn_as_a_fraction_of_its_feasible_range(asha_experiment):
    """The study sees one fixed distribution (clusters.l@fraction in [0, 1]); the trial's
    config and exports keep the resolved L, within 2 <= L <= min(20, C*K)."""
    for t in asha_experiment.trials:
        fraction = t.params["clusters.l@fraction"]
        high = min(20, 10 * t.params["clusters.k"])
        assert t.params["clusters.l"] == round(2 + fraction * (high - 2))


def test_warm_start_is_trained_once(asha_experiment):
    assert len(list((asha_experiment.path / "warm_start").glob("*.pt"))) == 1


def test_status_reads_back_the_experiment(asha_experiment):
    again = load_experiment(asha_experiment.path)
    assert [t.trial_id for t in again.trials] == [t.trial_id for t in asha_experiment.trials]
    best = again.proxy_ranked()[0]
    assert best.best_checkpoint() is not None


def test_restored_trial_continues_identically(ray_session, tmp_path, digits_search):
    from ray import tune

    cfg = _config(digits_search())
    cls = tune.with_parameters(ClusteringTrainable, base=cfg.base_dict(), points={},
                               experiment=str(tmp_path))
    params = {"clusters.k": 2, "clusters.l": 7, "objective.lam": 2.0}
    first = cls(config=params)
    first.train()
    first.train()
    ckpt = first.save(str(tmp_path / "ckpt"))
    expected = first.train()
    second = cls(config=params)
    second.restore(ckpt)
    got = second.train()
    for key in ("train_loss", "val_clean_acc", "val_robust_acc", "sigma2", "val_margin"):
        assert got[key] == pytest.approx(expected[key], rel=1e-5, abs=1e-7), key
    first.stop()
    second.stop()


def test_each_kind_of_warm_start_is_trained_once_and_shared(ray_session, tmp_path,
                                                           digits_search):
    """A space over the warm start's variant, its eps ramp and M (a fixed warm-start batch
    keeps M out of its key): the driver trains each distinct warm start once, before the
    trials, and every trial loads the one its own draw names; no trial trains one."""
    from search import WarmStartsTrained
    from trainable._config import warm_start_key

    data = digits_search(num_samples=8, scheduler="fifo")
    data["train"]["optim"]["epochs"] = 1
    data["train"]["warm_start"] = {"ce_epochs": 1, "batch_size": 32}
    data["space"] = {
        "clusters.m": {"type": "int", "low": 4, "high": 10},
        "warm_start.variant": {"type": "categorical", "choices": ["ce", "pgd_at"]},
        "warm_start.eps_ramp": {"type": "categorical", "choices": [False, True],
                                "when": {"warm_start.variant": ["pgd_at"]}}}
    events = []
    experiment = run_search(_config(data), tmp_path / "exp", on_event=events.append).experiment
    (trained,) = [e.count for e in events if isinstance(e, WarmStartsTrained)]
    keys = {warm_start_key(experiment.trial_config(t)) for t in experiment.trials}
    stored = {f.stem for f in (experiment.path / "warm_start").glob("*.pt")}
    assert len({t.params["clusters.m"] for t in experiment.trials}) > 1
    assert len(keys) > 1 and keys <= stored and trained == len(stored)  # none trained by a trial
    assert all(t.status == "TERMINATED" for t in experiment.trials)


@pytest.mark.parametrize("shared", [True, False])
def test_share_warm_start_reaches_the_trial(ray_session, tmp_path, digits_search, shared):
    """share_warm_start: false (the benchmark's baseline) makes every trial train its own CE
    warm start; true points it at the experiment's shared file."""
    from search._tuner import _trainable

    cfg = _config(digits_search(True, share_warm_start=shared))
    trial = _trainable(cfg, storage_path(tmp_path))(config={"clusters.k": 1, "clusters.l": 5,
                                              "objective.lam": 1.0})
    warm = trial.cfg.warm_start
    if shared:
        assert warm.ce_epochs == 0 and Path(warm.checkpoint).parent == tmp_path / "warm_start"
    else:
        assert warm.ce_epochs == 1 and warm.checkpoint is None
        assert not (tmp_path / "warm_start").exists()
    assert trial.train()["val_clean_acc"] > 0
    trial.stop()


def test_an_exported_config_reproduces_its_trial_exactly(asha_experiment, tmp_path):
    """`clustune best` then `clustune train --config` gives the search trial's epochs, to the
    last bit: the same warm start (trained in place here, shared through a file there), random
    stream and thread count (recorded in the config as `threads`)."""
    import json

    import torch

    from analysis import best_configs
    from search.cli import main

    (best,) = best_configs(asha_experiment.path, top=1, out=tmp_path / "best")
    trial = next(t for t in asha_experiment.trials if t.trial_id in best.name)
    threads = torch.get_num_threads()
    try:
        assert main(["train", "--config", str(best), "--out", str(tmp_path / "run")]) == 0
    finally:
        torch.set_num_threads(threads)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    keys = ("train_loss", "val_clean_acc", "val_pgd_acc", "val_robust_acc", "sigma2",
            "val_margin")
    assert trial.epochs >= 2
    assert [{k: r[k] for k in keys} for r in rows[:trial.epochs]] == \
        [{k: r[k] for k in keys} for r in trial.history]


def test_the_testing_helper_writes_what_a_search_writes(asha_experiment, tmp_path):
    """analysis.testing's hand-written folders keep the shape of a real search's metadata."""
    from analysis.testing import SEARCH, make_experiment

    real = read_meta(asha_experiment.path)
    fake = read_meta(make_experiment(tmp_path).path)  # a typed, validated ExperimentMeta too
    assert set(fake.config) <= set(real.config)
    assert set(SEARCH) <= set(real.search)
    assert {k: type(v) for k, v in SEARCH.items()} == {k: type(real.search[k]) for k in SEARCH}


def test_a_shared_rdb_study_is_used_instead_of_the_experiments_own(ray_session, tmp_path,
                                                                     digits_search):
    """search.study_storage: the study lives at that RDB URL (sqlite here, as postgresql://
    would), the experiment keeps no optuna.db, and readers find the study there."""
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    data = digits_search(num_samples=2, study_storage=url)
    data["train"]["optim"]["epochs"] = 1
    experiment = run_search(_config(data), tmp_path / "exp").experiment
    assert not (tmp_path / "exp" / "optuna.db").exists()
    assert experiment.open_study() == url == read_meta(experiment.path).study_storage
    study = optuna.load_study(study_name=experiment.meta.study_name, storage=url)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
