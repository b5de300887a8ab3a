"""PGD in the Linf or L2 threat model, with a random start, projected onto the eps-ball and
[0, 1], and the embedding-margin loss that attacks clustering models through their geometry
rather than their heads.

Linf steps move by the gradient's sign (Madry et al. 2018); L2 steps by the gradient divided by
its L2 norm, per example, and an L2 projection scales the perturbation back onto the ball
(clipping to [0, 1] afterwards only shortens it, so it stays inside).

Gradients are taken with torch.autograd.grad with respect to the input alone, so an attack never
writes into the weights' .grad; callers put the model in eval mode (see :func:`frozen`) so
batch-norm statistics are not updated by attack passes either.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

__all__ = ["NORMS", "pgd", "frozen", "project", "embedding_margin_loss"]

NORMS = ("linf", "l2")


@contextmanager
def frozen(model: nn.Module) -> Iterator[None]:
    """Eval mode for the duration of an attack, restoring the previous mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _per_example_norm(t: torch.Tensor) -> torch.Tensor:
    """L2 norm of each example's tensor, shaped to broadcast against it."""
    return t.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (t.ndim - 1))


def project(x_adv: torch.Tensor, x: torch.Tensor, eps: float, norm: str = "linf"
            ) -> torch.Tensor:
    """x_adv moved to the nearest point of the eps-ball around x (in the norm), then into
    [0, 1]."""
    if norm == "linf":
        return torch.minimum(torch.maximum(x_adv, x - eps), x + eps).clamp_(0.0, 1.0)
    delta = x_adv - x
    delta = delta * (eps / _per_example_norm(delta)).clamp(max=1.0)
    return (x + delta).clamp_(0.0, 1.0)


def _step(grad: torch.Tensor, norm: str) -> torch.Tensor:
    """The direction of steepest ascent of unit norm."""
    return grad.sign() if norm == "linf" else grad / _per_example_norm(grad)


def _random_start(x: torch.Tensor, eps: float, norm: str,
                  generator: torch.Generator | None) -> torch.Tensor:
    """Uniform in the Linf ball; in the L2 ball, a uniform direction scaled by eps * U(0, 1)."""
    if norm == "linf":
        noise = torch.rand(x.shape, generator=generator, device="cpu").to(x.device, x.dtype)
        return x + (2 * noise - 1) * eps
    direction = torch.randn(x.shape, generator=generator, device="cpu").to(x.device, x.dtype)
    radius = torch.rand(len(x), generator=generator, device="cpu").to(x.device, x.dtype)
    return x + direction / _per_example_norm(direction) * eps * radius.view(
        -1, *[1] * (x.ndim - 1))


def pgd(loss_fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, eps: float,
        step_size: float, steps: int, norm: str = "linf", random_start: bool = True,
        generator: torch.Generator | None = None) -> torch.Tensor:
    """Maximise loss_fn(x_adv) over the eps-ball around x in ``norm`` (linf or l2) with
    ``steps`` steps of ``step_size``."""
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; choose one of {', '.join(NORMS)}")
    x = x.detach()
    x_adv = project(_random_start(x, eps, norm, generator), x, eps, norm) if random_start \
        else x.clone()
    for _ in range(steps):
        x_adv.requires_grad_(True)
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(loss_fn(x_adv), x_adv)
        x_adv = project(x_adv.detach() + step_size * _step(grad, norm), x, eps, norm)
    return x_adv.detach()


def embedding_margin_loss(embed: Callable[[torch.Tensor], torch.Tensor], centroids: torch.Tensor,
                          centroid_class: torch.Tensor, y: torch.Tensor
                          ) -> Callable[[torch.Tensor], torch.Tensor]:
    """Distance to the nearest own-class centroid minus distance to the nearest other-class one.

    Maximising it pulls the embedding towards the nearest other-class centroid. It reads the
    geometry directly, so a head whose scores are flat or saturated (L=1 makes the logprob head
    piecewise constant) cannot hide the gradient: the attack clustering models are judged by.
    """
    own = centroid_class.to(y.device)[None, :] == y[:, None]
    centroids = centroids.detach().to(y.device)

    def loss(x_adv: torch.Tensor) -> torch.Tensor:
        emb = embed(x_adv)
        dist = (emb[:, None, :] - centroids[None]).pow(2).sum(-1).clamp_min(1e-12).sqrt()
        d_own = dist.masked_fill(~own, math.inf).amin(1)
        d_other = dist.masked_fill(own, math.inf).amin(1)
        return (d_own - d_other).sum()

    return loss
