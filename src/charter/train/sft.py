"""The SFT stage: fine-tune the policy on the accepted revisions (+ the helpful mix) with TRL's SFTTrainer.

LoRA (peft) by default, full fine-tune as an option. ``sft.jsonl`` is in TRL's conversational ``messages`` format;
for training each example is split into ``prompt``/``completion`` so the loss covers only the assistant turn that
was learned (the revision), not the red-team prompt. Saves ``sft/adapter`` (LoRA only) and ``sft/model``, a merged
full model folder with its tokenizer that ``transformers//abs/path/sft/model`` loads. A finished SFT with the same
data and settings is not trained again.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from charter.errors import CharterError, ConfigError
from charter.records import SFTExample, read_jsonl, short_hash

DONE_FILE = "charter_sft.json"


class SFTConfig(BaseModel):
    """Settings of the SFT stage (fields map onto TRL's SFTConfig; ``training_args`` passes anything else)."""

    model_config = ConfigDict(extra="forbid")

    base_model: str | None = Field(default=None,
                                   description="Model to fine-tune: 'transformers/...' spec; None = the policy.")
    lora: bool = Field(default=True, description="Train a LoRA adapter (False = full fine-tune).")
    lora_r: int = Field(default=16, ge=1, description="LoRA rank.")
    lora_alpha: int = Field(default=32, ge=1, description="LoRA scaling numerator.")
    lora_dropout: float = Field(default=0.05, ge=0, lt=1, description="Dropout on LoRA inputs.")
    lora_target_modules: str | list[str] = Field(default="all-linear", description="Modules that get adapters.")
    max_steps: int = Field(default=-1, description="Optimizer steps (-1 = run `epochs` epochs).")
    epochs: float = Field(default=1.0, gt=0, description="Epochs when max_steps is -1.")
    learning_rate: float = Field(default=2e-4, gt=0, description="Peak learning rate.")
    batch_size: int = Field(default=4, ge=1, description="Examples per device per step.")
    grad_accum: int = Field(default=1, ge=1, description="Gradient accumulation steps.")
    max_length: int = Field(default=512, ge=16, description="Tokens per example (longer ones are truncated).")
    completion_only: bool = Field(default=True, description="Loss on the assistant turn only.")
    seed: int = Field(default=0, description="Training seed.")
    threads: int = Field(default=0, description="torch threads (0 = torch's default).")
    bf16: bool = Field(default=False, description="bf16 mixed precision (faster here, but learned slower).")
    training_args: dict[str, Any] = Field(default_factory=dict,
                                          description="Extra TRL SFTConfig / TrainingArguments, passed unchanged.")


def save_model(trained: Any, tokenizer: Any, out_dir: Path, lora: bool) -> Path:
    """Save the adapter (LoRA) and a merged full model folder ``out_dir/model``; returns the model folder."""
    model_dir = out_dir / "model"
    if model_dir.exists():
        shutil.rmtree(model_dir)
    if lora:
        trained.save_pretrained(out_dir / "adapter")
        tokenizer.save_pretrained(out_dir / "adapter")
        trained = trained.merge_and_unload()
    trained.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    return model_dir


def cost_figures(steps: int, seconds: float) -> dict[str, Any]:
    """What a training run cost: steps, seconds, seconds per step and this process's peak resident memory (MB)."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # Linux reports KB, macOS bytes
    return {"steps": steps, "seconds": round(seconds, 1), "seconds_per_step": round(seconds / max(steps, 1), 2),
            "peak_rss_mb": round(peak / (2**20 if sys.platform == "darwin" else 2**10), 1)}


def local_model_dir(spec: str) -> Path:
    """The folder behind a ``transformers/...`` spec (``transformers/embedded`` = the converted embedded model)."""
    provider, _, rest = spec.partition("/")
    if provider != "transformers" or not rest:
        raise ConfigError(f"cannot fine-tune {spec!r}: training needs local weights",
                          "set sft.base_model (or the policy) to 'transformers/embedded' or 'transformers//path'")
    if rest == "embedded":
        from charter.embedded import embedded_model_dir

        return embedded_model_dir()
    from charter.models import named_model_dir

    if (named := named_model_dir(rest)) is not None:
        return named
    path = Path(rest)
    if not (path / "config.json").is_file():
        raise ConfigError(f"{path}: no model folder here (config.json missing)",
                          "point the model spec at a Hugging Face model folder")
    return path


def training_tokenizer(base: Path, threads: int = 0) -> Any:
    """The tokenizer of ``base`` with a pad token (EOS when it has none); sets torch threads when ``threads``."""
    import torch
    from transformers import AutoTokenizer

    if threads:
        torch.set_num_threads(threads)
    tokenizer = AutoTokenizer.from_pretrained(base)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def to_prompt_completion(example: SFTExample) -> dict[str, list[dict[str, str]]]:
    """Split a ``messages`` example into TRL's conversational prompt/completion form (last turn = completion)."""
    msgs = example.messages
    return {"prompt": msgs[:-1], "completion": msgs[-1:]}


def run_sft(cfg: SFTConfig, data_path: Path, out_dir: Path, base_spec: str) -> dict[str, Any]:
    """Fine-tune ``base_spec`` on ``data_path`` (sft.jsonl); write ``out_dir/adapter`` and ``out_dir/model``.

    Returns a summary (examples, steps, seconds, final loss, where the model is). Skips training when ``out_dir``
    already holds a model made from the same data and settings.
    """
    examples = read_jsonl(data_path, SFTExample)
    if not examples:
        raise CharterError(f"{data_path}: no training examples (every revision failed or was filtered)",
                           "look at the revision failure counts in the manifest; try more prompts or a stronger "
                           "feedback model")
    base = local_model_dir(base_spec)
    fingerprint = short_hash(cfg.model_dump(mode="json"), [e.id for e in examples], str(base),
                             (base / "config.json").stat().st_mtime)
    done = out_dir / "model" / DONE_FILE
    if done.is_file() and json.loads(done.read_text()).get("fingerprint") == fingerprint:
        summary = json.loads(done.read_text())
        summary["skipped"] = "already trained with the same data and settings"
        return dict(summary)

    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig as TRLSFTConfig
    from trl import SFTTrainer

    tokenizer = training_tokenizer(base, cfg.threads)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    rows = [to_prompt_completion(e) for e in examples]
    dataset = Dataset.from_list(rows)
    work = out_dir / "trainer"
    args = TRLSFTConfig(
        output_dir=str(work), max_steps=cfg.max_steps, num_train_epochs=cfg.epochs,
        learning_rate=cfg.learning_rate, per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum, max_length=cfg.max_length,
        completion_only_loss=cfg.completion_only, seed=cfg.seed, bf16=cfg.bf16, use_cpu=not torch.cuda.is_available(),
        logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True, dataloader_num_workers=0,
        **cfg.training_args,
    )
    peft_config = None
    if cfg.lora:
        peft_config = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                                 target_modules=cfg.lora_target_modules, task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                         peft_config=peft_config)
    start = time.monotonic()
    result = trainer.train()
    seconds = time.monotonic() - start
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]

    trainer.accelerator.wait_for_everyone()
    if not trainer.accelerator.is_main_process:  # under `accelerate launch`, only rank 0 writes the model
        return {"steps": result.global_step, "rank": trainer.accelerator.process_index}
    model_dir = save_model(trainer.model, tokenizer, out_dir, cfg.lora)
    shutil.rmtree(work, ignore_errors=True)
    summary = {
        "fingerprint": fingerprint, "base": str(base), "examples": len(examples),
        **cost_figures(result.global_step, seconds),
        "first_loss": losses[0] if losses else None, "final_loss": losses[-1] if losses else None,
        "lora": cfg.lora, "model": str(model_dir), "adapter": str(out_dir / "adapter") if cfg.lora else None,
    }
    done.write_text(json.dumps(summary, indent=2))
    return summary
