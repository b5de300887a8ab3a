"""The benchmark's FLOP accounting against a hand count, and its search-efficiency measure."""

from __future__ import annotations

import importlib.util
import json
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
    spec.loader.exec_module(module)
    return module


def test_search_benchmark_figures_against_a_hand_count() -> None:
    sb = _search_bench()
    values = [0.1, 0.3, 0.2, 0.5, 0.4]
    assert sb.anytime(values, 7) == [0.1, 0.3, 0.3, 0.5, 0.5, 0.5, 0.5]
    assert sb.epochs_to_reach(values, 0.3) == 2 and sb.epochs_to_reach(values, 0.9) is None
    runs = {m: [[0.1, 0.2], [0.3, 0.1], [0.25, 0.3]] for m in sb.METHODS}
    rows, target = sb.summary({"runs": runs})
    assert target == 0.3  # the median of random search's final bests 0.2, 0.3, 0.3
    # trial-epochs to 0.3: never, 1, 2 -> median 2, quartiles 1.5 and inf
    assert rows[0][:3] == ["random", "2/3", "2 [2-inf]"]


def test_the_lookup_returns_the_nearest_recorded_curve() -> None:
    sb = _search_bench()
    table = json.loads((Path(__file__).parents[1] / "bench" / "search-table.json").read_text())
    lookup = sb.Lookup(table)
    for config in table["configs"][:20]:
        assert lookup.curve(config["params"]) == config["curve"]


def test_performance_doc_quotes_the_search_benchmark() -> None:
    root = Path(__file__).parents[1]
    results = json.loads((root / "bench" / "search-results.json").read_text())
    assert _search_bench().markdown(results) in (root / "docs" / "performance.md").read_text()
