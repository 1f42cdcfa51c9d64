"""Elo (Bradley–Terry on the Elo scale) and its bootstrap intervals on hand-made outcomes, known answers."""

from __future__ import annotations

import math
import random

import pytest

from charter.evaluation.elo import Outcome, bootstrap_elo, expected_score, fit_elo
from charter.evaluation.stats import cohen_kappa, mean_ci, wilson


def test_three_wins_in_four_games_is_a_190_point_gap() -> None:
    games = [Outcome("a", "b", 1.0, str(k)) for k in range(3)] + [Outcome("a", "b", 0.0, "3")]
    r = fit_elo(games, prior=0)
    assert r["a"] - r["b"] == pytest.approx(400 * math.log10(3), abs=1e-6)  # 190.85
    assert (r["a"] + r["b"]) / 2 == pytest.approx(1000)


def test_exact_expected_outcomes_recover_the_true_ratings() -> None:
    true = {"x": 1200.0, "y": 1000.0, "z": 850.0}
    games = [Outcome(i, j, expected_score(true[i], true[j])) for i in true for j in true if i < j]
    r = fit_elo(games, prior=0)
    for i in true:
        for j in true:
            assert r[i] - r[j] == pytest.approx(true[i] - true[j], abs=1e-4)


def test_ties_and_mirrored_games_give_equal_ratings() -> None:
    games = [Outcome("a", "b", 0.5, "1"), Outcome("b", "a", 0.5, "2"), Outcome("a", "b", 1, "3"),
             Outcome("b", "a", 1, "4")]
    r = fit_elo(games, prior=0)
    assert r["a"] == pytest.approx(r["b"]) == pytest.approx(1000)


def test_prior_keeps_a_clean_sweep_finite_and_shrinks_it() -> None:
    games = [Outcome("a", "b", 1.0, str(k)) for k in range(9)]
    r = fit_elo(games, prior=1.0)
    # 9 wins + 1 virtual draw: a scores 9.5 of 10 -> 400*log10(19)
    assert r["a"] - r["b"] == pytest.approx(400 * math.log10(19), abs=1e-3)


def test_bootstrap_of_identical_prompts_has_zero_width() -> None:
    games = [Outcome("a", "b", 0.75, str(k)) for k in range(20)]
    b = bootstrap_elo(games, rounds=200, prior=0)
    point = b["ratings"]["a"]["elo"]
    assert b["ratings"]["a"]["ci"] == pytest.approx([point, point])
    assert b["vs_reference"]["b"]["diff"] == pytest.approx(-400 * math.log10(3), abs=1e-6)


def test_bootstrap_interval_matches_the_binomial_standard_error() -> None:
    rng = random.Random(1)
    n = 400
    games = [Outcome("a", "b", float(rng.random() < 0.75), str(k)) for k in range(n)]
    b = bootstrap_elo(games, rounds=1000, prior=0, seed=3)
    d = -b["vs_reference"]["b"]["diff"]  # a minus b
    p = sum(g.score for g in games) / n
    se = 400 / math.log(10) / math.sqrt(n * p * (1 - p))  # delta method on the log-odds
    lo, hi = (-x for x in reversed(b["vs_reference"]["b"]["ci"]))
    assert lo < d < hi
    assert lo < 400 * math.log10(3) < hi  # the true gap
    assert (hi - lo) / 2 == pytest.approx(1.96 * se, rel=0.15)


def test_bootstrap_resamples_prompts_not_single_comparisons() -> None:
    rng = random.Random(2)
    flat = [Outcome("a", "b", float(rng.random() < 0.7), str(k)) for k in range(200)]
    # the same 100 outcomes, each seen twice on one prompt: half the independent evidence
    paired = [Outcome("a", "b", g.score, str(k)) for k, g in enumerate(flat[:100]) for _ in range(2)]
    w_flat = _width(bootstrap_elo(flat, rounds=600, prior=0))
    w_paired = _width(bootstrap_elo(paired, rounds=600, prior=0))
    assert w_paired / w_flat == pytest.approx(math.sqrt(2), rel=0.2)


def _width(b: dict) -> float:
    lo, hi = b["vs_reference"]["b"]["ci"]
    return hi - lo


def test_wilson_interval_known_values() -> None:
    assert wilson(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson(0, 0) == (0.0, 1.0)


def test_mean_interval_and_kappa() -> None:
    m = mean_ci([1.0] * 10)
    assert m["value"] == 1.0 and m["ci"] == [1.0, 1.0]
    assert cohen_kappa(["x", "y", "x", "y"], ["x", "y", "x", "y"]) == pytest.approx(1.0)
    assert cohen_kappa(["x", "x", "y", "y"], ["x", "y", "x", "y"]) == pytest.approx(0.0)
