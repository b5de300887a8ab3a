"""One ranking of an experiment's trials, shared by ``status``, ``best``, ``report``, ``export``
and the final stage's summary: the audit, not the validation proxy, decides what is best.

Order (docs/exports.md, "Ranking"):

1. audited trials without a masking flag, by their audited robust accuracy: the worst case over
   every attack the final stage ran (AutoAttack, CE-only APGD, the adaptive embedding attack)
   and every head it judged;
2. audited trials with a masking flag above its threshold, by the same figure (``best`` skips
   them unless asked);
3. trials the final stage did not audit, by the search metric at their best epoch (the proxy).

A flag (:mod:`._audit`) carries a short code, its evidence and whether it is above the
threshold that demotes a trial.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ._audit import Flag, flags_of
from ._results import Experiment, TrialRecord

__all__ = ["RankedTrial", "pareto_front", "rank_trials", "worst_case"]

AUDIT, AUDIT_FLAGGED, PROXY = "audit", "audit, flagged", "proxy"


def worst_case(result: dict[str, Any]) -> float:
    """Robust to every attack run; an export written before worst_case_acc was a column has
    the attacks' own figures, whose minimum bounds it from above."""
    if isinstance(result.get("worst_case_acc"), (int, float)):
        return result["worst_case_acc"]
    return min(v for k in ("autoattack_acc", "ce_only_acc", "adaptive_acc")
               if isinstance(v := result.get(k), (int, float)))


@dataclass(frozen=True)
class RankedTrial:
    """A trial's place in the ranking and what put it there."""

    rank: int
    trial: TrialRecord
    ranked_by: str  # "audit", "audit, flagged" or "proxy"
    audited_acc: float | None  # worst case over attacks and heads; None: not audited
    proxy_acc: float | None  # the search metric at the best epoch
    flags: tuple[Flag, ...]

    @property
    def flagged(self) -> bool:
        return any(f.demotes for f in self.flags)

    @property
    def flag_codes(self) -> str:
        """Short codes of the demoting flags, for tables ("" when none)."""
        return ", ".join(dict.fromkeys(f.code for f in self.flags if f.demotes))

    @property
    def summary(self) -> str:
        if self.audited_acc is None:
            return f"not audited: {self.proxy_acc:.4g} on the validation proxy"
        flagged = f", flagged {self.flag_codes}" if self.flagged else ""
        return f"audited {self.audited_acc:.4g} worst case{flagged}"


def rank_trials(experiment: Experiment) -> list[RankedTrial]:
    """Every trial with a scored epoch, best first (module docstring); diverged ones last."""
    audits: dict[str, list[dict[str, Any]]] = {}
    for result in experiment.final_results():
        audits.setdefault(result["trial_id"], []).append(result)
    entries = []
    for order, trial in enumerate(experiment.proxy_ranked()):
        proxy = trial.best(experiment.metric, experiment.mode)[experiment.metric]
        results = audits.get(trial.trial_id, [])
        flags = tuple(f for r in results for f in flags_of(r))
        audited = min(worst_case(r) for r in results) if results else None
        if audited is None:
            group, by, key = 2, PROXY, order
        else:
            flagged = any(f.demotes for f in flags)
            group, by, key = (1, AUDIT_FLAGGED, -audited) if flagged else (0, AUDIT, -audited)
        entries.append(((bool(trial.diverged), group, key, order), by, trial, audited,
                        proxy, flags))
    entries.sort(key=lambda e: e[0])
    return [RankedTrial(rank, trial, by, audited, proxy, flags)
            for rank, (_, by, trial, audited, proxy, flags) in enumerate(entries, 1)]


def pareto_front(points: list[tuple[float, float]]) -> list[bool]:
    """Which points no other point beats on both coordinates (both maximised)."""
    return [not any(qa >= pa and qb >= pb and (qa, qb) != (pa, pb) for qa, qb in points)
            for pa, pb in points]
