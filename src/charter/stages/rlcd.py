"""Contrastive pairs (RLCD, Yang et al. 2023): preference pairs labelled by construction, with no judge.

For each prompt the policy answers twice: once under a system prompt that asks for the constitution's behaviour
(``rlcd_positive.jinja``) and once under one that asks for its opposite (``rlcd_negative.jinja``); both templates
are data and receive the constitution's harm areas. The positive answer is ``chosen``, the negative ``rejected``,
and the training prompt is the bare conversation *without* either system prompt, so DPO teaches the model to behave
well unprompted. Identical, empty or failed answers give no pair and are counted. Because no judge reads the pair,
it is free of the judge's position and length biases; whether it is worth more than judge labels shows downstream
(DPO on RLCD pairs vs on judge labels, compared by the evaluation's harm and over-refusal figures).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from charter.backends.base import GenParams, GenRequest
from charter.constitution import Constitution
from charter.progress import ProgressPrinter
from charter.records import PreferencePair, Prompt, Sample, short_hash, write_jsonl
from charter.stages.sample import sample_seed
from charter.store import CachedBackend, RunDir
from charter.templates import render, template_hash

POSITIVE_TEMPLATE = "rlcd_positive.jinja"
NEGATIVE_TEMPLATE = "rlcd_negative.jinja"


class RLCDConfig(BaseModel):
    """Settings of the contrastive-pair stage."""

    model_config = ConfigDict(extra="forbid")

    temperature: float = Field(default=0.7, ge=0, description="Sampling temperature of both answers (0 = greedy).")
    top_p: float = Field(default=0.95, gt=0, le=1, description="Nucleus sampling mass.")
    max_new_tokens: int = Field(default=128, ge=1, description="Longest answer in tokens.")
    soft_label: float = Field(default=1.0, gt=0.5, le=1, description="Label given to the positive answer "
                                                                      "(< 1 hedges against failed contrasts).")
    seed: int = Field(default=0, description="Sampling seed (both answers of a prompt share it).")


def system_prompts(constitution: Constitution) -> dict[str, str]:
    """The positive and negative system prompts, rendered with the constitution's harm areas."""
    areas = sorted({p.area.replace("_", " ") for p in constitution.principles if p.area not in ("general",
                                                                                                "over_refusal")})
    return {"positive": render(POSITIVE_TEMPLATE, areas=areas), "negative": render(NEGATIVE_TEMPLATE, areas=areas)}


def run_rlcd(cfg: RLCDConfig, prompts: Sequence[Prompt], constitution: Constitution, policy: CachedBackend,
             quiet: bool = False) -> tuple[list[Sample], list[PreferencePair], dict[str, Any]]:
    """Sample a positive and a negative answer per prompt; returns the samples, the pairs and a summary."""
    systems = system_prompts(constitution)
    thash = template_hash(POSITIVE_TEMPLATE, NEGATIVE_TEMPLATE, extra=constitution.hash())
    jobs = [(p, side) for p in prompts for side in ("positive", "negative")]
    reqs = [GenRequest.of([{"role": "system", "content": systems[side]}, *p.messages()],
                          GenParams(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                                    seed=sample_seed(cfg.seed, p.id, 0))) for p, side in jobs]
    gens = policy.generate(reqs, progress=ProgressPrinter("rlcd", "answers", quiet=quiet))
    samples = []
    for (p, side), g in zip(jobs, gens, strict=True):
        text = g.text.strip()
        status = "error" if g.finish_reason == "error" else ("empty" if not text else "ok")
        sid = f"r-{short_hash(p.id, p.messages(), side, policy.model_id, thash, cfg.model_dump(mode='json'), text)}"
        samples.append(Sample(id=sid,
                              parent_id=p.id, prompt=p, index=int(side == "negative"),
                              seed=sample_seed(cfg.seed, p.id, 0),
                              temperature=cfg.temperature,
                              model=policy.spec, template_hash=thash, system=side, text=text,
                              finish_reason=g.finish_reason, status=status))
    prefs: list[PreferencePair] = []
    dropped: Counter[str] = Counter()
    for pos, neg in zip(samples[0::2], samples[1::2], strict=True):
        if pos.status != "ok" or neg.status != "ok":
            dropped[f"answer_{pos.status if pos.status != 'ok' else neg.status}"] += 1
            continue
        if " ".join(pos.text.lower().split()) == " ".join(neg.text.lower().split()):
            dropped["identical_answers"] += 1
            continue
        prefs.append(PreferencePair(
            id=f"p-{short_hash(pos.id, neg.id, cfg.soft_label)}", parent_id=pos.prompt.id, prompt=pos.prompt.messages(),
            chosen=[{"role": "assistant", "content": pos.text}], rejected=[{"role": "assistant", "content": neg.text}],
            soft_label=cfg.soft_label, chosen_id=pos.id, rejected_id=neg.id, source="rlcd", model=policy.spec,
            template_hash=thash))
    summary: dict[str, Any] = {
        "prompts": len(prompts), "pairs": len(prefs), "not_paired": dict(sorted(dropped.items())),
        "cut_at_length": sum(s.finish_reason == "length" for s in samples), "model": policy.spec,
        "mean_chars_positive": round(sum(len(s.text) for s in samples[0::2]) / max(len(prompts), 1), 1),
        "mean_chars_negative": round(sum(len(s.text) for s in samples[1::2]) / max(len(prompts), 1), 1),
    }
    if prompts and not prefs:
        summary["warnings"] = ["no contrastive pair was made (see not_paired): the two system prompts did not change "
                               "the model's answers, so RLCD gives no signal with this model and these settings."]
    return samples, prefs, summary


def rlcd_stage(cfg: RLCDConfig, run: RunDir, prompts: Sequence[Prompt], constitution: Constitution,
               policy: CachedBackend, quiet: bool = False) -> dict[str, Any]:
    """The RLCD stage over a run folder: writes ``rlcd_samples.jsonl`` and ``rlcd_preferences.jsonl``."""
    samples, prefs, summary = run_rlcd(cfg, prompts, constitution, policy, quiet)
    write_jsonl(run.file("rlcd_samples.jsonl"), samples)
    write_jsonl(run.file("rlcd_preferences.jsonl"), prefs)
    return summary
