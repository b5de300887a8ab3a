"""Search methods compared on a recorded table of learning curves (a tabular benchmark, as
HPOBench and LCBench do), replayed through the real Ray Tune + Optuna + scheduler machinery.

    python bench/search_bench.py record     # train the table once: bench/search-table.json
    python bench/search_bench.py replay     # every method x seed: bench/search-results.json,
                                            # bench/search-anytime.svg, and the table below
    python bench/search_bench.py show       # the table again from search-results.json

The table: configurations drawn at random from the `cpu-ablation` space (clustune's own
draws, so L and M are fractions of their feasible range), each trained for EPOCHS epochs on
scikit-learn's digits with a small CNN, the validation robust accuracy recorded per epoch.
A replayed trial looks its configuration up (the nearest recorded one, distances on the
draws scaled to [0, 1], a categorical mismatch counting 1) and reports its curve an epoch at
a time. What replay cannot capture: configurations between the recorded ones (the nearest
stands in), training noise (each configuration has one curve), and wall-clock time (every
epoch costs one unit; ASHA's saving is counted in trial-epochs).

Methods: random search without stopping, random + ASHA, TPE without stopping, clustune's TPE
+ ASHA as configured (through Ray Tune, 2 trials at a time), and Optuna alone (TPE +
HyperbandPruner, one trial at a time, no Ray), each over SEEDS seeds.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import optuna

from analysis import markdown_table

HERE = Path(__file__).resolve().parent
TABLE = HERE / "search-table.json"
RESULTS = HERE / "search-results.json"
PLOT = HERE / "search-anytime.svg"
EPOCHS = 5
TRIALS = 40  # per replayed search
METHODS = ("random", "random+asha", "tpe", "clustune", "clustune+multivariate",
           "clustune+liar", "optuna")
BUDGETS = (25, 50, 100, 200)  # trial-epochs at which the best-so-far is tabulated
TRAIN = {  # the cpu-ablation space, trained small on digits
    "data": {"dataset": "digits"},
    "model": {"width": 8, "embedding_dim": 16},
    "clusters": {"d": 4},
    "optim": {"epochs": EPOCHS, "batches_per_epoch": 15},
    "warm_start": {"ce_epochs": 1},
    "eval": {"examples": 150, "pgd_steps": 3},
    "fast": {"channels_last": False},
    "threads": 1,
}


def _search_config(method: str = "clustune", seed: int = 0):
    from search import load_search_config

    overrides = [f"search.num_samples={TRIALS}", f"search.seed={seed}",
                 f"train.optim.epochs={EPOCHS}", "search.grace_period=1",
                 "search.reduction_factor=3", "search.max_concurrent=2"]
    cfg = load_search_config("cpu-ablation", overrides=overrides)
    train = {**cfg.train, **TRAIN}
    sampler = "random" if method.startswith("random") else "tpe"
    scheduler = "asha" if method == "random+asha" or method.startswith("clustune") else "fifo"
    search = cfg.search.model_copy(update={
        "sampler": sampler, "scheduler": scheduler,
        "tpe_multivariate": method == "clustune+multivariate",
        "tpe_constant_liar": method == "clustune+liar"})
    return cfg.model_copy(update={"train": train, "search": search})


# ------------------------------------------------------------------------------ record
def _train_one(item: tuple[int, dict[str, Any]]) -> dict[str, Any]:
    import torch

    from search import SearchConfig
    from trainable import Trainer, TrainingDiverged, resolve_trial_config

    index, payload = item
    cfg = SearchConfig.model_validate(payload["cfg"])
    torch.set_num_threads(1)
    trainer = Trainer(resolve_trial_config(cfg.base_dict(), {}, payload["params"]),
                      device="cpu")
    trainer.warm_start()
    curve = []
    for _ in range(EPOCHS):
        try:
            curve.append(trainer.train_epoch()["val_robust_acc"])
        except TrainingDiverged:
            curve += [0.0] * (EPOCHS - len(curve))
            break
    return {"index": index, "params": payload["params"], "curve": curve}


def record(n: int, workers: int) -> None:
    from search import suggest

    cfg = _search_config()
    base = cfg.base_dict()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=12345))
    items = []
    for i in range(n):
        trial = study.ask()
        resolved = suggest(trial, cfg, base)
        params = {**trial.params, **resolved}  # the draws and the resolved L and M
        study.tell(trial, 0.0)
        items.append((i, {"cfg": cfg.model_dump(mode="json"), "params": params}))
    start = time.perf_counter()
    rows = []
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        for row in pool.imap_unordered(_train_one, items):
            rows.append(row)
            if len(rows) % 25 == 0:
                print(f"recorded {len(rows)}/{n} ({time.perf_counter() - start:.0f} s)",
                      flush=True)
    rows.sort(key=lambda r: r["index"])
    seconds = time.perf_counter() - start
    TABLE.write_text(json.dumps({
        "epochs": EPOCHS, "train": TRAIN, "space": "cpu-ablation", "seconds": seconds,
        "workers": workers,
        "configs": [{"params": r["params"], "curve": r["curve"]} for r in rows]}) + "\n")
    print(f"{n} configurations x {EPOCHS} epochs in {seconds:.0f} s -> {TABLE}")


# ------------------------------------------------------------------------------ lookup
class Lookup:
    """The nearest recorded configuration: distances over the space's parameters as resolved
    (L and M as integers), each scaled to [0, 1] by its range in the space (log-scaled where
    the space is), a categorical mismatch counting 1."""

    def __init__(self, table: dict[str, Any]) -> None:
        self.space = _search_config().space
        self.names = sorted(self.space)
        self.curves = [c["curve"] for c in table["configs"]]
        self.points = np.array([[self._scale(n, c["params"][n]) for n in self.names]
                                for c in table["configs"]])
        self.categorical = np.array([self.space[n].type == "categorical" for n in self.names])

    def _scale(self, name: str, value: Any) -> float:
        spec = self.space[name]
        if spec.type == "categorical":
            return float(spec.choices.index(value))
        low, high, value = spec.low, spec.high, float(value)
        if spec.log:
            low, high, value = math.log(low), math.log(high), math.log(value)
        return (value - low) / (high - low) if high > low else 0.0

    def curve(self, params: dict[str, Any]) -> list[float]:
        """A knob the trial did not draw (a conditional one its variant does not use) is no
        distance."""
        drawn = np.array([n in params for n in self.names])
        x = np.array([self._scale(n, params[n]) if n in params else 0.0 for n in self.names])
        gap = np.abs(self.points - x)
        gap[:, self.categorical] = (gap[:, self.categorical] > 0).astype(float)
        gap[:, ~drawn] = 0.0
        return self.curves[int(np.argmin((gap ** 2).sum(1)))]


# ------------------------------------------------------------------------------ replay
def _space(trial: optuna.Trial, cfg: Any, base: dict[str, Any]) -> dict[str, Any]:
    """clustune's define-by-run space (module level: the searcher's state is pickled)."""
    from search import suggest

    params = suggest(trial, cfg, base)
    return {k: v for k, v in params.items() if k in ("clusters.l", "clusters.m")}


def _replay_ray(method: str, seed: int, lookup: Lookup, folder: Path) -> list[float]:
    """Values in the order Tune received them (one per trial-epoch)."""
    import functools

    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search import ConcurrencyLimiter

    from search import FidelityOptunaSearch, make_sampler

    cfg = _search_config(method, seed)
    base = cfg.base_dict()

    class Replay(tune.Trainable):
        def setup(self, config: dict[str, Any]) -> None:
            logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)
            self.curve = lookup.curve(config)

        def step(self) -> dict[str, Any]:
            epoch = self.iteration + 1
            return {"val_robust_acc": self.curve[epoch - 1], "trial_complete": epoch >= EPOCHS,
                    "done": epoch >= EPOCHS}

        def reset_config(self, new_config: dict[str, Any]) -> bool:
            self.curve = lookup.curve(new_config)
            return True

        def save_checkpoint(self, checkpoint_dir: str) -> None:
            return None

        def load_checkpoint(self, checkpoint: Any) -> None:
            return None

    values: list[float] = []

    class Log(tune.Callback):
        def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
            values.append(result["val_robust_acc"])

    space = functools.partial(_space, cfg=cfg, base=base)
    searcher = FidelityOptunaSearch(space=space, metric="val_robust_acc", mode="max",
                                    sampler=make_sampler(cfg))
    scheduler = ASHAScheduler(time_attr="training_iteration", max_t=EPOCHS, grace_period=1,
                              reduction_factor=3) if cfg.search.scheduler == "asha" \
        else FIFOScheduler()
    tuner = tune.Tuner(
        tune.with_resources(Replay, {"cpu": 1}),
        tune_config=tune.TuneConfig(search_alg=ConcurrencyLimiter(searcher, max_concurrent=2),
                                    scheduler=scheduler, num_samples=TRIALS,
                                    metric="val_robust_acc", mode="max", reuse_actors=True),
        run_config=tune.RunConfig(name=f"{method}-{seed}", storage_path=str(folder),
                                  callbacks=[Log()], verbose=0))
    tuner.fit()
    return values


def _replay_optuna(seed: int, lookup: Lookup) -> list[float]:
    """What a user would pick instead of clustune: Optuna alone, TPE + HyperbandPruner."""
    from search import make_sampler, suggest

    cfg = _search_config("clustune", seed)
    base = cfg.base_dict()

    study = optuna.create_study(direction="maximize", sampler=make_sampler(cfg),
                                pruner=optuna.pruners.HyperbandPruner(
                                    min_resource=1, max_resource=EPOCHS, reduction_factor=3))
    values: list[float] = []
    for _ in range(TRIALS):
        trial = study.ask()
        curve = lookup.curve(suggest(trial, cfg, base))
        for epoch, value in enumerate(curve, 1):
            values.append(value)
            trial.report(value, epoch)
            if epoch < EPOCHS and trial.should_prune():
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                break
        else:
            study.tell(trial, curve[-1])
    return values


def replay(seeds: int) -> None:
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    lookup = Lookup(json.loads(TABLE.read_text()))
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR",
             object_store_memory=80 * 1024**2)
    runs: dict[str, list[list[float]]] = {m: [] for m in METHODS}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        for seed in range(seeds):
            for method in METHODS:
                values = _replay_optuna(seed, lookup) if method == "optuna" else \
                    _replay_ray(method, seed, lookup, Path(folder))
                runs[method].append(values)
            print(f"seed {seed + 1}/{seeds} done ({time.perf_counter() - start:.0f} s)",
                  flush=True)
    ray.shutdown()
    RESULTS.write_text(json.dumps({"seeds": seeds, "trials": TRIALS, "epochs": EPOCHS,
                                   "seconds": time.perf_counter() - start, "runs": runs}) + "\n")
    show()


# ------------------------------------------------------------------------------ figures
def anytime(values: list[float], budget: int) -> list[float]:
    """Best value reached within 1..budget trial-epochs (the last one carried on)."""
    best, out = -math.inf, []
    for value in values[:budget]:
        best = max(best, value)
        out.append(best)
    return out + [out[-1]] * (budget - len(out)) if out else [math.nan] * budget


def epochs_to_reach(values: list[float], target: float) -> int | None:
    for i, value in enumerate(values, 1):
        if value >= target - 1e-12:
            return i
    return None


def _quartiles(xs: list[float]) -> tuple[float, float, float]:
    q = statistics.quantiles(xs, n=4, method="inclusive") if len(xs) > 1 else [xs[0]] * 3
    return q[0], statistics.median(xs), q[2]


def summary(results: dict[str, Any]) -> tuple[list[list[str]], float]:
    runs = results["runs"]
    target = statistics.median(max(v) for v in runs["random"])  # random search's final best
    rows = []
    for method in METHODS:
        need = [epochs_to_reach(v, target) for v in runs[method]]
        reached = [n for n in need if n is not None]
        q1, med, q3 = _quartiles([n if n is not None else math.inf for n in need])
        cells = [method, f"{len(reached)}/{len(need)}",
                 f"{med:.0f} [{q1:.0f}-{q3:.0f}]" if math.isfinite(med) else "not reached"]
        for b in BUDGETS:
            q1, med, q3 = _quartiles([anytime(v, b)[-1] for v in runs[method]])
            cells.append(f"{med:.3f} [{q1:.3f}-{q3:.3f}]")
        rows.append(cells)
    return rows, target


def markdown(results: dict[str, Any]) -> str:
    rows, target = summary(results)
    header = ["method", "seeds reaching the target",
              f"trial-epochs to {target:.3f}: median [IQR]",
              *[f"best within {b} trial-epochs" for b in BUDGETS]]
    return markdown_table(header, rows)


def svg(results: dict[str, Any], width: int = 720, height: int = 420) -> str:
    """The anytime curves (median and interquartile band per method) as a small SVG."""
    budget = max(len(v) for runs in results["runs"].values() for v in runs)
    colours = dict(zip(METHODS, ("#7f7f7f", "#1f77b4", "#2ca02c", "#d62728", "#ff7f0e",
                                 "#8c564b", "#9467bd"), strict=True))
    curves = {m: [anytime(v, budget) for v in results["runs"][m]] for m in METHODS}
    low = min(min(c) for cs in curves.values() for c in cs)
    high = max(max(c) for cs in curves.values() for c in cs)
    left, right, top, bottom = 60, 150, 20, 40

    def xy(i: int, value: float) -> str:
        x = left + (width - left - right) * i / (budget - 1)
        y = top + (height - top - bottom) * (1 - (value - low) / ((high - low) or 1))
        return f"{x:.1f},{y:.1f}"

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'font-family="sans-serif" font-size="12">',
             f'<rect width="{width}" height="{height}" fill="white"/>']
    for k, method in enumerate(METHODS):
        per_step = list(zip(*curves[method], strict=True))
        quart = [_quartiles(list(s)) for s in per_step]
        band = [xy(i, q[2]) for i, q in enumerate(quart)] + \
            [xy(i, q[0]) for i, q in reversed(list(enumerate(quart)))]
        parts.append(f'<polygon points="{" ".join(band)}" fill="{colours[method]}" '
                     f'fill-opacity="0.12" stroke="none"/>')
        parts.append(f'<polyline points="{" ".join(xy(i, q[1]) for i, q in enumerate(quart))}" '
                     f'fill="none" stroke="{colours[method]}" stroke-width="2"/>')
        parts.append(f'<text x="{width - right + 10}" y="{top + 16 * k + 10}" '
                     f'fill="{colours[method]}">{method}</text>')
    parts += [f'<text x="{left}" y="{height - 10}">trial-epochs (1-{budget})</text>',
              f'<text x="5" y="{top + 10}">{high:.2f}</text>',
              f'<text x="5" y="{height - bottom}">{low:.2f}</text>',
              f'<text x="{left}" y="{top - 5}">best validation robust accuracy: median and '
              f'IQR over {results["seeds"]} seeds</text>', "</svg>"]
    return "\n".join(parts) + "\n"


def table_facts() -> str:
    """What the table says about itself: how well an early epoch predicts the last, and the
    spread between configurations against the change from one epoch to the next."""
    curves = np.array([c["curve"] for c in json.loads(TABLE.read_text())["configs"]])
    first_last = np.corrcoef(curves[:, 0], curves[:, -1])[0, 1]
    return (f"table: {len(curves)} configurations; correlation of epoch 1 with epoch "
            f"{curves.shape[1]}: {first_last:.2f}; sd across configurations at the last epoch "
            f"{curves[:, -1].std():.3f}, sd of the last epoch-to-epoch change "
            f"{(curves[:, -1] - curves[:, -2]).std():.3f}")


def distinct_configurations(results: dict[str, Any]) -> str:
    """Median distinct values per run: a proxy for distinct configurations visited."""
    return "; ".join(f"{m} {statistics.median(len(set(v)) for v in runs):.0f}"
                     for m, runs in results["runs"].items())


def show() -> None:
    results = json.loads(RESULTS.read_text())
    PLOT.write_text(svg(results))
    print(markdown(results))
    print(f"\n{table_facts()}\ndistinct values seen per run (median): "
          f"{distinct_configurations(results)}")
    print(f"\n{results['seeds']} seeds x {len(METHODS)} methods, {results['trials']} trials of "
          f"up to {results['epochs']} epochs each; replay took {results['seconds']:.0f} s; "
          f"plot: {PLOT}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("record", help="train the table of learning curves")
    p.add_argument("--configs", type=int, default=300)
    p.add_argument("--workers", type=int, default=2)
    p = sub.add_parser("replay", help="replay every method over seeds")
    p.add_argument("--seeds", type=int, default=10)
    sub.add_parser("show", help="print the table from the committed results")
    args = parser.parse_args()
    if args.command == "record":
        record(args.configs, args.workers)
    elif args.command == "replay":
        replay(args.seeds)
    else:
        show()
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parent))
    sys.exit(main())
