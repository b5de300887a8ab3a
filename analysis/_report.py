"""An experiment's report: one self-contained HTML file, readable offline (plotly.js is inlined
once), or its tables alone as Markdown, to commit beside exported results and quote in documents.

It shows what a search found and how far to trust it: the clean/robust Pareto front, which
parameters mattered, learning curves of the best trials, the AutoAttack results with their
gradient-masking flags, and a table in the shape of the reference paper's. It works while the
search is still running: trials without epochs are listed, sections without data say why.
"""

from __future__ import annotations

import html
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import plotly.graph_objects as go
import plotly.io as pio
from plotly.colors import qualitative
from plotly.offline import get_plotlyjs
from plotly.subplots import make_subplots

from trainable import StoragePath, TrainConfig, storage_path

from ._confirmation import Confirmation, load_confirmations
from ._ranking import FLAG_LEGEND, RankedTrial, flags_of, rank_trials
from ._results import Experiment, TrialRecord, load_experiment

__all__ = ["pareto_front", "write_report", "markdown_table"]

CURVES = 5  # trials in the learning curves
TABLE_ROWS = 20  # trials in the paper-style table (AutoAttack-evaluated ones always shown)
FINISHED = ("TERMINATED", "ERROR")
FLAGS = "flags"

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1300px; color: #222; }
td { overflow-wrap: anywhere; }
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


def _figure(fig: go.Figure) -> str:
    return pio.to_html(fig, full_html=False, include_plotlyjs=False,
                       config={"displaylogo": False, "responsive": True})


def _params(trial: TrialRecord) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in trial.params.items())


def pareto_front(points: list[tuple[float, float]]) -> list[bool]:
    """Which points no other point beats on both coordinates (both maximised)."""
    return [not any(qa >= pa and qb >= pb and (qa, qb) != (pa, pb) for qa, qb in points)
            for pa, pb in points]


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


@dataclass
class _Table:
    """A table as plain text, rendered to HTML or Markdown."""

    header: list[str]
    rows: list[list[str]]
    numeric: tuple[int, ...] = ()  # right-aligned columns
    note: str = ""


def _html_table(table: _Table) -> str:
    """Cells are escaped here; masking flags and trial problems are shown as warnings."""
    warn = {i for i, h in enumerate(table.header) if h in (FLAGS, "problem")}

    def cell(i: int, text: str) -> str:
        body = _esc(text)
        if i in warn and text not in ("none", "-", ""):
            body = f'<span class="flag">{body}</span>'
        return f'<td class="num">{body}</td>' if i in table.numeric else f"<td>{body}</td>"

    head = "".join(f"<th>{_esc(h)}</th>" for h in table.header)
    body = "".join("<tr>" + "".join(cell(i, c) for i, c in enumerate(row)) + "</tr>"
                   for row in table.rows)
    html_table = f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    return html_table + (_note(table.note) if table.note else "")


def markdown_table(header: list[str], rows: list[list[str]], numeric: tuple[int, ...] = ()
                   ) -> str:
    """A GitHub Markdown table (numeric columns right-aligned, pipes in cells escaped): the
    one writer of the reports' and the benchmarks' tables."""

    def cells(texts: list[str]) -> str:
        return "| " + " | ".join(t.replace("|", "\\|").replace("\n", " ") for t in texts) + " |"

    lines = [cells(header), "|" + "|".join("---:" if i in numeric else "---"
                                          for i in range(len(header))) + "|"]
    return "\n".join(lines + [cells(row) for row in rows])


def _md_table(table: _Table) -> str:
    return markdown_table(table.header, table.rows, table.numeric) + "\n" + (
        f"\n*{table.note}*\n" if table.note else "")


def _flag_text(result: dict[str, Any]) -> str:
    """Short codes (the legend below the table explains them; the JSON keeps the messages)."""
    return ", ".join(f.code if f.demotes else f"{f.code} (below threshold)"
                     for f in flags_of(result)) or "none"


def _legend(finals: list[dict[str, Any]]) -> str:
    codes = dict.fromkeys(f.code for r in finals for f in flags_of(r))
    return " Flags: " + "; ".join(f"{c}: {FLAG_LEGEND[c]}" for c in codes) + "." if codes else ""


def _own_head(experiment: Experiment, trial: TrialRecord) -> str:
    cfg = experiment.trial_config(trial)
    return cfg.clusters.head if cfg.is_clustering else "linear"


def _variant(experiment: Experiment, trial: TrialRecord) -> str:
    return trial.params.get("point") or \
        f"{experiment.trial_config(trial).objective.variant} ({_params(trial)})"


def _table_order(experiment: Experiment) -> list[TrialRecord]:
    """A search over fixed points keeps the points' order (the paper's rows); a search over a
    space keeps the ranking's."""
    ranked = [r.trial for r in rank_trials(experiment)]
    points = list(experiment.meta.points)
    if points:
        ranked.sort(key=lambda t: points.index(t.params["point"])
                    if t.params.get("point") in points else len(points))
    return ranked


def _autoattack_table(experiment: Experiment, finals: list[dict[str, Any]]) -> _Table:
    variants = {t.trial_id: _variant(experiment, t) for t in experiment.trials}
    attacks = list(dict.fromkeys(a for r in finals for a in r.get("per_attack_acc") or {}))
    header = ["trial", "variant", "head", "examples", "eps", "clean", "AutoAttack", "CE-only",
              *[f"after {a}" for a in attacks], "adaptive", "time (min)", FLAGS]
    rows = [[r["trial_id"], variants.get(r["trial_id"], "-"), r["head"],
             str(r.get("n_examples", "-")),
             f"{r['eps']:.4g}" if isinstance(r.get("eps"), float) else str(r.get("eps", "-")),
             _pct(r.get("clean_acc")), _pct(r.get("autoattack_acc")), _pct(r.get("ce_only_acc")),
             *[_pct((r.get("per_attack_acc") or {}).get(a)) for a in attacks],
             _pct(r.get("adaptive_acc")), _minutes(r.get("wall_time_s")), _flag_text(r)]
            for r in finals]
    return _Table(header, rows, tuple(range(3, len(header) - 1)),
                  "Accuracies in % on the test points. A flag means a gradient-masking symptom: "
                  "do not trust the PGD numbers of that model." + _legend(finals))


def _paper_table(experiment: Experiment, finals: list[dict[str, Any]]) -> _Table | str:
    order = _table_order(experiment)
    if not order:
        return "No trial has finished an epoch yet."
    by_trial: dict[str, list[dict[str, Any]]] = {}
    for r in finals:
        by_trial.setdefault(r["trial_id"], []).append(r)
    shown = [t for i, t in enumerate(order) if i < TABLE_ROWS or t.trial_id in by_trial]
    rows = []
    for t in shown:
        variant = _variant(experiment, t)
        for r in sorted(by_trial.get(t.trial_id, []), key=lambda r: r["head"]):
            rows.append([variant, t.trial_id, r["head"], _pct(r.get("clean_acc")),
                         _pct(r.get("ce_only_acc")), _pct(r.get("autoattack_acc")),
                         _flag_text(r), f"{r.get('n_examples', '?')} test images"])
        if t.trial_id not in by_trial:
            cfg = experiment.trial_config(t)
            best = t.best(experiment.metric, experiment.mode)
            rows.append([variant, t.trial_id, _own_head(experiment, t),
                         _pct(best.get("val_clean_acc")), _pct(best.get("val_pgd_acc")), "-",
                         "-", f"{cfg.eval.examples} validation images, PGD-{cfg.eval.pgd_steps}"])
    more = f" {len(order) - len(shown)} lower-ranked trials are left out." \
        if len(shown) < len(order) else ""
    return _Table(["variant", "trial", "head", "clean (%)", "PGD-CE (%)", "AutoAttack (%)",
                   FLAGS, "measured on"], rows, (3, 4, 5),
                  "As in the paper's table: clean accuracy, robust accuracy under a CE-only "
                  "attack (APGD-CE on the test images where the final stage ran, else the "
                  "search's validation PGD on the trial's own head at its kept epoch) and under "
                  "AutoAttack. A masked model looks robust to the CE-only attack and not to "
                  "AutoAttack." + more + _legend(finals))


def _trials_table(experiment: Experiment) -> _Table:
    ranking: list[RankedTrial] = rank_trials(experiment)
    ranked = {r.trial.trial_id: r for r in ranking}
    rows = []
    for t in [r.trial for r in ranking] + [t for t in experiment.trials
                                           if t.trial_id not in ranked]:
        best = t.best(experiment.metric, experiment.mode)
        r = ranked.get(t.trial_id)
        rows.append([str(r.rank) if r else "-", t.trial_id, _variant(experiment, t), t.status,
                     str(t.epochs), _pct(best.get("val_clean_acc")),
                     _pct(best.get("val_pgd_acc")), _pct(best.get("val_robust_acc")),
                     _num(best.get("val_margin")), _pct(r and r.audited_acc),
                     r.ranked_by if r else "-", r.flag_codes if r and r.flagged else "none",
                     _minutes(t.last.get("time_total_s")), t.problem or ""])
    return _Table(["rank", "trial", "variant", "status", "epochs", "best clean (%)",
                   "best PGD (%)", "best robust (%)", "margin", "audited (%)", "ranked by", FLAGS,
                   "time (min)", "problem"], rows,
                  (0, 4, 5, 6, 7, 8, 9, 12),
                  "Ranked by the audit: trials the final stage evaluated by their audited "
                  "robust accuracy (the worst case over every attack and head it ran, on the "
                  "test images), flagged ones after unflagged ones, then the others by the "
                  "search metric on validation. Validation figures at each trial's best epoch "
                  "on the search metric; PGD: the trial's own head; robust: every evaluation "
                  "attack (the search metric's proxy); margin: the median embedding-space "
                  "margin of the validation images (clustering variants). Time: the trial's "
                  "training and validation, warm start excluded.")


def _confirmation_table(experiment: Experiment) -> _Table | None:
    found = load_confirmations(experiment.path)
    if not found:
        return None
    baselines = [c for c in found if c.baseline]
    rows = []
    for c in found:
        low, high = c.interval
        rows.append([c.config, str(len(c.values)), ", ".join(_pct(v) for v in c.values),
                     _pct(c.mean), _pct(c.sd), f"{_pct(low)}-{_pct(high)}",
                     *(_difference(c, b) for b in baselines), str(c.n_examples), c.audit,
                     str(c.flagged_seeds)])
    n = len(baselines)
    return _Table(["configuration", "seeds", "per seed (%)", "mean (%)", "sd (points)",
                   "95 % interval (%)", *(f"minus {b.config} (points)" for b in baselines),
                   "test images", "audit", "flagged seeds"], rows,
                  (1, 3, 4, *range(6, 7 + n), 8 + n),
                  "clustune confirm: each configuration retrained with new seeds at the search's "
                  "budget and audited (worst case over every attack and head); the interval is "
                  "a t-interval of the mean over seeds; \"minus\" columns: the difference of "
                  "the means to that baseline with its 95 % Welch interval in brackets (an "
                  "interval that contains 0 means no evidence of a difference).")


def _difference(c: Confirmation, baseline: Confirmation) -> str:
    if c is baseline:
        return "-"
    diff, low, high = c.minus(baseline)
    return f"{100 * diff:+.1f} ({100 * low:+.1f} to {100 * high:+.1f})"


def _summary_items(experiment: Experiment,
                   finals: list[dict[str, Any]]) -> list[tuple[str, str]]:
    meta, search = experiment.meta, experiment.meta.search
    optim = TrainConfig.model_validate(meta.base).optim  # the base config, defaults filled
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
            ("budget per trial", f"{optim.epochs} epochs of {optim.batches_per_epoch} batches"
             if optim.batches_per_epoch else f"{optim.epochs} full epochs"),
            ("trials", ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "none yet"),
            ("state", state),
            ("compute", f"{trial_time / 3600:.2f} trial-hours of training, "
                        f"{final_time / 3600:.2f} hours of AutoAttack")]


def _num(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, (int, float)) else "-"


def _minutes(seconds: Any) -> str:
    return f"{seconds / 60:.1f}" if isinstance(seconds, (int, float)) else "-"


def _html_section(content: _Table | str) -> str:
    return _html_table(content) if isinstance(content, _Table) else _note(content)


def _md_section(content: _Table | str) -> str:
    return _md_table(content) if isinstance(content, _Table) else f"*{content}*\n"


def _markdown(experiment: Experiment, finals: list[dict[str, Any]]) -> str:
    """The report's tables as Markdown, a function of the experiment alone (no date), so
    documents that quote it can be checked against the result files."""
    summary = "".join(f"- **{k}**: {v}\n" for k, v in _summary_items(experiment, finals))
    sections = [("Results in the paper's shape", _paper_table(experiment, finals)),
                ("AutoAttack (final stage)", _autoattack_table(experiment, finals) if finals else
                 "No AutoAttack results yet."),
                ("All trials", _trials_table(experiment))]
    confirmed = _confirmation_table(experiment)
    if confirmed is not None:
        sections.insert(2, ("Confirmation across seeds", confirmed))
    body = "".join(f"\n## {h}\n\n{_md_section(c)}" for h, c in sections)
    return f"# clustune report: {experiment.name}\n\n{summary}{body}"


def _html(experiment: Experiment, finals: list[dict[str, Any]]) -> str:
    items = [*_summary_items(experiment, finals),
             ("report written", time.strftime("%Y-%m-%d %H:%M:%S"))]
    summary = "<ul>" + "".join(f"<li><b>{_esc(k)}</b>: {_esc(v)}</li>" for k, v in items) + \
        "</ul>"
    aa = _html_table(_autoattack_table(experiment, finals)) if finals else _note(
        "No AutoAttack results yet: the final stage writes final/<trial>-<head>.json once the "
        "search has finished.")
    sections = [("Summary", summary),
                ("Results in the paper's shape", _html_section(_paper_table(experiment, finals))),
                ("Clean/robust Pareto front", _pareto(experiment)),
                ("Parameter importances", _importances(experiment)),
                ("Learning curves", _curves(experiment)),
                ("AutoAttack (final stage)", aa),
                ("All trials", _html_table(_trials_table(experiment)))]
    confirmed = _confirmation_table(experiment)
    if confirmed is not None:
        sections.insert(2, ("Confirmation across seeds", _html_table(confirmed)))
    title = f"clustune report: {experiment.name}"
    body = "".join(f"<section><h2>{_esc(h)}</h2>{content}</section>" for h, content in sections)
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f"<title>{_esc(title)}</title><style>{STYLE}</style>"
            f'<script type="text/javascript">{get_plotlyjs()}</script></head>'
            f"<body><h1>{_esc(title)}</h1>{body}</body></html>")


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
