"""``ClusteringTrainable``: one trial of a search as a Ray Tune class Trainable.

``setup`` builds the Trainer from the trial's config, ``step`` runs one epoch and reports its
metrics, checkpoints restore a trial exactly, and ``reset_config`` lets Tune reuse actors (the
dataset stays loaded). The CE warm start is trained once per (data, model, seed) and shared
through a file in the experiment folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import ray
import torch
from filelock import FileLock
from ray import tune

from analysis import TRIAL_STATE_FILE
from trainable import (
    TrainConfig,
    Trainer,
    TrainingDiverged,
    build_config,
    load_checkpoint,
    resolve_trial_config,
)

__all__ = ["ClusteringTrainable", "InjectedFault", "shared_warm_start"]



class InjectedFault(RuntimeError):
    """Raised once by ``fail_at_epoch`` to test retries."""


def _warm_start_key(cfg: TrainConfig) -> str:
    ident = {"data": cfg.data.model_dump(mode="json"), "model": cfg.model.model_dump(mode="json"),
             "fast": cfg.fast.model_dump(mode="json"), "threads": cfg.threads,
             "seed": cfg.seed, "ce_epochs": cfg.warm_start.ce_epochs, "lr": cfg.warm_start.lr,
             "batch": cfg.batch_size}
    digest = hashlib.sha1(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:10]
    return f"{cfg.data.dataset}-{cfg.model.arch}-seed{cfg.seed}-{digest}"


def shared_warm_start(cfg: TrainConfig, folder: Path, device: str | None = None) -> TrainConfig:
    """Point cfg at a shared CE warm-start checkpoint, training it first if no trial has.

    A file lock makes concurrent trials wait for the one that trains it.
    """
    if not cfg.warm_start.ce_epochs:
        return cfg
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{_warm_start_key(cfg)}.pt"
    with FileLock(folder / f"{path.stem}.lock"):
        if not path.exists():
            ce = cfg.model_copy(deep=True)
            ce.objective.variant = "ce"
            trainer = Trainer(ce, device=device)
            trainer.warm_start()
            trainer.save(path)
    data = cfg.model_dump(mode="json")
    data["warm_start"].update(ce_epochs=0, checkpoint=str(path))
    return build_config(data)


class ClusteringTrainable(tune.Trainable):
    """One trial: an epoch per ``step``; reports the Trainer's per-epoch metrics."""

    def setup(self, config: dict[str, Any], base: dict[str, Any] | None = None,
              points: dict[str, dict[str, Any]] | None = None,
              experiment_dir: str | None = None, share_warm_start: bool = True) -> None:
        self.base, self.points = base or {}, points or {}
        self.experiment_dir = Path(experiment_dir) if experiment_dir else None
        self.share_warm_start = share_warm_start
        # a line per checkpoint from Ray's workers drowns the live view; the folder has them
        logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)
        self._build(config)

    def _build(self, config: dict[str, Any]) -> None:
        cfg = resolve_trial_config(self.base, self.points, config)
        device = "cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu"
        if self.experiment_dir is not None and self.share_warm_start:
            cfg = shared_warm_start(cfg, self.experiment_dir / "warm_start", device)
        self.cfg = cfg
        self.trainer = Trainer(cfg, device=device)
        self.trainer.warm_start()

    def step(self) -> dict[str, Any]:
        fault = self.cfg.fail_at_epoch
        if fault == self.trainer.epoch + 1 and self._first_time(f"fault-epoch{fault}"):
            raise InjectedFault(f"injected fault at epoch {fault}")
        try:
            metrics = self.trainer.train_epoch()
        except TrainingDiverged as err:
            return {"diverged": str(err), "val_clean_acc": 0.0, "val_robust_acc": 0.0,
                    "val_pgd_acc": 0.0, "trial_complete": False, "done": True}
        metrics.pop("cluster_sizes", None)
        metrics.pop("epoch", None)
        # Tune sets "done" on a trial its scheduler stops too; this says the trial ran its budget
        metrics["trial_complete"] = metrics["done"] = self.trainer.epoch >= self.cfg.optim.epochs
        return metrics

    def _first_time(self, tag: str) -> bool:
        """True once per trial and tag, across retries (a marker in the experiment folder)."""
        if self.experiment_dir is None:
            return True
        marker = self.experiment_dir / "faults" / f"{self.trial_id}-{tag}"
        marker.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL)
        except FileExistsError:
            return False
        os.close(fd)
        return True

    def save_checkpoint(self, checkpoint_dir: str) -> None:
        self.trainer.save(Path(checkpoint_dir) / TRIAL_STATE_FILE)

    def load_checkpoint(self, checkpoint: str | dict | None) -> None:
        state = load_checkpoint(Path(checkpoint) / TRIAL_STATE_FILE, self.trainer.device)
        self.trainer.load_state_dict(state)

    def reset_config(self, new_config: dict[str, Any]) -> bool:
        self._build(new_config)
        self.config = new_config
        return True
