"""Configuration: presets, --set overrides, and one-line errors that name the offending key."""

from __future__ import annotations

import pytest

from trainable import (
    ConfigError,
    TrainConfig,
    build_config,
    list_presets,
    load_config,
    parse_overrides,
)


def one_line_error(excinfo: pytest.ExceptionInfo, *names: str) -> str:
    message = str(excinfo.value)
    assert message and "\n" not in message
    for name in names:
        assert name in message, (name, message)
    return message


def test_presets_exist_and_all_validate() -> None:
    presets = list_presets()
    assert "paper-qtrades" in presets and "fmnist-magnet-adv" in presets and len(presets) >= 10
    for name in presets:
        cfg = load_config(preset=name)
        assert isinstance(cfg, TrainConfig)
        assert cfg.clusters.l <= cfg.num_classes * cfg.clusters.k
        assert cfg.clusters.m <= cfg.num_classes * cfg.clusters.k


def test_paper_presets_carry_the_paper_settings() -> None:
    q = load_config(preset="paper-qtrades")
    assert (q.objective.variant, q.clusters.k, q.clusters.l, q.clusters.m) == ("qtrades", 2, 10, 12)
    assert q.objective.lam == 8.0 and q.clusters.head == "raw"
    assert q.eps == pytest.approx(8 / 255)
    e = load_config(preset="paper-e-qtrades")
    assert (e.attack.steps, e.objective.lam, e.clusters.k) == (10, 6.0, 1)
    t2 = load_config(preset="paper-trades-2")
    assert (t2.objective.consistency, t2.objective.reduction, t2.attack.loss) == ("kl", "sum", "kl")


def test_set_overrides_apply_on_top_of_a_preset() -> None:
    cfg = load_config(preset="fmnist-magnet-adv",
                      overrides=["clusters.k=3", "objective.lam=2.5", "optim.lr=3e-4",
                                 "clusters.head=learned", "objective.lam_ce=1",
                                 "data.root=/tmp/fm", "attack.eps=0.05"])
    assert cfg.clusters.k == 3 and cfg.objective.lam == 2.5 and cfg.optim.lr == 3e-4
    assert cfg.clusters.head == "learned" and cfg.data.root == "/tmp/fm"
    assert cfg.eps == 0.05 and cfg.eval_eps == 0.05
    preset = load_config(preset="fmnist-magnet-adv")
    assert cfg.clusters.m == preset.clusters.m  # untouched keys keep the preset's values
    assert cfg.optim.epochs == preset.optim.epochs


def test_parse_overrides_builds_nested_typed_values() -> None:
    parsed = parse_overrides(["a.b.c=1", "a.b.d=true", "a.e=x y", "f=[1, 2]", "g="])
    assert parsed == {"a": {"b": {"c": 1, "d": True}, "e": "x y"}, "f": [1, 2], "g": None}
    for bad in ["novalue", "=3", "a..b=1", "a.=1"]:
        with pytest.raises(ConfigError) as info:
            parse_overrides([bad])
        one_line_error(info, bad)
    with pytest.raises(ConfigError) as info:
        parse_overrides(["a=1", "a.b=2"])
    one_line_error(info, "a.b=2")


def test_defaults_and_derived_values() -> None:
    cfg = build_config({})
    assert cfg.data.dataset == "fashion-mnist" and cfg.eps == 0.1  # the usual Linf radius
    assert cfg.batch_size == cfg.clusters.m * cfg.clusters.d and cfg.is_clustering
    ce = build_config({"objective": {"variant": "ce"}, "optim": {"batch_size": 64}})
    assert ce.batch_size == 64 and not ce.is_clustering
    assert build_config({"eval": {"eps": 0.2}}).eval_eps == 0.2


@pytest.mark.parametrize("data,names", [
    ({"data": {"datset": "digits"}}, ["data.datset", "unknown key"]),
    ({"bogus": 1}, ["bogus", "unknown key"]),
    ({"clusters": {"k": "two"}}, ["clusters.k"]),
    ({"clusters": {"k": 2.5}}, ["clusters.k"]),
    ({"optim": {"lr": "fast"}}, ["optim.lr"]),
    ({"clusters": {"head": "softmax"}}, ["clusters.head"]),
    ({"data": "digits"}, ["data"]),
    ({"clusters": {"k": 1, "l": 11}}, ["clusters.l=11", "C*K=10"]),
    ({"clusters": {"k": 2, "l": 10, "m": 21}}, ["clusters.m=21", "C*K=20"]),
    ({"clusters": {"k": 1, "l": 5, "m": 11}}, ["clusters.m=11"]),
    ({"attack": {"eps": -0.1}}, ["attack.eps"]),
    ({"eval": {"eps": -1}}, ["eval.eps"]),
    ({"clusters": {"head": "learned"}}, ["clusters.head=learned", "objective.lam_ce"]),
    ({"objective": {"variant": "qtrades", "adv_mode": "free"}}, ["objective.adv_mode=free"]),
    ({"objective": {"variant": "pgd_at", "adv_mode": "free"}}, ["objective.adv_mode=free"]),
    ({"warm_start": {"checkpoint": "x.pt", "ce_epochs": 1}}, ["warm_start"]),
    ({"data": {"dataset": "cifar10"}}, ["data.root"]),
    # the threat model: radii in the norm's units
    ({"attack": {"eps": 1.5}}, ["attack.eps=1.5", "Linf"]),
    ({"attack": {"norm": "l2", "eps": 0.1}}, ["attack.eps=0.1", "Linf-sized", "1.5"]),
    ({"attack": {"norm": "l2"}, "eval": {"eps": 0.03}}, ["eval.eps=0.03", "Linf-sized"]),
    ({"attack": {"norm": "l1"}}, ["attack.norm"]),
    ({"attack": {"norm": "l2"}, "objective": {"variant": "magnet_adv", "adv_mode": "free"}},
     ["adv_mode=free", "l2"]),
    # numbers the tensor library cannot hold, devices that are no device
    ({"seed": 2**64}, ["seed"]),
    ({"clusters": {"k": 10**12}}, ["clusters.k"]),
    ({"optim": {"epochs": 10**18}}, ["optim.epochs"]),
    ({"device": "gpu0"}, ["device='gpu0'", "cuda"]),
])
def test_invalid_configs_raise_one_line_errors(data: dict, names: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        build_config(data)
    one_line_error(info, *names)


@pytest.mark.parametrize("data,setting,used_with", [
    ({"objective": {"variant": "magnet_adv", "consistency": "kl"}}, "objective.consistency=kl",
     "objective.variant=qtrades"),
    ({"objective": {"variant": "trades", "reduction": "sum"}}, "objective.reduction=sum",
     "objective.variant=qtrades"),
    ({"objective": {"variant": "pgd_at"}, "attack": {"loss": "mse"}}, "attack.loss=mse",
     "objective.variant=qtrades"),
    ({"objective": {"variant": "magnet", "lam": 2.0}}, "objective.lam=2.0", "trades"),
    ({"objective": {"variant": "trades", "lam_ce": 1.0}}, "objective.lam_ce=1.0", "magnet_adv"),
    ({"objective": {"free_replays": 8}}, "objective.free_replays=8", "adv_mode=free"),
    ({"optim": {"momentum": 0.5}}, "optim.momentum=0.5", "optim.optimizer=sgd"),
    ({"optim": {"batch_size": 64}}, "optim.batch_size=64", "non-clustering"),
    ({"model": {"arch": "resnet18", "embedding_dim": 64}}, "model.embedding_dim=64",
     "model.arch=small_cnn"),
    ({"attack": {"target": "head"}}, "attack.target=head", "magnet_adv"),
    ({"objective": {"variant": "pgd_at", "lam_head_adv": 1.0}}, "objective.lam_head_adv=1.0",
     "qtrades or magnet_adv"),
    ({"objective": {"head_adv_loss": "kl"}}, "objective.head_adv_loss=kl", "lam_head_adv > 0"),
    ({"warm_start": {"variant": "pgd_at"}}, "warm_start.variant=pgd_at", "ce_epochs > 0"),
    ({"warm_start": {"ce_epochs": 1, "beta": 3.0}}, "warm_start.beta=3.0",
     "warm_start.variant=trades"),
    ({"warm_start": {"ce_epochs": 1, "eps_ramp": True}}, "warm_start.eps_ramp=True",
     "adversarial warm_start.variant"),
])
def test_a_setting_the_config_would_ignore_is_refused(data, setting, used_with) -> None:
    with pytest.raises(ConfigError) as info:
        build_config(data)
    one_line_error(info, f"{setting} would be ignored", used_with)


def test_the_same_settings_are_accepted_where_they_are_used() -> None:
    build_config({"objective": {"variant": "qtrades", "consistency": "kl", "reduction": "sum",
                                "lam_ce": 1.0}, "attack": {"loss": "mse"}})
    build_config({"objective": {"variant": "trades", "lam": 2.0}})
    build_config({"objective": {"variant": "magnet_adv", "adv_mode": "free",
                                "free_replays": 8}})
    build_config({"optim": {"optimizer": "sgd", "momentum": 0.5}})
    build_config({"objective": {"variant": "pgd_at"}, "optim": {"batch_size": 64}})
    # defaults left as they are never count as set: a baseline may share a clustering base
    build_config({"objective": {"variant": "ce", "lam": 8.0, "consistency": "ce"}})
    l2 = build_config({"objective": {"variant": "magnet_adv", "lam_head_adv": 1.0,
                                     "head_adv_loss": "kl"},
                       "attack": {"norm": "l2", "target": "margin"},
                       "warm_start": {"ce_epochs": 2, "variant": "trades", "beta": 3.0,
                                      "eps_ramp": True, "attack_steps": 5}})
    assert l2.eps == 1.5  # Fashion-MNIST's usual L2 radius
    assert build_config({"data": {"dataset": "digits"}, "attack": {"norm": "l2"}}).eps == 0.5


def test_a_recorded_config_reads_ignored_settings_as_what_the_trial_used() -> None:
    """Trials recorded before conditional spaces (results/cpu-ablation) drew a consistency for
    magnet_adv, which ignored it: read back, the config says what the trial trained with."""
    from trainable import recorded_config

    record = {"objective": {"variant": "magnet_adv", "consistency": "kl", "lam": 2.0},
              "attack": {"loss": "mse"}}
    cfg = recorded_config(record)
    assert (cfg.objective.consistency, cfg.attack.loss, cfg.objective.lam) == ("ce", "ce", 2.0)
    assert not cfg.ignored_settings()
    with pytest.raises(ConfigError, match="objective.consistency=kl would be ignored"):
        build_config(record)  # a new config saying so is refused
    with pytest.raises(ConfigError, match="clusters.l=99"):
        recorded_config({"clusters": {"l": 99}})  # anything else is as strict as ever


def test_learned_head_is_fine_with_lam_ce_or_for_linear_variants() -> None:
    build_config({"clusters": {"head": "learned"}, "objective": {"lam_ce": 0.5}})
    build_config({"clusters": {"head": "learned"}, "objective": {"variant": "ce"}})
    build_config({"objective": {"variant": "magnet_adv", "adv_mode": "free"}})


def test_set_errors_come_through_load_config() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(preset="paper-qtrades", overrides=["clusters.l=25"])
    one_line_error(info, "clusters.l=25")
    with pytest.raises(ConfigError) as info:
        load_config(preset="paper-qtrades", overrides=["attack.eps=-1"])
    one_line_error(info, "attack.eps")
    with pytest.raises(ConfigError) as info:
        load_config(overrides=["optim.epochz=3"])
    one_line_error(info, "optim.epochz")


def test_unknown_preset() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(preset="paper-nonsense")
    one_line_error(info, "paper-nonsense", "paper-qtrades")


def test_config_files(tmp_path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("data:\n  dataset: digits\nclusters:\n  k: 1\n  l: 10\n  m: 10\n")
    cfg = load_config(config_file=good, overrides=["clusters.d=4"])
    assert cfg.data.dataset == "digits" and cfg.batch_size == 40
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_config(config_file=empty) == build_config({})
    with pytest.raises(ConfigError) as info:
        load_config(preset="paper-qtrades", config_file=good)
    one_line_error(info, "--preset", "--config")


@pytest.mark.parametrize("text,names", [
    ("data:\n  dataset: [digits\n", ["malformed YAML", "line"]),
    ("clusters:\n\tk: 2\n", ["malformed YAML"]),
    ("- a\n- b\n", ["mapping"]),
    ("clusters:\n  kk: 2\n", ["clusters.kk", "unknown key"]),
])
def test_bad_config_files(tmp_path, text: str, names: list[str]) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(config_file=path)
    message = one_line_error(info, *names)
    if "YAML" in message or "mapping" in message:
        assert str(path) in message


def test_missing_config_file(tmp_path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(config_file=tmp_path / "nope.yaml")
    one_line_error(info, "nope.yaml")


def test_config_round_trips_through_json() -> None:
    cfg = load_config(preset="paper-trades-2", overrides=["seed=5"])
    assert build_config(cfg.model_dump(mode="json")) == cfg
