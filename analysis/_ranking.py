"""One ranking of an experiment's trials, shared by ``status``, ``best``, ``report``, ``export``
and the final stage's summary: the audit, not the validation proxy, decides what is best.

Order (docs/exports.md, "Ranking"):

1. audited trials without a masking flag, by their audited robust accuracy: the worst case over
   every attack the final stage ran (AutoAttack, CE-only APGD, the adaptive embedding attack)
   and every head it judged;
2. audited trials with a masking flag above its threshold, by the same figure (``best`` skips
   them unless asked);
3. trials the final stage did not audit, by the search metric at their best epoch (the proxy).

A flag carries a short code, its evidence and whether it is above the threshold that demotes a
trial. AutoAttack's zero-gradient warning on a handful of points is not masking: a masked model
has (nearly) every point it checks at zero gradient.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ._results import Experiment, TrialRecord

__all__ = ["Flag", "RankedTrial", "flags_of", "rank_trials", "worst_case", "FLAG_LEGEND",
           "ZERO_GRAD_FRACTION", "SQUARE_GAIN_POINTS"]

ZERO_GRAD_FRACTION = 0.2  # aa_zero_grad demotes when >= 20 % of the points checked have none
SQUARE_GAIN_POINTS = 1.0  # aa_square_gain demotes when Square beats the gradient attacks by >= 1
AUDIT, AUDIT_FLAGGED, PROXY = "audit", "audit, flagged", "proxy"

FLAG_LEGEND = {
    "aa_zero_grad": f"AutoAttack found points with zero gradient (demotes at >= "
                    f"{ZERO_GRAD_FRACTION:.0%} of the points it checked)",
    "aa_square_gain": f"the gradient-free Square attack broke points the gradient attacks "
                      f"missed (demotes at >= {SQUARE_GAIN_POINTS:g} point)",
    "aa_randomized": "the model's outputs change between calls (a randomized defence)",
    "aa_probabilities": "the model returns probabilities, not logits",
    "aa_dynamic": "the model changes while it is attacked (a dynamic defence)",
    "aa_classes": "too few classes for the DLR losses (a set-up note, never demotes)",
    "aa_other": "another AutoAttack warning (always demotes)",
    "ce_gap": "CE-only APGD leaves > 10 points more accuracy than the ensemble (the raw head's "
              "signature)",
    "adaptive_gap": "the adaptive embedding attack beats AutoAttack by > 5 points",
}

_AUTOATTACK_CODES = (
    (re.compile(r"there are (\d+) points with zero gradient"), "aa_zero_grad"),
    (re.compile(r"Square Attack has decreased the robust accuracy of ([\d.]+)%"),
     "aa_square_gain"),
    (re.compile(r"randomized defense"), "aa_randomized"),
    (re.compile(r"probability distribution"), "aa_probabilities"),
    (re.compile(r"dynamic defense"), "aa_dynamic"),
    (re.compile(r"not possible to use the (targeted )?DLR loss|target classes"), "aa_classes"),
)


@dataclass(frozen=True)
class Flag:
    """One masking symptom of one evaluation: its code, what was seen, and whether it is above
    the threshold that demotes the trial."""

    code: str
    head: str
    evidence: str
    demotes: bool
    message: str

    def __str__(self) -> str:
        return f"{self.code}({self.head}: {self.evidence})" if self.demotes else \
            f"{self.code}({self.head}: {self.evidence}, below threshold)"


def _gap(result: dict[str, Any], key: str) -> str:
    """ce_gap / adaptive_gap in points (an export keeps the accuracies, not the gaps)."""
    high, low = ("ce_only_acc", "autoattack_acc") if key == "ce_gap" else \
        ("autoattack_acc", "adaptive_acc")
    value = result.get(key)
    if value is None and all(isinstance(result.get(k), (int, float)) for k in (high, low)):
        value = result[high] - result[low]
    return f"{100 * value:.1f} points" if isinstance(value, (int, float)) else "?"


def flags_of(result: dict[str, Any]) -> list[Flag]:
    """The flags of one final-stage result (its masking_flags, as written or exported)."""
    head = result.get("head") or "-"
    checked = min(result.get("batch_size") or result.get("n_examples") or 1,
                  result.get("n_examples") or 1)
    flags = []
    for message in result.get("masking_flags") or []:
        if message in ("ce_gap", "adaptive_gap"):
            flags.append(Flag(message, head, _gap(result, message), True, message))
            continue
        code, evidence, demotes = "aa_other", "see message", True
        for pattern, name in _AUTOATTACK_CODES:
            match = pattern.search(message)
            if match is None:
                continue
            code, evidence = name, "reported"
            if name == "aa_zero_grad":
                count = int(match.group(1))
                evidence = f"{count} of {checked} points checked"
                demotes = count >= ZERO_GRAD_FRACTION * checked
            elif name == "aa_square_gain":
                gain = float(match.group(1))
                evidence = f"{gain:g} points"
                demotes = gain >= SQUARE_GAIN_POINTS
            elif name == "aa_classes":
                demotes = False
            break
        flags.append(Flag(code, head, evidence, demotes, message))
    return flags


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
