"""Head-to-head comparisons: a judge picks the less harmful / more helpful of two answers, in both orders.

The question is framed exactly like the RL stage's preference labels (``label_choice.jinja`` via
:func:`charter.stages.label.choice_messages`, read after ``The answer is: (``), with the two axes' questions
from ``eval_questions.yaml``. Every pair is asked with each answer shown first once; the two readings are
averaged into P(first model better), which cancels position bias, and the bias, order consistency and length
preference are measured with the RL stage's own definitions (:func:`charter.stages.label.label_stats`). Two
identical answers are a tie without asking. The same machinery checks the judge against human labels on
HH-RLHF ``chosen``/``rejected`` pairs (:func:`human_pairs`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from charter.evaluation.elo import Outcome
from charter.evaluation.judge import AnyBackend, Choice, JudgeMode, ask
from charter.records import AnswerPair, EvalAnswer, LabeledPair, Prompt, Vote, short_hash
from charter.stages.label import CHOICE_TEMPLATE, LabelConfig, choice_messages, label_stats
from charter.store import Progress
from charter.templates import template_hash

QUESTIONS_FILE = "eval_questions.yaml"
AXES = ("harmless", "helpful")
OPTIONS = ("A", "B")


def questions() -> dict[str, str]:
    """The comparison question of each axis (``harmless``, ``helpful``) from the bundled YAML."""
    text = resources.files("charter").joinpath("data", "templates", QUESTIONS_FILE).read_text("utf-8")
    data = yaml.safe_load(text)
    return {axis: " ".join(str(data[axis]).split()) for axis in AXES}


def compare_hash() -> str:
    """Hash of the comparison template and questions (recorded on every comparison)."""
    return template_hash(CHOICE_TEMPLATE, QUESTIONS_FILE)


def _cut(text: str, n: int) -> str:
    text = text.strip()
    return text if len(text) <= n else text[: n - 1].rstrip() + "…"


def model_pairs(answers: dict[str, dict[str, EvalAnswer]], prompts: Sequence[Prompt],
                models: Sequence[str]) -> list[AnswerPair]:
    """One pair per prompt and per pair of models (in ``models`` order) where both answered."""
    pairs = []
    for p in prompts:
        for x, mi in enumerate(models):
            for mj in models[x + 1:]:
                a, b = answers.get(mi, {}).get(p.id), answers.get(mj, {}).get(p.id)
                if a is None or b is None or a.status != "ok" or b.status != "ok":
                    continue
                pairs.append(AnswerPair(id=f"cmp-{short_hash(a.id, b.id)}", parent_id=p.id, prompt=p,
                                        a=a.text,
                                        b=b.text, a_id=a.id, b_id=b.id, model=f"{mi} vs {mj}"))
    return pairs


def judge_pairs(judge: AnyBackend, pairs: Sequence[AnswerPair], axis: str, mode: JudgeMode = "logprobs",
                min_mass: float = 1e-3, max_chars: int = 1500, progress: Progress | None = None) -> list[LabeledPair]:
    """Ask ``judge`` the ``axis`` question about every pair in both orders; ``p_a`` is P(A better) averaged.

    Pairs whose answers are identical are ties (``p_a`` = 0.5, status ``identical``) and cost no call.
    ``progress(done, total)`` is called as the readings come in (when ``judge`` is a CachedBackend).
    """
    question = questions()[axis]
    prefix = LabelConfig().answer_prefix if mode == "logprobs" else ""
    thash = compare_hash()
    live = [p for p in pairs if p.a.strip() != p.b.strip()]
    choices = []
    for p in live:
        a, b = _cut(p.a, max_chars), _cut(p.b, max_chars)
        for first, second in ((a, b), (b, a)):
            msgs = choice_messages(p.prompt.messages(), question, first, second, [])
            choices.append(Choice(tuple(msgs), OPTIONS, prefix))
    readings = ask(judge, choices, mode, min_mass, progress=progress)
    by_id: dict[str, LabeledPair] = {}
    for k, p in enumerate(live):
        ab, ba = readings[2 * k], readings[2 * k + 1]
        p_ab = ab.probs["A"] if ab.ok else None
        p_ba = 1 - ba.probs["A"] if ba.ok else None
        bad = next((r.status for r in (ab, ba) if not r.ok), None)
        masses = [r.option_mass for r in (ab, ba) if r.option_mass is not None]
        vote = Vote(principle_id=axis, p_ab=p_ab, p_ba=p_ba,
                    p_a=None if bad else (p_ab + p_ba) / 2,  # type: ignore[operator]
                    option_mass=min(masses) if masses else None, status=bad or "ok")
        firsts = [r.probs["A"] for r in (ab, ba) if r.ok]
        by_id[p.id] = LabeledPair(
            id=f"l-{short_hash(p.id, axis, judge.spec, thash, mode)}", parent_id=p.id, pair=p, p_a=vote.p_a,
            votes=[vote], position_bias=sum(firsts) / len(firsts) - 0.5 if firsts else None,
            feedback_model=judge.spec, template_hash=thash,
            status="ok" if vote.p_a is not None else bad or "")
    out = []
    for p in pairs:
        if p.id in by_id:
            out.append(by_id[p.id])
        else:
            out.append(LabeledPair(id=f"l-{short_hash(p.id, axis, judge.spec, thash, mode)}", parent_id=p.id,
                                   pair=p, p_a=0.5, votes=[], feedback_model=judge.spec, template_hash=thash,
                                   status="identical"))
    return out


def pair_stats(labeled: Sequence[LabeledPair]) -> dict[str, Any]:
    """Position bias, order consistency and length preference (the RL stage's definitions) of judged pairs."""
    judged = [x for x in labeled if x.status != "identical"]
    stats = label_stats(judged)
    stats["identical"] = len(labeled) - len(judged)
    return stats


def outcomes(labeled: Sequence[LabeledPair], names: dict[str, tuple[str, str]]) -> list[Outcome]:
    """Elo outcomes from labelled model pairs; ``names`` maps a pair id to its (first, second) model names.

    With several judges, pass the mean of their ``p_a`` per pair (see :func:`mean_over_judges`).
    """
    out = []
    for x in labeled:
        if x.p_a is None:
            continue
        i, j = names[x.pair.id]
        out.append(Outcome(i, j, x.p_a, x.pair.parent_id or x.pair.id))
    return out


def mean_over_judges(per_judge: Sequence[Sequence[LabeledPair]]) -> dict[str, float]:
    """P(A better) per pair id, averaged over the judges that gave a usable reading."""
    acc: dict[str, list[float]] = {}
    for labeled in per_judge:
        for x in labeled:
            if x.p_a is not None:
                acc.setdefault(x.pair.id, []).append(x.p_a)
    return {k: sum(v) / len(v) for k, v in acc.items()}


def human_pairs(path: str | Path, limit: int) -> list[AnswerPair]:
    """Up to ``limit`` human-labelled pairs from an HH-RLHF JSONL file (``chosen``/``rejected`` dialogues), read
    by the RL stage's :func:`charter.prompts.load_hh_pairs` (which side is (A) is a seeded coin).

    Returns an empty list when the file holds no such pairs (e.g. a plain prompt file or a CSV).
    """
    p = Path(path)
    if limit <= 0 or p.suffix.lower() not in (".jsonl", ".json", ".ndjson") or not _has_pairs(p):
        return []
    from charter.prompts import load_hh_pairs

    return load_hh_pairs(p, n=limit)[0]


def _has_pairs(path: Path) -> bool:
    """True when the file's first record has ``chosen`` and ``rejected`` text."""
    try:
        with path.open(encoding="utf-8") as f:
            first = next((line for line in f if line.strip()), "")
        row = json.loads(first) if first else None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(row, dict) and all(isinstance(row.get(k), str) for k in ("chosen", "rejected"))
