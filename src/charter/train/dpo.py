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

Saves ``OUT/adapter`` (LoRA) and ``OUT/model``, a merged model folder that ``transformers//abs/OUT/model`` loads
(atomically, skipped when trained from the same inputs: see :mod:`charter.train.common`).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from charter.errors import CharterError
from charter.records import PreferencePair
from charter.train.common import (
    SoftLabelColumn,
    TrainConfig,
    already_done,
    cost_figures,
    fingerprint,
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

EPS_FLOOR = 1e-3


class DPOConfig(TrainConfig):
    """Settings of the DPO stage (the shared training fields are documented on :class:`TrainConfig`)."""

    output: str = Field(default="dpo", description="Folder in the run where the model goes (RUN/OUTPUT/model).")

    loss: Literal["soft", "hard"] = Field(default="soft", description="'soft': EXO loss with per-example label "
                                                                      "smoothing 1 - soft_label; 'hard': sigmoid DPO.")
    min_confidence: float = Field(default=0.5, ge=0.5, le=1, description="Drop pairs whose soft label is below this.")
    beta: float = Field(default=0.1, gt=0, description="KL strength towards the reference (the starting model).")
    batch_size: int = Field(default=2, ge=1, description="Pairs per device per step.")
    preferences: str | None = Field(default=None, description="Preference file to train on (None = the run's "
                                                              "preferences.jsonl, else rlcd_preferences.jsonl; an "
                                                              "HH-RLHF file trains on its human labels).")


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


def train_dpo(cfg: DPOConfig, prefs: Sequence[PreferencePair], out_dir: Path, base_spec: str,
              data_path: Path | None = None) -> dict[str, Any]:
    """DPO-train ``base_spec`` on ``prefs``; writes ``out_dir/model`` (+ ``adapter``); returns a summary.

    Skips training when ``out_dir/model`` was already trained from the same inputs: the file ``data_path`` the
    pairs came from (or the pairs themselves), the settings and the base model's content.
    """
    data = select(prefs, cfg.min_confidence)
    if not data:
        raise CharterError(f"no preference pair has soft_label >= {cfg.min_confidence} ({len(prefs)} pairs given)",
                           "lower dpo.min_confidence or label more pairs")
    base = local_model_dir(base_spec)
    rows = trl_rows(data)
    fp = fingerprint(cfg, base, data_path, pairs=None if data_path else rows)
    if (done := already_done(out_dir, fp)) is not None:
        return done

    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig as TRLDPOConfig
    from trl import DPOTrainer

    tokenizer = training_tokenizer(base, cfg.threads)
    model = load_trainable(AutoModelForCausalLM, base, cfg)
    work = out_dir / "trainer"
    args = TRLDPOConfig(max_length=cfg.max_length, beta=cfg.beta,
                        loss_type=["exo_pair" if cfg.loss == "soft" else "sigmoid"],
                        label_smoothing=EPS_FLOOR if cfg.loss == "soft" else 0.0, **trl_args(cfg, work))
    trainer_cls = _soft_trainer_class() if cfg.loss == "soft" else DPOTrainer
    trainer = trainer_cls(model=model, args=args, train_dataset=Dataset.from_list(rows),
                          processing_class=tokenizer, peft_config=lora_config(cfg, "CAUSAL_LM"))
    show_progress(trainer, "dpo")
    start = time.monotonic()
    result = trainer.train()
    seconds = time.monotonic() - start
    logs = [h for h in trainer.state.log_history if "loss" in h]
    losses = loss_curve(logs)
    summary = {
        "fingerprint": fp, "base": str(base), "pairs": len(data), "dropped_low_confidence": len(prefs) - len(data),
        "loss_type": args.loss_type[0], **cost_figures(result.global_step, seconds),
        "first_loss": losses[0] if losses else None, "final_loss": losses[-1] if losses else None,
        "loss_curve": losses, "final_reward_accuracy": logs[-1].get("rewards/accuracies") if logs else None,
        "lora": cfg.lora,
    }
    model_dir = save_trained(trainer, tokenizer, out_dir, cfg.lora, summary)
    if model_dir is None:
        return {"steps": result.global_step, "rank": trainer.accelerator.process_index}
    shutil.rmtree(work, ignore_errors=True)
    return {**summary, "model": str(model_dir)}


def run_dpo(cfg: DPOConfig, preferences_path: Path, out_dir: Path, base_spec: str) -> dict[str, Any]:
    """The DPO stage: train on ``preferences_path`` (preferences.jsonl, or an HH file for the human baseline)."""
    summary = train_dpo(cfg, load_preferences(preferences_path), out_dir, base_spec, preferences_path)
    summary["preferences"] = str(preferences_path)
    return summary
