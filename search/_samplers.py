"""The Optuna samplers a search can use, registered by name (``search.sampler``): a new method
is one entry here plus its tests.

``bohb`` is BOHB's model-based multi-fidelity (Falkner et al. 2018) on Optuna's public API:
:class:`RungSampler` shows TPE the trials at the highest epoch that enough trials have reached,
each valued by its intermediate value there, so the model learns from the many trials a
scheduler stops early instead of from the few that run their whole budget.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

if TYPE_CHECKING:
    from ._spaces import SearchSettings

__all__ = ["SamplerMethod", "SAMPLERS", "RungSampler", "make_sampler"]


@dataclass(frozen=True)
class SamplerMethod:
    build: Callable[[SearchSettings], optuna.samplers.BaseSampler]
    about: str
    multi_objective: bool = False  # optimises search.objectives, not search.metric


def _startup(s: SearchSettings) -> int:
    """Random trials before a model-based sampler models: the setting, else N/3 within 2-10."""
    return s.tpe_startup or min(10, max(2, s.num_samples // 3))


def _random(s: SearchSettings) -> optuna.samplers.BaseSampler:
    return optuna.samplers.RandomSampler(seed=s.seed)


def _tpe(s: SearchSettings) -> optuna.samplers.BaseSampler:
    return optuna.samplers.TPESampler(seed=s.seed, n_startup_trials=_startup(s),
                                      multivariate=s.tpe_multivariate, group=s.tpe_multivariate,
                                      constant_liar=s.tpe_constant_liar)


def _gp(s: SearchSettings) -> optuna.samplers.BaseSampler:
    return optuna.samplers.GPSampler(seed=s.seed, n_startup_trials=_startup(s),
                                     warn_independent_sampling=False)


def _nsga2(s: SearchSettings) -> optuna.samplers.BaseSampler:
    return optuna.samplers.NSGAIISampler(seed=s.seed)


def _bohb(s: SearchSettings) -> optuna.samplers.BaseSampler:
    tpe = optuna.samplers.TPESampler(seed=s.seed, n_startup_trials=0, multivariate=True,
                                     group=True, constant_liar=False)
    return RungSampler(tpe, min_trials=_startup(s), seed=s.seed)


class RungSampler(optuna.samplers.BaseSampler):
    """Wraps a sampler so that it models the trials at the highest epoch (rung) that at least
    ``min_trials`` finished or stopped trials reached, each valued by its intermediate value
    at that epoch (BOHB's choice of budget); before any epoch has enough, draws at random.
    Single-objective studies only; the wrapped sampler sees an in-memory study of that rung,
    made again only when the study has changed."""

    def __init__(self, inner: optuna.samplers.BaseSampler, min_trials: int,
                 seed: int | None = None) -> None:
        self.inner, self.min_trials = inner, max(1, min_trials)
        self.random = optuna.samplers.RandomSampler(seed=seed)
        self._key: tuple[int, int] | None = None
        self._study: optuna.Study | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_key": None, "_study": None}

    def _view(self, study: optuna.Study) -> optuna.Study | None:
        """The study at its highest rung with enough trials; None before there is one."""
        done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
        key = (len(done), sum(len(t.intermediate_values) for t in done))
        if self._key == key:
            return self._study
        reached: dict[int, int] = {}
        for t in done:
            for epoch in t.intermediate_values:
                reached[epoch] = reached.get(epoch, 0) + 1
        rungs = [e for e, n in reached.items() if n >= self.min_trials]
        view = None
        if rungs:
            epoch = max(rungs)
            view = optuna.create_study(direction=study.direction, sampler=self.inner)
            view.add_trials([optuna.trial.create_trial(
                params=t.params, distributions=t.distributions,
                value=t.intermediate_values[epoch]) for t in done
                if epoch in t.intermediate_values])
        self._key, self._study = key, view
        return view

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial
                                    ) -> dict[str, BaseDistribution]:
        view = self._view(study)
        return {} if view is None else self.inner.infer_relative_search_space(view, trial)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        view = self._view(study)
        return {} if view is None else self.inner.sample_relative(view, trial, search_space)

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        view = self._view(study)
        if view is None:
            return self.random.sample_independent(study, trial, param_name, param_distribution)
        return self.inner.sample_independent(view, trial, param_name, param_distribution)

    def reseed_rng(self) -> None:
        self.inner.reseed_rng()
        self.random.reseed_rng()


SAMPLERS: dict[str, SamplerMethod] = {
    "tpe": SamplerMethod(_tpe, "Optuna's TPE (search.tpe_* options)"),
    "random": SamplerMethod(_random, "uniform random draws"),
    "gp": SamplerMethod(_gp, "Optuna's Gaussian-process sampler (COMPLETE trials only)"),
    "bohb": SamplerMethod(_bohb, "TPE on the highest epoch enough trials reached (BOHB)"),
    "nsga2": SamplerMethod(_nsga2, "NSGA-II over search.objectives", multi_objective=True),
    "motpe": SamplerMethod(_tpe, "multi-objective TPE over search.objectives",
                           multi_objective=True),
}


def make_sampler(s: SearchSettings, points: dict[str, Any] | None = None
                 ) -> optuna.samplers.BaseSampler:
    """The sampler of a search: each fixed point once, in order, when there are points;
    else search.sampler's."""
    if points:
        return optuna.samplers.GridSampler({"point": list(points)}, seed=s.seed)
    with warnings.catch_warnings():  # TPE's `group` is "experimental" since Optuna 2.8
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return SAMPLERS[s.sampler].build(s)
