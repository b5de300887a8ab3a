"""Heads that turn an embedding into class scores from the nearest L cluster centres.

``raw`` is ClusTR's head, kept to reproduce the paper: every score lies in [0, K], softmax is
nearly uniform and gradients vanish away from centroids (the source of its gradient masking).
``logprob`` returns log p(c) of the normalised cluster vote, so softmax(z) equals the vote.
``learned`` adds a learnable map from the C*K cluster scores (with a learnable temperature) to
the logprob logits, initialised at zero so it starts as ``logprob``.
"""

from __future__ import annotations

import torch
from torch import nn

from ._config import HEADS

__all__ = ["ClusterHead", "EMPTY_CLASS_LOGIT"]

EMPTY_CLASS_LOGIT = -1e4  # log-vote of a class with no kept cluster (finite, unlike -inf)


class ClusterHead(nn.Module):
    """Class scores from an embedding, given centroids (cluster id = class*K + i) and sigma^2."""

    def __init__(self, kind: str, num_classes: int, k: int, top_l: int, embedding_dim: int) -> None:
        super().__init__()
        if kind not in HEADS:
            raise ValueError(f"unknown head {kind!r}; choose one of {', '.join(HEADS)}")
        if not 1 <= top_l <= num_classes * k:
            raise ValueError(f"L={top_l} must lie in [1, C*K={num_classes * k}]")
        self.kind, self.num_classes, self.k, self.top_l = kind, num_classes, k, top_l
        self.register_buffer("centroids", torch.zeros(num_classes * k, embedding_dim))
        self.register_buffer("sigma2", torch.ones(()))
        if kind == "learned":
            self.map = nn.Linear(num_classes * k, num_classes)
            nn.init.zeros_(self.map.weight)
            nn.init.zeros_(self.map.bias)
            self.log_temperature = nn.Parameter(torch.zeros(()))

    @property
    def centroid_class(self) -> torch.Tensor:
        """The class of each centre: cluster id = class*K + i."""
        return torch.arange(self.num_classes, device=self.centroids.device).repeat_interleave(
            self.k)

    @torch.no_grad()
    def set_clusters(self, centroids: torch.Tensor, sigma2: torch.Tensor) -> None:
        self.centroids.copy_(centroids)
        self.sigma2.copy_(sigma2)

    def cluster_scores(self, emb: torch.Tensor) -> torch.Tensor:
        """s_j = -||f(x) - mu_j||^2 / (2 sigma^2) for every centre j: [B, C*K]."""
        dist = (emb[:, None, :] - self.centroids[None]).pow(2).sum(-1)
        return -dist / (2 * self.sigma2)

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        s = self.cluster_scores(emb)
        if self.kind == "learned":
            s = s * self.log_temperature.exp()
        kept = torch.zeros_like(s, dtype=torch.bool).scatter_(
            1, s.topk(self.top_l, dim=1).indices, True)
        per_class = s.masked_fill(~kept, float("-inf")).view(-1, self.num_classes, self.k)
        if self.kind == "raw":
            return per_class.exp().sum(-1)
        empty = ~kept.view(-1, self.num_classes, self.k).any(-1)
        # logsumexp over an all -inf row has a NaN gradient: give empty classes finite inputs,
        # leave them out of the normaliser, and set them to the constant afterwards
        class_lse = torch.logsumexp(per_class.masked_fill(empty[..., None], 0.0), dim=-1)
        norm = torch.logsumexp(class_lse.masked_fill(empty, float("-inf")), dim=1, keepdim=True)
        log_vote = (class_lse - norm).masked_fill(empty, EMPTY_CLASS_LOGIT)
        if self.kind == "learned":
            return log_vote + self.map(s)
        return log_vote
