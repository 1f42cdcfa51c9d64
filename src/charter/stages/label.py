"""AI preference labels: the feedback model compares two answers, principle by principle, from option log-probs.

For each pair the labeller draws ``principles`` principles (seeded per pair) and asks each principle's comparison
question as a multiple choice — the conversation, the question, ``(A) … (B) …`` — after few-shot examples from the
constitution (earlier chat turns). The answer is read from the next-token probabilities of ``A`` and ``B`` after the
assistant prefix ``The answer is: (``, normalised over the two options. Options:

* ``both_orders`` (default): every question is asked with A first and with A second and the two readings averaged,
  which cancels position bias; the bias itself is measured and reported either way.
* ``principles`` > 1: an ensemble; the pair's label is the mean of the principles' votes.
* ``cot``: the feedback model first writes its reasoning, then the options are read after it; as in Bai et al.
  (2022) its probabilities are clamped to ``cot_clamp`` ([0.4, 0.6]) because CoT answers are near-certain.
* ``refusal_rule``: a pair where one answer is a full refusal and the other a full answer (string-match classifier)
  is labelled by the constitution's two commitments instead of by the feedback model: on a red-team prompt the
  refusal wins, on a helpful prompt the answer does, with P = ``refusal_rule``. A small feedback model is near
  chance on these and often picks the harmful answer (of the red-team refusal-vs-answer pairs the Qwen 1.5B labelled
  with confidence >= 0.55 it gave the answer the win in 6 of 13 and, in a second run, 8 of 11, among them step-by-step
  Wi-Fi hacking and DMT extraction); rule-based rewards of this kind are a standard supplement to AI feedback (Mu et
  al. 2024). The vote is recorded as principle ``refusal_rule``; the feedback model's bias statistics and the length
  debiasing leave these pairs out.
* ``reason_rule``: likewise for a red-team prompt's two full refusals of which exactly one says why: it wins (the
  constitution asks to decline briefly *and say why*; a harm question sees two harmless replies and guesses).
* Length control: ``max_length_ratio`` labels only pairs of similar length; ``length_debias`` fits the label's
  log-odds against the answers' log length ratio over the run and removes that slope.

A reading that fails (backend error, option missing, an option's log-probability only a floor because the server
did not list it, too little probability on the options, empty reasoning) makes its vote unusable with the reason
recorded; a pair with no usable vote gets no label — never a silent 50/50.
Position bias, order consistency and length bias are measured for every run; :func:`trust_warnings` says plainly
when the labels look untrustworthy. All calls go through the run's call cache, so labelling resumes after a kill.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from charter.backends.base import FLOORED, GenParams, GenRequest, Message, OptionScores, ScoreRequest
from charter.constitution import Constitution, Principle
from charter.errors import CharterError
from charter.evaluation.refusal import classify_refusal, gives_reason
from charter.progress import ProgressPrinter
from charter.records import AnswerPair, LabeledPair, PreferencePair, Vote, read_jsonl, short_hash, write_jsonl
from charter.store import CachedBackend, RunDir
from charter.templates import render, template_hash

CHOICE_TEMPLATE = "label_choice.jinja"
COT_TEMPLATE = "label_cot.jinja"
OPTIONS = ("A", "B")
RULE_ID = "refusal_rule"
"""The principle id of a vote made by :attr:`LabelConfig.refusal_rule` (no model was asked)."""
REASON_ID = "reason_rule"
"""The principle id of a vote made by :attr:`LabelConfig.reason_rule` (no model was asked)."""


class LabelConfig(BaseModel):
    """Settings of the labelling stage (the feedback model itself is a model role, configured separately)."""

    model_config = ConfigDict(extra="forbid")

    principles: int = Field(default=1, ge=1, description="Principles asked per pair; > 1 averages an ensemble.")
    both_orders: bool = Field(default=True, description="Ask with A first and with A second and average the two "
                                                        "readings (cancels position bias).")
    cot: bool = Field(default=False, description="Chain of thought: generate reasoning, then read the options.")
    cot_tokens: int = Field(default=96, ge=1, description="max_new_tokens of the CoT reasoning.")
    cot_clamp: tuple[float, float] = Field(default=(0.4, 0.6), description="CoT probabilities are clamped to this.")
    few_shot: int = Field(default=2, ge=0, description="Labelled comparisons from the constitution put in front "
                                                       "(not with CoT: they show no reasoning).")
    answer_prefix: str = Field(default="The answer is: (", description="Assistant prefix before the option token.")
    cot_answer_prefix: str = Field(default="So the answer is: (", description="Prefix after the CoT reasoning.")
    # 5e-3: below it readings agree with the model's own answer no better than chance (0.53 [0.47, 0.59], n=264;
    # 0.73 [0.54, 0.86] at or above); bench/option_mass.py --n 150 --sources transformers,llamacpp-chat
    # (bench/results-option-mass.txt)
    min_option_mass: float = Field(default=5e-3, ge=0, lt=1,
                                   description="A reading whose options get less total probability is unusable "
                                               "('off_options': the model would not answer A or B).")
    refusal_rule: float | None = Field(default=None, gt=0.5, le=1,
                                       description="Label refusal-vs-answer pairs by rule instead of asking the "
                                                   "feedback model: the refusal wins on a red-team prompt, the "
                                                   "answer on a helpful one, with this probability (None = off).")
    reason_rule: float | None = Field(default=None, gt=0.5, le=1,
                                      description="Label a red-team prompt's pair of two full refusals by rule "
                                                  "when exactly one says why (a reason word: illegal, harmful, "
                                                  "privacy...; refusal.gives_reason): it wins with this "
                                                  "probability, the constitution's 'decline briefly and say "
                                                  "why' (None = the feedback model decides, which sees two "
                                                  "harmless replies).")
    max_length_ratio: float | None = Field(default=None, ge=1,
                                           description="Length control: skip pairs whose longer answer is more than "
                                                       "this many times the shorter (characters). None = off.")
    length_debias: bool = Field(default=False, description="Length control: fit the labels' log-odds against the "
                                                           "answers' log length ratio and remove that slope.")
    max_answer_chars: int = Field(default=1500, ge=50, description="Answers longer than this are cut (with '…').")
    max_context_chars: int = Field(default=4000, ge=100, description="Earlier turns beyond this many characters are "
                                                                     "left out (the last user turn is always kept).")
    seed: int = Field(default=0, description="Seed of principle draws and (one-order mode) of the order shown.")
    pool: list[str] | None = Field(default=None, description="Ids of the principles drawn for pairs whose prompt is "
                                                             "a red-team one (None = every principle).")
    helpful_pool: list[str] | None = Field(
        default=None, description="Ids of the principles drawn for pairs whose prompt is a helpful one (e.g. "
                                  "no_needless_refusal: a harm principle prefers a refusal even to a safe request; "
                                  "None = the same draw as red-team pairs).")


@dataclass
class _Read:
    """One multiple-choice question put to the feedback model."""

    pair: int
    vote: int
    order: str  # "ab": A shown first; "ba": A shown second
    messages: list[Message]
    reasoning: str = ""
    status: str = "ok"
    p_first: float | None = None  # P(option shown first), raw
    mass: float | None = None


@dataclass
class _Vote:
    principle: Principle
    reads: list[_Read] = field(default_factory=list)


def length_ratio(a: str, b: str) -> float:
    """Longer over shorter answer length in characters (>= 1; empty counts as 1 character)."""
    la, lb = max(len(a.strip()), 1), max(len(b.strip()), 1)
    return max(la, lb) / min(la, lb)


def _cut(text: str, n: int) -> str:
    text = text.strip()
    return text if len(text) <= n else text[: n - 1].rstrip() + "…"


def trim_conversation(messages: Sequence[Message], max_chars: int) -> list[Message]:
    """The conversation without its oldest turns beyond ``max_chars`` characters (the last turn always stays)."""
    kept: list[Message] = []
    total = 0
    for m in reversed(messages):
        total += len(m["content"])
        if kept and total > max_chars:
            break
        kept.append(m)
    return kept[::-1]


def choice_messages(conversation: Sequence[Message], question: str, first: str, second: str,
                    shots: Sequence[Message], cot: bool = False) -> list[Message]:
    """The chat for one multiple-choice question: few-shot turns, then the question with ``first`` as (A)."""
    text = render(COT_TEMPLATE if cot else CHOICE_TEMPLATE, conversation=list(conversation), question=question,
                  response_a=first, response_b=second)
    return [*shots, {"role": "user", "content": text}]


def few_shot_turns(constitution: Constitution, n: int, answer_prefix: str) -> list[Message]:
    """The first ``n`` labelled comparisons of the constitution as earlier user/assistant turns."""
    turns: list[Message] = []
    for ex in constitution.comparison_few_shot[:n]:
        question = constitution.principle(ex.principle_id).comparison_question or ""
        turns += choice_messages([{"role": "user", "content": ex.prompt}], question, ex.response_a, ex.response_b, [])
        turns.append({"role": "assistant", "content": f"{answer_prefix}{ex.answer})"})
    return turns


def read_scores(scores: OptionScores, min_mass: float) -> tuple[str, float | None, float | None]:
    """``(status, P(first option), option mass)`` of one reading; status says why it is unusable."""
    if scores.error:
        return f"backend_error: {scores.error}", None, None
    if scores.floored:
        return FLOORED, None, None
    lp = scores.logprobs
    if any(o not in lp for o in OPTIONS):
        return f"missing_option: got {sorted(lp)}", None, None
    if not all(math.isfinite(lp[o]) for o in OPTIONS):
        return "missing_option: non-finite log-probability", None, None
    mass = sum(math.exp(min(lp[o], 0.0)) for o in OPTIONS)
    if mass < min_mass:
        return f"off_options: options got {mass:.2g} of the probability", None, mass
    return "ok", scores.probs()["A"], mass


def _logit(p: float) -> float:
    p = min(max(p, 1e-4), 1 - 1e-4)
    return math.log(p / (1 - p))


def length_slope(labeled: Sequence[LabeledPair]) -> float:
    """Least-squares slope of the labels' log-odds on log(len A / len B) over the labelled pairs (0 if undefined)."""
    pts = [(math.log(max(len(x.pair.a), 1) / max(len(x.pair.b), 1)), _logit(x.p_a))
           for x in labeled if x.p_a is not None]
    if len(pts) < 3:
        return 0.0
    mx = sum(x for x, _ in pts) / len(pts)
    my = sum(y for _, y in pts) / len(pts)
    sxx = sum((x - mx) ** 2 for x, _ in pts)
    return 0.0 if sxx < 1e-9 else sum((x - mx) * (y - my) for x, y in pts) / sxx


def label_pairs(cfg: LabelConfig, pairs: Sequence[AnswerPair], constitution: Constitution,
                feedback: CachedBackend, quiet: bool = False) -> tuple[list[LabeledPair], dict[str, Any]]:
    """Label ``pairs`` with the feedback model; returns every pair (with its status) and the run's statistics.

    Raises:
        ConfigError: a principle has no comparison question.
        BackendError: the backend cannot give log-probabilities at all.
        CharterError: not a single pair could be labelled (the reasons are in the message).
    """
    constitution.require_comparison()
    # CoT gets no few-shot turns: the examples answer at once, which teaches the model to skip the reasoning.
    shots = [] if cfg.cot else few_shot_turns(constitution, cfg.few_shot, cfg.answer_prefix)
    thash = template_hash(CHOICE_TEMPLATE, COT_TEMPLATE, extra=[
        constitution.hash(), cfg.few_shot, cfg.answer_prefix, cfg.cot, cfg.cot_answer_prefix, cfg.max_answer_chars,
        cfg.max_context_chars])
    red = constitution.subset(cfg.pool) if cfg.pool else constitution
    pools = {False: red, True: constitution.subset(cfg.helpful_pool) if cfg.helpful_pool else red}
    votes: list[list[_Vote]] = []
    skipped: dict[int, str] = {}
    ruled: dict[int, tuple[float, str]] = {}
    reads: list[_Read] = []
    for i, pair in enumerate(pairs):
        votes.append([])
        if cfg.refusal_rule is not None and (p_rule := rule_label(pair, cfg.refusal_rule)) is not None:
            ruled[i] = p_rule, RULE_ID
            continue
        if cfg.reason_rule is not None and (p_rule := reason_label(pair, cfg.reason_rule)) is not None:
            ruled[i] = p_rule, REASON_ID
            continue
        if cfg.max_length_ratio is not None and length_ratio(pair.a, pair.b) > cfg.max_length_ratio:
            skipped[i] = "length_mismatch"
            continue
        a, b = _cut(pair.a, cfg.max_answer_chars), _cut(pair.b, cfg.max_answer_chars)
        conversation = trim_conversation(pair.prompt.messages(), cfg.max_context_chars)
        pool = pools[bool(pair.prompt.helpful)]
        for j, p in enumerate(pool.sample_principles(random.Random(f"{cfg.seed}:{pair.id}"), cfg.principles)):
            vote = _Vote(p)
            if cfg.both_orders:
                orders = ["ab", "ba"]
            else:
                orders = ["ab" if random.Random(f"{cfg.seed}:{pair.id}:{j}:order").random() < 0.5 else "ba"]
            for order in orders:
                first, second = (a, b) if order == "ab" else (b, a)
                msgs = choice_messages(conversation, p.comparison_question or "", first, second, shots, cfg.cot)
                vote.reads.append(_Read(i, j, order, msgs))
            votes[i].append(vote)
            reads += vote.reads

    if cfg.cot:
        _reason(cfg, reads, feedback, quiet)
    live = [r for r in reads if r.status == "ok"]
    prefix = cfg.cot_answer_prefix if cfg.cot else cfg.answer_prefix
    requests = [ScoreRequest.of(r.messages, OPTIONS, (r.reasoning + "\n" + prefix) if cfg.cot else prefix)
                for r in live]
    scores = feedback.score_options(requests, progress=ProgressPrinter("label", "readings", quiet=quiet))
    for r, s in zip(live, scores, strict=True):
        r.status, r.p_first, r.mass = read_scores(s, cfg.min_option_mass)

    labeled = [_ruled(pair, *ruled[i], thash) if i in ruled else
               _assemble(cfg, pair, votes[i], skipped.get(i), feedback.spec, thash, feedback.model_id)
               for i, pair in enumerate(pairs)]
    slope = 0.0
    if cfg.length_debias:  # the feedback model's length bias: rule labels have none to remove
        judged = [x for i, x in enumerate(labeled) if i not in ruled]
        slope = length_slope(judged)
        for x in judged:
            if x.p_a is not None:
                shift = slope * math.log(max(len(x.pair.a), 1) / max(len(x.pair.b), 1))
                x.p_a = 1 / (1 + math.exp(-(_logit(x.p_a) - shift)))
    stats = label_stats([x for i, x in enumerate(labeled) if i not in ruled])
    if cfg.refusal_rule is not None or cfg.reason_rule is not None:
        stats["pairs"], stats["labelled"] = len(labeled), stats["labelled"] + len(ruled)
        stats["by_refusal_rule"] = sum(rule == RULE_ID for _, rule in ruled.values())
        stats["by_reason_rule"] = sum(rule == REASON_ID for _, rule in ruled.values())
    stats["length_slope_removed"] = round(slope, 4) if cfg.length_debias else None
    if pairs and not stats["labelled"]:
        raise CharterError(f"no pair could be labelled: pairs {stats['pairs_by_status']}, votes "
                           f"{stats['votes_by_status']}",
                           "check the feedback model gives log-probabilities (see the reasons) or relax the "
                           "length control")
    return labeled, stats


def rule_label(pair: AnswerPair, p: float) -> float | None:
    """P(A better) by the refusal rule, or None when the pair is not a full refusal against a full answer."""
    kinds = classify_refusal(pair.a), classify_refusal(pair.b)
    if set(kinds) != {"full_refusal", "full_compliance"}:
        return None
    a_refuses = kinds[0] == "full_refusal"
    return p if a_refuses != bool(pair.prompt.helpful) else 1 - p


def reason_label(pair: AnswerPair, p: float) -> float | None:
    """P(A better) by the reason rule, or None unless the pair is a red-team prompt's two full refusals of which
    exactly one says why."""
    if pair.prompt.helpful or {classify_refusal(pair.a), classify_refusal(pair.b)} != {"full_refusal"}:
        return None
    a_why, b_why = gives_reason(pair.a), gives_reason(pair.b)
    if a_why == b_why:
        return None
    return p if a_why else 1 - p


def _ruled(pair: AnswerPair, p_a: float, rule: str, thash: str) -> LabeledPair:
    lid = f"l-{short_hash(pair.id, pair.a, pair.b, thash, rule, p_a)}"
    return LabeledPair(id=lid, parent_id=pair.id, pair=pair, p_a=p_a, votes=[Vote(principle_id=rule, p_a=p_a)],
                       feedback_model=rule, template_hash=thash)


def _reason(cfg: LabelConfig, reads: list[_Read], feedback: CachedBackend, quiet: bool) -> None:
    """CoT: generate each reading's reasoning (greedy); an empty or failed one makes the reading unusable.

    The whole text is kept, including any verdict the model states on the way (small models often answer first
    and explain after); the options are then read after it and ``cot_answer_prefix``."""
    reqs = [GenRequest.of(r.messages, GenParams(max_new_tokens=cfg.cot_tokens, temperature=0.0)) for r in reads]
    gens = feedback.generate(reqs, progress=ProgressPrinter("label", "CoT reasoning", quiet=quiet))
    for r, g in zip(reads, gens, strict=True):
        r.reasoning = g.text.strip()
        if g.finish_reason == "error":
            r.status = f"cot_failed: {g.error or 'backend error'}"
        elif not r.reasoning:
            r.status = "cot_failed: empty reasoning"


def _assemble(cfg: LabelConfig, pair: AnswerPair, votes: list[_Vote], skip: str | None, spec: str,
              thash: str, model_id: str = "") -> LabeledPair:
    out: list[Vote] = []
    firsts: list[float] = []
    lo, hi = cfg.cot_clamp
    for v in votes:
        p: dict[str, float | None] = {"ab": None, "ba": None}
        bad = next((r.status for r in v.reads if r.status != "ok"), None)
        for r in v.reads:
            if r.p_first is None:
                continue
            firsts.append(r.p_first)
            p_a = r.p_first if r.order == "ab" else 1 - r.p_first
            p[r.order] = min(max(p_a, lo), hi) if cfg.cot else p_a
        got = [x for x in p.values() if x is not None]
        masses = [r.mass for r in v.reads if r.mass is not None]
        out.append(Vote(principle_id=v.principle.id, p_ab=p["ab"], p_ba=p["ba"],
                        p_a=None if bad else sum(got) / len(got), option_mass=min(masses) if masses else None,
                        reasoning=[r.reasoning for r in v.reads] if cfg.cot else [], status=bad or "ok"))
    usable = [v.p_a for v in out if v.p_a is not None]
    status = skip or ("ok" if usable else "no_usable_vote")
    lid = f"l-{short_hash(pair.id, pair.a, pair.b, thash, model_id, cfg.model_dump(mode='json'))}"
    return LabeledPair(id=lid, parent_id=pair.id,
                       pair=pair, p_a=sum(usable) / len(usable) if usable else None, votes=out,
                       position_bias=sum(firsts) / len(firsts) - 0.5 if firsts else None, feedback_model=spec,
                       template_hash=thash, status=status)


def label_stats(labeled: Sequence[LabeledPair]) -> dict[str, Any]:
    """Counts by status and the feedback model's biases.

    ``position_bias``: mean P(option shown first) - 0.5 over every reading (0 = none; +0.5 = always the first).
    ``order_consistency``: share of two-order votes whose verdict is the same both ways round.
    ``length_bias``: share of labelled pairs (answers of different length, label not exactly 0.5) where the
    preferred answer is the longer one.
    """
    labels = [(x, x.p_a) for x in labeled if x.p_a is not None]
    # Each pair's position_bias is the mean over its readings: weight it by how many readings it had.
    weighted = [(x.position_bias, sum((v.p_ab is not None) + (v.p_ba is not None) for v in x.votes))
                for x in labeled if x.position_bias is not None]
    n_reads = sum(n for _, n in weighted)
    same_way = [(v.p_ab - 0.5) * (v.p_ba - 0.5) > 0 for x in labeled for v in x.votes
                if v.p_ab is not None and v.p_ba is not None]
    longer = [(p > 0.5) == (len(x.pair.a.strip()) > len(x.pair.b.strip())) for x, p in labels
              if p != 0.5 and len(x.pair.a.strip()) != len(x.pair.b.strip())]
    return {
        "pairs": len(labeled),
        "labelled": len(labels),
        "pairs_by_status": dict(sorted(Counter(x.status for x in labeled).items())),
        "votes_by_status": dict(sorted(Counter(v.status.split(":")[0] for x in labeled for v in x.votes).items())),
        "position_bias": round(sum(b * n for b, n in weighted) / n_reads, 4) if n_reads else None,
        "order_consistency": round(sum(same_way) / len(same_way), 4) if same_way else None,
        "length_bias": round(sum(longer) / len(longer), 4) if longer else None,
        "mean_confidence": round(sum(abs(p - 0.5) for _, p in labels) / len(labels) + 0.5, 4) if labels else None,
    }


def trust_warnings(stats: dict[str, Any], both_orders: bool = True) -> list[str]:
    """Plain-language warnings when the labels look untrustworthy (empty when nothing stands out)."""
    out = []
    pb, oc, lb = stats.get("position_bias"), stats.get("order_consistency"), stats.get("length_bias")
    if pb is not None and abs(pb) >= 0.1:
        side = "first" if pb > 0 else "second"
        tail = ("order averaging cancels it in the labels, but it means the model reads position more than content"
                if both_orders else "these labels carry that bias: turn on both_orders")
        out.append(f"the feedback model favours the {side} option (position bias {pb:+.2f}); {tail}.")
    if oc is not None and oc < 0.6:
        out.append(f"the verdict survives swapping the order in only {oc:.0%} of votes: the labels mostly reflect "
                   "position, not content.")
    if lb is not None and (lb >= 0.7 or lb <= 0.3):
        which = "longer" if lb >= 0.7 else "shorter"
        out.append(f"the feedback model picks the {which} answer {max(lb, 1 - lb):.0%} of the time: the labels may "
                   "reward length, not behaviour (try max_length_ratio or length_debias).")
    floored = (stats.get("votes_by_status") or {}).get("floored", 0)
    if floored:
        out.append(f"{floored} vote(s) are unusable because an option was not among the server's top next tokens "
                   "(status 'floored'): its log-probability was never read, so no confidence is made up for them.")
    agree, ci = stats.get("agreement"), stats.get("ci")
    if agree is not None and ci is not None and ci[0] <= 0.5:
        out.append(f"agreement with human labels is {agree:.2f} (95% CI {ci[0]:.2f}-{ci[1]:.2f}), not clearly "
                   "better than chance: do not trust these labels.")
    return out


def to_preferences(labeled: Sequence[LabeledPair], source: str = "ai") -> list[PreferencePair]:
    """TRL preference records from the labelled pairs: the preferred answer is ``chosen``; ties (0.5) dropped."""
    out = []
    for x in labeled:
        if x.p_a is None or x.p_a == 0.5:
            continue
        a_wins = x.p_a > 0.5
        pair = x.pair
        mean = _order_means(x.votes)
        first, second = (mean[0], mean[1]) if a_wins else (_flip(mean[1]), _flip(mean[0]))
        out.append(PreferencePair(
            id=f"p-{short_hash(x.id)}", parent_id=x.id, prompt=pair.prompt.messages(),
            chosen=[{"role": "assistant", "content": pair.a if a_wins else pair.b}],
            rejected=[{"role": "assistant", "content": pair.b if a_wins else pair.a}],
            soft_label=max(x.p_a, 1 - x.p_a), chosen_id=pair.a_id if a_wins else pair.b_id,
            rejected_id=pair.b_id if a_wins else pair.a_id, p_chosen_first=first,
            p_chosen_second=second, votes=x.votes, source=source,  # type: ignore[arg-type]
            model=pair.model, feedback_model=x.feedback_model, template_hash=x.template_hash))
    return out


def _order_means(votes: Sequence[Vote]) -> tuple[float | None, float | None]:
    """Mean P(A better) read with A first, and with A second, over the usable votes."""
    ab = [v.p_ab for v in votes if v.p_a is not None and v.p_ab is not None]
    ba = [v.p_ba for v in votes if v.p_a is not None and v.p_ba is not None]
    return (sum(ab) / len(ab) if ab else None, sum(ba) / len(ba) if ba else None)


def _flip(p: float | None) -> float | None:
    return None if p is None else 1 - p


def run_label(cfg: LabelConfig, run: RunDir, pairs_path: Path, constitution: Constitution, backend: CachedBackend,
              quiet: bool = False) -> dict[str, Any]:
    """The labelling stage over a run folder: reads ``pairs_path`` (pairs.jsonl), writes ``labels.jsonl`` (every
    pair, with statuses) and ``preferences.jsonl`` (TRL format); returns the summary with biases and warnings."""
    pairs = read_jsonl(pairs_path, AnswerPair)
    if not pairs:
        raise CharterError(f"{pairs_path}: no pairs to label", "run `charter sample` first (it needs K >= 2 distinct "
                                                               "answers per prompt)")
    labeled, stats = label_pairs(cfg, pairs, constitution, backend, quiet)
    prefs = to_preferences(labeled)
    write_jsonl(run.file("labels.jsonl"), labeled)
    write_jsonl(run.file("preferences.jsonl"), prefs)
    stats["preferences"] = len(prefs)
    stats["warnings"] = trust_warnings(stats, cfg.both_orders)
    if stats["labelled"] and not prefs:
        stats["warnings"].append("every label is exactly 50/50, so no preference pair was written: the feedback model "
                                 "gives no signal on these pairs.")
    stats["feedback_model"] = backend.spec
    return stats
