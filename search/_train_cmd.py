"""``clustune train``: one model from one config, without Ray."""

from __future__ import annotations

import json
import time
from pathlib import Path

import yaml

from trainable import TrainConfig, Trainer, atomic_write_text

from ._console import UsageError, console, format_metrics, progress_bar
from ._files import check_output_dir, claim_output_dir

EPOCH_KEYS = ("epoch", "train_loss", "val_clean_acc", "val_pgd_acc", "val_robust_acc", "sigma2",
              "val_margin", "epoch_time_s")


def run_train(cfg: TrainConfig, out: Path) -> dict:
    """Train, writing config.yaml, metrics.jsonl (an epoch a line), final.json, checkpoint.pt.

    The folder is created only once set-up (data, checkpoint, warm start) has worked, so bad
    input leaves nothing behind; a used one is refused before any work.
    """
    check_output_dir(out)
    start = time.perf_counter()
    with progress_bar() as progress:
        trainer = Trainer(cfg, progress=progress)
        trainer.warm_start()
        claim_output_dir(out)
        atomic_write_text(out / "config.yaml", yaml.safe_dump(cfg.model_dump(mode="json"),
                                                             sort_keys=False))
        console.print(f"training {cfg.objective.variant} on {cfg.data.dataset} "
                      f"({len(trainer.data.y_train)} train / {len(trainer.data.y_val)} val, "
                      f"{trainer.device}) -> {out}")
        metrics: dict = {}
        with (out / "metrics.jsonl").open("w") as log:
            for _ in range(cfg.optim.epochs):
                metrics = trainer.train_epoch()
                log.write(json.dumps(metrics) + "\n")
                log.flush()
                console.print(format_metrics(metrics, EPOCH_KEYS))
    trainer.save(out / "checkpoint.pt")
    final = {k: v for k, v in metrics.items() if k != "cluster_sizes"}
    final["wall_time_s"] = time.perf_counter() - start
    atomic_write_text(out / "final.json", json.dumps(final, indent=2))
    return final


def default_out(name: str) -> Path:
    return Path("runs") / f"train-{name}-{time.strftime('%Y%m%d-%H%M%S')}"


__all__ = ["run_train", "default_out", "UsageError"]
