"""Online RL (GRPO): the reward model or the feedback model as reward; weights change; the model reloads."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from charter.backends.base import OptionScores, ScoreRequest
from charter.backends.mock import MockBackend
from charter.records import Prompt
from charter.train.online import FeedbackReward, OnlineConfig, train_online

PROMPTS = [Prompt(id=f"q{i}", text=f"How do I pick lock number {i}?") for i in range(4)]


@pytest.fixture(scope="module")
def tiny_rm(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny reward model with random weights (a scalar head on the tiny Llama)."""
    import torch
    from transformers import AutoConfig, AutoTokenizer, LlamaForSequenceClassification

    out = tmp_path_factory.mktemp("tiny-rm")
    config = AutoConfig.from_pretrained(tiny_model_dir, num_labels=1)
    config.initializer_range = 0.5  # rewards that differ between answers, so GRPO has an advantage to follow
    torch.manual_seed(0)
    LlamaForSequenceClassification(config).save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(out)
    return out


def test_grpo_with_the_reward_model_changes_weights_and_reloads(tmp_path: Path, tiny_model_dir: Path,
                                                                tiny_rm: Path) -> None:
    import torch
    from safetensors.torch import load_file

    from charter.backends import load_backend
    from charter.backends.base import GenParams, GenRequest

    cfg = OnlineConfig(max_steps=2, num_generations=2, max_completion_length=8, learning_rate=5e-3)
    summary = train_online(cfg, PROMPTS, tmp_path / "online", f"transformers/{tiny_model_dir}", reward_model=tiny_rm)
    assert summary["steps"] == 2 and summary["first_reward"] is not None
    before, after = load_file(str(tiny_model_dir / "model.safetensors")), load_file(
        str(tmp_path / "online" / "model" / "model.safetensors"))
    assert before.keys() == after.keys()
    assert [k for k in before if not torch.equal(before[k], after[k])]
    backend = load_backend(f"transformers/{tmp_path / 'online' / 'model'}")
    assert backend.generate([GenRequest.of([{"role": "user", "content": "hi"}], GenParams(max_new_tokens=3))])


def test_feedback_reward_is_p_yes_and_failures_give_no_reward() -> None:
    class Judge(MockBackend):
        def score_options(self, requests):  # type: ignore[no-untyped-def]
            out = []
            for r in requests:
                self.calls.append(r)
                answer = r.messages[-1]["content"]
                if "broken" in answer:
                    out.append(OptionScores(logprobs={}, error="no logprobs"))
                else:
                    p = 0.9 if "sorry" in answer else 0.2
                    out.append(OptionScores(logprobs={"A": math.log(p), "B": math.log(1 - p)}))
            return out

    judge = Judge()
    reward = FeedbackReward(judge)
    prompts = [[{"role": "user", "content": "How do I pick a lock?"}]] * 3
    completions = [[{"role": "assistant", "content": c}] for c in ("I'm sorry, no.", "Use a pin.", "broken")]
    rewards = reward(prompts, completions)
    assert rewards[:2] == [pytest.approx(0.9), pytest.approx(0.2)]
    assert rewards[2] is None and reward.failed == 1  # no made-up 0.5: GRPO skips a missing reward
    req = judge.calls[0]
    assert isinstance(req, ScoreRequest) and req.options == ("A", "B") and req.assistant_prefix == "The answer is: ("
    assert "How do I pick a lock?" in req.messages[-1]["content"] and "I'm sorry, no." in req.messages[-1]["content"]


def test_grpo_with_the_feedback_model_as_reward_runs(tmp_path: Path, tiny_model_dir: Path) -> None:
    import hashlib

    def judge(r: ScoreRequest) -> dict[str, float]:  # a different P(yes) for every answer text
        p = 0.05 + 0.9 * int(hashlib.sha256(r.messages[-1]["content"].encode()).hexdigest()[:4], 16) / 0xFFFF
        return {"A": p, "B": 1 - p}

    cfg = OnlineConfig(reward="feedback", max_steps=1, num_generations=2, max_completion_length=6)
    summary = train_online(cfg, PROMPTS, tmp_path / "online", f"transformers/{tiny_model_dir}",
                           feedback=MockBackend(score_rule=judge))
    assert summary["steps"] == 1 and summary["reward"] == "feedback" and summary["reward_failures"] == 0
    assert 0.05 <= summary["first_reward"] <= 0.95
    assert (tmp_path / "online" / "model" / "config.json").is_file()
