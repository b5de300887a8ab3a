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

from trainable import StoragePath, storage_path

from ._audit import flags_of
from ._ranking import worst_case
from ._results import EXPORT_TRIALS, META_FILE, load_experiment

__all__ = ["Confirmation", "load_confirmations", "has_confirmation", "BASELINES", "CONFIRM_DIR",
           "SEED_MARK"]

BASELINES = ("pgd_at", "trades")  # baselines a confirmation may add: named by their objective
CONFIRM_DIR = "confirm"
SEED_MARK = "@seed"  # point names: CONFIG@seedN
# pyautoattack's attacks_to_run for version="standard", in its order: how an audit is named
STANDARD_ENSEMBLE = ("apgd-ce", "apgd-t", "fab-t", "square")


@dataclass(frozen=True)
class Confirmation:
    """One configuration's audited robust accuracy over its confirmation seeds."""

    config: str  # the trial id it reproduces, or a baseline's name
    seeds: tuple[int, ...]
    values: tuple[float, ...]  # worst case over attacks and heads, per seed
    n_examples: int  # test images per evaluation (the smallest, if they differ)
    flagged_seeds: int  # seeds whose audit raised a demoting flag
    attacks: tuple[str, ...]  # AutoAttack's attacks that every audit of it ran, in order
    baseline: bool = False  # a named baseline (its name is its objective), not a trial

    @property
    def audit(self) -> str:
        """What the audits ran, in words: the standard ensemble or the attacks by name."""
        if self.attacks == STANDARD_ENSEMBLE:
            return "AutoAttack (standard)"
        return "AutoAttack's " + " + ".join(a.upper() for a in self.attacks)

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
        from scipy import stats  # only here: scipy takes a second to import

        half = stats.t.ppf(0.975, n - 1) * self.sd / math.sqrt(n)
        return self.mean - half, self.mean + half

    def minus(self, other: Confirmation) -> tuple[float, float, float]:
        """Difference of the means (self - other) and its 95 % Welch interval (unequal
        variances): the direct answer to "is this configuration more robust than that one?".
        NaN where either side has fewer than two seeds."""
        if len(self.values) < 2 or len(other.values) < 2:
            return math.nan, math.nan, math.nan
        from scipy import stats

        low, high = stats.ttest_ind(self.values, other.values,
                                    equal_var=False).confidence_interval(0.95)
        return self.mean - other.mean, float(low), float(high)

    def summary(self) -> str:
        low, high = self.interval
        return (f"{self.mean:.3f} mean over {len(self.values)} seeds (sd {self.sd:.3f}, 95 % "
                f"interval {low:.3f}-{high:.3f}, {self.n_examples} test images each, "
                f"{self.audit})")


def has_confirmation(path: str | Path | StoragePath) -> bool:
    """Whether the experiment (or its export) at path holds a confirmation."""
    folder = storage_path(path) / CONFIRM_DIR
    return (folder / META_FILE).is_file() or (folder / EXPORT_TRIALS).is_file()


def load_confirmations(path: str | Path | StoragePath) -> list[Confirmation]:
    """The confirmations in EXPERIMENT/confirm ([] when there is none), in the order `confirm`
    listed them (the ranking's configurations, then the baselines)."""
    if not has_confirmation(path):
        return []
    experiment = load_experiment(storage_path(path) / CONFIRM_DIR)
    results: dict[str, list[dict[str, Any]]] = {}
    for r in experiment.final_results():
        results.setdefault(r["trial_id"], []).append(r)
    groups: dict[str, list[tuple[int, float, int, bool]]] = {}
    ensembles: dict[str, list[list[str]]] = {}
    baselines: set[str] = set()
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
        ensembles.setdefault(config, []).extend(list(r["per_attack_acc"]) for r in evaluated)
        if experiment.trial_config(trial).objective.variant == config:
            baselines.add(config)
    listed = [p.rpartition(SEED_MARK)[0] for p in experiment.meta.points]
    order = sorted(groups, key=lambda c: listed.index(c) if c in listed else len(listed))
    return [Confirmation(config, tuple(s for s, *_ in rows), tuple(v for _, v, _, _ in rows),
                         min(n for _, _, n, _ in rows), sum(f for *_, f in rows),
                         _common(ensembles[config]), config in baselines)
            for config, rows in ((c, sorted(groups[c])) for c in order)]


def _common(ensembles: list[list[str]]) -> tuple[str, ...]:
    """The attacks every one of the ensembles ran, in the first one's order."""
    return tuple(a for a in ensembles[0] if all(a in e for e in ensembles))
