"""A linear head trained with one of the weak-to-strong losses; the checkpoint is chosen on a validation split.

The head starts at zero (as openai/weak-to-strong initialises its head), trains with Adam on minibatches, and is
evaluated on the validation split after every epoch. The validation *targets* are whatever the caller passes:
for a student they are the weak supervisor's labels, never ground truth (the sweep enforces it), and the epoch with
the best accuracy against them (ties broken by AUROC, then to the earlier epoch) is kept. ``select: auroc`` is
EleutherAI/w2s's ``val_auroc``; it ignores the threshold, so an early, badly calibrated epoch can win.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from charter.oversight.losses import LossSpec, loss_value


class HeadConfig(BaseModel):
    """How linear heads (probes) are trained."""

    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(default=30, ge=1, description="Passes over the training split.")
    lr: float = Field(default=0.01, gt=0, description="Adam learning rate.")
    batch_size: int = Field(default=32, ge=2, description="Items per step (logconf's quantile is per batch).")
    weight_decay: float = Field(default=1e-3, ge=0, description="L2 penalty on the weights (AdamW decay).")
    select: Literal["accuracy", "auroc", "last"] = Field(
        default="accuracy", description="Checkpoint choice on the validation split: accuracy against its (weak) "
                                        "targets (ties broken by AUROC), AUROC alone, or the last epoch.")


@dataclass
class Head:
    """A trained linear head over standardised features."""

    weight: Any
    bias: float
    scale: Any
    shift: Any
    epoch: int

    def logits(self, x: Any) -> Any:
        """``z`` per row of ``x``."""
        return ((x - self.shift) / self.scale) @ self.weight + self.bias


def auroc(y: Any, score: Any) -> float | None:
    """Area under the ROC curve (ties count half); None when ``y`` has one class only."""
    import numpy as np

    y, score = np.asarray(y).astype(bool), np.asarray(score, dtype=np.float64)
    n1, n0 = int(y.sum()), int((~y).sum())
    if n1 == 0 or n0 == 0:
        return None
    order = np.argsort(score, kind="mergesort")
    ranks = np.empty(len(score), dtype=np.float64)
    ranks[order] = np.arange(1, len(score) + 1)
    for v in np.unique(score):  # average ranks of ties
        tie = score == v
        if tie.sum() > 1:
            ranks[tie] = ranks[tie].mean()
    return float((ranks[y].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def _score(cfg: HeadConfig, z: Any, t: Any) -> float:
    import numpy as np

    hard = np.asarray(t) > 0.5
    acc = float(((np.asarray(z) > 0) == hard).mean())
    a = auroc(hard, z)
    if cfg.select == "accuracy":
        return acc + 1e-3 * (a or 0.0)
    return acc if a is None else a


def train_head(x_train: Any, t_train: Any, x_val: Any, t_val: Any, loss: LossSpec, cfg: HeadConfig, seed: int,
               bias: bool = True) -> Head:
    """Fit a head on ``(x_train, t_train)`` (soft targets in [0, 1]) and keep the best epoch on ``(x_val, t_val)``.

    ``bias=False`` (pair tasks: ``x`` is a difference of two responses' features) also skips centring, so the
    head stays antisymmetric: swapping A and B flips the logit.
    """
    import numpy as np
    import torch

    x_train = np.asarray(x_train, dtype=np.float32)
    shift = x_train.mean(0) if bias else np.zeros(x_train.shape[1], dtype=np.float32)
    scale = (x_train.std(0) if bias else np.sqrt((x_train**2).mean(0))) + 1e-6
    xt = torch.from_numpy((x_train - shift) / scale)
    xv = torch.from_numpy((np.asarray(x_val, dtype=np.float32) - shift) / scale)
    tt = torch.as_tensor(np.asarray(t_train, dtype=np.float32))
    gen = torch.Generator().manual_seed(seed)
    w = torch.zeros(xt.shape[1], requires_grad=True)
    b = torch.zeros(1, requires_grad=bias)
    opt = torch.optim.AdamW([w, b] if bias else [w], lr=cfg.lr, weight_decay=cfg.weight_decay)
    n = len(xt)
    steps_per_epoch = max(1, -(-n // cfg.batch_size))
    total = cfg.epochs * steps_per_epoch
    best: tuple[float, int, Any, float] | None = None
    step = 0
    for epoch in range(1, cfg.epochs + 1):
        perm = torch.randperm(n, generator=gen)
        for s in range(0, n, cfg.batch_size):
            idx = perm[s: s + cfg.batch_size]
            if len(idx) < 2:
                continue
            z = xt[idx] @ w + b
            value = loss_value(loss, z, tt[idx], step / total)
            opt.zero_grad()
            value.backward()
            opt.step()
            step += 1
        with torch.no_grad():
            zv = (xv @ w + b).numpy()
        score = float(epoch) if cfg.select == "last" else _score(cfg, zv, t_val)
        if best is None or score > best[0]:
            best = (score, epoch, w.detach().clone().numpy(), float(b.detach()[0]))
    assert best is not None
    return Head(weight=best[2], bias=best[3], scale=scale, shift=shift, epoch=best[1])
