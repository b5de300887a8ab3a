"""``clustune confirm``: the command line over :func:`search.run_confirm`."""

from __future__ import annotations

import argparse

from analysis import BASELINES

from ._console import attack_list, console

__all__ = ["add_confirm_command"]


def _cmd_confirm(args: argparse.Namespace) -> int:
    from analysis import confirmation_table, to_rich

    from ._cli_search import exit_code
    from ._confirm import run_confirm
    from ._console import Watcher

    with Watcher() as watch:
        outcome = run_confirm(args.dir, args.top, args.seeds, args.baseline, args.examples,
                              args.address, args.attacks, on_event=watch)
    if outcome.search.stopped_early:
        return exit_code(outcome.search)
    console.print(to_rich(confirmation_table(outcome.confirmations, outcome.experiment.name)))
    return exit_code(outcome.search)


def add_confirm_command(sub) -> None:
    p = sub.add_parser("confirm", help="retrain the best configs with new seeds and audit them",
                       description="Retrain the top configurations of the ranking (and named "
                       "baselines) with new seeds as Ray trials, audit each with the final "
                       "stage, and report the mean, standard deviation and 95 %% interval per "
                       "configuration. Results go to DIR/confirm; running it again continues it, "
                       "with the options it was started with.")
    p.add_argument("dir", help="the experiment: its folder, or its URI in cloud storage")
    p.add_argument("--top", type=int, help="configurations to confirm (default 1)")
    p.add_argument("--seeds", type=int, help="new seeds per configuration (default 3, at "
                   "least 2)")
    p.add_argument("--baseline", action="append", choices=BASELINES,
                   help="also confirm this baseline at the same budget (repeatable)")
    p.add_argument("--examples", type=int, help="test images per audit (default 500)")
    p.add_argument("--attacks", type=attack_list, metavar="A,B",
                   help="audit with these AutoAttack attacks instead of its standard ensemble, "
                   "e.g. apgd-ce,apgd-t (docs/evaluation.md: when that is enough)")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS or embedded)")
    p.set_defaults(func=_cmd_confirm)
