"""``clustune export``, ``best``, ``report`` and ``dashboard``: reading an experiment back (the
analysis package's functions, imported when a command runs)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TypeVar

from ._console import console
from ._errors import UsageError

__all__ = ["add_analysis_commands"]

T = TypeVar("T")


def _run(what: Callable[[], T]) -> T:
    """Name an unwritable output in the one-line usage error."""
    try:
        return what()
    except OSError as err:
        raise UsageError(f"cannot write {err.filename or 'the output'}: "
                         f"{err.strerror or err}") from None


def _cmd_export(args: argparse.Namespace) -> int:
    from analysis import export_experiment

    written = _run(lambda: export_experiment(args.dir, args.out))
    for path in written.values():
        print(path)
    return 0


def _cmd_best(args: argparse.Namespace) -> int:
    from analysis import best_configs

    written = _run(lambda: best_configs(args.dir, top=args.top, out=args.out,
                                        include_flagged=args.include_flagged))
    if not written:
        console.print("no trial to export: none has finished an epoch, or every audited one "
                      "is flagged (--include-flagged writes those)", markup=False)
        return 0
    for path in written:
        print(path)
    console.print(f"run one with: clustune train --config {written[0]}", markup=False)
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from analysis import write_report

    path = _run(lambda: write_report(args.dir, args.out))
    print(path)
    if path.is_local:
        console.print(f"open it offline: file://{path.local}", markup=False)
    return 0


def _cmd_dashboard(args: argparse.Namespace) -> int:
    import optuna_dashboard

    from analysis import load_experiment

    experiment = load_experiment(args.dir)
    storage = experiment.open_study(required=True)
    if storage is None:
        raise UsageError(f"{experiment.path} has no optuna.db yet; start the search first")
    console.print(f"Optuna dashboard:  http://{args.host}:{args.port}/dashboard  "
                  f"(study {experiment.meta.study_name}; Ctrl-C stops it)\n"
                  f"TensorBoard:       tensorboard --logdir {experiment.path.uri}\n"
                  "Ray dashboard:     while a search runs, after pip install "
                  "'clustune[cluster]'", markup=False)
    if not experiment.path.is_local and storage.startswith("sqlite:"):
        console.print("the study is a copy of the one in the bucket as of now: start the "
                      "dashboard again to see newer trials", markup=False)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        console.print(f"warning: optuna-dashboard has no authentication: anyone who reaches "
                      f"{args.host}:{args.port} can read and change the study", markup=False)
    try:
        optuna_dashboard.run_server(storage, host=args.host, port=args.port)
    except OSError as err:
        raise UsageError(f"cannot serve on {args.host}:{args.port}: {err.strerror or err}") \
            from None
    return 0


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a TCP port (1-65535)")
    return value


def add_analysis_commands(sub) -> None:
    p = sub.add_parser("export", help="write every trial and every epoch to Parquet",
                       description="Write trials.parquet (one row per trial) and epochs.parquet "
                       "(one row per trial and epoch) for a running or finished search; the "
                       "columns are documented in docs/exports.md.")
    p.add_argument("dir", help="the experiment (a folder or a cloud-storage URI), or a folder "
                   "`clustune export` wrote")
    p.add_argument("--out", metavar="DIR", help="output folder (default: DIR/export)")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("best", help="write the best trials' configs as runnable YAML",
                       description="Write the top trials' resolved training configs as "
                       "N-TRIAL.yaml files that `clustune train --config FILE` and `clustune "
                       "search --config FILE` run as they are. Ranked by the audit: audited "
                       "trials by worst-case robust accuracy, then unaudited ones by the "
                       "validation proxy; trials with a masking flag are left out unless "
                       "--include-flagged.")
    p.add_argument("dir", help="the experiment (a folder or a cloud-storage URI), or a folder "
                   "`clustune export` wrote")
    p.add_argument("--top", type=_positive, default=3, metavar="N",
                   help="how many trials (default: 3)")
    p.add_argument("--out", metavar="FOLDER", help="output folder (default: DIR/best); "
                   "files an earlier `clustune best` wrote there are replaced")
    p.add_argument("--include-flagged", action="store_true",
                   help="also write audited trials with a masking flag (ranked after the "
                   "unflagged ones)")
    p.set_defaults(func=_cmd_best)

    p = sub.add_parser("report", help="write a self-contained HTML (or Markdown) report",
                       description="Write one HTML file, readable offline: the clean/robust "
                       "Pareto front, parameter importances, learning curves, AutoAttack "
                       "results with masking flags and a paper-style results table. With "
                       "--out FILE.md, the tables alone as Markdown.")
    p.add_argument("dir", help="the experiment (a folder or a cloud-storage URI), or a folder "
                   "`clustune export` wrote")
    p.add_argument("--out", metavar="FILE", help="output file, .html or .md (default: "
                   "DIR/report.html)")
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("dashboard", help="serve optuna-dashboard on the experiment's study",
                       description="Serve optuna-dashboard on the experiment's Optuna study "
                       "until Ctrl-C. It binds 127.0.0.1 by default; reach a remote machine "
                       "through an SSH tunnel rather than binding a public address.")
    p.add_argument("dir", help="the experiment: its folder, or its URI in cloud storage")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    p.add_argument("--port", type=_port, default=8080, help="port (default: 8080)")
    p.set_defaults(func=_cmd_dashboard)
