"""The trial schedulers a search can use, registered by name (``search.scheduler``), as Ray
Tune's own ``tune/schedulers`` registers its schedulers: a new method is one entry here plus
its tests. Budgets are epochs (Tune's ``training_iteration``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ray.tune.schedulers import TrialScheduler

    from ._spaces import SearchSettings

__all__ = ["SchedulerMethod", "SCHEDULERS", "make_scheduler"]

Build = Callable[["SearchSettings", int, dict[str, Any]], "TrialScheduler"]


@dataclass(frozen=True)
class SchedulerMethod:
    build: Build  # (settings, max_t in epochs, {"metric", "mode"} or {}) -> scheduler
    about: str


def _asha(s: SearchSettings, max_t: int, metric: dict[str, Any]) -> TrialScheduler:
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(time_attr="training_iteration", max_t=max_t,
                         grace_period=s.grace_period, reduction_factor=s.reduction_factor,
                         **metric)


def _async_hyperband(s: SearchSettings, max_t: int, metric: dict[str, Any]) -> TrialScheduler:
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(time_attr="training_iteration", max_t=max_t,
                         grace_period=s.grace_period, reduction_factor=s.reduction_factor,
                         brackets=s.brackets, **metric)


def _one_rung(s: SearchSettings, max_t: int, metric: dict[str, Any]) -> TrialScheduler:
    """ASHA with a single rung: every trial runs grace_period epochs, and only those in the
    top grace_period/max_t of that rung go on to max_t (train many briefly, keep a few)."""
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(time_attr="training_iteration", max_t=max_t,
                         grace_period=s.grace_period,
                         reduction_factor=max(max_t / s.grace_period, 1.0 + 1e-9), **metric)


def _hyperband(s: SearchSettings, max_t: int, metric: dict[str, Any]) -> TrialScheduler:
    from ray.tune.schedulers import HyperBandScheduler

    return HyperBandScheduler(time_attr="training_iteration", max_t=max_t,
                              reduction_factor=s.reduction_factor, **metric)


def _fifo(s: SearchSettings, max_t: int, metric: dict[str, Any]) -> TrialScheduler:
    from ray.tune.schedulers import FIFOScheduler

    return FIFOScheduler()


SCHEDULERS: dict[str, SchedulerMethod] = {
    "asha": SchedulerMethod(_asha, "asynchronous successive halving (search.grace_period, "
                            "search.reduction_factor)"),
    "async_hyperband": SchedulerMethod(_async_hyperband, "asynchronous Hyperband: ASHA over "
                                       "search.brackets brackets of different first rungs"),
    "one_rung": SchedulerMethod(_one_rung, "every trial for search.grace_period epochs, the "
                                "best grace_period/max_t of them to the end"),
    "hyperband": SchedulerMethod(_hyperband, "Ray's synchronous Hyperband, which pauses and "
                                 "resumes trials (search.reduction_factor)"),
    "fifo": SchedulerMethod(_fifo, "every trial runs its whole budget"),
}


def make_scheduler(s: SearchSettings, max_t: int, points: bool) -> TrialScheduler:
    """search.scheduler's scheduler; every trial runs its budget when the search runs fixed
    points. A multi-objective search stops trials on search.metric."""
    from ._samplers import SAMPLERS

    metric = {"metric": s.metric, "mode": s.mode} if SAMPLERS[s.sampler].multi_objective \
        else {}
    return SCHEDULERS["fifo" if points else s.scheduler].build(s, max_t, metric)
