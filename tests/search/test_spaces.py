"""Search presets and the define-by-run space."""

from __future__ import annotations

import optuna
import pytest
import yaml

from search import (
    ParamSpec,
    UsageError,
    list_search_presets,
    load_search_config,
    sample_configs,
    suggest,
)
from trainable import resolve_trial_config


def test_the_presets_exist_and_validate():
    assert {"quick", "cpu-ablation", "paper-ablation", "paper-table", "cpu-explore",
            "cpu-explore-l2", "paper-explore"} <= set(list_search_presets())
    for name in list_search_presets():
        load_search_config(name)


def test_quick_is_the_default():
    assert load_search_config() == load_search_config("quick")


@pytest.mark.parametrize("preset", ["quick", "cpu-ablation", "cpu-explore", "paper-explore"])
def test_define_by_run_keeps_l_and_m_within_the_clusters(preset):
    cfg = load_search_config(preset)
    base = cfg.base_dict()
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(200):
        trial = study.ask()
        params = suggest(trial, cfg, base)
        k = params["clusters.k"]
        assert params["clusters.l"] <= 10 * k
        assert params["clusters.m"] - 1 <= 9 * k
        resolve_trial_config(base, {}, params)  # every draw is a valid TrainConfig
        study.tell(trial, 0.0)


@pytest.mark.parametrize("preset", ["cpu-explore", "cpu-explore-l2", "paper-explore"])
def test_explore_presets_share_one_warm_start_per_kind(preset):
    """The explore spaces draw the warm start's kind (CE, PGD-AT or TRADES, ramped or not)
    and M; a fixed warm-start batch keeps M out of its key, so a search trains five warm
    starts, within what the driver trains ahead, and every draw is valid in its threat model."""
    from search._trainable import FORESEEN
    from trainable._config import warm_start_key

    cfg = load_search_config(preset)
    configs = sample_configs(cfg, 200)
    kinds = {(c.warm_start.variant, c.warm_start.eps_ramp) for c in configs}
    assert kinds == {("ce", False), ("pgd_at", False), ("pgd_at", True), ("trades", False),
                     ("trades", True)}
    assert len({warm_start_key(c) for c in configs}) == 5 <= FORESEEN
    assert {c.attack.norm for c in configs} == {"l2" if preset.endswith("l2") else "linf"}
    assert {c.attack.target for c in configs if c.objective.variant == "magnet_adv"} == \
        {"magnet", "head", "margin"}
    assert max(c.objective.lam_head_adv for c in configs) > 1


def test_paper_table_points_cover_the_papers_rows():
    cfg = load_search_config("paper-table")
    rows = {"qtrades", "qtrades-mse", "ce-qtrades", "ce-qtrades-mse", "e-qtrades",
            "e-qtrades-mse", "trades-1", "trades-2", "adv"}
    assert rows <= set(cfg.points)
    base = cfg.base_dict()
    trades2 = resolve_trial_config(base, cfg.points, {"point": "trades-2"})
    assert trades2.objective.reduction == "sum" and trades2.objective.consistency == "kl"
    e = resolve_trial_config(base, cfg.points, {"point": "e-qtrades"})
    assert (e.clusters.k, e.clusters.l, e.clusters.m, e.attack.steps) == (1, 10, 10, 10)
    assert e.attack.step_size > e.eps  # the paper's quirk, kept explicit


def test_overrides_and_training_configs(tmp_path):
    cfg = load_search_config("quick", overrides=["search.num_samples=3",
                                                 "train.optim.epochs=1"])
    assert cfg.search.num_samples == 3 and cfg.base_dict()["optim"]["epochs"] == 1
    train_only = tmp_path / "best.yaml"
    train_only.write_text(yaml.safe_dump({"data": {"dataset": "digits"}}))
    as_search = load_search_config(config_file=train_only)
    assert list(as_search.points) == ["config"] and as_search.search.num_samples == 1


def test_cluster_yaml_passes_rays_own_validation():
    from pathlib import Path

    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = yaml.safe_load((Path(__file__).parents[2] / "cluster.yaml").read_text())
    validate_config(prepare_config(cfg))
    assert "--dashboard-host=127.0.0.1" in " ".join(cfg["head_start_ray_commands"])
    ports = [p["FromPort"] for p in cfg["provider"]["security_group"]["IpPermissions"]]
    assert ports == [22]  # SSH only: no Ray or dashboard port open to the internet


def test_embedded_rays_dashboard_binds_localhost(monkeypatch):
    """With ray[default] installed the embedded Ray serves its dashboard, on 127.0.0.1 only."""
    from types import SimpleNamespace

    import ray

    from search import _tuner

    calls = []
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: calls.append(kw) or
                        SimpleNamespace(dashboard_url="127.0.0.1:8265"))
    monkeypatch.setattr(_tuner, "dashboard_available", lambda: True)
    monkeypatch.setenv("CLUSTUNE_RAY_DASHBOARD", "1")
    assert _tuner.start_ray() == "http://127.0.0.1:8265"
    assert calls[0]["include_dashboard"] and calls[0]["dashboard_host"] == "127.0.0.1"
    monkeypatch.setenv("CLUSTUNE_RAY_DASHBOARD", "0")  # left out on request
    monkeypatch.setattr(ray, "init", lambda **kw: calls.append(kw) or SimpleNamespace())
    assert _tuner.start_ray() is None and calls[1]["include_dashboard"] is False
    monkeypatch.setenv("CLUSTUNE_RAY_DASHBOARD", "yes")
    with pytest.raises(UsageError, match="^CLUSTUNE_RAY_DASHBOARD must be 0 or 1, got 'yes'$"):
        _tuner.start_ray()
    assert len(calls) == 2


def test_dashboard_needs_rays_own_dashboard_modules_not_just_aiohttp(monkeypatch):
    """aiohttp alone (many packages bring it) once counted as ray[default], and ray.init then
    failed on the missing aiohttp_cors: seen on a GPU machine."""
    import importlib.machinery
    import sys
    import types

    from search import _tuner

    aiohttp = types.ModuleType("aiohttp")
    aiohttp.__spec__ = importlib.machinery.ModuleSpec("aiohttp", None)
    monkeypatch.setitem(sys.modules, "aiohttp", aiohttp)
    monkeypatch.setitem(sys.modules, "aiohttp_cors", None)  # not installed (import fails)
    monkeypatch.delitem(sys.modules, "ray.dashboard.optional_deps", raising=False)
    assert not _tuner.dashboard_available()


def _draw_all(cfg, seed: int = 3, n: int = 100) -> list[tuple[dict, dict]]:
    """(study distributions, resolved params) of n random draws."""
    base = cfg.base_dict()
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    out = []
    for _ in range(n):
        trial = study.ask()
        params = suggest(trial, cfg, base)
        out.append((dict(trial.distributions), {**trial.params, **params}))
        study.tell(trial, 0.0)
    return out


def test_every_draw_has_one_fixed_distribution_whatever_k_is():
    """TPE models each parameter by one distribution: L's draw is a fraction of its feasible
    range, never a range that moves with the K drawn before it."""
    draws = _draw_all(load_search_config("cpu-ablation"))
    for name in ("clusters.l@fraction", "clusters.m@fraction", "clusters.k"):
        assert len({repr(d[name]) for d, _ in draws}) == 1, name
    assert {d["clusters.l@fraction"] for d, _ in draws} == {
        optuna.distributions.FloatDistribution(0.0, 1.0)}
    ks = {p["clusters.k"] for _, p in draws}
    assert len(ks) > 1  # the distributions stayed fixed across different K


def test_the_space_does_not_depend_on_key_order():
    """The same space with clusters.l listed before clusters.k draws the same trials (it was
    refused before: "clusters.l=29 exceeds C*K=20")."""
    cfg = load_search_config("cpu-ablation")
    reordered = cfg.model_copy(update={"space": dict(reversed(list(cfg.space.items())))})
    assert list(reordered.space)[-1] == "objective.variant"
    assert [p for _, p in _draw_all(cfg)] == [p for _, p in _draw_all(reordered)]


def test_categorical_l_and_m_are_clamped_to_the_clusters():
    quick = load_search_config("quick")
    cfg = quick.model_copy(update={"space": {
        **quick.space, "clusters.l": ParamSpec(type="categorical", choices=[2, 15, 30]),
        "clusters.k": ParamSpec(type="int", low=1, high=2)}})
    base = cfg.base_dict()
    for _, params in _draw_all(cfg):
        assert params["clusters.l"] <= 10 * params["clusters.k"]
        assert params["clusters.l@choice"] in (2, 15, 30)
        resolve_trial_config(base, {}, params)


def test_a_conditional_knob_is_drawn_only_when_its_condition_holds():
    """cpu-ablation draws the consistency and the attack loss only for qtrades, the variant
    that uses them; a magnet_adv trial keeps the base config's values (a refused config
    otherwise: a setting the variant ignores)."""
    cfg = load_search_config("cpu-ablation")
    base = cfg.base_dict()
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=2))
    variants = set()
    for _ in range(60):
        trial = study.ask()
        params = suggest(trial, cfg, base)
        qtrades = params["objective.variant"] == "qtrades"
        assert ("objective.consistency" in params) == qtrades == ("attack.loss" in params)
        assert ("objective.consistency" in trial.params) == qtrades  # Optuna sees the same
        resolve_trial_config(base, {}, params)
        variants.add(params["objective.variant"])
        study.tell(trial, 0.0)
    assert variants == {"qtrades", "magnet_adv"}


@pytest.mark.parametrize("when,says", [
    ({"objective.lam": [1.0]}, "must be an unconditional categorical knob"),
    ({"objective.variant": ["ce"]}, "are not all choices of objective.variant"),
    ({"clusters.q": ["x"]}, "must be an unconditional categorical knob"),
])
def test_a_condition_on_something_else_is_refused(tmp_path, when, says):
    from trainable import ConfigError

    space = {"objective.variant": {"type": "categorical", "choices": ["qtrades", "magnet_adv"]},
             "objective.lam": {"type": "float", "low": 1.0, "high": 2.0},
             "objective.consistency": {"type": "categorical", "choices": ["ce", "kl"],
                                       "when": when}}
    file = tmp_path / "s.yaml"
    file.write_text(yaml.safe_dump({"train": {"data": {"dataset": "digits"}}, "space": space}))
    with pytest.raises(ConfigError, match=says):
        load_search_config(config_file=file)
