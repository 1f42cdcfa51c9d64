"""The distilled classifier: a small model with a classification head trained on the feedback model's scores of
synthetic data written from the constitution (the Constitutional Classifiers recipe, in small).

1. **Data from the constitution**: the TRAIN part of a ``charter redteam`` prompts file (attacks written per
   principle and their benign counterparts). Each prompt gives three checks: the request alone (``input``), the
   request with a model's answer to it, and the request with the guard's refusal (``output``).
2. **Teacher labels**: the feedback scorer's P(violates) for every principle on every check (soft labels; an
   unusable reading is left out of the loss, never filled in).
3. **Student**: the base model (the embedded 135M by default) with one sigmoid output per stage × principle,
   trained with binary cross-entropy on the soft labels (only the heads of the check's stage), the top
   ``train_layers`` layers and the head updated. One forward pass then scores every principle of a check.
4. **Agreement**: on a held-back fifth of the checks, the student's mean absolute difference from the teacher, the
   correlation, and how often both fall on the same side of 0.5 — written with the model in ``charter_guard.json``.

The student can only be as good as its teacher: with the embedded 135M as the feedback model it learns that
model's (weak) judgements. Every teacher call goes through ``OUT/calls.sqlite``, so a killed run resumes.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from charter.backends.base import GenParams, GenRequest
from charter.guard.config import GuardConfig
from charter.guard.scorers import META_FILE, Check, Scorer, classifier_text, head_names
from charter.records import short_hash


class DistillConfig(BaseModel):
    """Settings of ``charter guard distill``."""

    model_config = ConfigDict(extra="forbid")

    base: str = Field(default="transformers/embedded", description="Model the classifier starts from "
                                                                   "(transformers/NAME_OR_FOLDER).")
    answerer: str | None = Field(default=None, description="Model whose answers make the output checks (None = "
                                                           "the guard's feedback model).")
    steps: int = Field(default=60, ge=1, description="Optimizer steps.")
    batch_size: int = Field(default=8, ge=1, description="Checks per step.")
    learning_rate: float = Field(default=1e-4, gt=0, description="AdamW learning rate.")
    train_layers: int = Field(default=6, ge=0, description="Top transformer layers trained with the head (0 = all).")
    max_tokens: int = Field(default=256, ge=32, description="Longest input in tokens (the end is kept).")
    answer_tokens: int = Field(default=96, ge=1, description="max_new_tokens of the answers in the data.")
    holdout: float = Field(default=0.2, ge=0, lt=1, description="Share of checks held back to measure agreement.")
    limit: int | None = Field(default=None, ge=1, description="At most this many prompts.")
    seed: int = Field(default=0, description="Seed of shuffling and of the head's initialisation.")


def build_checks(prompts: Sequence[Any], answers: Sequence[str], refusal: str) -> list[Check]:
    """Three checks per prompt: the request, the request + its answer, the request + the refusal."""
    out: list[Check] = []
    for p, a in zip(prompts, answers, strict=True):
        conv = p.messages()
        out += [Check("input", conv), Check("output", conv, a), Check("output", conv, refusal)]
    return out


def teacher_labels(scorer: Scorer, checks: Sequence[Check], principles: Sequence[Any],
                   chunk: int = 16) -> list[dict[str, float | None]]:
    """The teacher's P(violates) per principle for every check."""
    out: list[dict[str, float | None]] = []
    for start in range(0, len(checks), chunk):
        out.extend(s.values for s in scorer.score_many(checks[start:start + chunk], principles))
    return out


def _corr(a: Sequence[float], b: Sequence[float]) -> float | None:
    if len(a) < 2:
        return None
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    va = sum((x - ma) ** 2 for x in a)
    vb = sum((y - mb) ** 2 for y in b)
    if va == 0 or vb == 0:
        return None
    return sum((x - ma) * (y - mb) for x, y in zip(a, b, strict=True)) / math.sqrt(va * vb)


def train_classifier(dcfg: DistillConfig, checks: Sequence[Check], labels: Sequence[dict[str, float | None]],
                     principle_ids: Sequence[str], out: Path, teacher: str, max_context_chars: int,
                     threads: int = 0) -> dict[str, Any]:
    """Train the student on ``labels`` and save it (weights, tokenizer, ``charter_guard.json``) to ``out``."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from charter.backends.transformers import resolve_folder

    if threads > 0:
        torch.set_num_threads(threads)
    heads = head_names(principle_ids)
    texts = [classifier_text(c, max_context_chars) for c in checks]
    targets = torch.zeros(len(checks), len(heads))
    mask = torch.zeros(len(checks), len(heads))
    for i, (c, lab) in enumerate(zip(checks, labels, strict=True)):
        for pid, v in lab.items():
            if v is not None:
                j = heads.index(f"{c.stage}:{pid}")
                targets[i, j], mask[i, j] = v, 1.0
    order = list(range(len(checks)))
    random.Random(dcfg.seed).shuffle(order)
    n_hold = int(len(order) * dcfg.holdout)
    hold, fit = order[:n_hold], order[n_hold:] or order

    provider, _, rest = dcfg.base.partition("/")
    if provider != "transformers":
        from charter.errors import ConfigError

        raise ConfigError(f"classifier base {dcfg.base!r} is not a local model",
                          "use transformers/embedded or transformers//path/to/hf-folder")
    folder = resolve_folder(rest)
    tok = AutoTokenizer.from_pretrained(folder)
    tok.padding_side, tok.truncation_side = "right", "left"
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    torch.manual_seed(dcfg.seed)
    from transformers.utils import logging as hf_logging

    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()  # "score.weight MISSING" is the point: the head is new
    hf_logging.disable_progress_bar()
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            folder, num_labels=len(heads), problem_type="multi_label_classification", dtype=torch.float32)
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()
    model.config.pad_token_id = tok.pad_token_id
    model.config.id2label = dict(enumerate(heads))
    model.config.label2id = {h: i for i, h in enumerate(heads)}
    layers = model.model.layers
    keep = len(layers) if dcfg.train_layers == 0 else min(dcfg.train_layers, len(layers))
    for p in model.parameters():
        p.requires_grad = False
    for p in [*layers[len(layers) - keep:].parameters(), *model.model.norm.parameters(), *model.score.parameters()]:
        p.requires_grad = True
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=dcfg.learning_rate, weight_decay=0.0)
    loss_fn = torch.nn.BCEWithLogitsLoss(reduction="none")
    rng = random.Random(dcfg.seed + 1)
    losses: list[float] = []
    model.train()
    start = time.perf_counter()
    for step in range(dcfg.steps):
        idx = [fit[rng.randrange(len(fit))] for _ in range(dcfg.batch_size)]
        enc = tok([texts[i] for i in idx], return_tensors="pt", padding=True, truncation=True,
                  max_length=dcfg.max_tokens)
        logits = model(**enc).logits
        m = mask[idx]
        loss = (loss_fn(logits, targets[idx]) * m).sum() / m.sum().clamp(min=1)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(float(loss.detach()))
        if step == 0 or (step + 1) % 20 == 0:
            print(f"[distill] step {step + 1}/{dcfg.steps} loss {losses[-1]:.4f}", flush=True)
    seconds = time.perf_counter() - start
    model.eval()
    agreement = _agreement(model, tok, dcfg, [texts[i] for i in hold], targets[hold], mask[hold])
    fingerprint = short_hash(teacher, dcfg.model_dump(), heads, texts, targets.tolist(), n=16)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    meta = {"heads": heads, "principles": list(principle_ids), "teacher": teacher, "base": dcfg.base,
            "fingerprint": fingerprint, "max_context_chars": max_context_chars, "config": dcfg.model_dump(),
            "checks": len(checks), "fit": len(fit), "holdout": len(hold),
            "train": {"first_loss": losses[0], "last_loss": sum(losses[-5:]) / len(losses[-5:]),
                      "seconds": round(seconds, 1), "steps": dcfg.steps},
            "agreement_with_teacher": agreement}
    (out / META_FILE).write_text(json.dumps(meta, indent=2))
    return meta


def _agreement(model: Any, tok: Any, dcfg: DistillConfig, texts: list[str], targets: Any, mask: Any) -> dict[str, Any]:
    """Student vs teacher on the held-back checks: MAE, correlation, same side of 0.5."""
    import torch

    if not texts:
        return {"n": 0}
    preds = []
    with torch.inference_mode():
        for s in range(0, len(texts), 8):
            enc = tok(texts[s:s + 8], return_tensors="pt", padding=True, truncation=True, max_length=dcfg.max_tokens)
            preds.append(torch.sigmoid(model(**enc).logits.float()))
    p = torch.cat(preds)
    sel = mask.bool()
    a, b = p[sel].tolist(), targets[sel].tolist()
    if not a:
        return {"n": 0}
    return {"n": len(a), "mae": sum(abs(x - y) for x, y in zip(a, b, strict=True)) / len(a),
            "correlation": _corr(a, b),
            "same_side_of_0.5": sum((x >= 0.5) == (y >= 0.5) for x, y in zip(a, b, strict=True)) / len(a),
            "teacher_mean": sum(b) / len(b), "student_mean": sum(a) / len(a)}


def distill_command(cfg: GuardConfig, dcfg: DistillConfig, prompts_file: str, out: str) -> str:
    """``charter guard distill``: data, teacher labels, training; returns what it prints at the end."""
    from charter.backends import BackendOptions, load_backend
    from charter.guard.calibrate import guard_principles, open_scorer
    from charter.prompts import load_prompts
    from charter.splits import select
    from charter.store import CachedBackend, CallCache

    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    prompts = select(load_prompts(prompts_file).prompts, "train", prompts_file)  # EVAL prompts stay unseen
    if dcfg.limit is not None:
        prompts = prompts[: dcfg.limit]
    cache = CallCache(folder / "calls.sqlite")
    answerer_spec = dcfg.answerer or cfg.feedback
    options = BackendOptions(dtype=cfg.dtype, threads=cfg.threads)
    answerer = CachedBackend(load_backend(answerer_spec, options, lazy=True), cache)
    gens = answerer.generate([GenRequest.of(p.messages(), GenParams(dcfg.answer_tokens, 0.0)) for p in prompts])
    checks = build_checks(prompts, [g.text for g in gens], cfg.refusal)
    teacher_cfg = cfg.model_copy(update={"scorer": "feedback"})
    teacher = open_scorer(teacher_cfg, folder / "calls.sqlite")
    principles, _ = guard_principles(cfg)
    labels = teacher_labels(teacher, checks, principles)
    meta = train_classifier(dcfg, checks, labels, [p.id for p in principles], folder, teacher.id,
                            cfg.max_context_chars, cfg.threads)
    ag = meta["agreement_with_teacher"]
    return (f"classifier in {folder}: {len(meta['heads'])} heads, {meta['checks']} checks from {len(prompts)} TRAIN "
            f"prompts (answers by {answerer_spec}), teacher {teacher.id}\n"
            f"  loss {meta['train']['first_loss']:.4f} → {meta['train']['last_loss']:.4f} in "
            f"{meta['train']['seconds']}s; held-back agreement with the teacher: {json.dumps(ag)}\n"
            f"use it with `scorer: classifier` and `classifier: {folder}`")
