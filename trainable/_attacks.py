"""Linf PGD with a random start, projected onto the eps-ball and [0, 1], and the embedding-margin
loss that attacks clustering models through their geometry rather than their heads.

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

__all__ = ["pgd_linf", "frozen", "project_linf", "embedding_margin_loss"]


@contextmanager
def frozen(model: nn.Module) -> Iterator[None]:
    """Eval mode for the duration of an attack, restoring the previous mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def project_linf(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    return torch.minimum(torch.maximum(x_adv, x - eps), x + eps).clamp_(0.0, 1.0)


def pgd_linf(loss_fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, eps: float,
             step_size: float, steps: int, random_start: bool = True,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """Maximise loss_fn(x_adv) over the Linf eps-ball around x with signed-gradient steps."""
    x = x.detach()
    if random_start:
        noise = torch.rand(x.shape, generator=generator, device="cpu").to(x.device, x.dtype)
        x_adv = project_linf(x + (2 * noise - 1) * eps, x, eps)
    else:
        x_adv = x.clone()
    for _ in range(steps):
        x_adv.requires_grad_(True)
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(loss_fn(x_adv), x_adv)
        x_adv = project_linf(x_adv.detach() + step_size * grad.sign(), x, eps)
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
