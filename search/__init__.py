"""Search spaces and presets, Tune/Optuna assembly, launching, the final stage, the CLI."""

from ._optuna import FidelityOptunaSearch
from ._search_cmd import resume_search, run_search, trial_table
from ._spaces import (
    ParamSpec,
    SearchConfig,
    SearchSettings,
    list_search_presets,
    load_search_config,
    suggest,
)
from ._trainable import ClusteringTrainable, shared_warm_start
from ._tuner import (
    build_tuner,
    make_sampler,
    max_epochs,
    prepare_warm_starts,
    restore_tuner,
    start_ray,
)

__all__ = [
    "ClusteringTrainable", "FidelityOptunaSearch", "ParamSpec", "SearchConfig",
    "SearchSettings", "build_tuner", "list_search_presets", "load_search_config", "make_sampler",
    "max_epochs", "prepare_warm_starts", "restore_tuner", "resume_search", "run_search",
    "shared_warm_start", "start_ray", "suggest", "trial_table",
]
