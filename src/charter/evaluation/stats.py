"""Small statistics for the evaluation: proportions with Wilson intervals, bootstrap intervals of means, and
Cohen's kappa. Every figure the report shows comes with an interval from here (or from :mod:`.elo`)."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from typing import Any

Z95 = 1.959963984540054


def wilson(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion (95% by default); ``(0, 1)`` when ``n == 0``.

    ``successes`` may be fractional (ties counted as half), which keeps the formula well defined.
    """
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def proportion(successes: float, n: int) -> dict[str, Any]:
    """A proportion as the report shows it: ``{"value", "ci": [lo, hi], "n", "k"}`` (value None if n == 0)."""
    lo, hi = wilson(successes, n)
    return {"value": successes / n if n else None, "ci": [lo, hi], "n": n, "k": successes}


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) of already sorted values, linearly interpolated."""
    if not sorted_values:
        return float("nan")
    pos = q * (len(sorted_values) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def bootstrap_ci(
    values: Sequence[float],
    stat: Callable[[Sequence[float]], float] | None = None,
    rounds: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``stat`` (the mean by default) over ``values``."""
    if not values:
        return float("nan"), float("nan")
    stat = stat or (lambda xs: sum(xs) / len(xs))
    rng = random.Random(seed)
    n = len(values)
    draws = sorted(stat([values[rng.randrange(n)] for _ in range(n)]) for _ in range(rounds))
    tail = (1 - level) / 2
    return percentile(draws, tail), percentile(draws, 1 - tail)


def mean_ci(values: Sequence[float], rounds: int = 1000, seed: int = 0) -> dict[str, Any]:
    """A mean as the report shows it: ``{"value", "ci": [lo, hi], "n"}`` with a bootstrap interval."""
    if not values:
        return {"value": None, "ci": [None, None], "n": 0}
    import numpy as np

    x = np.asarray(values, dtype=float)
    idx = np.random.default_rng(seed).integers(0, len(x), size=(rounds, len(x)))
    lo, hi = np.percentile(x[idx].mean(axis=1), [2.5, 97.5])
    return {"value": float(x.mean()), "ci": [float(lo), float(hi)], "n": len(values)}


def cohen_kappa(a: Sequence[str], b: Sequence[str]) -> float | None:
    """Agreement between two labelings beyond chance (1 = perfect, 0 = chance); None when undefined."""
    if len(a) != len(b) or not a:
        return None
    n = len(a)
    observed = sum(x == y for x, y in zip(a, b, strict=True)) / n
    labels = set(a) | set(b)
    expected = sum((sum(x == k for x in a) / n) * (sum(y == k for y in b) / n) for k in labels)
    if expected >= 1.0:
        return None
    return (observed - expected) / (1 - expected)
