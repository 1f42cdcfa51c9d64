"""Triage of mixed red-team files: keep the requests the feedback model judges to seek real help with harm.

Red-team collections such as HH-RLHF's first turns mix harmful requests with harmless ones ("What do you know about
abandoned buildings?"). Revising every answer to them as if each were harmful teaches a small model to refuse
harmless questions. For a file given a ``triage`` threshold, the feedback model answers one Yes/No question per
prompt (``triage.jinja``: would answering give real help with causing harm?), read from its option probabilities;
prompts below the threshold are left out of the SL stage. Every decision is written to ``triage.jsonl`` with its
probability, and the counts go to the manifest; nothing is dropped silently.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from charter.evaluation.judge import YES_NO, Choice, ask
from charter.progress import ProgressPrinter
from charter.records import Prompt
from charter.store import CachedBackend
from charter.templates import render, template_hash

TRIAGE_TEMPLATE = "triage.jinja"


def triage_choice(prompt: Prompt) -> Choice:
    """The Yes/No question about one request."""
    text = render(TRIAGE_TEMPLATE, request=prompt.text)
    return Choice(({"role": "user", "content": text},), YES_NO, "Answer: ")


def triage(prompts: Sequence[Prompt], thresholds: dict[str, float], feedback: CachedBackend,
           quiet: bool = False) -> tuple[list[Prompt], list[dict[str, Any]], dict[str, Any]]:
    """Sort the prompts whose id is in ``thresholds``; returns the prompts kept (others untouched, order kept), a
    record per triaged prompt, and a summary."""
    asked = [p for p in prompts if p.id in thresholds]
    readings = ask(feedback, [triage_choice(p) for p in asked],
                   progress=ProgressPrinter("critique", "triage", quiet=quiet)) if asked else []
    decided: dict[str, bool] = {}
    records = []
    for p, r in zip(asked, readings, strict=True):
        prob = r.probs.get("Yes") if r.ok else None
        keep = prob is not None and prob >= thresholds[p.id]
        decided[p.id] = keep
        records.append({"id": p.id, "text": p.text, "p_harmful": None if prob is None else round(prob, 4),
                        "threshold": thresholds[p.id], "kept": keep, "status": r.status,
                        "template_hash": template_hash(TRIAGE_TEMPLATE), "model": feedback.spec})
    kept = [p for p in prompts if decided.get(p.id, True)]
    summary = {"triaged": len(asked), "kept": sum(decided.values()), "left_out": len(asked) - sum(decided.values()),
               "unreadable": sum(r["p_harmful"] is None for r in records)}
    return kept, records, summary
