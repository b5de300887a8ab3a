"""Parquet exports and best configs from hand-written experiment folders (no Ray)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from analysis import (
    EPOCHS_SCHEMA,
    TRIALS_SCHEMA,
    best_configs,
    export_experiment,
    load_experiment,
)
from search import load_search_config
from search.cli import main
from trainable import Trainer, load_config, resolve_trial_config

DOCS = Path(__file__).resolve().parents[2] / "docs" / "exports.md"
PARAMS = ["param.clusters.k", "param.clusters.l", "param.objective.lam"]
AA = [f"aa.logprob.{k}" for k in ("n_examples", "eps", "version", "batch_size", "clean_acc",
                                   "autoattack_acc", "ce_only_acc", "adaptive_acc",
                                   "worst_case_acc", "per_attack_acc", "flags", "wall_time_s")]


def _documented() -> set[str]:
    """Column names in the first cell of docs/exports.md's table rows (several per cell)."""
    names = set()
    for line in DOCS.read_text().splitlines():
        if line.startswith("| `"):
            names |= set(re.findall(r"`([^`]+)`", line.split("|")[1]))
    return names


def _pattern(column: str) -> str:
    if column.startswith("param."):
        return "param.<name>"
    if column.startswith("aa."):
        return "aa.<head>." + column.rsplit(".", 1)[1]
    return column


def _rows(path: Path) -> dict[str, dict]:
    return {r["trial_id"]: r for r in pq.read_table(path).to_pylist()}


def test_trials_parquet_has_exactly_the_documented_columns(finished_experiment, tmp_path):
    written = export_experiment(finished_experiment.path, tmp_path / "out")
    schema = pq.read_table(written["trials"]).schema
    assert schema.names == TRIALS_SCHEMA.names + PARAMS + AA
    for f in TRIALS_SCHEMA:
        assert schema.field(f.name).type == f.type
    assert schema.field("param.clusters.k").type == pa.int64()
    assert schema.field("param.objective.lam").type == pa.float64()
    assert schema.field("aa.logprob.clean_acc").type == pa.float64()
    assert schema.field("aa.logprob.flags").type == pa.list_(pa.string())
    assert schema.field("aa.logprob.n_examples").type == pa.int64()
    assert schema.field("aa.logprob.per_attack_acc").type == pa.map_(pa.string(), pa.float64())
    assert schema.metadata[b"clustune.schema"] == b"clustune-export-v2"
    assert schema.metadata[b"clustune.metric"] == b"val_robust_acc"
    assert {_pattern(c) for c in schema.names} <= _documented()


def test_trials_parquet_values(finished_experiment, tmp_path):
    fake = finished_experiment
    rows = _rows(export_experiment(fake.path, tmp_path)["trials"])
    experiment = load_experiment(fake.path)
    assert set(rows) == set(fake.trials)
    for tid, (params, curve) in fake.trials.items():
        row = rows[tid]
        assert row["status"] == "TERMINATED" and row["epochs"] == len(curve)
        assert row["best.val_robust_acc"] == max(curve)
        assert row["best_epoch"] == curve.index(max(curve)) + 1
        assert row["last.val_robust_acc"] == curve[-1]
        assert {k: row[f"param.{k}"] for k in params} == params
        trial = next(t for t in experiment.trials if t.trial_id == tid)
        assert json.loads(row["config_json"]) == experiment.trial_config(trial).model_dump(
            mode="json")
        assert row["diverged"] is None and row["error"] is None
    aa = rows[fake.aa_trial]
    assert aa["aa.logprob.clean_acc"] == fake.aa_result["clean_acc"]
    assert aa["aa.logprob.autoattack_acc"] == fake.aa_result["autoattack_acc"]
    assert aa["aa.logprob.flags"] == ["ce_gap"]
    assert aa["aa.logprob.ce_only_acc"] == fake.aa_result["ce_only_acc"]
    assert aa["aa.logprob.n_examples"] == fake.aa_result["n_examples"]
    assert dict(aa["aa.logprob.per_attack_acc"]) == fake.aa_result["per_attack_acc"]
    assert aa["aa.logprob.adaptive_acc"] is None  # not in the result: not run
    others = [r for tid, r in rows.items() if tid != fake.aa_trial]
    assert all(r["aa.logprob.clean_acc"] is None for r in others)


def test_epochs_parquet(finished_experiment, tmp_path):
    fake = finished_experiment
    table = pq.read_table(export_experiment(fake.path, tmp_path)["epochs"])
    names = table.schema.names
    assert names[:2] == EPOCHS_SCHEMA.names
    assert table.schema.field("trial_id").type == pa.string()
    assert table.schema.field("epoch").type == pa.int64()
    metrics = names[2:]
    assert metrics == sorted(metrics)
    assert all(table.schema.field(m).type == pa.float64() for m in metrics)
    assert {"val_robust_acc", "cluster_size_min", "time_total_s"} <= set(metrics)
    assert not {"pid", "timestamp", "training_iteration", "done"} & set(metrics)
    assert set(names) <= _documented()
    assert table.num_rows == sum(len(curve) for _, curve in fake.trials.values())
    rows = [r for r in table.to_pylist() if r["trial_id"] == fake.aa_trial]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert [r["val_robust_acc"] for r in rows] == fake.trials[fake.aa_trial][1]


@pytest.mark.parametrize("running", [False, True])
def test_an_export_reads_back_as_the_experiment(fake_experiment, tmp_path, running):
    """load_experiment on an export folder gives the trials, histories, configs and final
    results the experiment folder gives, and exporting it again writes the same tables."""
    fake = fake_experiment(tmp_path, running=running)
    original = load_experiment(fake.path)
    written = export_experiment(fake.path, tmp_path / "export")
    exported = load_experiment(tmp_path / "export")
    assert exported.exported and not original.exported
    assert exported.meta == original.meta and exported.name == original.name
    numeric = {"training_iteration", "val_clean_acc", "val_pgd_acc", "val_robust_acc",
               "train_loss", "sigma2", "val_margin", "time_total_s"}
    for a, b in zip(original.trials, exported.trials, strict=True):
        assert (a.trial_id, a.status, a.params, a.error) == (b.trial_id, b.status, b.params,
                                                               b.error)
        assert [{k: r[k] for k in numeric} for r in a.history] == \
            [{k: r[k] for k in numeric} for r in b.history]
        assert original.trial_config(a) == exported.trial_config(b)
        assert a.best() == {} or a.best()["val_robust_acc"] == b.best()["val_robust_acc"]
    assert [t.trial_id for t in exported.proxy_ranked()] == \
        [t.trial_id for t in original.proxy_ranked()]
    summary = ("trial_id", "head", "clean_acc", "autoattack_acc", "ce_only_acc", "n_examples",
               "per_attack_acc", "masking_flags")
    assert [{k: r[k] for k in summary} for r in exported.final_results()] == \
        [{k: r[k] for k in summary} for r in original.final_results()]
    again = export_experiment(tmp_path / "export", tmp_path / "again")
    for name in ("trials", "epochs"):
        assert pq.read_table(again[name]).equals(pq.read_table(written[name]))


def test_an_export_of_another_kind_is_refused_in_one_line(tmp_path, capsys):
    pq.write_table(pa.table({"trial_id": ["x"]}), tmp_path / "trials.parquet")
    pq.write_table(pa.table({"trial_id": ["x"]}), tmp_path / "epochs.parquet")
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "r.md")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "is not a clustune export (clustune-export-v1 or " in err
    assert not (tmp_path / "r.md").exists()


def test_export_of_a_running_search(running_experiment, tmp_path):
    fake = running_experiment
    written = export_experiment(fake.path, tmp_path)
    rows = _rows(written["trials"])
    pending = rows[fake.pending]
    assert pending["status"] == "PENDING" and pending["epochs"] == 0
    assert pending["best.val_robust_acc"] is None and pending["best_epoch"] is None
    assert [r["status"] for r in rows.values()].count("RUNNING") == 1
    assert sorted(r["epochs"] for r in rows.values()) == [0, 1, 2, 3]
    assert pq.read_table(written["trials"]).schema.names == TRIALS_SCHEMA.names + PARAMS
    assert pq.read_table(written["epochs"]).num_rows == 3 + 2 + 1


def test_export_replaces_its_files_atomically(finished_experiment, tmp_path, monkeypatch):
    """A second export interrupted as it renames its first file into place leaves the first
    export whole (and no temporary file); uninterrupted, it replaces it."""
    import os

    first = export_experiment(finished_experiment.path, tmp_path)
    before = {name: path.read_bytes() for name, path in first.items()}
    real_replace = os.replace

    def power_cut(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", power_cut)
    with pytest.raises(KeyboardInterrupt):
        export_experiment(finished_experiment.path, tmp_path)
    assert {name: path.read_bytes() for name, path in first.items()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epochs.parquet", "trials.parquet"]
    monkeypatch.setattr(os, "replace", real_replace)
    assert export_experiment(finished_experiment.path, tmp_path) == first


def test_epochs_reported_again_after_a_restore_replace_the_abandoned_ones(fake_experiment,
                                                                          tmp_path):
    """A trial restored from an older checkpoint (a retry, a resume after SIGKILL) reports
    epochs again; its history continues from the restored epoch."""
    exp = fake_experiment(tmp_path)
    trial = next(t for t in load_experiment(exp.path).trials if t.epochs == 3)
    result_file = trial.path.local / "result.json"
    rows = [json.loads(line) for line in result_file.read_text().splitlines()]
    rerun = {**rows[1], "val_robust_acc": 0.5, "iterations_since_restore": 1}
    with result_file.open("a") as f:  # restored after epoch 1: epoch 2 again
        f.write(json.dumps(rerun) + "\n")
    again = next(t for t in load_experiment(exp.path).trials if t.trial_id == trial.trial_id)
    assert again.history == [rows[0], rerun]
    assert again.best()["val_robust_acc"] == 0.5


def test_points_search_exports_the_point_name(fake_experiment, tmp_path):
    path = fake_experiment(tmp_path, points=True).path
    table = pq.read_table(export_experiment(path)["trials"])
    assert table.schema.field("param.point").type == pa.string()
    assert sorted(table.column("param.point").to_pylist()) == ["qtrades", "trades"]
    configs = [json.loads(c) for c in table.column("config_json").to_pylist()]
    assert sorted(c["objective"]["variant"] for c in configs) == ["qtrades", "trades"]
    assert (path / "export" / "trials.parquet").is_file()


def test_best_configs_load_unchanged_and_train(finished_experiment, tmp_path):
    fake = finished_experiment
    files = best_configs(fake.path, top=2, out=tmp_path, include_flagged=True)
    ranked = sorted(fake.trials, key=lambda tid: -max(fake.trials[tid][1]))
    assert ranked[0] == fake.aa_trial  # the only audited trial: first, though flagged
    assert [f.name for f in files] == [f"01-{ranked[0]}.yaml", f"02-{ranked[1]}.yaml"]
    text = files[0].read_text()
    assert text.startswith("# clustune best config 1 of 2: rank 1 by the audit, flagged")
    assert ranked[0] in text and "fake" in text and "# flag ce_gap(logprob: 23.0 points)" in text
    assert files[1].read_text().startswith("# clustune best config 2 of 2: rank 2 by the proxy")
    experiment = load_experiment(fake.path)
    trial = next(t for t in experiment.trials if t.trial_id == ranked[0])
    expected = experiment.trial_config(trial).model_dump()
    cfg = load_config(config_file=files[0])
    assert cfg.model_dump() == expected
    assert cfg.warm_start.ce_epochs == 1 and cfg.warm_start.checkpoint is None
    search = load_search_config(config_file=files[0])
    point = resolve_trial_config(search.base_dict(), search.points, {"point": "config"})
    assert point.model_dump() == expected

    quick = load_config(config_file=files[0], overrides=[
        "optim.batches_per_epoch=2", "eval.examples=20", "warm_start.ce_epochs=0"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small only loses time to thread contention
    try:
        metrics = Trainer(quick, device="cpu").train_epoch()
    finally:
        torch.set_num_threads(threads)
    assert 0 <= metrics["val_clean_acc"] <= 1 and 0 <= metrics["val_robust_acc"] <= 1


def test_best_configs_replace_an_earlier_ranking(finished_experiment, tmp_path):
    (tmp_path / "mine.yaml").write_text("seed: 1\n")
    best_configs(finished_experiment.path, top=3, out=tmp_path)
    files = best_configs(finished_experiment.path, top=1, out=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [files[0].name, "mine.yaml"]


def test_best_configs_of_a_running_search_skip_trials_without_epochs(running_experiment):
    fake = running_experiment
    files = best_configs(fake.path, top=10)
    assert len(files) == 3 and all(fake.pending not in f.name for f in files)
    assert files[0].parent.local == fake.path / "best"


def test_cli_export_and_best(finished_experiment, tmp_path, capsys):
    path = str(finished_experiment.path)
    assert main(["export", path, "--out", str(tmp_path / "x")]) == 0
    assert (tmp_path / "x" / "trials.parquet").is_file()
    assert main(["best", path, "--top", "1", "--out", str(tmp_path / "b")]) == 0
    out = capsys.readouterr().out.split()
    assert out[-1] == str(tmp_path / "b" / "01-b2c3d4e5.yaml")  # the audited a1b2c3d4 is flagged


@pytest.mark.parametrize("command", ["export", "best", "report", "dashboard"])
def test_cli_rejects_a_folder_that_is_not_an_experiment(command, tmp_path, capsys):
    assert main([command, str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "not a clustune experiment" in err


def test_cli_reports_an_unwritable_output_in_one_line(finished_experiment, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["export", str(finished_experiment.path), "--out", str(blocker / "sub")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("clustune: error: cannot write") and "\n" not in err


@pytest.mark.parametrize("command", ["export", "best", "report", "dashboard"])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "the experiment" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["status", "export", "best", "report"])
def test_reading_commands_say_which_damaged_result_they_skip(fake_experiment, tmp_path, capsys,
                                                            command):
    fake = fake_experiment(tmp_path)
    damaged = fake.path / "final" / "b2c3d4e5-raw.json"
    damaged.write_bytes(b'{"clean_acc": 0.5, "cut')
    assert main([command, str(fake.path)]) == 0
    err = capsys.readouterr().err
    assert f"clustune: warning: skipped {damaged}: unreadable (JSONDecodeError)" in err
    assert err.count("skipped") == 1  # said once, however often the command reads the folder


def test_reading_commands_go_on_without_a_damaged_study_or_search_state(fake_experiment,
                                                                       tmp_path, capsys):
    """report without a study's importances, status without Tune's trial statuses: each says
    which file it skipped and why."""
    fake = fake_experiment(tmp_path)
    (fake.path / "optuna.db").write_bytes(b"SQLite format 3\0 but cut short")
    state = fake.path / "experiment_state-2026-12-06_03-00-00.json"
    state.write_text('{"trial_data": [')
    assert main(["report", str(fake.path)]) == 0
    err = capsys.readouterr().err
    assert f"clustune: warning: skipped {fake.path / 'optuna.db'}: not an sqlite database" in err
    assert main(["status", str(fake.path)]) == 0
    err = capsys.readouterr().err
    assert f"clustune: warning: skipped {state} is unreadable (JSONDecodeError)" in err
