"""The GPU fast path (``fast.amp``, ``fast.channels_last``, ``fast.compile``) on the CPU: every
option gives the plain path's embeddings, input gradients and training curve within tolerance."""

from __future__ import annotations

import pytest
import torch

from trainable import Trainer, build_backbone, load_classifier
from trainable._data import as_float

# (fast-path options, tolerance on embeddings and gradients relative to their norm)
OPTIONS = {
    "bf16": ({"amp": "bf16"}, 3e-2),  # bf16 keeps 8 mantissa bits
    "channels_last": ({"channels_last": True}, 1e-5),
    "compile": ({"compile": True}, 1e-5),
    "all": ({"amp": "bf16", "channels_last": True, "compile": True}, 3e-2),
}


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize(("arch", "option"), [("small_cnn", option) for option in OPTIONS] + [
    ("resnet18", "bf16"), ("resnet18", "channels_last")])  # compiling ResNet-18: minutes on CPU
def test_embedding_and_input_gradient_match_the_plain_path(arch: str, option: str) -> None:
    fast, tol = OPTIONS[option]
    torch.manual_seed(0)
    plain = build_backbone(arch, 3, 10, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3), 8, 16).eval()
    other = build_backbone(arch, 3, 10, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3), 8, 16).eval()
    other.load_state_dict(plain.state_dict())
    other.use_fast_path(**fast)
    x = torch.rand(6, 3, 16, 16)
    grads, embs = [], []
    for model in (plain, other):
        xi = x.clone().requires_grad_(True)
        emb = model.embed(xi)
        assert emb.dtype == torch.float32  # heads and losses always see float32
        (grad,) = torch.autograd.grad(emb.square().sum(), xi)
        embs.append(emb.detach())
        grads.append(grad)
    assert _relative_error(embs[1], embs[0]) < tol
    assert _relative_error(grads[1], grads[0]) < 3 * tol


@pytest.mark.parametrize("option", ["bf16", "channels_last", "compile"])
def test_training_matches_the_plain_path(tiny_config, option: str) -> None:
    """Two epochs of ClusTR+ADV on digits: the same loss curve and accuracy within tolerance."""
    fast, tol = OPTIONS[option]
    settings = {"objective": {"variant": "magnet_adv", "lam": 1.0},
                "attack": {"steps": 2, "step_size": 0.05},
                "optim": {"batches_per_epoch": 10, "epochs": 2}}
    runs = []
    for extra in ({}, {"fast": fast}):
        trainer = Trainer(tiny_config({**settings, **extra}))
        runs.append([trainer.train_epoch() for _ in range(2)])
    for plain, other in zip(*runs, strict=True):
        assert other["train_loss"] == pytest.approx(plain["train_loss"], rel=max(tol, 1e-3))
        assert abs(other["val_clean_acc"] - plain["val_clean_acc"]) <= 0.05


def test_fast_path_checkpoint_loads_as_the_plain_float32_model(tiny_config, tmp_path) -> None:
    """The final stage evaluates the float32 model: a fast-path checkpoint carries ordinary
    weights, and its logits match the trainer's own within bf16 tolerance."""
    trainer = Trainer(tiny_config({"fast": {"amp": "bf16", "channels_last": True}}))
    trainer.train_epoch()
    path = trainer.save(tmp_path / "fast.pt")
    clf, cfg, _ = load_classifier(path)
    assert clf.backbone.amp_dtype is None and clf.backbone._compiled_features is None
    assert clf.backbone.channels_last  # a layout, kept
    assert cfg.fast.amp == "bf16"
    x = as_float(trainer.data.x_val[:32])
    with torch.no_grad():
        ours = trainer.classifier().eval()(x)
        loaded = clf(x)
    assert _relative_error(loaded, ours) < 3e-2
    trainer.model.use_fast_path(channels_last=True)  # float32 again: identical
    with torch.no_grad():
        assert torch.allclose(trainer.classifier().eval()(x), loaded, atol=1e-5)
