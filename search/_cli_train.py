"""``clustune train`` (one model from one config, without Ray) and ``clustune presets``."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ._console import console, format_metrics, progress_bar
from ._files import check_output_dir, claim_output_dir

EPOCH_KEYS = ("epoch", "train_loss", "val_clean_acc", "val_pgd_acc", "val_robust_acc", "sigma2",
              "val_margin", "epoch_time_s")


def run_train(cfg, out: Path) -> dict:
    """Train, writing config.yaml, metrics.jsonl (an epoch a line), final.json, checkpoint.pt.

    The folder is created only once set-up (data, checkpoint, warm start) has worked, so bad
    input leaves nothing behind; a used one is refused before any work.
    """
    import yaml

    from trainable import Trainer, atomic_write_text

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


def _cmd_train(args: argparse.Namespace) -> int:
    from trainable import load_config

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
    print("search presets (clustune search --preset NAME):")
    for name in list_presets("search"):
        print(f"  {name}")
    return 0


def add_train_commands(sub, add_config_args) -> None:
    p = sub.add_parser("train", help="train one model from a preset or config (no Ray)",
                       description="Train one model; writes config.yaml, metrics.jsonl, "
                       "final.json and checkpoint.pt to --out.")
    add_config_args(p, "fmnist-magnet-adv")
    p.add_argument("--out", metavar="DIR", help="output folder (default: runs/train-NAME-TIME)")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("presets", help="list the training and search presets")
    p.set_defaults(func=_cmd_presets)


__all__ = ["run_train", "default_out", "add_train_commands"]
