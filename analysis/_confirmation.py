"""Confirmation across seeds: the audited robustness of the best configurations (and of named
baselines) retrained with new seeds, as a mean, a standard deviation and a 95 % interval.

`clustune confirm EXPERIMENT` writes the retrained trials as an experiment of their own in
EXPERIMENT/confirm, one fixed point per (configuration, seed) named CONFIG@seedN; this module
reads it back. One training seed is one draw: differences smaller than the interval are not
evidence.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scipy import stats

from trainable import StoragePath, storage_path

from ._ranking import flags_of, worst_case
from ._results import META_FILE, load_experiment

__all__ = ["Confirmation", "load_confirmations", "CONFIRM_DIR", "SEED_MARK"]

CONFIRM_DIR = "confirm"
SEED_MARK = "@seed"  # point names: CONFIG@seedN


@dataclass(frozen=True)
class Confirmation:
    """One configuration's audited robust accuracy over its confirmation seeds."""

    config: str  # the trial id it reproduces, or a baseline's name
    seeds: tuple[int, ...]
    values: tuple[float, ...]  # worst case over attacks and heads, per seed
    n_examples: int  # test images per evaluation (the smallest, if they differ)
    flagged_seeds: int  # seeds whose audit raised a demoting flag

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def sd(self) -> float:
        """Sample standard deviation (n - 1); NaN with one seed."""
        return statistics.stdev(self.values) if len(self.values) > 1 else math.nan

    @property
    def interval(self) -> tuple[float, float]:
        """95 % t-interval of the mean over seeds; NaN with one seed."""
        n = len(self.values)
        if n < 2:
            return math.nan, math.nan
        half = stats.t.ppf(0.975, n - 1) * self.sd / math.sqrt(n)
        return self.mean - half, self.mean + half

    def summary(self) -> str:
        low, high = self.interval
        return (f"{self.mean:.3f} mean over {len(self.values)} seeds (sd {self.sd:.3f}, 95 % "
                f"interval {low:.3f}-{high:.3f}, {self.n_examples} test images each)")


def load_confirmations(path: str | Path | StoragePath) -> list[Confirmation]:
    """The confirmations in EXPERIMENT/confirm ([] when there is none), in the order `confirm`
    listed them (the ranking's configurations, then the baselines)."""
    folder = storage_path(path) / CONFIRM_DIR
    if not (folder / META_FILE).is_file():
        return []
    experiment = load_experiment(folder)
    results: dict[str, list[dict[str, Any]]] = {}
    for r in experiment.final_results():
        results.setdefault(r["trial_id"], []).append(r)
    groups: dict[str, list[tuple[int, float, int, bool]]] = {}
    for trial in experiment.trials:
        point = str(trial.params.get("point", ""))
        config, mark, seed = point.rpartition(SEED_MARK)
        if not mark or trial.trial_id not in results:
            continue
        evaluated = results[trial.trial_id]
        groups.setdefault(config, []).append((
            int(seed), min(worst_case(r) for r in evaluated),
            min(r["n_examples"] for r in evaluated),
            any(f.demotes for r in evaluated for f in flags_of(r))))
    listed = [p.rpartition(SEED_MARK)[0] for p in experiment.meta.points]
    order = sorted(groups, key=lambda c: listed.index(c) if c in listed else len(listed))
    return [Confirmation(config, tuple(s for s, *_ in rows), tuple(v for _, v, _, _ in rows),
                         min(n for _, _, n, _ in rows), sum(f for *_, f in rows))
            for config, rows in ((c, sorted(groups[c])) for c in order)]
