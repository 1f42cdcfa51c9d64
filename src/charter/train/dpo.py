"""DPO on preference pairs (TRL DPOTrainer), LoRA by default, from the SL-CAI model; soft labels honoured.

How the soft labels are used — ``loss="soft"`` (default): TRL's ``exo_pair`` loss (EXO, Ji et al. 2024) with a
*per-example* label-smoothing ε = 1 - soft_label. EXO minimises KL(p_θ || p_label) between the policy's implied
preference σ(β·Δ) over {chosen, rejected} and the label distribution (1-ε, ε), so a 0.9 label pulls σ(β·Δ) towards
0.9 and a 0.55 label barely moves the policy, instead of both counting as a certain win. TRL takes one global
``label_smoothing``; :class:`SoftLabelDPOTrainer` sets it from the batch's ``soft_label`` column before TRL computes
the loss (ε is clamped to [1e-3, 0.5] because EXO needs ε > 0). We chose this over the alternatives because: the
default ``sigmoid`` loss ignores ``label_smoothing`` entirely; ``robust`` divides by (1 - 2ε), which explodes for
the near-50/50 labels a small judge mostly gives; dropping near-ties alone throws away the confidence of the rest.
``loss="hard"``: TRL's standard ``sigmoid`` loss on the oriented pairs (chosen = the preferred answer), for human
labels or comparison. Either way ``min_confidence`` can drop pairs whose soft label is below it.

Saves ``OUT/adapter`` (LoRA) and ``OUT/model``, a merged model folder that ``transformers//abs/OUT/model`` loads.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from charter.errors import CharterError, ConfigError
from charter.records import PreferencePair, read_jsonl, short_hash
from charter.train.sft import cost_figures, local_model_dir, save_model, training_tokenizer

DONE_FILE = "charter_train.json"
EPS_FLOOR = 1e-3


class DPOConfig(BaseModel):
    """Settings of the DPO stage (``training_args`` passes anything else to TRL's DPOConfig unchanged)."""

    model_config = ConfigDict(extra="forbid")

    base_model: str | None = Field(default=None, description="'transformers/...' spec to train; None = the SL-CAI "
                                                             "model (RUN/sft/model), else the policy.")
    loss: Literal["soft", "hard"] = Field(default="soft", description="'soft': EXO loss with per-example label "
                                                                      "smoothing 1 - soft_label; 'hard': sigmoid DPO.")
    min_confidence: float = Field(default=0.5, ge=0.5, le=1, description="Drop pairs whose soft label is below this.")
    beta: float = Field(default=0.1, gt=0, description="KL strength towards the reference (the starting model).")
    lora: bool = Field(default=True, description="Train a LoRA adapter (False = full fine-tune).")
    lora_r: int = Field(default=16, ge=1, description="LoRA rank.")
    lora_alpha: int = Field(default=32, ge=1, description="LoRA scaling numerator.")
    lora_dropout: float = Field(default=0.0, ge=0, lt=1, description="Dropout on LoRA inputs.")
    lora_target_modules: str | list[str] = Field(default="all-linear", description="Modules that get adapters.")
    max_steps: int = Field(default=-1, description="Optimizer steps (-1 = run `epochs` epochs).")
    epochs: float = Field(default=1.0, gt=0, description="Epochs when max_steps is -1.")
    learning_rate: float = Field(default=5e-5, gt=0, description="Peak learning rate.")
    batch_size: int = Field(default=2, ge=1, description="Pairs per device per step.")
    grad_accum: int = Field(default=1, ge=1, description="Gradient accumulation steps.")
    max_length: int = Field(default=512, ge=16, description="Tokens of prompt + answer (longer are truncated).")
    seed: int = Field(default=0, description="Training seed.")
    threads: int = Field(default=0, description="torch threads (0 = torch's default).")
    bf16: bool = Field(default=False, description="bf16 mixed precision (TRL turns it on by default; off here: "
                                                  "fp32 is exact and learned better on CPU).")
    gradient_checkpointing: bool = Field(default=False, description="Recompute activations in the backward pass "
                                                                    "(saves memory, costs ~30% more compute).")
    training_args: dict[str, Any] = Field(default_factory=dict, description="Extra TRL DPOConfig arguments.")


def trl_rows(prefs: Sequence[PreferencePair]) -> list[dict[str, Any]]:
    """The columns TRL reads (conversational prompt/chosen/rejected) plus ``soft_label``."""
    return [{"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected, "soft_label": p.soft_label}
            for p in prefs]


def load_preferences(path: Path, n: int | None = None) -> list[PreferencePair]:
    """Preference records from ``preferences.jsonl``, or human pairs from an HH-RLHF file (``chosen``/``rejected``
    dialogues), which makes the human-label baseline: the same training on human labels."""
    if not path.is_file():
        raise ConfigError(f"{path}: file not found", "run `charter label` (or `charter rlcd`) first, or check the path")
    with path.open(encoding="utf-8") as f:
        first = next((line for line in f if line.strip()), "")
    try:
        row = json.loads(first) if first else {}
    except json.JSONDecodeError:
        raise ConfigError(f"{path}:1: not JSON", "give a preferences.jsonl or an HH-RLHF JSONL file") from None
    if isinstance(row.get("chosen"), str):
        from charter.stages.label_eval import human_preferences, load_hh_pairs

        pairs, _ = load_hh_pairs(path, n=n)
        return human_preferences(pairs)
    return read_jsonl(path, PreferencePair)[:n]


def select(prefs: Sequence[PreferencePair], min_confidence: float) -> list[PreferencePair]:
    """The pairs confident enough to train on."""
    return [p for p in prefs if p.soft_label >= min_confidence]


def lora_config(cfg: Any, task_type: str) -> Any:
    """A peft LoraConfig from a stage config's lora_* fields (None when ``cfg.lora`` is off)."""
    if not cfg.lora:
        return None
    from peft import LoraConfig

    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=cfg.lora_target_modules, task_type=task_type)


def already_done(out_dir: Path, fingerprint: str) -> dict[str, Any] | None:
    """The saved summary when ``out_dir/model`` was trained from the same data and settings."""
    done = out_dir / "model" / DONE_FILE
    if done.is_file() and json.loads(done.read_text()).get("fingerprint") == fingerprint:
        summary = dict(json.loads(done.read_text()))
        summary["skipped"] = "already trained with the same data and settings"
        return summary
    return None


class SoftLabelColumn:
    """Mixin for a TRL trainer: carries each pair's ``soft_label`` column through the data collator into the batch
    (as a float tensor ``batch["soft_label"]``), where the trainer's loss can read it. TRL drops unknown columns."""

    data_collator: Any
    _signature_columns: list[str] | None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        inner = self.data_collator

        def collate(examples: list[dict[str, Any]]) -> dict[str, Any]:
            import torch

            soft = [float(e.pop("soft_label", 1.0)) for e in examples]
            batch = inner(examples)
            batch["soft_label"] = torch.tensor(soft, dtype=torch.float32)
            return dict(batch)

        self.data_collator = collate

    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()  # type: ignore[misc]
        if self._signature_columns is not None and "soft_label" not in self._signature_columns:
            self._signature_columns = [*self._signature_columns, "soft_label"]


def _soft_trainer_class() -> type:
    from trl import DPOTrainer

    class SoftLabelDPOTrainer(SoftLabelColumn, DPOTrainer):  # type: ignore[misc]
        """DPOTrainer whose ``label_smoothing`` is set per batch from the ``soft_label`` column (see module doc)."""

        def _compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool) -> Any:
            soft = inputs.pop("soft_label", None)
            if soft is not None:
                self.label_smoothing = (1 - soft).clamp(EPS_FLOOR, 0.5).tolist()
            return super()._compute_loss(model, inputs, return_outputs)

    return SoftLabelDPOTrainer


def train_dpo(cfg: DPOConfig, prefs: Sequence[PreferencePair], out_dir: Path, base_spec: str) -> dict[str, Any]:
    """DPO-train ``base_spec`` on ``prefs``; writes ``out_dir/model`` (+ ``adapter``); returns a summary.

    Skips training when ``out_dir/model`` was already made from the same data and settings.
    """
    data = select(prefs, cfg.min_confidence)
    if not data:
        raise CharterError(f"no preference pair has soft_label >= {cfg.min_confidence} ({len(prefs)} pairs given)",
                           "lower dpo.min_confidence or label more pairs")
    base = local_model_dir(base_spec)
    fingerprint = short_hash(cfg.model_dump(mode="json"), [(p.id, p.soft_label) for p in data], str(base),
                             (base / "config.json").stat().st_mtime)
    if (done := already_done(out_dir, fingerprint)) is not None:
        return done

    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig as TRLDPOConfig
    from trl import DPOTrainer

    tokenizer = training_tokenizer(base, cfg.threads)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    work = out_dir / "trainer"
    args = TRLDPOConfig(
        output_dir=str(work), max_steps=cfg.max_steps, num_train_epochs=cfg.epochs, learning_rate=cfg.learning_rate,
        per_device_train_batch_size=cfg.batch_size, gradient_accumulation_steps=cfg.grad_accum,
        max_length=cfg.max_length, beta=cfg.beta, loss_type=["exo_pair" if cfg.loss == "soft" else "sigmoid"],
        label_smoothing=EPS_FLOOR if cfg.loss == "soft" else 0.0, seed=cfg.seed,
        use_cpu=not torch.cuda.is_available(), bf16=cfg.bf16, gradient_checkpointing=cfg.gradient_checkpointing,
        logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True, dataloader_num_workers=0,
        **cfg.training_args,
    )
    trainer_cls = _soft_trainer_class() if cfg.loss == "soft" else DPOTrainer
    trainer = trainer_cls(model=model, args=args, train_dataset=Dataset.from_list(trl_rows(data)),
                          processing_class=tokenizer, peft_config=lora_config(cfg, "CAUSAL_LM"))
    start = time.monotonic()
    result = trainer.train()
    seconds = time.monotonic() - start
    logs = [h for h in trainer.state.log_history if "loss" in h]
    model_dir = save_model(trainer.model, tokenizer, out_dir, cfg.lora)
    shutil.rmtree(work, ignore_errors=True)
    summary = {
        "fingerprint": fingerprint, "base": str(base), "pairs": len(data),
        "dropped_low_confidence": len(prefs) - len(data),
        "loss_type": args.loss_type[0], **cost_figures(result.global_step, seconds),
        "first_loss": logs[0]["loss"] if logs else None, "final_loss": logs[-1]["loss"] if logs else None,
        "final_reward_accuracy": logs[-1].get("rewards/accuracies") if logs else None,
        "lora": cfg.lora, "model": str(model_dir),
    }
    (model_dir / DONE_FILE).write_text(json.dumps(summary, indent=2))
    return summary


def run_dpo(cfg: DPOConfig, preferences_path: Path, out_dir: Path, base_spec: str) -> dict[str, Any]:
    """The DPO stage: train on ``preferences_path`` (preferences.jsonl, or an HH file for the human baseline)."""
    prefs = load_preferences(preferences_path)
    summary = train_dpo(cfg, prefs, out_dir, base_spec)
    summary["preferences"] = str(preferences_path)
    return summary
