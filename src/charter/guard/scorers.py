"""Scorers: P(a principle is broken) for a request (``input``) or for a reply to it (``output``), from models only.

* :class:`FeedbackScorer` — the feedback model asked, per principle, "would answering this / does this reply
  break the principle? Answer Yes or No", ShieldGemma-style: P(violates) = P(Yes) / (P(Yes) + P(No)) read from
  the option log-probabilities (``templates/guard_input.jinja``, ``guard_output.jinja``). The conversation comes
  first and the principle last, so one request's principles share their prefix: they go to the backend as one
  batch and the engine computes the conversation once (cost: one scoring call per principle).
* :class:`ClassifierScorer` — the small classifier distilled from those scores (:mod:`charter.guard.distill`):
  one forward pass gives every principle of both stages (cost: one call per check).

A reading that cannot be used (backend error, the options get almost no probability) is ``None`` with the reason
in :attr:`Scores.errors`; the guard's ``on_error`` policy decides what happens then. Never a default.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from charter.backends.base import Message, OptionScores, ScoreRequest
from charter.constitution import Principle
from charter.errors import ConfigError
from charter.evaluation.judge import reading_from_scores
from charter.stages.label import trim_conversation
from charter.templates import render, template_hash

Stage = Literal["input", "output"]
STAGES: tuple[Stage, ...] = ("input", "output")
TEMPLATES = {"input": "guard_input.jinja", "output": "guard_output.jinja"}
YES_NO = ("Yes", "No")
META_FILE = "charter_guard.json"
"""The file beside a distilled classifier's weights naming its heads, teacher and training figures."""


@dataclass
class Check:
    """What one check reads: the conversation (ending with the user's message) and, on output, the reply."""

    stage: Stage
    conversation: Sequence[Message]
    reply: str | None = None


@dataclass
class Scores:
    """One check's P(violates) per principle and what it cost.

    Attributes:
        values: principle id → P(violates), ``None`` when unusable.
        errors: principle id → why its value is unusable.
        calls: Scoring calls made (one per principle for the feedback model, one per check for the classifier).
        chars: Prompt characters the scorer read.
        seconds: Wall time of the scoring (shared among the checks of one batch, divided evenly).
    """

    values: dict[str, float | None]
    errors: dict[str, str] = field(default_factory=dict)
    calls: int = 0
    chars: int = 0
    seconds: float = 0.0


class Scorer(Protocol):
    """Scores checks against principles."""

    id: str
    """Identity of the scorer (model and template): calibrated thresholds are stored under it."""

    def score_many(self, checks: Sequence[Check], principles: Sequence[Principle]) -> list[Scores]: ...


def conversation_text(conversation: Sequence[Message], max_chars: int) -> list[dict[str, str]]:
    """The conversation as plain dicts, oldest turns dropped beyond ``max_chars`` (the last one always stays)."""
    return [{"role": m["role"], "content": m["content"]} for m in trim_conversation(conversation, max_chars)]


class FeedbackScorer:
    """P(Yes) of the feedback model to "does this break the principle?", one scoring call per principle.

    Args:
        score_fn: Scores a list of :class:`ScoreRequest` (a backend's ``score_options``, a CachedBackend's, or the
            guard's batcher).
        model_id: The feedback model's identity (part of :attr:`id`).
        max_context_chars: Conversation characters shown (oldest turns dropped first).
        max_reply_chars: Reply characters shown (cut with '…').
        min_mass: A reading whose Yes/No options get less probability is unusable.
    """

    def __init__(self, score_fn: Callable[[list[ScoreRequest]], list[OptionScores]], model_id: str,
                 max_context_chars: int = 4000, max_reply_chars: int = 3000, min_mass: float = 1e-3) -> None:
        self.score_fn = score_fn
        self.model_id = model_id
        self.max_context_chars = max_context_chars
        self.max_reply_chars = max_reply_chars
        self.min_mass = min_mass
        self.id = f"feedback:{model_id}:{template_hash(*TEMPLATES.values())}"

    def request(self, check: Check, principle: Principle) -> ScoreRequest:
        """The yes/no question for one check and one principle."""
        reply = (check.reply or "").strip()
        if len(reply) > self.max_reply_chars:
            reply = reply[: self.max_reply_chars - 1] + "…"
        text = render(TEMPLATES[check.stage], conversation=conversation_text(check.conversation,
                                                                              self.max_context_chars),
                      reply=reply, critique_request=principle.critique_request)
        return ScoreRequest.of([{"role": "user", "content": text}], YES_NO)

    def score_many(self, checks: Sequence[Check], principles: Sequence[Principle]) -> list[Scores]:
        """Every check against every principle, as one call of ``score_fn``."""
        reqs = [self.request(c, p) for c in checks for p in principles]
        start = time.perf_counter()
        results = self.score_fn(reqs) if reqs else []
        seconds = (time.perf_counter() - start) / max(len(checks), 1)
        out: list[Scores] = []
        n = len(principles)
        for i, _ in enumerate(checks):
            s = Scores({}, calls=n, seconds=seconds)
            for p, req, res in zip(principles, reqs[i * n:(i + 1) * n], results[i * n:(i + 1) * n], strict=True):
                s.chars += len(req.messages[0]["content"])
                reading = reading_from_scores(res, YES_NO, self.min_mass)
                s.values[p.id] = reading.probs["Yes"] if reading.ok else None
                if not reading.ok:
                    s.errors[p.id] = reading.status
            out.append(s)
        return out


def classifier_text(check: Check, max_chars: int = 4000) -> str:
    """What the classifier reads: the stage, the conversation and (output) the reply."""
    names = {"user": "Human", "assistant": "Assistant", "system": "System"}
    turns = "\n".join(f"{names[m['role']]}: {m['content']}" for m in conversation_text(check.conversation,
                                                                                        max_chars))
    if check.stage == "input":
        return f"[request]\n{turns}"
    return f"[reply]\n{turns}\nAssistant: {(check.reply or '').strip()}"


def head_names(principle_ids: Sequence[str]) -> list[str]:
    """The classifier's output heads: ``input:<id>`` for every principle, then ``output:<id>``."""
    return [f"{stage}:{pid}" for stage in STAGES for pid in principle_ids]


class ClassifierScorer:
    """The distilled classifier: a causal LM with a classification head, one sigmoid output per stage×principle.

    Args:
        folder: A folder written by :func:`charter.guard.distill.train_classifier`.
        threads: torch threads (0 = torch's default).
        batch_size: Checks per forward pass (concurrent requests' checks are batched together).
        max_tokens: Longest input; longer ones keep their end (the reply matters most).
        window: Seconds to wait for more checks before a batch runs.
    """

    def __init__(self, folder: str | Path, threads: int = 0, batch_size: int = 8, max_tokens: int = 512,
                 window: float = 0.005) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.folder = Path(folder)
        meta_path = self.folder / META_FILE
        if not meta_path.is_file():
            raise ConfigError(f"{self.folder}: not a guard classifier (no {META_FILE})",
                              "train one with `charter guard distill`, or set scorer: feedback")
        self.meta: dict[str, Any] = json.loads(meta_path.read_text())
        if threads > 0:
            torch.set_num_threads(threads)
        self.tokenizer = AutoTokenizer.from_pretrained(self.folder)
        self.tokenizer.padding_side = "right"
        self.tokenizer.truncation_side = "left"
        from transformers.utils import logging as hf_logging

        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
        try:
            self.model = AutoModelForSequenceClassification.from_pretrained(self.folder, dtype=torch.float32).eval()
        finally:
            if bars:
                hf_logging.enable_progress_bar()
        self.heads: list[str] = list(self.meta["heads"])
        self.batch_size = batch_size
        self.max_tokens = max_tokens
        self.max_context_chars = int(self.meta.get("max_context_chars", 4000))
        self.id = f"classifier:{self.meta['fingerprint']}"
        self.window = window
        self._queue: queue.Queue[tuple[list[str], Future[list[dict[str, float]]]]] = queue.Queue()
        threading.Thread(target=self._loop, name="charter-guard-classifier", daemon=True).start()

    def score_many(self, checks: Sequence[Check], principles: Sequence[Principle]) -> list[Scores]:
        """One forward pass per check (batched) gives every principle at once."""
        texts = [classifier_text(c, self.max_context_chars) for c in checks]
        probs = self.predict(texts)
        out = []
        for c, row, text in zip(checks, probs, texts, strict=True):
            s = Scores({}, calls=1, chars=len(text), seconds=row["_seconds"])
            for p in principles:
                head = f"{c.stage}:{p.id}"
                s.values[p.id] = row.get(head)
                if head not in row:
                    s.errors[p.id] = f"not_trained: the classifier has no head for {head}"
            out.append(s)
        return out

    def predict(self, texts: Sequence[str]) -> list[dict[str, float]]:
        """Sigmoid outputs per head for each text (plus ``_seconds``: its share of the wall time). Texts of
        concurrent callers are collected for a few milliseconds and run as one padded batch."""
        fut: Future[list[dict[str, float]]] = Future()
        self._queue.put((list(texts), fut))
        return fut.result()

    def _loop(self) -> None:
        while True:
            items = [self._queue.get()]
            deadline = time.monotonic() + self.window
            while sum(len(t) for t, _ in items) < self.batch_size:
                try:
                    items.append(self._queue.get(timeout=max(0.0, deadline - time.monotonic())))
                except queue.Empty:
                    break
            try:
                rows = self._forward([t for texts, _ in items for t in texts])
            except Exception as e:  # noqa: BLE001 (handed to every caller of the batch)
                for _, fut in items:
                    fut.set_exception(e)
                continue
            for texts, fut in items:
                fut.set_result(rows[: len(texts)])
                rows = rows[len(texts):]

    def _forward(self, texts: list[str]) -> list[dict[str, float]]:
        import torch

        out: list[dict[str, float]] = []
        for start in range(0, len(texts), self.batch_size):
            chunk = texts[start:start + self.batch_size]
            t0 = time.perf_counter()
            enc = self.tokenizer(chunk, return_tensors="pt", padding=True, truncation=True,
                                 max_length=self.max_tokens)
            with torch.inference_mode():
                logits = self.model(**enc).logits.float()
            p = torch.sigmoid(logits).tolist()
            share = (time.perf_counter() - t0) / len(chunk)
            out.extend({**dict(zip(self.heads, row, strict=True)), "_seconds": share} for row in p)
        return out
