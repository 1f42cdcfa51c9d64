"""What the four trainers (SFT, DPO, reward model, GRPO) share: settings, the base model, LoRA, the fingerprint that
decides whether training is needed, and the atomic save of the trained model.

**When training is skipped.** Only when ``OUT/model`` holds a complete model whose saved fingerprint equals the
fingerprint of this run's inputs: the bytes of the training file, every setting, and the content of every model that
is an input (see :mod:`charter.fingerprint`). Anything else retrains.

**How a model is saved.** Adapter and merged model are written into a staging folder beside ``OUT``, every file is
fsynced, then a marker (``charter_model.json``: fingerprint + summary) is written last, and the folders are renamed
into place. A process killed at any point leaves either the previous complete model, or none; never a half-written
one. Downstream stages accept a folder as a trained model only when it has the marker (:func:`is_complete`). Under
``accelerate launch`` only the main process saves.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from charter.errors import ConfigError
from charter.fingerprint import digest_of, folder_digest
from charter.records import PreferencePair, read_jsonl

_NOT_INPUTS = {"threads", "base_model", "preferences", "reward_model", "output"}
"""Settings that are not inputs of the result: threads change speed; the others are paths whose content is hashed."""
DONE_FILE = "charter_model.json"
"""The marker of a complete model folder written by a charter trainer (fingerprint + training summary)."""


class TrainConfig(BaseModel):
    """Settings every trainer has (``training_args`` passes anything else to TRL's config unchanged)."""

    model_config = ConfigDict(extra="forbid")

    base_model: str | None = Field(default=None, description="'transformers/...' spec of the model to train; None = "
                                                             "the stage's default (the policy, or the SL-CAI model).")
    lora: bool = Field(default=True, description="Train a LoRA adapter (False = full fine-tune).")
    lora_r: int = Field(default=16, ge=1, description="LoRA rank.")
    lora_alpha: int = Field(default=32, ge=1, description="LoRA scaling numerator.")
    lora_dropout: float = Field(default=0.0, ge=0, lt=1, description="Dropout on LoRA inputs.")
    lora_target_modules: str | list[str] = Field(default="all-linear", description="Modules that get adapters.")
    max_steps: int = Field(default=-1, description="Optimizer steps (-1 = run `epochs` epochs).")
    epochs: float = Field(default=1.0, gt=0, description="Epochs when max_steps is -1.")
    learning_rate: float = Field(default=5e-5, gt=0, description="Peak learning rate.")
    batch_size: int = Field(default=4, ge=1, description="Examples (or pairs) per device per step.")
    grad_accum: int = Field(default=1, ge=1, description="Gradient accumulation steps.")
    max_length: int = Field(default=512, ge=16, description="Tokens of prompt + answer (longer are truncated).")
    seed: int = Field(default=0, description="Training seed.")
    threads: int = Field(default=0, description="torch threads (0 = torch's default).")
    bf16: bool | Literal["auto"] = Field(
        default=False, description="bf16 mixed precision (TRL turns it on by default; off here: fp32 is exact, and "
                                   "bf16 is emulated and slow on AVX2-only CPUs). 'auto' = on where the hardware "
                                   "multiplies bf16 natively (a CUDA GPU that supports it; AVX512-BF16 or AMX on CPU).")
    gradient_checkpointing: bool = Field(default=False, description="Recompute activations in the backward pass "
                                                                    "(saves memory, costs ~30% more compute).")
    attention: Literal["auto", "eager", "sdpa"] = Field(
        default="auto", description="Attention kernel while training. 'auto' = 'eager' on CPU (PyTorch's fused CPU "
                                    "attention takes ~7x its forward time in the backward pass; eager took the "
                                    "135M's full fine-tuning step from 2.93 to 2.40-2.57 s in alternating runs, "
                                    "bench/results-sft-step.txt) and 'sdpa' on GPU.")
    training_args: dict[str, Any] = Field(default_factory=dict, description="Extra TRL config arguments.")


def resolve_bf16(value: bool | str) -> bool:
    """``bf16: auto`` resolved on this machine: native bf16 (CUDA that supports it, or AVX512-BF16/AMX on CPU)."""
    if value != "auto":
        return bool(value)
    import torch

    if torch.cuda.is_available():
        return bool(torch.cuda.is_bf16_supported())
    from charter.backends.engine import native_bf16

    return native_bf16()


def attention(value: str) -> str:
    """The ``attn_implementation`` to train with: ``value`` (a config's ``attention``), 'auto' resolved here."""
    if value != "auto":
        return value
    import torch

    return "sdpa" if torch.cuda.is_available() else "eager"


def load_trainable(auto_class: Any, base: Path, cfg: TrainConfig, **kwargs: Any) -> Any:
    """``auto_class.from_pretrained(base)`` as every trainer loads the model it trains: fp32 weights (bf16, when on,
    is autocast) and the attention kernel of ``cfg.attention``."""
    import torch

    return auto_class.from_pretrained(base, dtype=torch.float32, attn_implementation=attention(cfg.attention),
                                      **kwargs)


def trl_args(cfg: TrainConfig, work: Path) -> dict[str, Any]:
    """The TRL/Trainer arguments every trainer passes: schedule, batch, precision, seed, no checkpoints or logging
    integrations, no dataloader workers (CPU)."""
    import torch

    return dict(output_dir=str(work), max_steps=cfg.max_steps, num_train_epochs=cfg.epochs,
                learning_rate=cfg.learning_rate, per_device_train_batch_size=cfg.batch_size,
                gradient_accumulation_steps=cfg.grad_accum, seed=cfg.seed, use_cpu=not torch.cuda.is_available(),
                bf16=resolve_bf16(cfg.bf16), gradient_checkpointing=cfg.gradient_checkpointing, logging_steps=1,
                save_strategy="no", report_to="none", disable_tqdm=True, dataloader_num_workers=0,
                **cfg.training_args)


def local_model_dir(spec: str) -> Path:
    """The folder behind a ``transformers/...`` spec (``transformers/embedded`` = the converted embedded model)."""
    provider, _, rest = spec.partition("/")
    if provider != "transformers" or not rest:
        raise ConfigError(f"cannot fine-tune {spec!r}: training needs local weights",
                          "set base_model (or the policy) to 'transformers/embedded' or 'transformers//path'")
    from charter.backends.transformers import resolve_folder

    return resolve_folder(rest)


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


def lora_config(cfg: TrainConfig, task_type: str) -> Any:
    """A peft LoraConfig from the config's lora_* fields (None when ``cfg.lora`` is off)."""
    if not cfg.lora:
        return None
    from peft import LoraConfig

    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=cfg.lora_target_modules, task_type=task_type)


def show_progress(trainer: Any, stage: str) -> None:
    """Replace the Trainer's per-step log dicts on stdout with one progress line (with an ETA and the loss) on
    stderr, like every other long phase of a run."""
    from transformers import PrinterCallback, TrainerCallback

    from charter.progress import ProgressPrinter

    printer = ProgressPrinter(stage, "training steps")

    class _Progress(TrainerCallback):  # type: ignore[misc]
        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            printer(0, state.max_steps)

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            printer(state.global_step, state.max_steps)

    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(_Progress())


def cost_figures(steps: int, seconds: float) -> dict[str, Any]:
    """What a training run cost: steps, seconds, seconds per step and this process's peak resident memory (MB)."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # Linux reports KB, macOS bytes
    return {"steps": steps, "seconds": round(seconds, 1), "seconds_per_step": round(seconds / max(steps, 1), 2),
            "peak_rss_mb": round(peak / (2**20 if sys.platform == "darwin" else 2**10), 1)}


def loss_curve(log_history: Sequence[dict[str, Any]], key: str = "loss") -> list[float]:
    """The logged values of ``key`` in step order (one per logging step)."""
    return [round(float(h[key]), 5) for h in log_history if key in h]


def model_digest(spec: str, options: Any = None) -> str:
    """The identity of a model that is an input to training: a local folder's content digest, or for a server
    (``openai/NAME@URL``) the spec plus the model ids the server reports on ``/v1/models``."""
    from charter.backends.base import split_spec
    from charter.fingerprint import server_model_ids

    provider, rest = split_spec(spec)
    if provider == "transformers":
        from charter.backends.transformers import resolve_folder

        return "folder:" + folder_digest(resolve_folder(rest))
    if provider == "openai":
        return "server:" + digest_of(spec, server_model_ids(rest, options))
    if provider == "vllm" and Path(rest).is_dir():
        return "folder:" + folder_digest(rest)
    return f"{provider}:{rest}"


def server_model_ids(rest: str, options: Any = None) -> list[str]:
    """The model ids an OpenAI-compatible server reports (``GET /v1/models``); [] when it does not answer."""
    import httpx

    _, _, url = rest.partition("@")
    if not url:
        return []
    key_env = getattr(options, "api_key_env", "OPENAI_API_KEY")
    headers = {"Authorization": f"Bearer {os.environ[key_env]}"} if os.environ.get(key_env) else {}
    try:
        r = httpx.get(url.rstrip("/") + "/models", headers=headers, timeout=10)
        r.raise_for_status()
        return sorted(str(m.get("id")) for m in r.json().get("data", []))
    except (httpx.HTTPError, ValueError, AttributeError):
        return []


# --- whether training is needed --------------------------------------------------------------------------------

def fingerprint(cfg: BaseModel, base: Path, data: Path | None = None, **inputs: Any) -> str:
    """The fingerprint of a training run's inputs: every setting, the training file's bytes, the base model's
    content, and any further ``inputs`` (e.g. a reward model's digest). Never a path or an mtime."""
    settings = cfg.model_dump(mode="json", exclude=_NOT_INPUTS)
    if "bf16" in settings:  # what it means here is the input: `auto` trains as `true` or `false` would
        settings["bf16"] = resolve_bf16(settings["bf16"])
    if "attention" in settings:
        settings["attention"] = attention(settings["attention"])
    return digest_of(settings, folder_digest(base), sorted(inputs.items()), files=[data] if data else [])


def is_complete(folder: Path) -> bool:
    """True when ``folder`` is a model a charter trainer finished saving (it has the marker)."""
    return (folder / DONE_FILE).is_file() and (folder / "config.json").is_file()


def already_done(out_dir: Path, fp: str) -> dict[str, Any] | None:
    """The saved summary when ``out_dir/model`` is complete and was trained from inputs with fingerprint ``fp``."""
    model = out_dir / "model"
    if not is_complete(model):
        return None
    try:
        summary = dict(json.loads((model / DONE_FILE).read_text()))
    except (OSError, ValueError):
        return None
    if summary.get("fingerprint") != fp:
        return None
    summary["skipped"] = "already trained from the same inputs"
    return summary


# --- saving ------------------------------------------------------------------------------------------------------

def _fsync_tree(root: Path) -> None:
    for dirpath, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fd = os.open(dirpath, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def clear_staging(out_dir: Path) -> None:
    """Remove what a killed save left behind (staging and old folders); complete models are kept."""
    if out_dir.is_dir():
        for p in out_dir.iterdir():
            if p.name.startswith((".staging-", ".old-")):
                shutil.rmtree(p, ignore_errors=True)


def save_trained(trainer: Any, tokenizer: Any, out_dir: Path, lora: bool, summary: dict[str, Any]) -> Path | None:
    """Save ``trainer.model`` atomically as ``out_dir/model`` (+ ``out_dir/adapter`` with LoRA), with ``summary``
    (which must hold the fingerprint) as the marker. Returns the model folder; None on non-main processes."""
    accelerator = getattr(trainer, "accelerator", None)
    if accelerator is not None:
        accelerator.wait_for_everyone()
        if not accelerator.is_main_process:  # under `accelerate launch`, only rank 0 writes the model
            return None
    out_dir.mkdir(parents=True, exist_ok=True)
    clear_staging(out_dir)
    staging = out_dir / f".staging-{os.getpid()}"
    model = trainer.model
    if lora:
        model.save_pretrained(staging / "adapter")
        tokenizer.save_pretrained(staging / "adapter")
        model = model.merge_and_unload()
    model.save_pretrained(staging / "model")
    tokenizer.save_pretrained(staging / "model")
    _fsync_tree(staging)
    marker = staging / "model" / DONE_FILE
    marker.write_text(json.dumps({**summary, "model": str(out_dir / "model"), "saved": time.time()}, indent=2))
    _fsync_tree(staging / "model")
    for name in ("adapter", "model"):  # the model (with the marker) goes last
        new, final = staging / name, out_dir / name
        if final.exists():
            os.replace(final, out_dir / f".old-{name}-{os.getpid()}")
        if new.exists():
            os.replace(new, final)
    if not lora and (out_dir / "adapter").exists():
        os.replace(out_dir / "adapter", out_dir / f".old-adapter-{os.getpid()}")
    clear_staging(out_dir)
    fd = os.open(out_dir, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return out_dir / "model"


# --- preference data (DPO and reward model) ----------------------------------------------------------------------

def load_preferences(path: Path, n: int | None = None) -> list[PreferencePair]:
    """Preference records from ``preferences.jsonl``, or human pairs from an HH-RLHF file (``chosen``/``rejected``
    dialogues), which makes the human-label baseline: the same training on human labels."""
    if not path.is_file():
        raise ConfigError(f"{path}: file not found", "run the label (or rlcd) stage first, or check the path")
    with path.open(encoding="utf-8") as f:
        first = next((line for line in f if line.strip()), "")
    try:
        row = json.loads(first) if first else {}
    except json.JSONDecodeError:
        raise ConfigError(f"{path}:1: not JSON", "give a preferences.jsonl or an HH-RLHF JSONL file") from None
    if isinstance(row.get("chosen"), str):
        from charter.prompts import human_preferences, load_hh_pairs

        pairs, _ = load_hh_pairs(path, n=n)
        return human_preferences(pairs)
    return read_jsonl(path, PreferencePair)[:n]


def select(prefs: Sequence[PreferencePair], min_confidence: float) -> list[PreferencePair]:
    """The pairs confident enough to train on."""
    return [p for p in prefs if p.soft_label >= min_confidence]


def trl_rows(prefs: Sequence[PreferencePair]) -> list[dict[str, Any]]:
    """The columns TRL reads (conversational prompt/chosen/rejected) plus ``soft_label``."""
    return [{"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected, "soft_label": p.soft_label}
            for p in prefs]


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
