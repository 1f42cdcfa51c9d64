"""Seconds per full fine-tuning step of the embedded 135M: TRL's SFT loss against charter's, and the attention
kernel charter trains with on CPU (eager) against PyTorch's fused one (sdpa).

    .venv/bin/python bench/sft_step.py --data runs/cpu-effect/sft.jsonl [--steps 14] [--bf16 auto]

TRL's SFTTrainer projects every position (prompt and padding too) through the output head in tiles, with torch ops
on CPU; charter's trainer runs the head on the labelled positions only (charter.train.sft._head_on_labels). Both
train the same batches in the same order (group_by_length, seed 0, batch 8, as examples/cpu-effect.yaml); the
first two steps are warm-up and not counted. Runs: ``trl`` (TRL's loss, sdpa attention), ``charter-sdpa`` (charter's
loss, sdpa) and ``charter`` (charter's loss, ``attention: auto`` = eager on CPU: PyTorch's fused CPU attention is slow
in the backward pass). Prints each run's step times and the first/last losses, which should match to bf16 rounding;
the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from charter.records import SFTExample, read_jsonl  # noqa: E402
from charter.train.common import attention, load_trainable, local_model_dir, resolve_bf16, training_tokenizer, trl_args  # noqa: E402
from charter.train.sft import SFTConfig, _head_on_labels, to_prompt_completion  # noqa: E402

WARMUP = 2


def timed_steps(trainer_class: Any, cfg: SFTConfig, examples: list[SFTExample], work: Path) -> dict[str, Any]:
    """Train ``cfg.max_steps`` steps with ``trainer_class`` and ``cfg.attention``; the seconds of each step and the
    logged losses."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import SFTConfig as TRLSFTConfig

    base = local_model_dir("transformers/embedded")
    tokenizer = training_tokenizer(base, cfg.threads)
    model = load_trainable(AutoModelForCausalLM, base, cfg)
    args = TRLSFTConfig(max_length=cfg.max_length, completion_only_loss=True, **trl_args(cfg, work))
    trainer = trainer_class(model=model, args=args, processing_class=tokenizer,
                            train_dataset=Dataset.from_list([to_prompt_completion(e) for e in examples]))
    seconds: list[float] = []

    class Clock(TrainerCallback):  # type: ignore[misc]
        def on_step_begin(self, *args: Any, **kwargs: Any) -> None:
            self.start = time.perf_counter()

        def on_step_end(self, *args: Any, **kwargs: Any) -> None:
            seconds.append(time.perf_counter() - self.start)

    trainer.add_callback(Clock())
    trainer.train()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    timed = seconds[WARMUP:]
    return {"seconds_per_step": round(sum(timed) / len(timed), 3), "steps": [round(s, 2) for s in seconds],
            "first_loss": round(losses[0], 4), "last_loss": round(losses[-1], 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="an sft.jsonl written by a run's critique stage")
    parser.add_argument("--steps", type=int, default=14)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--bf16", default="auto")
    a = parser.parse_args()

    from trl import SFTTrainer

    examples = read_jsonl(a.data, SFTExample)
    cfg = SFTConfig(max_steps=a.steps, batch_size=8, learning_rate=3e-4, lora=False, bf16=a.bf16, threads=a.threads,
                    training_args={"train_sampling_strategy": "group_by_length"})
    sdpa = cfg.model_copy(update={"attention": "sdpa"})
    work = Path("/tmp/charter-bench-sft")
    runs = {"trl": timed_steps(SFTTrainer, sdpa, examples, work),
            "charter-sdpa": timed_steps(_head_on_labels(SFTTrainer), sdpa, examples, work),
            "charter": timed_steps(_head_on_labels(SFTTrainer), cfg, examples, work)}
    for name, r in runs.items():
        losses = f"{r['first_loss']} .. {r['last_loss']}"
        print(f"{name:12s} {r['seconds_per_step']:.2f} s/step  losses {losses}  {r['steps']}")
    per_step = {k: r["seconds_per_step"] for k, r in runs.items()}
    speedup = per_step["trl"] / per_step["charter"]
    print(f"charter's loss: {per_step['trl'] / per_step['charter-sdpa']:.2f}x faster per step; with eager attention "
          f"(attention: {attention('auto')}): {per_step['charter-sdpa'] / per_step['charter']:.2f}x more; "
          f"{speedup:.2f}x in all")
    print(json.dumps({"examples": len(examples), "bf16": resolve_bf16(a.bf16), "threads": a.threads,
                      "attention": attention("auto"), "timed_steps": a.steps - WARMUP, **runs,
                      "loss_speedup": round(per_step["trl"] / per_step["charter-sdpa"], 2),
                      "attention_speedup": round(per_step["charter-sdpa"] / per_step["charter"], 2),
                      "speedup": round(speedup, 2)}))


if __name__ == "__main__":
    main()
