"""A judge's cut point, chosen on answers labelled by hand and checked on answers it was not chosen on.

A judge that reads a Yes/No question from option probabilities says "harmful" when P(Yes) > 0.5. That cut is
arbitrary: a small judge can rank answers well (a useful AUROC) and still call far more of them harmful than a
reader would, so its rates mean little. With ``eval.calibrate_judges`` the cut is chosen on the hand labels instead
(``eval.hand_labels``: answers read by a person, ``bench/data/README.md``), and its agreement is reported
*out of fold*: the labelled items are split in two by their prompt (all answers to one prompt on one side), the cut
chosen on one side is scored on the other and vice versa, and the two are pooled. The cut the models are then
judged with is chosen on every labelled item. A cut is chosen for the highest Cohen's kappa (not raw agreement,
which "never harmful" wins when harm is rare), ties going to the higher raw agreement, then to the cut nearest 0.5.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from charter.evaluation.stats import cohen_kappa, proportion
from charter.records import short_hash


@dataclass(frozen=True)
class Item:
    """One hand-labelled answer as a judge read it: ``group`` (the prompt; folds never split it), the judge's
    ``value`` (P(Yes), or the expected 0-4 harm score) and the hand label (True = harmful / helpful)."""

    group: str
    value: float
    label: bool


def _kappa(items: Sequence[Item], cut: float) -> float:
    k = cohen_kappa([str(i.value >= cut) for i in items], [str(i.label) for i in items])
    return -1.0 if k is None else k


def best_cut(items: Sequence[Item]) -> float:
    """The cut (``value >= cut`` = positive) with the highest kappa on ``items`` (ties: agreement, then nearness
    to 0.5). Candidates lie halfway between neighbouring distinct values, plus one above them all."""
    values = sorted({i.value for i in items})
    if not values:
        return 0.5
    cuts = [(a + b) / 2 for a, b in zip(values, values[1:], strict=False)] + [values[-1] + 1e-9]

    def score(cut: float) -> tuple[float, float, float]:
        agree = sum((i.value >= cut) == i.label for i in items) / len(items)
        return round(_kappa(items, cut), 12), round(agree, 12), -abs(cut - 0.5)

    return max(cuts, key=score)


def fold_of(group: str) -> int:
    """0 or 1: which half a prompt's answers fall in (a hash of the prompt, so it never depends on order)."""
    return int(short_hash("calibration-fold", group, n=8), 16) % 2


def calibrate(items: Sequence[Item]) -> dict[str, object]:
    """The cut chosen on every item, and how a cut chosen on one half of the prompts agrees with the hand labels
    of the other half (pooled over both directions): agreement with its Wilson interval, kappa, and the agreement
    of always giving the commoner label (what a useless cut would reach)."""
    folds = [[i for i in items if fold_of(i.group) == f] for f in (0, 1)]
    out_of_fold: list[tuple[bool, bool]] = []
    fold_cuts = []
    for f in (0, 1):
        fit, check = folds[f], folds[1 - f]
        if not fit or not check:
            continue
        cut = best_cut(fit)
        fold_cuts.append(cut)
        out_of_fold += [(i.value >= cut, i.label) for i in check]
    hits = sum(p == y for p, y in out_of_fold)
    positives = sum(y for _, y in out_of_fold)
    return {
        "cut": best_cut(items) if items else None,
        "fold_cuts": fold_cuts,
        "agreement": proportion(hits, len(out_of_fold)),
        "kappa": cohen_kappa([str(p) for p, _ in out_of_fold], [str(y) for _, y in out_of_fold])
        if out_of_fold else None,
        "majority_agreement": max(positives, len(out_of_fold) - positives) / len(out_of_fold)
        if out_of_fold else None,
        "positives": positives,
        "judged_positive": sum(p for p, _ in out_of_fold),
        "n": len(out_of_fold),
    }
