"""``charter eval``: answer red-team and benign prompts with every model, judge the answers, compare models.

Steps, each resumable through the run's call cache (a killed evaluation re-does no finished model call):

1. every model answers every prompt (greedy); a model that fails to load or answer is recorded and skipped;
2. refusal class of every answer by string matching;
3. each judge: a 0–4 harm score and the XSTest refusal class of every answer, then "does it break principle
   P?" for the answers the judges rated harmful (and the over-refusal principles for refusals of safe
   prompts); several judges are majority-voted;
4. each judge compares every pair of models on every prompt, both orders: harmlessness on harmful prompts,
   helpfulness on safe ones → Elo with bootstrap intervals;
5. judge honesty (:mod:`.honesty`): each judge on human-labelled HH pairs and on hand-labelled refusals;
6. optionally a reward model (``pm_judge``) scores every answer and the human pairs.

Outputs in ``RUN/eval/``: ``answers.jsonl`` (:class:`~charter.records.EvalAnswer`), ``eval.jsonl`` (every
:class:`~charter.records.Judgement`), ``summary.json`` (every figure; see :mod:`.summary`) and
``config.yaml``. :func:`run_eval` is what ``charter run`` calls at the end of the pipeline.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import yaml

from charter.constitution import load_constitution
from charter.errors import CharterError
from charter.evaluation import compare as cmp
from charter.evaluation import honesty
from charter.evaluation.judge import Reading, harm_choice, helpful_choice, principle_choice
from charter.evaluation.refusal import (
    classify_refusal,
    is_refusal,
    refusal_choice,
    refusal_is_harmless,
    refusal_is_unhelpful,
    refuses,
)
from charter.evaluation.session import (
    EvalConfig,
    EvalSession,
    Group,
    harm_value,
    model_failure,
    refusal_label,
    refusal_value,
)
from charter.evaluation.summary import one_score_share, self_grading_warnings, summarize
from charter.prompts import default_prompts, load_prompts
from charter.records import Judgement, LabeledPair, Prompt, short_hash, write_jsonl
from charter.splits import select as select_split
from charter.store import CachedBackend, RunDir, now_iso

__all__ = ["EvalConfig", "load_eval_prompts", "run_eval"]


def _group(p: Prompt, prompt_set: str) -> Group:
    cat = p.category.lower()
    if cat.startswith("xstest:"):
        return "harmful" if cat.split(":")[1] == "unsafe" else "safe"
    if prompt_set == "red_team":
        return "safe" if p.helpful or cat in ("safe", "helpful", "benign") else "harmful"
    return "harmful" if cat in ("harmful", "unsafe") else "safe"


def load_eval_prompts(cfg: EvalConfig) -> list[tuple[Prompt, str, Group]]:
    """``(prompt, prompt_set, group)`` for the red-team and benign sets; prompt ids become ``SET:ID``."""
    out: list[tuple[Prompt, str, Group]] = []
    for name, path in (("red_team", cfg.red_team), ("benign", cfg.benign)):
        if path is None:
            prompts = default_prompts("red_team" if name == "red_team" else "helpful").prompts
        else:
            prompts = select_split(load_prompts(path, field=cfg.field).prompts, cfg.split, path)
        limit = (cfg.red_team_limit if name == "red_team" else cfg.benign_limit) or cfg.limit
        if limit and len(prompts) > limit:  # evenly spaced: a slice covers the whole file
            prompts = [prompts[k * len(prompts) // limit] for k in range(limit)]
        out += [(p.model_copy(update={"id": f"{name}:{p.id}"}), name, _group(p, name)) for p in prompts]
    return out


def training_labellers(models: dict[str, str]) -> dict[str, list[str]]:
    """For each model under test that a charter run trained (a local folder ``RUN/STAGE/model``), the feedback
    models that wrote the critiques, revisions and preference labels of that run (``RUN/critiques.jsonl``,
    ``RUN/preferences.jsonl``): the labellers whose judgement the model was trained to match."""
    from charter.backends import split_spec

    out: dict[str, list[str]] = {}
    for name, spec in models.items():
        try:
            provider, rest = split_spec(spec)
        except CharterError:
            continue
        folder = Path(rest).expanduser()
        if provider not in ("transformers", "vllm") or not folder.is_dir():
            continue
        root = folder.resolve().parent.parent
        found: set[str] = set()
        for line in _lines(root / "critiques.jsonl"):
            found.update(str(st.get("model") or "") for st in line.get("steps", [])
                         if st.get("kind") in ("critique", "revision"))
        for line in _lines(root / "preferences.jsonl"):
            found.add(str(line.get("feedback_model") or ""))
        found.discard("")
        if found:
            out[name] = sorted(found)
    return out


def _lines(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a JSONL file (none when it is missing or unreadable)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return []
    rows = []
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def run_eval(cfg: EvalConfig, run: RunDir, models: dict[str, str], quiet: bool = False) -> dict[str, Any]:
    """Evaluate ``models`` (``{name: backend spec}``, the first is the reference, e.g. the base model) and
    write ``RUN/eval/{answers.jsonl, eval.jsonl, summary.json, config.yaml}``. Returns the summary.

    Failures of single models or judges are recorded in the summary and do not stop the run.

    Raises:
        ConfigError: a prompt file or the constitution cannot be read (nothing can be evaluated).
    """
    start = time.time()
    ev = EvalSession(cfg, run, models, quiet)
    prompts = load_eval_prompts(cfg)
    constitution = load_constitution(cfg.constitution)
    ev.log(f"{len(prompts)} prompts, models: {', '.join(models)}, judges: {', '.join(cfg.judges) or 'none'}")
    ev.extra["labellers"] = training_labellers(models)
    for warning in self_grading_warnings(cfg.judges, ev.extra["labellers"]):
        ev.log(f"WARNING: {warning}")
    ev.answer(prompts)
    answers = ev.ok_answers()
    for a in answers:
        ev.judgements.append(Judgement(
            id=f"j-{short_hash('refusal_match', a.id)}", parent_id=a.id, kind="refusal_match",
            judge="string-match", prompt_id=a.parent_id or "", group=a.group, model_names=[a.model_name],
            answer_ids=[a.id], label=classify_refusal(a.text)))

    judges: dict[str, CachedBackend] = {}
    for spec in cfg.judges:
        try:
            judges[spec] = ev.backend(spec)
        except Exception as e:
            if not model_failure(e):
                raise
            ev.fail("load judge", spec, e)
    pairs = honesty.load_human_pairs(ev)
    if judges and answers:
        harm = ev.verdicts(judges, "harm", [(a, None) for a in answers if a.group in cfg.harm_groups],
                           partial(harm_choice, scale=cfg.harm_scale), harm_value, lambda r: r.label, "harm scores",
                           known=(lambda a: refusal_is_harmless(a.text)) if cfg.harm_skip_refusals else None)
        if cfg.helpful_check:
            ev.verdicts(judges, "helpful", [(a, None) for a in answers if a.group == "safe"], helpful_choice,
                        lambda r: r.probs.get("Yes") if r.ok else None, lambda r: r.label, "helpfulness",
                        known=(lambda a: refusal_is_unhelpful(a.text)) if cfg.harm_skip_refusals else None)
        refusal: dict[str, Reading] = {}
        if cfg.ai_refusal:
            refusal = ev.verdicts(judges, "refusal", [(a, None) for a in answers], refusal_choice,
                                  refusal_value, refusal_label, "refusal classes")
        same = one_score_share(Counter(str(h.label) for h in harm.values() if h.ok)) is not None
        if cfg.principle_check == "flagged" and same:
            ev.fail("principle checks", "harm judge", "skipped: the harm judge gave nearly every answer the same "
                    "score, so it cannot pick out harmful answers (set principle_check=all to check anyway)")
        elif cfg.principle_check != "none":
            items = []
            for a in answers:
                h = harm.get(f"{a.id}|", Reading(None, status="not_asked"))
                refused = refuses(a.text)
                if refusal:
                    refused = refused or bool(is_refusal(refusal_label(refusal[f"{a.id}|"])))
                for p in constitution.principles:
                    over = p.area == "over_refusal"
                    if cfg.principle_check == "all" or (over and a.group == "safe" and refused) or (
                            not over and h.ok and (h.label == "Yes" or (h.label or "0").isdigit()
                                                   and int(h.label or 0) >= cfg.flag_min_harm)):
                        items.append((a, p))
            ev.verdicts(judges, "principle", items, principle_choice,
                        lambda r: r.probs.get("Yes") if r.ok else None, lambda r: r.label, "principle checks")
        if cfg.compare and len(ev.answers) > 1:
            _compare(ev, judges, prompts)
        if pairs:
            honesty.human_checks(ev, judges, pairs)
    if judges and cfg.hand_labels:
        honesty.hand_checks(ev, judges)
    honesty.refusal_examples(ev, judges)
    if cfg.pm_judge:
        honesty.pm_judge(ev, pairs)

    out = run.file("eval")
    out.mkdir(parents=True, exist_ok=True)
    all_answers = [a for per in ev.answers.values() for a in per.values()]
    write_jsonl(out / "answers.jsonl", all_answers)
    write_jsonl(out / "eval.jsonl", ev.judgements)
    dump = {"models": models, **cfg.model_dump(mode="json")}
    (out / "config.yaml").write_text(yaml.safe_dump(dump, sort_keys=False))
    summary = summarize(cfg, models, all_answers, ev.judgements, ev.failures, ev.extra, constitution)
    summary["elapsed_s"] = round(time.time() - start, 1)
    summary["finished"] = now_iso()
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    run.update_manifest(stages={"eval": {
        "finished": summary["finished"], "models": models, "judges": cfg.judges, "answers": len(all_answers),
        "judgements": len(ev.judgements), "failures": len(ev.failures)}})
    ev.log(f"wrote {out}/summary.json ({len(ev.judgements)} judgements, {len(ev.failures)} failures)")
    return summary


def _compare(ev: EvalSession, judges: dict[str, CachedBackend],
             prompts: Sequence[tuple[Prompt, str, Group]]) -> None:
    """Pairwise comparisons per axis: harmlessness on harmful prompts, helpfulness on safe prompts."""
    names = list(ev.answers)
    for axis, group in (("harmless", "harmful"), ("helpful", "safe")):
        if axis not in ev.cfg.compare_axes:
            continue
        chosen = [p for p, _, g in prompts if g == group]
        limit = ev.cfg.compare_limit
        if limit and len(chosen) > limit:  # evenly spaced, like the prompt limit
            chosen = [chosen[k * len(chosen) // limit] for k in range(limit)]
        pairs = cmp.model_pairs(ev.answers, chosen, names)
        if not pairs:
            continue
        who = {p.id: tuple(p.model.split(" vs ")) for p in pairs}
        per_judge: list[list[LabeledPair]] = []
        for spec, judge in judges.items():
            try:
                labeled = cmp.judge_pairs(judge, pairs, axis, ev.cfg.judge_mode, ev.cfg.min_option_mass,
                                          ev.cfg.max_answer_chars,
                                          progress=ev.progress(f"compare {axis} ({len(pairs)} pairs x 2 orders) "
                                                               f"by {spec}"))
            except Exception as e:
                if not model_failure(e):
                    raise
                ev.fail(f"compare {axis}", spec, e)
                continue
            per_judge.append(labeled)
            ev.extra["compare"].setdefault(spec, {})[axis] = cmp.pair_stats(labeled)
            for x in labeled:
                honesty.compare_record(ev, "compare", spec, x, axis, group, list(who[x.pair.id]))
        mean = cmp.mean_over_judges(per_judge)
        ev.extra.setdefault("outcomes", {})[axis] = [
            {"i": who[p.id][0], "j": who[p.id][1], "score": mean[p.id], "cluster": p.parent_id}
            for p in pairs if p.id in mean]
