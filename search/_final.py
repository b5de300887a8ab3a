"""The final stage: the best trials' best checkpoints re-evaluated with full AutoAttack.

Each (trial, head) evaluation is a Ray task (on a GPU when the cluster has one) that writes
EXPERIMENT/final/<trial_id>-<head>.json in the fixed schema of :mod:`analysis`. Finished
evaluations are kept, and an interrupted one resumes from its state file.
"""

from __future__ import annotations

from pathlib import Path

import ray

from analysis import (
    FINAL_DIR,
    Experiment,
    TrialRecord,
    load_experiment,
    load_result,
    pareto_front,
)
from trainable import StoragePath, TrainConfig, storage_path

from ._errors import UsageError
from ._events import (
    EvaluationDone,
    EvaluationProgress,
    FinalStageStarted,
    OnEvent,
    TrialSkipped,
    ignore,
)
from ._lease import hold_lease
from ._mlflow import log_audits
from ._samplers import SAMPLERS
from ._trainable import trial_device

__all__ = ["select_trials", "run_final_stage", "ProgressBoard"]


def select_trials(experiment: Experiment, top_k: int,
                  trial_ids: list[str] | None = None) -> list[TrialRecord]:
    """The trials to evaluate: named ones (by trial id, or by point name in a search over fixed
    points, so a command can name a table's row before its id is known), else the Pareto front
    (multi-objective searches) or the top_k by the search metric."""
    ranked = experiment.proxy_ranked()
    if trial_ids:
        return [_named_trial(experiment, name) for name in trial_ids]
    if SAMPLERS[experiment.meta.search["sampler"]].multi_objective:
        best = [t.best(experiment.metric, experiment.mode) for t in ranked]
        front = pareto_front([(b["val_clean_acc"], b["val_robust_acc"]) for b in best])
        return [t for t, on_front in zip(ranked, front, strict=True) if on_front]
    return ranked[:top_k]


def _named_trial(experiment: Experiment, name: str) -> TrialRecord:
    """The trial with this id, else the one trained at the fixed point of this name."""
    matches = [t for t in experiment.trials if t.trial_id == name] or [
        t for t in experiment.trials if t.params.get("point") == name]
    if len(matches) != 1:
        problem = "no trial" if not matches else f"{len(matches)} trials at point"
        raise UsageError(f"{problem} {name} in {experiment.path}")
    return matches[0]


def _heads_for(cfg: TrainConfig, heads: list[str] | None) -> list[str]:
    """The heads to judge a trial on: the requested ones, else its own (linear: baselines)."""
    if not cfg.is_clustering:
        return ["linear"]
    return heads or [cfg.clusters.head]


def _already_done(result: StoragePath, examples: int, version: str,
                  attacks: list[str] | None) -> bool:
    """A finished evaluation of the same version (and attacks) on at least as many images is
    kept (the larger one is the better estimate); a smaller or another one is re-run."""
    if not result.is_file():
        return False
    done = load_result(result)
    return (done.n_examples >= examples and done.version == version
            and (attacks is None or done.attacks == attacks))


@ray.remote(num_cpus=0)
class ProgressBoard:
    """Where the evaluations post their progress, for the driver's progress bars."""

    def __init__(self) -> None:
        self.state: dict[str, tuple[str, int, int]] = {}

    def post(self, name: str, stage: str, done: int, total: int) -> None:
        self.state[name] = (stage, done, total)

    def read(self) -> dict[str, tuple[str, int, int]]:
        return self.state


@ray.remote
def _evaluate(checkpoint: str, head: str, examples: int, version: str,
              attacks: list[str] | None, result_path: str, state_path: str,
              board: ray.actor.ActorHandle) -> str:
    """One AutoAttack evaluation inside a Ray worker; its progress goes to the board."""
    from analysis import AttackOptions, evaluate_checkpoint, save_result

    name = storage_path(result_path).stem

    def progress(stage: str, done: int, total: int) -> None:
        board.post.remote(name, stage, done, total)

    result = evaluate_checkpoint(checkpoint, AttackOptions(version=version, attacks=attacks),
                                 head=None if head == "linear" else head, examples=examples,
                                 device=trial_device(), state_path=state_path,
                                 progress=progress)
    save_result(result, result_path)
    storage_path(state_path).unlink(missing_ok=True)
    return result_path


def run_final_stage(experiment_dir: str | Path | StoragePath, top_k: int, examples: int,
                    trial_ids: list[str] | None = None, heads: list[str] | None = None,
                    version: str = "standard", gpus_per_task: float = 0,
                    attacks: list[str] | None = None, on_event: OnEvent = ignore) -> Experiment:
    """Evaluate the selected trials (skipping finished evaluations) as Ray tasks, telling
    on_event how they go; returns the experiment read back with its results. ``attacks`` runs
    those AutoAttack attacks (its "custom" version) instead of ``version``'s ensemble."""
    if attacks and version != "standard":
        raise UsageError(f"attacks {', '.join(attacks)} replace version {version}'s ensemble: "
                         "give one of the two")
    version = "custom" if attacks else version
    with hold_lease(storage_path(experiment_dir), "clustune evaluate"):
        return _evaluate_all(load_experiment(experiment_dir), top_k, examples, trial_ids, heads,
                             version, gpus_per_task, attacks, on_event)


def _evaluate_all(experiment: Experiment, top_k: int, examples: int,
                  trial_ids: list[str] | None, heads: list[str] | None, version: str,
                  gpus_per_task: float, attacks: list[str] | None,
                  on_event: OnEvent) -> Experiment:
    audit = "+".join(attacks) if attacks else version
    chosen = select_trials(experiment, top_k, trial_ids)
    if not chosen:
        raise UsageError(f"no trial of {experiment.path} has a scored epoch to evaluate "
                         "(none finished one, or all diverged)")
    out = experiment.path / FINAL_DIR
    board = ProgressBoard.remote()
    pending = []
    for trial in chosen:
        ckpt = trial.best_checkpoint(experiment.metric, experiment.mode)
        if ckpt is None:
            on_event(TrialSkipped(trial.trial_id, "no checkpoint kept"))
            continue
        for head in _heads_for(experiment.trial_config(trial), heads):
            result = out / f"{trial.trial_id}-{head}.json"
            if _already_done(result, examples, version, attacks):
                continue
            state = out / f"{trial.trial_id}-{head}-{audit}-{examples}.state"
            pending.append(_evaluate.options(num_cpus=1, num_gpus=gpus_per_task).remote(
                ckpt.uri, head, examples, version, attacks, result.uri, state.uri, board))
    if pending:
        on_event(FinalStageStarted(audit, examples, len(pending), out))
    _wait(pending, board, on_event)
    ray.kill(board)
    experiment = load_experiment(experiment.path)
    log_audits(experiment)  # to the trials' MLflow runs, when the search is tracked
    return experiment


def _wait(pending: list, board: ray.actor.ActorHandle, on_event: OnEvent) -> None:
    """Wait for the evaluations, telling on_event each change of their progress and each one
    done."""
    total, done, seen = len(pending), 0, {}
    while pending:
        ready, pending = ray.wait(pending, num_returns=1, timeout=1.0)
        finished = {storage_path(ray.get(ref)).stem for ref in ready}
        for name, (stage, count, size) in ray.get(board.read.remote()).items():
            if name in finished:
                count = size  # its last posts may still be on their way
            if seen.get((name, stage), -1) < count:
                seen[(name, stage)] = count
                on_event(EvaluationProgress(name, stage, count, size))
        for name in sorted(finished):
            done += 1
            on_event(EvaluationDone(name, done, total))
