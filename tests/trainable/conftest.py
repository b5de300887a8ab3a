"""Shared fixtures for the trainable/ tests: tiny configurations on scikit-learn's digits."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from trainable import TrainConfig, apply_overrides, build_config

TINY = {
    "data": {"dataset": "digits"},
    "model": {"arch": "small_cnn", "width": 8, "embedding_dim": 16},
    "clusters": {"k": 1, "l": 10, "m": 10, "d": 4},
    "optim": {"batches_per_epoch": 3, "epochs": 1, "lr": 1e-3},
    "eval": {"examples": 50, "pgd_steps": 2},
    "device": "cpu",
}


@pytest.fixture
def tiny_config() -> Callable[..., TrainConfig]:
    """Build a validated digits config: the tiny defaults deep-merged with the given sections."""

    def make(overrides: dict[str, Any] | None = None) -> TrainConfig:
        return build_config(apply_overrides(TINY, overrides or {}))

    return make


@pytest.fixture(autouse=True)
def _one_thread():
    """The models here are tiny: one intra-op thread is faster than contending for two cores."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
