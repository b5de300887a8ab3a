"""Assembling and launching a search: Ray (embedded or a cluster), OptunaSearch, the scheduler,
and the Tuner; resuming an interrupted one. The experiment lives in a local folder or in cloud
storage (Ray Tune writes its own files and the checkpoints there; the Optuna study is copied
there as the search runs)."""

from __future__ import annotations

import functools
import os
import socket
from typing import Any

import optuna
import ray
import torch
from ray import tune
from ray.tune.search import ConcurrencyLimiter

from analysis import (
    STUDY_FILE,
    read_meta,
    search_state_problem,
    study_file,
    study_problem,
)
from trainable import StoragePath, first_line

from ._driver import CurrentResultsBeforeRetry, GracefulInterrupt
from ._errors import UsageError
from ._experiment import study_location
from ._samplers import make_sampler
from ._schedulers import make_scheduler
from ._searcher import OptunaSearcher
from ._spaces import DEPENDENT, SearchConfig, suggest
from ._trainable import ClusteringTrainable

__all__ = ["start_ray", "embedded", "check_resources", "build_tuner", "restore_tuner",
           "make_searcher", "max_epochs", "check_resumable"]


DASHBOARD_ENV = "CLUSTUNE_RAY_DASHBOARD"  # 0: an embedded Ray leaves its dashboard out


def dashboard_available() -> bool:
    """The Ray dashboard needs the optional ray[default] extra: Ray's own list of its modules
    (aiohttp alone, which many packages bring, is not enough and makes ray.init fail)."""
    try:
        import ray.dashboard.optional_deps  # noqa: F401
    except ImportError:
        return False
    return True


def _dashboard_wanted() -> bool:
    """CLUSTUNE_RAY_DASHBOARD=0 leaves the dashboard out of an embedded Ray: it costs about
    5 CPU-seconds a start and runs at normal priority beside the trials (nice 15)."""
    value = os.environ.get(DASHBOARD_ENV, "1")
    if value not in ("0", "1"):
        raise UsageError(f"{DASHBOARD_ENV} must be 0 or 1, got {value!r}")
    return value == "1"


def _reachable(address: str, timeout: float = 5.0) -> bool:
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


def start_ray(address: str | None = None, num_cpus: int | None = None) -> str | None:
    """Join the cluster at address (or RAY_ADDRESS), else start an embedded Ray.

    Returns the dashboard URL when there is one. Servers bind to 127.0.0.1.
    """
    address = address or os.environ.get("RAY_ADDRESS")
    if address and address != "auto" and not _reachable(address):
        raise UsageError(f"cannot reach a Ray cluster at {address}")
    if ray.is_initialized():
        return None
    # workers' output stays in Ray's session folder: their shutdown noise (a SystemExit
    # traceback per worker after a Ctrl-C) never reaches the terminal
    kwargs: dict[str, Any] = {"logging_level": "ERROR", "configure_logging": True,
                              "log_to_driver": False}
    if address:
        context = ray.init(address=address, **kwargs)
    else:
        with_dash = _dashboard_wanted() and dashboard_available()
        context = ray.init(num_cpus=num_cpus, include_dashboard=with_dash,
                           dashboard_host="127.0.0.1", **kwargs)
    url = getattr(context, "dashboard_url", None)
    return f"http://{url}" if url else None


def embedded(address: str | None = None) -> bool:
    """Whether start_ray(address) starts an embedded Ray, whose trials read this machine's
    files."""
    return not (address or os.environ.get("RAY_ADDRESS"))


def check_resources(cpus: float, gpus: float, address: str | None, option: str,
                    num_cpus: int | None = None) -> None:
    """Refuse work that asks for resources no node has: an embedded Ray would wait for ever
    (its node is this machine: ``num_cpus``, else every core, and its GPUs). A cluster's
    autoscaler may still add bigger nodes for the work, so a cluster is trusted."""
    if cpus <= 0 or gpus < 0:
        raise UsageError(f"{option}: CPUs must be above 0 and GPUs at least 0, got {cpus:g} "
                         f"and {gpus:g}")
    if not embedded(address):
        return
    have_cpus = num_cpus or os.cpu_count() or 1
    if cpus > have_cpus:
        raise UsageError(f"{option}: {cpus:g} CPUs per task, and this machine (the embedded "
                         f"Ray's only node) has {have_cpus}")
    if gpus:
        have = torch.cuda.device_count()
        if gpus > have:
            raise UsageError(f"{option}: {gpus:g} GPUs asked for, and this machine has {have}; "
                             "leave it out to run on the CPU")


def quiet_ray_output(verbose: bool) -> int:
    """Tune's ``verbose`` level for the RunConfig; off, Tune's own reporter (new or old
    engine) prints nothing, and the caller's callbacks (the command line's live view) speak
    instead."""
    # the old engine honours verbose=0 fully; verbose: Tune's default, the new engine
    os.environ["RAY_AIR_NEW_OUTPUT"] = "1" if verbose else "0"
    return 1 if verbose else 0


def _trainable(cfg: SearchConfig, experiment: StoragePath, trainable: type = ClusteringTrainable):
    s = cfg.search
    with_params = tune.with_parameters(trainable, base=cfg.base_dict(), points=cfg.points,
                                       experiment=experiment.uri,
                                       share_warm_start=s.share_warm_start)
    return tune.with_resources(with_params, {"cpu": s.cpus_per_trial, "gpu": s.gpus_per_trial})


def _tune_storage(folder: StoragePath) -> dict[str, Any]:
    """Where Ray Tune keeps the experiment: a local folder by its path; cloud storage through
    clustune's own filesystem, which resolved its credentials when it was made (Tune, making
    its own later, would need them still in the environment: credentials_hidden)."""
    if folder.is_local:
        return {"storage_path": folder.uri}
    return {"storage_path": folder.path, "storage_filesystem": folder.fs}


def max_epochs(cfg: SearchConfig) -> int:
    """The longest budget of any trial: the scheduler's max_t."""
    base = cfg.base_dict()
    epochs = [base.get("optim", {}).get("epochs", 25)]
    epochs += [p.get("optim", {}).get("epochs", epochs[0]) for p in cfg.points.values()]
    spec = cfg.space.get("optim.epochs")
    if spec is not None:
        epochs.append(int(spec.high if spec.high is not None else max(spec.choices)))
    return max(epochs)


def make_searcher(cfg: SearchConfig, experiment: StoragePath | None = None,
                  storage: optuna.storages.BaseStorage | None = None) -> OptunaSearcher:
    """The Optuna searcher of a search: its space, sampler and the experiment's study, or a
    study in ``storage`` (the search benchmark runs the product's searcher on an in-memory
    one)."""
    s = cfg.search
    multi = s.multi_objective and not cfg.points
    if storage is None:
        name, storage = study_location(cfg, experiment)
        copy = None if experiment.is_local or s.study_storage else experiment.uri
    else:
        name, copy = "clustune", None
    return OptunaSearcher(
        functools.partial(_define_by_run, cfg=cfg, base=cfg.base_dict()),
        metric=s.objectives if multi else s.metric,
        mode=["max"] * len(s.objectives) if multi else s.mode,
        sampler=make_sampler(s, cfg.points), study_name=name, storage=storage,
        study_copy=copy)


def build_tuner(cfg: SearchConfig, experiment: StoragePath,
                callbacks: list[tune.Callback] | None = None, verbose: bool = False,
                trainable: type = ClusteringTrainable) -> tune.Tuner:
    """A Tuner for a new search in experiment (:func:`search.create_experiment` wrote its
    files). ``callbacks`` (Tune callbacks) watch it from the driver, e.g. the command line's
    live view; Ray Tune's own output shows only when ``verbose``; ``trainable`` replaces the
    Trainable (tests inject faults with one, :mod:`search.testing`)."""
    s = cfg.search
    limited = ConcurrencyLimiter(make_searcher(cfg, experiment), max_concurrent=s.max_concurrent)
    multi = s.multi_objective and not cfg.points
    tune_config = tune.TuneConfig(
        search_alg=limited, scheduler=make_scheduler(s, max_epochs(cfg), bool(cfg.points)),
        num_samples=len(cfg.points) or s.num_samples, reuse_actors=s.reuse_actors,
        **({} if multi else {"metric": s.metric, "mode": s.mode}))
    run_config = tune.RunConfig(
        name=experiment.name, **_tune_storage(experiment.parent),
        checkpoint_config=tune.CheckpointConfig(
            num_to_keep=s.keep_checkpoints, checkpoint_score_attribute=s.metric,
            checkpoint_score_order=s.mode, checkpoint_frequency=1, checkpoint_at_end=False),
        failure_config=tune.FailureConfig(max_failures=s.max_failures),
        callbacks=[*(callbacks or []), *_tracking(cfg, experiment), GracefulInterrupt(),
                   CurrentResultsBeforeRetry()],
        verbose=quiet_ray_output(verbose))
    return tune.Tuner(_trainable(cfg, experiment, trainable), tune_config=tune_config,
                      run_config=run_config)


def _tracking(cfg: SearchConfig, experiment: StoragePath) -> list[tune.Callback]:
    if not cfg.search.mlflow:
        return []
    from ._mlflow import MlflowTracking

    return [MlflowTracking(cfg.search.mlflow, experiment.uri, experiment.name,
                           cfg.search.model_dump(mode="json"))]


def _define_by_run(trial: optuna.Trial, cfg: SearchConfig, base: dict[str, Any]
                   ) -> dict[str, Any]:
    """The draws are the Optuna trial's parameters; the values resolved from them (L and M)
    are returned, and the searcher adds them to the trial's config."""
    params = suggest(trial, cfg, base)
    return {name: params[name] for name in DEPENDENT if name in params}


def check_resumable(experiment: StoragePath, cfg: SearchConfig) -> None:
    """Refuse, in one line and before Ray starts, an interrupted search whose saved state or
    Optuna study is not readable. The study of an experiment in cloud storage is copied back
    to where the saved searcher expects it (:func:`analysis.study_file`)."""
    where = _tune_storage(experiment)
    if not tune.Tuner.can_restore(where["storage_path"],
                                  storage_filesystem=where.get("storage_filesystem")):
        raise UsageError(f"{experiment} has no search state to resume yet")
    problem = search_state_problem(experiment)
    if problem:
        raise UsageError(f"cannot resume: {problem}")
    if cfg.search.study_storage is None:
        local = study_file(experiment)
        if not experiment.is_local and (experiment / STUDY_FILE).is_file():
            (experiment / STUDY_FILE).download(local)
        problem = study_problem(local) if local.is_file() else "missing"
        if problem:
            raise UsageError(f"cannot resume: the Optuna study {experiment / STUDY_FILE} is "
                             f"{problem}")


def restore_tuner(experiment: StoragePath, trainable: type = ClusteringTrainable
                  ) -> tune.Tuner:
    """The Tuner of an interrupted search (checked by :func:`check_resumable` first); finished
    trials are kept, unfinished ones continue."""
    cfg = SearchConfig.model_validate(read_meta(experiment).config)
    quiet_ray_output(verbose=False)  # the restored RunConfig keeps the search's verbosity
    try:
        where = _tune_storage(experiment)
        return tune.Tuner.restore(where["storage_path"], trainable=_trainable(cfg, experiment,
                                                                                trainable),
                                  storage_filesystem=where.get("storage_filesystem"),
                                  resume_unfinished=True, resume_errored=True)
    except Exception as err:  # noqa: BLE001 - Ray raises many kinds for a damaged saved state
        raise UsageError(f"cannot resume {experiment}: Ray Tune could not restore its saved "
                         f"search state ({first_line(err)})") from None
