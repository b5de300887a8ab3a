"""``clustune search``, ``resume`` and ``status``."""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

from rich.table import Table

from analysis import (
    FINAL_DIR,
    WARM_START_DIR,
    Experiment,
    TrialRecord,
    load_confirmations,
    load_experiment,
    load_result,
    rank_trials,
    read_meta,
)
from trainable import StoragePath, storage_path

from ._console import UsageError, attack_list, console
from ._driver import graceful_interrupts
from ._final import final_table, run_final_stage
from ._optuna import upload_study
from ._spaces import SearchConfig, check_inputs, load_search_config
from ._tuner import (
    build_tuner,
    check_gpus,
    check_resumable,
    embedded,
    prepare_warm_starts,
    restore_tuner,
    start_ray,
)

__all__ = ["add_search_commands", "run_search", "resume_search", "trial_table"]

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


def _watch_hints(experiment: StoragePath, dashboard: str | None) -> None:
    meta = read_meta(experiment)
    console.print(f"experiment:        {experiment.uri}", markup=False)
    if dashboard:
        console.print(f"Ray dashboard:     {dashboard}")
    console.print(f"TensorBoard:       tensorboard --logdir {experiment.uri}", markup=False)
    console.print(f"Optuna dashboard:  clustune dashboard {experiment.uri}  "
                  f"(or optuna-dashboard {meta.study_storage})", markup=False)
    console.print(f"trial table:       clustune status {experiment.uri}", markup=False)


def run_search(cfg: SearchConfig, experiment: str | Path | StoragePath,
               address: str | None = None, num_cpus: int | None = None,
               verbose: bool = False) -> Experiment:
    """Launch a new search in experiment (a folder, or a location in cloud storage); returns
    the experiment as read back from there."""
    experiment = storage_path(experiment).check()
    if experiment.has_files():
        raise UsageError(f"{experiment} already exists; continue it with `clustune resume "
                         f"{experiment.uri}` or choose another --name")
    check_gpus(cfg.search.gpus_per_trial, address, "--gpus-per-trial")
    if embedded(address):
        check_inputs(cfg)
    dashboard = start_ray(address, num_cpus)
    tuner = build_tuner(cfg, experiment, verbose=verbose)
    _watch_hints(experiment, dashboard)
    _warm_starts(cfg, experiment)
    return _fit(tuner, experiment)


def _warm_starts(cfg: SearchConfig, experiment: StoragePath) -> None:
    start = time.perf_counter()
    with console.status("training the CE warm start before the trials start"):
        trained = prepare_warm_starts(cfg, experiment)
    if trained:
        console.print(f"CE warm start: {trained} trained in {time.perf_counter() - start:.0f} s "
                      f"-> {experiment / WARM_START_DIR}", markup=False)


def resume_search(experiment: str | Path | StoragePath, address: str | None = None,
                  num_cpus: int | None = None) -> Experiment:
    experiment = storage_path(experiment).check()
    cfg = SearchConfig.model_validate(read_meta(experiment).config)
    check_gpus(cfg.search.gpus_per_trial, address, "the search's gpus_per_trial")
    check_resumable(experiment, cfg)
    start_ray(address, num_cpus)
    tuner = restore_tuner(experiment)
    console.print(f"resuming {experiment}", markup=False)
    _warm_starts(cfg, experiment)
    return _fit(tuner, experiment)


def _fit(tuner, experiment_dir: StoragePath) -> Experiment:
    start = time.perf_counter()
    try:
        with graceful_interrupts():
            tuner.fit()
    finally:
        upload_study(experiment_dir)
    experiment = load_experiment(experiment_dir)
    wall = time.perf_counter() - start
    unfinished = [t for t in experiment.trials if t.status not in ("TERMINATED", "ERROR")]
    wanted = _wanted_trials(experiment)
    console.print(trial_table(experiment, top=10))
    if unfinished or len(experiment.trials) < wanted:
        console.print(f"search stopped early after {wall:.0f} s: "
                      f"continue it with `clustune resume {experiment_dir.uri}`", markup=False)
        # an interrupted search is not a finished one: the CLI exits 130, so scripts stop here
        raise KeyboardInterrupt
    console.print(f"search finished: {len(experiment.trials)} trials in {wall:.0f} s")
    s = SearchConfig.model_validate(experiment.meta.config).search
    if s.final_top_k:
        experiment = run_final_stage(experiment_dir, s.final_top_k, s.final_examples,
                                     gpus_per_task=min(1.0, s.gpus_per_trial),
                                     attacks=s.final_attacks)
    return experiment


def _wanted_trials(experiment: Experiment) -> int:
    cfg = SearchConfig.model_validate(experiment.meta.config)
    return len(cfg.points) or cfg.search.num_samples


def trial_table(experiment: Experiment, top: int | None = None) -> Table:
    """Trials in the order of the ranking (audited first, by worst-case robust accuracy;
    flagged ones after; then the rest by the validation proxy), the top ones when top is given,
    then every other trial that has no score yet or a problem to show: diverged, failed, or
    retried after a crash."""
    metric, mode = experiment.metric, experiment.mode
    table = Table(title=f"{experiment.path.name}: trials ranked by the audit, then by best "
                  f"{metric}")
    for col in ("#", "trial", "status", "epochs", "best clean", "best robust", "audited",
                "flags", "params", "problem"):
        table.add_column(col, overflow="fold")
    ranking = rank_trials(experiment)
    rows: list[tuple[str, TrialRecord, str, str]] = [
        (str(r.rank), r.trial, "-" if r.audited_acc is None else _fmt(r.audited_acc),
         r.flag_codes) for r in (ranking[:top] if top else ranking)]
    shown = {t.trial_id for _, t, _, _ in rows}
    rows += [("-", t, "-", "") for t in experiment.trials
             if t.trial_id not in shown and (t.problem or not t.best(metric, mode))]
    for rank, t, audited, flags in rows:
        best = t.best(metric, mode)
        status = "DIVERGED" if t.diverged else t.status
        params = ", ".join(f"{k}={_fmt(v)}" for k, v in t.params.items())
        table.add_row(rank, t.trial_id, status, str(t.epochs), _fmt(best.get("val_clean_acc")),
                      _fmt(best.get("val_robust_acc")), audited, flags, params, t.problem or "")
    return table


def _fmt(v) -> str:
    if v is None:
        return "-"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _cmd_search(args: argparse.Namespace) -> int:
    extra = list(args.overrides)
    for flag, key in (("num_samples", "search.num_samples"),
                      ("cpus_per_trial", "search.cpus_per_trial"),
                      ("gpus_per_trial", "search.gpus_per_trial"),
                      ("max_concurrent", "search.max_concurrent"),
                      ("final_top_k", "search.final_top_k"),
                      ("final_examples", "search.final_examples")):
        value = getattr(args, flag)
        if value is not None:
            extra.append(f"{key}={value}")
    cfg = load_search_config(args.preset, args.config, extra)
    name = args.name or f"{args.preset or (Path(args.config).stem if args.config else 'quick')}" \
        f"-{time.strftime('%Y%m%d-%H%M%S')}"
    if not NAME_RE.match(name):
        raise UsageError(f"--name {name!r}: use letters, digits, '-', '_' or '.'")
    run_search(cfg, storage_path(args.storage) / name, args.address, verbose=args.verbose)
    return 0


def _cmd_resume(args: argparse.Namespace) -> int:
    resume_search(args.dir, args.address)
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    experiment_dir = storage_path(args.dir)
    read_meta(experiment_dir)
    if args.top_k < 1 or args.examples < 1:
        raise UsageError("--top-k and --examples must be at least 1")
    if args.attacks and args.version:
        raise UsageError("--attacks replaces --version's ensemble: give one of the two")
    for result in (experiment_dir / FINAL_DIR).glob("*.json"):
        load_result(result)  # a damaged result is refused before Ray starts, not overwritten
    check_gpus(args.gpus_per_task, args.address, "--gpus-per-task")
    start_ray(args.address)
    start = time.perf_counter()
    run_final_stage(experiment_dir, args.top_k, args.examples, args.trial or None,
                    args.head or None, args.version or "standard", args.gpus_per_task,
                    args.attacks)
    console.print(f"final stage: {time.perf_counter() - start:.0f} s")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from ._confirm import confirmation_table  # it builds on this module

    experiment = load_experiment(args.dir)
    console.print(trial_table(experiment))
    if experiment.final_results():
        console.print(final_table(experiment))
    confirmed = load_confirmations(experiment.path)
    if confirmed:
        console.print(confirmation_table(confirmed, experiment.name))
    return 0


def add_search_commands(sub, add_config_args) -> None:
    p = sub.add_parser("search", help="run a hyperparameter search (embedded Ray or a cluster)",
                       description="Search training settings with Optuna through Ray Tune, "
                       "stop weak trials with ASHA, and re-check the best with AutoAttack. "
                       "Ctrl-C stops it once every running trial's epoch is checkpointed and "
                       "exits 130; `clustune resume` continues it.")
    add_config_args(p, "quick")
    p.add_argument("--name", help="experiment name (default: PRESET-TIME)")
    p.add_argument("--storage", default="experiments",
                   help="where experiments live: a folder, or cloud storage as a URI "
                   "(s3://BUCKET/PREFIX, gs://BUCKET/PREFIX), which every node of a cluster "
                   "reaches (default: ./experiments)")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else an "
                   "embedded Ray)")
    p.add_argument("--num-samples", type=int, help="number of trials")
    p.add_argument("--cpus-per-trial", type=float, help="CPUs per trial")
    p.add_argument("--gpus-per-trial", type=float, help="GPUs per trial (fractions share one)")
    p.add_argument("--max-concurrent", type=int, help="trials running at once")
    p.add_argument("--final-top-k", type=int, help="best trials re-evaluated with AutoAttack "
                   "at the end (0: skip)")
    p.add_argument("--final-examples", type=int, help="test images per final evaluation")
    p.add_argument("--verbose", action="store_true", help="show Ray Tune's own output (a box "
                   "per trial, status tables) besides the live view")
    p.set_defaults(func=_cmd_search)

    p = sub.add_parser("resume", help="continue an interrupted search",
                       description="Continue a search stopped by Ctrl-C or a killed driver; "
                       "finished trials are kept and not run again.")
    p.add_argument("dir", help="the experiment: its folder, or its URI in cloud storage")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS or embedded)")
    p.set_defaults(func=_cmd_resume)

    p = sub.add_parser("evaluate", help="re-evaluate the best trials with full AutoAttack",
                       description="The final stage on demand: the best trials' best "
                       "checkpoints on the test set under AutoAttack, with the gradient-masking "
                       "audit. Finished evaluations are kept; interrupted ones resume.")
    p.add_argument("dir", help="the experiment: its folder, or its URI in cloud storage")
    p.add_argument("--top-k", type=int, default=2, help="best trials to evaluate (default 2)")
    p.add_argument("--trial", action="append", metavar="ID",
                   help="evaluate this trial: its id, or its point's name in a search over fixed "
                   "points (repeatable; overrides --top-k)")
    p.add_argument("--examples", type=int, default=500, help="test images (default 500)")
    p.add_argument("--head", action="append", choices=["raw", "logprob", "learned"],
                   help="judge clustering trials on this head (repeatable; default: their own)")
    p.add_argument("--version", choices=["standard", "plus"],
                   help="AutoAttack version (default standard)")
    p.add_argument("--attacks", type=attack_list, metavar="A,B",
                   help="run these AutoAttack attacks at its own budgets instead of a version's "
                   "ensemble, e.g. apgd-ce,apgd-t (docs/evaluation.md: when that is enough)")
    p.add_argument("--gpus-per-task", type=float, default=0, help="GPUs per evaluation")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS or embedded)")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("status", help="print the trial table of a running or finished search")
    p.add_argument("dir", help="the experiment: its folder, or its URI in cloud storage")
    p.set_defaults(func=_cmd_status)

