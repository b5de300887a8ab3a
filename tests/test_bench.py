"""The benchmark's FLOP accounting against a hand count, and its search-efficiency measure."""

from __future__ import annotations

import importlib.util
import json
import math
import re
import sys
from pathlib import Path

import pytest
import torch

from trainable import Trainer

_spec = importlib.util.spec_from_file_location(
    "clustune_bench", Path(__file__).parents[1] / "bench" / "bench.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def _small_cnn_forward_flops(width: int, emb: int, classes: int, side: int = 28) -> dict:
    """Multiply-adds x 2 of SmallCNN's four 3x3 convolutions and two linear layers."""
    w, half, quarter = width, side // 2, side // 4
    return {
        "conv1": 2 * side * side * w * 1 * 9,
        "rest": 2 * (half * half * w * w * 9 + half * half * 2 * w * w * 9
                     + quarter * quarter * 2 * w * 2 * w * 9 + 2 * w * 16 * emb + emb * classes),
    }


@pytest.mark.parametrize("width", [8, 16])
def test_ce_step_flops_match_the_hand_count(width: int) -> None:
    """One CE step = forward + backward (2x forward), less the input gradient of the first
    convolution, which nothing asks for."""
    cfg = bench._config({
        "data": {"train_subset": 2000}, "model": {"width": width, "embedding_dim": 32},
        "objective": {"variant": "ce"}, "device": "cpu"})
    trainer = Trainer(cfg)
    f = _small_cnn_forward_flops(width, 32, 10)
    per_image = 3 * (f["conv1"] + f["rest"]) - f["conv1"]
    assert bench.step_flops(trainer) == per_image * cfg.batch_size


def test_matmul_peak_is_positive_and_finite() -> None:
    peak = bench.matmul_peak(torch.device("cpu"), n=256)
    assert 1e6 < peak < 1e14


def test_markdown_renders_every_row() -> None:
    record = {"rows": [{"section": "ray", "name": "  overhead", "value": 1.0412, "unit": "ratio",
                        "target": "<= 1.10", "detail": "x"},
                       {"section": "gpu", "name": "none", "value": None, "unit": "",
                        "target": "", "detail": ""}]}
    lines = bench.markdown(record).splitlines()
    assert lines[2] == "| ray | overhead | 1.04 | ratio | <= 1.10 | x |"
    assert lines[3] == "| gpu | none | - |  |  |  |"


@pytest.mark.parametrize("record", ["results-cpu.json", "results-gpu.json"])
def test_performance_doc_quotes_the_committed_tables(record: str) -> None:
    """docs/performance.md shows each committed benchmark table exactly as the script renders
    it, so its figures cannot drift from the measurements."""
    import json

    root = Path(__file__).parents[1]
    table = bench.markdown(json.loads((root / "bench" / record).read_text()))
    assert table in (root / "docs" / "performance.md").read_text()


def _search_bench():
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "search_bench", Path(__file__).parents[1] / "bench" / "search_bench.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["search_bench"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


class _KnownOptimum:
    """A benchmark whose answer is known: the best configurations are those with the most
    clusters per class and lambda near its top; curves rise with the epoch, without noise."""

    def observe(self, params, seed):
        k = params["clusters.k"] / 5
        lam = math.log(params["objective.lam"] / 0.5) / math.log(32)
        final = 0.1 + 0.4 * k * lam
        return [final * (0.5 + 0.5 * e / 9) for e in range(1, 10)], final


def test_a_model_based_search_finds_the_known_optimum_before_random_search() -> None:
    """The benchmark's loop drives the product's searcher and scheduler: on a landscape with
    one good corner, TPE (which models the trials ASHA stops, told every result through
    clustune's searcher) must beat random sampling at the same budget on most seeds, or the
    loop is not feeding it. (GP models finished trials only: at this budget it is still
    drawing its random start-up trials.)"""
    sb = _search_bench()
    bench = _KnownOptimum()
    methods = {m.name: m for m in sb.METHODS}
    wins = 0
    for seed in range(5):
        model = sb.simulate(methods["tpe+asha (0.2)"], seed, bench, 150)
        rnd = sb.simulate(methods["random+asha"], seed, bench, 150)
        assert len(model.trace) == len(rnd.trace) == 150
        wins += model.incumbent[-1] > rnd.incumbent[-1]
    assert wins >= 4


def test_the_loop_calls_the_scheduler_and_searcher_as_ray_tune_does() -> None:
    """Trials stopped by ASHA reach the study as PRUNED at their last epoch, trials that ran
    their budget as COMPLETE; no trial reports past the budget; two trials run at a time."""
    sb = _search_bench()
    run = sb.simulate(next(m for m in sb.METHODS if m.name == "random+asha"), 0,
                      _KnownOptimum(), 120)
    epochs: dict[int, list[int]] = {}
    for number, epoch, _ in run.trace:
        epochs.setdefault(number, []).append(epoch)
    assert all(e == list(range(1, len(e) + 1)) and len(e) <= 9 for e in epochs.values())
    assert any(len(e) == 9 for e in epochs.values()) and any(len(e) == 1 for e in epochs.values())
    assert [n for n, _, _ in run.trace[:2]] == [0, 1]  # two workers from the start


def test_target_ratio_and_bootstrap_against_a_hand_count() -> None:
    sb = _search_bench()
    assert sb.time_to([0.1, 0.3, 0.3, 0.5], 0.3) == 2 and sb.time_to([0.1], 0.3) == math.inf
    # random reaches 0.5 at 4, 2 and 6 trial-epochs (median 4); the other at 1, 1 and 3
    # (median 1): a ratio of 0.25 on every resample with the same seed twice or more...
    random = {"0": [0, 0, 0, .5, .5, .5], "1": [0, .5, .5, .5, .5, .5],
              "2": [0, 0, 0, 0, 0, .5], "1000": [.5] * 6, "1001": [.4] * 6, "1002": [.6] * 6}
    other = {"0": [.5] * 6, "1": [.5] * 6, "2": [0, 0, .5, .5, .5, .5]}
    s = sb.summary({"runs": {"random": random, "tpe+asha": other}, "seeds": 3,
                    "budgets": [2, 6]})
    assert s["target"] == 0.5  # the median of 0.5, 0.4, 0.6 at the largest budget
    row = s["rows"]["tpe+asha"]
    assert (row["t_median"], row["ratio"], row["reached"]) == (1, 0.25, 3)
    assert row["diff"] == 0 and s["random_at_horizon"] == 0.5  # both at 0.5 after 6
    assert row["ratio_low"] <= 0.25 <= row["ratio_high"]
    assert s["rows"]["random"]["ratio"] == 1.0
    assert row["at"][2][0] == 0.5 and s["rows"]["random"]["at"][2][0] == 0.0


def test_performance_doc_quotes_the_search_benchmark() -> None:
    """docs/performance.md states the result in the two lines a check reads, and shows the
    committed tables as the script renders them."""
    root = Path(__file__).parents[1]
    sb = _search_bench()
    doc = (root / "docs" / "performance.md").read_text()
    results = json.loads((root / "bench" / "search-results.json").read_text())
    figures = json.loads((root / "bench" / "search-surrogate.json").read_text())
    line = re.search(r"^search quality: (\S+) returns ([\d.]+) at (\d+) trial-epochs, random "
                     r"search ([\d.]+) \(paired difference ([+-][\d.]+), 95 % bootstrap "
                     r"interval ([+-][\d.]+) to ([+-][\d.]+), (\d+) paired seeds\); random "
                     r"search returns ([\d.]+) at (\d+)$", doc, re.M)
    assert line and line.group(0) == sb.headline(results)
    assert int(line.group(8)) >= 30
    assert float(line.group(6)) > 0, "the default search method must beat random search"
    rho = re.search(r"^surrogate: held-out Spearman ([\d.]+) on the final value$", doc, re.M)
    assert rho and float(rho.group(1)) == round(figures["spearman_final"], 2)
    assert sb.markdown(results) in doc
    assert sb.surrogate_text(figures) in doc
    assert all(r["same"] for r in results["replay"]) and results["replay"]
