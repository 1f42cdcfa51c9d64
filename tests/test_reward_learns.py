"""The reward model's soft-label loss has the value the formula says, and training on it learns an easy preference
(the old tests only checked 0 <= accuracy <= 1, which any model passes)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from charter.records import PreferencePair
from charter.train.reward import RewardConfig, reward_accuracy, soft_reward_loss, train_reward_model


def test_soft_reward_loss_matches_a_hand_computed_batch() -> None:
    import torch

    chosen, rejected = torch.tensor([2.0, 0.0, -1.0]), torch.tensor([0.0, 0.0, 1.0])  # margins 2, 0, -2
    soft = torch.tensor([0.9, 0.5, 0.75])
    # -log sigmoid(2) = log(1 + e^-2) = 0.126928, -log sigmoid(-2) = 2.126928, -log sigmoid(0) = log 2
    a, b = math.log1p(math.exp(-2)), 2 + math.log1p(math.exp(-2))
    rows = [0.9 * a + 0.1 * b, math.log(2), 0.75 * b + 0.25 * a]  # 0.326928, 0.693147, 1.626928
    assert float(soft_reward_loss(chosen, rejected, soft)) == pytest.approx(sum(rows) / 3, abs=1e-6)
    assert float(soft_reward_loss(chosen, rejected, soft)) == pytest.approx(0.882334, abs=1e-6)
    # a certain label is the Bradley-Terry loss; a 50/50 label asks for no margin (its loss is lowest at 0)
    assert float(soft_reward_loss(chosen[:1], rejected[:1], torch.tensor([1.0]))) == pytest.approx(a, abs=1e-6)
    at = [float(soft_reward_loss(torch.tensor([m]), torch.tensor([0.0]), torch.tensor([0.5]))) for m in (-1, 0, 1)]
    assert at[1] < at[0] and at[1] < at[2]


def _pairs(start: int, n: int) -> list[PreferencePair]:
    """Chosen answers are polite, rejected ones insulting: an easy preference to learn."""
    polite = ["Thank you for asking, I am glad to help.", "Happy to help, thank you.", "Thank you, glad to help."]
    rude = ["Shut up, idiot.", "Go away, you fool.", "Stupid question, idiot."]
    return [PreferencePair(id=f"p{i}", prompt=[{"role": "user", "content": f"Can you help me with task {i}?"}],
                           chosen=[{"role": "assistant", "content": polite[i % 3]}],
                           rejected=[{"role": "assistant", "content": rude[i % 3]}], soft_label=0.9,
                           chosen_id=f"a{i}", rejected_id=f"b{i}", source="ai", model="mock")
            for i in range(start, start + n)]


def _swap(pairs: list[PreferencePair]) -> list[PreferencePair]:
    return [p.model_copy(update={"chosen": p.rejected, "rejected": p.chosen}) for p in pairs]


def test_an_easy_preference_is_learned_whichever_way_the_labels_point(tmp_path: Path, tiny_model_dir: Path) -> None:
    """Trained on polite-over-rude pairs the model ranks unseen pairs that way; trained on the same pairs swapped, the
    other way. (A random score head prefers one style by chance, so one direction alone would prove little.)"""
    cfg = RewardConfig(max_steps=30, batch_size=4, learning_rate=3e-3, max_length=64, lora=False, seed=0)
    held_out = _pairs(100, 12)
    for name, train, test in (("polite", _pairs(0, 24), held_out), ("rude", _swap(_pairs(0, 24)), _swap(held_out))):
        summary = train_reward_model(cfg, train, tmp_path / name, f"transformers/{tiny_model_dir}")
        acc = reward_accuracy(tmp_path / name / "model", test)
        assert acc["accuracy"] == 1.0 and acc["n"] == 12, (name, acc)
        assert summary["final_loss"] < summary["first_loss"]
