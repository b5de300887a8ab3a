"""The ``clustune`` command line: train, search, resume, status, evaluate, export, best, report,
dashboard. Bad input gets a one-line error and exit code 2, never a traceback."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import NoReturn

from trainable import ClustuneError, TrainingDiverged

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """argparse with the one-line errors of every other bad input (argparse prints the usage
    first); the subcommand parsers inherit it."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"clustune: error: {self.prog}: {message} "
                              f"(see {self.prog} --help)\n")


def _add_config_args(p: argparse.ArgumentParser, default_preset: str | None) -> None:
    src = p.add_mutually_exclusive_group()
    src.add_argument("--preset", default=None,
                     help=f"named preset (default: {default_preset}); see `clustune presets`")
    src.add_argument("--config", metavar="FILE", help="a YAML config file instead of a preset")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one setting, e.g. --set clusters.k=3 (repeatable)")


def _cmd_train(args: argparse.Namespace) -> int:
    from trainable import load_config

    from ._train_cmd import default_out, run_train

    preset = args.preset or (None if args.config else "fmnist-magnet-adv")
    cfg = load_config(preset, args.config, args.overrides)
    out = Path(args.out) if args.out else default_out(preset or Path(args.config).stem)
    final = run_train(cfg, out)
    print(f"clean {final['val_clean_acc']:.4f}  robust {final['val_robust_acc']:.4f}  "
          f"({final['wall_time_s']:.0f} s)  checkpoint: {out / 'checkpoint.pt'}")
    return 0


def _cmd_presets(args: argparse.Namespace) -> int:
    from trainable import list_presets

    print("training presets (clustune train --preset NAME):")
    for name in list_presets("trainable"):
        print(f"  {name}")
    from ._spaces import list_search_presets

    print("search presets (clustune search --preset NAME):")
    for name in list_search_presets():
        print(f"  {name}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="clustune",
        description="Hyperparameter search for clustering-based adversarially robust classifiers.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train one model from a preset or config (no Ray)",
                       description="Train one model; writes config.yaml, metrics.jsonl, "
                       "final.json and checkpoint.pt to --out.")
    _add_config_args(p, "fmnist-magnet-adv")
    p.add_argument("--out", metavar="DIR", help="output folder (default: runs/train-NAME-TIME)")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("presets", help="list the training and search presets")
    p.set_defaults(func=_cmd_presets)

    from ._search_cmd import add_search_commands

    add_search_commands(sub, _add_config_args)
    from ._confirm import add_confirm_command

    add_confirm_command(sub)
    from ._analysis_cmd import add_analysis_commands

    add_analysis_commands(sub)
    return parser


def _say_skipped_files() -> None:
    """Reading commands go on without a damaged file, and say which and why, one line each."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("clustune: warning: %(message)s"))
    logger = logging.getLogger("clustune")
    logger.handlers[:] = [handler]
    logger.propagate = False


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    _say_skipped_files()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ClustuneError as err:  # every expected error: bad input, data, files, folders
        print(f"clustune: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as err:  # e.g. an output path under a file, or without write permission
        where = f": {err.filename}" if err.filename else ""
        print(f"clustune: error: {err.strerror or err}{where}", file=sys.stderr)
        return EXIT_USAGE
    except TrainingDiverged as err:
        print(f"clustune: training diverged: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("clustune: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
