"""The option-mass floor's default (derived in bench/option_mass.py; figures in bench/results-option-mass.txt)."""

from __future__ import annotations

import math

import pytest

from charter.backends.base import OptionScores
from charter.evaluation.session import EvalConfig
from charter.stages.label import LabelConfig, read_scores


def scores(p_a: float, p_b: float) -> OptionScores:
    return OptionScores(logprobs={"A": math.log(p_a), "B": math.log(p_b)})


def test_a_reading_at_the_old_floor_is_off_options_now() -> None:
    """Issue 12's sixth pair: 0.0011 of the probability on the options passed the old 0.001 floor, a label of noise.
    Readings that low agree with the model's own answer no better than chance."""
    floor = LabelConfig().min_option_mass
    status, p_first, mass = read_scores(scores(0.0006, 0.0005), floor)
    assert status.startswith("off_options") and p_first is None and mass == pytest.approx(0.0011)
    status, p_first, _ = read_scores(scores(0.002, 0.002), floor)  # 0.004, in the transition (0.002-0.005): dropped
    assert status.startswith("off_options")
    status, p_first, _ = read_scores(scores(0.006, 0.002), floor)  # above it the reading is the model's answer
    assert status == "ok" and p_first == pytest.approx(0.75)


def test_label_and_eval_share_the_floor() -> None:
    assert EvalConfig().min_option_mass == LabelConfig().min_option_mass == 5e-3
