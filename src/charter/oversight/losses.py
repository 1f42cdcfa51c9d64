"""The weak-to-strong losses, on one logit per item (``P(label 1) = sigmoid(z)``) and soft weak labels ``t``.

Written on one logit rather than the anchors' two-class logits: a two-class softmax over ``[0, z]`` is exactly
``sigmoid(z)``, so each loss below equals openai/weak-to-strong's on those logits.

* ``xent`` — cross-entropy to the soft weak labels (the baseline).
* ``logconf`` — Burns et al.'s auxiliary confidence loss: the target is ``(1 − c)·t + c·ĥ`` where ``ĥ`` is the
  student's own prediction hardened at the batch quantile that matches the weak labels' class prior, and ``c``
  grows to ``alpha`` (default 0.5). **Warm-up differs from the anchor:** openai/weak-to-strong sets
  ``c = alpha·step_frac`` during warm-up and then *jumps* to ``alpha`` (from ``0.1·alpha`` at the default
  warm-up of 10%); here ``c = alpha·min(1, step_frac / warmup)`` ramps linearly to ``alpha`` and stays there
  (as EleutherAI/w2s does in steps).
* ``product`` — the target is proportional to ``p^beta · t^alpha`` (student times weak, renormalised), detached.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

LossName = Literal["xent", "logconf", "product"]
LOSSES: tuple[LossName, ...] = ("xent", "logconf", "product")


@dataclass(frozen=True)
class LossSpec:
    """A loss and its settings.

    Attributes:
        name: ``"xent"``, ``"logconf"`` or ``"product"``.
        alpha: logconf: the final weight of the student's own hardened predictions; product: the weak labels'
            exponent.
        beta: product: the student's exponent.
        warmup: logconf: fraction of training over which the weight ramps linearly from 0 to ``alpha``.
    """

    name: LossName = "xent"
    alpha: float = 0.5
    beta: float = 1.0
    warmup: float = 0.2


def _xent(z: Any, target: Any) -> Any:
    import torch.nn.functional as F

    return F.binary_cross_entropy_with_logits(z, target, reduction="mean")


def logconf_coef(spec: LossSpec, step_frac: float) -> float:
    """The weight ``c`` of the student's own predictions at ``step_frac`` of training (linear ramp)."""
    if spec.warmup <= 0:
        return spec.alpha
    return spec.alpha * min(1.0, max(0.0, step_frac) / spec.warmup)


def loss_value(spec: LossSpec, z: Any, t: Any, step_frac: float) -> Any:
    """The loss of logits ``z`` (shape ``[n]``) against soft weak labels ``t`` (``P(label 1)``, shape ``[n]``)."""
    import torch

    z, t = z.float(), t.float()
    if spec.name == "xent":
        return _xent(z, t)
    p1 = torch.sigmoid(z)
    if spec.name == "product":
        num = p1.pow(spec.beta) * t.pow(spec.alpha)
        den = num + (1 - p1).pow(spec.beta) * (1 - t).pow(spec.alpha)
        return _xent(z, (num / den.clamp_min(1e-12)).detach())
    # logconf, following the anchor: threshold P(class 0) at the quantile given by the weak labels' class-1 share
    coef = logconf_coef(spec, step_frac)
    p0 = 1 - p1
    threshold = torch.quantile(p0.detach(), t.mean().clamp(0, 1))
    hard1 = (p0 < threshold).float()
    return _xent(z, (t * (1 - coef) + hard1.detach() * coef))
