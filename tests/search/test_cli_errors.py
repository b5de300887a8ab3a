"""Bad search input is refused with one line and exit code 2, before Ray starts."""

from __future__ import annotations

import pytest
import yaml

from analysis import ExperimentMeta
from search import SearchConfig, cli


@pytest.fixture
def no_ray(monkeypatch):
    def refuse(*_args, **_kwargs):
        raise AssertionError("Ray was started for a bad config")

    monkeypatch.setattr("search._run.start_ray", refuse)  # search, resume, confirm
    monkeypatch.setattr("search._tuner.start_ray", refuse)  # evaluate


def _experiment_folder(path, **search) -> str:
    """A minimal experiment on disk (only its clustune.json): enough for a command to reach
    its own checks of the options."""
    path.mkdir()
    cfg = SearchConfig.model_validate({"train": {"data": {"dataset": "digits"}},
                                       "points": {"a": {}}, "search": search})
    meta = ExperimentMeta(name=path.name, created="2026-12-06T03:00:00",
                          study_name=f"clustune-{path.name}",
                          study_storage="sqlite:///nowhere.db",
                          config=cfg.model_dump(mode="json"), base=cfg.base_dict())
    (path / "clustune.json").write_text(meta.model_dump_json())
    return str(path)


def _run(capsys, *argv: str) -> tuple[int, str]:
    code = cli.main(list(argv))
    err = capsys.readouterr().err.strip()
    return code, err


@pytest.mark.parametrize("data, needle", [
    ({"space": {"clusters.k": {"type": "int", "low": 3, "high": 1}}}, "low <= high"),
    ({"space": {"clusters.kk": {"type": "int", "low": 1, "high": 2}}}, "clusters.kk"),
    ({"space": {"clusters.head": {"type": "categorical", "choices": []}}}, "choices"),
    ({"space": {"clusters.head": {"type": "categorical", "choices": ["learned"]}}}, "lam_ce"),
    ({"space": {"objective.lam": {"type": "float", "low": 0, "high": 1, "log": True}}}, "log"),
    ({"space": {"clusters.k": {"type": "int", "low": 1, "high": 2}},
      "search": {"sampler": "annealing"}}, "search.sampler"),
    ({"space": {"clusters.k": {"type": "int", "low": 1, "high": 2}},
      "search": {"metric": "val_nonsense"}}, "val_nonsense"),
    ({"space": {"clusters.k": {"type": "int", "low": 1, "high": 2}},
      "search": {"num_samples": 0}}, "num_samples"),
    ({"space": {"clusters.k": {"type": "int", "low": 1, "high": 2}},
      "search": {"final_attacks": ["apgd-ce", "pgd"]}}, "unknown attack(s) pgd"),
    ({"space": {"clusters.k": {"type": "int", "low": 1, "high": 2}},
      "search": {"final_attacks": []}}, "name each attack once"),
    ({"search": {"num_samples": 2}}, "space or points"),
    ({"points": {"a": {"clusters": {"l": 99}}}}, "points.a"),
])
def test_bad_search_configs_are_rejected_before_ray(tmp_path, capsys, no_ray, data, needle):
    data.setdefault("train", {"data": {"dataset": "digits"}, "clusters": {"m": 10, "l": 10}})
    f = tmp_path / "bad.yaml"
    f.write_text(yaml.safe_dump(data))
    code, err = _run(capsys, "search", "--config", str(f), "--storage", str(tmp_path))
    assert code == 2
    assert needle in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err


def test_space_that_breaks_a_constraint_is_named(tmp_path, capsys, no_ray):
    f = tmp_path / "bad.yaml"
    f.write_text(yaml.safe_dump({"train": {"data": {"dataset": "digits"}},
                                 "space": {"clusters.k": {"type": "int", "low": 1, "high": 2}}}))
    code, err = _run(capsys, "search", "--config", str(f))
    assert code == 2 and "clusters.m=12 exceeds C*K=10" in err


def test_unknown_preset_and_malformed_yaml(tmp_path, capsys, no_ray):
    code, err = _run(capsys, "search", "--preset", "nope")
    assert code == 2 and "unknown search preset" in err
    f = tmp_path / "broken.yaml"
    f.write_text("space: [unclosed\n")
    code, err = _run(capsys, "search", "--config", str(f))
    assert code == 2 and "malformed YAML" in err


def test_existing_experiment_folder_is_never_overwritten(tmp_path, capsys, no_ray):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "clustune.json").write_text("{}")
    code, err = _run(capsys, "search", "--storage", str(tmp_path), "--name", "taken")
    assert code == 2 and "clustune resume" in err
    assert (tmp_path / "taken" / "clustune.json").read_text() == "{}"


def test_unreachable_cluster_address(tmp_path, capsys):
    code, err = _run(capsys, "search", "--address", "127.0.0.1:9", "--storage", str(tmp_path))
    assert code == 2 and "cannot reach a Ray cluster" in err
    assert not any(tmp_path.iterdir())


def test_resume_and_status_need_an_experiment(tmp_path, capsys):
    for command in ("resume", "status", "evaluate"):
        code, err = _run(capsys, command, str(tmp_path))
        assert code == 2 and "not a clustune experiment" in err


def test_every_command_has_help(capsys):
    for command in ("train", "search", "resume", "status", "evaluate", "confirm", "presets",
                    "export", "best", "report", "dashboard"):
        with pytest.raises(SystemExit) as exit_info:
            cli.main([command, "--help"])
        assert exit_info.value.code == 0
        assert "usage: clustune" in capsys.readouterr().out


def test_resources_this_machine_lacks_are_refused_before_ray(tmp_path, capsys, no_ray,
                                                            monkeypatch):
    """An embedded Ray would wait for ever for a GPU, or more CPUs, that are not there."""
    import os

    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    code, err = _run(capsys, "search", "--preset", "quick", "--gpus-per-trial", "0.25",
                     "--storage", str(tmp_path), "--name", "gpu")
    assert code == 2 and "0.25 GPUs asked for, and this machine has 0" in err \
        and len(err.splitlines()) == 1
    assert not (tmp_path / "gpu").exists()
    cores = os.cpu_count()
    code, err = _run(capsys, "search", "--preset", "quick", "--cpus-per-trial", str(cores + 1),
                     "--storage", str(tmp_path), "--name", "cpu")
    assert code == 2 and f"{cores + 1} CPUs per task, and this machine" in err
    assert not (tmp_path / "cpu").exists()
    experiment = _experiment_folder(tmp_path / "exp", gpus_per_trial=1)
    code, err = _run(capsys, "evaluate", experiment, "--gpus-per-task", "0.5")
    assert code == 2 and "--gpus-per-task: 0.5 GPUs asked for" in err
    code, err = _run(capsys, "evaluate", experiment, "--gpus-per-task", "-1")
    assert code == 2 and "GPUs at least 0" in err
    code, err = _run(capsys, "resume", experiment)
    assert code == 2 and "the search's cpus_per_trial/gpus_per_trial: 1 GPUs asked for" in err


def test_contradictory_or_unknown_audit_attacks_are_refused(tmp_path, capsys, no_ray):
    experiment = tmp_path / "exp"
    _experiment_folder(experiment)
    code, err = _run(capsys, "evaluate", str(experiment), "--version", "plus",
                     "--attacks", "apgd-ce,apgd-t")
    assert code == 2 and "--attacks replaces --version's ensemble" in err
    for command in ("evaluate", "confirm"):
        for value, needle in (("apgd-ce,pgd", "unknown attack(s) pgd"),
                              ("apgd-t,apgd-t", "name each attack once"), (",", "once")):
            with pytest.raises(SystemExit) as exit_info:  # refused by the argument parser
                cli.main([command, str(experiment), "--attacks", value])
            err = capsys.readouterr().err.strip()
            assert exit_info.value.code == 2 and needle in err and len(err.splitlines()) == 1
    assert sorted(p.name for p in experiment.iterdir()) == ["clustune.json"]


def test_confirm_refuses_too_few_seeds(tmp_path, capsys, no_ray):
    experiment = _experiment_folder(tmp_path / "exp")
    for seeds in ("0", "1"):  # 0 is a number given, not "use the default"
        code, err = _run(capsys, "confirm", experiment, "--seeds", seeds)
        assert code == 2 and "--seeds must be at least 2" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "exp" / "confirm").exists()
