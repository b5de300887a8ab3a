"""The audit's masking flags, in one place: what each code means, the threshold that demotes a
trial, how the evaluation raises the gap flags and how a stored result's flags are read back.

A result stores its flags as ``masking_flags`` (schema ``clustune-robustness-v1``): AutoAttack's
own warnings verbatim, plus ``ce_gap`` and ``adaptive_gap`` raised by the evaluation
(:func:`gap_flags`). :func:`flags_of` reads them back as :class:`Flag` records with a short code,
their evidence and whether they pass the threshold that demotes a trial in the ranking.
AutoAttack's zero-gradient warning on a handful of points is not masking: a masked model has
(nearly) every point it checks at zero gradient.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

__all__ = ["Flag", "FLAG_LEGEND", "flags_of", "gap_flags", "CE_GAP_POINTS",
           "ADAPTIVE_GAP_POINTS", "ZERO_GRAD_FRACTION", "SQUARE_GAIN_POINTS"]

CE_GAP_POINTS = 10  # ce_gap: CE-only APGD leaves more than this many points above the ensemble
ADAPTIVE_GAP_POINTS = 5  # adaptive_gap: the embedding attack beats AutoAttack by more than this
ZERO_GRAD_FRACTION = 0.2  # aa_zero_grad demotes when >= 20 % of the points checked have none
SQUARE_GAIN_POINTS = 1.0  # aa_square_gain demotes when Square beats the gradient attacks by >= 1

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
    "ce_gap": f"CE-only APGD leaves > {CE_GAP_POINTS} points more accuracy than the ensemble "
              "(the raw head's signature)",
    "adaptive_gap": f"the adaptive embedding attack beats AutoAttack by > {ADAPTIVE_GAP_POINTS} "
                    "points",
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


def gap_flags(n: int, ensemble_robust: int, ce_only_robust: int,
              adaptive_robust: int | None) -> list[str]:
    """The flags an evaluation of n points raises from its robust counts: ``ce_gap`` when
    CE-only APGD leaves more than CE_GAP_POINTS more points robust than the ensemble,
    ``adaptive_gap`` when the adaptive attack (None: not run) leaves more than
    ADAPTIVE_GAP_POINTS fewer."""
    flags = []
    if 100 * (ce_only_robust - ensemble_robust) > CE_GAP_POINTS * n:
        flags.append("ce_gap")
    if adaptive_robust is not None and \
            100 * (ensemble_robust - adaptive_robust) > ADAPTIVE_GAP_POINTS * n:
        flags.append("adaptive_gap")
    return flags


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
