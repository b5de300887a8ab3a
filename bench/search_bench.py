"""Search methods compared on a benchmark that can tell them apart: a recorded table of learning
curves, a surrogate validated on it, and every method run over many paired seeds through the
product's own searcher and schedulers (docs/performance.md, "Search efficiency").

    python bench/search_bench.py record     # the table: bench/search-table.json (hours)
    python bench/search_bench.py validate   # fit and check the surrogate: search-surrogate.json
    python bench/search_bench.py run        # methods x paired seeds: search-results.json + plot
    python bench/search_bench.py replay     # a few seeds through Ray Tune, checked against run
    python bench/search_bench.py show       # the tables again, from the committed files

The table: configurations drawn at random from the ``cpu-ablation`` space (clustune's own
draws), each trained for EPOCHS epochs on scikit-learn's digits with a small CNN, half the
training set held out so that one validation image is 1/719 of the robust accuracy; the first
REPEATED configurations are trained with SEEDS more seeds each, to measure the noise.

The surrogate: a random forest (scikit-learn) from a configuration to its learning curve,
validated before use (held-out rank correlation of the final value; random search and random
+ ASHA ranked the same on it as on the recorded table). A replayed trial observes the
surrogate's curve plus a noise curve drawn from the repeated seeds' residuals; a method's
result is the surrogate's noise-free final value of the configuration it would return (the
trial with the best observed value so far), so luck is not counted as finding.

The loop: each method is the product's own :func:`search.make_searcher` (Optuna through
clustune's Searcher) and :func:`search.make_scheduler` (Ray Tune's schedulers, driven
directly), two trials at a time (an epoch each per step, like two CPU trials), trials drawn
until the budget of trial-epochs is spent. ``replay`` runs a few seeds through the real Ray
Tune machinery (``build_tuner``) one trial at a time and checks that every observed value
arrives in the same order as in the loop.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from analysis import markdown_table  # noqa: E402

TABLE = HERE / "search-table.json"
SURROGATE = HERE / "search-surrogate.json"
RESULTS = HERE / "search-results.json"
PLOT = HERE / "search-anytime.svg"
EPOCHS = 9
SPACE = "cpu-ablation"
SEED = 99  # training seed of each configuration's first run
TRAIN = {  # the cpu-ablation space, trained small on digits; half the training set validates
    "data": {"dataset": "digits", "val_fraction": 0.5},
    "model": {"width": 8, "embedding_dim": 16},
    "clusters": {"d": 4},
    "optim": {"epochs": EPOCHS, "batches_per_epoch": 15},
    "warm_start": {"ce_epochs": 1},
    "eval": {"examples": 1000, "pgd_steps": 3},
    "fast": {"channels_last": False},
    "seed": SEED,
    "threads": 1,
}
BUDGETS = (50, 100, 200, 400)  # trial-epochs
HORIZON = 1200  # random search runs this long, to time its own arrival at the target
WORKERS = 2  # trials at a time
METRIC = "val_robust_acc"
DRAWN_AS_FRACTIONS = ("clusters.l", "clusters.m")  # the space draws them as @fraction


# ------------------------------------------------------------------------------ record
def search_config(search: dict[str, Any] | None = None):
    """The cpu-ablation search on the benchmark's training, with these search settings."""
    from search import load_search_config

    cfg = load_search_config(SPACE)
    settings = cfg.search.model_copy(update={"num_samples": 10**6, "max_concurrent": WORKERS,
                                             "grace_period": 1, "reduction_factor": 3,
                                             **(search or {})})
    return cfg.model_copy(update={"train": {**cfg.train, **TRAIN}, "search": settings})


def _train_one(item: tuple[int, dict[str, Any], int]) -> dict[str, Any]:
    import torch

    from trainable import Trainer, TrainingDiverged, resolve_trial_config

    index, params, seed = item
    base = {**search_config().base_dict(), "seed": seed}
    torch.set_num_threads(1)
    start = time.perf_counter()
    trainer = Trainer(resolve_trial_config(base, {}, params), device="cpu")
    trainer.warm_start()
    robust, clean, diverged = [], [], None
    for _ in range(EPOCHS):
        try:
            m = trainer.train_epoch()
        except TrainingDiverged:
            diverged = len(robust) + 1
            robust += [0.0] * (EPOCHS - len(robust))
            clean += [0.0] * (EPOCHS - len(clean))
            break
        robust.append(round(m["val_robust_acc"], 6))
        clean.append(round(m["val_clean_acc"], 6))
    return {"index": index, "seed": seed, "curve": robust, "clean": clean,
            "diverged": diverged, "seconds": round(time.perf_counter() - start, 2),
            "val_images": len(trainer.data.y_val)}


def record(configs: int, repeated: int, seeds: int, workers: int) -> None:
    from search import suggest

    cfg = search_config()
    base = cfg.base_dict()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=12345))
    params = []
    for _ in range(configs):
        trial = study.ask()
        resolved = suggest(trial, cfg, base)
        params.append({**trial.params, **resolved})  # the draws and the resolved L and M
        study.tell(trial, 0.0)
    items = [(i, params[i], SEED) for i in range(configs)]
    items += [(i, params[i], SEED + 1000 * s) for i in range(repeated)
              for s in range(1, seeds + 1)]
    start = time.perf_counter()
    rows = []
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        for row in pool.imap_unordered(_train_one, items, chunksize=4):
            rows.append(row)
            if len(rows) % 50 == 0:
                print(f"recorded {len(rows)}/{len(items)} ({time.perf_counter() - start:.0f} s)",
                      flush=True)
    seconds = time.perf_counter() - start
    first = {r["index"]: r for r in rows if r["seed"] == SEED}
    repeats = sorted((r for r in rows if r["seed"] != SEED), key=lambda r: (r["index"], r["seed"]))
    keys = ("curve", "clean", "diverged", "seconds")
    TABLE.write_text(json.dumps({
        "format": "clustune-search-table-v2", "space": SPACE, "epochs": EPOCHS, "train": TRAIN,
        "metric": METRIC, "val_images": rows[0]["val_images"], "seconds": round(seconds),
        "workers": workers, "sampler_seed": 12345,
        "configs": [{"params": params[i], **{k: first[i][k] for k in keys}}
                    for i in range(configs)],
        "repeats": [{"config": r["index"], "seed": r["seed"], **{k: r[k] for k in keys}}
                    for r in repeats]}) + "\n")
    print(f"{len(items)} runs x {EPOCHS} epochs in {seconds:.0f} s -> {TABLE}")


# ---------------------------------------------------------------------------- surrogate
def encode(space: dict[str, Any], params: dict[str, Any]) -> list[float]:
    """A configuration as numbers: each searched knob (log scale where the space draws it so;
    -1 when a conditional knob was not drawn), each categorical one-hot (all zero when not
    drawn), and the draws behind L and M (fractions of their feasible range)."""
    row: list[float] = []
    for name in sorted(space):
        spec = space[name]
        value = params.get(name)
        if spec.type == "categorical":
            row += [float(value == c) for c in spec.choices]
        elif value is None:
            row.append(-1.0)
        else:
            row.append(math.log(float(value)) if spec.log else float(value))
        if name in DRAWN_AS_FRACTIONS:
            row.append(float(params.get(f"{name}@fraction", -1.0)))
    return row


@dataclass
class Table:
    """The recorded runs: X (one row per run), curves, the configuration of each run."""

    raw: dict[str, Any]
    space: dict[str, Any]
    X: np.ndarray = field(init=False)
    curves: np.ndarray = field(init=False)
    config_of: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        configs = self.raw["configs"]
        rows = [(i, c["curve"]) for i, c in enumerate(configs)]
        rows += [(r["config"], r["curve"]) for r in self.raw.get("repeats", [])]
        self.config_of = np.array([i for i, _ in rows])
        self.curves = np.array([curve for _, curve in rows], dtype=float)
        config_X = np.array([encode(self.space, c["params"]) for c in configs])
        self.X = config_X[self.config_of]

    @property
    def params(self) -> list[dict[str, Any]]:
        return [c["params"] for c in self.raw["configs"]]

    def repeated(self) -> dict[int, np.ndarray]:
        """config -> its curves (every seed), for the configurations run with several seeds."""
        seen: dict[int, list[np.ndarray]] = {}
        for i, curve in zip(self.config_of, self.curves, strict=True):
            seen.setdefault(int(i), []).append(curve)
        return {i: np.array(c) for i, c in seen.items() if len(c) > 1}


def load_table() -> Table:
    return Table(json.loads(TABLE.read_text()), search_config().space)


def fit_forest(X: np.ndarray, Y: np.ndarray, leaf: int, seed: int = 0):
    from sklearn.ensemble import RandomForestRegressor

    return RandomForestRegressor(n_estimators=200, min_samples_leaf=leaf, max_features=0.5,
                                 random_state=seed, n_jobs=1).fit(X, Y)


LEAVES = (1, 3, 5, 10, 20)  # candidate minimum leaf sizes, chosen by cross-validation


class Benchmark:
    """The surrogate and the noise: what a replayed trial observes, and the truth behind it."""

    def __init__(self, table: Table, leaf: int) -> None:
        self.table, self.leaf = table, leaf
        self.forest = fit_forest(table.X, table.curves, leaf)
        self.residuals = _residuals(table)
        self._cache: dict[str, np.ndarray] = {}

    def mean_curve(self, params: dict[str, Any]) -> np.ndarray:
        key = json.dumps(params, sort_keys=True)
        if key not in self._cache:
            x = np.array([encode(self.table.space, params)])
            self._cache[key] = self.forest.predict(x)[0]
        return self._cache[key]

    def observe(self, params: dict[str, Any], seed: int) -> tuple[list[float], float]:
        """(the curve a trial of params observes in benchmark seed ``seed``, its noise-free
        final value). The noise depends on the configuration and the seed only, so the loop
        and the Ray replay observe the same curve whatever the order of trials."""
        key = json.dumps({"seed": seed, "params": params}, sort_keys=True)
        draw = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little")
        mean = self.mean_curve(params)
        noise = self.residuals[draw % len(self.residuals)]
        return np.clip(mean + noise, 0.0, 1.0).tolist(), float(mean[-1])


def _residuals(table: Table) -> np.ndarray:
    """Each repeated run's curve minus its configuration's mean curve, scaled by
    sqrt(n / (n - 1)) so that their spread is the spread of one run about the true mean."""
    out = []
    for curves in table.repeated().values():
        n = len(curves)
        out += list((curves - curves.mean(0)) * math.sqrt(n / (n - 1)))
    return np.array(out)


def _spearman(a, b) -> float:
    from scipy import stats

    return float(stats.spearmanr(a, b).statistic)


def validate(folds: int = 5) -> dict[str, Any]:
    """Cross-validated figures of the surrogate (and of the nearest recorded row, the old
    lookup), the noise, and the choice of the leaf size."""
    from sklearn.model_selection import GroupKFold

    table = load_table()
    n_configs = len(table.raw["configs"])
    repeated = table.repeated()
    final = table.curves[:, -1]
    by_leaf = {}
    predictions = {}
    for leaf in LEAVES:
        pred = np.zeros_like(table.curves)
        for train, test in GroupKFold(folds).split(table.X, groups=table.config_of):
            pred[test] = fit_forest(table.X[train], table.curves[train], leaf).predict(
                table.X[test])
        predictions[leaf] = pred
        by_leaf[leaf] = _spearman(pred[:, -1], final)
    leaf = max(by_leaf, key=by_leaf.get)
    pred = predictions[leaf]
    # the repeated configurations: held-out prediction against the mean of their seeds
    rep = sorted(repeated)
    first_row = {int(i): j for j, i in reversed(list(enumerate(table.config_of)))}
    truth = np.array([repeated[i][:, -1].mean() for i in rep])
    held_out = np.array([pred[first_row[i], -1] for i in rep])
    nearest = _nearest_row_predictions(table)
    seeds_a = np.array([repeated[i][0, -1] for i in rep])
    seeds_b = np.array([repeated[i][1:, -1].mean() for i in rep])
    residuals = _residuals(table)
    figures = {
        "configs": n_configs, "runs": len(table.curves), "repeated": len(rep),
        "seeds_per_repeated": int(statistics.median(len(repeated[i]) for i in rep)),
        "epochs": table.curves.shape[1], "val_images": table.raw["val_images"],
        "record_seconds": table.raw["seconds"], "record_workers": table.raw["workers"],
        "leaf": leaf, "spearman_by_leaf": by_leaf,
        "spearman_final": by_leaf[leaf],
        "spearman_final_vs_seed_mean": _spearman(held_out, truth),
        "nearest_row_spearman_final": _spearman(nearest, final[: n_configs]),
        "one_seed_vs_other_seeds_spearman": _spearman(seeds_a, seeds_b),
        "noise_sd_final": float(residuals[:, -1].std()),
        "noise_sd_first": float(residuals[:, 0].std()),
        "config_sd_final": float(np.std([c[-1] for c in table.curves[:n_configs]])),
        "epoch1_final_spearman": _spearman(table.curves[:n_configs, 0],
                                          table.curves[:n_configs, -1]),
    }
    figures["ranking_check"] = _ranking_check(table, Benchmark(table, leaf))
    SURROGATE.write_text(json.dumps(figures, indent=1) + "\n")
    print(surrogate_text(figures))
    return figures


def _nearest_row_predictions(table: Table) -> np.ndarray:
    """Leave-one-out: each configuration predicted by the nearest other recorded one (the old
    benchmark's lookup), on the same scaled features."""
    X = table.X[: len(table.raw["configs"])]
    scale = X.std(0)
    scale[scale == 0] = 1
    Z = X / scale
    out = []
    for i in range(len(Z)):
        d = ((Z - Z[i]) ** 2).sum(1)
        d[i] = np.inf
        out.append(table.curves[int(np.argmin(d)), -1])
    return np.array(out)


def _ranking_check(table: Table, bench: Benchmark, runs: int = 200) -> dict[str, Any]:
    """Random search and random + ASHA (Ray's ASHA, driven as in the loop), many runs each,
    on the recorded rows (a run draws rows in a random order and observes their recorded
    curves; scored by the recorded final value) and on the surrogate: the median incumbent at
    each budget, and whether the two agree on which method is ahead."""
    rows = table.raw["configs"]
    out: dict[str, Any] = {"runs": runs, "budgets": list(BUDGETS)}
    for source in ("table", "surrogate"):
        medians = {}
        for method in ("random", "random+asha"):
            scores = []
            for seed in range(runs):
                order = np.random.default_rng(10_000 + seed).permutation(len(rows))

                def draw(n: int, order=order, source=source, seed=seed
                         ) -> tuple[list[float], float, dict]:
                    row = rows[int(order[n % len(order)])]
                    if source == "table":
                        return row["curve"], row["curve"][-1], row["params"]
                    curve, truth = bench.observe(row["params"], seed)
                    return curve, truth, row["params"]

                scores.append(_loop_fixed_draws(draw, method, max(BUDGETS), seed))
            medians[method] = [statistics.median(s[b - 1] for s in scores) for b in BUDGETS]
        out[source] = medians
    out["agree"] = [
        (t1 > t0) == (s1 > s0) or t1 == t0
        for t0, t1, s0, s1 in zip(out["table"]["random"], out["table"]["random+asha"],
                                  out["surrogate"]["random"], out["surrogate"]["random+asha"],
                                  strict=True)]
    return out


def _loop_fixed_draws(draw, method: str, budget: int, seed: int) -> list[float]:
    """The loop with configurations drawn by ``draw`` (for the ranking check): the incumbent's
    truth after each trial-epoch."""
    from ray.tune.schedulers import TrialScheduler

    from search import make_scheduler

    scheduler = make_scheduler(search_config({"scheduler": "asha" if method == "random+asha"
                                              else "fifo"}).search, EPOCHS, points=False)
    scheduler.set_search_properties(METRIC, "max")
    np.random.seed(seed)
    running: list[list[Any] | None] = [None] * WORKERS
    best, incumbent, spent, n = -math.inf, math.nan, 0, 0
    out = []
    while spent < budget:
        for w in range(WORKERS):
            if running[w] is None:
                curve, truth, _ = draw(n)
                stub = _Stub(f"t{n}")
                n += 1
                scheduler.on_trial_add(None, stub)
                running[w] = [stub, curve, truth, 0]
            stub, curve, truth, epoch = running[w]
            epoch += 1
            spent += 1
            value = curve[epoch - 1]
            if value > best:
                best, incumbent = value, truth
            out.append(incumbent)
            result = {METRIC: value, "training_iteration": epoch}
            if epoch >= EPOCHS or scheduler.on_trial_result(None, stub, result) == \
                    TrialScheduler.STOP:
                scheduler.on_trial_complete(None, stub, result)
                running[w] = None
            else:
                running[w][3] = epoch
            if spent >= budget:
                break
    return out


def surrogate_text(f: dict[str, Any]) -> str:
    check = f["ranking_check"]
    agree = "the same" if all(check["agree"]) else "NOT the same"
    lines = [
        f"surrogate: held-out Spearman {f['spearman_final']:.2f} on the final value",
        f"table: {f['configs']} configurations, {f['runs']} runs of {f['epochs']} epochs, "
        f"validation robust accuracy on {f['val_images']} images; recorded in "
        f"{f['record_seconds'] / 3600:.1f} h with {f['record_workers']} worker processes",
        f"random forest, minimum leaf {f['leaf']} chosen by 5-fold cross-validation grouped "
        f"by configuration (Spearman by leaf: "
        + ", ".join(f"{k}: {v:.3f}" for k, v in f["spearman_by_leaf"].items()) + ")",
        f"held-out Spearman against the mean of {f['seeds_per_repeated']} seeds on the "
        f"{f['repeated']} repeated configurations: {f['spearman_final_vs_seed_mean']:.2f}; "
        f"the nearest recorded row (the old lookup), leave-one-out: "
        f"{f['nearest_row_spearman_final']:.2f}; one seed against the other seeds' mean: "
        f"{f['one_seed_vs_other_seeds_spearman']:.2f}",
        f"noise (sd of one run about its configuration's mean): {f['noise_sd_first']:.3f} at "
        f"epoch 1, {f['noise_sd_final']:.3f} at the last epoch; sd across configurations at "
        f"the last epoch {f['config_sd_final']:.3f}; Spearman of epoch 1 with the last "
        f"{f['epoch1_final_spearman']:.2f}",
        f"random vs random + ASHA, median incumbent over {check['runs']} runs at "
        + ", ".join(f"{b}" for b in check["budgets"]) + " trial-epochs: table "
        + _pairs(check["table"]) + "; surrogate " + _pairs(check["surrogate"])
        + f": ranked {agree} at every budget",
    ]
    return "\n".join(lines)


def _pairs(medians: dict[str, list[float]]) -> str:
    return " ".join(f"{a:.3f}/{b:.3f}" for a, b in zip(medians["random"],
                                                       medians["random+asha"], strict=True))


# ------------------------------------------------------------------------------ methods
@dataclass(frozen=True)
class Method:
    name: str
    search: dict[str, Any]  # search settings (sampler, scheduler, their options)
    about: str
    optuna_alone: bool = False  # Optuna's own loop: TPE + HyperbandPruner, no Ray


TPE5 = {"sampler": "tpe", "tpe_multivariate": True, "tpe_constant_liar": True}
METHODS = (
    Method("random", {"sampler": "random", "scheduler": "fifo"}, "random search, no stopping"),
    Method("random+asha", {"sampler": "random", "scheduler": "asha"}, "random search + ASHA"),
    Method("one-rung", {"sampler": "random", "scheduler": "one_rung"},
           "random; all trials 1 epoch, the top 1/9 to the end"),
    Method("tpe+asha (0.2)", {"sampler": "tpe", "scheduler": "asha", "tpe_multivariate": False,
                              "tpe_constant_liar": False}, "clustune 0.2's default"),
    Method("tpe+asha", {**TPE5, "scheduler": "asha"}, "TPE with Optuna 5's defaults + ASHA"),
    Method("tpe+hyperband", {**TPE5, "scheduler": "async_hyperband"},
           "TPE (Optuna 5) + asynchronous Hyperband"),
    Method("gp+asha", {"sampler": "gp", "scheduler": "asha"}, "Optuna's GP sampler + ASHA"),
    Method("bohb", {"sampler": "bohb", "scheduler": "async_hyperband"},
           "TPE on the highest rung with enough trials + asynchronous Hyperband"),
    Method("optuna", {}, "Optuna alone: TPE + HyperbandPruner", optuna_alone=True),
)


class _Stub:
    """What Ray Tune's ASHA reads of a trial: its id."""

    def __init__(self, trial_id: str) -> None:
        self.trial_id = trial_id


@dataclass
class Run:
    """One method and seed: the observed value of each trial-epoch in order (trial number,
    epoch, value), and the incumbent's noise-free final value after each trial-epoch."""

    trace: list[tuple[int, int, float]]
    incumbent: list[float]


def _incumbents(trace: list[tuple[int, int, float]], truth: dict[int, float]) -> list[float]:
    best, incumbent, out = -math.inf, math.nan, []
    for number, _, value in trace:
        if value > best:
            best, incumbent = value, truth[number]
        out.append(incumbent)
    return out


def simulate(method: Method, seed: int, bench: Benchmark, budget: int,
             workers: int = WORKERS) -> Run:
    """The product's searcher and scheduler, ``workers`` trials at a time, until ``budget``
    trial-epochs are spent (Ray Tune's order of calls: a result the scheduler stops, or the
    last one, goes to on_trial_complete, the others to on_trial_result)."""
    if method.optuna_alone:
        return _simulate_optuna(seed, bench, budget, workers)
    from ray.tune.schedulers import TrialScheduler

    from search import make_scheduler, make_searcher

    cfg = search_config({**method.search, "seed": seed, "max_concurrent": workers})
    searcher = make_searcher(cfg, storage=optuna.storages.InMemoryStorage())
    scheduler = make_scheduler(cfg.search, EPOCHS, points=False)
    scheduler.set_search_properties(METRIC, "max")
    np.random.seed(seed)  # ASHA draws a bracket from numpy's global generator
    trace: list[tuple[int, int, float]] = []
    truth: dict[int, float] = {}
    running: list[list[Any] | None] = [None] * workers
    n = 0
    while len(trace) < budget:
        for w in range(workers):
            if running[w] is None:
                tid = f"t{n:05d}"
                config = searcher.suggest(tid)
                curve, truth[n] = bench.observe(config, seed)
                scheduler.on_trial_add(None, _Stub(tid))
                running[w] = [n, tid, curve, 0]
                n += 1
            number, tid, curve, epoch = running[w]
            epoch += 1
            trace.append((number, epoch, curve[epoch - 1]))
            result = {METRIC: curve[epoch - 1], "training_iteration": epoch,
                      "trial_complete": epoch >= EPOCHS, "done": epoch >= EPOCHS}
            if epoch >= EPOCHS or scheduler.on_trial_result(None, _Stub(tid), result) \
                    == TrialScheduler.STOP:
                searcher.on_trial_complete(tid, result)
                scheduler.on_trial_complete(None, _Stub(tid), result)
                running[w] = None
            else:
                searcher.on_trial_result(tid, result)
                running[w][3] = epoch
            if len(trace) >= budget:
                break
    return Run(trace, _incumbents(trace, truth))


def _simulate_optuna(seed: int, bench: Benchmark, budget: int, workers: int) -> Run:
    """Optuna alone, as a user would set it up without clustune: Optuna 5's TPE and its
    HyperbandPruner, the same space, ``workers`` trials at a time."""
    from search import suggest

    cfg = search_config({"seed": seed})
    base = cfg.base_dict()
    study = optuna.create_study(direction="maximize",
                                sampler=optuna.samplers.TPESampler(seed=seed),
                                pruner=optuna.pruners.HyperbandPruner(
                                    min_resource=1, max_resource=EPOCHS, reduction_factor=3))
    trace: list[tuple[int, int, float]] = []
    truth: dict[int, float] = {}
    running: list[list[Any] | None] = [None] * workers
    while len(trace) < budget:
        for w in range(workers):
            if running[w] is None:
                trial = study.ask()
                params = suggest(trial, cfg, base)
                curve, truth[trial.number] = bench.observe(
                    {**trial.params, **{k: params[k] for k in ("clusters.l", "clusters.m")}},
                    seed)
                running[w] = [trial, curve, 0]
            trial, curve, epoch = running[w]
            epoch += 1
            trace.append((trial.number, epoch, curve[epoch - 1]))
            trial.report(curve[epoch - 1], epoch)
            if epoch >= EPOCHS:
                study.tell(trial, curve[-1])
                running[w] = None
            elif trial.should_prune():
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                running[w] = None
            else:
                running[w][2] = epoch
            if len(trace) >= budget:
                break
    return Run(trace, _incumbents(trace, truth))


def _one(args: tuple[str, int, int]) -> tuple[str, int, list[float]]:
    name, seed, budget = args
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    torch.set_num_threads(1)  # one thread per process: GP's fits oversubscribe the cores else
    method = next(m for m in METHODS if m.name == name)
    run = simulate(method, seed, _bench(), budget)
    return name, seed, [round(v, 5) for v in run.incumbent]


_BENCH: Benchmark | None = None


def _bench() -> Benchmark:
    """The benchmark of this process (fitted once per worker process)."""
    global _BENCH
    if _BENCH is None:
        leaf = json.loads(SURROGATE.read_text())["leaf"]
        _BENCH = Benchmark(load_table(), leaf)
    return _BENCH


def run(seeds: int, target_runs: int, processes: int, methods: list[str] | None) -> None:
    """Every method over ``seeds`` paired seeds to the largest budget, random search also over
    ``target_runs`` more seeds (its median at the largest budget is the target T) and to
    HORIZON (to time its arrival at T); in ``processes`` worker processes."""
    chosen = [m.name for m in METHODS if methods is None or m.name in methods]
    jobs = [(m, s, HORIZON if m == "random" else max(BUDGETS)) for m in chosen
            for s in range(seeds)]
    jobs += [("random", 1000 + s, max(BUDGETS)) for s in range(target_runs)]
    start = time.perf_counter()
    done: dict[str, dict[int, list[float]]] = {}
    seconds: dict[str, float] = {}
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        for k, (name, seed, incumbent) in enumerate(pool.imap_unordered(_one, jobs), 1):
            done.setdefault(name, {})[seed] = incumbent
            seconds[name] = time.perf_counter() - start
            if k % 25 == 0:
                print(f"{k}/{len(jobs)} runs ({time.perf_counter() - start:.0f} s)", flush=True)
    previous = json.loads(RESULTS.read_text()) if RESULTS.exists() and methods else {}
    runs = previous.get("runs", {})
    for name, by_seed in done.items():
        runs[name] = {str(s): v for s, v in sorted(by_seed.items())}
    results = {**previous, "seeds": seeds, "target_runs": target_runs, "budgets": list(BUDGETS),
               "horizon": HORIZON, "workers": WORKERS, "epochs": EPOCHS, "runs": runs,
               "seconds": round(time.perf_counter() - start), "processes": processes}
    RESULTS.write_text(json.dumps(results) + "\n")
    show()


# ------------------------------------------------------------------------------ replay
def replay(seeds: int, methods: list[str]) -> None:
    """A few seeds of each method through the real Ray Tune machinery (build_tuner: Tune's
    controller, ConcurrencyLimiter, the scheduler, clustune's searcher on the experiment's
    sqlite study), one trial at a time, against the loop with one worker: the same observed
    values in the same order, or the loop is not the product."""
    import ray
    from ray import tune

    from search import build_tuner, create_experiment
    from trainable import storage_path

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    bench = _bench()
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR",
             object_store_memory=80 * 1024**2)
    report = []
    with tempfile.TemporaryDirectory() as folder:
        for name in methods:
            method = next(m for m in METHODS if m.name == name)
            for seed in range(seeds):
                budget = 60
                cfg = search_config({**method.search, "seed": seed, "max_concurrent": 1,
                                     "num_samples": budget, "final_top_k": 0,
                                     "share_warm_start": False})
                seen: list[tuple[str, int, float]] = []

                class Log(tune.Callback):
                    def on_trial_result(self, iteration, trials, trial, result, seen=seen,
                                        **info):
                        seen.append((trial.trial_id, result["training_iteration"],
                                     result[METRIC]))

                Replay.bench, Replay.seed = bench, seed
                experiment = storage_path(Path(folder) / f"{name}-{seed}".replace("+", "-"))
                create_experiment(cfg, experiment)
                np.random.seed(seed)
                build_tuner(cfg, experiment, callbacks=[Log()], trainable=Replay).fit()
                loop = simulate(method, seed, bench, len(seen), workers=1)
                same = [round(v, 9) for _, _, v in seen] == \
                    [round(v, 9) for _, _, v in loop.trace]
                report.append((name, seed, len(seen), same))
                print(f"{name} seed {seed}: {len(seen)} trial-epochs through Ray Tune, "
                      f"{'the same' if same else 'NOT the same'} values in the same order as "
                      "the loop", flush=True)
    ray.shutdown()
    results = json.loads(RESULTS.read_text())
    results["replay"] = [{"method": n, "seed": s, "trial_epochs": k, "same": same}
                         for n, s, k, same in report]
    RESULTS.write_text(json.dumps(results) + "\n")
    if not all(same for *_, same in report):
        raise SystemExit("the loop and Ray Tune disagree")


try:
    from ray import tune as _tune

    class Replay(_tune.Trainable):
        """A trial of the replay: its configuration's observed curve, an epoch per step."""

        bench: Benchmark | None = None
        seed = 0

        def setup(self, config: dict[str, Any], **_: Any) -> None:
            self.curve, _ = self.bench.observe(config, self.seed)

        def step(self) -> dict[str, Any]:
            epoch = self.iteration + 1
            return {METRIC: self.curve[epoch - 1], "trial_complete": epoch >= EPOCHS,
                    "done": epoch >= EPOCHS}

        def reset_config(self, new_config: dict[str, Any]) -> bool:
            self.setup(new_config)
            return True

        def save_checkpoint(self, checkpoint_dir: str) -> None:
            return None

        def load_checkpoint(self, checkpoint: Any) -> None:
            return None
except ImportError:  # pragma: no cover - Ray is a dependency
    pass


# ------------------------------------------------------------------------------ figures
def time_to(values: list[float], target: float) -> float:
    """Trial-epochs until the incumbent is worth at least target (inf: never)."""
    for i, v in enumerate(values, 1):
        if v >= target - 1e-12:
            return float(i)
    return math.inf


def _median(xs) -> float:
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2


def bootstrap(stat, n: int, rounds: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """95 % percentile interval of stat(indices) over resampled seed indices (paired); stat
    takes a (rounds, n) index array and returns one value per row."""
    rng = np.random.default_rng(seed)
    values = np.sort(stat(rng.integers(0, n, (rounds, n))))
    return float(values[int(0.025 * rounds)]), float(values[int(0.975 * rounds) - 1])


def _medians(values: list[float]):
    """idx -> the median of values[idx] along the last axis (a bootstrap statistic)."""
    array = np.asarray(values, dtype=float)
    return lambda idx: np.median(array[idx], axis=-1)


def summary(results: dict[str, Any]) -> dict[str, Any]:
    runs = results["runs"]
    seeds = [str(s) for s in range(results["seeds"])]
    top = max(results["budgets"])
    target_pool = [v[top - 1] for s, v in runs["random"].items() if int(s) >= 1000]
    target = _median(target_pool)
    t_random = [time_to(runs["random"][s], target) for s in seeds]
    rows = {}
    for name in runs:
        if not all(s in runs[name] for s in seeds):
            continue
        t = [time_to(runs[name][s], target) for s in seeds]

        with np.errstate(invalid="ignore"):  # inf / inf: neither reached the target
            low, high = bootstrap(lambda idx, t=t: _medians(t)(idx) / _medians(t_random)(idx),
                                  len(seeds))
        at = {}
        for b in results["budgets"]:
            vals = [runs[name][s][b - 1] for s in seeds]
            at[b] = (_median(vals), *bootstrap(_medians(vals), len(seeds)))
        diff = [runs[name][s][top - 1] - runs["random"][s][top - 1] for s in seeds]
        d_low, d_high = bootstrap(_medians(diff), len(seeds))
        rows[name] = {"t_median": _median(t), "reached": sum(math.isfinite(x) for x in t),
                      "ratio": _median(t) / _median(t_random), "ratio_low": low,
                      "ratio_high": high,
                      "at": at, "diff": _median(diff), "diff_low": d_low, "diff_high": d_high}
    horizon = _median(runs["random"][s][-1] for s in seeds)
    return {"target": target, "target_runs": len(target_pool), "rows": rows,
            "seeds": len(seeds), "budget": top, "horizon": len(runs["random"][seeds[0]]),
            "random_at_horizon": horizon}


def _fmt_ratio(r: float) -> str:
    return "inf" if not math.isfinite(r) else f"{r:.2f}"


def markdown(results: dict[str, Any]) -> str:
    s = summary(results)
    header = ["method", f"seeds reaching T={s['target']:.4f}",
              "trial-epochs to T: median", "of random's (95 % bootstrap)",
              *[f"at {b} trial-epochs: median (95 %)" for b in results["budgets"]],
              f"minus random at {s['budget']}: paired median (95 %)"]
    rows = []
    for m in METHODS:
        r = s["rows"].get(m.name)
        if r is None:
            continue
        t = r["t_median"]
        rows.append([m.name, f"{r['reached']}/{s['seeds']}",
                     "not reached" if not math.isfinite(t) else f"{t:.0f}",
                     f"{_fmt_ratio(r['ratio'])} ({_fmt_ratio(r['ratio_low'])}-"
                     f"{_fmt_ratio(r['ratio_high'])})",
                     *[f"{v:.4f} ({lo:.4f}-{hi:.4f})" for v, lo, hi in r["at"].values()],
                     f"{r['diff']:+.4f} ({r['diff_low']:+.4f} to {r['diff_high']:+.4f})"])
    return markdown_table(header, rows)


def default_method() -> Method:
    """The method the search presets use by default (search.sampler and search.scheduler of
    the quick preset and cpu-ablation, which must agree)."""
    from search import load_search_config

    settings = {name: load_search_config(name).search for name in ("quick", SPACE)}
    for method in METHODS:
        keys = method.search.keys() - {"seed"}
        if method.search and all(all(getattr(s, k) == method.search[k] for k in keys)
                                 for s in settings.values()):
            return method
    raise SystemExit("the presets' default search method is none of the benchmark's")


def headline(results: dict[str, Any]) -> str:
    """The line docs/performance.md quotes (a check reads it)."""
    s = summary(results)
    method = default_method()
    r = s["rows"][method.name]
    random = s["rows"]["random"]["at"][s["budget"]][0]
    return (f"search quality: {method.name} returns {r['at'][s['budget']][0]:.3f} at "
            f"{s['budget']} trial-epochs, random search {random:.3f} "
            f"(paired difference {r['diff']:+.3f}, 95 % bootstrap interval {r['diff_low']:+.3f} "
            f"to {r['diff_high']:+.3f}, {s['seeds']} paired seeds); random search returns "
            f"{s['random_at_horizon']:.3f} at {s['horizon']}")


def svg(results: dict[str, Any], width: int = 760, height: int = 440) -> str:
    """Anytime curves: median incumbent per method with its 95 % bootstrap band (paired seeds),
    up to the largest budget."""
    budget = max(results["budgets"])
    seeds = [str(s) for s in range(results["seeds"])]
    colours = ("#7f7f7f", "#1f77b4", "#17becf", "#bcbd22", "#d62728", "#ff7f0e", "#9467bd",
               "#2ca02c", "#8c564b")
    steps = list(range(5, budget + 1, 5))
    curves = {}
    for m in METHODS:
        if m.name not in results["runs"]:
            continue
        runs = [results["runs"][m.name][s] for s in seeds]
        curves[m.name] = []
        for b in steps:
            vals = [r[b - 1] for r in runs]
            lo, hi = bootstrap(_medians(vals), len(vals), rounds=500)
            curves[m.name].append((_median(vals), lo, hi))
    finite = [v for c in curves.values() for point in c for v in point if math.isfinite(v)]
    low, high = min(finite), max(finite)
    left, right, top, bottom = 60, 170, 24, 40

    def xy(b: int, value: float) -> str:
        x = left + (width - left - right) * b / budget
        y = top + (height - top - bottom) * (1 - (value - low) / ((high - low) or 1))
        return f"{x:.1f},{y:.1f}"

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'font-family="sans-serif" font-size="12">',
             f'<rect width="{width}" height="{height}" fill="white"/>']
    for k, (name, points) in enumerate(curves.items()):
        colour = colours[k % len(colours)]
        ok = [(b, p) for b, p in zip(steps, points, strict=True) if math.isfinite(p[0])]
        band = [xy(b, p[2]) for b, p in ok] + [xy(b, p[1]) for b, p in reversed(ok)]
        parts.append(f'<polygon points="{" ".join(band)}" fill="{colour}" fill-opacity="0.10" '
                     'stroke="none"/>')
        parts.append(f'<polyline points="{" ".join(xy(b, p[0]) for b, p in ok)}" fill="none" '
                     f'stroke="{colour}" stroke-width="2"/>')
        parts.append(f'<text x="{width - right + 10}" y="{top + 16 * k + 10}" '
                     f'fill="{colour}">{name}</text>')
    parts += [f'<text x="{left}" y="{height - 10}">trial-epochs (0-{budget})</text>',
              f'<text x="5" y="{top + 10}">{high:.3f}</text>',
              f'<text x="5" y="{height - bottom}">{low:.3f}</text>',
              f'<text x="{left}" y="{top - 8}">noise-free value of the incumbent: median and '
              f'95 % bootstrap band over {len(seeds)} paired seeds</text>', "</svg>"]
    return "\n".join(parts) + "\n"


def show() -> None:
    figures = json.loads(SURROGATE.read_text())
    print(surrogate_text(figures) + "\n")
    results = json.loads(RESULTS.read_text())
    PLOT.write_text(svg(results))
    s = summary(results)
    print(f"target T = {s['target']:.4f}: the median over {s['target_runs']} independent random "
          f"searches of the noise-free value of what they return at {max(results['budgets'])} "
          "trial-epochs\n")
    print(markdown(results))
    print(f"\n{headline(results)}")
    print(f"surrogate: held-out Spearman {figures['spearman_final']:.2f} on the final value")
    for r in results.get("replay", []):
        print(f"replay: {r['method']} seed {r['seed']}: {r['trial_epochs']} trial-epochs through "
              f"Ray Tune, {'the same as' if r['same'] else 'DIFFERENT from'} the loop")
    print(f"\n{results['seeds']} paired seeds per method, {results['workers']} trials at a time, "
          f"{results['processes']} processes, {results['seconds']} s; plot: {PLOT}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("record", help="train the table of learning curves")
    p.add_argument("--configs", type=int, default=1000)
    p.add_argument("--repeated", type=int, default=40)
    p.add_argument("--seeds", type=int, default=4, help="more seeds per repeated configuration")
    p.add_argument("--workers", type=int, default=2)
    sub.add_parser("validate", help="fit and validate the surrogate")
    p = sub.add_parser("run", help="every method over paired seeds, in process")
    p.add_argument("--seeds", type=int, default=30)
    p.add_argument("--target-runs", type=int, default=200)
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--methods", nargs="*", help="only these (the others are kept)")
    p = sub.add_parser("replay", help="a few seeds through Ray Tune, checked against run")
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--methods", nargs="*", default=None)
    sub.add_parser("show", help="print the tables from the committed files")
    args = parser.parse_args()
    if args.command == "record":
        record(args.configs, args.repeated, args.seeds, args.workers)
    elif args.command == "validate":
        validate()
    elif args.command == "run":
        run(args.seeds, args.target_runs, args.processes, args.methods)
    elif args.command == "replay":
        replay(args.seeds, args.methods or [default_method().name])
    else:
        show()
    return 0


if __name__ == "__main__":
    sys.exit(main())
