"""The HTML report (finished and running searches, offline, drawn in a real browser) and the
report and dashboard commands."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import optuna_dashboard
import pytest
from plotly.offline import get_plotlyjs

from analysis import export_experiment, pareto_front, write_report
from search.cli import main

CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def finished_report(finished_experiment, tmp_path_factory) -> Path:
    return write_report(finished_experiment.path, tmp_path_factory.mktemp("r") / "report.html")


def _figures(page: str) -> int:
    return page.count("Plotly.newPlot(")


def test_report_is_one_offline_file(finished_report):
    page = finished_report.read_text()
    assert page.count(get_plotlyjs()[:500]) == 1, "plotly.js is inlined exactly once"
    assert _figures(page) == 3  # Pareto front, importances, learning curves
    assert not re.search(r"<script[^>]+src=|<link[^>]+href=|<img[^>]+src=http", page)


def test_report_of_a_finished_search(finished_report, finished_experiment):
    page = finished_report.read_text()
    fake = finished_experiment
    for tid in fake.trials:
        assert tid in page
    assert "Results in the paper&#39;s shape" in page
    # the evaluated trial: clean, CE-only and AutoAttack accuracy on the test images, flagged
    assert (f"<td>{fake.aa_trial}</td><td>logprob</td><td class=\"num\">62.0</td>"
            '<td class="num">27.0</td><td class="num">4.0</td>'
            '<td><span class="flag">ce_gap</span></td><td>100 test images</td>') in page
    # the others fall back to the labelled validation PGD proxy
    assert page.count("40 validation images, PGD-2") == len(fake.trials) - 1
    assert "Hyperparameter Importances" in page and "Pareto front" in page
    assert "after apgd-t" in page and "finished" in page


def _md_rows(text: str, section: str) -> list[list[str]]:
    """The body rows of the Markdown table under the heading section."""
    block = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in block.splitlines() if line.startswith("| ")]
    return [[c.strip() for c in line.strip("|").split(" | ")] for line in lines[1:]]


@pytest.mark.parametrize("source", ["experiment", "export"])
def test_markdown_report(finished_experiment, tmp_path, source):
    """The tables alone, from the experiment folder or from its Parquet export, with the
    numbers of the result files; identical apart from the folder they name."""
    fake = finished_experiment
    path = fake.path
    if source == "export":
        path = export_experiment(fake.path, tmp_path / "export")["trials"].parent
    text = write_report(path, tmp_path / "report.md").read_text()
    assert text.startswith("# clustune report: fake\n") and "<" not in text
    assert f"- **experiment**: fake ({path})" in text
    aa = fake.aa_result
    paper = _md_rows(text, "Results in the paper's shape")
    evaluated = next(r for r in paper if r[1] == fake.aa_trial)
    assert evaluated[2:] == ["logprob", f"{100 * aa['clean_acc']:.1f}",
                             f"{100 * aa['ce_only_acc']:.1f}",
                             f"{100 * aa['autoattack_acc']:.1f}", "ce_gap", "100 test images"]
    assert len(paper) == len(fake.trials)
    trials = {r[1]: r for r in _md_rows(text, "All trials")}
    for tid, (_, curve) in fake.trials.items():
        assert trials[tid][4] == str(len(curve))
        assert trials[tid][7] == f"{100 * max(curve):.1f}"
    assert trials[fake.aa_trial][9:12] == ["4.0", "audit, flagged", "ce_gap"]
    (autoattack,) = _md_rows(text, "AutoAttack (final stage)")
    assert autoattack[:4] == [fake.aa_trial, "qtrades (clusters.k=2, clusters.l=15, "
                              "objective.lam=3)", "logprob", "100"]
    assert autoattack[-1] == "ce_gap"
    if source == "export":
        direct = write_report(fake.path, tmp_path / "direct.md").read_text()
        assert text == direct.replace(str(fake.path), str(path))


@pytest.mark.parametrize("source", ["experiment", "export"])
def test_points_keep_their_order_in_the_paper_table(fake_experiment, tmp_path, source):
    fake = fake_experiment(tmp_path, points=True)
    meta = json.loads((fake.path / "clustune.json").read_text())
    meta["config"]["points"] = dict(reversed(meta["config"]["points"].items()))
    (fake.path / "clustune.json").write_text(json.dumps(meta))
    path = fake.path if source == "experiment" else \
        export_experiment(fake.path, tmp_path / "export")["trials"].parent
    rows = _md_rows(write_report(path, tmp_path / "r.md").read_text(),
                    "Results in the paper's shape")
    # the preset's order: neither the ranking nor alphabetical
    assert [r[0] for r in rows] == ["trades", "qtrades"]


def test_html_report_of_an_export(finished_experiment, tmp_path):
    path = export_experiment(finished_experiment.path, tmp_path / "export")["trials"].parent
    page = write_report(path).read_text()
    assert (path / "report.html").is_file()
    assert "An export holds no Optuna study" in page
    assert _figures(page) == 2  # Pareto front and learning curves
    assert '<span class="flag">ce_gap</span>' in page


def test_report_of_a_running_search(running_experiment, tmp_path):
    fake = running_experiment
    page = write_report(fake.path, tmp_path / "r.html").read_text()
    assert "still running or interrupted: 2 of 4 trials unfinished" in page
    assert "1 PENDING, 1 RUNNING, 2 TERMINATED" in page
    assert fake.pending in page
    assert "No AutoAttack results yet" in page
    assert _figures(page) == 3


def test_report_default_path_and_command(running_experiment, capsys):
    assert main(["report", str(running_experiment.path)]) == 0
    assert capsys.readouterr().out.strip() == str(running_experiment.path / "report.html")
    assert (running_experiment.path / "report.html").is_file()


def test_report_before_any_epoch(fake_experiment, tmp_path):
    fake = fake_experiment(tmp_path, running=True)
    for result in fake.path.glob("*/result.json"):
        result.unlink()
    page = write_report(fake.path).read_text()
    assert page.count("No trial has finished an epoch yet.") == 3
    assert _figures(page) == 1  # importances: the study has completed trials


@pytest.mark.parametrize("case", ["one completed", "no study", "one parameter"])
def test_importances_degrade_to_a_note(case, fake_experiment, study_writer, tmp_path):
    fake = fake_experiment(tmp_path, points=case == "one parameter")
    db = fake.path / "optuna.db"
    db.unlink()
    if case == "one completed":
        study_writer(fake.path, "clustune-fake", [(params, curve[-1] if i == 0 else None)
                                                  for i, (params, curve) in
                                                  enumerate(fake.trials.values())])
    elif case == "one parameter":
        study_writer(fake.path, "clustune-fake", [(p, c[-1]) for p, c in fake.trials.values()])
    page = write_report(fake.path).read_text()
    note = {"one completed": "need at least 2 completed trials; the study has 1",
            "no study": "No optuna.db in the experiment folder yet",
            "one parameter": "Only one parameter was searched (point)"}[case]
    assert note in page
    assert _figures(page) == 2
    assert not db.exists() or case != "no study", "reading must not create a study"


def test_pareto_front():
    points = [(0.9, 0.1), (0.5, 0.5), (0.4, 0.4), (0.1, 0.9), (0.5, 0.5), (0.9, 0.05)]
    assert pareto_front(points) == [True, True, False, True, True, False]


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium "
                    "(make test installs it: apt-get install chromium)")
def test_report_figures_are_drawn_in_a_browser(finished_report, finished_experiment, tmp_path):
    """Headless Chromium, offline, draws every figure's marks (not a blank div)."""
    dom = subprocess.run(
        [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}",
         "--virtual-time-budget=5000", "--window-size=1200,2400", "--dump-dom",
         Path(finished_report).resolve().as_uri()],
        capture_output=True, text=True, timeout=60, check=True).stdout
    drawn = re.sub(r"<script.*?</script>", "", dom, flags=re.S)  # the DOM, not plotly.js
    figures = re.split(r'<div id="[^"]+" class="plotly-graph-div', drawn)[1:]
    assert len(figures) == 3
    for figure in figures:
        assert figure.startswith(" js-plotly-plot"), "Plotly rendered into the div"
        assert figure.count('<svg class="main-svg"') >= 2
    pareto, importances, curves = figures
    assert pareto.count('<path class="point"') == len(finished_experiment.trials)
    assert "trace bars" in importances and importances.count('class="point"') == 3
    assert curves.count('class="js-line"') >= 2 * len(finished_experiment.trials)


def test_dashboard_serves_the_experiment_study(finished_experiment, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(optuna_dashboard, "run_server",
                        lambda storage, host, port: calls.append((storage, host, port)))
    assert main(["dashboard", str(finished_experiment.path)]) == 0
    db = (finished_experiment.path / "optuna.db").resolve()
    assert calls == [(f"sqlite:///{db}", "127.0.0.1", 8080)]
    err = capsys.readouterr().err
    assert "http://127.0.0.1:8080/dashboard" in err
    assert f"tensorboard --logdir {finished_experiment.path}" in err
    assert "pip install 'clustune[cluster]'" in err


def test_dashboard_port_in_use_is_a_usage_error(finished_experiment, monkeypatch, capsys):
    def busy(storage, host, port):
        raise OSError(98, "Address already in use")

    monkeypatch.setattr(optuna_dashboard, "run_server", busy)
    assert main(["dashboard", str(finished_experiment.path), "--port", "9999"]) == 2
    err = capsys.readouterr().err
    assert "cannot serve on 127.0.0.1:9999: Address already in use" in err
