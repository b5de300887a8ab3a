"""The result of one robustness evaluation, in a fixed JSON schema (as RobustBench keeps one
JSON per model): written atomically, read back refusing other versions and missing or unknown
fields. This module owns the file format; :mod:`._autoattack` fills it.

Result schema ``clustune-robustness-v1`` (one JSON object; accuracies are fractions in [0, 1]
over all ``n_examples`` points, docs/evaluation.md describes every field):

=====================  ======================================================================
schema_version         "clustune-robustness-v1"
dataset, head          dataset name and head kind ("raw", "logprob", "learned", "linear"), or null
checkpoint             checkpoint path the model came from, or null
config                 the training configuration (dict; {} when unknown)
eps, norm              threat model: norm ball radius, "Linf" | "L2" | "L1"; images in [0, 1]
version                AutoAttack version: "standard" | "plus" | "rand" | "custom"
attacks                the ensemble, in the order it ran
attack_settings        attack -> its budget (n_iter, n_restarts, n_target_classes, n_queries...);
                       also "apgd-ce (ce-only)" when CE-only ran separately, and "adaptive"
seed, batch_size       both change AutoAttack's results, so both are recorded
n_examples             number of evaluated points
clean_acc              accuracy on the clean points
autoattack_acc         robust accuracy after the whole ensemble
per_attack_acc         attack -> robust accuracy after it (cumulative, ensemble order)
ce_only_acc            robust accuracy under APGD-CE alone on the same points
ce_gap                 ce_only_acc - autoattack_acc
adaptive_acc           robust accuracy under the adaptive embedding attack (null: not run)
adaptive_gap           autoattack_acc - adaptive_acc (null: not run)
worst_case_acc         robust to every attack run (ensemble, CE-only and adaptive)
autoattack_flags       AutoAttack's own warnings (its checks), verbatim, de-duplicated
masking_flags          autoattack_flags plus "ce_gap" (ce_gap > 10 points) and
                       "adaptive_gap" (adaptive_gap > 5 points)
within_threat_model    every returned adversarial example is finite, in [0, 1] and within eps
                       (+ 1e-5) of its clean point, for every attack run
max_perturbation       largest norm of a returned perturbation over all attacks
per_example            columns, one entry per point: index, label, clean_correct,
                       autoattack_robust, broken_by (first ensemble attack that broke it, else
                       null), perturbation (norm of the ensemble's adversarial perturbation, 0.0
                       if none was found), ce_only_robust, adaptive_robust (null: not run),
                       worst_case_robust
wall_time_s            seconds spent, summed over resumed runs
software               versions of pyautoattack and torch
=====================  ======================================================================
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from trainable import ClustuneError, StoragePath, storage_path

__all__ = ["RobustnessResult", "ResultError", "SCHEMA_VERSION", "ATTACKS", "check_attacks",
           "load_result", "save_result"]

SCHEMA_VERSION = "clustune-robustness-v1"
ATTACKS = ("apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t")  # AutoAttack's, by name


def check_attacks(attacks: list[str]) -> list[str]:
    """AutoAttack attack names for its "custom" version: known ones, each once (ValueError)."""
    if unknown := [a for a in attacks if a not in ATTACKS]:
        raise ValueError(f"unknown attack(s) {', '.join(unknown)}; choose from "
                         f"{', '.join(ATTACKS)}")
    if not attacks or len(set(attacks)) != len(attacks):
        raise ValueError("name each attack once, e.g. apgd-ce,apgd-t")
    return attacks


@dataclass(kw_only=True)
class RobustnessResult:
    """One model's evaluation; see the module docstring for the meaning of every field."""

    schema_version: str = SCHEMA_VERSION
    dataset: str | None = None
    head: str | None = None
    checkpoint: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    eps: float
    norm: str
    version: str
    attacks: list[str]
    attack_settings: dict[str, dict[str, Any]]
    seed: int
    batch_size: int
    n_examples: int
    clean_acc: float
    autoattack_acc: float
    per_attack_acc: dict[str, float]
    ce_only_acc: float
    ce_gap: float
    adaptive_acc: float | None
    adaptive_gap: float | None
    worst_case_acc: float
    autoattack_flags: list[str]
    masking_flags: list[str]
    within_threat_model: bool
    max_perturbation: float
    per_example: dict[str, list[Any]]
    wall_time_s: float
    software: dict[str, str]

    def to_json(self) -> str:
        """One field per line with compact values: readable, yet small for many examples."""
        items = (f" {json.dumps(k)}: {json.dumps(v)}" for k, v in asdict(self).items())
        return "{\n" + ",\n".join(items) + "\n}"

    @classmethod
    def from_json(cls, text: str) -> RobustnessResult:
        """Parse a result, refusing other schema versions and missing or unknown fields."""
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("schema_version") != SCHEMA_VERSION:
            found = data.get("schema_version") if isinstance(data, dict) else type(data).__name__
            raise ValueError(f"not a {SCHEMA_VERSION} result (schema_version {found!r})")
        names = {f.name for f in fields(cls)}
        if missing := sorted(names - data.keys()):
            raise ValueError(f"result lacks field(s) {', '.join(missing)}")
        if unknown := sorted(data.keys() - names):
            raise ValueError(f"result has unknown field(s) {', '.join(unknown)}")
        return cls(**data)


def save_result(result: RobustnessResult, path: str | Path | StoragePath) -> StoragePath:
    """Write the result atomically (a local file or an object in cloud storage), so a reader
    never sees half a file."""
    where = storage_path(path)
    where.atomic_write_text(result.to_json() + "\n")
    return where


class ResultError(ClustuneError, ValueError):
    """A file that is not a readable result of this schema."""


def load_result(path: str | Path | StoragePath) -> RobustnessResult:
    try:
        text = storage_path(path).read_text()
    except OSError as err:
        raise ResultError(f"cannot read {path}: {err.strerror or err}") from None
    except UnicodeDecodeError:
        raise ResultError(f"{path}: not a text file (a {SCHEMA_VERSION} result was expected)") \
            from None
    try:
        return RobustnessResult.from_json(text)
    except json.JSONDecodeError as err:
        raise ResultError(f"{path}: not JSON ({err.msg}, line {err.lineno})") from None
    except (ValueError, TypeError) as err:
        raise ResultError(f"{path}: {err}") from None
