"""Search configurations: a training base, an Optuna define-by-run space, fixed points, and
the search settings, loaded from YAML presets and validated before Ray starts."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import optuna
from pydantic import Field, ValidationError, field_validator, model_validator

from analysis import check_attacks
from trainable import (
    DATASETS,
    SEARCH_METRICS,
    ConfigError,
    ConfigSection,
    TrainConfig,
    apply_overrides,
    build_config,
    cluster_limits,
    list_presets,
    load_checkpoint,
    load_dataset,
    load_preset,
    parse_overrides,
    read_yaml,
    resolve_trial_config,
    validation_message,
)

from ._samplers import SAMPLERS
from ._schedulers import SCHEDULERS

__all__ = ["ParamSpec", "SearchSettings", "SearchConfig", "load_search_config",
           "list_search_presets", "suggest", "sample_configs", "check_inputs", "DEPENDENT"]


class ParamSpec(ConfigSection):
    """One searched knob, named by its dotted TrainConfig path (e.g. clusters.k). ``when``
    makes it conditional: drawn only when each named knob drew one of the listed values
    (e.g. objective.consistency only for the qtrades variant, which alone uses it); otherwise
    the trial keeps the base config's value."""

    type: Literal["int", "float", "categorical"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = Field(None, gt=0)
    choices: list[Any] | None = None
    when: dict[str, list[Any]] = {}

    @model_validator(mode="after")
    def _bounds(self) -> ParamSpec:
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("categorical needs a non-empty choices list")
        elif self.low is None or self.high is None or self.low > self.high:
            raise ValueError(f"{self.type} needs low <= high")
        elif self.log and self.low <= 0:
            raise ValueError("log scale needs low > 0")
        return self


class SearchSettings(ConfigSection):
    num_samples: int = Field(12, ge=1)  # trials (with fixed points: one per point)
    metric: str = "val_robust_acc"  # what ASHA and single-objective samplers maximise
    mode: Literal["max", "min"] = "max"
    # a name of search/_samplers.py (nsga2, motpe: multi-objective); gp: the search
    # benchmark's best (docs/performance.md)
    sampler: str = "gp"
    objectives: list[str] = ["val_clean_acc", "val_robust_acc"]  # for nsga2 / motpe (maximised)
    scheduler: str = "asha"  # a name of search/_schedulers.py
    grace_period: int = Field(1, ge=1)  # epochs before ASHA may stop a trial
    reduction_factor: float = Field(3, gt=1)
    brackets: int = Field(3, ge=1)  # async_hyperband: brackets of successive halving
    max_concurrent: int = Field(2, ge=1)
    cpus_per_trial: float = Field(1, gt=0)
    gpus_per_trial: float = Field(0, ge=0)  # fractions share a GPU between trials
    keep_checkpoints: int = Field(2, ge=1)  # best by metric
    max_failures: int = Field(2, ge=0)  # retries of a crashed trial from its last checkpoint
    reuse_actors: bool = True
    share_warm_start: bool = True  # one CE warm start per experiment, not one per trial
    seed: int = 0  # sampler seed
    tpe_multivariate: bool = False  # TPE over the joint distribution (grouped); bench: worse
    tpe_constant_liar: bool = False  # TPE assumes running trials score badly (parallel trials)
    # random trials before a model-based sampler (tpe, gp, bohb) models; None: N/3 within 2-10
    tpe_startup: int | None = Field(None, ge=1)
    final_top_k: int = Field(2, ge=0)  # trials re-evaluated with AutoAttack at the end (0: off)
    final_examples: int = Field(500, ge=1)  # test images per final evaluation
    # AutoAttack's attacks the final stage runs, in order, at AutoAttack's own budgets (its
    # "custom" version), e.g. [apgd-ce, apgd-t]; None: the whole standard ensemble
    final_attacks: list[str] | None = None
    # an Optuna RDB URL (postgresql://..., mysql://...) for a study shared between users;
    # None: the experiment's own optuna.db
    study_storage: str | None = Field(None, pattern=r"^[a-z0-9+]+://")
    # an MLflow tracking URI (http://HOST:5000, file:///PATH, sqlite:///PATH): a parent run per
    # search, a nested run per trial (resolved parameters, every epoch's metrics, the audit)
    mlflow: str | None = Field(None, min_length=1)

    @field_validator("final_attacks")
    @classmethod
    def _known_attacks(cls, attacks: list[str] | None) -> list[str] | None:
        return None if attacks is None else check_attacks(attacks)

    @field_validator("sampler")
    @classmethod
    def _known_sampler(cls, name: str) -> str:
        if name not in SAMPLERS:
            raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
        return name

    @field_validator("scheduler")
    @classmethod
    def _known_scheduler(cls, name: str) -> str:
        if name not in SCHEDULERS:
            raise ValueError(f"unknown scheduler {name!r}; choose one of "
                             f"{', '.join(SCHEDULERS)}")
        return name

    @property
    def multi_objective(self) -> bool:
        return SAMPLERS[self.sampler].multi_objective


class SearchConfig(ConfigSection):
    description: str = ""
    base: str | None = None  # a training preset the trials start from
    train: dict[str, Any] = {}  # settings on top of base, as in a training config file
    space: dict[str, ParamSpec] = {}
    points: dict[str, dict[str, Any]] = {}  # named fixed configurations run side by side
    search: SearchSettings = SearchSettings()

    @model_validator(mode="after")
    def _space_or_points(self) -> SearchConfig:
        if self.space and self.points:
            raise ValueError("give a search space or fixed points, not both")
        if not self.space and not self.points:
            raise ValueError("a search needs a space or points")
        for name, spec in self.space.items():
            if spec.when and name in DEPENDENT:
                raise ValueError(f"space.{name}.when: {name} depends on K and cannot also be "
                                 "conditional")
            for other, values in spec.when.items():
                target = self.space.get(other)
                if target is None or target.when or target.type != "categorical" \
                        or other in DEPENDENT:
                    raise ValueError(f"space.{name}.when: {other} must be an unconditional "
                                     "categorical knob of the space")
                if not values or any(v not in target.choices for v in values):
                    raise ValueError(f"space.{name}.when: {values} are not all choices of "
                                     f"{other} ({target.choices})")
        return self

    def base_dict(self) -> dict[str, Any]:
        """The trials' common training config; ``threads`` defaults to the CPUs per trial, so
        that a trial's recorded config reproduces its numbers (``clustune train --config``)."""
        base = load_preset(self.base) if self.base else {}
        base = apply_overrides(base, self.train)
        base.setdefault("threads", max(1, int(self.search.cpus_per_trial)))
        return base


DEPENDENT = ("clusters.l", "clusters.m")  # their feasible range depends on the K drawn
FRACTION, CHOICE = "@fraction", "@choice"  # suffixes of the draws behind a dependent value


def _draw(trial: optuna.Trial, name: str, spec: ParamSpec) -> Any:
    if spec.type == "categorical":
        return trial.suggest_categorical(name, spec.choices)
    if spec.type == "int":
        return trial.suggest_int(name, int(spec.low), int(spec.high), log=spec.log,
                                 step=int(spec.step or 1))
    return trial.suggest_float(name, spec.low, spec.high, log=spec.log, step=spec.step)


def _dependent(trial: optuna.Trial, name: str, spec: ParamSpec, limit: int) -> Any:
    """A value within [low, min(high, limit)] from a draw whose distribution never changes
    (a fraction of the feasible range, or a choice clamped to it), so TPE can model it."""
    if spec.type == "categorical":
        choice = trial.suggest_categorical(name + CHOICE, spec.choices)
        return min(choice, limit) if isinstance(choice, (int, float)) else choice
    fraction = trial.suggest_float(name + FRACTION, 0.0, 1.0)
    high = min(spec.high, limit)
    low = min(spec.low, high)
    value = low * (high / low) ** fraction if spec.log else low + fraction * (high - low)
    return int(round(value)) if spec.type == "int" else value


def suggest(trial: optuna.Trial, cfg: SearchConfig, base: dict[str, Any]) -> dict[str, Any]:
    """A trial's parameters (dotted config paths). Every Optuna draw has one fixed
    distribution: L and M are drawn as fractions of their feasible range (``NAME@fraction``;
    categorical ones as ``NAME@choice``, clamped) and resolved after K, whatever the order
    of the space's keys; the resolved values are returned under their own names. A
    conditional knob is drawn only when its ``when`` holds."""
    if cfg.points:
        return {"point": trial.suggest_categorical("point", list(cfg.points))}
    out = {name: _draw(trial, name, spec) for name, spec in sorted(cfg.space.items())
           if name not in DEPENDENT and not spec.when}
    for name, spec in sorted(cfg.space.items()):  # conditions name unconditional knobs
        if spec.when and all(out[k] in v for k, v in spec.when.items()):
            out[name] = _draw(trial, name, spec)
    classes = DATASETS[base.get("data", {}).get("dataset", "fashion-mnist")].classes
    k = out.get("clusters.k", base.get("clusters", {}).get("k", 2))
    limits = dict(zip(DEPENDENT, cluster_limits(classes, k), strict=True))
    for name in DEPENDENT:
        if name in cfg.space:
            out[name] = _dependent(trial, name, cfg.space[name], limits[name])
    return out


def sample_configs(cfg: SearchConfig, draws: int = 32) -> list[TrainConfig]:
    """The training configs of draws random trials of the space (seeded: the same every
    time), or every fixed point's; a draw that gives an invalid config is refused."""
    base = cfg.base_dict()
    if cfg.points:
        return [resolve_trial_config(base, cfg.points, {"point": name}) for name in cfg.points]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    configs = []
    for _ in range(draws):
        trial = study.ask()
        params = suggest(trial, cfg, base)
        try:
            configs.append(resolve_trial_config(base, {}, params))
        except ConfigError as err:
            raise ConfigError(f"space: {params} gives an invalid config: {err}") from None
        study.tell(trial, 0.0)
    return configs


def _check(cfg: SearchConfig) -> None:
    """Reject a space that can produce an invalid training config, before Ray starts."""
    base = cfg.base_dict()
    if not cfg.points:  # with points, each point's config is checked below instead
        try:
            build_config(base)
        except ConfigError as err:
            raise ConfigError(f"train: {err}") from None
    for name in cfg.points:
        try:
            resolve_trial_config(base, cfg.points, {"point": name})
        except ConfigError as err:
            raise ConfigError(f"points.{name}: {err}") from None
    if cfg.space:
        sample_configs(cfg)  # each draw a valid config
    if cfg.search.metric not in SEARCH_METRICS and not cfg.search.multi_objective:
        raise ConfigError(f"search.metric: unknown metric {cfg.search.metric!r}")


def check_inputs(cfg: SearchConfig) -> None:
    """Load the files the trials will read (each dataset, any warm-start checkpoint), so a
    missing or corrupt one is a single error before Ray starts instead of a failure in every
    trial. Only meaningful where the trials see this machine's files (an embedded Ray)."""
    base = cfg.base_dict()
    configs: list[TrainConfig] = [resolve_trial_config(base, cfg.points, {"point": name})
                                  for name in cfg.points] or [build_config(base)]
    for c in {c.data.model_dump_json(): c for c in configs}.values():
        load_dataset(c)
    for path in {c.warm_start.checkpoint for c in configs} - {None}:
        load_checkpoint(path)


def list_search_presets() -> list[str]:
    return list_presets("search")


def load_search_config(preset: str | None = None, config_file: str | Path | None = None,
                       overrides: list[str] | None = None) -> SearchConfig:
    """A search preset or YAML file, ``--set`` overrides, validated and checked."""
    if preset and config_file:
        raise ConfigError("give --preset or --config, not both")
    data = read_yaml(config_file) if config_file else load_preset(preset or "quick", "search")
    if "space" not in data and "points" not in data and "search" not in data:
        # a training config (e.g. from `clustune best`): run it as one fixed point
        data = {"train": data, "points": {"config": {}}, "search": {"num_samples": 1}}
    data = apply_overrides(data, parse_overrides(overrides or []))
    try:
        cfg = SearchConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(validation_message(err)) from None
    _check(cfg)
    return cfg
