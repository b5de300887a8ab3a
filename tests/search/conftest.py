"""One Ray for the whole session (small object store, no usage stats) and digits search configs."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(scope="session")
def ray_session():
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, object_store_memory=80 * 1024**2, include_dashboard=False,
                 logging_level="ERROR", configure_logging=True)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def digits_search():
    """A factory of tiny searches on scikit-learn's digits: seconds per trial."""
    return _digits_search


def _digits_search(**search) -> dict:
    return {
        "train": {
            "data": {"dataset": "digits"},
            "model": {"width": 8, "embedding_dim": 16},
            "clusters": {"k": 1, "l": 10, "m": 10, "d": 4},
            "objective": {"variant": "qtrades"},
            "optim": {"lr": 1e-3, "epochs": 4, "batches_per_epoch": 4},
            "warm_start": {"ce_epochs": 1},
            "eval": {"examples": 40, "pgd_steps": 2},
        },
        "space": {
            "clusters.k": {"type": "int", "low": 1, "high": 2},
            "clusters.l": {"type": "int", "low": 2, "high": 20},
            "objective.lam": {"type": "float", "low": 0.5, "high": 10.0, "log": True},
        },
        "search": {"num_samples": 4, "max_concurrent": 2, "final_top_k": 0, **search},
    }
