"""``clustune search``, ``resume``, ``evaluate`` and ``status``: the command line over the search
API (:mod:`._run`, :mod:`._final`), which it imports when a command runs."""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

from trainable import HEADS

from ._console import attack_list, console, say

__all__ = ["add_search_commands", "exit_code", "print_tables", "EXIT_STOPPED"]

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
EXIT_STOPPED = 130  # a search stopped early (Ctrl-C): scripts stop there; `resume` continues


def print_tables(experiment, draws: bool = False) -> None:
    """The trial table, then the final stage's and the confirmation's where there are any."""
    from analysis import (
        autoattack_table,
        confirmation_table,
        load_confirmations,
        to_rich,
        trials_table,
    )

    console.print(to_rich(trials_table(experiment, draws=draws)))
    if experiment.final_results():
        console.print(to_rich(autoattack_table(experiment)))
    confirmed = load_confirmations(experiment.path)
    if confirmed:
        console.print(to_rich(confirmation_table(confirmed, experiment.name)))


def exit_code(outcome) -> int:
    """A search that stopped early exits EXIT_STOPPED (the watcher said how to continue it);
    a finished one shows its final stage, if it ran, and exits 0."""
    if outcome.stopped_early:
        return EXIT_STOPPED
    if outcome.experiment.final_results():
        from analysis import autoattack_table, to_rich

        console.print(to_rich(autoattack_table(outcome.experiment)))
    return 0


def _live_view(cfg):
    from ._live import LiveView

    return LiveView(len(cfg.points) or cfg.search.num_samples, cfg.search.metric,
                    cfg.search.mode)


def _cmd_search(args: argparse.Namespace) -> int:
    from trainable import storage_path

    from ._errors import UsageError
    from ._run import run_search
    from ._spaces import load_search_config

    extra = list(args.overrides)
    for flag, key in (("num_samples", "search.num_samples"),
                      ("cpus_per_trial", "search.cpus_per_trial"),
                      ("gpus_per_trial", "search.gpus_per_trial"),
                      ("max_concurrent", "search.max_concurrent"),
                      ("final_top_k", "search.final_top_k"),
                      ("final_examples", "search.final_examples"),
                      ("mlflow", "search.mlflow")):
        value = getattr(args, flag)
        if value is not None:
            extra.append(f"{key}={value}")
    cfg = load_search_config(args.preset, args.config, extra)
    name = args.name or f"{args.preset or (Path(args.config).stem if args.config else 'quick')}" \
        f"-{time.strftime('%Y%m%d-%H%M%S')}"
    if not NAME_RE.match(name):
        raise UsageError(f"--name {name!r}: use letters, digits, '-', '_' or '.'")
    from ._console import Watcher

    with Watcher() as watch:
        outcome = run_search(cfg, storage_path(args.storage) / name, args.address,
                             callbacks=[*args.callbacks, _live_view(cfg)], on_event=watch,
                             verbose=args.verbose)
    return exit_code(outcome)


def _cmd_resume(args: argparse.Namespace) -> int:
    from ._console import Watcher
    from ._run import resume_search

    with Watcher() as watch:
        outcome = resume_search(args.dir, args.address, on_event=watch)
    return exit_code(outcome)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from analysis import FINAL_DIR, autoattack_table, load_result, read_meta, to_rich
    from trainable import storage_path

    from ._console import Watcher
    from ._errors import UsageError
    from ._final import run_final_stage
    from ._lease import hold_lease
    from ._tuner import check_resources, start_ray

    experiment_dir = storage_path(args.dir)
    read_meta(experiment_dir)
    if args.top_k < 1 or args.examples < 1:
        raise UsageError("--top-k and --examples must be at least 1")
    if args.attacks and args.version:
        raise UsageError("--attacks replaces --version's ensemble: give one of the two")
    for result in (experiment_dir / FINAL_DIR).glob("*.json"):
        load_result(result)  # a damaged result is refused before Ray starts, not overwritten
    check_resources(1, args.gpus_per_task, args.address, "--gpus-per-task")
    start = time.perf_counter()
    with hold_lease(experiment_dir, "clustune evaluate"), Watcher() as watch:
        start_ray(args.address)  # once the lease is ours: a refusal starts nothing
        experiment = run_final_stage(experiment_dir, args.top_k, args.examples,
                                     args.trial or None, args.head or None,
                                     args.version or "standard", args.gpus_per_task,
                                     args.attacks, on_event=watch)
    console.print(to_rich(autoattack_table(experiment)))
    say(f"final stage: {time.perf_counter() - start:.0f} s")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from analysis import load_experiment

    print_tables(load_experiment(args.dir), draws=args.verbose)
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
                   "embedded Ray, with Ray's dashboard when ray[default] is installed "
                   "unless CLUSTUNE_RAY_DASHBOARD=0)")
    p.add_argument("--num-samples", type=int, help="number of trials")
    p.add_argument("--cpus-per-trial", type=float, help="CPUs per trial")
    p.add_argument("--gpus-per-trial", type=float, help="GPUs per trial (fractions share one)")
    p.add_argument("--max-concurrent", type=int, help="trials running at once")
    p.add_argument("--final-top-k", type=int, help="best trials re-evaluated with AutoAttack "
                   "at the end (0: skip)")
    p.add_argument("--final-examples", type=int, help="test images per final evaluation")
    p.add_argument("--mlflow", metavar="URI", help="track the search in MLflow at this "
                   "tracking URI (http://HOST:5000, file:///PATH): a run per trial, nested "
                   "under one for the search; needs pip install 'clustune[mlflow]'")
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
    p.add_argument("--head", action="append", choices=HEADS,
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
    p.add_argument("--verbose", action="store_true", help="also show the sampler's internal "
                   "draws (clusters.l@fraction) the resolved parameters came from")
    p.set_defaults(func=_cmd_status)
