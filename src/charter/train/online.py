"""Online RL with TRL's GRPOTrainer: the policy samples answers to red-team prompts and learns from a reward.

The reward is either the trained reward model (``reward="rm"``, a folder from ``charter rm``) or the feedback model
itself (``reward="feedback"``): it answers a yes/no multiple choice about each answer ("helpful, honest and harmless,
without needless refusal?", template ``label_single.jinja``) and the reward is P(yes) read from its option
log-probabilities, so any backend that can label can also reward. A reading that fails gives no reward (NaN, which
GRPO ignores) rather than a made-up 0.5, and is counted. GRPO (not RLOO) because it accepts a reward model object
directly and its group-relative advantage needs no value model — the cheapest online method that runs on CPU here.
LoRA by default; saves ``OUT/adapter`` and a merged ``OUT/model`` that ``transformers//abs/OUT/model`` loads.
"""

from __future__ import annotations

import shutil
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from charter.backends.base import Backend, ScoreRequest
from charter.errors import CharterError, ConfigError
from charter.fingerprint import folder_digest
from charter.records import Prompt
from charter.templates import render, template_hash
from charter.train.common import (
    TrainConfig,
    already_done,
    cost_figures,
    fingerprint,
    load_trainable,
    local_model_dir,
    lora_config,
    model_digest,
    save_trained,
    show_progress,
    training_tokenizer,
    trl_args,
)

SINGLE_TEMPLATE = "label_single.jinja"


class OnlineConfig(TrainConfig):
    """Settings of the online RL stage (GRPO; the shared training fields are documented on :class:`TrainConfig`)."""

    output: str = Field(default="online", description="Folder in the run where the model goes (RUN/OUTPUT/model).")

    reward: Literal["rm", "feedback"] = Field(default="rm", description="'rm': the trained reward model; "
                                                                        "'feedback': P(yes) from the feedback model.")
    reward_model: str | None = Field(default=None, description="Reward model folder (None = RUN/rm/model).")
    answer_prefix: str = Field(default="The answer is: (", description="Assistant prefix of the feedback reward.")
    num_generations: int = Field(default=4, ge=2, description="Answers sampled per prompt (the GRPO group).")
    prompts_per_step: int = Field(default=1, ge=1, description="Prompts per optimizer step.")
    max_completion_length: int = Field(default=48, ge=1, description="Longest sampled answer in tokens.")
    temperature: float = Field(default=1.0, gt=0, description="Sampling temperature of the answers.")
    beta: float = Field(default=0.04, ge=0, description="KL penalty towards the starting model (0 = none).")
    max_prompts: int | None = Field(default=None, ge=1, description="Use at most this many prompts.")
    max_steps: int = Field(default=10, description="Optimizer steps (-1 = one pass over the prompts).")
    learning_rate: float = Field(default=2e-5, gt=0, description="Peak learning rate.")


class FeedbackReward:
    """A GRPO reward function: P(yes) from the feedback model's option log-probabilities for each answer.

    Each reading goes through the label stage's reader (:func:`charter.stages.label.read_scores`): a backend
    error, a missing or floored option, or options with less than ``min_mass`` of the probability give no reward
    (None), counted in ``failed`` and by reason in ``statuses``. Pass the run's :class:`~charter.store.CachedBackend`
    so every reading is cached like the label stage's."""

    def __init__(self, backend: Backend, answer_prefix: str = "The answer is: (",
                 min_mass: float | None = None) -> None:
        from charter.stages.label import LabelConfig

        self.backend = backend
        self.answer_prefix = answer_prefix
        self.min_mass = LabelConfig().min_option_mass if min_mass is None else min_mass
        self.failed = 0
        self.statuses: Counter[str] = Counter()
        self.__name__ = "feedback_reward"

    def __call__(self, prompts: list[Any], completions: list[Any], **_: Any) -> list[float | None]:
        reqs = []
        for p, c in zip(prompts, completions, strict=True):
            convo = [*p, *c] if isinstance(p, list) else [{"role": "user", "content": p},
                                                          {"role": "assistant", "content": c}]
            text = render(SINGLE_TEMPLATE, conversation=convo)
            reqs.append(ScoreRequest.of([{"role": "user", "content": text}], ("A", "B"), self.answer_prefix))
        from charter.stages.label import read_scores

        out: list[float | None] = []
        for s in self.backend.score_options(reqs):
            status, p_yes, _mass = read_scores(s, self.min_mass)
            self.statuses[status.split(":")[0]] += 1
            if p_yes is None:
                self.failed += 1
            out.append(p_yes)
        return out


def train_online(cfg: OnlineConfig, prompts: Sequence[Prompt], out_dir: Path, base_spec: str,
                 reward_model: Path | None = None, feedback: Backend | None = None) -> dict[str, Any]:
    """GRPO-train ``base_spec`` on ``prompts`` with the reward model in ``reward_model`` or the ``feedback`` backend;
    writes ``out_dir/model`` (+ ``adapter``) and returns a summary with the reward before and after."""
    if not prompts:
        raise CharterError("no prompts for online RL", "give a prompt file or run `charter sample` first")
    if cfg.reward == "rm" and (reward_model is None or not (reward_model / "config.json").is_file()):
        raise ConfigError(f"no reward model at {reward_model}", "train one with `charter rm` or use reward=feedback")
    if cfg.reward == "feedback" and feedback is None:
        raise ConfigError("reward=feedback needs a feedback model",
                          "pass --feedback MODEL (e.g. transformers/embedded)")
    prompts = list(prompts)[: cfg.max_prompts]
    base = local_model_dir(base_spec)
    if cfg.reward == "rm":
        assert reward_model is not None
        reward_id = "rm:" + folder_digest(reward_model)
    else:
        reward_id = "feedback:" + model_digest(getattr(feedback, "spec", "")) + ":" + template_hash(SINGLE_TEMPLATE)
    fp = fingerprint(cfg, base, None, prompts=[p.messages() for p in prompts], reward=reward_id)
    if (done := already_done(out_dir, fp)) is not None:
        return done

    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    tokenizer = training_tokenizer(base, cfg.threads)
    model = load_trainable(AutoModelForCausalLM, base, cfg)
    reward_fn: Any
    reward_tok = None
    if cfg.reward == "rm":
        assert reward_model is not None
        reward_fn = AutoModelForSequenceClassification.from_pretrained(reward_model, dtype=torch.float32).eval()
        reward_tok = AutoTokenizer.from_pretrained(reward_model)
    else:
        assert feedback is not None
        reward_fn = FeedbackReward(feedback, cfg.answer_prefix)
    batch = cfg.prompts_per_step * cfg.num_generations
    work = out_dir / "trainer"
    base_args = trl_args(cfg, work)
    base_args.update(max_steps=cfg.max_steps if cfg.max_steps > 0 else -1, num_train_epochs=1,
                     per_device_train_batch_size=batch)
    args = GRPOConfig(num_generations=cfg.num_generations, max_completion_length=cfg.max_completion_length,
                      temperature=cfg.temperature, beta=cfg.beta, **base_args)
    dataset = Dataset.from_list([{"prompt": p.messages()} for p in prompts])
    trainer = GRPOTrainer(model=model, reward_funcs=reward_fn, args=args, train_dataset=dataset,
                          processing_class=tokenizer, reward_processing_classes=reward_tok,
                          peft_config=lora_config(cfg, "CAUSAL_LM"))
    show_progress(trainer, "online")
    start = time.monotonic()
    result = trainer.train()
    seconds = time.monotonic() - start
    logs = [h for h in trainer.state.log_history if "reward" in h]
    summary = {
        "fingerprint": fp, "base": str(base), "prompts": len(prompts), "reward": cfg.reward,
        "reward_source": reward_id, **cost_figures(result.global_step, seconds),
        "first_reward": logs[0]["reward"] if logs else None, "final_reward": logs[-1]["reward"] if logs else None,
        "reward_curve": [round(float(h["reward"]), 5) for h in logs],
        "reward_failures": getattr(reward_fn, "failed", 0), "lora": cfg.lora,
    }
    model_dir = save_trained(trainer, tokenizer, out_dir, cfg.lora, summary)
    if model_dir is None:
        return {"steps": result.global_step, "rank": trainer.accelerator.process_index}
    shutil.rmtree(work, ignore_errors=True)
    return {**summary, "model": str(model_dir)}
