"""Pair sampling: K answers per prompt from the policy (the SL-CAI model by default), paired for labelling.

Each answer is sampled with the configured temperature and its own seed (derived from the run seed, the prompt id
and the sample index), so the K answers differ and a re-run reproduces them from the call cache. Answers that
failed or came back empty are kept with their status but never paired; answers identical to an earlier one (after
normalising case and whitespace) are not paired either, and both are counted in the summary. With
``contrast_pairs``, pairs where one answer refuses and the other does not come first (and so are the ones that
``max_pairs_per_prompt`` keeps): the feedback model still decides which side wins; the choice of pair only spends the
labelling on the boundary between refusing and helping, which is where the policy needs the signal. With
``same_side`` the opposite: only two refusals or two answers are paired, so preference training polishes each side
and leaves the line where SL drew it (on the 135M, DPO on pairs across the line moved the refusals of unsafe and of
safe prompts together). ``contrast_helpful`` makes one exception to either: a helpful prompt's pair of a refusal and
an answer is kept and put first, so the labels (with ``label.refusal_rule``: the answer wins) teach the policy not to
refuse safe requests it refuses some of the time, while red-team prompts keep their pairing (on the 135M it lowered
its refusals of unsafe prompts, not of safe ones: bench/results-effect-stop28.txt). Every call goes through the run's
call cache, so the stage resumes after a kill.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from itertools import combinations
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from charter.backends.base import GenParams, GenRequest, Message
from charter.evaluation.refusal import refuses
from charter.progress import ProgressPrinter
from charter.records import AnswerPair, Prompt, Sample, short_hash, write_jsonl
from charter.store import CachedBackend, RunDir


class SampleConfig(BaseModel):
    """Settings of the pair-sampling stage (the policy model is a model role, configured separately)."""

    model_config = ConfigDict(extra="forbid")

    k: int = Field(default=2, ge=2, description="Answers sampled per prompt (K >= 2).")
    temperature: float = Field(default=1.0, gt=0, description="Sampling temperature (must be > 0 to get K answers).")
    top_p: float = Field(default=0.95, gt=0, le=1, description="Nucleus sampling mass.")
    max_new_tokens: int = Field(default=128, ge=1, description="Longest answer in tokens.")
    max_pairs_per_prompt: int | None = Field(default=None, ge=1,
                                             description="Keep at most this many of the K*(K-1)/2 pairs per prompt.")
    contrast_pairs: bool = Field(default=False, description="Put first the pairs where one answer refuses and the "
                                                             "other does not (string-match classifier), so "
                                                             "max_pairs_per_prompt keeps them.")
    same_side: bool = Field(default=False, description="Pair only answers on the same side of the refusal line "
                                                        "(both refuse, or neither does; string-match classifier): "
                                                        "preference training then shapes how the policy refuses and "
                                                        "how it answers, not where the SL stage drew the line. "
                                                        "Not with contrast_pairs.")
    contrast_helpful: bool = Field(default=False, description="Keep a helpful prompt's pair of a refusal and an "
                                                               "answer, first among its pairs, even with same_side "
                                                               "(red-team prompts keep their pairing), to teach the "
                                                               "policy not to refuse safe requests it sometimes "
                                                               "refuses. On the 135M it lowered refusals of unsafe "
                                                               "prompts instead (bench/results-effect-stop28.txt).")
    system_prompt: str | None = Field(default=None, description="System prompt put before every prompt (None = none).")
    max_prompts: int | None = Field(default=None, ge=1, description="Sample for at most this many prompts, evenly "
                                                                  "spaced through them (None = all).")
    seed: int = Field(default=0, description="Run seed; each answer's seed is derived from it, the prompt and k.")

    @model_validator(mode="after")
    def _one_pairing(self) -> SampleConfig:
        if self.same_side and self.contrast_pairs:
            raise ValueError("same_side and contrast_pairs exclude each other: choose one")
        return self


def sample_seed(seed: int, prompt_id: str, index: int) -> int:
    """The sampling seed of answer ``index`` of a prompt: different for every sample, reproducible."""
    return int(short_hash(seed, prompt_id, index, n=8), 16)


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def _messages(cfg: SampleConfig, prompt: Prompt) -> list[Message]:
    system = [{"role": "system", "content": cfg.system_prompt}] if cfg.system_prompt else []
    return [*system, *prompt.messages()]


def make_pairs(samples: Sequence[Sample], max_pairs: int | None = None, contrast: bool = False,
               same_side: bool = False, contrast_helpful: bool = False) -> tuple[list[AnswerPair], Counter[str]]:
    """Pair the usable, distinct answers of each prompt; returns the pairs and counts of what was not paired.

    With ``contrast``, a prompt's pairs of one refusal and one answer come before the others (stable otherwise);
    with ``same_side``, only pairs of two refusals or two answers are made; with ``contrast_helpful``, a helpful
    prompt's pairs are made as with ``contrast``, whatever ``same_side`` says.
    """
    sided = contrast or same_side or contrast_helpful
    refusal = {s.id: refuses(s.text) for s in samples if s.status == "ok"} if sided else {}
    by_prompt: dict[str, list[Sample]] = {}
    for s in samples:
        by_prompt.setdefault(s.prompt.id, []).append(s)
    pairs: list[AnswerPair] = []
    unpaired: Counter[str] = Counter()
    for group in by_prompt.values():
        seen: set[str] = set()
        distinct: list[Sample] = []
        for s in sorted(group, key=lambda x: x.index):
            if s.status != "ok":
                unpaired[f"answer_{s.status}"] += 1
            elif _norm(s.text) in seen:
                unpaired["identical_answer"] += 1
            else:
                seen.add(_norm(s.text))
                distinct.append(s)
        combos = list(combinations(distinct, 2))
        helpful_contrast = contrast_helpful and bool(group[0].prompt.helpful)
        if same_side and not helpful_contrast:
            crossing = sum(refusal[a.id] != refusal[b.id] for a, b in combos)
            unpaired["pair_across_the_line"] += crossing
            combos = [(a, b) for a, b in combos if refusal[a.id] == refusal[b.id]]
        if contrast or helpful_contrast:
            combos.sort(key=lambda ab: refusal[ab[0].id] == refusal[ab[1].id])
        combos = combos[:max_pairs]
        if not combos:
            unpaired["prompt_without_pair"] += 1
        for a, b in combos:
            pairs.append(AnswerPair(id=f"pair-{short_hash(a.id, b.id)}", parent_id=a.prompt.id, prompt=a.prompt,
                                    a=a.text, b=b.text, a_id=a.id, b_id=b.id, model=a.model))
    return pairs, unpaired


def run_sample(cfg: SampleConfig, prompts: Sequence[Prompt], policy: CachedBackend,
               quiet: bool = False) -> tuple[list[Sample], list[AnswerPair], dict[str, Any]]:
    """Sample ``cfg.k`` answers per prompt and pair them; returns samples, pairs and a summary with counts."""
    if cfg.max_prompts and len(prompts) > cfg.max_prompts:
        prompts = [prompts[k * len(prompts) // cfg.max_prompts] for k in range(cfg.max_prompts)]
    thash = short_hash(cfg.system_prompt or "", n=12) if cfg.system_prompt else ""
    jobs = [(p, k, sample_seed(cfg.seed, p.id, k)) for p in prompts for k in range(cfg.k)]
    reqs = [GenRequest.of(_messages(cfg, p), GenParams(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                                                       top_p=cfg.top_p, seed=seed)) for p, _, seed in jobs]
    gens = policy.generate(reqs, progress=ProgressPrinter("sample", "answers", quiet=quiet))
    samples = []
    for (p, k, seed), g in zip(jobs, gens, strict=True):
        text = g.text.strip()
        status = "error" if g.finish_reason == "error" else ("empty" if not text else "ok")
        sid = f"a-{short_hash(p.id, p.messages(), k, seed, policy.model_id, thash, cfg.temperature, cfg.top_p, text)}"
        samples.append(Sample(id=sid,
                              parent_id=p.id, prompt=p, index=k, seed=seed, temperature=cfg.temperature,
                              model=policy.spec, template_hash=thash, text=text, finish_reason=g.finish_reason,
                              status=status))
    pairs, unpaired = make_pairs(samples, cfg.max_pairs_per_prompt, cfg.contrast_pairs, cfg.same_side,
                                 cfg.contrast_helpful)
    summary: dict[str, Any] = {
        "prompts": len(prompts), "samples": len(samples), "pairs": len(pairs), "model": policy.spec,
        "samples_by_status": dict(sorted(Counter(s.status for s in samples).items())),
        "cut_at_length": sum(s.finish_reason == "length" for s in samples),
        "not_paired": dict(sorted(unpaired.items())),
    }
    if cfg.contrast_pairs or cfg.contrast_helpful:
        summary["contrast_pairs"] = sum(refuses(p.a) != refuses(p.b) for p in pairs)
    return samples, pairs, summary


def sample_stage(cfg: SampleConfig, run: RunDir, prompts: Sequence[Prompt], policy: CachedBackend,
                 quiet: bool = False) -> dict[str, Any]:
    """The sampling stage over a run folder: writes ``samples.jsonl`` and ``pairs.jsonl``; returns the summary."""
    samples, pairs, summary = run_sample(cfg, prompts, policy, quiet)
    write_jsonl(run.file("samples.jsonl"), samples)
    write_jsonl(run.file("pairs.jsonl"), pairs)
    return summary
