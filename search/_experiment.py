"""A new experiment's own files, written in one visible step before anything runs: its
clustune.json (the resolved search config and where its Optuna study lives)."""

from __future__ import annotations

import time

from analysis import META_FILE, ExperimentMeta, study_file, study_url
from trainable import StoragePath

from ._errors import UsageError
from ._lease import LEASE_FILE
from ._spaces import SearchConfig

__all__ = ["create_experiment", "refuse_existing", "study_location"]


def study_location(cfg: SearchConfig, experiment: StoragePath) -> tuple[str, str]:
    """(study name, Optuna storage URL) of the experiment's study: its own optuna.db, or the
    shared RDB server of search.study_storage."""
    storage = cfg.search.study_storage or study_url(experiment)
    return f"clustune-{experiment.name}", storage


def refuse_existing(experiment: StoragePath) -> None:
    """A new experiment never writes over files: one there is continued, not restarted (a
    bucket's lease, written first, is not one)."""
    if experiment.has_files(ignore=(LEASE_FILE,)):
        raise UsageError(f"{experiment} already exists; continue it with `clustune resume "
                         f"{experiment.uri}` or choose another --name")


def create_experiment(cfg: SearchConfig, experiment: StoragePath) -> ExperimentMeta:
    """Write a new experiment's clustune.json, refusing a place that holds files already (in a
    local folder, atomically: of two searches started at once under one name, one is
    refused), and remove a study file an older experiment of the same name left where the
    driver keeps the study (a bucket's experiment keeps it in the temporary folder); returns
    what it wrote."""
    refuse_existing(experiment)
    name, storage = study_location(cfg, experiment)
    meta = ExperimentMeta(name=experiment.name, created=time.strftime("%Y-%m-%dT%H:%M:%S"),
                          study_name=name, study_storage=storage,
                          config=cfg.model_dump(mode="json"), base=cfg.base_dict())
    try:
        (experiment / META_FILE).create_text(meta.model_dump_json(indent=2))
    except FileExistsError:
        refuse_existing(experiment)
        raise
    if cfg.search.study_storage is None:
        study_file(experiment).unlink(missing_ok=True)
        study_file(experiment).parent.mkdir(parents=True, exist_ok=True)
    return meta
