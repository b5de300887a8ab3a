"""The Optuna searcher (Ray Tune's Searcher interface over Optuna's ask-and-tell) and the
sampler and scheduler registries, without Ray: what the study learns of each trial, a save and
restore, and every registered method built from a search config."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState

from search import (
    SAMPLERS,
    SCHEDULERS,
    OptunaSearcher,
    RungSampler,
    SearchConfig,
    make_sampler,
    make_scheduler,
)

SPACE = {"x": {"type": "float", "low": 0.0, "high": 1.0}}


def _space(trial: optuna.Trial) -> dict:
    return {"y": round(trial.suggest_float("x", 0.0, 1.0) * 10)}  # a resolved value


def _searcher(storage=None, sampler=None) -> OptunaSearcher:
    return OptunaSearcher(_space, metric="val_robust_acc", mode="max",
                          sampler=sampler or optuna.samplers.RandomSampler(seed=0),
                          study_name="s", storage=storage or optuna.storages.InMemoryStorage())


def _result(epoch: int, value: float, complete: bool) -> dict:
    return {"val_robust_acc": value, "training_iteration": epoch, "trial_complete": complete}


def test_completed_stopped_and_failed_trials_reach_the_study():
    searcher = _searcher()
    configs = {tid: searcher.suggest(tid) for tid in ("a", "b", "c")}
    assert all(c["y"] == round(c["x"] * 10) for c in configs.values())  # draws + resolved
    searcher.on_trial_result("a", _result(1, 0.1, False))
    searcher.on_trial_complete("a", _result(2, 0.3, True))  # ran its budget
    searcher.on_trial_result("b", _result(1, 0.2, False))
    searcher.on_trial_complete("b", _result(2, 0.25, False))  # stopped by the scheduler
    searcher.on_trial_complete("c", None, error=True)
    searcher.on_trial_complete("a", _result(2, 0.9, True))  # a second end is ignored
    a, b, c = searcher.study.trials
    assert (a.state, a.value, a.intermediate_values) == (TrialState.COMPLETE, 0.3,
                                                          {1: 0.1, 2: 0.3})
    assert (b.state, b.intermediate_values) == (TrialState.PRUNED, {1: 0.2, 2: 0.25})
    assert c.state == TrialState.FAIL


def test_a_restored_searcher_continues_and_skips_what_the_study_finished(tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    first = _searcher(storage)
    first.suggest("a")
    first.suggest("b")
    first.on_trial_result("b", _result(1, 0.2, False))
    first.save(str(tmp_path / "state.pkl"))
    first.on_trial_complete("a", _result(1, 0.5, True))  # told after the last save

    second = _searcher(storage)  # as Tune restores: the pickled object, then its state
    second.restore(str(tmp_path / "state.pkl"))
    assert second.numbers == {"a": 0, "b": 1}
    second.on_trial_result("a", _result(1, 0.5, False))  # a run again: no crash
    second.on_trial_complete("a", _result(1, 0.5, True))
    second.on_trial_complete("b", _result(2, 0.4, True))
    assert [t.state for t in second.study.trials] == [TrialState.COMPLETE] * 2
    assert second.study.trials[1].intermediate_values == {1: 0.2, 2: 0.4}
    assert second.suggest("c") is not None and len(second.study.trials) == 3


def test_fixed_points_end_without_an_error():
    """GridSampler asks the study to stop once every point has a trial (Optuna allows that in
    optimize() only): the last point's end is stored all the same."""
    searcher = OptunaSearcher(lambda t: {"point": t.suggest_categorical("point", ["p", "q"])},
                              metric="val_robust_acc", mode="max",
                              sampler=optuna.samplers.GridSampler({"point": ["p", "q"]}, seed=0),
                              study_name="s", storage=optuna.storages.InMemoryStorage())
    points = {searcher.suggest(tid)["point"] for tid in ("a", "b")}
    assert points == {"p", "q"}
    searcher.on_trial_complete("a", _result(1, 0.5, True))
    searcher.on_trial_complete("b", _result(1, 0.6, True))
    assert [t.state for t in searcher.study.trials] == [TrialState.COMPLETE] * 2


def _settings(**search) -> SearchConfig:
    return SearchConfig.model_validate({"train": {"data": {"dataset": "digits"}},
                                        "space": SPACE, "search": search})


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_every_registered_sampler_builds_and_draws(name):
    s = _settings(sampler=name).search
    sampler = make_sampler(s)
    assert isinstance(sampler, optuna.samplers.BaseSampler)
    if not SAMPLERS[name].multi_objective:
        study = optuna.create_study(direction="maximize", sampler=sampler)
        study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=12)
        assert len(study.trials) == 12


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_every_registered_scheduler_builds(name):
    scheduler = make_scheduler(_settings(scheduler=name).search, max_t=9, points=False)
    assert type(scheduler).__name__.endswith("Scheduler")


def test_fixed_points_run_their_whole_budget():
    assert type(make_scheduler(_settings(scheduler="asha").search, 9, points=True)).__name__ \
        == "FIFOScheduler"


def test_unknown_methods_are_refused_with_the_registered_names():
    with pytest.raises(ValueError, match="choose one of tpe, random"):
        _settings(sampler="annealing")
    with pytest.raises(ValueError, match="choose one of asha"):
        _settings(scheduler="pbt")


def test_the_rung_sampler_models_the_highest_epoch_enough_trials_reached():
    """BOHB's budget choice: rung 3 has 4 trials (>= min_trials), rung 9 has 1: the wrapped
    sampler sees the 4 trials valued by their epoch-3 values."""
    seen = {}

    class Spy(optuna.samplers.RandomSampler):
        def sample_independent(self, study, trial, name, distribution):
            seen["values"] = sorted(t.value for t in study.trials)
            return super().sample_independent(study, trial, name, distribution)

    study = optuna.create_study(direction="maximize",
                                sampler=RungSampler(Spy(seed=0), min_trials=4, seed=0))
    curves = [{1: 0.1, 3: 0.3}, {1: 0.2, 3: 0.1}, {1: 0.3, 3: 0.5}, {1: 0.4, 3: 0.2, 9: 0.7},
              {1: 0.5}]
    for curve in curves:
        trial = study.ask()
        trial.suggest_float("x", 0, 1)
        for epoch, value in curve.items():
            trial.report(value, epoch)
        study.tell(trial, state=TrialState.PRUNED)
    study.ask().suggest_float("x", 0, 1)
    assert seen["values"] == [0.1, 0.2, 0.3, 0.5]
