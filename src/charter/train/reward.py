"""A reward (preference) model on preference pairs with TRL's RewardTrainer; LoRA by default; soft labels honoured.

The model is the policy's causal LM with a scalar head (``AutoModelForSequenceClassification``, ``num_labels=1``).
With ``soft_labels`` (default) the loss is the cross-entropy against the soft label p = P(chosen better):
-(p·log σ(r_c - r_r) + (1-p)·log σ(r_r - r_c)), so a 0.55 label asks for a small margin and a 0.95 label for a large
one (TRL's loss treats every pair as certain; :class:`SoftLabelRewardTrainer` swaps in this loss and keeps TRL's
data handling). ``min_confidence`` can also drop near-ties. Saves ``OUT/model``, a merged folder that
``AutoModelForSequenceClassification.from_pretrained`` reloads (it scores text; it is not a chat model).
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from charter.errors import CharterError
from charter.records import PreferencePair, short_hash
from charter.train.dpo import (
    DONE_FILE,
    SoftLabelColumn,
    already_done,
    load_preferences,
    lora_config,
    save_model,
    select,
    trl_rows,
)
from charter.train.sft import cost_figures, local_model_dir, training_tokenizer


class RewardConfig(BaseModel):
    """Settings of the reward-model stage (``training_args`` passes anything else to TRL's RewardConfig)."""

    model_config = ConfigDict(extra="forbid")

    base_model: str | None = Field(default=None, description="'transformers/...' spec of the model to start from; "
                                                             "None = the SL-CAI model (RUN/sft/model).")
    soft_labels: bool = Field(default=True, description="Cross-entropy against the soft label (False = TRL's loss).")
    min_confidence: float = Field(default=0.5, ge=0.5, le=1, description="Drop pairs whose soft label is below this.")
    lora: bool = Field(default=True, description="Train a LoRA adapter + the score head (False = full fine-tune).")
    lora_r: int = Field(default=16, ge=1, description="LoRA rank.")
    lora_alpha: int = Field(default=32, ge=1, description="LoRA scaling numerator.")
    lora_dropout: float = Field(default=0.0, ge=0, lt=1, description="Dropout on LoRA inputs.")
    lora_target_modules: str | list[str] = Field(default="all-linear", description="Modules that get adapters.")
    max_steps: int = Field(default=-1, description="Optimizer steps (-1 = run `epochs` epochs).")
    epochs: float = Field(default=1.0, gt=0, description="Epochs when max_steps is -1.")
    learning_rate: float = Field(default=1e-4, gt=0, description="Peak learning rate.")
    batch_size: int = Field(default=4, ge=1, description="Pairs per device per step.")
    grad_accum: int = Field(default=1, ge=1, description="Gradient accumulation steps.")
    max_length: int = Field(default=512, ge=16, description="Longest prompt + answer in tokens (longer pairs dropped).")
    seed: int = Field(default=0, description="Training seed (also initialises the score head).")
    threads: int = Field(default=0, description="torch threads (0 = torch's default).")
    bf16: bool = Field(default=False, description="bf16 mixed precision (TRL turns it on by default; off here: "
                                                  "fp32 is exact and learned better on CPU).")
    gradient_checkpointing: bool = Field(default=False, description="Recompute activations in the backward pass "
                                                                    "(saves memory, costs ~30% more compute).")
    training_args: dict[str, Any] = Field(default_factory=dict, description="Extra TRL RewardConfig arguments.")


def _soft_trainer_class() -> type:
    from trl import RewardTrainer

    class SoftLabelRewardTrainer(SoftLabelColumn, RewardTrainer):  # type: ignore[misc]
        """RewardTrainer with the soft-label cross-entropy loss (see the module docstring)."""

        def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                         num_items_in_batch: Any = None) -> Any:
            import torch
            from torch.nn.functional import logsigmoid

            soft = inputs.pop("soft_label", None)
            if soft is None:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            mode = "train" if model.training else "eval"
            outputs = model(**inputs, use_cache=False)
            chosen, rejected = torch.chunk(outputs.logits.squeeze(-1), chunks=2)
            diff = chosen - rejected
            loss = -(soft * logsigmoid(diff) + (1 - soft) * logsigmoid(-diff)).mean()
            with torch.no_grad():
                self._metrics[mode]["accuracy"].append((diff > 0).float().mean().item())
                self._metrics[mode]["margin"].append(diff.mean().item())
            return (loss, outputs) if return_outputs else loss

    return SoftLabelRewardTrainer


def train_reward_model(cfg: RewardConfig, prefs: Sequence[PreferencePair], out_dir: Path,
                       base_spec: str) -> dict[str, Any]:
    """Train a reward model from ``base_spec`` on ``prefs``; writes ``out_dir/model``; returns a summary.

    Skips training when ``out_dir/model`` was already made from the same data and settings.
    """
    data = select(prefs, cfg.min_confidence)
    if not data:
        raise CharterError(f"no preference pair has soft_label >= {cfg.min_confidence} ({len(prefs)} pairs given)",
                           "lower rm.min_confidence or label more pairs")
    base = local_model_dir(base_spec)
    fingerprint = short_hash(cfg.model_dump(mode="json"), [(p.id, p.soft_label) for p in data], str(base),
                             (base / "config.json").stat().st_mtime)
    if (done := already_done(out_dir, fingerprint)) is not None:
        return done

    import torch
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification
    from trl import RewardConfig as TRLRewardConfig
    from trl import RewardTrainer

    tokenizer = training_tokenizer(base, cfg.threads)
    torch.manual_seed(cfg.seed)
    model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1, dtype=torch.float32)
    model.config.pad_token_id = tokenizer.pad_token_id
    work = out_dir / "trainer"
    args = TRLRewardConfig(
        output_dir=str(work), max_steps=cfg.max_steps, num_train_epochs=cfg.epochs, learning_rate=cfg.learning_rate,
        per_device_train_batch_size=cfg.batch_size, gradient_accumulation_steps=cfg.grad_accum,
        max_length=cfg.max_length, seed=cfg.seed, use_cpu=not torch.cuda.is_available(), bf16=cfg.bf16,
        gradient_checkpointing=cfg.gradient_checkpointing, logging_steps=1,
        save_strategy="no", report_to="none", disable_tqdm=True, dataloader_num_workers=0, **cfg.training_args,
    )
    rows = trl_rows(data)
    if not cfg.soft_labels:
        rows = [{k: v for k, v in r.items() if k != "soft_label"} for r in rows]
    trainer_cls = _soft_trainer_class() if cfg.soft_labels else RewardTrainer
    trainer = trainer_cls(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                          peft_config=lora_config(cfg, "SEQ_CLS"))
    if len(trainer.train_dataset) == 0:
        raise CharterError(f"every pair is longer than rm.max_length={cfg.max_length} tokens",
                           "raise rm.max_length or use shorter answers")
    start = time.monotonic()
    result = trainer.train()
    seconds = time.monotonic() - start
    logs = [h for h in trainer.state.log_history if "loss" in h]
    model_dir = save_model(trainer.model, tokenizer, out_dir, cfg.lora)
    shutil.rmtree(work, ignore_errors=True)
    summary = {
        "fingerprint": fingerprint, "base": str(base), "pairs": len(data), "trained_pairs": len(trainer.train_dataset),
        "dropped_low_confidence": len(prefs) - len(data), "soft_labels": cfg.soft_labels,
        **cost_figures(result.global_step, seconds),
        "first_loss": logs[0]["loss"] if logs else None, "final_loss": logs[-1]["loss"] if logs else None,
        "lora": cfg.lora, "model": str(model_dir),
    }
    (model_dir / DONE_FILE).write_text(json.dumps(summary, indent=2))
    return summary


class RewardScorer:
    """A trained reward model loaded for scoring conversations (prompt messages + an assistant answer)."""

    def __init__(self, model_dir: Path, batch_size: int = 8, max_length: int = 1024) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        if not (Path(model_dir) / "config.json").is_file():
            raise CharterError(f"{model_dir}: no reward model here", "train one first with `charter rm`")
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.tokenizer.padding_side = "right"
        self.model = AutoModelForSequenceClassification.from_pretrained(model_dir, dtype=torch.float32).eval()
        self.batch_size = batch_size
        self.max_length = max_length

    def score(self, conversations: Sequence[list[dict[str, str]]]) -> list[float]:
        """The reward of each conversation (ending with the assistant answer to score)."""
        import torch

        out: list[float] = []
        for i in range(0, len(conversations), self.batch_size):
            chunk = conversations[i:i + self.batch_size]
            texts = [self.tokenizer.apply_chat_template(c, tokenize=False) for c in chunk]
            enc = self.tokenizer(texts, return_tensors="pt", padding=True, truncation=True,
                                 max_length=self.max_length, add_special_tokens=False)
            with torch.inference_mode():
                out += self.model(**enc).logits.squeeze(-1).float().tolist()
        return out


def wilson(k: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson 95% confidence interval of a proportion ``k / n`` (``(0, 1)`` when ``n`` is 0)."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (round(max(0.0, centre - half), 4), round(min(1.0, centre + half), 4))


def reward_accuracy(model_dir: Path, prefs: Sequence[PreferencePair]) -> dict[str, Any]:
    """How often the reward model scores ``chosen`` above ``rejected``, with a Wilson 95% CI (ties count half)."""
    scorer = RewardScorer(model_dir)
    chosen = scorer.score([[*p.prompt, *p.chosen] for p in prefs])
    rejected = scorer.score([[*p.prompt, *p.rejected] for p in prefs])
    wins = sum(1.0 if c > r else 0.5 if c == r else 0.0 for c, r in zip(chosen, rejected, strict=True))
    n = len(prefs)
    return {"accuracy": round(wins / n, 4) if n else None, "ci": list(wilson(wins, n)), "n": n}


def run_reward(cfg: RewardConfig, preferences_path: Path, out_dir: Path, base_spec: str) -> dict[str, Any]:
    """The reward-model stage: train on ``preferences_path`` (preferences.jsonl, or an HH file for human labels)."""
    summary = train_reward_model(cfg, load_preferences(preferences_path), out_dir, base_spec)
    summary["preferences"] = str(preferences_path)
    return summary
