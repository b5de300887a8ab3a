"""The whole training recipe of one trial: data, model, clusters, objective, evaluation.

``Trainer`` is what ``clustune train`` runs and what the Ray Tune Trainable wraps: the
constructor builds (data, model, head, optimiser; a warm-start checkpoint is loaded), then
:meth:`Trainer.warm_start` trains the CE warm start the config asks for, and one call to
:meth:`Trainer.train_epoch` is one epoch and returns that epoch's metrics.

Reproducibility: the numbers depend on the seed, the thread count (``threads``, recorded in the
config) and the device; the warm start draws its batches from a generator of its own, so a
warm start trained in place and one trained by another process, saved and loaded (a search's
shared warm start) leave the training run in the same state.
"""

from __future__ import annotations

import copy
import functools
import io
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ._attacks import embedding_margin_loss, frozen, pgd
from ._clusters import Clusters, ClusterSampler, fit_clusters
from ._config import ConfigError, TrainConfig, recorded_config
from ._data import ImageData, as_float, augment_batch, load_data
from ._datasets import DATASETS
from ._errors import ClustuneError, TrainingDiverged, first_line
from ._files import atomic_write_bytes
from ._heads import ClusterHead
from ._models import Backbone, Classifier, build_backbone
from ._objectives import OBJECTIVES, Batch, free_magnet_adv_replay, warm_start_loss
from ._storage import StoragePath, storage_path

__all__ = ["Trainer", "CheckpointError", "load_checkpoint",
           "load_classifier", "load_dataset", "resolve_device", "CHECKPOINT_FORMAT"]

CHECKPOINT_FORMAT = "clustune-checkpoint-v1"
EVAL_BATCH = 500
WARM_START_SEED_OFFSET = 7919  # the warm start's batches: a stream apart from training's


class CheckpointError(ClustuneError, ValueError):
    """A file that is not a readable clustune checkpoint."""


def resolve_device(name: str) -> torch.device:
    """The device a config names (auto: CUDA when there is one), refused in one line when this
    machine does not have it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (device.index or 0) >= count:
            raise ConfigError(f"device={name}: this machine has "
                                  f"{count or 'no'} CUDA GPU{'s' if count != 1 else ''} (use "
                                  "device=auto or cpu)")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device={name}: this machine has no Apple GPU (use device=auto or "
                          "cpu)")
    return device


_DATA_CACHE: dict[tuple, ImageData] = {}


def load_dataset(cfg: TrainConfig) -> ImageData:
    """The dataset cfg names, with the validation split every run of it uses (seed 0)."""
    d = cfg.data
    return load_data(d.dataset, d.root, d.val_fraction, d.train_subset, seed=0,
                     verify_md5=d.verify_md5, download=d.download)


def _cached_data(cfg: TrainConfig, device: torch.device) -> ImageData:
    """Datasets are loaded once per process (actor reuse keeps them across trials)."""
    d = cfg.data
    key = (d.dataset, d.root, d.val_fraction, d.train_subset, d.verify_md5, str(device))
    if key not in _DATA_CACHE:
        _DATA_CACHE.clear()
        _DATA_CACHE[key] = load_dataset(cfg).to(device)
    return _DATA_CACHE[key]


def _no_progress(stage: str, done: int, total: int) -> None:
    """Default progress callback: silent."""


AttackLoss = Callable[[torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]  # y -> x -> loss


def _ce_loss(model: Classifier, y: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """Cross-entropy of the model's scores on adversarial images, for labels y."""
    return lambda x_adv: F.cross_entropy(model(x_adv), y)


class Trainer:
    """Trains one model under one TrainConfig, an epoch per :meth:`train_epoch` call."""

    def __init__(self, cfg: TrainConfig, device: str | torch.device | None = None,
                 progress: Callable[[str, int, int], None] | None = None) -> None:
        self.cfg = cfg
        self.device = resolve_device(str(device or cfg.device))
        self.progress = progress or _no_progress
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.data = _cached_data(cfg, self.device)
        d = self.data
        if cfg.is_clustering:
            smallest = int(torch.bincount(d.y_train.cpu(), minlength=d.num_classes).min())
            if cfg.clusters.k > smallest:
                raise ConfigError(f"clusters.k={cfg.clusters.k} exceeds the {smallest} training "
                                  "examples of the smallest class (after data.train_subset and "
                                  "the validation split): k-means needs K of them per class")
        self.model: Backbone = build_backbone(
            cfg.model.arch, d.in_channels, d.num_classes, d.mean, d.std,
            cfg.model.width, cfg.model.embedding_dim).to(self.device)
        f = cfg.fast
        self.model.use_fast_path(f.amp, f.channels_last, f.compile)
        self.head: ClusterHead | None = None
        if cfg.is_clustering:
            self.head = ClusterHead(cfg.clusters.head, d.num_classes, cfg.clusters.k,
                                    cfg.clusters.l, self.model.embedding_dim).to(self.device)
        self.clusters: Clusters | None = None
        self.sampler: ClusterSampler | None = None
        self._free_delta: torch.Tensor | None = None
        self._free_batch: Batch | None = None
        self.epoch = 0
        self.warm_started = not cfg.warm_start.ce_epochs
        if cfg.warm_start.checkpoint:
            state = load_checkpoint(cfg.warm_start.checkpoint, self.device)
            try:
                self.model.load_state_dict(state["model"])
            except RuntimeError as err:
                raise CheckpointError(f"{cfg.warm_start.checkpoint}: backbone does not match "
                                      f"model.arch={cfg.model.arch}") from err
        params = list(self.model.parameters()) + (list(self.head.parameters()) if self.head else [])
        o = cfg.optim
        if o.optimizer == "adam":
            self.optimizer = torch.optim.Adam(params, lr=o.lr, weight_decay=o.weight_decay)
        else:
            self.optimizer = torch.optim.SGD(params, lr=o.lr, momentum=o.momentum,
                                             weight_decay=o.weight_decay, nesterov=True)
        self.scheduler = (torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, o.epochs)
                          if o.schedule == "cosine" else None)

    # ----------------------------------------------------------------- data
    def _batches_per_epoch(self) -> int:
        n = self.cfg.optim.batches_per_epoch
        return n or max(1, len(self.data.y_train) // self.cfg.batch_size)

    def _images(self, idx: torch.Tensor) -> torch.Tensor:
        x = as_float(self.data.x_train[idx.to(self.device)])
        if self.cfg.data.augment:
            x = augment_batch(x, self.data.crop_padding, self.data.flip, self.generator)
        return x

    def _random_batch(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(self.data.y_train)
        idx = torch.randint(n, (size,), generator=self.generator)
        return self._images(idx), self.data.y_train[idx.to(self.device)]

    @torch.no_grad()
    def embed_all(self, x: torch.Tensor) -> torch.Tensor:
        with frozen(self.model):
            return torch.cat([self.model.embed(as_float(x[i:i + EVAL_BATCH]))
                              for i in range(0, len(x), EVAL_BATCH)])

    # ------------------------------------------------------------ training
    def warm_start(self) -> None:
        """The warm start: ``warm_start.ce_epochs`` epochs of the backbone and its linear head
        under ``warm_start.variant`` (CE, ClusTR's; or PGD-AT or TRADES in the config's threat
        model, eps ramped up linearly over the epochs when ``eps_ramp``); nothing when the
        config asks for none. Its batches come from a generator of its own, and augmentation
        and attacks too (module docstring)."""
        if self.warm_started:
            return
        ws = self.cfg.warm_start
        opt = torch.optim.Adam(self.model.parameters(), lr=ws.lr)
        batch = self.cfg.warm_start_batch_size
        steps = ws.ce_epochs * max(1, len(self.data.y_train) // batch)
        training_stream = self.generator  # _random_batch and _images draw from self.generator
        self.generator = torch.Generator().manual_seed(self.cfg.seed + WARM_START_SEED_OFFSET)
        self.model.train()
        try:
            for step in range(steps):
                x, y = self._random_batch(batch)
                eps = self.cfg.eps * ((step + 1) / steps if ws.eps_ramp else 1.0)
                loss, _ = warm_start_loss(self.model, x, y, self.cfg, eps, self.generator)
                if not torch.isfinite(loss):
                    raise TrainingDiverged(f"loss became {loss.item()} in the warm start")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                self.progress("warm start", step + 1, steps)
        finally:
            self.generator = training_stream
        self.warm_started = True

    def refresh_clusters(self) -> None:
        """Per-class k-means on un-augmented training embeddings (eval mode); head and sampler
        take the new centres and sigma^2."""
        emb = self.embed_all(self.data.x_train)
        c = self.cfg.clusters
        self.clusters = fit_clusters(emb, self.data.y_train, self.data.num_classes, c.k,
                                     c.kmeans_iters, self.generator)
        self.head.set_clusters(self.clusters.centroids, self.clusters.sigma2)
        if self.sampler is None:
            self.sampler = ClusterSampler(self.clusters, c.m, c.d, self.generator)
        else:
            self.sampler.set_clusters(self.clusters)

    def _clustering_batch(self) -> Batch:
        idx, slot_cluster = self.sampler.sample()
        c = self.cfg.clusters
        example_slot = torch.arange(c.m, device=self.device).repeat_interleave(c.d)
        slot_class = self.clusters.centroid_class[slot_cluster.to(self.device)]
        y = self.data.y_train[idx.to(self.device)]
        return Batch(self.model, self.head, self.cfg, self._images(idx), y, example_slot,
                     slot_class, self.generator, slot_cluster)

    def _check_finite(self, loss: torch.Tensor) -> None:
        if not torch.isfinite(loss):
            raise TrainingDiverged(f"loss became {loss.item()} at epoch {self.epoch + 1}")

    def _step(self, loss: torch.Tensor) -> None:
        self._check_finite(loss)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def train_batch(self, index: int = 0) -> dict[str, float]:
        """One optimiser step on a fresh batch (free mode: one replay of the batch, which is
        drawn anew every ``free_replays`` indices); returns its loss terms."""
        cfg = self.cfg
        if cfg.is_clustering and self.clusters is None:
            self.refresh_clusters()  # once before training
        self.model.train()
        if cfg.objective.variant == "magnet_adv" and cfg.objective.adv_mode == "free":
            if index % cfg.objective.free_replays == 0 or self._free_batch is None:
                self._free_batch = self._clustering_batch()
            batch = self._free_batch
            if self._free_delta is None or self._free_delta.shape != batch.x.shape:
                self._free_delta = torch.zeros_like(batch.x)
            self.optimizer.zero_grad(set_to_none=True)
            (loss, terms, per), self._free_delta = free_magnet_adv_replay(batch, self._free_delta)
            self._check_finite(loss)  # the replay ran backward itself
            self.optimizer.step()
        else:
            if cfg.is_clustering:
                batch = self._clustering_batch()
            else:
                x, y = self._random_batch(self.cfg.batch_size)
                batch = Batch(self.model, None, cfg, x, y, None, None, self.generator)
            loss, terms, per = OBJECTIVES[cfg.objective.variant](batch)
            self._step(loss)
        if per is not None:
            self.sampler.record(batch.slot_cluster, per)
        return {"loss": loss.item(), **terms}

    def train_epoch(self) -> dict[str, Any]:
        """One epoch: train, refresh clusters, evaluate; returns this epoch's metrics."""
        if not self.warm_started:
            raise RuntimeError("the config asks for a CE warm start: call warm_start() first")
        start = time.perf_counter()
        cfg = self.cfg
        totals: dict[str, float] = {}
        n_batches = self._batches_per_epoch()
        for i in range(n_batches):
            for k, v in self.train_batch(i).items():
                totals[k] = totals.get(k, 0.0) + v
            self.progress(f"epoch {self.epoch + 1}", i + 1, n_batches)
        if self.scheduler:
            self.scheduler.step()
        if cfg.is_clustering:
            self.refresh_clusters()  # once per epoch: evaluation and checkpoint see fresh centres
        self.epoch += 1
        train_time = time.perf_counter() - start
        metrics: dict[str, Any] = {"epoch": self.epoch}
        metrics.update({f"train_{k}": v / n_batches for k, v in totals.items()})
        metrics["lr"] = self.optimizer.param_groups[0]["lr"]
        if self.clusters is not None:
            sizes = self.clusters.sizes
            metrics.update(sigma2=float(self.clusters.sigma2), cluster_size_min=int(sizes.min()),
                           cluster_size_max=int(sizes.max()), cluster_sizes=sizes.tolist())
        metrics.update(self.evaluate())
        metrics["train_time_s"] = train_time
        metrics["epoch_time_s"] = time.perf_counter() - start
        return metrics

    # ----------------------------------------------------------- evaluation
    def classifier(self, head: str | None = None) -> Classifier:
        """The model as images -> logits, on the configured head or another cluster head."""
        if not self.cfg.is_clustering:
            return Classifier(self.model)
        if head is None or head == self.head.kind:
            return Classifier(self.model, self.head)
        other = ClusterHead(head, self.data.num_classes, self.cfg.clusters.k,
                            self.cfg.clusters.l, self.model.embedding_dim).to(self.device)
        other.set_clusters(self.head.centroids, self.head.sigma2)
        return Classifier(self.model, other)

    def validation_attacks(self, clf: Classifier) -> list[AttackLoss]:
        """The robust proxy's attacks, each a loss builder (labels -> loss of the images) that
        PGD maximises: CE through the trial's own head; for clustering models also CE through
        the logprob head and the embedding's centroid margin, which no head's flat or
        saturated scores can mask (docs/algorithms.md, "The validation proxy")."""
        attacks: list[AttackLoss] = [functools.partial(_ce_loss, clf)]
        if self.cfg.is_clustering:
            if self.head.kind != "logprob":
                attacks.append(functools.partial(_ce_loss, self.classifier("logprob")))
            attacks.append(functools.partial(embedding_margin_loss, self.model.embed,
                                             self.head.centroids,
                                             self.clusters.centroid_class))
        return attacks

    def evaluate(self, split: str = "val") -> dict[str, float]:
        """Clean accuracy on the split; PGD robust accuracy and margins on its first examples."""
        x_all, y_all = (self.data.x_val, self.data.y_val) if split == "val" else (
            self.data.x_test, self.data.y_test)
        clf = self.classifier()
        clf.eval()
        with torch.no_grad():
            pred = torch.cat([clf(as_float(x_all[i:i + EVAL_BATCH])).argmax(1)
                              for i in range(0, len(x_all), EVAL_BATCH)])
        out = {f"{split}_clean_acc": (pred == y_all).float().mean().item()}
        n = min(self.cfg.eval.examples, len(y_all))
        x, y = as_float(x_all[:n]), y_all[:n]
        eps = self.cfg.eval_eps
        step = self.cfg.eval.pgd_step_size or eps / 4
        attacks = self.validation_attacks(clf)
        # its own generator: evaluation settings must not change the training run
        eval_rng = torch.Generator().manual_seed(self.cfg.seed + self.epoch)
        robust = torch.ones(n, dtype=torch.bool, device=self.device)
        pgd_correct = None
        lipschitz: list[torch.Tensor] = []
        for a, attack in enumerate(attacks):
            for i in range(0, n, EVAL_BATCH):
                xb, yb = x[i:i + EVAL_BATCH], y[i:i + EVAL_BATCH]
                x_adv = pgd(attack(yb), xb, eps, step, self.cfg.eval.pgd_steps,
                            self.cfg.attack.norm, generator=eval_rng)
                with torch.no_grad():
                    ok = clf(x_adv).argmax(1) == yb
                    robust[i:i + EVAL_BATCH] &= ok
                    if a == 0:
                        pgd_correct = ok if pgd_correct is None else torch.cat([pgd_correct, ok])
                        if self.head is not None:
                            df = (self.model.embed(x_adv) - self.model.embed(xb)).flatten(1)
                            dx = (x_adv - xb).flatten(1).norm(dim=1).clamp(min=1e-12)
                            lipschitz.append(df.norm(dim=1) / dx)
        out[f"{split}_pgd_acc"] = pgd_correct.float().mean().item()
        out[f"{split}_robust_acc"] = robust.float().mean().item()
        if self.head is not None:
            out.update(self._margins(x, torch.cat(lipschitz).median().item(), split))
        return out

    @torch.no_grad()
    def _margins(self, x: torch.Tensor, lipschitz: float, split: str) -> dict[str, float]:
        """Embedding-space margin, and the radius and perturbation bounds it gives with the
        Lipschitz estimate (medians; docs/algorithms.md, "The validation proxy"). The estimate
        is measured along PGD directions, a lower bound of the true constant, so the radii are
        estimates (``_est``) that certify nothing."""
        emb = torch.cat([self.model.embed(x[i:i + EVAL_BATCH])
                         for i in range(0, len(x), EVAL_BATCH)])
        cent, cls = self.head.centroids, self.clusters.centroid_class
        dist = torch.cdist(emb, cent)
        nearest = dist.argmin(1)
        other = dist.masked_fill(cls[None, :] == cls[nearest][:, None], float("inf"))
        rival = other.argmin(1)
        d_own = dist.gather(1, nearest[:, None]).squeeze(1)
        d_rival = dist.gather(1, rival[:, None]).squeeze(1)
        gap = (cent[rival] - cent[nearest]).norm(dim=1).clamp(min=1e-12)
        margin = (d_rival**2 - d_own**2) / (2 * gap)
        lf = max(lipschitz, 1e-12)
        return {
            f"{split}_margin": margin.median().item(),
            f"{split}_lipschitz_est": lipschitz,
            f"{split}_radius_est": (margin / lf).median().item(),
            f"{split}_delta_lower_est": ((d_rival - d_own) / (2 * lf)).median().item(),
            f"{split}_delta_upper_est": ((d_rival + d_own) / (2 * lf)).median().item(),
        }

    # ------------------------------------------------------- state and files
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly: weights, optimiser, clusters, sampler, RNG."""
        state: dict[str, Any] = {
            "format": CHECKPOINT_FORMAT,
            "config": json.dumps(self.cfg.model_dump(mode="json")),
            "epoch": self.epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
        }
        if self.scheduler:
            state["scheduler"] = self.scheduler.state_dict()
        if self.head is not None:
            state["head"] = self.head.state_dict()
            state["head_kind"] = self.head.kind
        if self.clusters is not None:
            state["clusters"] = {"centroids": self.clusters.centroids,
                                 "centroid_class": self.clusters.centroid_class,
                                 "assignment": self.clusters.assignment,
                                 "sigma2": self.clusters.sigma2}
            state["sampler"] = self.sampler.state_dict()
        if self._free_delta is not None:
            state["free_delta"] = self._free_delta
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch = state["epoch"]
        self.warm_started = True  # a checkpoint holds a model past its warm start
        self.model.load_state_dict(state["model"])
        # a copy: Optimizer.load_state_dict keeps the given tensors, and they may belong to a
        # live trainer (an in-memory state) whose next steps would update them in place
        self.optimizer.load_state_dict(copy.deepcopy(state["optimizer"]))
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        if self.scheduler and "scheduler" in state:
            self.scheduler.load_state_dict(state["scheduler"])
        if self.head is not None and "head" in state:
            self.head.load_state_dict(state["head"])
        if "clusters" in state:
            c = {k: v.to(self.device) for k, v in state["clusters"].items()}
            self.clusters = Clusters(**c)
            self.sampler = ClusterSampler(self.clusters, self.cfg.clusters.m,
                                          self.cfg.clusters.d, self.generator)
            self.sampler.load_state_dict(state["sampler"])
        self._free_delta = state.get("free_delta")

    def save(self, path: str | Path) -> Path:
        """Write a checkpoint atomically (a temporary file, then a rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        torch.save(self.state_dict(), buffer)
        atomic_write_bytes(path, buffer.getvalue())
        return path


def load_checkpoint(path: str | Path | StoragePath, device: str | torch.device = "cpu"
                    ) -> dict[str, Any]:
    """Load a clustune checkpoint (a local path or one in cloud storage) without executing
    pickled code (``weights_only=True``)."""
    try:
        where = storage_path(path)
        source = where.local if where.is_local else io.BytesIO(where.read_bytes())
        state = torch.load(source, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} does not exist") from None
    except Exception as err:  # torch raises many types for truncated or foreign files
        raise CheckpointError(f"{path} is not a readable clustune checkpoint "
                              f"({first_line(err, 120)})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a clustune checkpoint ({CHECKPOINT_FORMAT})")
    return state


def load_classifier(path: str | Path, head: str | None = None,
                    device: str | torch.device = "cpu") -> tuple[Classifier, TrainConfig, dict]:
    """Rebuild the trained classifier from a checkpoint, optionally on another cluster head.

    Returns (classifier in eval mode, its config, the raw checkpoint dict).
    """
    state = load_checkpoint(path, device)
    cfg = recorded_config(json.loads(state["config"]))
    channels = DATASETS[cfg.data.dataset].channels
    mean = tuple(state["model"]["mean"].flatten().tolist())
    std = tuple(state["model"]["std"].flatten().tolist())
    model = build_backbone(cfg.model.arch, channels, cfg.num_classes, mean, std,
                           cfg.model.width, cfg.model.embedding_dim).to(device)
    model.load_state_dict(state["model"])
    # a memory layout, not a change of numerics: evaluation keeps it, but never bf16 or compile
    model.use_fast_path(channels_last=cfg.fast.channels_last)
    cluster_head = None
    if cfg.is_clustering:
        kind = head or state["head_kind"]
        cluster_head = ClusterHead(kind, cfg.num_classes, cfg.clusters.k, cfg.clusters.l,
                                   model.embedding_dim).to(device)
        if kind == state["head_kind"]:
            cluster_head.load_state_dict(state["head"])
        else:
            cluster_head.set_clusters(state["head"]["centroids"], state["head"]["sigma2"])
    elif head not in (None, "linear"):
        raise CheckpointError(f"{path} has no cluster head (variant {cfg.objective.variant})")
    clf = Classifier(model, cluster_head).eval()
    return clf, cfg, state
