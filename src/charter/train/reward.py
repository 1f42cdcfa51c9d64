"""A reward (preference) model on preference pairs with TRL's RewardTrainer; LoRA by default; soft labels honoured.

The model is the policy's causal LM with a scalar head (``AutoModelForSequenceClassification``, ``num_labels=1``).
With ``soft_labels`` (default) the loss is the cross-entropy against the soft label p = P(chosen better):
-(p·log σ(r_c - r_r) + (1-p)·log σ(r_r - r_c)), so a 0.55 label asks for a small margin and a 0.95 label for a large
one (TRL's loss treats every pair as certain; :class:`SoftLabelRewardTrainer` swaps in this loss and keeps TRL's
data handling). ``min_confidence`` can also drop near-ties. Saves ``OUT/model``, a merged folder that
``AutoModelForSequenceClassification.from_pretrained`` reloads (it scores text; it is not a chat model).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import Field

from charter.errors import CharterError
from charter.evaluation.stats import wilson
from charter.records import PreferencePair
from charter.train.common import (
    SoftLabelColumn,
    TrainConfig,
    already_done,
    cost_figures,
    fingerprint,
    is_complete,
    load_preferences,
    load_trainable,
    local_model_dir,
    lora_config,
    loss_curve,
    save_trained,
    select,
    show_progress,
    training_tokenizer,
    trl_args,
    trl_rows,
)


class RewardConfig(TrainConfig):
    """Settings of the reward-model stage (the shared training fields are documented on :class:`TrainConfig`)."""

    output: str = Field(default="rm", description="Folder in the run where the model goes (RUN/OUTPUT/model).")

    soft_labels: bool = Field(default=True, description="Cross-entropy against the soft label (False = TRL's loss).")
    min_confidence: float = Field(default=0.5, ge=0.5, le=1, description="Drop pairs whose soft label is below this.")
    learning_rate: float = Field(default=1e-4, gt=0, description="Peak learning rate.")
    max_length: int = Field(default=512, ge=16, description="Longest prompt + answer in tokens (longer pairs dropped).")
    preferences: str | None = Field(default=None, description="Preference file (None = the run's preferences, else "
                                                              "its RLCD pairs; an HH-RLHF file = human labels).")


def soft_reward_loss(chosen: Any, rejected: Any, soft: Any) -> Any:
    """Cross-entropy of the Bradley–Terry preference σ(r_c − r_r) against the soft label p = P(chosen better):
    −(p·log σ(r_c − r_r) + (1 − p)·log σ(r_r − r_c)), averaged over the batch (tensors of equal shape)."""
    from torch.nn.functional import logsigmoid

    diff = chosen - rejected
    return -(soft * logsigmoid(diff) + (1 - soft) * logsigmoid(-diff)).mean()


def _soft_trainer_class() -> type:
    from trl import RewardTrainer

    class SoftLabelRewardTrainer(SoftLabelColumn, RewardTrainer):  # type: ignore[misc]
        """RewardTrainer with the soft-label cross-entropy loss (see the module docstring)."""

        def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                         num_items_in_batch: Any = None) -> Any:
            import torch

            soft = inputs.pop("soft_label", None)
            if soft is None:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            mode = "train" if model.training else "eval"
            outputs = model(**inputs, use_cache=False)
            chosen, rejected = torch.chunk(outputs.logits.squeeze(-1), chunks=2)
            loss = soft_reward_loss(chosen, rejected, soft)
            with torch.no_grad():
                diff = chosen - rejected
                self._metrics[mode]["accuracy"].append((diff > 0).float().mean().item())
                self._metrics[mode]["margin"].append(diff.mean().item())
            return (loss, outputs) if return_outputs else loss

    return SoftLabelRewardTrainer


def train_reward_model(cfg: RewardConfig, prefs: Sequence[PreferencePair], out_dir: Path,
                       base_spec: str, data_path: Path | None = None) -> dict[str, Any]:
    """Train a reward model from ``base_spec`` on ``prefs``; writes ``out_dir/model``; returns a summary.

    Skips training when ``out_dir/model`` was already trained from the same inputs (file or pairs, settings, base).
    """
    data = select(prefs, cfg.min_confidence)
    if not data:
        raise CharterError(f"no preference pair has soft_label >= {cfg.min_confidence} ({len(prefs)} pairs given)",
                           "lower rm.min_confidence or label more pairs")
    base = local_model_dir(base_spec)
    rows = trl_rows(data)
    fp = fingerprint(cfg, base, data_path, pairs=None if data_path else rows)
    if (done := already_done(out_dir, fp)) is not None:
        return done

    import torch
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification
    from trl import RewardConfig as TRLRewardConfig
    from trl import RewardTrainer

    tokenizer = training_tokenizer(base, cfg.threads)
    torch.manual_seed(cfg.seed)
    model = load_trainable(AutoModelForSequenceClassification, base, cfg, num_labels=1)
    model.config.pad_token_id = tokenizer.pad_token_id
    work = out_dir / "trainer"
    args = TRLRewardConfig(max_length=cfg.max_length, **trl_args(cfg, work))
    if not cfg.soft_labels:
        rows = [{k: v for k, v in r.items() if k != "soft_label"} for r in rows]
    trainer_cls = _soft_trainer_class() if cfg.soft_labels else RewardTrainer
    trainer = trainer_cls(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                          peft_config=lora_config(cfg, "SEQ_CLS"))
    if len(trainer.train_dataset) == 0:
        raise CharterError(f"every pair is longer than rm.max_length={cfg.max_length} tokens",
                           "raise rm.max_length or use shorter answers")
    show_progress(trainer, "rm")
    start = time.monotonic()
    result = trainer.train()
    seconds = time.monotonic() - start
    logs = [h for h in trainer.state.log_history if "loss" in h]
    losses = loss_curve(logs)
    summary = {
        "fingerprint": fp, "base": str(base), "pairs": len(data), "trained_pairs": len(trainer.train_dataset),
        "dropped_low_confidence": len(prefs) - len(data), "soft_labels": cfg.soft_labels,
        **cost_figures(result.global_step, seconds), "first_loss": losses[0] if losses else None,
        "final_loss": losses[-1] if losses else None, "loss_curve": losses,
        "final_accuracy": logs[-1].get("accuracy") if logs else None, "lora": cfg.lora,
    }
    model_dir = save_trained(trainer, tokenizer, out_dir, cfg.lora, summary)
    if model_dir is None:
        return {"steps": result.global_step, "rank": trainer.accelerator.process_index}
    shutil.rmtree(work, ignore_errors=True)
    return {**summary, "model": str(model_dir)}


class RewardScorer:
    """A trained reward model loaded for scoring conversations (prompt messages + an assistant answer)."""

    def __init__(self, model_dir: Path, batch_size: int = 8, max_length: int = 1024) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        if not is_complete(Path(model_dir)) and not (Path(model_dir) / "config.json").is_file():
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


def reward_accuracy(model_dir: Path, prefs: Sequence[PreferencePair]) -> dict[str, Any]:
    """How often the reward model scores ``chosen`` above ``rejected``, with a Wilson 95% CI (ties count half)."""
    scorer = RewardScorer(model_dir)
    chosen = scorer.score([[*p.prompt, *p.chosen] for p in prefs])
    rejected = scorer.score([[*p.prompt, *p.rejected] for p in prefs])
    wins = sum(1.0 if c > r else 0.5 if c == r else 0.0 for c, r in zip(chosen, rejected, strict=True))
    n = len(prefs)
    return {"accuracy": round(wins / n, 4) if n else None, "ci": [round(x, 4) for x in wilson(wins, n)], "n": n}


def run_reward(cfg: RewardConfig, preferences_path: Path, out_dir: Path, base_spec: str) -> dict[str, Any]:
    """The reward-model stage: train on ``preferences_path`` (preferences.jsonl, or an HH file for human labels)."""
    summary = train_reward_model(cfg, load_preferences(preferences_path), out_dir, base_spec, preferences_path)
    summary["preferences"] = str(preferences_path)
    return summary
