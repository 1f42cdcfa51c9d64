"""PGR and its nested bootstrap, from the rows of ``oversight/results.jsonl``.

For one cell (task, weak, strong, loss) with seeds ``s`` and the same test items ``i`` in every seed:

    PGR = (mean_s acc(student_s) − mean_s acc(weak_s)) / (mean_s acc(ceiling_s) − mean_s acc(weak_s))

(a ratio of means over seeds, which stays defined when one seed's gap is tiny). Its 95% interval is a nested
bootstrap: each round resamples seeds with replacement (outer), then test items with replacement within each drawn
seed (inner, the same items for weak, ceiling and student, so the three stay paired), and recomputes PGR. A round
whose resampled gap is ≤ 0 gives no PGR; their share is reported as ``undefined_share``.

Cells whose gap (ceiling − weak) is ≤ 0 are shown but left out of the summaries, as openai/weak-to-strong's
notebook drops them; a cell whose gap is below ``min_gap`` or whose gap interval reaches 0 carries a warning that its
PGR means little.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

CELL_KEYS = ("task", "weak", "strong", "loss")


def pgr(weak: float, ceiling: float, student: float) -> float | None:
    """(student − weak) / (ceiling − weak); None when the gap is ≤ 0."""
    gap = ceiling - weak
    return None if gap <= 0 else (student - weak) / gap


def _bits(s: str) -> list[bool]:
    return [c == "1" for c in s]


def nested_bootstrap(weak: Any, ceiling: Any, student: Any, rounds: int = 2000,
                     seed: int = 0) -> dict[str, Any]:
    """PGR interval from per-seed, per-item correctness arrays of shape ``[seeds, items]`` (bool or 0/1).

    Returns ``{"pgr_ci": [lo, hi] | None, "gap_ci": [lo, hi], "undefined_share": share of rounds with gap ≤ 0}``.
    """
    import numpy as np

    w, c, s = (np.asarray(a, dtype=np.float64) for a in (weak, ceiling, student))
    n_seeds, n_items = w.shape
    rng = np.random.default_rng(seed)
    seeds = rng.integers(0, n_seeds, size=(rounds, n_seeds))
    items = rng.integers(0, n_items, size=(rounds, n_seeds, n_items))

    def acc(a: Any) -> Any:
        return a[seeds[..., None], items].mean(axis=(1, 2))

    aw, ac, as_ = acc(w), acc(c), acc(s)
    gap = ac - aw
    ok = gap > 0
    vals = (as_[ok] - aw[ok]) / gap[ok]
    ci = [float(np.percentile(vals, 2.5)), float(np.percentile(vals, 97.5))] if len(vals) else None
    return {"pgr_ci": ci, "gap_ci": [float(np.percentile(gap, 2.5)), float(np.percentile(gap, 97.5))],
            "undefined_share": float(1 - ok.mean())}


def cells(rows: Sequence[dict[str, Any]], min_gap: float = 0.05, rounds: int = 2000,
          seed: int = 0) -> list[dict[str, Any]]:
    """One summary per (task, weak, strong, loss): the three accuracies, PGR with its CI, and warnings."""
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[tuple(str(r[k]) for k in CELL_KEYS)].append(r)
    out = []
    for key, runs in groups.items():
        runs = sorted(runs, key=lambda r: r["seed"])
        mean = {k: statistics.fmean(r[f"{k}_acc"] for r in runs) for k in ("weak", "ceiling", "student")}
        gap = mean["ceiling"] - mean["weak"]
        cell: dict[str, Any] = dict(zip(CELL_KEYS, key, strict=True))
        cell.update(seeds=[r["seed"] for r in runs], n_test=runs[0]["n_test"],
                    weak_acc=mean["weak"], ceiling_acc=mean["ceiling"], student_acc=mean["student"], gap=gap,
                    pgr=pgr(mean["weak"], mean["ceiling"], mean["student"]),
                    misfit=statistics.fmean(r["misfit"] for r in runs),
                    **{f"{k}_auroc": _mean_or_none([r.get(f"{k}_auroc") for r in runs])
                       for k in ("weak", "ceiling", "student")})
        lengths = {len(r["correct"][k]) for r in runs for k in ("weak", "ceiling", "student")}
        if len(lengths) == 1:
            w, c, s = ([_bits(r["correct"][k]) for r in runs] for k in ("weak", "ceiling", "student"))
            boot = nested_bootstrap(w, c, s, rounds=rounds, seed=seed)
        else:
            boot = {"pgr_ci": None, "gap_ci": None, "undefined_share": None}
        cell.update(boot)
        cell["warnings"] = gap_warnings(gap, boot.get("gap_ci"), min_gap, len(runs))
        cell["flags"] = gap_flags(gap, boot.get("gap_ci"), min_gap, len(runs))
        cell["in_summary"] = gap > 0
        out.append(cell)
    return sorted(out, key=lambda c: tuple(c[k] for k in CELL_KEYS))


def _mean_or_none(vals: Sequence[float | None]) -> float | None:
    got = [v for v in vals if v is not None]
    return statistics.fmean(got) if got else None


def gap_warnings(gap: float, gap_ci: Sequence[float] | None, min_gap: float, n_seeds: int) -> list[str]:
    """Plain warnings about a cell whose PGR means little."""
    out = []
    if gap <= 0:
        out.append(f"the ceiling is not above the weak supervisor (gap {gap * 100:+.1f} points): PGR is undefined; "
                   "left out of the summaries")
    elif gap < min_gap:
        out.append(f"gap of {gap * 100:.1f} points is below {min_gap * 100:.0f}: PGR divides by almost nothing "
                   "and means little")
    if gap > 0 and gap_ci is not None and gap_ci[0] <= 0:
        out.append("the gap's 95% interval reaches 0: the ceiling may be no better than the weak supervisor")
    if n_seeds < 2:
        out.append("one seed only: the interval covers test items, not training randomness")
    return out


def gap_flags(gap: float, gap_ci: Sequence[float] | None, min_gap: float, n_seeds: int) -> list[str]:
    """The same warnings as short tags, one per entry of :func:`gap_warnings`, in the same order."""
    out = []
    if gap <= 0:
        out.append("gap ≤ 0: excluded")
    elif gap < min_gap:
        out.append(f"gap < {min_gap * 100:.0f} pts")
    if gap > 0 and gap_ci is not None and gap_ci[0] <= 0:
        out.append("gap CI reaches 0")
    if n_seeds < 2:
        out.append("1 seed")
    return out


def summary(cell_list: Sequence[dict[str, Any]], min_gap: float = 0.05) -> dict[str, Any]:
    """Per loss: median PGR over cells with gap > 0, and over cells with gap ≥ ``min_gap`` (as the anchor's
    median over weak–strong pairs)."""
    out: dict[str, Any] = {}
    for loss in sorted({c["loss"] for c in cell_list}):
        mine = [c for c in cell_list if c["loss"] == loss and c["pgr"] is not None]
        big = [c["pgr"] for c in mine if c["gap"] >= min_gap]
        out[loss] = {"cells": len(mine), "median_pgr": statistics.median([c["pgr"] for c in mine]) if mine else None,
                     "cells_large_gap": len(big), "median_pgr_large_gap": statistics.median(big) if big else None}
    return out
