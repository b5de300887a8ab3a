"""``ClusteringTrainable``: one trial of a search as a Ray Tune class Trainable.

``setup`` builds the Trainer from the trial's config, ``step`` runs one epoch and reports its
metrics, checkpoints restore a trial exactly, and ``reset_config`` lets Tune reuse actors (the
dataset stays loaded). The CE warm start is trained once per (data, model, seed) and shared
through the experiment's storage (EXPERIMENT/warm_start/KEY.pt, a folder or a bucket): the
search's driver trains the ones it can foresee before the first trial starts
(:func:`train_warm_starts`), and a trial that finds none for its key trains it and stores it.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune

from analysis import TRIAL_STATE_FILE, WARM_START_DIR
from trainable import (
    StoragePath,
    TrainConfig,
    Trainer,
    TrainingDiverged,
    atomic_write_bytes,
    build_config,
    load_checkpoint,
    resolve_trial_config,
    storage_path,
    warm_start_key,
)

from ._spaces import SearchConfig, sample_configs

__all__ = ["ClusteringTrainable", "prepare_warm_starts", "shared_warm_start",
           "train_warm_starts", "trial_device"]


def trial_device() -> str:
    """The device of work inside a Ray worker: the GPU Ray gave it, else the CPU."""
    return "cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu"


def _store_warm_start(cfg: TrainConfig, stored: StoragePath, device: str | None) -> None:
    """Train cfg's warm start and write it to stored (atomically: a reader sees all of it or
    none)."""
    trainer = Trainer(cfg, device=device)
    trainer.warm_start()
    with tempfile.TemporaryDirectory() as scratch:
        local = Path(scratch) / "warm.pt"
        trainer.save(local)
        stored.upload(local)


def shared_warm_start(cfg: TrainConfig, storage: StoragePath, device: str | None = None
                      ) -> TrainConfig:
    """Point cfg at the shared warm start for its key in storage, training and storing it
    first if nobody has (the same key always trains the same weights, so two trials that
    race to store one store the same file). One in a bucket is copied to this node once."""
    if not cfg.warm_start.ce_epochs:
        return cfg
    stored = storage / f"{warm_start_key(cfg)}.pt"
    if not stored.is_file():
        _store_warm_start(cfg, stored, device)
    if stored.is_local:
        local = stored.local
    else:
        node_cache = Path(tempfile.gettempdir()) / "clustune-warm-start"
        local = node_cache / hashlib.sha1(stored.uri.encode()).hexdigest()[:16] / stored.name
        if not local.is_file():
            atomic_write_bytes(local, stored.read_bytes())
    data = cfg.model_dump(mode="json")
    data["warm_start"] = {"checkpoint": str(local)}  # trained: nothing else of it applies
    return build_config(data)


@ray.remote
def _warm_start_task(config: dict[str, Any], stored_uri: str) -> str:
    _store_warm_start(build_config(config), storage_path(stored_uri), trial_device())
    return stored_uri


FORESEEN = 8  # distinct warm starts the driver trains ahead, at most


def prepare_warm_starts(cfg: SearchConfig, experiment: StoragePath) -> int:
    """Train the warm starts the trials will ask for, once each, before they start: every
    point's, or those of a space's draws when they need at most FORESEEN distinct ones (a
    space over a continuous knob a warm start depends on needs one per trial: each trial
    trains its own). Returns how many were trained."""
    s = cfg.search
    if not s.share_warm_start:
        return 0
    configs = sample_configs(cfg)
    if len({warm_start_key(c) for c in configs}) > FORESEEN:
        return 0
    return train_warm_starts(configs, experiment, s.cpus_per_trial, s.gpus_per_trial)


def train_warm_starts(configs: list[TrainConfig], experiment: StoragePath, cpus: float,
                      gpus: float) -> int:
    """Train the missing warm starts of these trial configs as Ray tasks with a trial's
    resources, before any trial holds them; returns how many were trained."""
    storage = experiment / WARM_START_DIR
    missing: dict[str, TrainConfig] = {}
    for cfg in configs:
        if cfg.warm_start.ce_epochs:
            missing.setdefault(warm_start_key(cfg), cfg)
    tasks = [_warm_start_task.options(num_cpus=cpus, num_gpus=gpus).remote(
        cfg.model_dump(mode="json"), (storage / f"{key}.pt").uri)
        for key, cfg in missing.items() if not (storage / f"{key}.pt").is_file()]
    ray.get(tasks)
    return len(tasks)


class ClusteringTrainable(tune.Trainable):
    """One trial: an epoch per ``step``; reports the Trainer's per-epoch metrics."""

    def setup(self, config: dict[str, Any], base: dict[str, Any] | None = None,
              points: dict[str, dict[str, Any]] | None = None,
              experiment: str | None = None, share_warm_start: bool = True) -> None:
        self.base, self.points = base or {}, points or {}
        self.experiment = storage_path(experiment) if experiment else None
        self.share_warm_start = share_warm_start
        # a line per checkpoint from Ray's workers drowns the live view; the folder has them
        logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)
        self._build(config)

    def _build(self, config: dict[str, Any]) -> None:
        cfg = resolve_trial_config(self.base, self.points, config)
        device = trial_device()
        if self.experiment is not None and self.share_warm_start:
            cfg = shared_warm_start(cfg, self.experiment / WARM_START_DIR, device)
        self.cfg = cfg
        self.trainer = Trainer(cfg, device=device)
        self.trainer.warm_start()

    def step(self) -> dict[str, Any]:
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

    def save_checkpoint(self, checkpoint_dir: str) -> None:
        self.trainer.save(Path(checkpoint_dir) / TRIAL_STATE_FILE)

    def load_checkpoint(self, checkpoint: str | dict | None) -> None:
        state = load_checkpoint(Path(checkpoint) / TRIAL_STATE_FILE, self.trainer.device)
        self.trainer.load_state_dict(state)

    def reset_config(self, new_config: dict[str, Any]) -> bool:
        self._build(new_config)
        self.config = new_config
        return True
