"""The tables of an experiment, computed once and drawn three ways: the terminal (rich), HTML
(a Jinja2 template) and Markdown. ``clustune status`` and the search print them; the report
writes them; documents quote the Markdown.

A :class:`Table` holds its cells as the text every view shows (percentages with one decimal,
"-" for nothing), so the three views cannot disagree; a view only chooses how to draw them
(and the terminal, which columns: see :attr:`Column.brief`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from trainable import is_draw

from ._audit import FLAG_LEGEND, flags_of
from ._confirmation import Confirmation
from ._ranking import RankedTrial, rank_trials
from ._results import Experiment, TrialRecord

__all__ = ["Column", "Table", "trials_table", "autoattack_table", "paper_table",
           "confirmation_table", "to_markdown", "to_html", "to_rich", "markdown_table"]

TABLE_ROWS = 20  # trials in the paper-style table (AutoAttack-evaluated ones always shown)
EMPTY = ("none", "-", "")  # cells a warning column leaves unmarked


@dataclass(frozen=True)
class Column:
    name: str
    numeric: bool = False  # right-aligned
    warn: bool = False  # a non-empty value is a warning (masking flags, a trial's problem)
    brief: bool = True  # shown in the terminal, where width is short


@dataclass(frozen=True)
class Table:
    """Rows of text under named columns, with a title (the terminal's) and a note (below the
    table in HTML and Markdown)."""

    title: str
    columns: tuple[Column, ...]
    rows: tuple[tuple[str, ...], ...]
    note: str = ""


# ------------------------------------------------------------------------------- cells
def _pct(v: Any) -> str:
    return f"{100 * v:.1f}" if isinstance(v, (int, float)) else "-"


def _num(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, (int, float)) else "-"


def _minutes(seconds: Any) -> str:
    return f"{seconds / 60:.1f}" if isinstance(seconds, (int, float)) else "-"


def _params(trial: TrialRecord, draws: bool = False) -> str:
    """The trial's parameters as the user set them (the variant leads the cell, so it is not
    repeated); ``draws`` adds the sampler's internal draws (``clusters.l@fraction``) that the
    resolved values came from."""
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in trial.params.items()
                     if (draws or not is_draw(k)) and k != "objective.variant")


def _variant(experiment: Experiment, trial: TrialRecord, draws: bool = False) -> str:
    return trial.params.get("point") or \
        f"{experiment.trial_config(trial).objective.variant} ({_params(trial, draws)})"


def _own_head(experiment: Experiment, trial: TrialRecord) -> str:
    cfg = experiment.trial_config(trial)
    return cfg.clusters.head if cfg.is_clustering else "linear"


def _flag_text(result: dict[str, Any]) -> str:
    """Short codes (the legend below the table explains them; the JSON keeps the messages)."""
    return ", ".join(f.code if f.demotes else f"{f.code} (below threshold)"
                     for f in flags_of(result)) or "none"


def _legend(finals: list[dict[str, Any]]) -> str:
    codes = dict.fromkeys(f.code for r in finals for f in flags_of(r))
    return " Flags: " + "; ".join(f"{c}: {FLAG_LEGEND[c]}" for c in codes) + "." if codes else ""


def _columns(*specs: str | Column) -> tuple[Column, ...]:
    return tuple(Column(s) if isinstance(s, str) else s for s in specs)


# ------------------------------------------------------------------------------ tables
def trials_table(experiment: Experiment, top: int | None = None, draws: bool = False) -> Table:
    """Every trial in the order of the ranking (unranked ones last); with ``top``, the top
    ones and then every other trial that has no score yet or a problem to show (diverged,
    failed, or retried after a crash): what a search prints when it ends. ``draws`` shows the
    sampler's internal draws beside the resolved parameters."""
    ranking: list[RankedTrial] = rank_trials(experiment)
    ranked = {r.trial.trial_id: r for r in ranking}
    shown = [r.trial for r in (ranking[:top] if top else ranking)]
    ids = {t.trial_id for t in shown}
    shown += [t for t in experiment.trials if t.trial_id not in ids and
              (t.problem or not t.best(experiment.metric, experiment.mode))]
    rows = []
    for t in shown:
        best = t.best(experiment.metric, experiment.mode)
        r = ranked.get(t.trial_id)
        rows.append((str(r.rank) if r else "-", t.trial_id, _variant(experiment, t, draws),
                     "DIVERGED" if t.diverged else t.status, str(t.epochs),
                     _pct(best.get("val_clean_acc")), _pct(best.get("val_pgd_acc")),
                     _pct(best.get("val_robust_acc")), _num(best.get("val_margin")),
                     _pct(r and r.audited_acc), r.ranked_by if r else "-",
                     r.flag_codes if r and r.flagged else "none",
                     _minutes(t.last.get("time_total_s")), t.problem or ""))
    n = Column
    return Table(
        f"{experiment.path.name}: trials ranked by the audit, then by best {experiment.metric}",
        (n("rank", True), n("trial"), n("variant"), n("status"), n("epochs", True),
         n("best clean (%)", True), n("best PGD (%)", True, brief=False),
         n("best robust (%)", True), n("margin", True, brief=False), n("audited (%)", True),
         n("ranked by", brief=False), n("flags", warn=True),
         n("time (min)", True, brief=False), n("problem", warn=True)),
        tuple(rows),
        "Ranked by the audit: trials the final stage evaluated by their audited "
        "robust accuracy (the worst case over every attack and head it ran, on the "
        "test images), flagged ones after unflagged ones, then the others by the "
        "search metric on validation. Validation figures at each trial's best epoch "
        "on the search metric; PGD: the trial's own head; robust: every evaluation "
        "attack (the search metric's proxy); margin: the median embedding-space "
        "margin of the validation images (clustering variants). Time: the trial's "
        "training and validation, warm start excluded.")


def autoattack_table(experiment: Experiment) -> Table:
    """Every final-stage evaluation: clean, AutoAttack, CE-only, after each attack, adaptive,
    with flag codes and their legend."""
    finals = experiment.final_results()
    variants = {t.trial_id: _variant(experiment, t) for t in experiment.trials}
    attacks = list(dict.fromkeys(a for r in finals for a in r.get("per_attack_acc") or {}))
    rows = [(r["trial_id"], variants.get(r["trial_id"], "-"), r["head"],
             str(r.get("n_examples", "-")),
             f"{r['eps']:.4g}" if isinstance(r.get("eps"), float) else str(r.get("eps", "-")),
             _pct(r.get("clean_acc")), _pct(r.get("autoattack_acc")), _pct(r.get("ce_only_acc")),
             *[_pct((r.get("per_attack_acc") or {}).get(a)) for a in attacks],
             _pct(r.get("adaptive_acc")), _minutes(r.get("wall_time_s")), _flag_text(r))
            for r in finals]
    n = Column
    return Table(
        f"{experiment.path.name}: AutoAttack final stage (test set)",
        (n("trial"), n("variant"), n("head"), n("examples", True), n("eps", True),
         n("clean", True), n("AutoAttack", True), n("CE-only", True),
         *[n(f"after {a}", True) for a in attacks], n("adaptive", True),
         n("time (min)", True), n("flags", warn=True)),
        tuple(rows),
        "Accuracies in % on the test points. A flag means a gradient-masking symptom: "
        "do not trust the PGD numbers of that model." + _legend(finals))


def _table_order(experiment: Experiment) -> list[TrialRecord]:
    """A search over fixed points keeps the points' order (the paper's rows); a search over a
    space keeps the ranking's."""
    ranked = [r.trial for r in rank_trials(experiment)]
    points = list(experiment.meta.points)
    if points:
        ranked.sort(key=lambda t: points.index(t.params["point"])
                    if t.params.get("point") in points else len(points))
    return ranked


def paper_table(experiment: Experiment) -> Table | str:
    """The reference paper's table: clean, CE-only and AutoAttack accuracy per variant and head
    (the validation proxy, labelled, where the final stage did not run); a sentence while no
    trial has an epoch."""
    finals = experiment.final_results()
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
            rows.append((variant, t.trial_id, r["head"], _pct(r.get("clean_acc")),
                         _pct(r.get("ce_only_acc")), _pct(r.get("autoattack_acc")),
                         _flag_text(r), f"{r.get('n_examples', '?')} test images"))
        if t.trial_id not in by_trial:
            cfg = experiment.trial_config(t)
            best = t.best(experiment.metric, experiment.mode)
            rows.append((variant, t.trial_id, _own_head(experiment, t),
                         _pct(best.get("val_clean_acc")), _pct(best.get("val_pgd_acc")), "-",
                         "-", f"{cfg.eval.examples} validation images, PGD-{cfg.eval.pgd_steps}"))
    more = f" {len(order) - len(shown)} lower-ranked trials are left out." \
        if len(shown) < len(order) else ""
    n = Column
    return Table(
        f"{experiment.path.name}: results in the paper's shape",
        (n("variant"), n("trial"), n("head"), n("clean (%)", True), n("PGD-CE (%)", True),
         n("AutoAttack (%)", True), n("flags", warn=True), n("measured on")),
        tuple(rows),
        "As in the paper's table: clean accuracy, robust accuracy under a CE-only "
        "attack (APGD-CE on the test images where the final stage ran, else the "
        "search's validation PGD on the trial's own head at its kept epoch) and under "
        "AutoAttack. A masked model looks robust to the CE-only attack and not to "
        "AutoAttack." + more + _legend(finals))


def _difference(c: Confirmation, baseline: Confirmation) -> str:
    if c is baseline:
        return "-"
    diff, low, high = c.minus(baseline)
    return f"{100 * diff:+.1f} ({100 * low:+.1f} to {100 * high:+.1f})"


def confirmation_table(found: list[Confirmation], name: str) -> Table:
    """Per configuration: the seeds' audits, mean, sd, 95 % interval, and the difference to
    each baseline with its 95 % Welch interval."""
    baselines = [c for c in found if c.baseline]
    rows = []
    for c in found:
        low, high = c.interval
        rows.append((c.config, str(len(c.values)), ", ".join(_pct(v) for v in c.values),
                     _pct(c.mean), _pct(c.sd), f"{_pct(low)}-{_pct(high)}",
                     *(_difference(c, b) for b in baselines), str(c.n_examples), c.audit,
                     str(c.flagged_seeds)))
    n = Column
    return Table(
        f"{name}: audited robust accuracy across seeds (worst case over attacks and heads, "
        "test set)",
        (n("configuration"), n("seeds", True), n("per seed (%)"), n("mean (%)", True),
         n("sd (points)", True), n("95 % interval (%)"),
         *(n(f"minus {b.config} (points)", True) for b in baselines), n("test images", True),
         n("audit"), n("flagged seeds", True)),
        tuple(rows),
        "clustune confirm: each configuration retrained with new seeds at the search's "
        "budget and audited (worst case over every attack and head); the interval is "
        "a t-interval of the mean over seeds; \"minus\" columns: the difference of "
        "the means to that baseline with its 95 % Welch interval in brackets (an "
        "interval that contains 0 means no evidence of a difference).")


# ------------------------------------------------------------------------------- views
def markdown_table(header: list[str], rows: list[list[str]], numeric: tuple[int, ...] = ()
                   ) -> str:
    """A GitHub Markdown table (numeric columns right-aligned, pipes in cells escaped): the
    one writer of the reports' and the benchmarks' tables."""

    def cells(texts: list[str] | tuple[str, ...]) -> str:
        return "| " + " | ".join(t.replace("|", "\\|").replace("\n", " ") for t in texts) + " |"

    lines = [cells(header), "|" + "|".join("---:" if i in numeric else "---"
                                          for i in range(len(header))) + "|"]
    return "\n".join(lines + [cells(row) for row in rows])


def to_markdown(table: Table) -> str:
    """The table, then its note in italics."""
    numeric = tuple(i for i, c in enumerate(table.columns) if c.numeric)
    return markdown_table([c.name for c in table.columns], list(table.rows), numeric) + "\n" + (
        f"\n*{table.note}*\n" if table.note else "")


@functools.cache
def _templates():
    import jinja2  # only the report and its tables need it

    return jinja2.Environment(loader=jinja2.PackageLoader("analysis", "templates"),
                              autoescape=True, trim_blocks=True, lstrip_blocks=True,
                              undefined=jinja2.StrictUndefined)


def to_html(table: Table) -> str:
    """The table (escaped; warnings marked), then its note."""
    return _templates().get_template("table.html").render(table=table, empty=EMPTY)


EMPTY = ("", "-", "none")  # what a cell holds when it has nothing to say


def to_rich(table: Table, brief: bool = True):
    """A rich Table for the terminal: the brief columns that hold something (not only "-",
    "none" or nothing), unless ``brief`` is False."""
    from rich.table import Table as RichTable

    keep = [i for i, c in enumerate(table.columns) if not brief
            or (c.brief and any(row[i] not in EMPTY for row in table.rows))]
    out = RichTable(title=table.title)
    for i in keep:
        column = table.columns[i]
        out.add_column(column.name, justify="right" if column.numeric else "left",
                       overflow="fold")
    for row in table.rows:
        out.add_row(*(row[i] for i in keep))
    return out
