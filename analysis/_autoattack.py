"""AutoAttack evaluation with a gradient-masking audit: running it and resuming it.

Why: the ClusTR family looked robust to CE-based PGD and fell to ~0% under AutoAttack. So the
final stage runs the official ensemble (``pyautoattack``), records what every attack did per
example, re-runs the CE-only attack for comparison, attacks cluster heads adaptively in
embedding space, and flags any gap between them (:mod:`._audit`) instead of reporting one
number. The result is a :class:`RobustnessResult` (:mod:`._result` owns its schema).

How the ensemble is driven: the official :class:`pyautoattack.AutoAttack` object (the version's
own attack settings) is called attack by attack and batch by batch, on exactly the points and
batches its own loop would attack, so results equal one ``run_standard_evaluation`` call (the
tests check this) while recording which attack first broke each example and checkpointing
after every batch (pyautoattack 0.2.0's own ``state_path`` cannot resume: it saves its attack
set as a string and then refuses every state it wrote).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import re
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyautoattack
import torch
from pyautoattack import AutoAttack, checks
from torch import nn

from trainable import (
    Classifier,
    ClusterHead,
    StoragePath,
    embedding_margin_loss,
    frozen,
    load_classifier,
    load_dataset,
    pgd,
    storage_path,
)

from ._audit import gap_flags
from ._result import RobustnessResult, check_attacks

__all__ = ["AttackOptions", "Provenance", "ClusterGeometry", "evaluate_checkpoint",
           "evaluate_robustness"]

STATE_FORMAT = "clustune-autoattack-state-v1"
VERSIONS = ("standard", "plus", "rand", "custom")
NORMS = ("Linf", "L2", "L1")
TOLERANCE = 1e-5  # slack on eps when checking the threat model (float rounding)
CE_ONLY = "apgd-ce (ce-only)"
PGD_NORM = {"Linf": "linf", "L2": "l2"}  # AutoAttack's norm names -> trainable.pgd's, where the
# adaptive attack runs
ADAPTIVE = "adaptive"

Progress = Callable[[str, int, int], None]  # (stage, examples done, examples in the stage)


# ------------------------------------------------------------------ options and threat model
@dataclass(frozen=True, kw_only=True)
class AttackOptions:
    """What an evaluation runs; contradictory or impossible settings are refused when the
    options are made (ValueError, one line).

    ``version`` picks AutoAttack's ensemble; ``custom`` runs ``attacks`` in the given order, and
    only there may ``n_iter`` (APGD and FAB iterations), ``n_restarts`` (every attack),
    ``n_target_classes`` (APGD-T, FAB-T) and ``n_queries`` (Square) change the budgets.
    ``eps`` and ``norm``: the threat model (None: a checkpoint's own, in
    :func:`evaluate_checkpoint`). The adaptive embedding attack takes ``adaptive_steps`` PGD
    steps of 2.5*eps/steps. ``seed`` and ``batch_size`` both change AutoAttack's results.
    """

    eps: float | None = None
    norm: str | None = None
    version: str = "standard"
    attacks: list[str] | None = None
    n_iter: int | None = None
    n_restarts: int | None = None
    n_target_classes: int | None = None
    n_queries: int | None = None
    adaptive_steps: int = 100
    batch_size: int = 500
    seed: int = 0

    def __post_init__(self) -> None:
        if self.version not in VERSIONS:
            raise ValueError(f"unknown version {self.version!r}; choose one of "
                             f"{', '.join(VERSIONS)}")
        if self.norm is not None and self.norm not in NORMS:
            raise ValueError(f"unknown norm {self.norm!r}; choose one of {', '.join(NORMS)}")
        if self.eps is not None and not (math.isfinite(self.eps) and self.eps > 0):
            raise ValueError(f"eps must be a positive number, got {self.eps}")
        if self.version == "custom":
            if not self.attacks:
                raise ValueError("version='custom' needs attacks, e.g. "
                                 "attacks=['apgd-ce', 'apgd-t']")
            check_attacks(self.attacks)
        elif self.attacks is not None:
            raise ValueError(f"attacks apply to version='custom' only; version={self.version!r} "
                             "runs its own fixed ensemble")
        for name, value in self.budget.items():
            if value is None:
                continue
            if self.version != "custom":
                raise ValueError(f"{name} applies to version='custom' only; "
                                 f"version={self.version!r} uses AutoAttack's fixed budgets")
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.adaptive_steps < 1:
            raise ValueError(f"adaptive_steps must be at least 1, got {self.adaptive_steps}")

    @property
    def budget(self) -> dict[str, int | None]:
        return {"n_iter": self.n_iter, "n_restarts": self.n_restarts,
                "n_target_classes": self.n_target_classes, "n_queries": self.n_queries}

    def threat_model(self) -> tuple[float, str]:
        """(eps, norm), once both are known (the norm defaults to Linf)."""
        if self.eps is None:
            raise ValueError("eps is needed: the radius of the threat model")
        return self.eps, self.norm or "Linf"


@dataclass(frozen=True)
class Provenance:
    """What was evaluated, copied into the result: the dataset, the head judged, the checkpoint
    and its training config."""

    dataset: str | None = None
    head: str | None = None
    checkpoint: str | None = None
    config: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ClusterGeometry:
    """What the adaptive attack needs of a clustering model: its embedding and the labelled
    centroids (a :class:`trainable.Classifier` with a cluster head has them itself)."""

    embed: Callable[[torch.Tensor], torch.Tensor]
    centroids: torch.Tensor  # [C*K, d]
    centroid_class: torch.Tensor  # [C*K]


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
def _geometry(model: nn.Module, given: ClusterGeometry | None, norm: str,
              y: torch.Tensor) -> ClusterGeometry | None:
    """The adaptive attack's geometry: given, or a Classifier's own ClusterHead (cluster id =
    class*K + i); None for a model without one."""
    if given is not None:
        if norm not in PGD_NORM:
            raise ValueError(f"the adaptive attack is PGD in Linf or L2; it cannot run with "
                             f"norm={norm!r}")
        info = ClusterGeometry(given.embed, given.centroids.detach(),
                               given.centroid_class.detach().long())
    elif norm in PGD_NORM and isinstance(model, Classifier) and \
            isinstance(model.head, ClusterHead):
        head = model.head
        info = ClusterGeometry(model.backbone.embed, head.centroids.detach(),
                               head.centroid_class)
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


def _build_adversary(model: nn.Module, options: AttackOptions,
                     device: str | torch.device) -> AutoAttack:
    """The official AutoAttack object, with custom budgets applied where given."""
    eps, norm = options.threat_model()
    budget = options.budget
    adversary = AutoAttack(model, norm=norm, eps=eps, version=options.version,
                           seed=options.seed, device=device,
                           attacks=list(options.attacks) if options.attacks else None)
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


def _forwards(name: str, settings: dict[str, Any]) -> int:
    """About how many model calls one batch of an attack makes at most (an APGD iteration
    calls it once, FAB's about twice, Square once per query): the scale of its progress."""
    if "n_queries" in settings:
        return settings["n_queries"] * settings["n_restarts"]
    per_iter = 2 if name.startswith("fab") else 1
    return (settings["n_iter"] * settings["n_restarts"] * settings.get("n_target_classes", 1)
            * per_iter)


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
def _fingerprint(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                 clusters: ClusterGeometry | None, settings: dict[str, Any]) -> str:
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
                  attack: Callable[[torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]],
                  forwards: int = 0) -> None:
        """Attack the candidates batch by batch; attack(index, batch number) -> (x_adv, broken).
        With ``forwards`` (the model calls one batch's attack makes at most), progress moves
        within a batch too, as the attack calls the model."""
        stage = self.state.stage(name)
        bs = self.batch_size
        n_batches = math.ceil(len(candidates) / bs)
        for b in range(stage["batches_done"], n_batches):
            index = torch.tensor(candidates[b * bs:(b + 1) * bs], device=self.x.device)
            with self._moving(name, b * bs, len(index), len(candidates), forwards):
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

    @contextmanager
    def _moving(self, name: str, before: int, size: int, total: int,
                forwards: int) -> Iterator[None]:
        """Report the share of a batch's model calls made so far (never the whole batch: that
        is reported once its result is saved)."""
        if not forwards:
            yield
            return
        calls, shown = [0], [before]

        def count(*_: Any) -> None:
            calls[0] += 1
            done = before + min(size - 1, size * calls[0] // forwards)
            if done > shown[0]:
                shown[0] = done
                self.progress(name, done, total)

        hook = self.model.register_forward_pre_hook(count)
        try:
            yield
        finally:
            hook.remove()

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

    def adaptive(self, info: ClusterGeometry, steps: int, seed: int
                 ) -> Callable[[torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]]:
        step_size = 2.5 * self.eps / steps

        def run(index: torch.Tensor, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
            xb, yb = self.x[index], self.y[index]
            generator = torch.Generator().manual_seed(seed + batch)  # same start on resume
            loss = embedding_margin_loss(info.embed, info.centroids, info.centroid_class, yb)
            x_adv = pgd(loss, xb, self.eps, step_size, steps, PGD_NORM[self.norm],
                        generator=generator)
            with torch.no_grad():
                return x_adv, self.model(x_adv).argmax(1) != yb

        return run


def evaluate_robustness(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                        options: AttackOptions, *, device: str | torch.device = "cpu",
                        geometry: ClusterGeometry | None = None,
                        state_path: str | Path | StoragePath | None = None,
                        progress: Progress | None = None,
                        provenance: Provenance | None = None) -> RobustnessResult:
    """Run AutoAttack on (x, y) in [0, 1], plus the CE-only and adaptive checks, and audit them.

    The adaptive attack runs when ``geometry`` is given, or by itself when ``model`` is a
    :class:`trainable.Classifier` with a :class:`trainable.ClusterHead` and the norm is Linf or
    L2.
    ``state_path`` saves progress after every batch; calling again with the same model, data
    and options resumes there. The model runs in eval mode without parameter gradients; both
    are restored afterwards. ``provenance`` is copied into the result.
    """
    eps, norm = options.threat_model()
    _check_data(x, y)
    x = x.detach().to(device=device, dtype=torch.float32)
    y = y.detach().to(device=device, dtype=torch.long)
    info = _geometry(model, geometry, norm, y)
    report = progress or (lambda stage, done, total: None)
    flags: list[str] = []
    with _inference_only(model), _autoattack_flags(flags):
        adversary = _build_adversary(model, options, device)
        ensemble = list(adversary.attacks_to_run)
        settings = {name: _attack_settings(adversary, name) for name in ensemble}
        ce_separate = ensemble[0] != "apgd-ce"
        if ce_separate:
            settings[CE_ONLY] = _attack_settings(adversary, CE_ONLY)
        steps = options.adaptive_steps
        if info is not None:
            settings[ADAPTIVE] = {"steps": steps, "step_size": 2.5 * eps / steps, "restarts": 1}
        run_settings = {"eps": eps, "norm": norm, "version": options.version,
                        "attacks": ensemble, "attack_settings": settings,
                        "seed": options.seed, "batch_size": options.batch_size}
        state = _State(storage_path(state_path) if state_path is not None else None,
                       _fingerprint(model, x, y, info, run_settings))
        for message in state.data["flags"]:
            _add_flag(flags, message)
        state.data["flags"] = flags  # the collector now appends to what the state saves
        run = _Evaluation(model, x, y, eps, norm, options.batch_size, state, report)
        clean = run.clean_correct()
        n = len(clean)
        earlier: set[int] = set()
        for attack in ensemble:
            run.run_stage(attack, [i for i in range(n) if clean[i] and i not in earlier],
                          run.autoattack(adversary, attack), _forwards(attack, settings[attack]))
            earlier |= state.broken(attack)
        correct = [i for i in range(n) if clean[i]]
        if ce_separate:
            run.run_stage(CE_ONLY, correct, run.autoattack(adversary, CE_ONLY),
                          _forwards(CE_ONLY, settings[CE_ONLY]))
        if info is not None:
            run.run_stage(ADAPTIVE, correct, run.adaptive(info, steps, options.seed))
        result = _summarise(state, ensemble, ce_separate, info is not None, y.tolist(),
                            run_settings, adversary)
        state.save()
    about = provenance or Provenance()
    result.wall_time_s = state.data["elapsed_s"]
    result.dataset, result.head, result.checkpoint = about.dataset, about.head, about.checkpoint
    result.config = dict(about.config)
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
    masking = flags + gap_flags(n, sum(alive), sum(ce_robust),
                                sum(adaptive_robust) if adaptive else None)
    adaptive_acc = adaptive_gap = None
    if adaptive:
        adaptive_acc = sum(adaptive_robust) / n
        adaptive_gap = aa_acc - adaptive_acc
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


def evaluate_checkpoint(path: str | Path, options: AttackOptions | None = None, *,
                        head: str | None = None, examples: int = 500, split: str = "test",
                        device: str | torch.device = "cpu",
                        state_path: str | Path | StoragePath | None = None,
                        progress: Progress | None = None) -> RobustnessResult:
    """Evaluate a clustune checkpoint on the first ``examples`` images of its dataset's split.

    ``split`` is "test" (final reports) or "val" (the held-out part of the training set that
    search decisions use); an ``options.eps`` or ``options.norm`` of None is the threat model
    the model was validated for (``eval.eps``, else ``attack.eps``, else the dataset's radius
    for ``attack.norm``); ``head`` re-heads a clustering model.
    """
    if split not in ("test", "val"):
        raise ValueError(f"unknown split {split!r}; choose test or val")
    if examples < 1:
        raise ValueError(f"examples must be at least 1, got {examples}")
    clf, cfg, state = load_classifier(path, head, device)
    options = options or AttackOptions()
    options = dataclasses.replace(
        options, eps=cfg.eval_eps if options.eps is None else options.eps,
        norm=options.norm or {"linf": "Linf", "l2": "L2"}[cfg.attack.norm])
    data = load_dataset(cfg)
    x_all, y_all = (data.x_test, data.y_test) if split == "test" else (data.x_val, data.y_val)
    x = x_all[:examples].float() / 255.0
    about = Provenance(cfg.data.dataset, head or state.get("head_kind", "linear"), str(path),
                       cfg.model_dump(mode="json"))
    return evaluate_robustness(clf, x, y_all[:examples], options, device=device,
                               state_path=state_path, progress=progress, provenance=about)
