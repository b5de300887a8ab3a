"""The ``clustune`` command line: train, presets, search, resume, status, evaluate, confirm,
export, best, report, dashboard. A thin layer: it parses, runs the API a command needs (imported
when the command runs, so ``--help`` and the reading commands start at once), draws what came
back and maps it to an exit code. Bad input gets a one-line error and exit code 2, never a
traceback."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any, NoReturn

from trainable import ClustuneError, TrainingDiverged

__all__ = ["build_parser", "main", "EXIT_USAGE"]

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


def build_parser() -> argparse.ArgumentParser:
    from ._cli_analysis import add_analysis_commands
    from ._cli_confirm import add_confirm_command
    from ._cli_search import add_search_commands
    from ._cli_train import add_train_commands

    parser = _Parser(
        prog="clustune",
        description="Hyperparameter search for clustering-based adversarially robust classifiers.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_train_commands(sub, _add_config_args)
    add_search_commands(sub, _add_config_args)
    add_confirm_command(sub)
    add_analysis_commands(sub)
    return parser


def _say_skipped_files() -> None:
    """Reading commands go on without a damaged file, and say which and why, one line each."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("clustune: warning: %(message)s"))
    logger = logging.getLogger("clustune")
    logger.handlers[:] = [handler]
    logger.propagate = False


def main(argv: list[str] | None = None, callbacks: list[Any] | None = None) -> int:
    """Run one command; ``callbacks`` (Ray Tune callbacks) watch a search it starts, beside the
    live view (:mod:`search.testing` installs its faults so)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    _say_skipped_files()
    parser = build_parser()
    args = parser.parse_args(argv)
    args.callbacks = list(callbacks or [])
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
