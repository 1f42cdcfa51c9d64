"""The SL-CAI stage: answer → N rounds of (critique → revision), a principle drawn per round.

For each red-team prompt the policy answers; then, for each round, the feedback model critiques the current answer
against a principle drawn with a seeded RNG and rewrites it. Few-shot worked examples from the constitution come
first, as earlier chat turns (identical across prompts, so an engine can share their KV cache). Every step is kept
with its principle id; a revision that fails (empty, echoes the instruction or the critique, unchanged, cut off at
the length limit) is kept with the reason and the chain carries on from the last good answer. Helpful prompts are
answered once and join the SFT mix. All model calls go through the run's call cache, so the stage resumes after a
kill and a finished stage re-runs in seconds.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Sequence
from difflib import SequenceMatcher

from pydantic import BaseModel, ConfigDict, Field

from charter.backends.base import GenParams, GenRequest, Message
from charter.constitution import Constitution, Principle
from charter.progress import ProgressPrinter
from charter.records import CritiqueChain, Prompt, SFTExample, Step, StepKind, short_hash
from charter.store import CachedBackend
from charter.templates import render, template_hash

CRITIQUE_TEMPLATE = "critique.jinja"
REVISION_TEMPLATE = "revision.jinja"


class CritiqueConfig(BaseModel):
    """Settings of the critique/revision stage."""

    model_config = ConfigDict(extra="forbid")

    rounds: int = Field(default=2, ge=1, description="Critique → revision rounds per prompt (fresh principle each).")
    few_shot: int = Field(default=2, ge=0, description="Worked examples from the constitution put in front.")
    seed: int = Field(default=0, description="Seed of principle sampling and of sampled generations.")
    temperature: float = Field(default=0.7, ge=0, description="Sampling temperature of every generation (0 = greedy).")
    top_p: float = Field(default=0.9, gt=0, le=1, description="Nucleus sampling mass.")
    answer_tokens: int = Field(default=192, ge=1, description="max_new_tokens of the initial answer.")
    critique_tokens: int = Field(default=128, ge=1, description="max_new_tokens of a critique.")
    revision_tokens: int = Field(default=192, ge=1, description="max_new_tokens of a revision.")
    use_system_prompt: bool = Field(default=True, description="Put the constitution's system prompt first.")
    echo_threshold: float = Field(default=0.8, gt=0, le=1,
                                  description="Similarity above which a revision counts as echoing its input.")
    helpful_mix: bool = Field(default=True, description="Add the policy's answers to helpful prompts to sft.jsonl.")


FAILURE_REASONS = ("error", "empty", "over_length", "echo_instruction", "echo_critique", "echo_example", "repetitive",
                   "unchanged")

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


def _chat(system: str | None, turns: Sequence[Message]) -> list[Message]:
    return ([{"role": "system", "content": system}] if system else []) + list(turns)


def critique_turn(context: Sequence[Message], prompt: str, answer: str, principle: Principle) -> Message:
    """The user turn asking for a critique of ``answer`` against ``principle``."""
    text = render(CRITIQUE_TEMPLATE, context=list(context), prompt=prompt, answer=answer,
                  critique_request=principle.critique_request)
    return {"role": "user", "content": text}


def revision_turn(principle: Principle) -> Message:
    """The user turn asking for the revision, after the critique."""
    return {"role": "user", "content": render(REVISION_TEMPLATE, revision_request=principle.revision_request)}


def few_shot_turns(constitution: Constitution, n: int) -> list[Message]:
    """The first ``n`` worked examples as earlier chat turns (critique request → critique → revision request →
    revision), identical for every prompt."""
    turns: list[Message] = []
    for ex in constitution.few_shot[:n]:
        p = constitution.principle(ex.principle_id)
        turns += [critique_turn([], ex.prompt, ex.answer, p), {"role": "assistant", "content": ex.critique},
                  revision_turn(p), {"role": "assistant", "content": ex.revision}]
    return turns


def _seed(cfg: CritiqueConfig, *parts: object) -> int:
    return int(short_hash(cfg.seed, *parts, n=8), 16)


def _step(parent: str, kind: StepKind, rnd: int, model: CachedBackend, principle: str | None, thash: str,
          text: str, finish_reason: str = "stop", status: str = "ok", basis: object = None) -> Step:
    """A step whose id is derived from its content: what it says, which model wrote it from which template and
    principle, and (through ``parent``, or ``basis`` for the answer: the prompt's messages) what came before."""
    sid = f"{kind[0]}-{short_hash(parent, basis, kind, rnd, model.model_id, principle, thash, text, status)}"
    return Step(id=sid, parent_id=parent, kind=kind, round=rnd, model=model.spec, principle_id=principle,
                template_hash=thash, text=text, finish_reason=finish_reason, status=status)


class _Chain:
    """Mutable working state of one prompt's chain while the rounds run."""

    def __init__(self, prompt: Prompt, principles: list[Principle]) -> None:
        self.prompt = prompt
        self.principles = principles
        self.steps: list[Step] = []
        self.current: Step | None = None  # the answer or last accepted revision
        self.last_good: Step | None = None  # last accepted revision


def run_critique(cfg: CritiqueConfig, prompts: Sequence[Prompt], constitution: Constitution,
                 policy: CachedBackend, feedback: CachedBackend,
                 quiet: bool = False) -> tuple[list[CritiqueChain], list[SFTExample], dict[str, object]]:
    """Run the SL-CAI stage over ``prompts``.

    Returns the chains (red-team prompts: answer + rounds; helpful prompts: answer only), the SFT examples (accepted
    final revisions, plus helpful answers when ``cfg.helpful_mix``), and a summary with counts by failure reason.
    """
    system = constitution.system_prompt if cfg.use_system_prompt else None
    shots = few_shot_turns(constitution, cfg.few_shot)
    example_revisions = [ex.revision for ex in constitution.few_shot]
    thash = template_hash(CRITIQUE_TEMPLATE, REVISION_TEMPLATE,
                          extra=[constitution.hash(), cfg.few_shot, cfg.use_system_prompt])
    chains = [_Chain(p, [] if p.helpful else constitution.sample_principles(random.Random(f"{cfg.seed}:{p.id}"),
                                                                           cfg.rounds)) for p in prompts]

    def params(tokens: int, *parts: object) -> GenParams:
        return GenParams(max_new_tokens=tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                         seed=_seed(cfg, *parts))

    # Initial answers by the policy, with only the system prompt in front.
    reqs = [GenRequest.of(_chat(system, c.prompt.messages()), params(cfg.answer_tokens, c.prompt.id, "answer"))
            for c in chains]
    outs = policy.generate(reqs, progress=ProgressPrinter("critique", "answers", quiet=quiet))
    for c, g in zip(chains, outs, strict=True):
        status = "error" if g.finish_reason == "error" else ("empty" if not g.text.strip() else "ok")
        step = _step(c.prompt.id, "answer", 0, policy, None, thash, g.text.strip(), g.finish_reason, status,
                     basis=c.prompt.messages())
        c.steps.append(step)
        c.current = step if status == "ok" else None

    for rnd in range(1, cfg.rounds + 1):
        active = [c for c in chains if c.current is not None and len(c.principles) >= rnd]
        if not active:
            break
        crit_msgs = []
        for c in active:
            assert c.current is not None
            p = c.principles[rnd - 1]
            crit_msgs.append(_chat(system, [*shots, critique_turn(c.prompt.context, c.prompt.text, c.current.text, p)]))
        reqs = [GenRequest.of(m, params(cfg.critique_tokens, c.prompt.id, "critique", rnd))
                for c, m in zip(active, crit_msgs, strict=True)]
        crits = feedback.generate(reqs, progress=ProgressPrinter("critique", f"round {rnd} critiques", quiet=quiet))
        rev_reqs, rev_chains, crit_steps = [], [], []
        for c, m, g in zip(active, crit_msgs, crits, strict=True):
            assert c.current is not None
            p = c.principles[rnd - 1]
            status = "error" if g.finish_reason == "error" else ("empty" if not g.text.strip() else "ok")
            cstep = _step(c.current.id, "critique", rnd, feedback, p.id, thash, g.text.strip(), g.finish_reason,
                          status)
            c.steps.append(cstep)
            if status != "ok":
                c.steps.append(_step(cstep.id, "revision", rnd, feedback, p.id, thash, "", status="no_critique"))
                continue
            msgs = [*m, {"role": "assistant", "content": cstep.text}, revision_turn(p)]
            rev_reqs.append(GenRequest.of(msgs, params(cfg.revision_tokens, c.prompt.id, "revision", rnd)))
            rev_chains.append(c)
            crit_steps.append(cstep)
        revs = feedback.generate(rev_reqs, progress=ProgressPrinter("critique", f"round {rnd} revisions", quiet=quiet))
        for c, cstep, g in zip(rev_chains, crit_steps, revs, strict=True):
            assert c.current is not None
            p = c.principles[rnd - 1]
            text = clean_revision(g.text)
            why = revision_failure(text, g.finish_reason, c.current.text, cstep.text, p.revision_request,
                                   cfg.echo_threshold, example_revisions)
            rstep = _step(cstep.id, "revision", rnd, feedback, p.id, thash, text, g.finish_reason, why or "ok")
            c.steps.append(rstep)
            if why is None:
                c.current = c.last_good = rstep

    return _finish(cfg, chains)


def _finish(cfg: CritiqueConfig,
            chains: list[_Chain]) -> tuple[list[CritiqueChain], list[SFTExample], dict[str, object]]:
    records: list[CritiqueChain] = []
    sft: list[SFTExample] = []
    reasons: Counter[str] = Counter()
    chain_reasons: Counter[str] = Counter()
    revisions = 0
    for c in chains:
        answer = c.steps[0]
        for s in c.steps:
            if s.kind == "revision":
                revisions += 1
                reasons[s.status] += 1
        if c.prompt.helpful:
            final = answer if answer.status == "ok" and answer.finish_reason != "length" else None
            failed = answer.status if answer.status != "ok" else "over_length"
            reason = "helpful" if final else f"helpful_answer_{failed}"
        else:
            final = c.last_good
            reason = "ok" if final else ("answer_" + answer.status if answer.status != "ok" else "no_accepted_revision")
        chain_reasons[reason] += 1
        rec = CritiqueChain(id=f"c-{short_hash(c.prompt.id, [s.id for s in c.steps])}", parent_id=c.prompt.id,
                            prompt=c.prompt,
                            steps=c.steps, final_id=final.id if final else None, accepted=final is not None,
                            reason=reason)
        records.append(rec)
        if final is None or (c.prompt.helpful and not cfg.helpful_mix):
            continue
        messages = [*c.prompt.messages(), {"role": "assistant", "content": final.text}]
        sft.append(SFTExample(id=f"s-{short_hash(messages, final.id)}", parent_id=final.id, messages=messages,
                              source="helpful" if c.prompt.helpful else "revision", model=final.model,
                              principle_ids=[s.principle_id for s in c.steps
                                             if s.kind == "revision" and s.principle_id]))
    summary: dict[str, object] = {
        "prompts": len(chains),
        "red_team": sum(not c.prompt.helpful for c in chains),
        "helpful": sum(c.prompt.helpful for c in chains),
        "revisions": revisions,
        "revisions_by_status": dict(sorted(reasons.items())),
        "chains_by_reason": dict(sorted(chain_reasons.items())),
        "sft_examples": len(sft),
        "sft_from_revisions": sum(e.source == "revision" for e in sft),
        "sft_from_helpful": sum(e.source == "helpful" for e in sft),
    }
    return records, sft, summary
