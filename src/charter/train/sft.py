"""The SFT stage: fine-tune the policy on the accepted revisions (+ the helpful mix) with TRL's SFTTrainer.

LoRA (peft) by default, full fine-tune as an option. ``sft.jsonl`` is in TRL's conversational ``messages`` format;
for training each example is split into ``prompt``/``completion`` so the loss covers only the assistant turn that
was learned (the revision), not the red-team prompt. Saves ``sft/adapter`` (LoRA only) and ``sft/model``, a merged
full model folder with its tokenizer that ``transformers//abs/path/sft/model`` loads. Training is skipped only when
``sft/model`` was trained from the same inputs (see :mod:`charter.train.common`).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import Field

from charter.errors import CharterError
from charter.records import SFTExample, read_jsonl
from charter.train.common import (
    TrainConfig,
    already_done,
    cost_figures,
    fingerprint,
    load_trainable,
    local_model_dir,
    lora_config,
    loss_curve,
    save_trained,
    show_progress,
    training_tokenizer,
    trl_args,
)


class SFTConfig(TrainConfig):
    """Settings of the SFT stage (the shared training fields are documented on :class:`TrainConfig`)."""

    output: str = Field(default="sft", description="Folder in the run where the model goes (RUN/OUTPUT/model).")

    lora_dropout: float = Field(default=0.05, ge=0, lt=1, description="Dropout on LoRA inputs.")
    learning_rate: float = Field(default=2e-4, gt=0, description="Peak learning rate.")
    completion_only: bool = Field(default=True, description="Loss on the assistant turn only.")
    opening_tokens: int = Field(default=0, ge=0, description="The first this many tokens of each assistant turn "
                                                             "count opening_weight times in the loss (0 = plain "
                                                             "token-mean loss).")
    opening_weight: float = Field(default=1.0, ge=1, description="Weight of those opening tokens. A reply's opening "
                                                                 "('I can't help with…' or the answer itself) is "
                                                                 "where it decides to refuse or to help, and it is "
                                                                 "a few tokens of a hundred: in plain SFT a small "
                                                                 "model learns the style of both kinds of reply "
                                                                 "before it learns which one a prompt gets.")


def to_prompt_completion(example: SFTExample) -> dict[str, list[dict[str, str]]]:
    """Split a ``messages`` example into TRL's conversational prompt/completion form (last turn = completion)."""
    msgs = example.messages
    return {"prompt": msgs[:-1], "completion": msgs[-1:]}


def opening_weighted_loss(tokens: int, weight: float) -> Callable[..., Any]:
    """A ``compute_loss_func`` for the trainer: next-token cross-entropy over the labelled tokens (each example's one
    assistant turn), its first ``tokens`` counting ``weight`` times, normalised by the weights' sum (a weighted mean,
    whatever the lengths in the batch)."""
    import torch
    import torch.nn.functional as F

    def loss(outputs: Any, labels: Any, num_items_in_batch: Any = None) -> Any:
        logits, target = outputs.logits[:, :-1].float(), labels[:, 1:]
        mask = target != -100
        ce = F.cross_entropy(logits.transpose(1, 2), target.clamp(min=0), reduction="none")
        position = torch.cumsum(mask.long(), 1)  # 1, 2, ... along the row's labelled tokens
        w = torch.where(mask & (position <= tokens), torch.full_like(ce, weight), mask.to(ce.dtype))
        return (ce * w).sum() / w.sum().clamp(min=1.0)

    return loss


def _with_loss(base: type, loss: Callable[..., Any]) -> type:
    """``base`` (TRL's SFTTrainer) with ``loss(outputs, labels)`` as its training loss: one forward pass with the
    full logits, as TRL asks of a custom loss (its ``compute_loss_func`` hook runs a second forward)."""

    class Trainer(base):  # type: ignore[misc, valid-type]
        def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                         num_items_in_batch: Any = None) -> Any:
            outputs = model(**{k: v for k, v in inputs.items() if k != "labels"}, use_cache=False)
            value = loss(outputs, inputs["labels"])
            return (value, outputs) if return_outputs else value

    return Trainer


# Model types whose causal-LM logits are the output embedding of the last hidden state, nothing more (no
# soft-capping or scaling, as Gemma's and Cohere's heads have)
PLAIN_HEAD_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3"})


def _head_on_labels(base: type) -> type:
    """``base`` (TRL's SFTTrainer) with the output head run only where there is a label.

    TRL's own loss projects every position, prompt and padding included, through the head in tiles, in a loop that
    has no fast kernel on CPU: on the AMX Xeon that was a third of each full fine-tuning step of the 135M (its 49k-word
    head is a fifth of the model). This is the same token-mean cross-entropy over the assistant turns, with one
    GEMM over the labelled positions. Used on one process with a plain head (elsewhere TRL's loss runs): calling the
    backbone directly would bypass a DDP/FSDP wrapper's gradient hooks.
    """

    class Trainer(base):  # type: ignore[misc, valid-type]
        def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                         num_items_in_batch: Any = None) -> Any:
            core = model.get_base_model() if hasattr(model, "get_base_model") else model
            if return_outputs or self.accelerator.num_processes > 1 or core.config.model_type not in PLAIN_HEAD_TYPES:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            import torch
            import torch.nn.functional as F

            features = {k: inputs[k] for k in ("input_ids", "attention_mask", "position_ids") if k in inputs}
            with self.accelerator.autocast():
                hidden = core.get_decoder()(**features, use_cache=False).last_hidden_state
                target = inputs["labels"][:, 1:]
                mask = target != -100
                logits = core.get_output_embeddings()(hidden[:, :-1][mask])
            total = F.cross_entropy(logits.float(), target[mask], reduction="sum")
            count = num_items_in_batch if num_items_in_batch is not None else mask.sum()
            return total / torch.as_tensor(count, device=total.device).clamp(min=1)

    return Trainer


def run_sft(cfg: SFTConfig, data_path: Path, out_dir: Path, base_spec: str) -> dict[str, Any]:
    """Fine-tune ``base_spec`` on ``data_path`` (sft.jsonl); write ``out_dir/adapter`` and ``out_dir/model``.

    Returns a summary (examples, steps, seconds, loss curve, where the model is). Skips training when ``out_dir``
    already holds a complete model trained from the same file, settings and base weights.
    """
    examples = read_jsonl(data_path, SFTExample)
    if not examples:
        raise CharterError(f"{data_path}: no training examples (every revision failed or was filtered)",
                           "look at the revision failure counts in the manifest; try more prompts or a stronger "
                           "feedback model")
    base = local_model_dir(base_spec)
    fp = fingerprint(cfg, base, data_path)
    if (done := already_done(out_dir, fp)) is not None:
        return done

    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig as TRLSFTConfig
    from trl import SFTTrainer

    tokenizer = training_tokenizer(base, cfg.threads)
    model = load_trainable(AutoModelForCausalLM, base, cfg)
    dataset = Dataset.from_list([to_prompt_completion(e) for e in examples])
    work = out_dir / "trainer"
    args = TRLSFTConfig(max_length=cfg.max_length, completion_only_loss=cfg.completion_only, **trl_args(cfg, work))
    trainer_class: Any = _head_on_labels(SFTTrainer)
    if cfg.opening_tokens:
        trainer_class = _with_loss(SFTTrainer, opening_weighted_loss(cfg.opening_tokens, cfg.opening_weight))
    trainer = trainer_class(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                            peft_config=lora_config(cfg, "CAUSAL_LM"))
    show_progress(trainer, "sft")
    start = time.monotonic()
    result = trainer.train()
    seconds = time.monotonic() - start
    losses = loss_curve(trainer.state.log_history)
    summary = {
        "fingerprint": fp, "base": str(base), "examples": len(examples),
        "from_revisions": sum(e.source == "revision" for e in examples), **cost_figures(result.global_step, seconds),
        "first_loss": losses[0] if losses else None, "final_loss": losses[-1] if losses else None,
        "loss_curve": losses, "lora": cfg.lora, "adapter": str(out_dir / "adapter") if cfg.lora else None,
    }
    model_dir = save_trained(trainer, tokenizer, out_dir, cfg.lora, summary)
    if model_dir is None:
        return {"steps": result.global_step, "rank": trainer.accelerator.process_index}
    shutil.rmtree(work, ignore_errors=True)
    return {**summary, "model": str(model_dir)}
