"""One self-contained HTML report of an experiment, readable offline (plotly.js is inlined once).

It shows what a search found and how far to trust it: the clean/robust Pareto front, which
parameters mattered, learning curves of the best trials, the AutoAttack results with their
gradient-masking flags, and a table in the shape of the reference paper's. It works while the
search is still running: trials without epochs are listed, sections without data say why.
"""

from __future__ import annotations

import html
import time
import warnings
from pathlib import Path
from typing import Any

import optuna
import plotly.graph_objects as go
import plotly.io as pio
from plotly.colors import qualitative
from plotly.offline import get_plotlyjs
from plotly.subplots import make_subplots

from trainable import atomic_write_text

from ._results import Experiment, TrialRecord, load_experiment

__all__ = ["write_report"]

CURVES = 5  # trials in the learning curves
TABLE_ROWS = 20  # trials in the paper-style table (AutoAttack-evaluated ones always shown)
FINISHED = ("TERMINATED", "ERROR")

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
th { background: #f2f2f2; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.note { color: #555; font-style: italic; }
.flag { color: #b00020; font-weight: bold; }
"""


def _esc(value: Any) -> str:
    return html.escape(str(value))


def _note(text: str) -> str:
    return f'<p class="note">{_esc(text)}</p>'


def _pct(v: Any) -> str:
    return f"{100 * v:.1f}" if isinstance(v, (int, float)) else "-"


def _table(header: list[str], rows: list[list[str]], numeric: tuple[int, ...] = ()) -> str:
    """rows hold HTML already escaped; columns in numeric are right-aligned."""
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f'<td class="num">{c}</td>' if i in numeric else f"<td>{c}</td>"
                         for i, c in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _figure(fig: go.Figure) -> str:
    return pio.to_html(fig, full_html=False, include_plotlyjs=False,
                       config={"displaylogo": False, "responsive": True})


def _params(trial: TrialRecord) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in trial.params.items())


def _flags(result: dict[str, Any]) -> str:
    flags = result.get("masking_flags") or []
    return f'<span class="flag">{_esc(", ".join(flags))}</span>' if flags else "none"


def pareto_front(points: list[tuple[float, float]]) -> list[bool]:
    """Which points no other point beats on both coordinates (both maximised)."""
    return [not any(qa >= pa and qb >= pb and (qa, qb) != (pa, pb) for qa, qb in points)
            for pa, pb in points]


def _pareto(experiment: Experiment) -> str:
    trials = experiment.ranked()
    if not trials:
        return _note("No trial has finished an epoch yet.")
    best = [t.best(experiment.metric, experiment.mode) for t in trials]
    points = [(b.get("val_clean_acc", 0.0), b.get("val_robust_acc", 0.0)) for b in best]
    front = pareto_front(points)
    fig = go.Figure()
    for on_front, name, colour in ((False, "trial", "#9aa9c2"), (True, "Pareto front", "#d62728")):
        pick = [i for i, f in enumerate(front) if f == on_front]
        if on_front:  # the front as the staircase bounding what it dominates
            pick.sort(key=lambda i: points[i][0])
        fig.add_trace(go.Scatter(
            x=[points[i][0] for i in pick], y=[points[i][1] for i in pick], name=name,
            mode="lines+markers" if on_front else "markers",
            line={"shape": "vh", "color": colour}, marker={"size": 11 if on_front else 8,
                                                           "color": colour},
            text=[f"{trials[i].trial_id}<br>{_params(trials[i])}" for i in pick],
            hovertemplate="%{text}<br>clean %{x:.3f}<br>robust %{y:.3f}<extra></extra>"))
    fig.update_layout(xaxis_title="val_clean_acc", yaxis_title="val_robust_acc", height=480,
                      title="Clean vs robust accuracy at each trial's best epoch")
    return _figure(fig) + _note(
        f"One point per trial, at the epoch that scored best on {experiment.metric} (the "
        f"checkpoint the search keeps); red: no other trial is better on both.")


def _importances(experiment: Experiment) -> str:
    storage = experiment.study_storage
    if storage is None:
        return _note("No optuna.db in the experiment folder yet.")
    try:
        study = optuna.load_study(study_name=experiment.meta["study_name"], storage=storage)
    except KeyError:
        return _note(f"The Optuna study {experiment.meta['study_name']} does not exist yet.")
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    params = sorted({p for t in complete for p in t.params})
    if len(complete) < 2:
        return _note(f"Parameter importances need at least 2 completed trials; the study has "
                     f"{len(complete)}.")
    if len(params) < 2:
        return _note(f"Only one parameter was searched ({', '.join(params) or 'none'}), so "
                     f"there is nothing to rank; see the tables below.")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # optuna warns about small samples; the note says so
        fig = optuna.visualization.plot_param_importances(study)
    if len(study.directions) > 1:  # one bar series per objective, in the study's order
        objectives = experiment.meta["config"]["search"]["objectives"]
        for trace, name in zip(fig.data, objectives, strict=False):
            trace.name = name
    fig.update_layout(height=380)
    return _figure(fig) + _note(
        f"Optuna's importance evaluator over {len(complete)} completed trials of the study "
        f"(objective: the value each trial reported last); few trials make it rough.")


def _curves(experiment: Experiment) -> str:
    top = [t for t in experiment.ranked() if t.history][:CURVES]
    if not top:
        return _note("No trial has finished an epoch yet.")
    fig = make_subplots(rows=1, cols=2, subplot_titles=("val_clean_acc", "val_robust_acc"))
    for trial, colour in zip(top, qualitative.Plotly, strict=False):
        epochs = [r.get("training_iteration") for r in trial.history]
        for col, metric in ((1, "val_clean_acc"), (2, "val_robust_acc")):
            fig.add_trace(go.Scatter(
                x=epochs, y=[r.get(metric) for r in trial.history], mode="lines+markers",
                name=trial.trial_id, legendgroup=trial.trial_id, showlegend=col == 1,
                line={"color": colour}, hovertemplate=f"{trial.trial_id} epoch %{{x}}: "
                f"%{{y:.3f}}<extra>{metric}</extra>"), row=1, col=col)
    fig.update_xaxes(title_text="epoch")
    fig.update_layout(height=420, title=f"The {len(top)} best trials by {experiment.metric}")
    return _figure(fig)


def _autoattack(finals: list[dict[str, Any]]) -> str:
    if not finals:
        return _note("No AutoAttack results yet: the final stage writes "
                     "final/<trial>-<head>.json once the search has finished.")
    attacks = list(dict.fromkeys(a for r in finals for a in r.get("per_attack_acc") or {}))
    header = ["trial", "head", "examples", "eps", "clean", "AutoAttack", "CE-only",
              *[f"after {a}" for a in attacks], "masking flags"]
    rows = [[_esc(r["trial_id"]), _esc(r["head"]), _esc(r.get("n_examples", "-")),
             _esc(f"{r['eps']:.4g}" if isinstance(r.get("eps"), float) else r.get("eps", "-")),
             _pct(r.get("clean_acc")), _pct(r.get("autoattack_acc")), _pct(r.get("ce_only_acc")),
             *[_pct((r.get("per_attack_acc") or {}).get(a)) for a in attacks], _flags(r)]
            for r in finals]
    numeric = tuple(range(2, len(header) - 1))
    return _table(header, rows, numeric) + _note(
        "Accuracies in % on the test points. A flag means a gradient-masking symptom (e.g. "
        "ce_gap: CE-only PGD is much weaker than the full ensemble): do not trust the PGD "
        "numbers of that model.")


def _paper_table(experiment: Experiment, finals: list[dict[str, Any]]) -> str:
    ranked = experiment.ranked()
    if not ranked:
        return _note("No trial has finished an epoch yet.")
    by_trial: dict[str, list[dict[str, Any]]] = {}
    for r in finals:
        by_trial.setdefault(r["trial_id"], []).append(r)
    shown = [t for i, t in enumerate(ranked) if i < TABLE_ROWS or t.trial_id in by_trial]
    rows = []
    for t in shown:
        cfg = experiment.trial_config(t)
        variant = _esc(t.params.get("point") or f"{cfg.objective.variant} ({_params(t)})")
        for r in by_trial.get(t.trial_id, []):
            flags = "; flags: " + _flags(r) if r.get("masking_flags") else ""
            rows.append([variant, _esc(t.trial_id), _pct(r.get("clean_acc")),
                         _pct(r.get("autoattack_acc")),
                         _esc(f"AutoAttack, {r['head']} head, {r.get('n_examples', '?')} test "
                              f"points") + flags])
        if t.trial_id not in by_trial:
            best = t.best(experiment.metric, experiment.mode)
            rows.append([variant, _esc(t.trial_id), _pct(best.get("val_clean_acc")),
                         _pct(best.get("val_robust_acc")),
                         _esc(f"PGD-{cfg.eval.pgd_steps} on {cfg.eval.examples} validation "
                              f"points (val_robust_acc, best epoch)")])
    more = f" {len(ranked) - len(shown)} lower-ranked trials are left out." \
        if len(shown) < len(ranked) else ""
    return _table(["variant", "trial", "clean (%)", "robust (%)", "robust measured by"], rows,
                  (2, 3)) + _note(
        "As in the paper's table: clean and robust accuracy per variant. Robust is AutoAttack "
        "(test set) where the final stage evaluated the trial, else the validation PGD proxy "
        "the search optimised, which overstates robustness for gradient-masked models." + more)


def _trials(experiment: Experiment) -> str:
    ranked = experiment.ranked()
    order = ranked + [t for t in experiment.trials if t not in ranked]
    rows = []
    for t in order:
        best = t.best(experiment.metric, experiment.mode)
        rows.append([_esc(t.trial_id), _esc(t.status), _esc(t.epochs),
                     _pct(best.get("val_clean_acc")), _pct(best.get("val_robust_acc")),
                     _esc(_params(t)), f'<span class="flag">{_esc(t.problem or "")}</span>'])
    return _table(["trial", "status", "epochs", "best clean (%)", "best robust (%)", "params",
                   "problem"], rows, (2, 3, 4))


def _summary(experiment: Experiment) -> str:
    meta, search = experiment.meta, experiment.meta["config"]["search"]
    counts: dict[str, int] = {}
    for t in experiment.trials:
        counts[t.status] = counts.get(t.status, 0) + 1
    unfinished = sum(n for s, n in counts.items() if s not in FINISHED)
    state = (f"still running or interrupted: {unfinished} of {len(experiment.trials)} trials "
             f"unfinished" if unfinished else "finished")
    items = [("experiment", f"{experiment.name} ({experiment.path})"),
             ("created", meta.get("created", "-")),
             ("search", f"sampler {search['sampler']}, scheduler {search['scheduler']}, "
                        f"metric {search['metric']} ({search['mode']})"),
             ("trials", ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "none yet"),
             ("state", state),
             ("report written", time.strftime("%Y-%m-%d %H:%M:%S"))]
    return "<ul>" + "".join(f"<li><b>{_esc(k)}</b>: {_esc(v)}</li>" for k, v in items) + "</ul>"


def write_report(path: str | Path, out: str | Path | None = None) -> Path:
    """Write the experiment's HTML report to out (default: EXPERIMENT/report.html)."""
    experiment = load_experiment(path)
    out = Path(out) if out is not None else experiment.path / "report.html"
    finals = experiment.final_results()
    sections = [("Summary", _summary(experiment)),
                ("Results in the paper's shape", _paper_table(experiment, finals)),
                ("Clean/robust Pareto front", _pareto(experiment)),
                ("Parameter importances", _importances(experiment)),
                ("Learning curves", _curves(experiment)),
                ("AutoAttack (final stage)", _autoattack(finals)),
                ("All trials", _trials(experiment))]
    title = f"clustune report: {experiment.name}"
    body = "".join(f"<section><h2>{_esc(h)}</h2>{content}</section>" for h, content in sections)
    page = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f"<title>{_esc(title)}</title><style>{STYLE}</style>"
            f'<script type="text/javascript">{get_plotlyjs()}</script></head>'
            f"<body><h1>{_esc(title)}</h1>{body}</body></html>")
    atomic_write_text(out, page)
    return out

