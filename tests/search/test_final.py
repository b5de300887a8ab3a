"""The final stage on a real (tiny) search: Ray tasks write schema'd AutoAttack results."""

from __future__ import annotations

import pytest
import torch

from analysis import load_result
from search import SearchConfig, run_final_stage, run_search, select_trials
from trainable import load_classifier, load_dataset


@pytest.fixture(scope="module")
def experiment(ray_session, tmp_path_factory, digits_search):
    cfg = SearchConfig.model_validate(digits_search(num_samples=3, scheduler="fifo"))
    return run_search(cfg, tmp_path_factory.mktemp("final") / "exp").experiment


def test_final_stage_evaluates_the_best_trials_with_autoattack(experiment):
    ranked = experiment.proxy_ranked()
    assert select_trials(experiment, 2) == ranked[:2]
    after = run_final_stage(experiment.path, top_k=1, examples=8, heads=["logprob", "raw"])
    files = sorted((experiment.path.local / "final").glob("*.json"))
    assert [f.name for f in files] == [f"{ranked[0].trial_id}-logprob.json",
                                       f"{ranked[0].trial_id}-raw.json"]
    checkpoint = ranked[0].best_checkpoint()
    for f in files:
        r = load_result(f)
        assert r.n_examples == 8
        assert r.attacks == ["apgd-ce", "apgd-t", "fab-t", "square"]
        assert r.within_threat_model
        assert r.eps == pytest.approx(0.1)
        # the trial's best checkpoint, judged on the first 8 test images: its clean accuracy
        # as the model computes it outside the evaluator
        assert r.checkpoint == str(checkpoint)
        clf, cfg, _ = load_classifier(checkpoint, r.head)
        data = load_dataset(cfg)
        with torch.no_grad():
            correct = clf(data.x_test[:8].float() / 255).argmax(1) == data.y_test[:8]
        assert r.clean_acc == correct.float().mean().item()
        assert r.per_example["clean_correct"] == correct.tolist()
    assert {r["head"] for r in after.final_results()} == {"logprob", "raw"}
    # a second run keeps finished evaluations instead of repeating them, and a smaller budget
    # never replaces a larger one; a larger budget re-runs
    stamp = files[0].stat().st_mtime_ns
    run_final_stage(experiment.path, top_k=1, examples=8, heads=["logprob"])
    run_final_stage(experiment.path, top_k=1, examples=4, heads=["logprob"])
    assert files[0].stat().st_mtime_ns == stamp
    run_final_stage(experiment.path, top_k=1, examples=10, heads=["logprob"])
    assert load_result(files[0]).n_examples == 10
