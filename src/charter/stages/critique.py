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
from collections import Counter
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from charter.backends.base import GenParams, GenRequest, Message
from charter.constitution import Constitution, Principle
from charter.evaluation.refusal import classify_refusal, gives_reason, refuses
from charter.progress import ProgressPrinter
from charter.records import CritiqueChain, Prompt, SFTExample, Step, StepKind, short_hash
from charter.stages.filters import cap_canned, clean_revision, is_evasive, revision_failure, trim_to_sentence
from charter.store import CachedBackend
from charter.templates import render, template_hash

CRITIQUE_TEMPLATE = "critique.jinja"
REVISION_TEMPLATE = "revision.jinja"
DIRECT_TEMPLATE = "revision_direct.jinja"
PLAIN_SYSTEM = "You are a helpful, honest assistant. Answer clearly and directly."
"""The system prompt the feedback model answers helpful prompts under by default (``helpful_system: plain``)."""


class CritiqueConfig(BaseModel):
    """Settings of the critique/revision stage."""

    model_config = ConfigDict(extra="forbid")

    rounds: int = Field(default=2, ge=1, description="Critique → revision rounds per prompt (fresh principle each).")
    few_shot: int = Field(default=2, ge=0, description="Worked examples from the constitution put in front.")
    seed: int = Field(default=0, description="Seed of principle sampling and of sampled generations.")
    temperature: float = Field(default=0.7, ge=0, description="Sampling temperature of every generation (0 = greedy).")
    feedback_temperature: float | None = Field(default=None, ge=0,
                                               description="Sampling temperature of the feedback model's "
                                                           "generations (critiques, revisions, its answers to "
                                                           "helpful prompts); None = temperature. A small "
                                                           "feedback model writes more usable revisions cooler "
                                                           "than the policy's answers need to be sampled.")
    top_p: float = Field(default=0.9, gt=0, le=1, description="Nucleus sampling mass.")
    answer_tokens: int = Field(default=192, ge=1, description="max_new_tokens of the initial answer.")
    critique_tokens: int = Field(default=128, ge=1, description="max_new_tokens of a critique.")
    revision_tokens: int = Field(default=192, ge=1, description="max_new_tokens of a revision.")
    use_system_prompt: bool = Field(default=True, description="Put the constitution's system prompt first.")
    echo_threshold: float = Field(default=0.8, gt=0, le=1,
                                  description="Similarity above which a revision counts as echoing its input.")
    helpful_mix: bool = Field(default=True, description="Add the policy's answers to helpful prompts to sft.jsonl.")
    helpful_answers: Literal["policy", "feedback"] = Field(
        default="policy", description="Who answers the helpful prompts of the SFT mix: the policy itself (the CAI "
                                      "paper's helpful model is the policy) or the feedback model, whose answer is "
                                      "used unless it refuses (string-match classifier), fails or is cut off "
                                      "(then the policy's answer is, as with 'policy'; the policy answers only "
                                      "those). A small policy's own "
                                      "answers are weak targets; a stronger model's teach it to answer.")
    helpful_system: str = Field(
        default="plain", description="System prompt in front of the feedback model's answers to helpful prompts "
                                     "(helpful_answers: feedback): 'plain' = a helpful assistant's ("
                                     "PLAIN_SYSTEM), 'constitution' = the constitution's, any other text = "
                                     "itself. These prompts are ones to answer; told when to decline, the 1.5B "
                                     "opened 24 of 492 answers to them with 'Decline.'")
    trim_cut_answers: bool = Field(default=False, description="A helpful answer cut off at answer_tokens joins the "
                                                              "mix trimmed back to its last full sentence (at least "
                                                              "20 words), instead of being left out.")
    trim_cut_revisions: bool = Field(default=False, description="A revision cut off at revision_tokens is cut back "
                                                                "to its last full sentence (at least 8 words) and "
                                                                "then checked like any other, instead of being "
                                                                "rejected as over_length (small models ramble on "
                                                                "after a good first sentence or two).")
    critique: bool = Field(default=True, description="Critique before revising (False = direct revision: the "
                                                     "revision request follows the answer, as the CAI paper's "
                                                     "no-critique variant).")
    principles: list[str] | None = Field(default=None, description="Ids of the principles to draw from (None = "
                                                                   "all of the constitution's).")
    reject_evasive: bool = Field(default=False, description="Reject a revision that refuses without saying why "
                                                            "or offering a safer alternative ('evasive').")
    require_reason: bool = Field(default=False, description="Reject a refusing revision that does not say why "
                                                            "(no reason word such as illegal, harmful, hurt, "
                                                            "privacy: 'no_reason'). Stricter than reject_evasive, "
                                                            "which also accepts a generic 'if you need help "
                                                            "with something else'.")
    require_refusal: bool = Field(default=False, description="Accept only revisions that decline (a full refusal "
                                                             "by the string-match classifier, 'not_refusal' "
                                                             "otherwise): for red-team sets known to be harmful.")
    revision_samples: int = Field(default=1, ge=1, description="Attempts per round: a chain whose revision fails a "
                                                               "check is revised again with a new seed, up to this "
                                                               "many times.")
    harm_check: bool = Field(default=False, description="The feedback model rates every accepted revision on the "
                                                        "judge's 0-4 harm scale; one rated above max_harm is "
                                                        "rejected ('still_harmful').")
    max_harm: float = Field(default=1.0, ge=0, le=4, description="Highest expected harm score (0-4) a revision may "
                                                                 "have under harm_check.")
    max_sentence_share: float | None = Field(default=None, gt=0, le=1,
                                             description="No sentence may appear in more than this share of the "
                                                         "SFT targets from revisions; examples over it are dropped "
                                                         "('canned'). None = no cap.")


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


def direct_revision_turn(context: Sequence[Message], prompt: str, answer: str, principle: Principle) -> Message:
    """The user turn asking to revise ``answer`` right away (no critique first)."""
    text = render(DIRECT_TEMPLATE, context=list(context), prompt=prompt, answer=answer,
                  revision_request=principle.revision_request)
    return {"role": "user", "content": text}


def few_shot_turns(constitution: Constitution, n: int, critique: bool = True) -> list[Message]:
    """The first ``n`` worked examples as earlier chat turns (critique request → critique → revision request →
    revision; or, without critiques, direct revision request → revision), identical for every prompt."""
    turns: list[Message] = []
    for ex in constitution.few_shot[:n]:
        p = constitution.principle(ex.principle_id)
        if critique:
            turns += [critique_turn([], ex.prompt, ex.answer, p), {"role": "assistant", "content": ex.critique},
                      revision_turn(p), {"role": "assistant", "content": ex.revision}]
        else:
            turns += [direct_revision_turn([], ex.prompt, ex.answer, p), {"role": "assistant", "content": ex.revision}]
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
        self.answer: Step | None = None  # the policy's first answer (helpful prompts with a teacher: if needed)
        self.teacher: Step | None = None  # the feedback model's answer to a helpful prompt (helpful_answers)
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
    shots = few_shot_turns(constitution, cfg.few_shot, cfg.critique)
    example_revisions = [ex.revision for ex in constitution.few_shot]
    thash = template_hash(CRITIQUE_TEMPLATE, REVISION_TEMPLATE, DIRECT_TEMPLATE,
                          extra=[constitution.hash(), cfg.few_shot, cfg.use_system_prompt, cfg.critique])
    pool = constitution.subset(cfg.principles) if cfg.principles else constitution
    chains = [_Chain(p, [] if p.helpful else pool.sample_principles(random.Random(f"{cfg.seed}:{p.id}"), cfg.rounds))
              for p in prompts]

    def params(tokens: int, *parts: object, by_feedback: bool = True) -> GenParams:
        """Sampling settings of one generation (the feedback model's unless ``by_feedback`` is False)."""
        hot = cfg.temperature if not by_feedback or cfg.feedback_temperature is None else cfg.feedback_temperature
        return GenParams(max_new_tokens=tokens, temperature=hot, top_p=cfg.top_p, seed=_seed(cfg, *parts))

    def answer(model: CachedBackend, todo: list[_Chain], kind: str, label: str, by_feedback: bool,
               head: str | None = system) -> list[Step]:
        """One answer per chain by ``model``, with only the system prompt ``head`` in front."""
        reqs = [GenRequest.of(_chat(head, c.prompt.messages()),
                              params(cfg.answer_tokens, c.prompt.id, kind, by_feedback=by_feedback))
                for c in todo]
        outs = model.generate(reqs, progress=ProgressPrinter("critique", label, quiet=quiet)) if reqs else []
        steps = []
        for c, g in zip(todo, outs, strict=True):
            status = "error" if g.finish_reason == "error" else ("empty" if not g.text.strip() else "ok")
            step = _step(c.prompt.id, "answer", 0, model, None, thash, g.text.strip(), g.finish_reason, status,
                         basis=c.prompt.messages())
            c.steps.append(step)
            steps.append(step)
        return steps

    # With a teacher, the feedback model answers the helpful prompts first; the policy answers those only where the
    # teacher's answer is no target (it refused, failed or was cut off), as the fallback.
    teach = cfg.helpful_answers == "feedback"
    if teach:
        helpful = [c for c in chains if c.prompt.helpful]
        head = {"plain": PLAIN_SYSTEM, "constitution": system}.get(cfg.helpful_system, cfg.helpful_system)
        for c, step in zip(helpful, answer(feedback, helpful, "teacher", "helpful answers by the feedback model", True,
                                           head), strict=True):
            c.teacher = step
    unanswered = [c for c in chains if not (teach and c.prompt.helpful and c.teacher is not None
                                            and _helpful_target(cfg, c.teacher)[0] is not None)]
    for c, step in zip(unanswered, answer(policy, unanswered, "answer", "answers", False), strict=True):
        c.answer = step
        c.current = step if step.status == "ok" else None

    for rnd in range(1, cfg.rounds + 1):
        active = [c for c in chains if c.current is not None and len(c.principles) >= rnd]
        if not active:
            break
        if cfg.critique:
            rev_reqs, rev_chains, crit_steps = _critiques(cfg, active, rnd, system, shots, feedback, thash, params,
                                                          quiet)
        else:
            rev_reqs, rev_chains, crit_steps = [], active, [None] * len(active)
            for c in active:
                assert c.current is not None
                msgs = _chat(system, [*shots, direct_revision_turn(c.prompt.context, c.prompt.text, c.current.text,
                                                                   c.principles[rnd - 1])])
                rev_reqs.append(GenRequest.of(msgs, params(cfg.revision_tokens, c.prompt.id, "revision", rnd)))
        checked: list[tuple[_Chain, Step]] = []
        todo = list(zip(rev_chains, crit_steps, rev_reqs, strict=True))
        for attempt in range(cfg.revision_samples):
            if not todo:
                break
            reqs = [r if attempt == 0 else GenRequest.of(r.messages, params(cfg.revision_tokens, c.prompt.id,
                                                                            "revision", rnd, attempt))
                    for c, _, r in todo]
            label = f"round {rnd} revisions" + (f" (attempt {attempt + 1})" if attempt else "")
            revs = feedback.generate(reqs, progress=ProgressPrinter("critique", label, quiet=quiet))
            failed = []
            for (c, cstep, req), g in zip(todo, revs, strict=True):
                rstep = _revision_step(cfg, c, cstep, g, rnd, feedback, thash, example_revisions)
                c.steps.append(rstep)
                if rstep.status == "ok":
                    checked.append((c, rstep))
                else:
                    failed.append((c, cstep, req))
            todo = failed
        if cfg.harm_check:
            checked = _harm_check(cfg, checked, feedback, quiet)
        for c, rstep in checked:
            c.current = c.last_good = rstep

    return _finish(cfg, chains)


def _revision_step(cfg: CritiqueConfig, c: _Chain, cstep: Step | None, g: Any, rnd: int, feedback: CachedBackend,
                   thash: str, example_revisions: list[str]) -> Step:
    """The revision step of one attempt, with why it fails (the string checks, then evasive / not a refusal)."""
    assert c.current is not None
    p = c.principles[rnd - 1]
    text, finish = clean_revision(g.text), g.finish_reason
    if finish == "length" and cfg.trim_cut_revisions:
        trimmed = trim_to_sentence(text, min_words=8)
        if trimmed is not None:
            text, finish = trimmed, "stop"
    why = revision_failure(text, finish, c.current.text, cstep.text if cstep else "", p.revision_request,
                           cfg.echo_threshold, example_revisions)
    if why is None and cfg.reject_evasive and is_evasive(text):
        why = "evasive"
    if why is None and cfg.require_reason and refuses(text) and not gives_reason(text):
        why = "no_reason"
    if why is None and cfg.require_refusal and classify_refusal(text) != "full_refusal":
        why = "not_refusal"
    parent = cstep.id if cstep else c.current.id
    return _step(parent, "revision", rnd, feedback, p.id, thash, text, g.finish_reason, why or "ok")


def _critiques(cfg: CritiqueConfig, active: list[_Chain], rnd: int, system: str | None, shots: list[Message],
               feedback: CachedBackend, thash: str, params: Any,
               quiet: bool) -> tuple[list[GenRequest], list[_Chain], list[Step | None]]:
    """Round ``rnd``'s critiques; returns the revision requests that follow them (and their chains and steps)."""
    crit_msgs = []
    for c in active:
        assert c.current is not None
        p = c.principles[rnd - 1]
        crit_msgs.append(_chat(system, [*shots, critique_turn(c.prompt.context, c.prompt.text, c.current.text, p)]))
    reqs = [GenRequest.of(m, params(cfg.critique_tokens, c.prompt.id, "critique", rnd))
            for c, m in zip(active, crit_msgs, strict=True)]
    crits = feedback.generate(reqs, progress=ProgressPrinter("critique", f"round {rnd} critiques", quiet=quiet))
    rev_reqs: list[GenRequest] = []
    rev_chains: list[_Chain] = []
    crit_steps: list[Step | None] = []
    for c, m, g in zip(active, crit_msgs, crits, strict=True):
        assert c.current is not None
        p = c.principles[rnd - 1]
        status = "error" if g.finish_reason == "error" else ("empty" if not g.text.strip() else "ok")
        cstep = _step(c.current.id, "critique", rnd, feedback, p.id, thash, g.text.strip(), g.finish_reason, status)
        c.steps.append(cstep)
        if status != "ok":
            c.steps.append(_step(cstep.id, "revision", rnd, feedback, p.id, thash, "", status="no_critique"))
            continue
        msgs = [*m, {"role": "assistant", "content": cstep.text}, revision_turn(p)]
        rev_reqs.append(GenRequest.of(msgs, params(cfg.revision_tokens, c.prompt.id, "revision", rnd)))
        rev_chains.append(c)
        crit_steps.append(cstep)
    return rev_reqs, rev_chains, crit_steps


def _harm_check(cfg: CritiqueConfig, checked: list[tuple[_Chain, Step]], feedback: CachedBackend,
                quiet: bool) -> list[tuple[_Chain, Step]]:
    """The feedback model's 0-4 harm score of each revision (the evaluation's harm judge); revisions above
    ``cfg.max_harm`` (expected score) or unreadable are marked ``still_harmful`` and dropped from ``checked``."""
    from charter.evaluation.judge import ask, harm_choice

    choices = [harm_choice(c.prompt.messages(), r.text) for c, r in checked]
    readings = ask(feedback, choices, progress=ProgressPrinter("critique", "harm checks", quiet=quiet))
    kept = []
    for (c, rstep), reading in zip(checked, readings, strict=True):
        score = sum(int(o) * p for o, p in reading.probs.items()) if reading.ok else None
        ok = score is not None and score <= cfg.max_harm
        scored = rstep.model_copy(update={"harm_score": None if score is None else round(score, 4)})
        if not ok:
            scored = _step(rstep.parent_id or "", "revision", rstep.round, feedback, rstep.principle_id,
                           rstep.template_hash, rstep.text, rstep.finish_reason, "still_harmful")
            scored.harm_score = None if score is None else round(score, 4)
        c.steps[c.steps.index(rstep)] = scored
        if ok:
            kept.append((c, scored))
    return kept


def _finish(cfg: CritiqueConfig,
            chains: list[_Chain]) -> tuple[list[CritiqueChain], list[SFTExample], dict[str, object]]:
    records: list[CritiqueChain] = []
    sft: list[SFTExample] = []
    reasons: Counter[str] = Counter()
    chain_reasons: Counter[str] = Counter()
    teacher_fell_back: Counter[str] = Counter()
    revisions = 0
    for c in chains:
        answer = c.answer
        for s in c.steps:
            if s.kind == "revision":
                revisions += 1
                reasons[s.status] += 1
        target = None
        if c.prompt.helpful:
            teacher = c.teacher
            final, target, why = _helpful_target(cfg, teacher) if teacher else (None, None, "")
            if final is not None:
                reason = "helpful_teacher" if target is None else "helpful_teacher_trimmed"
            else:
                if teacher is not None:
                    teacher_fell_back[why] += 1
                assert answer is not None  # the policy answered every helpful prompt without a teacher's target
                final, target, failed = _helpful_target(cfg, answer, refusal_ok=True)
                reason = ("helpful" if target is None else "helpful_trimmed") if final else f"helpful_answer_{failed}"
        else:
            assert answer is not None
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
        messages = [*c.prompt.messages(), {"role": "assistant", "content": target or final.text}]
        sft.append(SFTExample(id=f"s-{short_hash(messages, final.id)}", parent_id=final.id, messages=messages,
                              source="helpful" if c.prompt.helpful else "revision", model=final.model,
                              principle_ids=[s.principle_id for s in c.steps
                                             if s.kind == "revision" and s.principle_id]))
    canned = 0
    if cfg.max_sentence_share is not None:
        revised = [i for i, e in enumerate(sft) if e.source == "revision"]
        keep = cap_canned([sft[i].messages[-1]["content"] for i in revised], cfg.max_sentence_share)
        dropped = {revised[k] for k, flag in enumerate(keep) if not flag}
        canned = len(dropped)
        sft = [e for i, e in enumerate(sft) if i not in dropped]
    summary: dict[str, object] = {
        "prompts": len(chains),
        "dropped_canned": canned,
        "red_team": sum(not c.prompt.helpful for c in chains),
        "helpful": sum(c.prompt.helpful for c in chains),
        "revisions": revisions,
        "revisions_by_status": dict(sorted(reasons.items())),
        "chains_by_reason": dict(sorted(chain_reasons.items())),
        "sft_examples": len(sft),
        "sft_from_revisions": sum(e.source == "revision" for e in sft),
        "sft_from_helpful": sum(e.source == "helpful" for e in sft),
    }
    if cfg.helpful_answers == "feedback":
        summary["helpful_from_feedback"] = sum(chain_reasons[r] for r in ("helpful_teacher", "helpful_teacher_trimmed"))
        summary["helpful_feedback_fell_back"] = dict(sorted(teacher_fell_back.items()))
    return records, sft, summary


def _helpful_target(cfg: CritiqueConfig, step: Step,
                    refusal_ok: bool = False) -> tuple[Step | None, str | None, str]:
    """The answer step a helpful prompt trains on (or None), its text when trimmed back to a full sentence, and why
    it is no target ('' when it is one). A feedback model's answer that refuses is no target (``refusal_ok`` is for
    the policy's own, as before)."""
    if step.status != "ok":
        return None, None, step.status
    if not refusal_ok and refuses(step.text):
        return None, None, "refused"
    if not refusal_ok and _opens_declining(step.text):
        return None, None, "declined"
    if step.finish_reason != "length":
        return step, None, ""
    target = trim_to_sentence(step.text) if cfg.trim_cut_answers else None
    return (step, target, "") if target else (None, None, "over_length")


def _opens_declining(text: str) -> bool:
    """Whether an answer opens by announcing it declines ("Decline.", "I decline to…"): a small model's echo of a
    system prompt that says when to decline, which the refusal classifier does not count (it may go on to help)."""
    words = text.split(maxsplit=2)[:2]
    first = " ".join(words).lower().strip(" .:!,")
    return first.startswith(("decline", "i decline"))
