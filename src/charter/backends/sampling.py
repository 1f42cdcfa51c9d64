"""Per-request seeded sampling, shared by the engine and the plain ``model.generate`` path.

Every sampled request owns a ``torch.Generator`` seeded from its :attr:`GenParams.seed` and draws exactly one token
from it per step, so its answer depends on its own logits only — not on which requests shared its batch, how the
call cache chunked the misses, or how many worker processes split the call. (Floating-point kernels may still round
a row differently in another batch shape: exact in fp32 here, see ``bench/batch_invariance.py`` for bf16.)

:class:`SeededSampler` plugs the same draw into Hugging Face ``generate``: it is a logits processor that samples each
row itself and leaves only the drawn token finite, so ``generate`` runs greedy (``do_sample=False``) and picks it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import LogitsProcessor

from charter.backends.base import GenParams

NUCLEUS_TOPK = 64
"""Top-p is computed on the 64 most likely tokens when they already hold the nucleus (exact), else on all."""


def draw(logits: torch.Tensor, p: GenParams, generator: torch.Generator) -> int:
    """One token from a row of next-token ``logits`` with temperature ``p.temperature`` (> 0) and nucleus
    ``p.top_p``: the smallest set of most likely tokens whose probability reaches ``top_p``."""
    probs = torch.softmax(logits.float() / p.temperature, dim=-1)
    if p.top_p < 1.0:
        top, idx = probs.topk(min(NUCLEUS_TOPK, probs.shape[-1]))
        if float(top.sum()) < p.top_p:
            top, idx = probs.sort(descending=True)
        keep = (top.cumsum(0) - top) < p.top_p
        # draw over the nucleus in token-id order, not probability order: two near-equal probabilities that
        # round the other way in another batch shape swap places in a sort, which would change the draw
        idx, order = idx[keep].sort()
        return int(idx[torch.multinomial(top[keep][order], 1, generator=generator)])
    return int(torch.multinomial(probs, 1, generator=generator))


def generator_for(p: GenParams) -> torch.Generator:
    """The request's own random stream."""
    return torch.Generator().manual_seed(p.seed)


class SeededSampler(LogitsProcessor):
    """A logits processor that samples row ``i`` with ``params[i]`` from its own seeded generator (greedy rows, at
    temperature 0, are left to ``generate``'s argmax); use it with ``do_sample=False``."""

    def __init__(self, params: Sequence[GenParams]) -> None:
        self.params = list(params)
        self.generators = [generator_for(p) if p.temperature > 0 else None for p in self.params]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if len(self.params) != scores.shape[0]:
            raise ValueError(f"SeededSampler has {len(self.params)} rows' parameters for {scores.shape[0]} rows")
        out = scores.clone()
        for i, (p, gen) in enumerate(zip(self.params, self.generators, strict=True)):
            if gen is None:
                continue
            token = draw(scores[i], p, gen)
            out[i].fill_(float("-inf"))
            out[i, token] = 0.0
        return out  # type: ignore[return-value]
