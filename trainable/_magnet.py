"""The Magnet loss (Rippel et al. 2016) in its stable logsumexp form."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["magnet_loss", "MagnetLoss"]


def magnet_loss(embeddings: torch.Tensor, example_slot: torch.Tensor,
                slot_class: torch.Tensor, alpha: float = 1.0,
                reduction: str = "mean") -> tuple[torch.Tensor, torch.Tensor]:
    """Magnet loss over a batch of M clusters.

    embeddings [B, d]; example_slot [B] in 0..M-1 (which batch cluster each example is from);
    slot_class [M] the class of each batch cluster. Distances use the batch cluster means,
    sigma^2 = sum_n d_n,own / (B - 1), and
    l_n = relu(alpha + d_n,own / (2 sigma^2) + logsumexp_{m: class(m) != y_n}(-d_nm / (2 sigma^2))).
    Unlike the original -log(num / (den + 1e-8) + 1e-8), nothing caps the loss at 18.42.
    Returns (loss, per-example losses).
    """
    m = slot_class.shape[0]
    one_hot = torch.nn.functional.one_hot(example_slot, m).to(embeddings.dtype)  # [B, M]
    counts = one_hot.sum(0).clamp(min=1)
    means = (one_hot.T @ embeddings) / counts[:, None]  # [M, d]
    dist = (embeddings[:, None, :] - means[None, :, :]).pow(2).sum(-1)  # [B, M]
    own = dist.gather(1, example_slot[:, None]).squeeze(1)
    b = embeddings.shape[0]
    sigma2 = own.sum() / max(b - 1, 1)
    example_class = slot_class[example_slot]
    impostor = slot_class[None, :] != example_class[:, None]
    scaled = -dist / (2 * sigma2)
    neg = torch.logsumexp(scaled.masked_fill(~impostor, float("-inf")), dim=1)
    per_example = torch.relu(alpha + own / (2 * sigma2) + neg)
    loss = per_example.mean() if reduction == "mean" else per_example.sum()
    return loss, per_example


class MagnetLoss(nn.Module):
    """Module form of :func:`magnet_loss`; returns the reduced loss."""

    def __init__(self, alpha: float = 1.0, reduction: str = "mean") -> None:
        super().__init__()
        self.alpha, self.reduction = alpha, reduction

    def forward(self, embeddings: torch.Tensor, example_slot: torch.Tensor,
                slot_class: torch.Tensor) -> torch.Tensor:
        return magnet_loss(embeddings, example_slot, slot_class, self.alpha, self.reduction)[0]
