"""Reward model: training changes the weights, the saved model reloads and scores, accuracy is counted right."""

from __future__ import annotations

from pathlib import Path

from charter.records import PreferencePair
from charter.train.reward import RewardConfig, RewardScorer, reward_accuracy, train_reward_model


def _prefs(n: int = 6) -> list[PreferencePair]:
    return [PreferencePair(id=f"p{i}", prompt=[{"role": "user", "content": f"How do I do thing {i}?"}],
                           chosen=[{"role": "assistant", "content": f"Here is a safe way to do thing {i}."}],
                           rejected=[{"role": "assistant", "content": "No."}], soft_label=0.6 + 0.05 * i,
                           chosen_id=f"a{i}", rejected_id=f"b{i}", source="ai", model="mock") for i in range(n)]


def test_reward_model_trains_changes_weights_and_reloads(tmp_path: Path, tiny_model_dir: Path) -> None:
    import torch
    from safetensors.torch import load_file

    cfg = RewardConfig(max_steps=3, batch_size=2, learning_rate=5e-3, max_length=64)
    summary = train_reward_model(cfg, _prefs(), tmp_path / "rm", f"transformers/{tiny_model_dir}")
    assert summary["steps"] == 3 and summary["soft_labels"]
    before, after = load_file(str(tiny_model_dir / "model.safetensors")), load_file(
        str(tmp_path / "rm" / "model" / "model.safetensors"))
    shared = [k for k in before if k in after]
    assert shared and [k for k in shared if not torch.equal(before[k], after[k])]
    assert any("score" in k for k in after)  # the scalar head is saved with the merged model

    scorer = RewardScorer(tmp_path / "rm" / "model")
    scores = scorer.score([[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]] * 2)
    assert len(scores) == 2 and scores[0] == scores[1]
    acc = reward_accuracy(tmp_path / "rm" / "model", _prefs())
    assert acc["n"] == 6 and 0 <= acc["accuracy"] <= 1 and acc["ci"][0] <= acc["accuracy"] <= acc["ci"][1]

    swapped = [p.model_copy(update={"chosen": p.rejected, "rejected": p.chosen}) for p in _prefs()]
    flipped = reward_accuracy(tmp_path / "rm" / "model", swapped)
    assert flipped["accuracy"] == 1 - acc["accuracy"]  # every pair is counted once, one way or the other
