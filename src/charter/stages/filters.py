"""Filters on SL-CAI revisions: why a revision is unusable for training, and the checks that keep the SFT targets
harmless without being evasive or canned.

* :func:`revision_failure` — string checks: empty, cut off, echoing the instruction, the critique or a few-shot
  example, looping, unchanged.
* :func:`is_evasive` — a refusal (string match) that gives no reason and no safer alternative.
* the feedback model's harm check (in :mod:`charter.stages.critique`): a revision it still rates harmful is
  ``still_harmful``.
* :func:`cap_canned` — no sentence may appear in more than a given share of the SFT targets; the examples over the
  cap are dropped (``canned``), so a model cannot learn one stock refusal for everything.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from difflib import SequenceMatcher

FAILURE_REASONS = ("error", "empty", "over_length", "echo_instruction", "echo_critique", "echo_example", "repetitive",
                   "unchanged", "no_critique", "evasive", "not_refusal", "still_harmful", "canned")
"""Every status a revision can have besides 'ok' (``canned`` is given to whole SFT examples dropped by the cap)."""

_LEAD_IN = re.compile(r"^\s*(revised response|revision|rewritten response|revised answer)\s*:\s*", re.I)


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def _similar(a: str, b: str) -> float:
    a, b = _norm(a), _norm(b)
    if not a or not b:
        return 0.0
    return SequenceMatcher(None, a, b, autojunk=False).ratio()


def clean_revision(text: str) -> str:
    """Strip a leading label such as ``Revision:`` that small models add."""
    return _LEAD_IN.sub("", text.strip()).strip()


def repetitiveness(text: str) -> float:
    """Share of word trigrams that repeat an earlier one (0 = none; small models loop into 0.5 and more)."""
    words = _norm(text).split()
    grams = [tuple(words[i : i + 3]) for i in range(len(words) - 2)]
    return 1 - len(set(grams)) / len(grams) if len(grams) >= 6 else 0.0


def revision_failure(revision: str, finish_reason: str, previous: str, critique: str, instruction: str,
                     threshold: float = 0.8, examples: Sequence[str] = ()) -> str | None:
    """Why a revision is unusable for training, or None when it is fine.

    Reasons: ``error`` (the backend failed), ``empty``, ``over_length`` (cut off at max_new_tokens),
    ``echo_instruction`` (repeats the revision request), ``echo_critique`` (repeats the critique),
    ``echo_example`` (copies a few-shot example's revision), ``repetitive`` (loops over the same phrases),
    ``unchanged`` (the same as the answer it revises).
    """
    if finish_reason == "error":
        return "error"
    if len(_norm(revision)) < 2:
        return "empty"
    if finish_reason == "length":
        return "over_length"
    if _norm(instruction) in _norm(revision) or _similar(revision, instruction) >= threshold:
        return "echo_instruction"
    if _similar(revision, critique) >= threshold:
        return "echo_critique"
    if any(_similar(revision, ex) >= threshold for ex in examples):
        return "echo_example"
    if repetitiveness(revision) >= 0.3:
        return "repetitive"
    if _norm(revision) == _norm(previous) or _similar(revision, previous) >= max(threshold, 0.95):
        return "unchanged"
    return None




def is_evasive(text: str) -> bool:
    """A refusal (string match, full or partial) that says neither why nor what to do instead."""
    from charter.evaluation.refusal import explains_refusal, refuses

    return refuses(text) and not explains_refusal(text)


_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")


def sentences(text: str) -> list[str]:
    """The normalised sentences of a text (lower case, single spaces), each counted once."""
    return sorted({_norm(s) for s in _SENTENCE.split(text) if len(_norm(s).split()) >= 3})


def sentence_shares(texts: Sequence[str]) -> list[tuple[str, float]]:
    """Each sentence with the share of ``texts`` that contain it, most common first."""
    counts = Counter(s for t in texts for s in sentences(t))
    n = max(len(texts), 1)
    return [(s, c / n) for s, c in counts.most_common()]


def cap_canned(texts: Sequence[str], max_share: float) -> list[bool]:
    """Which texts to keep so that no sentence is in more than ``max_share`` of the kept ones: texts holding an
    over-represented sentence are dropped from the end until every share is under the cap (a sentence in a single
    text is never over it). Returns a keep flag per text (order preserved; deterministic)."""
    keep = [True] * len(texts)
    sents = [sentences(t) for t in texts]
    while True:
        kept = [i for i, k in enumerate(keep) if k]
        counts = Counter(s for i in kept for s in sents[i])
        over = [s for s, c in counts.items() if c >= 2 and c > max_share * len(kept)]
        if not over or not kept:
            return keep
        worst = max(over, key=lambda s: (counts[s], s))
        drop = next(i for i in reversed(kept) if worst in sents[i])
        keep[drop] = False


_END = re.compile(r"(?<![\s(]\d)(?<![\s(]\d\d)(?<!^\d)[.!?](?=\s|$)")
"""A sentence end: . ! or ? before a space or the end, but not a list number's dot ("2.")."""


def trim_to_sentence(text: str, min_words: int = 20) -> str | None:
    """``text`` cut back to its last complete sentence (ending in . ! or ?), or None when less than ``min_words``
    words would remain (or no sentence ends)."""
    ends = [m.end() for m in _END.finditer(text)]
    if not ends:
        return None
    cut = text[: ends[-1]].strip()
    return cut if len(cut.split()) >= min_words else None
