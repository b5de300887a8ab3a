"""Training objectives, one function per ``objective.variant``.

Each takes a :class:`Batch` and returns (loss, named terms, per-example magnet loss or None).
Attacks run under :func:`frozen` and differentiate only with respect to the input.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ._attacks import frozen, pgd_linf, project_linf
from ._config import TrainConfig
from ._heads import ClusterHead
from ._magnet import magnet_loss
from ._models import Backbone

__all__ = ["Batch", "OBJECTIVES", "consistency"]


@dataclass
class Batch:
    model: Backbone
    head: ClusterHead | None
    cfg: TrainConfig
    x: torch.Tensor  # [B, C, H, W] in [0, 1], augmented
    y: torch.Tensor
    # a clustering batch has M slots, one sampled cluster each, D examples per slot
    example_slot: torch.Tensor | None  # [B] the slot (0..M-1) of each example
    slot_class: torch.Tensor | None  # [M] the class of each slot's cluster
    generator: torch.Generator
    slot_cluster: torch.Tensor | None = None  # [M] each slot's cluster id (for the sampler)

    def magnet(self, emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return magnet_loss(emb, self.example_slot, self.slot_class, self.cfg.clusters.alpha)

    def attack(self, loss_fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        a = self.cfg.attack
        with frozen(self.model):
            return pgd_linf(loss_fn, self.x, self.cfg.eps, a.step_size, a.steps,
                            generator=self.generator)


Result = tuple[torch.Tensor, dict[str, float], torch.Tensor | None]


def consistency(kind: str, emb: torch.Tensor, z: torch.Tensor, emb_adv: torch.Tensor,
                z_adv: torch.Tensor, reduction: str) -> torch.Tensor:
    """QTRADES consistency between clean and adversarial outputs, per example then reduced.

    ce: CE between the detached clean vote p(x) and softmax(z(x_adv)); mse: squared error
    between embeddings (mean over dimensions); kl: KL(p(x) || softmax(z(x_adv))).
    """
    log_q = F.log_softmax(z_adv, dim=1)
    if kind == "ce":
        per = -(F.softmax(z, dim=1).detach() * log_q).sum(1)
    elif kind == "mse":
        per = (emb_adv - emb).pow(2).mean(1)
    else:
        log_p = F.log_softmax(z, dim=1)
        per = (log_p.exp() * (log_p - log_q)).sum(1)
    return per.mean() if reduction == "mean" else per.sum()


def _ce(b: Batch) -> Result:
    loss = F.cross_entropy(b.model.linear_logits(b.x), b.y)
    return loss, {"ce": loss.item()}, None


def _pgd_at(b: Batch) -> Result:
    x_adv = b.attack(lambda xa: F.cross_entropy(b.model.linear_logits(xa), b.y))
    loss = F.cross_entropy(b.model.linear_logits(x_adv), b.y)
    return loss, {"ce_adv": loss.item()}, None


def _trades(b: Batch) -> Result:
    with torch.no_grad(), frozen(b.model):
        p_clean = F.softmax(b.model.linear_logits(b.x), dim=1)

    def kl_to_clean(xa: torch.Tensor) -> torch.Tensor:
        return F.kl_div(F.log_softmax(b.model.linear_logits(xa), 1), p_clean, reduction="sum")

    x_adv = b.attack(kl_to_clean)
    logits = b.model.linear_logits(b.x)
    ce = F.cross_entropy(logits, b.y)
    kl = F.kl_div(F.log_softmax(b.model.linear_logits(x_adv), 1), F.softmax(logits, 1),
                  reduction="batchmean")
    return ce + b.cfg.objective.lam * kl, {"ce": ce.item(), "kl": kl.item()}, None


def _magnet(b: Batch) -> Result:
    loss, per = b.magnet(b.model.embed(b.x))
    return loss, {"magnet": loss.item()}, per


def _qtrades(b: Batch) -> Result:
    obj = b.cfg.objective
    with torch.no_grad(), frozen(b.model):
        emb_c = b.model.embed(b.x)
        z_c = b.head(emb_c)

    def attack_loss(xa: torch.Tensor) -> torch.Tensor:
        emb_a = b.model.embed(xa)
        return consistency(b.cfg.attack.loss, emb_c, z_c, emb_a, b.head(emb_a), "sum")

    x_adv = b.attack(attack_loss)
    emb = b.model.embed(b.x)
    magnet, per = b.magnet(emb)
    z = b.head(emb)
    emb_adv = b.model.embed(x_adv)
    cons = consistency(obj.consistency, emb, z, emb_adv, b.head(emb_adv), obj.reduction)
    loss = magnet + obj.lam * cons
    terms = {"magnet": magnet.item(), "consistency": cons.item()}
    if obj.lam_ce > 0:
        ce = F.cross_entropy(z, b.y)
        loss = loss + obj.lam_ce * ce
        terms["ce"] = ce.item()
    return loss, terms, per


def _magnet_adv(b: Batch) -> Result:
    x_adv = b.attack(lambda xa: b.magnet(b.model.embed(xa))[0])
    magnet, per = b.magnet(b.model.embed(b.x))
    magnet_adv, _ = b.magnet(b.model.embed(x_adv))
    loss = magnet + b.cfg.objective.lam * magnet_adv
    terms = {"magnet": magnet.item(), "magnet_adv": magnet_adv.item()}
    if b.cfg.objective.lam_ce > 0:
        ce = F.cross_entropy(b.head(b.model.embed(b.x)), b.y)
        loss = loss + b.cfg.objective.lam_ce * ce
        terms["ce"] = ce.item()
    return loss, terms, per


def free_magnet_adv_replay(b: Batch, delta: torch.Tensor) -> tuple[Result, torch.Tensor]:
    """One replay of free adversarial training: a single backward serves weights and delta.

    The loss is magnet(x) + lam * magnet(x + delta); the caller steps the optimiser on the
    weights' gradients, and delta takes a signed step of size eps (Shafahi et al. 2019).
    """
    eps = b.cfg.eps
    delta = delta.detach().requires_grad_(True)
    x_adv = (b.x + delta).clamp(0, 1)
    magnet, per = b.magnet(b.model.embed(b.x))
    magnet_adv, _ = b.magnet(b.model.embed(x_adv))
    loss = magnet + b.cfg.objective.lam * magnet_adv
    loss.backward()
    new_delta = project_linf(b.x + delta.detach() + eps * delta.grad.sign(), b.x, eps) - b.x
    terms = {"magnet": magnet.item(), "magnet_adv": magnet_adv.item()}
    return (loss.detach(), terms, per), new_delta.detach()


OBJECTIVES: dict[str, Callable[[Batch], Result]] = {
    "ce": _ce, "pgd_at": _pgd_at, "trades": _trades,
    "magnet": _magnet, "qtrades": _qtrades, "magnet_adv": _magnet_adv,
}
