"""Assembling and launching a search: Ray (embedded or a cluster), OptunaSearch, the scheduler,
and the Tuner; resuming an interrupted one. The experiment lives in a local folder or in cloud
storage (Ray Tune writes its own files and the checkpoints there; the Optuna study is copied
there as the search runs)."""

from __future__ import annotations

import functools
import os
import socket
import time
from typing import Any

import optuna
import ray
import torch
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, HyperBandScheduler
from ray.tune.search import ConcurrencyLimiter

from analysis import (
    META_FILE,
    STUDY_FILE,
    ExperimentMeta,
    read_meta,
    search_state_problem,
    study_file,
    study_problem,
    study_url,
)
from trainable import StoragePath, resolve_trial_config

from ._console import UsageError
from ._driver import CurrentResultsBeforeRetry, DriverFault, GracefulInterrupt
from ._live import LiveView, quiet_ray_output
from ._optuna import FidelityOptunaSearch
from ._spaces import DEPENDENT, SearchConfig, suggest
from ._trainable import ClusteringTrainable, train_warm_starts

__all__ = ["start_ray", "embedded", "check_gpus", "build_tuner", "restore_tuner",
           "make_sampler", "max_epochs", "prepare_warm_starts", "check_resumable"]

# Settings the CE warm start depends on (search/_trainable.py's key): a search over any of them
# cannot train its warm starts ahead of the trials
WARM_START_INPUTS = ("data.", "model.", "fast.", "threads", "seed", "warm_start.", "batch_size")


def dashboard_available() -> bool:
    """The Ray dashboard needs the optional ray[default] extra: Ray's own list of its modules
    (aiohttp alone, which many packages bring, is not enough and makes ray.init fail)."""
    try:
        import ray.dashboard.optional_deps  # noqa: F401
    except ImportError:
        return False
    return True


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
    kwargs: dict[str, Any] = {"logging_level": "ERROR", "configure_logging": True}
    if address:
        context = ray.init(address=address, **kwargs)
    else:
        with_dash = dashboard_available()
        context = ray.init(num_cpus=num_cpus, include_dashboard=with_dash,
                           dashboard_host="127.0.0.1", **kwargs)
    url = getattr(context, "dashboard_url", None)
    return f"http://{url}" if url else None


def embedded(address: str | None = None) -> bool:
    """Whether start_ray(address) starts an embedded Ray, whose trials read this machine's
    files."""
    return not (address or os.environ.get("RAY_ADDRESS"))


def check_gpus(gpus: float, address: str | None, option: str) -> None:
    """An embedded Ray never schedules work that asks for more GPUs than this machine has: it
    would wait for ever. A cluster's autoscaler may still add GPU workers, so it is trusted."""
    if gpus < 0:
        raise UsageError(f"{option} must be at least 0, got {gpus:g}")
    if gpus and embedded(address):
        have = torch.cuda.device_count()
        if gpus > have:
            raise UsageError(f"{option} {gpus:g} asks for more GPUs than this machine has "
                             f"({have}); leave it out to run on the CPU")


def _trainable(cfg: SearchConfig, experiment: StoragePath):
    s = cfg.search
    with_params = tune.with_parameters(ClusteringTrainable, base=cfg.base_dict(),
                                       points=cfg.points, experiment=experiment.uri,
                                       share_warm_start=s.share_warm_start)
    return tune.with_resources(with_params, {"cpu": s.cpus_per_trial, "gpu": s.gpus_per_trial})


def make_sampler(cfg: SearchConfig) -> optuna.samplers.BaseSampler:
    """The Optuna sampler a search uses (the search benchmark replays the same one)."""
    s = cfg.search
    if cfg.points:
        return optuna.samplers.GridSampler({"point": list(cfg.points)}, seed=s.seed)
    if s.sampler == "random":
        return optuna.samplers.RandomSampler(seed=s.seed)
    if s.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=s.seed)
    startup = s.tpe_startup or min(10, max(2, s.num_samples // 3))
    return optuna.samplers.TPESampler(seed=s.seed, n_startup_trials=startup,
                                      multivariate=s.tpe_multivariate,
                                      group=s.tpe_multivariate,
                                      constant_liar=s.tpe_constant_liar)


def max_epochs(cfg: SearchConfig) -> int:
    """The longest budget of any trial: the scheduler's max_t."""
    base = cfg.base_dict()
    epochs = [base.get("optim", {}).get("epochs", 25)]
    epochs += [p.get("optim", {}).get("epochs", epochs[0]) for p in cfg.points.values()]
    spec = cfg.space.get("optim.epochs")
    if spec is not None:
        epochs.append(int(spec.high if spec.high is not None else max(spec.choices)))
    return max(epochs)


def prepare_warm_starts(cfg: SearchConfig, experiment: StoragePath) -> int:
    """Train the CE warm starts the trials will ask for, once each, before they start (every
    point's; the base config's when the space searches nothing a warm start depends on)."""
    s = cfg.search
    if not s.share_warm_start:
        return 0
    base = cfg.base_dict()
    if cfg.points:
        configs = [resolve_trial_config(base, cfg.points, {"point": p}) for p in cfg.points]
    elif any(k.startswith(WARM_START_INPUTS) for k in cfg.space):
        return 0  # each trial trains (and stores) the warm start of its own key
    else:
        configs = [resolve_trial_config(base, {}, {})]
    return train_warm_starts(configs, experiment, s.cpus_per_trial, s.gpus_per_trial)


def build_tuner(cfg: SearchConfig, experiment: StoragePath,
                callbacks: list[tune.Callback] | None = None, verbose: bool = False
                ) -> tune.Tuner:
    """A Tuner for a new search; writes the experiment's metadata file first. ``callbacks``
    (Tune callbacks) watch it from the driver, e.g. to time it; the live view is one, and Ray
    Tune's own output shows only when ``verbose``."""
    s = cfg.search
    name = experiment.name
    study_name = f"clustune-{name}"
    own_study = s.study_storage is None
    study_storage = study_url(experiment) if own_study else s.study_storage
    meta = ExperimentMeta(name=name, created=time.strftime("%Y-%m-%dT%H:%M:%S"),
                          study_name=study_name, study_storage=study_storage,
                          config=cfg.model_dump(mode="json"), base=cfg.base_dict())
    (experiment / META_FILE).atomic_write_text(meta.model_dump_json(indent=2))
    base = cfg.base_dict()
    if own_study:  # a new experiment: a study file left by an older one there is stale
        study_file(experiment).unlink(missing_ok=True)
        study_file(experiment).parent.mkdir(parents=True, exist_ok=True)
    storage = optuna.storages.RDBStorage(study_storage)
    multi = s.multi_objective and not cfg.points
    metric: str | list[str] = s.objectives if multi else s.metric
    mode: str | list[str] = ["max"] * len(s.objectives) if multi else s.mode
    searcher = FidelityOptunaSearch(space=functools.partial(_define_by_run, cfg=cfg, base=base),
                            metric=metric, mode=mode, sampler=make_sampler(cfg),
                            study_name=study_name, storage=storage,
                            study_copy=None if experiment.is_local or not own_study
                            else experiment.uri)
    limited = ConcurrencyLimiter(searcher, max_concurrent=s.max_concurrent)
    max_t = max_epochs(cfg)
    sched_metric = {"metric": s.metric, "mode": s.mode} if multi else {}
    if s.scheduler == "asha" and not cfg.points:
        scheduler = ASHAScheduler(time_attr="training_iteration", max_t=max_t,
                                  grace_period=s.grace_period,
                                  reduction_factor=s.reduction_factor, **sched_metric)
    elif s.scheduler == "hyperband" and not cfg.points:
        scheduler = HyperBandScheduler(time_attr="training_iteration", max_t=max_t,
                                       reduction_factor=s.reduction_factor, **sched_metric)
    else:
        scheduler = FIFOScheduler()
    tune_config = tune.TuneConfig(
        search_alg=limited, scheduler=scheduler, num_samples=len(cfg.points) or s.num_samples,
        reuse_actors=s.reuse_actors, **({} if multi else {"metric": s.metric, "mode": s.mode}))
    run_config = tune.RunConfig(
        name=name, storage_path=experiment.parent.uri,
        checkpoint_config=tune.CheckpointConfig(
            num_to_keep=s.keep_checkpoints, checkpoint_score_attribute=s.metric,
            checkpoint_score_order=s.mode, checkpoint_frequency=1, checkpoint_at_end=False),
        failure_config=tune.FailureConfig(max_failures=s.max_failures),
        callbacks=[*(callbacks or []), GracefulInterrupt(), CurrentResultsBeforeRetry(),
                   DriverFault(),
                   LiveView(len(cfg.points) or s.num_samples, s.metric, s.mode)],
        verbose=quiet_ray_output(verbose))
    return tune.Tuner(_trainable(cfg, experiment), tune_config=tune_config,
                      run_config=run_config)


def _define_by_run(trial: optuna.Trial, cfg: SearchConfig, base: dict[str, Any]
                   ) -> dict[str, Any]:
    """The draws are the Optuna trial's parameters; the values resolved from them (L and M)
    are returned, and Ray Tune adds them to the trial's config."""
    params = suggest(trial, cfg, base)
    return {name: params[name] for name in DEPENDENT if name in params}


def check_resumable(experiment: StoragePath, cfg: SearchConfig) -> None:
    """Refuse, in one line and before Ray starts, an interrupted search whose saved state or
    Optuna study is not readable. The study of an experiment in cloud storage is copied back
    to where the saved searcher expects it (:func:`analysis.study_file`)."""
    if not tune.Tuner.can_restore(experiment.uri):
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


def restore_tuner(experiment: StoragePath) -> tune.Tuner:
    """The Tuner of an interrupted search (checked by :func:`check_resumable` first); finished
    trials are kept, unfinished ones continue."""
    cfg = SearchConfig.model_validate(read_meta(experiment).config)
    quiet_ray_output(verbose=False)  # the restored RunConfig keeps the search's verbosity
    try:
        return tune.Tuner.restore(experiment.uri, trainable=_trainable(cfg, experiment),
                                  resume_unfinished=True, resume_errored=True)
    except Exception as err:  # noqa: BLE001 - Ray raises many kinds for a damaged saved state
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UsageError(f"cannot resume {experiment}: Ray Tune could not restore its saved "
                         f"search state ({first[:200]})") from None
