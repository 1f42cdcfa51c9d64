"""Elo ratings from pairwise comparisons, with bootstrap confidence intervals.

Ratings are the maximum-likelihood Bradley–Terry fit on the Elo scale (as Chatbot Arena computes them), not
the order-dependent online Elo update: ``P(i beats j) = 1 / (1 + 10 ** ((R_j - R_i) / 400))``. Outcomes may be
soft (the judge's order-averaged probability that ``i`` is better), ties count half. Ratings are centred on a
mean of 1000.

Confidence intervals come from a bootstrap over *prompts*: all comparisons made on one prompt are resampled
together, since they share the same answers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

SCALE = 400.0 / math.log(10.0)
"""Elo points per unit of natural log-odds."""


@dataclass(frozen=True)
class Outcome:
    """One comparison: ``score`` is i's result against j (1 = i better, 0 = j better, 0.5 = tie, or a
    probability).

    Attributes:
        i: Name of the first model.
        j: Name of the second model.
        score: i's score in [0, 1].
        cluster: What the bootstrap resamples together (the prompt id).
    """

    i: str
    j: str
    score: float
    cluster: str = ""


def _fit(n_players: int, idx_i: Any, idx_j: Any, score: Any, weight: Any, prior: float,
         iters: int = 10_000, tol: float = 1e-10) -> Any:
    """Bradley–Terry strengths by minorisation–maximisation (Hunter 2004); log-strengths centred on 0."""
    import numpy as np

    wins = np.zeros(n_players)
    games = np.zeros((n_players, n_players))
    np.add.at(wins, idx_i, weight * score)
    np.add.at(wins, idx_j, weight * (1.0 - score))
    np.add.at(games, (idx_i, idx_j), weight)
    games = games + games.T
    if prior > 0:  # `prior` virtual drawn games between every pair that met keep ratings finite
        met = games > 0
        games = games + prior * met
        wins = wins + 0.5 * prior * met.sum(axis=1)
    p = np.ones(n_players)
    active = games.sum(axis=1) > 0
    for _ in range(iters):
        denom = (games / (p[:, None] + p[None, :])).sum(axis=1)
        new = np.where(active & (denom > 0), wins / np.where(denom > 0, denom, 1.0), p)
        new = np.maximum(new, 1e-300)
        new = new / math.exp(float(np.log(new[active]).mean())) if active.any() else new
        if np.max(np.abs(np.log(new) - np.log(p))) < tol:
            p = new
            break
        p = new
    return np.log(p)


def fit_elo(outcomes: Sequence[Outcome], players: Sequence[str] | None = None, prior: float = 1.0,
            base: float = 1000.0) -> dict[str, float]:
    """Elo ratings (mean ``base``) maximising the Bradley–Terry likelihood of ``outcomes``.

    Args:
        outcomes: The comparisons.
        players: All model names, in display order (default: in order of appearance).
        prior: Virtual drawn games added between each pair that met (0 = plain MLE; a model that won
            every game then
            has an infinite rating).
        base: The mean rating.
    """
    import numpy as np

    names = _players(outcomes, players)
    if not outcomes:
        return {n: base for n in names}
    pos = {n: k for k, n in enumerate(names)}
    ii = np.array([pos[o.i] for o in outcomes])
    jj = np.array([pos[o.j] for o in outcomes])
    s = np.array([o.score for o in outcomes], dtype=float)
    logp = _fit(len(names), ii, jj, s, np.ones(len(outcomes)), prior)
    return {n: base + SCALE * float(logp[k]) for n, k in pos.items()}


def bootstrap_elo(outcomes: Sequence[Outcome], players: Sequence[str] | None = None, rounds: int = 1000,
                  seed: int = 0, prior: float = 1.0, base: float = 1000.0, level: float = 0.95,
                  reference: str | None = None) -> dict[str, Any]:
    """Elo ratings with percentile bootstrap intervals, resampling clusters (prompts) with replacement.

    Returns:
        ``{"ratings": {name: {"elo", "ci": [lo, hi]}}, "vs_reference": {name: {"diff", "ci"}}, "reference",
        "comparisons", "clusters", "rounds"}``; ``vs_reference`` gives each model's rating minus the
        reference's (default: the first player) with its own bootstrap interval, which is tighter than
        comparing two intervals.
    """
    import numpy as np

    names = _players(outcomes, players)
    point = fit_elo(outcomes, names, prior, base)
    reference = reference if reference in names else (names[0] if names else None)
    out: dict[str, Any] = {"ratings": {}, "vs_reference": {}, "reference": reference,
                           "comparisons": len(outcomes), "rounds": rounds}
    clusters = sorted({o.cluster for o in outcomes})
    out["clusters"] = len(clusters)
    if not outcomes:
        for n in names:
            out["ratings"][n] = {"elo": base, "ci": [None, None]}
        return out
    pos = {n: k for k, n in enumerate(names)}
    cpos = {c: k for k, c in enumerate(clusters)}
    ii = np.array([pos[o.i] for o in outcomes])
    jj = np.array([pos[o.j] for o in outcomes])
    s = np.array([o.score for o in outcomes], dtype=float)
    cl = np.array([cpos[o.cluster] for o in outcomes])
    rng = np.random.default_rng(seed)
    draws = np.empty((rounds, len(names)))
    for b in range(rounds):
        counts = np.bincount(rng.integers(0, len(clusters), len(clusters)), minlength=len(clusters))
        draws[b] = base + SCALE * _fit(len(names), ii, jj, s, counts[cl].astype(float), prior)
    tail = 100 * (1 - level) / 2
    for n, k in pos.items():
        lo, hi = np.percentile(draws[:, k], [tail, 100 - tail])
        out["ratings"][n] = {"elo": point[n], "ci": [float(lo), float(hi)]}
    if reference is not None:
        r = pos[reference]
        for n, k in pos.items():
            lo, hi = np.percentile(draws[:, k] - draws[:, r], [tail, 100 - tail])
            out["vs_reference"][n] = {"diff": point[n] - point[reference], "ci": [float(lo), float(hi)]}
    return out


def expected_score(r_i: float, r_j: float) -> float:
    """P(i beats j) under the Elo model."""
    return 1.0 / (1.0 + 10 ** ((r_j - r_i) / 400.0))


def _players(outcomes: Sequence[Outcome], players: Sequence[str] | None) -> list[str]:
    names = list(players or [])
    for o in outcomes:
        for n in (o.i, o.j):
            if n not in names:
                names.append(n)
    return names
