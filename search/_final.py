"""The final stage: the best trials' best checkpoints re-evaluated with full AutoAttack.

Each (trial, head) evaluation is a Ray task (on a GPU when the cluster has one) that writes
EXPERIMENT/final/<trial_id>-<head>.json in the fixed schema of :mod:`analysis`. Finished
evaluations are kept, and an interrupted one resumes from its state file.
"""

from __future__ import annotations

from pathlib import Path

import ray
from rich.table import Table

from analysis import (
    FINAL_DIR,
    Experiment,
    TrialRecord,
    flags_of,
    load_experiment,
    load_result,
    pareto_front,
    rank_trials,
)
from trainable import StoragePath, TrainConfig, storage_path

from ._console import UsageError, console, progress_bar

__all__ = ["select_trials", "run_final_stage", "final_table", "ProgressBoard"]


def select_trials(experiment: Experiment, top_k: int,
                  trial_ids: list[str] | None = None) -> list[TrialRecord]:
    """The trials to evaluate: named ones (by trial id, or by point name in a search over fixed
    points, so a command can name a table's row before its id is known), else the Pareto front
    (multi-objective searches) or the top_k by the search metric."""
    ranked = experiment.proxy_ranked()
    if trial_ids:
        return [_named_trial(experiment, name) for name in trial_ids]
    if experiment.meta.multi_objective:
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
    import torch

    from analysis import evaluate_checkpoint, save_result

    device = "cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu"

    name = storage_path(result_path).stem

    def progress(stage: str, done: int, total: int) -> None:
        board.post.remote(name, stage, done, total)

    result = evaluate_checkpoint(checkpoint, head=None if head == "linear" else head,
                                 examples=examples, version=version, attacks=attacks,
                                 device=device, state_path=state_path, progress=progress)
    save_result(result, result_path)
    storage_path(state_path).unlink(missing_ok=True)
    return result_path


def run_final_stage(experiment_dir: str | Path | StoragePath, top_k: int, examples: int,
                    trial_ids: list[str] | None = None, heads: list[str] | None = None,
                    version: str = "standard", gpus_per_task: float = 0,
                    attacks: list[str] | None = None) -> Experiment:
    """Evaluate the selected trials (skipping finished evaluations) and print the table.
    ``attacks`` runs those AutoAttack attacks (its "custom" version) instead of ``version``'s
    ensemble."""
    if attacks and version != "standard":
        raise UsageError(f"attacks {', '.join(attacks)} replace version {version}'s ensemble: "
                         "give one of the two")
    version = "custom" if attacks else version
    audit = "+".join(attacks) if attacks else version
    experiment = load_experiment(experiment_dir)
    chosen = select_trials(experiment, top_k, trial_ids)
    if not chosen:
        raise UsageError(f"no trial of {experiment_dir} has a scored epoch to evaluate "
                         "(none finished one, or all diverged)")
    out = experiment.path / FINAL_DIR
    board = ProgressBoard.remote()
    pending = []
    for trial in chosen:
        ckpt = trial.best_checkpoint(experiment.metric, experiment.mode)
        if ckpt is None:
            console.print(f"trial {trial.trial_id}: no checkpoint kept, skipped")
            continue
        for head in _heads_for(experiment.trial_config(trial), heads):
            result = out / f"{trial.trial_id}-{head}.json"
            if _already_done(result, examples, version, attacks):
                continue
            state = out / f"{trial.trial_id}-{head}-{audit}-{examples}.state"
            pending.append(_evaluate.options(num_cpus=1, num_gpus=gpus_per_task).remote(
                ckpt.uri, head, examples, version, attacks, result.uri, state.uri, board))
    if pending:
        console.print(f"final stage: AutoAttack ({audit}) on {examples} test images for "
                      f"{len(pending)} evaluation(s) -> {out}", markup=False)
    _wait_with_progress(pending, board)
    ray.kill(board)
    experiment = load_experiment(experiment.path)
    console.print(final_table(experiment))
    return experiment


def _wait_with_progress(pending: list, board: ray.actor.ActorHandle) -> None:
    """Wait for the evaluations: a bar per evaluation and stage on a terminal, a line per
    stage finished and per evaluation done in a log."""
    total, done, said = len(pending), 0, set()
    with progress_bar() as show:
        while pending:
            ready, pending = ray.wait(pending, num_returns=1, timeout=1.0)
            finished = {storage_path(ray.get(ref)).stem for ref in ready}
            for name, (stage, count, size) in ray.get(board.read.remote()).items():
                if (name, stage) in said:
                    continue
                if name in finished:
                    count = size  # its last posts may still be on their way
                show(f"{name}: {stage}", count, size)
                if count >= size:
                    said.add((name, stage))
                    if not console.is_terminal:
                        console.print(f"final stage: {name} {stage} {count}/{size}",
                                      markup=False)
            for name in sorted(finished):
                done += 1
                console.print(f"final stage: {name}.json done ({done}/{total})", markup=False)


def final_table(experiment: Experiment) -> Table:
    """Clean, per-attack, AutoAttack and worst-case accuracy of every final evaluation, in the
    order of the ranking, with short flag codes (below: flags under their threshold)."""
    order = {r.trial.trial_id: r.rank for r in rank_trials(experiment)}
    table = Table(title=f"{experiment.path.name}: AutoAttack final stage (test set), ranked")
    for col in ("#", "trial", "head", "n", "clean", "apgd-ce", "apgd-t", "fab-t", "square",
                "AutoAttack", "CE-only", "adaptive", "worst case", "flags"):
        table.add_column(col)
    results = sorted(experiment.final_results(),
                     key=lambda r: (order.get(r["trial_id"], len(order) + 1), r["head"]))
    for r in results:
        per = r.get("per_attack_acc") or {}
        adaptive, worst = r.get("adaptive_acc"), r.get("worst_case_acc")
        table.add_row(str(order.get(r["trial_id"], "-")), r["trial_id"], r["head"],
                      str(r["n_examples"]), f"{r['clean_acc']:.4f}",
                      *(f"{per[a]:.4f}" if a in per else "-"
                        for a in ("apgd-ce", "apgd-t", "fab-t", "square")),
                      f"{r['autoattack_acc']:.4f}", f"{r['ce_only_acc']:.4f}",
                      "-" if adaptive is None else f"{adaptive:.4f}",
                      "-" if worst is None else f"{worst:.4f}",
                      ", ".join(str(f) for f in flags_of(r)) or "none")
    return table
