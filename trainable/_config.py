"""One typed, validated training configuration: YAML presets plus ``--set a.b=value`` overrides.

Every knob of the paper's table is a field here, so each row of the table is a config.
Validation refuses unknown keys, wrong types and contradictory settings with one-line errors.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    model_validator,
)

from ._datasets import DATASETS
from ._errors import ClustuneError

__all__ = ["ConfigError", "ConfigSection", "TrainConfig", "HEADS", "SEARCH_METRICS",
           "apply_overrides", "build_config", "cluster_limits", "is_draw", "list_presets",
           "load_config", "load_preset",
           "parse_overrides", "read_yaml", "recorded_config", "resolve_trial_config",
           "validation_message", "warm_start_key"]

HeadKind = Literal["raw", "logprob", "learned"]  # embedding -> class scores (trainable/_heads.py)
HEADS: tuple[str, ...] = HeadKind.__args__
CLUSTERING_VARIANTS = ("magnet", "qtrades", "magnet_adv")
ADVERSARIAL_VARIANTS = ("pgd_at", "trades", "qtrades", "magnet_adv")
# what Trainer.train_epoch reports that a search can rank trials by
SEARCH_METRICS = ("val_clean_acc", "val_pgd_acc", "val_robust_acc", "val_margin",
                  "val_radius_est", "train_loss")


def cluster_limits(classes: int, k: int) -> tuple[int, int]:
    """The largest L and M for C classes and K clusters per class: L <= C*K; M <= C*K and
    M-1 <= (C-1)*K (a batch's seed cluster needs M-1 impostor clusters of other classes)."""
    return classes * k, min(classes * k, (classes - 1) * k + 1)


class ConfigError(ClustuneError, ValueError):
    """A configuration that cannot be run; the message is one line naming the problem."""


class ConfigSection(BaseModel):
    """A config section: unknown keys, and inf or NaN in any number, are refused."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class DataConfig(ConfigSection):
    dataset: Literal["fashion-mnist", "digits", "cifar10"] = "fashion-mnist"
    root: str | None = None  # dataset folder or archive; None: the dataset's standard place
    val_fraction: float = Field(0.1, gt=0, lt=1)  # share of the training set held out
    train_subset: int | None = Field(None, gt=0, le=10**9)  # train on this many (stratified)
    augment: bool = True  # random crop with padding (+ flip where the dataset allows)
    verify_md5: bool = True  # check CIFAR-10 files against the official checksums
    download: bool = False  # CIFAR-10 only, and only when asked


class ModelConfig(ConfigSection):
    arch: Literal["small_cnn", "resnet18"] = "small_cnn"
    width: int = Field(32, ge=4, le=4096)  # small_cnn channels of the first block
    embedding_dim: int = Field(128, ge=2, le=65_536)  # small_cnn only; ResNet-18: 512-d


class ClusterConfig(ConfigSection):
    k: int = Field(2, ge=1, le=10_000)  # clusters per class (K)
    l: int = Field(10, ge=1)  # noqa: E741 - nearest clusters kept by the head (L)
    m: int = Field(12, ge=2)  # clusters per batch (M)
    d: int = Field(20, ge=2, le=100_000)  # examples per cluster (D), 2+ (sigma^2 > 0); batch =
    # M*D
    alpha: float = Field(1.0, ge=0, le=1e6)  # magnet margin (ClusTR code: 12.5, Rippel: 1.0)
    head: HeadKind = "logprob"
    kmeans_iters: int = Field(20, ge=1, le=10_000)


class AttackConfig(ConfigSection):
    """The threat model and the training-time attack: eps-ball, T steps of size eta, and what
    the attack maximises. The validation proxy and the final stage judge the same norm."""

    norm: Literal["linf", "l2"] = "linf"  # the threat model (training, validation, audit)
    eps: float | None = Field(None, ge=0, le=100)  # radius (images in [0, 1]); None: the
    # dataset's for the norm (Linf 0.1 or 8/255; L2 1.5, 0.5 or 0.5: trainable/_datasets.py)
    steps: int = Field(1, ge=1, le=1000)  # T
    step_size: float = Field(10 / 255, gt=0, le=100)  # eta (may exceed eps, as in E-QTRADES)
    loss: Literal["ce", "mse", "kl"] = "ce"  # qtrades: consistency type the attack maximises
    # magnet_adv: what its attack maximises: the magnet loss (ClusTR+ADV), the head's
    # cross-entropy (what the audit attacks), or the embedding's centroid margin
    target: Literal["magnet", "head", "margin"] = "magnet"


class ObjectiveConfig(ConfigSection):
    variant: Literal["ce", "pgd_at", "trades", "magnet", "qtrades", "magnet_adv"] = "qtrades"
    lam: float = Field(8.0, ge=0, le=1e6)  # lambda: consistency (qtrades), adversarial
    # magnet, TRADES beta
    lam_ce: float = Field(0.0, ge=0, le=1e6)  # lambda': CE on the head's clean logits
    # an adversarial term on the head at the attack's x_adv (qtrades, magnet_adv; 0 = off):
    # CE(z(x_adv), y), or TRADES' KL(softmax z(x) || softmax z(x_adv))
    lam_head_adv: float = Field(0.0, ge=0, le=1e6)
    head_adv_loss: Literal["ce", "kl"] = "ce"
    consistency: Literal["ce", "mse", "kl"] = "ce"  # qtrades training consistency type
    reduction: Literal["mean", "sum"] = "mean"  # of the consistency term (sum: TRADES_2)
    adv_mode: Literal["pgd", "free"] = "pgd"  # magnet_adv: two-term PGD or free replays
    free_replays: int = Field(4, ge=1)  # m, for adv_mode free


class OptimConfig(ConfigSection):
    optimizer: Literal["adam", "sgd"] = "adam"
    lr: float = Field(1e-4, gt=0, le=1e6)
    weight_decay: float = Field(0.0, ge=0, le=1e6)
    momentum: float = Field(0.9, ge=0, lt=1)  # sgd only
    schedule: Literal["constant", "cosine"] = "constant"
    epochs: int = Field(25, ge=1, le=100_000)  # after the warm start
    batches_per_epoch: int | None = Field(None, ge=1, le=10**8)  # None: one pass over the data
    batch_size: int | None = Field(None, ge=2, le=10**6)  # non-clustering variants; None: M*D


class WarmStartConfig(ConfigSection):
    """Training of the backbone and its linear head before the objective: plain CE (ClusTR's),
    or adversarial (PGD-AT or TRADES in the config's threat model)."""

    ce_epochs: int = Field(0, ge=0, le=10_000)  # epochs of the warm start, whatever its variant
    checkpoint: str | None = None  # or a clustune checkpoint to start from
    lr: float = Field(1e-3, gt=0, le=10)  # Adam learning rate of the warm start
    # images per warm-start step; None: the trial's batch (M x D for clustering variants), so
    # a space over M trains one warm start per M; a fixed size lets trials share one
    batch_size: int | None = Field(None, ge=2, le=10**6)
    variant: Literal["ce", "pgd_at", "trades"] = "ce"
    attack_steps: int = Field(10, ge=1, le=1000)  # PGD steps of an adversarial warm start,
    # each 2.5 eps / steps (Madry et al.)
    beta: float = Field(6.0, ge=0, le=1e6)  # TRADES' weight of the KL term
    eps_ramp: bool = False  # eps grows linearly from 0 to attack.eps over the warm start


class EvalConfig(ConfigSection):
    examples: int = Field(500, ge=1, le=10_000_000)  # validation examples attacked each epoch
    pgd_steps: int = Field(10, ge=1, le=1000)
    pgd_step_size: float | None = Field(None, gt=0, le=100)  # None: eps/4
    eps: float | None = Field(None, ge=0, le=100)  # None: the training attack's eps


class FastPathConfig(ConfigSection):
    """Speed options, each tested to match the plain path within tolerance. The final-stage
    AutoAttack runs the float32 model: it keeps channels_last (a memory layout), never bf16 or
    compile. Which option pays where: docs/performance.md (bench/bench.py)."""

    amp: Literal["off", "bf16"] = "off"  # bf16 autocast of the backbone (losses stay float32)
    channels_last: bool = False  # NHWC layout: GPUs; also the small CNN on CPUs (1.3-1.7x)
    compile: bool = False  # torch.compile the backbone (compiles on the first batches)


class TrainConfig(ConfigSection):
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    clusters: ClusterConfig = ClusterConfig()
    attack: AttackConfig = AttackConfig()
    objective: ObjectiveConfig = ObjectiveConfig()
    optim: OptimConfig = OptimConfig()
    warm_start: WarmStartConfig = WarmStartConfig()
    eval: EvalConfig = EvalConfig()
    fast: FastPathConfig = FastPathConfig()
    seed: int = Field(99, ge=0, le=2**31 - 1)  # every random stream of the run
    device: str = "auto"  # auto: cuda when there is one
    threads: int | None = Field(None, ge=1, le=4096)  # CPU threads (None: PyTorch's
    # default); the numbers depend on it, so a search records its trials' count here

    @model_validator(mode="after")
    def _consistent(self, info: ValidationInfo) -> TrainConfig:
        c, cl, obj = DATASETS[self.data.dataset].classes, self.clusters, self.objective
        max_l, max_m = cluster_limits(c, cl.k)
        if cl.l > max_l:
            raise ValueError(f"clusters.l={cl.l} exceeds C*K={max_l}")
        if cl.m > max_m:
            raise ValueError(f"clusters.m={cl.m} exceeds C*K={c * cl.k}" if cl.m > c * cl.k else
                             f"clusters.m={cl.m} needs M-1 <= (C-1)*K={(c - 1) * cl.k} "
                             "impostors")
        if cl.head == "learned" and obj.lam_ce == 0 and self.is_clustering:
            raise ValueError("clusters.head=learned is trained by objective.lam_ce; set it > 0")
        if obj.adv_mode == "free" and obj.variant != "magnet_adv":
            raise ValueError("objective.adv_mode=free applies to variant magnet_adv only")
        if obj.adv_mode == "free" and obj.lam_ce > 0:
            raise ValueError("objective.adv_mode=free has no CE term, so objective.lam_ce would "
                             "be ignored (and a learned head never trained); set it to 0 or "
                             "use adv_mode=pgd")
        if obj.adv_mode == "free" and self.attack.norm != "linf":
            raise ValueError("objective.adv_mode=free replays signed (Linf) steps; use "
                             "adv_mode=pgd for attack.norm=l2")
        self._check_threat_model()
        if not DEVICE.fullmatch(self.device):
            raise ValueError(f"device={self.device!r}: use auto, cpu, cuda or cuda:N")
        ignored = self.ignored_settings()
        if ignored and not (info.context or {}).get(KEEP_IGNORED):
            raise ValueError(ignored[0][1])
        if self.warm_start.checkpoint and self.warm_start.ce_epochs:
            raise ValueError("warm_start: give checkpoint or ce_epochs, not both")
        if self.data.dataset == "cifar10" and self.data.root is None and not self.data.download:
            raise ValueError("data.root must name the CIFAR-10 folder or archive for cifar10")
        return self

    def _check_threat_model(self) -> None:
        """Radii in the norm's own units: a Linf radius is a fraction of the pixel range (at
        most 1); an L2 radius far below the dataset's usual one is a Linf radius given by
        mistake (0.1 on Fashion-MNIST, whose L2 radius is 1.5)."""
        a, facts = self.attack, DATASETS[self.data.dataset]
        radii = {"attack.eps": a.eps, "eval.eps": self.eval.eps}
        if a.norm == "linf":
            for name, value in {**radii, "attack.step_size": a.step_size,
                                "eval.pgd_step_size": self.eval.pgd_step_size}.items():
                if value is not None and value > 1:
                    raise ValueError(f"{name}={value} exceeds 1, the pixel range of a Linf "
                                     "threat model (attack.norm=linf)")
            return
        for name, value in radii.items():
            if value is not None and 0 < value < facts.default_l2_eps / 5:
                raise ValueError(f"{name}={value} is a Linf-sized radius for attack.norm=l2 on "
                                 f"{facts.name}, whose usual L2 radius is "
                                 f"{facts.default_l2_eps:g}; give an L2 radius (or leave it "
                                 "out for the usual one)")

    def ignored_settings(self) -> list[tuple[str, str]]:
        """(dotted name, why) of each setting changed from its default that this config's
        variant, optimiser or architecture would not use: refused rather than silently
        dropped."""
        obj, optim, arch, ws = self.objective, self.optim, self.model.arch, self.warm_start
        adversarial_ws = ws.variant != "ce" and ws.ce_epochs > 0

        def changed(section: ConfigSection, name: str) -> bool:
            return getattr(section, name) != type(section).model_fields[name].default

        rules = [  # (section, setting, ignored when, who uses it)
            (obj, "consistency", obj.variant != "qtrades", "objective.variant=qtrades"),
            (obj, "reduction", obj.variant != "qtrades", "objective.variant=qtrades"),
            (self.attack, "loss", obj.variant != "qtrades", "objective.variant=qtrades"),
            (self.attack, "target", obj.variant != "magnet_adv" or obj.adv_mode == "free",
             "objective.variant=magnet_adv with adv_mode=pgd"),
            (obj, "lam_head_adv", obj.variant not in ("qtrades", "magnet_adv")
             or obj.adv_mode == "free",
             "objective.variant qtrades or magnet_adv (adv_mode=pgd)"),
            (obj, "head_adv_loss", obj.lam_head_adv == 0, "objective.lam_head_adv > 0"),
            (ws, "variant", ws.ce_epochs == 0, "warm_start.ce_epochs > 0"),
            (ws, "batch_size", ws.ce_epochs == 0, "warm_start.ce_epochs > 0"),
            (ws, "attack_steps", not adversarial_ws, "an adversarial warm_start.variant"),
            (ws, "eps_ramp", not adversarial_ws, "an adversarial warm_start.variant"),
            (ws, "beta", ws.variant != "trades" or ws.ce_epochs == 0,
             "warm_start.variant=trades"),
            (obj, "lam", obj.variant in ("ce", "pgd_at", "magnet"),
             "objective.variant trades, qtrades or magnet_adv"),
            (obj, "lam_ce", obj.variant not in ("qtrades", "magnet_adv"),
             "objective.variant qtrades or magnet_adv"),
            (obj, "free_replays", obj.adv_mode != "free", "objective.adv_mode=free"),
            (optim, "momentum", optim.optimizer != "sgd", "optim.optimizer=sgd"),
            (optim, "batch_size", self.is_clustering,
             "a non-clustering variant (clustering ones train on clusters.m x clusters.d)"),
            (self.model, "width", arch != "small_cnn", "model.arch=small_cnn"),
            (self.model, "embedding_dim", arch != "small_cnn", "model.arch=small_cnn"),
        ]
        section_of = {id(getattr(self, f)): f for f in type(self).model_fields}
        return [(f"{section_of[id(section)]}.{name}",
                 f"{section_of[id(section)]}.{name}={getattr(section, name)} would be ignored "
                 f"(used only with {user})")
                for section, name, unused, user in rules if unused and changed(section, name)]

    @property
    def is_clustering(self) -> bool:
        return self.objective.variant in CLUSTERING_VARIANTS

    @property
    def eps(self) -> float:
        """The threat model's radius: attack.eps, else the dataset's for the norm."""
        if self.attack.eps is not None:
            return self.attack.eps
        facts = DATASETS[self.data.dataset]
        return facts.default_eps if self.attack.norm == "linf" else facts.default_l2_eps

    @property
    def eval_eps(self) -> float:
        return self.eval.eps if self.eval.eps is not None else self.eps

    @property
    def num_classes(self) -> int:
        return DATASETS[self.data.dataset].classes

    @property
    def batch_size(self) -> int:
        if self.is_clustering:
            return self.clusters.m * self.clusters.d
        return self.optim.batch_size or self.clusters.m * self.clusters.d

    @property
    def warm_start_batch_size(self) -> int:
        return self.warm_start.batch_size or self.batch_size


def warm_start_key(cfg: TrainConfig) -> str:
    """What identifies a warm start's weights: everything they depend on, hashed (a search
    trains one per key and every trial with that key loads it)."""
    ws = cfg.warm_start
    ident = {"data": cfg.data.model_dump(mode="json"), "model": cfg.model.model_dump(mode="json"),
             "fast": cfg.fast.model_dump(mode="json"), "threads": cfg.threads,
             "seed": cfg.seed, "ce_epochs": ws.ce_epochs, "lr": ws.lr,
             "batch": cfg.warm_start_batch_size}
    if ws.variant != "ce":  # a CE warm start keeps the key it always had
        ident["adversarial"] = {"variant": ws.variant, "steps": ws.attack_steps,
                                "eps_ramp": ws.eps_ramp, "norm": cfg.attack.norm,
                                "eps": cfg.eps, "beta": ws.beta if ws.variant == "trades"
                                else None}
    digest = hashlib.sha1(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:10]
    return f"{cfg.data.dataset}-{cfg.model.arch}-seed{cfg.seed}-{digest}"


def validation_message(err: ValidationError) -> str:
    """One line from pydantic's errors: 'clusters.l: must be ...; ...'."""
    parts = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)


def read_yaml(path: str | Path) -> dict[str, Any]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"cannot read {path}: {err.strerror}") from err
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a UTF-8 text file (a YAML config was expected)") \
            from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise ConfigError(f"{path}: malformed YAML{where}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings at the top level")
    return data


def _preset_dir(package: str) -> Any:
    return resources.files(package) / "presets"


def list_presets(package: str = "trainable") -> list[str]:
    return sorted(p.name[:-5] for p in _preset_dir(package).iterdir() if p.name.endswith(".yaml"))


def load_preset(name: str, package: str = "trainable") -> dict[str, Any]:
    """A preset of package's presets/ folder: training presets here, search presets in
    search's."""
    path = _preset_dir(package) / f"{name}.yaml"
    if not path.is_file():
        kind = "preset" if package == "trainable" else f"{package} preset"
        choices = ", ".join(list_presets(package))
        raise ConfigError(f"unknown {kind} {name!r}; choose one of {choices}")
    return read_yaml(Path(str(path)))


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``a.b=value`` strings to a nested dict; values are parsed as YAML scalars."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key or any(not p for p in key.split(".")):
            raise ConfigError(f"--set {item!r}: expected KEY.PATH=VALUE")
        try:
            value = yaml.safe_load(raw) if raw else None
        except yaml.YAMLError as err:
            raise ConfigError(f"--set {item!r}: value is not valid YAML") from err
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {p} is already set to a value")
        node[leaf] = value
    return out


def apply_overrides(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge overrides into a copy of base."""
    merged = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = apply_overrides(merged[key], value)
        else:
            merged[key] = value
    return merged


def is_draw(name: str) -> bool:
    """NAME@...: the search's draw behind a resolved value (e.g. clusters.l@fraction), kept in
    the trial's record; the value itself is under NAME."""
    return "@" in name


def resolve_trial_config(base: dict[str, Any], points: dict[str, dict[str, Any]],
                         params: dict[str, Any], recorded: bool = False) -> TrainConfig:
    """A search trial's config: base, then its fixed point (params["point"], if any), then its
    sampled knobs (dotted names such as "clusters.k"). ``recorded``: a trial that has run, read
    back with :func:`recorded_config`."""
    params = {k: v for k, v in params.items() if not is_draw(k)}
    point = params.pop("point", None)
    merged = apply_overrides(base, points[point]) if point is not None else base
    knobs: dict[str, Any] = {}
    for key, value in params.items():
        node = knobs
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    data = apply_overrides(merged, knobs)
    return recorded_config(data) if recorded else build_config(data)


def build_config(data: dict[str, Any]) -> TrainConfig:
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(validation_message(err)) from None


KEEP_IGNORED = "keep_ignored_settings"  # validation context: report them, do not refuse
DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?|mps")
# settings an older clustune recorded at the one value they could take in a real run, and that
# no longer exist (fail_at_epoch: a test hook, now search.testing's)
RETIRED = {"fail_at_epoch": None}


def recorded_config(data: dict[str, Any]) -> TrainConfig:
    """The config a trial really trained with, from its record: a setting its variant ignored
    (drawn by a search space from before conditional knobs, or written by an older clustune)
    is reset to its default, which is what the trial used; a retired setting at its
    recorded value is dropped."""
    data = {k: v for k, v in data.items() if k not in RETIRED or v != RETIRED[k]}
    try:
        cfg = TrainConfig.model_validate(data, context={KEEP_IGNORED: True})
    except ValidationError as err:
        raise ConfigError(validation_message(err)) from None
    ignored = cfg.ignored_settings()
    if not ignored:
        return cfg
    clean = cfg.model_dump(mode="json")
    for dotted, _ in ignored:
        section, name = dotted.split(".")
        clean[section].pop(name)
    return build_config(clean)


def load_config(preset: str | None = None, config_file: str | Path | None = None,
                overrides: list[str] | None = None) -> TrainConfig:
    """Preset (or a YAML file), then ``--set`` overrides, validated as one TrainConfig."""
    if preset and config_file:
        raise ConfigError("give --preset or --config, not both")
    data: dict[str, Any] = {}
    if preset:
        data = load_preset(preset)
    elif config_file:
        data = read_yaml(config_file)
    data = apply_overrides(data, parse_overrides(overrides or []))
    return build_config(data)
