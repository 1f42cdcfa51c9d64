"""A causal LM with a classification head, fine-tuned on soft targets with one of the weak-to-strong losses.

The head reads the last token's final hidden state (as openai/weak-to-strong's ``TransformerWithHead``) and starts at
zero; the body is trained with LoRA (rank ``lora_r`` on the attention projections; EleutherAI/w2s's default) or in
full. Pair tasks score each response and use ``z = r(A) − r(B)`` (Bradley–Terry). The checkpoint — LoRA and head
weights — with the best validation AUROC against the caller's targets (weak labels, for a student) is kept.
CPU-sized: ``max_train`` caps the training items, ``max_tokens`` the length.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from charter.errors import ConfigError
from charter.oversight.heads import auroc
from charter.oversight.losses import LossSpec, loss_value
from charter.oversight.tasks import Task, render_response


class FinetuneConfig(BaseModel):
    """How ``finetune:`` students are trained."""

    model_config = ConfigDict(extra="forbid")

    lora: bool = Field(default=True, description="LoRA adapters (True) or full fine-tuning (False).")
    lora_r: int = Field(default=8, ge=1, description="LoRA rank.")
    lr: float = Field(default=3e-4, gt=0, description="AdamW learning rate (body and head).")
    epochs: int = Field(default=1, ge=1, description="Passes over the training items.")
    batch_size: int = Field(default=8, ge=2, description="Items per step.")
    max_tokens: int = Field(default=96, ge=8, description="Tokens per text (longer texts are cut).")
    max_train: int | None = Field(default=256, ge=4, description="Use at most this many training items (CPU time).")
    eval_every: int = Field(default=16, ge=1, description="Steps between validation passes (checkpoint choice).")
    threads: int = Field(default=0, ge=0, description="torch threads (0 = leave as is).")


class _Scorer:
    def __init__(self, folder: Path, cfg: FinetuneConfig, seed: int) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        torch.manual_seed(seed)
        self.tok = AutoTokenizer.from_pretrained(folder)
        if self.tok.pad_token is None:
            self.tok.pad_token = self.tok.eos_token
        self.tok.padding_side = "right"
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # a causal LM's lm_head is "unexpected" for AutoModel: expected here
        try:
            body = AutoModel.from_pretrained(folder, dtype=torch.float32)
        finally:
            hf_logging.set_verbosity(verbosity)
        if cfg.lora:
            from peft import LoraConfig, get_peft_model

            body = get_peft_model(body, LoraConfig(r=cfg.lora_r, lora_alpha=2 * cfg.lora_r, lora_dropout=0.0,
                                                   target_modules=["q_proj", "v_proj"]))
        self.body = body
        self.head = torch.nn.Linear(body.config.hidden_size, 1)
        torch.nn.init.zeros_(self.head.weight)
        torch.nn.init.zeros_(self.head.bias)
        self.max_tokens = cfg.max_tokens

    def params(self) -> list[Any]:
        return [p for p in self.body.parameters() if p.requires_grad] + list(self.head.parameters())

    def state(self) -> dict[str, Any]:
        named = {f"body.{n}": p for n, p in self.body.named_parameters() if p.requires_grad}
        named.update({f"head.{n}": p for n, p in self.head.named_parameters()})
        return {n: p.detach().clone() for n, p in named.items()}

    def load(self, state: dict[str, Any]) -> None:
        import torch

        named = {f"body.{n}": p for n, p in self.body.named_parameters() if p.requires_grad}
        named.update({f"head.{n}": p for n, p in self.head.named_parameters()})
        with torch.no_grad():
            for n, p in named.items():
                p.copy_(state[n])

    def score(self, texts: Sequence[str]) -> Any:
        import torch

        enc = self.tok(list(texts), return_tensors="pt", padding=True, truncation=True, max_length=self.max_tokens)
        hidden = self.body(**enc).last_hidden_state
        last = enc["attention_mask"].sum(1) - 1
        return self.head(hidden[torch.arange(len(texts)), last]).squeeze(-1)


def _texts(task: Task, i: int) -> list[str]:
    it = task.items[i]
    return [it.text] if task.kind == "text" else [render_response(it.prompt, it.a), render_response(it.prompt, it.b)]


def _logits(model: _Scorer, task: Task, idx: Sequence[int]) -> Any:
    texts = [t for i in idx for t in _texts(task, i)]
    r = model.score(texts)
    return r if task.kind == "text" else r[0::2] - r[1::2]


def finetune_predict(folder: Path, task: Task, train: list[int], t_train: Any, val: list[int], t_val: Any,
                     loss: LossSpec, seed: int, predict: list[int], cfg: FinetuneConfig | None,
                     log: Callable[[str], None] = print) -> Any:
    """Fine-tune on ``train`` (soft targets), keep the best checkpoint on ``val``, return P(label 1) on
    ``predict``."""
    import numpy as np
    import torch

    cfg = cfg or FinetuneConfig()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    rng = np.random.default_rng(seed)
    t_train = np.asarray(t_train, dtype=np.float32)
    if cfg.max_train is not None and len(train) > cfg.max_train:
        keep = np.sort(rng.choice(len(train), cfg.max_train, replace=False))
        train, t_train = [train[k] for k in keep], t_train[keep]
    model = _Scorer(folder, cfg, seed)
    opt = torch.optim.AdamW(model.params(), lr=cfg.lr, weight_decay=0.0)
    steps = cfg.epochs * max(1, len(train) // cfg.batch_size)
    hard_val = np.asarray(t_val) > 0.5

    def predict_on(idx: Sequence[int]) -> Any:
        model.body.eval()
        out = []
        with torch.inference_mode():
            for s in range(0, len(idx), 16):
                out.append(_logits(model, task, idx[s: s + 16]).float().numpy())
        model.body.train()
        return np.concatenate(out) if out else np.zeros(0)

    def val_score() -> float:
        z = predict_on(val)
        a = auroc(hard_val, z)
        return float(((z > 0) == hard_val).mean()) if a is None else a

    best: tuple[float, int, Any] | None = None  # the untrained model (head at zero) is never a candidate
    step = 0
    model.body.train()
    for _ in range(cfg.epochs):
        order = rng.permutation(len(train))
        for s in range(0, len(order) - cfg.batch_size + 1, cfg.batch_size):
            b = order[s: s + cfg.batch_size]
            z = _logits(model, task, [train[k] for k in b])
            value = loss_value(loss, z, torch.from_numpy(t_train[b]), step / steps)
            opt.zero_grad()
            value.backward()
            opt.step()
            step += 1
            if step % cfg.eval_every == 0 or step == steps:
                score = val_score()
                if best is None or score > best[0]:
                    best = (score, step, model.state())
    if best is None:
        raise ConfigError(f"finetune {folder.name}: {len(train)} training items make no step of {cfg.batch_size}",
                          "give more items or a smaller finetune.batch_size")
    log(f"finetune {folder.name} ({loss.name}): {step} steps, checkpoint at step {best[1]}")
    model.load(best[2])
    z = predict_on(predict)
    return 1 / (1 + np.exp(-np.clip(z, -40, 40)))
