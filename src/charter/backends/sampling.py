"""Per-request seeded sampling, shared by the engine and the plain ``model.generate`` path.

Every sampled request owns a ``torch.Generator`` seeded from its :attr:`GenParams.seed` and draws exactly one number
from it per step (see :func:`draw`), so its answer depends on its own logits only: not on which requests shared its
batch, how the call cache chunked the misses, or how many worker processes split the call. What is left is
floating-point rounding: another batch shape rounds a row's logits a little differently (~1e-7 in fp32, which
rarely moves a draw; bf16 logits are coarse, so in bf16 answers often differ — ``bench/batch_invariance.py``
counts how often).

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
    ``p.top_p`` (the smallest set of most likely tokens whose probability reaches ``top_p``).

    The draw is one uniform number from the request's generator per step, mapped through the cumulative
    probabilities of the candidates in token-id order (inverse CDF). So a rounding difference in another batch
    shape moves the outcome only when the number falls within that difference of a boundary: a token at the edge of
    the nucleus that rounds in or out shifts the cumulative mass by its own tiny probability, and two near-equal
    probabilities that swap places in a sort change nothing. (A draw over the nucleus in probability order, or one
    exponential per candidate by rank, would reshuffle every candidate's luck when one token enters or leaves.)
    """
    probs = torch.softmax(logits.float() / p.temperature, dim=-1)
    ids: torch.Tensor | None = None
    mass = probs
    if p.top_p < 1.0:
        top, idx = probs.topk(min(NUCLEUS_TOPK, probs.shape[-1]))
        if float(top.sum()) < p.top_p:
            top, idx = probs.sort(descending=True)
        keep = (top.cumsum(0) - top) < p.top_p
        ids, order = idx[keep].sort()
        mass = top[keep][order]
    cdf = mass.double().cumsum(0)
    u = torch.rand((), generator=generator, dtype=torch.float64)
    k = min(int(torch.searchsorted(cdf, u * cdf[-1], right=True)), cdf.shape[0] - 1)
    return int(ids[k]) if ids is not None else k


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
