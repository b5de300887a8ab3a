"""An experiment as Parquet tables (every trial, every epoch) and its best trials as runnable
training configs, so results can be analysed outside clustune and the winners re-run.

The Parquet schemas are fixed (``TRIALS_SCHEMA``, ``EPOCHS_SCHEMA``) and documented column by
column in docs/exports.md; only the searched parameters, the AutoAttack heads and the reported
metrics add columns, named by fixed patterns. Files are written atomically, so exporting a
running search is safe and a reader never sees half a file.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from trainable import StoragePath, storage_path

from ._confirmation import CONFIRM_DIR, Confirmation, has_confirmation, load_confirmations
from ._ranking import RankedTrial, rank_trials
from ._results import (
    EXPORT_EPOCHS,
    EXPORT_TRIALS,
    Experiment,
    ExperimentError,
    TrialRecord,
    load_experiment,
    parse_meta,
)

__all__ = ["EXPORT_SCHEMA_VERSION", "TRIALS_SCHEMA", "EPOCHS_SCHEMA", "TRIAL_METRICS",
           "export_experiment", "best_configs"]

EXPORT_SCHEMA_VERSION = "clustune-export-v2"
READABLE_SCHEMAS = ("clustune-export-v1", EXPORT_SCHEMA_VERSION)  # v1: before the ranking
TRIAL_METRICS = ("val_clean_acc", "val_pgd_acc", "val_robust_acc", "sigma2", "val_margin")

TRIALS_SCHEMA = pa.schema([
    pa.field("trial_id", pa.string(), nullable=False),
    pa.field("status", pa.string(), nullable=False),
    pa.field("epochs", pa.int64(), nullable=False),
    pa.field("best_epoch", pa.int64()),
    pa.field("diverged", pa.string()),
    pa.field("error", pa.string()),
    pa.field("config_json", pa.string(), nullable=False),
    pa.field("rank", pa.int64()),
    pa.field("ranked_by", pa.string()),
    pa.field("audited_acc", pa.float64()),
    pa.field("flagged", pa.bool_()),
    pa.field("flags", pa.list_(pa.string())),
    *[pa.field(f"best.{m}", pa.float64()) for m in TRIAL_METRICS],
    *[pa.field(f"last.{m}", pa.float64()) for m in TRIAL_METRICS],
])
"""Fixed columns of trials.parquet; then ``param.<name>`` by name, then ``aa.<head>.*``."""

AA_FIELDS = {"n_examples": pa.int64(), "eps": pa.float64(), "version": pa.string(),
             "batch_size": pa.int64(), "clean_acc": pa.float64(),
             "autoattack_acc": pa.float64(), "ce_only_acc": pa.float64(),
             "adaptive_acc": pa.float64(), "worst_case_acc": pa.float64(),
             "per_attack_acc": pa.map_(pa.string(), pa.float64()),
             "flags": pa.list_(pa.string()), "wall_time_s": pa.float64()}
"""The final stage's summary per head (the result's field names; flags: masking_flags)."""

EPOCHS_SCHEMA = pa.schema([
    pa.field("trial_id", pa.string(), nullable=False),
    pa.field("epoch", pa.int64(), nullable=False),
])
"""Fixed columns of epochs.parquet; then every numeric metric by name, as float64."""

# numeric but not metrics of the model: Ray Tune bookkeeping, and the epoch counter itself
NOT_METRICS = frozenset({"training_iteration", "epoch", "pid", "timestamp",
                         "iterations_since_restore"})

BEST_HEADER = "# clustune best config"


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _param_type(values: list[Any]) -> pa.DataType:
    """The narrowest Arrow type holding every (non-null) value of one searched parameter."""
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, bool) for v in present):
        return pa.bool_()
    if present and all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return pa.int64()
    if present and all(_number(v) for v in present):
        return pa.float64()
    return pa.string()


def _param_column(values: list[Any], kind: pa.DataType) -> list[Any]:
    if kind == pa.string():
        return [v if v is None or isinstance(v, str) else json.dumps(v) for v in values]
    if kind == pa.float64():
        return [None if v is None else float(v) for v in values]
    return values


def _metric(row: dict[str, Any], name: str) -> float | None:
    v = row.get(name)
    return float(v) if _number(v) else None


def _parquet(table: pa.Table, path: StoragePath) -> None:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    path.atomic_write_bytes(sink.getvalue().to_pybytes())


def _metadata(experiment: Experiment) -> dict[str, str]:
    return {"clustune.schema": EXPORT_SCHEMA_VERSION,
            "clustune.experiment": experiment.name,
            "clustune.metric": experiment.metric, "clustune.mode": experiment.mode,
            "clustune.meta": experiment.meta.model_dump_json()}  # key order kept: points are rows


def _trials_table(experiment: Experiment) -> pa.Table:
    """One row per trial in the order of the ranking (unranked trials last); best.* is the
    epoch that scored best on the search metric."""
    ranking = {r.trial.trial_id: r for r in rank_trials(experiment)}
    trials = [r.trial for r in ranking.values()] + \
        [t for t in experiment.trials if t.trial_id not in ranking]
    columns: dict[str, list[Any]] = {name: [] for name in TRIALS_SCHEMA.names}
    for t in trials:
        ranked: RankedTrial | None = ranking.get(t.trial_id)
        columns["rank"].append(ranked and ranked.rank)
        columns["ranked_by"].append(ranked and ranked.ranked_by)
        columns["audited_acc"].append(ranked and ranked.audited_acc)
        columns["flagged"].append(ranked and ranked.flagged)
        columns["flags"].append([str(f) for f in ranked.flags] if ranked else [])
        best, last = t.best(experiment.metric, experiment.mode), t.last
        columns["trial_id"].append(t.trial_id)
        columns["status"].append(t.status)
        columns["epochs"].append(t.epochs)
        columns["best_epoch"].append(best.get("training_iteration"))
        columns["diverged"].append(t.diverged)
        columns["error"].append(t.error)
        columns["config_json"].append(
            json.dumps(experiment.trial_config(t).model_dump(mode="json"), sort_keys=True))
        for m in TRIAL_METRICS:
            columns[f"best.{m}"].append(_metric(best, m))
            columns[f"last.{m}"].append(_metric(last, m))
    fields = list(TRIALS_SCHEMA)
    for name in sorted({k for t in trials for k in t.params}):
        values = [t.params.get(name) for t in trials]
        kind = _param_type(values)
        fields.append(pa.field(f"param.{name}", kind))
        columns[f"param.{name}"] = _param_column(values, kind)
    finals = {(r["trial_id"], r["head"]): r for r in experiment.final_results()}
    for head in sorted({h for _, h in finals}):
        for key, kind in AA_FIELDS.items():
            name = f"aa.{head}.{key}"
            fields.append(pa.field(name, kind))
            source = "masking_flags" if key == "flags" else key
            values = [finals.get((t.trial_id, head), {}).get(source) for t in trials]
            if key == "per_attack_acc":
                values = [None if v is None else list(v.items()) for v in values]
            columns[name] = values
    schema = pa.schema(fields, metadata=_metadata(experiment))
    return pa.table({f.name: columns[f.name] for f in fields}, schema=schema)


def _epochs_table(experiment: Experiment) -> pa.Table:
    """One row per trial and reported epoch, every numeric metric a float64 column."""
    rows = [(t.trial_id, row) for t in experiment.trials for row in t.history]
    names = sorted({k for _, row in rows for k, v in row.items()
                    if _number(v) and k not in NOT_METRICS})
    columns: dict[str, list[Any]] = {
        "trial_id": [tid for tid, _ in rows],
        "epoch": [int(row["training_iteration"]) for _, row in rows],
        **{n: [_metric(row, n) for _, row in rows] for n in names}}
    fields = list(EPOCHS_SCHEMA) + [pa.field(n, pa.float64()) for n in names]
    schema = pa.schema(fields, metadata=_metadata(experiment))
    return pa.table(columns, schema=schema)


def export_experiment(path: str | Path | StoragePath, out: str | Path | StoragePath | None = None
                      ) -> dict[str, StoragePath]:
    """Write trials.parquet and epochs.parquet to out (default: EXPERIMENT/export); either may
    be a local folder or a location in cloud storage."""
    experiment = load_experiment(path)
    out = storage_path(out) if out is not None else experiment.path / "export"
    written = {"trials": out / EXPORT_TRIALS, "epochs": out / EXPORT_EPOCHS}
    _parquet(_trials_table(experiment), written["trials"])
    _parquet(_epochs_table(experiment), written["epochs"])
    if has_confirmation(experiment.path):  # `clustune confirm`'s trials, exported alike
        confirmation = export_experiment(experiment.path / CONFIRM_DIR, out / CONFIRM_DIR)
        written |= {f"{CONFIRM_DIR}.{kind}": file for kind, file in confirmation.items()}
    return written


def _finals_from(rows: list[dict[str, Any]], names: list[str]) -> list[dict[str, Any]]:
    """The aa.<head>.* columns back as final-stage results (the summary fields only)."""
    heads = sorted({n.split(".")[1] for n in names if n.startswith("aa.")})
    finals = []
    for row in rows:
        for head in heads:
            if row.get(f"aa.{head}.autoattack_acc") is None:
                continue
            result: dict[str, Any] = {"trial_id": row["trial_id"], "head": head}
            for key in AA_FIELDS:
                value = row.get(f"aa.{head}.{key}")
                if key == "per_attack_acc":
                    value = dict(value or [])
                result["masking_flags" if key == "flags" else key] = value
            finals.append(result)
    return finals


def load_export(path: str | Path | StoragePath) -> Experiment:
    """An experiment read back from its Parquet export alone (trials.parquet, epochs.parquet):
    what `clustune report` needs to rebuild the tables from committed result files."""
    path = storage_path(path)
    try:
        trials = pq.read_table((path / EXPORT_TRIALS).path, filesystem=path.fs)
        epochs = pq.read_table((path / EXPORT_EPOCHS).path, filesystem=path.fs)
    except (OSError, pa.ArrowException) as err:
        raise ExperimentError(f"{path} holds no readable clustune export ({err})") from None
    metadata = trials.schema.metadata or {}
    schema = metadata.get(b"clustune.schema", b"").decode(errors="replace")
    if schema not in READABLE_SCHEMAS or b"clustune.meta" not in metadata:
        raise ExperimentError(f"{path / EXPORT_TRIALS} is not a clustune export "
                              f"({' or '.join(READABLE_SCHEMAS)}) carrying its experiment's "
                              "metadata (re-export the experiment)")
    histories: dict[str, list[dict[str, Any]]] = {}
    for row in epochs.to_pylist():
        history = histories.setdefault(row.pop("trial_id"), [])
        history.append({"training_iteration": row.pop("epoch"),
                        **{k: v for k, v in row.items() if v is not None}})
    rows = trials.to_pylist()
    records, configs = [], {}
    for row in rows:
        tid = row["trial_id"]
        history = histories.get(tid, [])
        if row["diverged"] and history:
            history[-1]["diverged"] = row["diverged"]
        params = {k.removeprefix("param."): v for k, v in row.items()
                  if k.startswith("param.") and v is not None}
        records.append(TrialRecord(tid, path, row["status"], params, history, row["error"]))
        configs[tid] = json.loads(row["config_json"])
    meta = parse_meta(metadata[b"clustune.meta"], path / EXPORT_TRIALS)
    return Experiment(path, meta, records, configs=configs,
                      finals=_finals_from(rows, trials.schema.names))


def _header(experiment: Experiment, ranked: RankedTrial, position: int, top: int,
            finals: list[dict[str, Any]], confirmed: Confirmation | None,
            baselines: list[Confirmation]) -> str:
    trial = ranked.trial
    best = trial.best(experiment.metric, experiment.mode)
    params = ", ".join(f"{k}={v}" for k, v in trial.params.items()) or "-"
    scores = "  ".join(f"{m}={best[m]:.4g}" for m in TRIAL_METRICS if _number(best.get(m)))
    lines = [f"{BEST_HEADER} {position} of {top}: rank {ranked.rank} by the {ranked.ranked_by} "
             f"({ranked.summary})",
             "# ranking: audited trials by worst-case robust accuracy over every attack and "
             "head, flagged ones after unflagged ones, then unaudited trials by "
             f"best {experiment.metric} ({experiment.mode}) on validation",
             f"# experiment: {experiment.name} ({experiment.path})",
             f"# trial: {trial.trial_id} ({trial.status}, {trial.epochs} epochs)  params: {params}",
             f"# best epoch {best.get('training_iteration')}: {scores}"]
    for r in finals:
        if r["trial_id"] == trial.trial_id:
            lines.append(f"# AutoAttack ({r['head']} head, {r.get('n_examples')} test images): "
                         f"clean={r.get('clean_acc')}  robust={r.get('autoattack_acc')}")
    lines += [f"# flag {f}" for f in ranked.flags]
    if confirmed is not None:
        lines.append(f"# confirmed with new seeds (clustune confirm): {confirmed.summary()}")
        for b in baselines:  # is it worth more than a baseline at the same budget?
            diff, low, high = confirmed.minus(b)
            lines.append(f"# minus baseline {b.config} ({b.mean:.3f} mean): {diff:+.3f}, 95 % "
                         f"Welch interval {low:+.3f} to {high:+.3f}")
    lines.append("# run: clustune train --config THIS_FILE   or   clustune search --config "
                 "THIS_FILE")
    return "\n".join(lines) + "\n"


def best_configs(path: str | Path | StoragePath, top: int = 3,
                 out: str | Path | StoragePath | None = None, include_flagged: bool = False
                 ) -> list[StoragePath]:
    """The top trials' resolved training configs as YAML (default folder: EXPERIMENT/best), in
    the order of :func:`rank_trials`; trials with a masking flag only with include_flagged.

    Files are named N-TRIAL.yaml; ones a previous call wrote there are replaced, so the
    folder always holds the current ranking. Diverged trials are never exported.
    """
    experiment = load_experiment(path)
    out = storage_path(out) if out is not None else experiment.path / "best"
    chosen = [r for r in rank_trials(experiment)
              if not r.trial.diverged and (include_flagged or not r.flagged)][:top]
    for old in out.glob("*.yaml"):  # nothing when out does not exist yet
        if re.fullmatch(r"\d+-\w+\.yaml", old.name) and \
                old.read_text().startswith(BEST_HEADER):
            old.unlink()
    finals = experiment.final_results()
    confirmations = load_confirmations(experiment.path)
    confirmed = {c.config: c for c in confirmations}
    baselines = [c for c in confirmations if c.baseline]
    written = []
    for position, ranked in enumerate(chosen, 1):
        cfg = experiment.trial_config(ranked.trial)
        body = yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
        file = out / f"{position:02d}-{ranked.trial.trial_id}.yaml"
        header = _header(experiment, ranked, position, len(chosen), finals,
                         confirmed.get(ranked.trial.trial_id), baselines)
        file.atomic_write_text(header + body)
        written.append(file)
    return written
