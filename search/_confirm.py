"""``clustune confirm``: retrain the best configurations (and named baselines) with new seeds,
audit each, and report the mean, spread and a 95 % interval per configuration.

The retrained trials are a search over fixed points of its own, in EXPERIMENT/confirm: the
same budget and warm-start rule as the search (the trials' recorded configs, only the seed
changed; a baseline is the first configuration with its objective replaced by the baseline's,
TRADES keeping lambda as its beta), run as Ray trials and audited by the same final stage.
Running the command again continues it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from analysis import (
    BASELINES,
    CONFIRM_DIR,
    META_FILE,
    SEED_MARK,
    Confirmation,
    Experiment,
    load_confirmations,
    load_experiment,
    rank_trials,
    read_meta,
)
from trainable import StoragePath, TrainConfig

from ._errors import UsageError
from ._events import OnEvent, ignore
from ._lease import hold_lease
from ._run import SearchOutcome, resume_search, run_search
from ._spaces import SearchConfig

__all__ = ["ConfirmOutcome", "run_confirm", "NEW_RUN"]

NEW_RUN = {"top": 1, "seeds": 3, "examples": 500}  # defaults of a new confirmation


@dataclass(frozen=True)
class ConfirmOutcome:
    """The experiment confirmed, the confirmations found (complete ones once the search
    ended) and the search that retrained them (in EXPERIMENT/confirm)."""

    experiment: Experiment
    confirmations: list[Confirmation]
    search: SearchOutcome


def baseline_config(winner: TrainConfig, name: str) -> TrainConfig:
    """The baseline at the winner's budget: its data, model, threat model, attack steps,
    warm start (variant and epochs), epochs and images per step (M x D, a baseline's batch when
it sets none); only the objective
    is the baseline's (TRADES keeps lambda as its beta)."""
    data = winner.model_dump(mode="json")
    data["objective"] = {"variant": name}
    if name == "trades":
        data["objective"]["lam"] = winner.objective.lam
    for own in ("loss", "target"):  # what the winner's attack maximised: baselines have theirs
        data["attack"].pop(own)
    return TrainConfig.model_validate(data)


def _points(experiment, top: int, seeds: int, baselines: list[str]) -> dict[str, dict]:
    """CONFIG@seedN -> the full training config of that configuration with that seed."""
    chosen = [r for r in rank_trials(experiment) if not r.flagged and not r.trial.diverged][:top]
    if not chosen:
        raise UsageError(f"{experiment.path} has no unflagged trial with a scored epoch to "
                         "confirm")
    points: dict[str, dict] = {}
    configs = {r.trial.trial_id: experiment.trial_config(r.trial) for r in chosen}
    first = next(iter(configs.values()))
    for name in baselines:
        configs[name] = baseline_config(first, name)
    for name, cfg in configs.items():
        for i in range(1, seeds + 1):
            data = cfg.model_dump(mode="json")
            data["seed"] = cfg.seed + 1000 * i  # new seeds, never the search's own
            points[f"{name}{SEED_MARK}{data['seed']}"] = data
    return points


def _recorded_options(cfg: SearchConfig) -> dict[str, object]:
    """The options a started confirmation was run with, read back from its fixed points."""
    names = [key.partition(SEED_MARK)[0] for key in cfg.points]
    configs = list(dict.fromkeys(names))
    return {"top": sum(c not in BASELINES for c in configs), "seeds": names.count(configs[0]),
            "baselines": sorted(c for c in configs if c in BASELINES),
            "examples": cfg.search.final_examples, "attacks": cfg.search.final_attacks}


def _check_same_options(folder: StoragePath, asked: dict[str, object]) -> None:
    """Continuing a confirmation with other options would mix two runs: refuse it."""
    recorded = _recorded_options(SearchConfig.model_validate(read_meta(folder).config))
    show = {"top": "--top", "seeds": "--seeds", "baselines": "--baseline",
            "examples": "--examples", "attacks": "--attacks"}
    differ = [f"{show[k]} {_fmt_option(recorded[k])}" for k, v in asked.items()
              if v is not None and v != recorded[k]]
    if differ:
        raise UsageError(f"{folder} was started with {', '.join(differ)}: give those options "
                         "(or none) to continue it, or delete the folder to start again")


def _fmt_option(value: object) -> str:
    if isinstance(value, list):
        return ",".join(value) or "(none)"
    return "(the standard ensemble)" if value is None else str(value)


def run_confirm(experiment_dir: str | Path | StoragePath, top: int | None = None,
                seeds: int | None = None, baselines: list[str] | None = None,
                examples: int | None = None, address: str | None = None,
                attacks: list[str] | None = None, on_event: OnEvent = ignore
                ) -> ConfirmOutcome:
    """Retrain, audit and summarise (module docstring); continues an unfinished run, whose
    recorded options an option left as None keeps (a different one is refused). Defaults for a
    new run: top 1, 3 seeds, no baselines, 500 images; ``attacks`` audits with those AutoAttack
    attacks instead of its standard ensemble."""
    if (top is not None and top < 1) or (examples is not None and examples < 1):
        raise UsageError("--top and --examples must be at least 1")
    experiment = load_experiment(experiment_dir)
    with hold_lease(experiment.path, "clustune confirm"):
        return _confirm(experiment, top, seeds, baselines, examples, address, attacks,
                        on_event)


def _confirm(experiment: Experiment, top: int | None, seeds: int | None,
             baselines: list[str] | None, examples: int | None, address: str | None,
             attacks: list[str] | None, on_event: OnEvent) -> ConfirmOutcome:
    folder = experiment.path / CONFIRM_DIR
    if (folder / META_FILE).is_file():
        _check_same_options(folder, {
            "top": top, "seeds": seeds, "examples": examples, "attacks": attacks,
            "baselines": None if baselines is None else sorted(set(baselines))})
        outcome = resume_search(folder, address, on_event=on_event)
    else:
        top = NEW_RUN["top"] if top is None else top
        seeds = NEW_RUN["seeds"] if seeds is None else seeds
        examples = NEW_RUN["examples"] if examples is None else examples
        if seeds < 2:
            raise UsageError("--seeds must be at least 2 (an interval needs two)")
        points = _points(experiment, top, seeds, sorted(set(baselines or [])))
        s = SearchConfig.model_validate(experiment.meta.config).search
        cfg = SearchConfig.model_validate({
            "description": f"confirmation of {experiment.name} across seeds",
            "train": {}, "points": points,
            "search": {"num_samples": len(points), "scheduler": "fifo",
                       "max_concurrent": s.max_concurrent,
                       "cpus_per_trial": s.cpus_per_trial, "gpus_per_trial": s.gpus_per_trial,
                       "final_top_k": len(points), "final_examples": examples,
                       "final_attacks": attacks}})
        outcome = run_search(cfg, folder, address, on_event=on_event)
    return ConfirmOutcome(experiment, load_confirmations(experiment.path), outcome)
