"""AutoAttack evaluation with a gradient-masking audit, stored in a fixed JSON schema.

Why: the ClusTR family looked robust to CE-based PGD and fell to ~0% under AutoAttack. So the
final stage runs the official ensemble (``pyautoattack``), records what every attack did per
example, re-runs the CE-only attack for comparison, attacks cluster heads adaptively in
embedding space, and flags any gap between them instead of reporting one number.

How the ensemble is driven: the official :class:`pyautoattack.AutoAttack` object (the version's
own attack settings) is called attack by attack and batch by batch, on exactly the points and
batches its own loop would attack, so results equal one ``run_standard_evaluation`` call (the
tests check this) while recording which attack first broke each example and checkpointing
after every batch (pyautoattack 0.2.0's own ``state_path`` cannot resume: it saves its attack
set as a string and then refuses every state it wrote).

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

import hashlib
import json
import logging
import math
import re
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import pyautoattack
import torch
from pyautoattack import AutoAttack, checks
from torch import nn

from trainable import (
    Classifier,
    ClusterHead,
    ClustuneError,
    StoragePath,
    embedding_margin_loss,
    frozen,
    load_classifier,
    load_dataset,
    pgd_linf,
    storage_path,
)

__all__ = ["RobustnessResult", "ResultError", "SCHEMA_VERSION", "evaluate_checkpoint",
           "evaluate_robustness", "load_result", "save_result"]

SCHEMA_VERSION = "clustune-robustness-v1"
STATE_FORMAT = "clustune-autoattack-state-v1"
VERSIONS = ("standard", "plus", "rand", "custom")
NORMS = ("Linf", "L2", "L1")
ATTACKS = ("apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t")
CE_GAP_POINTS = 10  # flag "ce_gap" when CE-only accuracy exceeds AutoAttack's by more
ADAPTIVE_GAP_POINTS = 5  # flag "adaptive_gap" when the adaptive attack beats AutoAttack by more
TOLERANCE = 1e-5  # slack on eps when checking the threat model (float rounding)
CE_ONLY = "apgd-ce (ce-only)"
ADAPTIVE = "adaptive"

Progress = Callable[[str, int, int], None]  # (stage, examples done, examples in the stage)


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


# ------------------------------------------------------------------ options and threat model
def check_attacks(attacks: list[str]) -> list[str]:
    """AutoAttack attack names for its "custom" version: known ones, each once (ValueError)."""
    if unknown := [a for a in attacks if a not in ATTACKS]:
        raise ValueError(f"unknown attack(s) {', '.join(unknown)}; choose from "
                         f"{', '.join(ATTACKS)}")
    if not attacks or len(set(attacks)) != len(attacks):
        raise ValueError("name each attack once, e.g. apgd-ce,apgd-t")
    return attacks


def _check_options(version: str, norm: str, eps: float, attacks: list[str] | None,
                   budget: dict[str, int | None], batch_size: int, adaptive_steps: int) -> None:
    """Refuse contradictory or impossible settings before any work, with one-line messages."""
    if version not in VERSIONS:
        raise ValueError(f"unknown version {version!r}; choose one of {', '.join(VERSIONS)}")
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; choose one of {', '.join(NORMS)}")
    if not (math.isfinite(eps) and eps > 0):
        raise ValueError(f"eps must be a positive number, got {eps}")
    if version == "custom":
        if not attacks:
            raise ValueError("version='custom' needs attacks, e.g. attacks=['apgd-ce', 'apgd-t']")
        check_attacks(attacks)
    elif attacks is not None:
        raise ValueError(f"attacks apply to version='custom' only; version={version!r} runs "
                         "its own fixed ensemble")
    for name, value in budget.items():
        if value is None:
            continue
        if version != "custom":
            raise ValueError(f"{name} applies to version='custom' only; version={version!r} "
                             "uses AutoAttack's fixed budgets")
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if adaptive_steps < 1:
        raise ValueError(f"adaptive_steps must be at least 1, got {adaptive_steps}")


def _check_data(x: torch.Tensor, y: torch.Tensor) -> None:
    if x.ndim < 2 or y.ndim != 1 or len(x) != len(y) or len(y) == 0:
        raise ValueError(f"need images x [N, ...] and labels y [N] with N > 0, got "
                         f"{tuple(x.shape)} and {tuple(y.shape)}")
    if not x.is_floating_point() or not bool(((x >= 0) & (x <= 1)).all()):
        raise ValueError("x must be float images in [0, 1] (normalisation belongs in the model)")
    if y.is_floating_point():
        raise ValueError("y must hold integer class labels")


def _distance(x_adv: torch.Tensor, x: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-example norm of the perturbation."""
    delta = (x_adv - x).flatten(1)
    if norm == "Linf":
        return delta.abs().amax(1)
    if norm == "L2":
        return delta.norm(dim=1)
    return delta.abs().sum(1)


def _within_threat_model(x_adv: torch.Tensor, x: torch.Tensor, eps: float, norm: str) -> bool:
    """Finite, in [0, 1] and within eps (+ TOLERANCE) of the clean images."""
    inside = _distance(x_adv, x, norm) <= eps + TOLERANCE
    return bool(torch.isfinite(x_adv).all() and (x_adv >= 0).all() and (x_adv <= 1).all()
                and inside.all())


# ------------------------------------------------------------------------ adaptive attack
@dataclass
class _Clusters:
    """What the adaptive attack needs: the embedding and the labelled centroids."""

    embed: Callable[[torch.Tensor], torch.Tensor]
    centroids: torch.Tensor  # [C*K, d]
    centroid_class: torch.Tensor  # [C*K]


def _cluster_info(model: nn.Module, embed: Callable[[torch.Tensor], torch.Tensor] | None,
                  centroids: torch.Tensor | None, centroid_class: torch.Tensor | None,
                  norm: str, y: torch.Tensor) -> _Clusters | None:
    """Given cluster info, or a Classifier's own ClusterHead (cluster id = class*K + i)."""
    given = [v is not None for v in (embed, centroids, centroid_class)]
    if any(given) and not all(given):
        raise ValueError("the adaptive attack needs embed, centroids and centroid_class together")
    if all(given):
        if norm != "Linf":
            raise ValueError(f"the adaptive attack is Linf PGD; it cannot run with norm={norm!r}")
        info = _Clusters(embed, centroids.detach(), centroid_class.detach().long())
    elif norm == "Linf" and isinstance(model, Classifier) and isinstance(model.head, ClusterHead):
        head = model.head
        cls = torch.arange(head.num_classes, device=head.centroids.device)
        info = _Clusters(model.backbone.embed, head.centroids.detach(),
                         cls.repeat_interleave(head.k))
    else:
        return None
    if info.centroids.ndim != 2 or info.centroid_class.shape != info.centroids.shape[:1]:
        raise ValueError(f"centroids [C*K, d] and centroid_class [C*K] disagree: "
                         f"{tuple(info.centroids.shape)} and {tuple(info.centroid_class.shape)}")
    have = set(info.centroid_class.tolist())
    if missing := sorted(set(y.tolist()) - have):
        raise ValueError(f"no centroid for class(es) {missing}")
    if len(have) < 2:
        raise ValueError("the adaptive attack needs centroids of at least two classes")
    return info


# ----------------------------------------------------------------- AutoAttack plumbing
def _set_apgd_iterations(attack: Any, n_iter: int) -> None:
    """APGD derives its checkpoint schedule from n_iter in __init__; keep them consistent."""
    attack.n_iter = attack.n_iter_orig = n_iter
    attack.n_iter_2 = max(int(0.22 * n_iter), 1)
    attack.n_iter_min = max(int(0.06 * n_iter), 1)
    attack.size_decr = max(int(0.03 * n_iter), 1)


def _build_adversary(model: nn.Module, *, norm: str, eps: float, version: str,
                     attacks: list[str] | None, seed: int, device: str | torch.device,
                     budget: dict[str, int | None]) -> AutoAttack:
    """The official AutoAttack object, with custom budgets applied where given."""
    adversary = AutoAttack(model, norm=norm, eps=eps, version=version, seed=seed,
                           device=device, attacks=list(attacks) if attacks else None)
    if budget["n_iter"] is not None:
        _set_apgd_iterations(adversary.apgd, budget["n_iter"])
        _set_apgd_iterations(adversary.apgd_targeted, budget["n_iter"])
        adversary.fab.n_iter = budget["n_iter"]
    if budget["n_restarts"] is not None:
        for attack in (adversary.apgd, adversary.apgd_targeted, adversary.fab, adversary.square):
            attack.n_restarts = budget["n_restarts"]
    if budget["n_target_classes"] is not None:
        adversary.apgd_targeted.n_target_classes = budget["n_target_classes"]
        adversary.fab.n_target_classes = budget["n_target_classes"]
    if budget["n_queries"] is not None:
        adversary.square.n_queries = budget["n_queries"]
    return adversary


def _attack_settings(adversary: AutoAttack, name: str) -> dict[str, Any]:
    """The budget an attack runs with (fab-t always uses one restart, as in AutoAttack)."""
    apgd, targeted, fab, square = (adversary.apgd, adversary.apgd_targeted, adversary.fab,
                                   adversary.square)
    if name in ("apgd-ce", "apgd-dlr", CE_ONLY):
        return {"n_iter": apgd.n_iter, "n_restarts": apgd.n_restarts, "eot_iter": apgd.eot_iter}
    if name == "apgd-t":
        return {"n_iter": targeted.n_iter, "n_restarts": targeted.n_restarts,
                "n_target_classes": targeted.n_target_classes}
    if name == "fab":
        return {"n_iter": fab.n_iter, "n_restarts": fab.n_restarts}
    if name == "fab-t":
        return {"n_iter": fab.n_iter, "n_restarts": 1, "n_target_classes": fab.n_target_classes}
    return {"n_queries": square.n_queries, "n_restarts": square.n_restarts,
            "p_init": square.p_init}


def _flag_key(message: str) -> str:
    """Messages differing only in counts ("there are 3 points ...") are one flag."""
    return re.sub(r"[\d.]+%?", "#", message)


def _add_flag(flags: list[str], message: str) -> None:
    if _flag_key(message) not in {_flag_key(f) for f in flags}:
        flags.append(message)


class _FlagCollector(logging.Handler):
    def __init__(self, sink: list[str]) -> None:
        super().__init__(logging.WARNING)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        _add_flag(self.sink, record.getMessage())


@contextmanager
def _autoattack_flags(sink: list[str]) -> Iterator[None]:
    """Collect the WARNING records of AutoAttack's checks ("auto-attack" logger) into sink."""
    logger = logging.getLogger("auto-attack")
    handler, level = _FlagCollector(sink), logger.level
    if logger.getEffectiveLevel() > logging.WARNING:
        logger.setLevel(logging.WARNING)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


@contextmanager
def _autoattack_call() -> Iterator[None]:
    """Undo two side effects of AutoAttack's dynamic-defence check around each call.

    It ends with sys.settrace(None), which switches off coverage or a debugger, and it never
    resets its call counters, so one dynamic model would flag every later model in the process.
    """
    trace = sys.gettrace()
    for name in checks.funcs:
        checks.funcs[name] = 0
    try:
        yield
    finally:
        sys.settrace(trace)


@contextmanager
def _inference_only(model: nn.Module) -> Iterator[None]:
    """Eval mode and no parameter gradients (FAB calls backward(), which would fill .grad)."""
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        with frozen(model):
            yield
    finally:
        for p in params:
            p.requires_grad_(True)


# --------------------------------------------------------------------- resumable state
def _fingerprint(model: nn.Module, x: torch.Tensor, y: torch.Tensor, clusters: _Clusters | None,
                 settings: dict[str, Any]) -> str:
    """Hash of model, data and settings: a state file only resumes the evaluation it began."""
    h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    tensors = [t for _, t in sorted(model.state_dict().items())] + [x, y]
    if clusters is not None:
        tensors += [clusters.centroids, clusters.centroid_class]
    for t in tensors:
        h.update(t.detach().cpu().contiguous().flatten().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class _State:
    """Progress of one evaluation, saved atomically after every batch when a path is given."""

    def __init__(self, path: StoragePath | None, fingerprint: str) -> None:
        self.path = path
        self.data: dict[str, Any] = {"format": STATE_FORMAT, "fingerprint": fingerprint,
                                     "clean_correct": None, "stages": {}, "flags": [],
                                     "elapsed_s": 0.0}
        if path is not None and path.exists():
            try:
                loaded = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError) as err:
                raise ValueError(f"state file {path} is unreadable ({err})") from None
            if not isinstance(loaded, dict) or loaded.get("format") != STATE_FORMAT:
                raise ValueError(f"{path} is not a clustune AutoAttack state file")
            if loaded.get("fingerprint") != fingerprint:
                raise ValueError(f"state file {path} belongs to another evaluation (model, data "
                                 "or settings differ); delete it or pass another state_path")
            self.data = loaded
        self._elapsed, self._start = self.data["elapsed_s"], time.perf_counter()

    def stage(self, name: str) -> dict[str, Any]:
        return self.data["stages"].setdefault(name, {
            "batches_done": 0, "broken": [], "perturbation": [], "valid": True,
            "max_perturbation": 0.0})

    def broken(self, name: str) -> set[int]:
        return set(self.data["stages"].get(name, {"broken": []})["broken"])

    def save(self) -> None:
        """Also counts the time spent, so an interrupted run's time is not lost."""
        self.data["elapsed_s"] = self._elapsed + time.perf_counter() - self._start
        if self.path is not None:
            self.path.atomic_write_text(json.dumps(self.data))


# ------------------------------------------------------------------------------ the run
class _Evaluation:
    """Stages over one set of points: clean pass, ensemble attacks, CE-only, adaptive."""

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
                 norm: str, batch_size: int, state: _State, progress: Progress) -> None:
        self.model, self.x, self.y, self.eps, self.norm = model, x, y, eps, norm
        self.batch_size, self.state, self.progress = batch_size, state, progress

    def clean_correct(self) -> list[bool]:
        if self.state.data["clean_correct"] is None:
            with torch.no_grad():
                pred = torch.cat([self.model(self.x[i:i + self.batch_size]).argmax(1)
                                  for i in range(0, len(self.x), self.batch_size)])
            self.state.data["clean_correct"] = (pred == self.y).tolist()
            self.state.save()
            self.progress("clean", len(self.x), len(self.x))
        return self.state.data["clean_correct"]

    def run_stage(self, name: str, candidates: list[int],
                  attack: Callable[[torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]]
                  ) -> None:
        """Attack the candidates batch by batch; attack(index, batch number) -> (x_adv, broken)."""
        stage = self.state.stage(name)
        bs = self.batch_size
        n_batches = math.ceil(len(candidates) / bs)
        for b in range(stage["batches_done"], n_batches):
            index = torch.tensor(candidates[b * bs:(b + 1) * bs], device=self.x.device)
            x_adv, broken = attack(index, b)
            x_clean = self.x[index]
            dist = _distance(x_adv, x_clean, self.norm)
            stage["valid"] = stage["valid"] and _within_threat_model(
                x_adv, x_clean, self.eps, self.norm)
            stage["max_perturbation"] = max(stage["max_perturbation"], float(dist.max()))
            hit = broken.nonzero().flatten()
            stage["broken"] += index[hit].tolist()
            stage["perturbation"] += dist[hit].tolist()
            stage["batches_done"] = b + 1
            self.state.save()
            self.progress(name, min((b + 1) * bs, len(candidates)), len(candidates))

    def autoattack(self, adversary: AutoAttack, attack: str
                   ) -> Callable[[torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]]:
        """One official run_standard_evaluation call per batch, with only this attack."""

        def run(index: torch.Tensor, _: int) -> tuple[torch.Tensor, torch.Tensor]:
            adversary.attacks_to_run = ["apgd-ce" if attack == CE_ONLY else attack]
            xb, yb = self.x[index], self.y[index]
            with _autoattack_call():
                x_adv, y_adv = adversary.run_standard_evaluation(
                    xb, yb, batch_size=self.batch_size)
            return x_adv, y_adv != yb

        return run

    def adaptive(self, info: _Clusters, steps: int, seed: int
                 ) -> Callable[[torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]]:
        step_size = 2.5 * self.eps / steps

        def run(index: torch.Tensor, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
            xb, yb = self.x[index], self.y[index]
            generator = torch.Generator().manual_seed(seed + batch)  # same start on resume
            loss = embedding_margin_loss(info.embed, info.centroids, info.centroid_class, yb)
            x_adv = pgd_linf(loss, xb, self.eps, step_size, steps, generator=generator)
            with torch.no_grad():
                return x_adv, self.model(x_adv).argmax(1) != yb

        return run


def evaluate_robustness(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str = "Linf",
    version: str = "standard", attacks: list[str] | None = None, batch_size: int = 500,
    seed: int = 0, device: str | torch.device = "cpu",
    state_path: str | Path | StoragePath | None = None,
    n_iter: int | None = None, n_restarts: int | None = None,
    n_target_classes: int | None = None, n_queries: int | None = None,
    embed: Callable[[torch.Tensor], torch.Tensor] | None = None,
    centroids: torch.Tensor | None = None, centroid_class: torch.Tensor | None = None,
    adaptive_steps: int = 100, progress: Progress | None = None, dataset: str | None = None,
    head: str | None = None, checkpoint: str | None = None,
    config: dict[str, Any] | None = None,
) -> RobustnessResult:
    """Run AutoAttack on (x, y) in [0, 1], plus the CE-only and adaptive checks, and audit them.

    ``version`` picks AutoAttack's ensemble; ``custom`` runs ``attacks`` in the given order, and
    only there may ``n_iter`` (APGD and FAB iterations), ``n_restarts`` (every attack),
    ``n_target_classes`` (APGD-T, FAB-T) and ``n_queries`` (Square) change the budgets.
    The adaptive attack (``adaptive_steps`` Linf PGD steps of 2.5*eps/steps) runs when
    ``embed``, ``centroids`` [C*K, d] and ``centroid_class`` [C*K] are given, or by itself when
    ``model`` is a :class:`trainable.Classifier` with a :class:`trainable.ClusterHead` and the
    norm is Linf. ``state_path`` saves progress after every batch; calling again with the
    same model, data and settings resumes there. The model runs in eval mode without parameter
    gradients; both are restored afterwards. ``dataset``, ``head``, ``checkpoint`` and
    ``config`` are copied into the result.
    """
    budget = {"n_iter": n_iter, "n_restarts": n_restarts, "n_target_classes": n_target_classes,
              "n_queries": n_queries}
    _check_options(version, norm, eps, attacks, budget, batch_size, adaptive_steps)
    _check_data(x, y)
    x = x.detach().to(device=device, dtype=torch.float32)
    y = y.detach().to(device=device, dtype=torch.long)
    info = _cluster_info(model, embed, centroids, centroid_class, norm, y)
    report = progress or (lambda stage, done, total: None)
    flags: list[str] = []
    with _inference_only(model), _autoattack_flags(flags):
        adversary = _build_adversary(model, norm=norm, eps=eps, version=version,
                                     attacks=attacks, seed=seed, device=device, budget=budget)
        ensemble = list(adversary.attacks_to_run)
        settings = {name: _attack_settings(adversary, name) for name in ensemble}
        ce_separate = ensemble[0] != "apgd-ce"
        if ce_separate:
            settings[CE_ONLY] = _attack_settings(adversary, CE_ONLY)
        if info is not None:
            settings[ADAPTIVE] = {"steps": adaptive_steps, "step_size": 2.5 * eps / adaptive_steps,
                                  "restarts": 1}
        run_settings = {"eps": eps, "norm": norm, "version": version, "attacks": ensemble,
                        "attack_settings": settings, "seed": seed, "batch_size": batch_size}
        state = _State(storage_path(state_path) if state_path is not None else None,
                       _fingerprint(model, x, y, info, run_settings))
        for message in state.data["flags"]:
            _add_flag(flags, message)
        state.data["flags"] = flags  # the collector now appends to what the state saves
        run = _Evaluation(model, x, y, eps, norm, batch_size, state, report)
        clean = run.clean_correct()
        n = len(clean)
        earlier: set[int] = set()
        for attack in ensemble:
            run.run_stage(attack, [i for i in range(n) if clean[i] and i not in earlier],
                          run.autoattack(adversary, attack))
            earlier |= state.broken(attack)
        correct = [i for i in range(n) if clean[i]]
        if ce_separate:
            run.run_stage(CE_ONLY, correct, run.autoattack(adversary, CE_ONLY))
        if info is not None:
            run.run_stage(ADAPTIVE, correct, run.adaptive(info, adaptive_steps, seed))
        result = _summarise(state, ensemble, ce_separate, info is not None, y.tolist(),
                            run_settings, adversary)
        state.save()
    result.wall_time_s = state.data["elapsed_s"]
    result.dataset, result.head, result.checkpoint = dataset, head, checkpoint
    result.config = dict(config or {})
    return result


def _summarise(state: _State, ensemble: list[str], ce_separate: bool, adaptive: bool,
               labels: list[int], run_settings: dict[str, Any],
               adversary: AutoAttack) -> RobustnessResult:
    """Per-example columns first; every summary number is computed from them."""
    clean = state.data["clean_correct"]
    n = len(clean)
    broken_by: list[str | None] = [None] * n
    perturbation = [0.0] * n
    per_attack, alive = {}, list(clean)
    for attack in ensemble:
        stage = state.stage(attack)
        for i, dist in zip(stage["broken"], stage["perturbation"], strict=True):
            broken_by[i], perturbation[i], alive[i] = attack, dist, False
        per_attack[attack] = sum(alive) / n
    if ce_separate:
        ce_broken = state.broken(CE_ONLY)
        ce_robust = [c and i not in ce_broken for i, c in enumerate(clean)]
    else:
        ce_robust = [c and b != "apgd-ce" for c, b in zip(clean, broken_by, strict=True)]
    adaptive_robust: list[bool | None] = [None] * n
    worst = [a and c for a, c in zip(alive, ce_robust, strict=True)]
    if adaptive:
        ad_broken = state.broken(ADAPTIVE)
        adaptive_robust = [c and i not in ad_broken for i, c in enumerate(clean)]
        worst = [w and a for w, a in zip(worst, adaptive_robust, strict=True)]
    clean_acc, aa_acc, ce_acc = sum(clean) / n, sum(alive) / n, sum(ce_robust) / n
    checks.check_square_sr({"clean": clean_acc, **per_attack}, logger=adversary.logger)
    flags = list(state.data["flags"])
    masking = list(flags)
    if 100 * (sum(ce_robust) - sum(alive)) > CE_GAP_POINTS * n:
        masking.append("ce_gap")
    adaptive_acc = adaptive_gap = None
    if adaptive:
        adaptive_acc = sum(adaptive_robust) / n
        adaptive_gap = aa_acc - adaptive_acc
        if 100 * (sum(alive) - sum(adaptive_robust)) > ADAPTIVE_GAP_POINTS * n:
            masking.append("adaptive_gap")
    stages = list(state.data["stages"].values())
    return RobustnessResult(
        eps=run_settings["eps"], norm=run_settings["norm"], version=run_settings["version"],
        attacks=ensemble, attack_settings=run_settings["attack_settings"],
        seed=run_settings["seed"], batch_size=run_settings["batch_size"], n_examples=n,
        clean_acc=clean_acc, autoattack_acc=aa_acc, per_attack_acc=per_attack,
        ce_only_acc=ce_acc, ce_gap=ce_acc - aa_acc, adaptive_acc=adaptive_acc,
        adaptive_gap=adaptive_gap, worst_case_acc=sum(worst) / n, autoattack_flags=flags,
        masking_flags=masking, within_threat_model=all(s["valid"] for s in stages),
        max_perturbation=max([s["max_perturbation"] for s in stages], default=0.0),
        per_example={
            "index": list(range(n)), "label": labels, "clean_correct": clean,
            "autoattack_robust": alive, "broken_by": broken_by, "perturbation": perturbation,
            "ce_only_robust": ce_robust, "adaptive_robust": adaptive_robust,
            "worst_case_robust": worst},
        wall_time_s=0.0,
        software={"pyautoattack": pyautoattack.__version__, "torch": torch.__version__},
    )


def evaluate_checkpoint(path: str | Path, *, head: str | None = None, examples: int = 500,
                        split: str = "test", eps: float | None = None,
                        version: str = "standard", device: str | torch.device = "cpu",
                        state_path: str | Path | StoragePath | None = None,
                        progress: Progress | None = None,
                        **options: Any) -> RobustnessResult:
    """Evaluate a clustune checkpoint on the first ``examples`` images of its dataset's split.

    ``split`` is "test" (final reports) or "val" (the held-out part of the training set that
    search decisions use); ``eps`` defaults to the threat model the model was validated for
    (``eval.eps``, else ``attack.eps``, else the dataset's); ``head`` re-heads a clustering model.
    Further ``options`` (attacks, batch_size, seed, n_iter, ...) go to
    :func:`evaluate_robustness`.
    """
    if split not in ("test", "val"):
        raise ValueError(f"unknown split {split!r}; choose test or val")
    if examples < 1:
        raise ValueError(f"examples must be at least 1, got {examples}")
    clf, cfg, state = load_classifier(path, head, device)
    d = cfg.data
    data = load_dataset(cfg)
    x_all, y_all = (data.x_test, data.y_test) if split == "test" else (data.x_val, data.y_val)
    x = x_all[:examples].float() / 255.0
    return evaluate_robustness(
        clf, x, y_all[:examples], eps=cfg.eval_eps if eps is None else eps,
        version=version, device=device, state_path=state_path, progress=progress,
        dataset=d.dataset, head=head or state.get("head_kind", "linear"),
        checkpoint=str(path), config=cfg.model_dump(mode="json"), **options)
