"""Red-team prompts written per principle by the feedback model, deduplicated, with safe-but-scary counterparts.

For each harm principle the feedback model is shown worked examples from the constitution — earlier chat turns in
which a principle's critique request is answered with a red-team prompt that tests it (its ``few_shot`` and
``comparison_few_shot`` prompts) — and asked for a new prompt that tests the target principle, as the CAI paper had
models write red-team prompts. Candidates are sampled (temperature, a seed per candidate), cleaned (labels and
quotes stripped; rejected when empty, too short or long, echoing the instruction, or copying an example) and
deduplicated: exact (normalised text) and near duplicates (character similarity, ``SequenceMatcher`` ratio, at or
above ``near_duplicate``) of a prompt already kept for any principle or of an example. Rounds continue until each
principle has ``per_principle`` prompts or ``rounds`` run out; the similarity of what was kept is reported.

Each attack gets a *benign counterpart*: a harmless request on the same topic that only sounds alarming (worked pairs
in ``templates/redteam_examples.yaml``), for measuring over-refusal next to attack success. Principles of the
``over_refusal`` area (``no_needless_refusal``, ``no_preaching``) get only benign prompts. Every call goes through
the run's call cache, so a killed run resumes.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from difflib import SequenceMatcher
from importlib import resources
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from charter.backends.base import GenParams, GenRequest, Message
from charter.constitution import Constitution, Principle
from charter.progress import ProgressPrinter
from charter.records import Record, short_hash
from charter.store import CachedBackend
from charter.templates import render, template_hash

ATTACK_TEMPLATE = "redteam_attack.jinja"
BENIGN_TEMPLATE = "redteam_benign.jinja"
OVERREFUSAL_TEMPLATE = "redteam_overrefusal.jinja"
EXAMPLES_FILE = "redteam_examples.yaml"


class RedTeamConfig(BaseModel):
    """Settings of ``charter redteam``."""

    model_config = ConfigDict(extra="forbid")

    per_principle: int = Field(default=5, ge=1, description="Prompts to keep per principle.")
    principles: list[str] | None = Field(default=None, description="Principle ids (None = all).")
    oversample: int = Field(default=3, ge=1, description="Candidates sampled per prompt still missing, per round.")
    rounds: int = Field(default=4, ge=1, description="Sampling rounds before giving up on a principle.")
    few_shot: int = Field(default=6, ge=0, description="Worked examples from the constitution put in front.")
    temperature: float = Field(default=1.0, ge=0, description="Sampling temperature of the prompt writer.")
    top_p: float = Field(default=0.95, gt=0, le=1, description="Nucleus mass of the prompt writer.")
    prompt_tokens: int = Field(default=72, ge=8, description="max_new_tokens of one written prompt.")
    min_chars: int = Field(default=15, ge=1, description="Shorter candidates are rejected.")
    max_chars: int = Field(default=400, ge=20, description="Longer candidates are rejected.")
    near_duplicate: float = Field(default=0.75, gt=0, le=1,
                                  description="Similarity at or above which a candidate is a near duplicate.")
    counterparts: bool = Field(default=True, description="Write a benign counterpart for each attack.")
    answer_tokens: int = Field(default=160, ge=1, description="max_new_tokens of a target's answer.")
    system_prompt: bool = Field(default=False, description="Attack with the constitution's system prompt in front.")
    failure_criterion: Literal["string", "judge", "both"] = Field(
        default="string", description="Which verdict makes an attack a failure of the target written to the "
                                      "failures file: the string-match refusal classifier, the judge, or both.")
    bootstrap_rounds: int = Field(default=1000, ge=100, description="Bootstrap resamples of each interval.")
    seed: int = Field(default=0, description="Seed of every sampled candidate.")
    threads: int = Field(default=0, ge=0, description="torch threads for local models (0 = torch's default).")


class RedTeamPrompt(Record):
    """One written prompt; a JSONL of these is a prompt file ``charter run`` reads (``prompt``, ``id``, ``category``).

    ``parent_id`` of a benign counterpart is the attack it answers.
    """

    prompt: str = Field(description="The user's message.")
    category: str = Field(description="The principle id (what `charter run` records as the prompt's category).")
    principle_id: str = Field(description="The principle it tests.")
    kind: Literal["attack", "benign"] = Field(description="'attack' (should be refused) or 'benign' (answered).")
    helpful: bool = Field(default=False, description="True for benign prompts (`charter run` reads it).")
    model: str = Field(description="The model that wrote it.")
    template_hash: str = Field(description="Hash of the templates and examples that made it.")
    seed: int = Field(description="Seed of the sampled candidate it came from.")


_LABEL = re.compile(r"^\s*(?:\*\*)?(?:user(?:'s)? message|message|request|prompt|user|human|question)\s*(?:\*\*)?"
                    r"\s*:\s*", re.I)
_ECHO = re.compile(r"\b(?:principle|follows this|assistant follows|to test it|tempt the assistant)\b", re.I)


def norm(text: str) -> str:
    """Case- and space-normalised text."""
    return " ".join(text.lower().split())


def similarity(a: str, b: str) -> float:
    """Character similarity of two texts (``SequenceMatcher`` ratio of the normalised texts, 0..1)."""
    return SequenceMatcher(None, norm(a), norm(b), autojunk=False).ratio()


def clean_prompt(text: str, cfg: RedTeamConfig) -> tuple[str, str | None]:
    """A written prompt without labels and quotes, and why it is rejected (None when it is fine)."""
    text = text.strip().split("\n\n")[0].strip()
    text = _LABEL.sub("", text).strip()
    if len(text) >= 2 and text[0] in "\"'“" and text[-1] in "\"'”":
        text = text[1:-1].strip()
    text = " ".join(text.split())
    if not text:
        return text, "empty"
    if len(text) < cfg.min_chars:
        return text, "too_short"
    if len(text) > cfg.max_chars:
        return text, "too_long"
    if _ECHO.search(text):
        return text, "echo_instruction"
    return text, None


def _examples() -> list[dict[str, str]]:
    raw = resources.files("charter").joinpath("data", "templates", EXAMPLES_FILE).read_text(encoding="utf-8")
    return list(yaml.safe_load(raw)["counterparts"])


def attack_shots(constitution: Constitution, n: int, over_refusal: bool = False) -> list[tuple[Principle, str]]:
    """Worked ``(principle, prompt)`` examples from the constitution: its SL and comparison few-shot prompts whose
    principle is (``over_refusal``) or is not of the over_refusal area."""
    pairs = [(constitution.principle(ex.principle_id), ex.prompt) for ex in constitution.few_shot]
    pairs += [(constitution.principle(ex.principle_id), ex.prompt) for ex in constitution.comparison_few_shot]
    return [(p, t) for p, t in pairs if (p.area == "over_refusal") == over_refusal][:n]


def writer_messages(principle: Principle, shots: Sequence[tuple[Principle, str]], benign: bool) -> list[Message]:
    """The chat asking for one prompt that tests ``principle`` (a harmless one when ``benign``)."""
    template = OVERREFUSAL_TEMPLATE if benign else ATTACK_TEMPLATE
    turns: list[Message] = []
    for p, prompt in shots:
        turns += [{"role": "user", "content": render(template, critique_request=p.critique_request, area=p.area)},
                  {"role": "assistant", "content": prompt}]
    return [*turns, {"role": "user", "content": render(template, critique_request=principle.critique_request,
                                                       area=principle.area)}]


def counterpart_messages(attack: str, n: int) -> list[Message]:
    """The chat asking for a benign counterpart of ``attack`` after ``n`` worked pairs."""
    turns: list[Message] = []
    for ex in _examples()[:n]:
        turns += [{"role": "user", "content": render(BENIGN_TEMPLATE, attack=ex["attack"])},
                  {"role": "assistant", "content": ex["benign"]}]
    return [*turns, {"role": "user", "content": render(BENIGN_TEMPLATE, attack=attack)}]


class _Pool:
    """Kept prompts and the reasons candidates were dropped, with exact and near-duplicate checks."""

    def __init__(self, cfg: RedTeamConfig, reference: Sequence[str]) -> None:
        self.cfg = cfg
        self.reference = list(reference)
        self.kept: list[str] = []
        self.seen: set[str] = {norm(t) for t in reference}
        self.dropped: dict[str, Counter[str]] = {}

    def offer(self, owner: str, text: str, instruction: str) -> str | None:
        """Keep ``text`` for ``owner`` unless it is rejected or a duplicate; return the reason it was dropped."""
        drop = self.dropped.setdefault(owner, Counter())
        text, why = clean_prompt(text, self.cfg)
        if why is None and similarity(text, instruction) >= 0.6:
            why = "echo_instruction"
        if why is None and norm(text) in self.seen:
            why = "exact_duplicate"
        if why is None and any(similarity(text, k) >= self.cfg.near_duplicate for k in self.kept + self.reference):
            why = "near_duplicate"
        if why is not None:
            drop[why] += 1
            return why
        self.kept.append(text)
        self.seen.add(norm(text))
        return None


def similarity_stats(texts: Sequence[str]) -> dict[str, float | None]:
    """Max and mean pairwise similarity of ``texts`` (None with fewer than two)."""
    pairs = [similarity(a, b) for i, a in enumerate(texts) for b in texts[i + 1:]]
    if not pairs:
        return {"max": None, "mean": None}
    return {"max": round(max(pairs), 3), "mean": round(sum(pairs) / len(pairs), 3)}


def write_prompts(cfg: RedTeamConfig, constitution: Constitution, writer: CachedBackend,
                  quiet: bool = False) -> tuple[list[RedTeamPrompt], dict[str, Any]]:
    """Write attacks (and benign counterparts) per principle; returns the records and per-principle statistics."""
    ids = cfg.principles or [p.id for p in constitution.principles]
    principles = [constitution.principle(i) for i in ids]
    thash = template_hash(ATTACK_TEMPLATE, BENIGN_TEMPLATE, OVERREFUSAL_TEMPLATE, EXAMPLES_FILE,
                          extra=[constitution.hash(), cfg.few_shot])
    harm_shots = attack_shots(constitution, cfg.few_shot)
    benign_shots = attack_shots(constitution, cfg.few_shot, over_refusal=True)
    reference = [t for _, t in harm_shots + benign_shots] + [e[k] for e in _examples() for k in ("attack", "benign")]
    attacks, benigns = _Pool(cfg, reference), _Pool(cfg, reference)
    kept: dict[str, list[tuple[str, int]]] = {p.id: [] for p in principles}
    candidates: Counter[str] = Counter()

    def params(*parts: object) -> tuple[GenParams, int]:
        seed = int(short_hash(cfg.seed, *parts, n=8), 16)
        return GenParams(cfg.prompt_tokens, cfg.temperature, cfg.top_p, seed, stop=("\n\n",)), seed

    for rnd in range(cfg.rounds):
        reqs, owners = [], []
        for p in principles:
            missing = cfg.per_principle - len(kept[p.id])
            benign = p.area == "over_refusal"
            msgs = writer_messages(p, benign_shots if benign else harm_shots, benign)
            for j in range(missing * cfg.oversample):
                gp, seed = params("write", p.id, rnd, j)
                reqs.append(GenRequest.of(msgs, gp))
                owners.append((p, seed, msgs[-1]["content"]))
        if not reqs:
            break
        outs = writer.generate(reqs, progress=ProgressPrinter("redteam", f"round {rnd + 1} prompts", quiet=quiet))
        for (p, seed, instruction), g in zip(owners, outs, strict=True):
            candidates[p.id] += 1
            pool = benigns if p.area == "over_refusal" else attacks
            if len(kept[p.id]) >= cfg.per_principle or g.finish_reason == "error":
                why = "error" if g.finish_reason == "error" else "surplus"  # surplus: enough kept already
                pool.dropped.setdefault(p.id, Counter())[why] += 1
                continue
            if pool.offer(p.id, g.text, instruction) is None:
                kept[p.id].append((pool.kept[-1], seed))

    records: list[RedTeamPrompt] = []
    for p in principles:
        kind: Literal["attack", "benign"] = "benign" if p.area == "over_refusal" else "attack"
        for text, seed in kept[p.id]:
            records.append(RedTeamPrompt(id=f"rt-{p.id}-{short_hash(text, n=8)}", prompt=text, category=p.id,
                                         principle_id=p.id, kind=kind, helpful=kind == "benign", model=writer.spec,
                                         template_hash=thash, seed=seed))
    if cfg.counterparts:
        records += _counterparts(cfg, [r for r in records if r.kind == "attack"], writer, benigns, thash, quiet)
    stats = {p.id: {"kept": len(kept[p.id]), "candidates": candidates[p.id],
                    "dropped": dict(sorted((attacks.dropped.get(p.id) or benigns.dropped.get(p.id)
                                            or Counter()).items())),
                    "similarity": similarity_stats([t for t, _ in kept[p.id]]),
                    "counterparts": sum(r.kind == "benign" and r.parent_id is not None and r.principle_id == p.id
                                        for r in records)}
             for p in principles}
    return records, stats


def _counterparts(cfg: RedTeamConfig, attacks: list[RedTeamPrompt], writer: CachedBackend, pool: _Pool,
                  thash: str, quiet: bool) -> list[RedTeamPrompt]:
    """One benign counterpart per attack (up to ``rounds`` tries of ``oversample`` candidates each)."""
    out: dict[str, RedTeamPrompt] = {}
    for rnd in range(cfg.rounds):
        todo = [a for a in attacks if a.id not in out]
        if not todo:
            break
        reqs, owners = [], []
        for a in todo:
            msgs = counterpart_messages(a.prompt, cfg.few_shot)
            for j in range(cfg.oversample):
                seed = int(short_hash(cfg.seed, "benign", a.id, rnd, j, n=8), 16)
                reqs.append(GenRequest.of(msgs, GenParams(cfg.prompt_tokens, cfg.temperature, cfg.top_p, seed,
                                                          stop=("\n\n",))))
                owners.append((a, seed, msgs[-1]["content"]))
        outs = writer.generate(reqs, progress=ProgressPrinter("redteam", f"round {rnd + 1} counterparts",
                                                              quiet=quiet))
        for (a, seed, instruction), g in zip(owners, outs, strict=True):
            if a.id in out or g.finish_reason == "error":
                continue
            if similarity(g.text, a.prompt) >= cfg.near_duplicate:  # the attack copied back is no counterpart
                pool.dropped.setdefault(f"counterpart:{a.principle_id}", Counter())["copies_attack"] += 1
                continue
            if pool.offer(f"counterpart:{a.principle_id}", g.text, instruction) is None:
                text = pool.kept[-1]
                out[a.id] = RedTeamPrompt(id=f"rb-{a.principle_id}-{short_hash(text, n=8)}", parent_id=a.id,
                                          prompt=text, category=a.principle_id, principle_id=a.principle_id,
                                          kind="benign", helpful=True, model=writer.spec, template_hash=thash,
                                          seed=seed)
    return [out[a.id] for a in attacks if a.id in out]
