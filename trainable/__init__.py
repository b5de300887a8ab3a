"""Everything that happens inside one trial: data, models, clusters, losses, heads, training.

The clustering core is public so researchers can use it directly::

    from trainable import MagnetLoss, ClusterSampler, ClusterHead, fit_clusters
"""

from ._attacks import embedding_margin_loss, frozen, pgd_linf
from ._clusters import Clusters, ClusterSampler, fit_clusters, kmeans
from ._config import (
    ConfigError,
    ConfigSection,
    TrainConfig,
    apply_overrides,
    build_config,
    list_presets,
    load_config,
    load_preset,
    parse_overrides,
    read_yaml,
    recorded_config,
    resolve_trial_config,
    validation_message,
)
from ._data import DataError, ImageData, augment_batch, load_data
from ._datasets import DATASETS, Dataset
from ._errors import ClustuneError
from ._files import atomic_write_bytes, atomic_write_text
from ._heads import EMPTY_CLASS_LOGIT, HEADS, ClusterHead
from ._magnet import MagnetLoss, magnet_loss
from ._models import Backbone, Classifier, ResNet18, SmallCNN, build_backbone
from ._objectives import OBJECTIVES, consistency
from ._storage import StorageError, StoragePath, storage_path
from ._trainer import (
    CheckpointError,
    Trainer,
    TrainingDiverged,
    load_checkpoint,
    load_classifier,
    load_dataset,
    resolve_device,
)

__all__ = [
    "DATASETS", "EMPTY_CLASS_LOGIT", "HEADS", "OBJECTIVES", "Backbone", "CheckpointError",
    "Classifier", "ClusterHead", "ClusterSampler", "Clusters", "ClustuneError", "ConfigError",
    "ConfigSection", "DataError", "Dataset", "ImageData", "MagnetLoss", "ResNet18", "SmallCNN",
    "StorageError", "StoragePath", "TrainConfig", "Trainer", "TrainingDiverged",
    "apply_overrides", "atomic_write_bytes", "atomic_write_text", "augment_batch",
    "build_backbone", "build_config", "consistency", "embedding_margin_loss", "fit_clusters",
    "frozen", "kmeans", "list_presets", "load_checkpoint", "load_classifier", "load_config",
    "load_data", "load_dataset", "magnet_loss", "parse_overrides", "pgd_linf", "load_preset",
    "read_yaml", "recorded_config", "resolve_trial_config", "resolve_device", "storage_path",
    "validation_message",
]
