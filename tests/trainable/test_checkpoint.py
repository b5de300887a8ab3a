"""Checkpoints: exact round trips and exact resumption; foreign files are refused safely."""

from __future__ import annotations

import io
import os
import pickle

import pytest
import torch

from trainable import CheckpointError, Trainer, build_config, load_checkpoint, load_classifier
from trainable._data import as_float

TIMING = ("train_time_s", "epoch_time_s")


class Malicious:
    """Unpickling this would create a marker file through os.system."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def comparable(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k not in TIMING}


@pytest.fixture
def trained(tiny_config):
    """A qtrades trainer with a learned head after one epoch (3 epochs configured)."""
    cfg = tiny_config({"objective": {"variant": "qtrades", "lam_ce": 1.0},
                       "clusters": {"head": "learned"},
                       "optim": {"epochs": 3, "schedule": "cosine"}})
    trainer = Trainer(cfg)
    trainer.train_epoch()
    return trainer


def test_save_then_load_classifier_gives_identical_logits(trained, tmp_path) -> None:
    path = trained.save(tmp_path / "sub" / "ckpt.pt")
    assert path.is_file()
    assert [p.name for p in path.parent.iterdir()] == ["ckpt.pt"]  # no temporary left behind
    state = load_checkpoint(path)
    assert state["epoch"] == 1 and state["head_kind"] == "learned"
    x = as_float(trained.data.x_val[:40])
    expected = trained.classifier().eval()(x)
    clf, cfg, _ = load_classifier(path)
    assert not clf.training
    assert cfg == trained.cfg
    assert torch.equal(clf(x), expected)
    # the same centres on another head
    other, _, _ = load_classifier(path, head="logprob")
    assert torch.equal(other(x), trained.classifier("logprob").eval()(x))
    assert not torch.equal(other(x), expected)  # the learned map was trained away from zero


def test_linear_checkpoint_round_trip(tiny_config, tmp_path) -> None:
    trainer = Trainer(tiny_config({"objective": {"variant": "ce"}}))
    trainer.train_epoch()
    path = trainer.save(tmp_path / "ce.pt")
    x = as_float(trainer.data.x_val[:20])
    clf, _, state = load_classifier(path)
    assert "head" not in state
    assert torch.equal(clf(x), trainer.classifier().eval()(x))
    assert torch.equal(load_classifier(path, head="linear")[0](x), clf(x))
    with pytest.raises(CheckpointError, match="no cluster head"):
        load_classifier(path, head="logprob")


@pytest.mark.parametrize("variant", ["qtrades-learned", "magnet_adv-free", "trades"])
def test_resume_from_file_is_exact(tiny_config, tmp_path, variant: str) -> None:
    overrides = {
        "qtrades-learned": {"objective": {"variant": "qtrades", "lam_ce": 1.0},
                            "clusters": {"head": "learned"}},
        "magnet_adv-free": {"objective": {"variant": "magnet_adv", "adv_mode": "free",
                                          "free_replays": 2}},
        "trades": {"objective": {"variant": "trades", "lam": 1.0}},
    }[variant]
    cfg = tiny_config({**overrides, "optim": {"epochs": 3, "schedule": "cosine"}})
    original = Trainer(cfg)
    original.train_epoch()
    path = original.save(tmp_path / "ckpt.pt")
    resumed = Trainer(cfg)
    resumed.load_state_dict(load_checkpoint(path))
    assert resumed.epoch == 1
    first = comparable(resumed.train_epoch())
    second = comparable(original.train_epoch())
    assert first == second
    for a, b in zip(original.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("order", ["resumed_first", "original_first"])
def test_in_memory_load_state_dict_is_exact(trained, tiny_config, order: str) -> None:
    resumed = Trainer(trained.cfg)
    resumed.load_state_dict(trained.state_dict())
    if order == "resumed_first":
        first = comparable(resumed.train_epoch())
        second = comparable(trained.train_epoch())
    else:
        second = comparable(trained.train_epoch())
        first = comparable(resumed.train_epoch())
    assert first == second
    assert first["epoch"] == 2


def test_truncated_checkpoint_is_refused(trained, tmp_path) -> None:
    path = trained.save(tmp_path / "ckpt.pt")
    data = path.read_bytes()
    broken = tmp_path / "broken.pt"
    broken.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a readable clustune checkpoint"):
        load_checkpoint(broken)
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError):
        load_checkpoint(empty)


def test_foreign_and_missing_files_are_refused(tmp_path) -> None:
    foreign = tmp_path / "foreign.pt"
    torch.save({"model": {"w": torch.zeros(2)}, "epoch": 3}, foreign)
    with pytest.raises(CheckpointError, match="not a clustune checkpoint"):
        load_checkpoint(foreign)
    with pytest.raises(CheckpointError, match="not a clustune checkpoint"):
        load_classifier(foreign)
    listed = tmp_path / "list.pt"
    torch.save([1, 2, 3], listed)
    with pytest.raises(CheckpointError):
        load_checkpoint(listed)
    text = tmp_path / "notes.txt"
    text.write_text("hello\n")
    with pytest.raises(CheckpointError):
        load_checkpoint(text)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
@pytest.mark.parametrize("writer", ["pickle", "torch.save"])
def test_malicious_pickle_is_refused_without_running_code(tmp_path, writer: str) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    payload = {"format": "clustune-checkpoint-v1", "evil": Malicious(str(marker))}
    if writer == "pickle":
        path.write_bytes(pickle.dumps(payload))
    else:
        buffer = io.BytesIO()
        torch.save(payload, buffer)
        path.write_bytes(buffer.getvalue())
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert "\n" not in str(info.value)
    assert not marker.exists()
    # the payload really is live: a plain unpickle would have run it
    pickle.loads(pickle.dumps(Malicious(str(marker))))
    assert marker.exists()


def test_the_constructor_builds_and_the_warm_start_is_an_explicit_step(tiny_config):
    cfg = tiny_config({"warm_start": {"ce_epochs": 1}})
    untrained = Trainer(cfg)
    fresh = {k: v.clone() for k, v in untrained.model.state_dict().items()}
    assert all(torch.equal(v, Trainer(cfg).model.state_dict()[k]) for k, v in fresh.items())
    with pytest.raises(RuntimeError, match="call warm_start"):
        untrained.train_epoch()
    untrained.warm_start()
    assert any(not torch.equal(v, untrained.model.state_dict()[k]) for k, v in fresh.items())


def test_a_warm_start_trained_elsewhere_and_loaded_trains_the_same_run(tiny_config, tmp_path):
    """A search trains the CE warm start once in another Trainer, saves and loads it; `clustune
    train` trains it in place. Both must give the same epochs, to the last bit."""
    cfg = tiny_config({"objective": {"variant": "magnet_adv"}, "warm_start": {"ce_epochs": 1},
                       "data": {"augment": True}, "optim": {"epochs": 2}})
    in_place = Trainer(cfg)
    in_place.warm_start()
    ce = cfg.model_copy(deep=True)
    ce.objective.variant = "ce"
    elsewhere = Trainer(ce)
    elsewhere.warm_start()
    elsewhere.save(tmp_path / "warm.pt")
    data = cfg.model_dump(mode="json")
    data["warm_start"].update(ce_epochs=0, checkpoint=str(tmp_path / "warm.pt"))
    loaded = Trainer(build_config(data))
    for _ in range(2):
        a, b = in_place.train_epoch(), loaded.train_epoch()
        for key in ("train_loss", "val_clean_acc", "val_robust_acc", "sigma2", "val_margin"):
            assert a[key] == b[key], key
