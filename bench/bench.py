"""clustune benchmarks: where a trial's time goes, each figure a ratio measured side by side.

    python bench/bench.py [--out bench/results-cpu.json] [--only SECTION,...] [--devices cpu,cuda]

Prints one table and writes it as JSON. Sections (each runs both sides in this process; the
search methods are compared by bench/search_bench.py, over many seeds):

  peak         matrix-product FLOP/s of this machine: the denominator of `flops`
  flops        achieved training FLOP/s per architecture and objective (attack passes counted)
  ray          epoch time inside the Ray Tune Trainable over the same epoch in a bare loop
  warm_start   a search with the shared CE warm start over one that warms up in every trial
  final        AutoAttack through clustune's evaluator over pyautoattack called directly
  fast_path    train-step time of each fast-path option over the plain path

Without a GPU the GPU rows say so; with one, `flops`, `peak` and `fast_path` also run on it
(`--devices cuda` measures the GPU alone).
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ray import tune
from rich.console import Console
from rich.table import Table
from torch.utils.flop_counter import FlopCounterMode

from trainable import Trainer, apply_overrides, build_config

SECTIONS = ("peak", "flops", "ray", "warm_start", "final", "fast_path")
CORES = os.cpu_count() or 1
console = Console()

# The workload of the single-model sections: ClusTR+ADV on Fashion-MNIST, the small CNN at
# the CPU preset's size (batch M*D = 240), no warm start (timed separately).
FMNIST = {
    "data": {"dataset": "fashion-mnist", "train_subset": 10000},
    "model": {"arch": "small_cnn", "width": 32, "embedding_dim": 128},
    "clusters": {"k": 1, "l": 10, "m": 10, "d": 24},
    "attack": {"eps": 0.1, "steps": 1, "step_size": 0.125},
    "objective": {"variant": "magnet_adv", "lam": 0.5},
    "optim": {"lr": 1e-3, "epochs": 4, "batches_per_epoch": 10},
    "eval": {"examples": 200, "pgd_steps": 10},
    "fast": {"channels_last": True},  # as the CPU presets run it
}
PLAIN = {"fast": {"amp": "off", "channels_last": False, "compile": False}}
# Per objective: the attack each trains against (3 steps of eps/2 for the multi-step ones).
OBJECTIVES = {
    "ce": {"objective": {"variant": "ce"}},
    "pgd_at": {"objective": {"variant": "pgd_at"}, "attack": {"steps": 3, "step_size": 0.05}},
    "trades": {"objective": {"variant": "trades", "lam": 6.0},
               "attack": {"steps": 3, "step_size": 0.05}},
    "magnet": {"objective": {"variant": "magnet"}},
    "qtrades": {"objective": {"variant": "qtrades", "lam": 8.0}},
    "magnet_adv": {"objective": {"variant": "magnet_adv", "lam": 0.5},
                   "attack": {"steps": 3, "step_size": 0.05}},
}


class Rows:
    """The table: one row per figure, with its target where the issue sets one."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def add(self, section: str, name: str, value: float | None, unit: str = "",
            target: str = "", detail: str = "") -> None:
        self.rows.append({"section": section, "name": name, "value": value, "unit": unit,
                          "target": target, "detail": detail})
        shown = "-" if value is None else f"{value:.4g}"
        console.print(f"  {section:<10} {name:<44} {shown:>10} {unit:<8} {detail}")

    def table(self) -> Table:
        table = Table(title="clustune benchmarks")
        for col in ("section", "figure", "value", "unit", "target", "detail"):
            table.add_column(col, overflow="fold")
        for r in self.rows:
            value = "-" if r["value"] is None else f"{r['value']:.4g}"
            table.add_row(r["section"], r["name"], value, r["unit"], r["target"], r["detail"])
        return table


def _config(*overrides: dict[str, Any]):
    """FMNIST with overrides; an override's objective replaces the base's whole (a setting
    only the base's variant uses would be refused)."""
    data: dict[str, Any] = FMNIST
    for o in overrides:
        if "objective" in o:
            data = {**data, "objective": {}}
        data = apply_overrides(data, o)
    return build_config(data)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed(fn: Callable[[], Any], device: torch.device, repeats: int) -> float:
    """Median seconds of repeats calls of fn (after one untimed call)."""
    fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# ------------------------------------------------------------------------------------ peak
def matmul_peak(device: torch.device, dtype: torch.dtype = torch.float32, n: int = 2048,
                repeats: int = 20) -> float:
    """FLOP/s of a large square matrix product, the best of repeats: the most this device
    does for dense maths (a shared VM's speed drifts, so flops measures it twice)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def bench_peak(rows: Rows, devices: list[torch.device]) -> dict[str, float]:
    peaks = {}
    for device in devices:
        peaks[device.type] = matmul_peak(device)
        rows.add("peak", f"{device.type} float32 matmul 2048^2", peaks[device.type] / 1e9,
                 "GFLOP/s", detail=f"{torch.get_num_threads()} threads" if device.type == "cpu"
                 else torch.cuda.get_device_name(device))
        if device.type == "cuda":
            rows.add("peak", "cuda bf16 matmul 2048^2", matmul_peak(device, torch.bfloat16) / 1e9,
                     "GFLOP/s")
    return peaks


# ----------------------------------------------------------------------------------- flops
def synthetic_cifar(folder: Path, per_batch: int = 400) -> Path:
    """CIFAR-10's on-disk format with random images: ResNet-18 timing needs shapes, not
    pictures (the real CIFAR-10 cannot be downloaded here)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for b, name in enumerate(names):
        entry = {"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                 "labels": [int(v) for v in (np.arange(per_batch) + b) % 10]}
        (folder / name).write_bytes(pickle.dumps(entry, protocol=2))
    return folder


def _resnet18(cifar: Path) -> dict[str, Any]:
    """ResNet-18 on the synthetic CIFAR-10 folder, batch M*D = 40."""
    return {"data": {"dataset": "cifar10", "root": str(cifar), "verify_md5": False,
                     "train_subset": None},
            "model": {"arch": "resnet18"}, "clusters": {"m": 10, "d": 4}, **PLAIN}


def step_flops(trainer: Trainer) -> int:
    """Matrix FLOPs of one training step (forward, attack passes and backward)."""
    trainer.train_batch()  # clusters, first-call allocations
    with FlopCounterMode(display=False) as counter:
        trainer.train_batch()
    return counter.get_total_flops()


def bench_flops(rows: Rows, devices: list[torch.device], peaks: dict[str, float],
                cifar: Path) -> None:
    """Each step's FLOP/s over the device's peak, re-measured after the steps: the higher of
    the two peaks is the denominator."""
    workloads = [("small_cnn", {}, 3), ("resnet18", _resnet18(cifar), 2)]
    for device in devices:
        measured = []
        for arch, extra, repeats in workloads:
            for variant, settings in OBJECTIVES.items():
                trainer = Trainer(_config(extra, settings, {"device": device.type}))
                flops = step_flops(trainer)
                seconds = _timed(trainer.train_batch, device, repeats)
                measured.append((arch, variant, flops, seconds, trainer.cfg.batch_size))
        peak = max(peaks[device.type], matmul_peak(device))
        rows.add("peak", f"{device.type} float32 matmul, again after the steps", peak / 1e9,
                 "GFLOP/s", detail="the denominator below")
        for arch, variant, flops, seconds, batch in measured:
            rate = flops / seconds
            rows.add("flops", f"{device.type} {arch} {variant}", rate / peak, "of peak",
                     detail=f"{rate / 1e9:.1f} GFLOP/s, {flops / 1e9:.1f} GFLOP per step of "
                     f"{batch}, {seconds * 1e3:.0f} ms")


# ------------------------------------------------------------------------------- searches
def _search_config(train: dict[str, Any], search: dict[str, Any], space=None, points=None):
    from search import SearchConfig

    return SearchConfig.model_validate({"train": train, "space": space or {},
                                        "points": points or {},
                                        "search": {"final_top_k": 0, **search}})


def _fit(cfg, folder: Path, name: str, callbacks=None):
    """Run a search in folder/name through a fresh Tuner; returns (experiment, seconds)."""
    from analysis import load_experiment
    from search import build_tuner, create_experiment, prepare_warm_starts
    from trainable import storage_path

    start = time.perf_counter()
    experiment = storage_path(folder / name)
    create_experiment(cfg, experiment)
    tuner = build_tuner(cfg, experiment, callbacks=callbacks)
    prepare_warm_starts(cfg, experiment)
    tuner.fit()
    return load_experiment(folder / name), time.perf_counter() - start


class ResultLog(tune.Callback):
    """Driver-side arrival of every result, in order: (seconds, trial id, result)."""

    def __init__(self) -> None:
        self.results: list[tuple[float, str, dict[str, Any]]] = []

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        self.results.append((time.perf_counter(), trial.trial_id, result))


def bench_ray(rows: Rows, folder: Path) -> Trainer:
    """The same four epochs bare and inside the Trainable (all cores for both); the Trainable's
    epoch is the gap between results as the driver sees them, checkpointing included."""
    cfg = _config()
    torch.set_num_threads(CORES)
    bare = Trainer(cfg)
    bare.warm_start()
    bare_epochs = []
    for _ in range(cfg.optim.epochs):
        start = time.perf_counter()
        bare.train_epoch()
        bare_epochs.append(time.perf_counter() - start)
    log = ResultLog()
    search = _search_config(FMNIST, {"cpus_per_trial": CORES, "max_concurrent": 1,
                                     "reuse_actors": True}, points={"bench": {}})
    _fit(search, folder, "ray", callbacks=[log])
    gaps = np.diff([t for t, _, _ in log.results])
    steps = [r["time_this_iter_s"] for _, _, r in log.results[1:]]
    ray_epoch, bare_epoch = statistics.median(gaps), statistics.median(bare_epochs[1:])
    step = statistics.median(steps)
    rows.add("ray", "Trainable epoch / bare-loop epoch", ray_epoch / bare_epoch, "ratio",
             "<= 1.10", f"{ray_epoch:.2f} s vs {bare_epoch:.2f} s (median of epochs 2-4, "
             f"{cfg.optim.batches_per_epoch} batches of {cfg.batch_size} + eval)")
    rows.add("ray", "  of which Tune between epochs (report, checkpoint)",
             (ray_epoch - step) / bare_epoch, "of epoch",
             detail=f"{ray_epoch - step:.3f} s; the epoch's own compute in the trial: "
             f"{step:.2f} s")
    return bare


def bench_warm_start(rows: Rows, folder: Path) -> None:
    """Four short trials after the quick preset's warm start (2 CE epochs on 12,000 images),
    shared or trained in each trial."""
    train = apply_overrides(FMNIST, {"data": {"train_subset": 12000},
                                     "warm_start": {"ce_epochs": 2},
                                     "optim": {"epochs": 1, "batches_per_epoch": 5},
                                     "eval": {"examples": 100}})
    points = {f"lam-{lam}": {"objective": {"lam": lam}} for lam in (0.25, 0.5, 1.0, 2.0)}
    seconds = {}
    for shared in (True, False):
        cfg = _search_config(train, {"max_concurrent": 2, "share_warm_start": shared},
                             points=points)
        _, seconds[shared] = _fit(cfg, folder, f"warm-{'shared' if shared else 'each'}")
    rows.add("warm_start", "search with shared / per-trial warm start",
             seconds[True] / seconds[False], "ratio",
             detail=f"{seconds[True]:.0f} s vs {seconds[False]:.0f} s, 4 trials, 2 at a time")


# ----------------------------------------------------------------------------------- final
def bench_final(rows: Rows, trainer: Trainer, examples: int = 100) -> None:
    """Standard AutoAttack on the same model and images, both ways; the model is wrapped so
    the evaluator runs the ensemble alone, without its adaptive embedding attack (extra
    work, not overhead)."""
    from pyautoattack import AutoAttack

    from analysis import AttackOptions, evaluate_robustness

    torch.set_num_threads(CORES)
    model = torch.nn.Sequential(trainer.classifier()).eval()
    x = trainer.data.x_test[:examples].float() / 255
    y = trainer.data.y_test[:examples]
    eps = trainer.cfg.eval_eps
    start = time.perf_counter()
    ours = evaluate_robustness(model, x, y, AttackOptions(eps=eps, version="standard", seed=0))
    ours_s = time.perf_counter() - start
    start = time.perf_counter()
    adversary = AutoAttack(model, norm="Linf", eps=eps, version="standard", seed=0,
                           device="cpu")
    x_adv, _ = adversary.run_standard_evaluation(x, y, batch_size=500)
    direct_s = time.perf_counter() - start
    with torch.no_grad():
        direct_acc = (model(x_adv).argmax(1) == y).float().mean().item()
    rows.add("final", "evaluator time / direct pyautoattack time", ours_s / direct_s, "ratio",
             "<= 1.05", f"{examples / ours_s:.2f} vs {examples / direct_s:.2f} images/s; "
             f"robust acc {ours.autoattack_acc:.3f} vs {direct_acc:.3f}")


# ------------------------------------------------------------------------------- fast path
def bench_fast_path(rows: Rows, devices: list[torch.device], cifar: Path) -> None:
    options = {"bf16": {"amp": "bf16"}, "channels_last": {"channels_last": True},
               "compile": {"compile": True},
               "all three": {"amp": "bf16", "channels_last": True, "compile": True}}
    torch.set_num_threads(CORES)
    for device in devices:
        workloads = [("small_cnn", {}, options), ("resnet18", _resnet18(cifar), options)]
        if device.type == "cpu":  # bf16 and compiling ResNet-18: minutes on a CPU
            workloads[1] = ("resnet18", _resnet18(cifar),
                            {"channels_last": {"channels_last": True}})
        for arch, extra, chosen in workloads:
            base = {"device": device.type, **extra}
            plain = Trainer(_config(base, PLAIN))
            plain_s = _timed(plain.train_batch, device, 5)
            for label, fast in chosen.items():
                trainer = Trainer(_config(base, PLAIN, {"fast": fast}))
                trainer.train_batch()  # compiles, when compiling
                seconds = _timed(trainer.train_batch, device, 5)
                rows.add("fast_path", f"{device.type} {arch} {label} / plain", seconds / plain_s,
                         "ratio", detail=f"{seconds * 1e3:.0f} ms vs {plain_s * 1e3:.0f} ms "
                         "per magnet_adv step")


# ------------------------------------------------------------------------------------ main
def machine() -> dict[str, Any]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text()
                .splitlines() if line.startswith("model name")), platform.processor())
    return {"cpu": cpu, "cores": CORES, "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "python": platform.python_version()}


def markdown(record: dict[str, Any]) -> str:
    from analysis import markdown_table

    rows = [[r["section"], r["name"].strip(), "-" if r["value"] is None else f"{r['value']:.3g}",
             r["unit"], str(r["target"]), r["detail"]] for r in record["rows"]]
    return markdown_table(["section", "figure", "value", "unit", "target", "detail"], rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="bench/results.json", help="JSON file for the table")
    parser.add_argument("--only", help=f"comma-separated sections of: {', '.join(SECTIONS)}")
    parser.add_argument("--markdown", metavar="JSON", help="print a results file as a Markdown "
                        "table (as in docs/performance.md) and exit")
    parser.add_argument("--devices", help="comma-separated devices for peak, flops and "
                        "fast_path (default: cpu, and cuda when there is one)")
    args = parser.parse_args(argv)
    if args.markdown:
        print(markdown(json.loads(Path(args.markdown).read_text())))
        return 0
    sections = args.only.split(",") if args.only else list(SECTIONS)
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section(s) {', '.join(sorted(unknown))}")
    names = (args.devices.split(",") if args.devices
             else ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    if set(names) - {"cpu", "cuda"}:
        parser.error(f"unknown device(s) {', '.join(sorted(set(names) - {'cpu', 'cuda'}))}")
    if "cuda" in names and not torch.cuda.is_available():
        parser.error("--devices names cuda, but this machine has no GPU")
    devices = [torch.device(name) for name in names]
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    torch.set_num_threads(CORES)
    rows = Rows()
    info = machine()
    console.print(f"machine: {info}")
    if not torch.cuda.is_available():
        rows.add("gpu", "no GPU on this machine: GPU rows skipped", None)
    started = time.perf_counter()
    out = Path(args.out)

    def save() -> None:
        """After every section, so an interrupted run keeps what it measured."""
        record = {"command": " ".join(["python bench/bench.py", *(argv or sys.argv[1:])]),
                  "machine": info, "seconds": round(time.perf_counter() - started),
                  "rows": rows.rows}
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(record, indent=2) + "\n")

    with tempfile.TemporaryDirectory(prefix="clustune-bench-") as tmp:
        folder = Path(tmp)
        cifar = synthetic_cifar(folder / "cifar")
        peaks = bench_peak(rows, devices) if {"peak", "flops"} & set(sections) else {}
        if "flops" in sections:
            bench_flops(rows, devices, peaks, cifar)
            save()
        if {"ray", "warm_start"} & set(sections):
            from search import start_ray

            start_ray(num_cpus=CORES)
        trainer = None
        if "ray" in sections:
            trainer = bench_ray(rows, folder)
            save()
            save()
        if "warm_start" in sections:
            bench_warm_start(rows, folder)
            save()
        if "final" in sections:
            if trainer is None:
                trainer = Trainer(_config())
                trainer.warm_start()
                for _ in range(trainer.cfg.optim.epochs):
                    trainer.train_epoch()
            bench_final(rows, trainer)
            save()
        if "fast_path" in sections:
            bench_fast_path(rows, devices, cifar)
    save()
    console.print(rows.table())
    console.print(f"written: {out} ({time.perf_counter() - started:.0f} s)")
    return 0

if __name__ == "__main__":
    sys.exit(main())
