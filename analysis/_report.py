"""An experiment's report: one self-contained HTML file, readable offline (plotly.js is inlined
once), or its tables alone as Markdown, to commit beside exported results and quote in documents.

It shows what a search found and how far to trust it: the clean/robust Pareto front, which
parameters mattered, learning curves of the best trials, the AutoAttack results with their
gradient-masking flags, and a table in the shape of the reference paper's. It works while the
search is still running: trials without epochs are listed, sections without data say why. The
tables are :mod:`._tables`'; the page is the template ``templates/report.html``.
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

from trainable import StoragePath, TrainConfig, storage_path

from ._confirmation import load_confirmations
from ._ranking import pareto_front, rank_trials
from ._results import Experiment, load_experiment
from ._tables import (
    Table,
    _params,
    _templates,
    autoattack_table,
    confirmation_table,
    paper_table,
    to_html,
    to_markdown,
    trials_table,
)

__all__ = ["write_report"]

CURVES = 5  # trials in the learning curves
FINISHED = ("TERMINATED", "ERROR")


def _note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


def _figure(fig: go.Figure) -> str:
    return pio.to_html(fig, full_html=False, include_plotlyjs=False,
                       config={"displaylogo": False, "responsive": True})


def _pareto(experiment: Experiment) -> str:
    ranking = rank_trials(experiment)
    if not ranking:
        return _note("No trial has finished an epoch yet.")
    best = [r.trial.best(experiment.metric, experiment.mode) for r in ranking]
    points = [(b.get("val_clean_acc", 0.0), b.get("val_robust_acc", 0.0)) for b in best]
    sound = [i for i, r in enumerate(ranking) if not r.flagged]
    on_front = dict(zip(sound, pareto_front([points[i] for i in sound]), strict=True))
    groups = (("trial", "#9aa9c2", "circle", [i for i in sound if not on_front[i]]),
              ("Pareto front", "#d62728", "circle",
               sorted((i for i in sound if on_front[i]), key=lambda i: points[i][0])),
              ("flagged by the audit (masking)", "#444444", "x-thin-open",
               [i for i, r in enumerate(ranking) if r.flagged]))
    fig = go.Figure()
    for name, colour, symbol, pick in groups:
        if not pick:
            continue
        front = name == "Pareto front"
        fig.add_trace(go.Scatter(
            x=[points[i][0] for i in pick], y=[points[i][1] for i in pick], name=name,
            mode="lines+markers" if front else "markers",
            line={"shape": "vh", "color": colour},
            marker={"size": 11 if front else 9, "color": colour, "symbol": symbol,
                    "line": {"width": 2, "color": colour}},
            text=[f"#{ranking[i].rank} {ranking[i].trial.trial_id} ({ranking[i].summary})"
                  f"<br>{_params(ranking[i].trial)}" for i in pick],
            hovertemplate="%{text}<br>clean %{x:.3f}<br>robust %{y:.3f}<extra></extra>"))
    fig.update_layout(xaxis_title="val_clean_acc", yaxis_title="val_robust_acc", height=480,
                      title="Clean vs robust accuracy at each trial's best epoch")
    return _figure(fig) + _note(
        f"One point per trial, at the epoch that scored best on {experiment.metric} (the "
        f"checkpoint the search keeps); red: no other unflagged trial is better on both; "
        f"crosses: trials the audit flagged as gradient-masked, never on the front.")


def _importances(experiment: Experiment) -> str:
    if experiment.exported:
        return _note("An export holds no Optuna study: the experiment folder's own report "
                     "shows the importances.")
    storage = experiment.open_study()
    if storage is None:
        return _note("No optuna.db in the experiment folder yet.")
    try:
        study = optuna.load_study(study_name=experiment.meta.study_name, storage=storage)
    except KeyError:
        return _note(f"The Optuna study {experiment.meta.study_name} does not exist yet.")
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
        objectives = experiment.meta.objectives
        for trace, name in zip(fig.data, objectives, strict=False):
            trace.name = name
    fig.update_layout(height=380)
    return _figure(fig) + _note(
        f"Optuna's importance evaluator over {len(complete)} completed trials of the study "
        f"(objective: the value each trial reported last); few trials make it rough.")


def _curves(experiment: Experiment) -> str:
    top = [r.trial for r in rank_trials(experiment) if r.trial.history][:CURVES]
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
    fig.update_layout(height=420, title=f"The {len(top)} best trials of the ranking")
    return _figure(fig)


def _summary_items(experiment: Experiment,
                   finals: list[dict[str, Any]]) -> list[tuple[str, str]]:
    meta, search = experiment.meta, experiment.meta.search
    base = TrainConfig.model_validate(meta.base)  # the base config, defaults filled
    optim = base.optim
    counts: dict[str, int] = {}
    for t in experiment.trials:
        counts[t.status] = counts.get(t.status, 0) + 1
    unfinished = sum(n for s, n in counts.items() if s not in FINISHED)
    state = (f"still running or interrupted: {unfinished} of {len(experiment.trials)} trials "
             f"unfinished" if unfinished else "finished")
    trial_time = sum(t.last.get("time_total_s") or 0.0 for t in experiment.trials)
    final_time = sum(r.get("wall_time_s") or 0.0 for r in finals)
    return [("experiment", f"{experiment.name} ({experiment.path})"),
            ("created", meta.created),
            ("search", f"sampler {search['sampler']}, scheduler {search['scheduler']}, "
                       f"metric {search['metric']} ({search['mode']}), "
                       f"{search['max_concurrent']} trials at a time"),
            ("budget per trial", (f"{optim.epochs} epochs of {optim.batches_per_epoch} batches"
                                  if optim.batches_per_epoch else f"{optim.epochs} full epochs")
             + _warm_start_budget(base, meta.config.get("space") or {})),
            ("trials", ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "none yet"),
            ("state", state),
            ("compute", f"{trial_time / 3600:.2f} trial-hours of training, "
                        f"{final_time / 3600:.2f} hours of AutoAttack")]


WARM_START_NAMES = {"ce": "CE", "pgd_at": "PGD-AT", "trades": "TRADES"}


def _warm_start_budget(base: TrainConfig, space: dict[str, Any]) -> str:
    """What each trial trained before its epochs, so that budgets compare whole."""
    ws = base.warm_start
    if ws.checkpoint:
        return ", from a warm-start checkpoint"
    if not ws.ce_epochs:
        return ""
    kind = ("drawn per trial: " + ", ".join(WARM_START_NAMES[v] for v in space[
        "warm_start.variant"]["choices"]) if "warm_start.variant" in space
        else WARM_START_NAMES[ws.variant])
    return f", after a {ws.ce_epochs}-epoch warm start ({kind})"


def _html_section(content: Table | str) -> str:
    return to_html(content) if isinstance(content, Table) else _note(content)


def _md_section(content: Table | str) -> str:
    return to_markdown(content) if isinstance(content, Table) else f"*{content}*\n"


def _confirmation(experiment: Experiment) -> Table | None:
    found = load_confirmations(experiment.path)
    return confirmation_table(found, experiment.name) if found else None


def _markdown(experiment: Experiment, finals: list[dict[str, Any]]) -> str:
    """The report's tables as Markdown, a function of the experiment alone (no date), so
    documents that quote it can be checked against the result files."""
    summary = "".join(f"- **{k}**: {v}\n" for k, v in _summary_items(experiment, finals))
    sections = [("Results in the paper's shape", paper_table(experiment)),
                ("AutoAttack (final stage)", autoattack_table(experiment) if finals else
                 "No AutoAttack results yet."),
                ("All trials", trials_table(experiment))]
    confirmed = _confirmation(experiment)
    if confirmed is not None:
        sections.insert(2, ("Confirmation across seeds", confirmed))
    body = "".join(f"\n## {h}\n\n{_md_section(c)}" for h, c in sections)
    return f"# clustune report: {experiment.name}\n\n{summary}{body}"


def _html(experiment: Experiment, finals: list[dict[str, Any]]) -> str:
    items = [*_summary_items(experiment, finals),
             ("report written", time.strftime("%Y-%m-%d %H:%M:%S"))]
    aa = to_html(autoattack_table(experiment)) if finals else _note(
        "No AutoAttack results yet: the final stage writes final/<trial>-<head>.json once the "
        "search has finished.")
    sections = [("Results in the paper's shape", _html_section(paper_table(experiment))),
                ("Clean/robust Pareto front", _pareto(experiment)),
                ("Parameter importances", _importances(experiment)),
                ("Learning curves", _curves(experiment)),
                ("AutoAttack (final stage)", aa),
                ("All trials", to_html(trials_table(experiment)))]
    confirmed = _confirmation(experiment)
    if confirmed is not None:
        sections.insert(1, ("Confirmation across seeds", to_html(confirmed)))
    return _templates().get_template("report.html").render(
        title=f"clustune report: {experiment.name}", summary=items, sections=sections,
        plotlyjs=get_plotlyjs())


def write_report(path: str | Path | StoragePath, out: str | Path | StoragePath | None = None
                 ) -> StoragePath:
    """Write the experiment's report to out (default: EXPERIMENT/report.html): one offline HTML
    file with figures, or, when out ends in .md, its tables as Markdown. path may be an
    experiment folder or a folder `clustune export` wrote."""
    experiment = load_experiment(path)
    out = storage_path(out) if out is not None else experiment.path / "report.html"
    finals = experiment.final_results()
    render = _markdown if out.suffix.lower() == ".md" else _html
    out.atomic_write_text(render(experiment, finals))
    return out
