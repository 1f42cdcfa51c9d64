"""Judge honesty: every judge checked against labels a human gave, so the report can say which to trust.

* pairwise judge and harm judge on HH-RLHF ``chosen``/``rejected`` pairs (the human preferred ``chosen`` as
  less harmful): does the judge pick it, does the harm score rank it lower;
* the AI refusal classifier and the string matcher on charter's hand-labelled refusal examples (held out from the
  matcher's rules; its development set is scored too, and shown as such);
* the preference-model judge (a reward model) on the same human pairs, and its score for every answer.

Position bias, order consistency and length preference come with every pairwise run (:mod:`.compare`).
"""

from __future__ import annotations

from typing import Any, Literal

from charter.errors import CharterError
from charter.evaluation import compare as cmp
from charter.evaluation.judge import ask, harm_choice, judge_hash
from charter.evaluation.refusal import classify_refusal, heldout_examples, labelled_examples, refusal_choice
from charter.evaluation.session import EvalSession, cut, harm_value, model_failure, refusal_label, refusal_value
from charter.records import AnswerPair, Judgement, LabeledPair, short_hash
from charter.store import CachedBackend


def compare_record(ev: EvalSession, kind: Any, spec: str, x: LabeledPair, axis: str, group: str,
                   names: list[str], reference: str | None = None) -> None:
    """Add the judgement of one two-order comparison (``value`` = P(first better))."""
    vote = x.votes[0] if x.votes else None
    winner = None if x.p_a is None else ("tie" if x.p_a == 0.5 else names[0] if x.p_a > 0.5 else names[1])
    ev.judgements.append(Judgement(
        id=f"j-{short_hash(kind, spec, x.pair.id, axis)}", parent_id=x.pair.a_id, kind=kind, judge=spec,
        prompt_id=x.pair.parent_id or "", group=group, model_names=names,
        answer_ids=[x.pair.a_id, x.pair.b_id], axis=axis, label=winner, value=x.p_a,
        probs={"ab": vote.p_ab if vote else None, "ba": vote.p_ba if vote else None},
        option_mass=vote.option_mass if vote else None, reference=reference, template_hash=x.template_hash,
        status=x.status))


def load_human_pairs(ev: EvalSession) -> list[AnswerPair]:
    """The human-labelled pairs of the run (from ``human_file``, else the red-team file)."""
    path = ev.cfg.human_file or ev.cfg.red_team
    pairs = cmp.human_pairs(path, ev.cfg.human_pairs) if path and ev.cfg.human_pairs else []
    ev.extra["human"].update(pairs=len(pairs), file=path)
    return pairs


def human_checks(ev: EvalSession, judges: dict[str, CachedBackend], pairs: list[AnswerPair]) -> None:
    """Each judge on human-labelled pairs: pairwise (harmlessness) agreement and harm-score agreement."""
    cfg = ev.cfg
    for spec, judge in judges.items():
        try:
            labeled = cmp.judge_pairs(judge, pairs, "harmless", cfg.judge_mode, cfg.min_option_mass,
                                      cfg.max_answer_chars, progress=ev.progress(f"human-pair comparisons by {spec}"))
            choices = [harm_choice(p.prompt.messages(), cut(t, cfg.max_answer_chars), cfg.judge_mode)
                       for p in pairs for t in (p.a, p.b)]
            harms = ask(judge, choices, cfg.judge_mode, cfg.min_option_mass,
                        progress=ev.progress(f"human-pair harm scores by {spec}"))
        except Exception as e:
            if not model_failure(e):
                raise
            ev.fail("human-pair check", spec, e)
            continue
        ev.extra["compare"].setdefault(spec, {})["human"] = cmp.pair_stats(labeled)
        for x in labeled:
            compare_record(ev, "human_compare", spec, x, "harmless", "human", ["a", "b"], x.pair.human)
        for k, p in enumerate(pairs):
            ra, rb = harms[2 * k], harms[2 * k + 1]
            ha, hb = harm_value(ra), harm_value(rb)
            both = ha is not None and hb is not None
            ev.judgements.append(Judgement(
                id=f"j-{short_hash('human_harm', spec, p.id)}", parent_id=p.id, kind="human_harm", judge=spec,
                prompt_id=p.parent_id or "", group="human", model_names=["a", "b"],
                answer_ids=[p.a_id, p.b_id],
                label=("a" if ha < hb else "b" if hb < ha else "tie") if both else None,  # type: ignore[operator]
                value=hb - ha if both else None, probs={"harm_a": ha, "harm_b": hb},  # type: ignore[operator]
                reference=p.human, template_hash=judge_hash(),
                status=next((r.status for r in (ra, rb) if not r.ok), "ok")))


def load_hand_labels(path: str) -> list[dict[str, Any]]:
    """Hand-labelled answers: one JSON object per line with ``prompt``, ``answer`` and ``harmful`` and/or
    ``helpful`` (1 = yes, 0 = no, null = not labelled); other keys (model, explains, note) are kept."""
    import json
    from pathlib import Path

    from charter.errors import ConfigError

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: hand-label file not found", "set eval.hand_labels to a JSONL file, or to null")
    items = []
    for lineno, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{p}:{lineno}: not JSON ({e.msg})", "fix or remove that line") from None
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str) or not isinstance(
                row.get("answer"), str):
            raise ConfigError(f"{p}:{lineno}: needs 'prompt' and 'answer' text", "see bench/data/README.md")
        items.append({**row, "line": lineno})
    return items


def hand_checks(ev: EvalSession, judges: dict[str, CachedBackend]) -> None:
    """Each judge on the answers labelled by hand: its harm verdict (harmful = score >= 2) against ``harmful``,
    its helpfulness verdict against ``helpful``."""
    from functools import partial

    from charter.evaluation.judge import helpful_choice, is_harmful
    from charter.evaluation.refusal import refusal_is_harmless, refusal_is_unhelpful

    cfg = ev.cfg
    items = load_hand_labels(cfg.hand_labels or "")
    harm_items = [x for x in items if x.get("harmful") in (0, 1)]
    # helpfulness verdicts are checked only where the eval asks for them (helpful_check): a run that reads
    # helpfulness by hand need not pay for the judge's ~400 readings
    help_items = [x for x in items if x.get("helpful") in (0, 1)] if cfg.helpful_check else []
    for spec, judge in judges.items():
        checks: list[tuple[Literal["hand_harm", "hand_helpful"], list[dict[str, Any]], Any]] = [
            ("hand_harm", harm_items, partial(harm_choice, scale=cfg.harm_scale)),
            ("hand_helpful", help_items, helpful_choice)]
        for kind, sel, make in checks:
            if not sel:
                continue
            try:
                settle = refusal_is_harmless if kind == "hand_harm" else refusal_is_unhelpful
                settled = [settle(x["answer"]) if cfg.harm_skip_refusals else None for x in sel]
                todo = [x for x, r in zip(sel, settled, strict=True) if r is None]
                choices = [make([{"role": "user", "content": x["prompt"]}], cut(x["answer"], cfg.max_answer_chars),
                                cfg.judge_mode) for x in todo]
                asked = iter(ask(judge, choices, cfg.judge_mode, cfg.min_option_mass,
                                 progress=ev.progress(f"{kind.replace('_', ' ')} labels by {spec}")))
                readings = [r if r is not None else next(asked) for r in settled]
            except (CharterError, OSError) as e:
                ev.fail(f"{kind} check", spec, e)
                continue
            ref_key = "harmful" if kind == "hand_harm" else "helpful"
            for x, r in zip(sel, readings, strict=True):
                if kind == "hand_harm":
                    value = harm_value(r)
                    label = None if not r.ok else str(int(is_harmful(r.label)))
                else:
                    value = r.probs.get("Yes") if r.ok else None
                    label = None if not r.ok else str(int(r.label == "Yes"))
                ev.judgements.append(Judgement(
                    id=f"j-{short_hash(kind, spec, x['prompt'], x['answer'])}", kind=kind, judge=spec,
                    prompt_id=f"hand-{x['line']}", group="human", model_names=[str(x.get("model", ""))],
                    axis=f"prompt:{short_hash(x['prompt'])}",
                    label=label, value=value, probs=dict(r.probs), option_mass=r.option_mass,
                    reference=str(x[ref_key]), status=r.status))


def refusal_examples(ev: EvalSession, judges: dict[str, CachedBackend]) -> None:
    """The string matcher and each AI judge on the bundled hand-labelled refusal examples: the held-out set
    (``axis="heldout"``, where accuracy is measured) and the matcher's development set (``axis="dev"``)."""
    sets = [("heldout", heldout_examples()), ("dev", labelled_examples())]
    for axis, examples in sets:
        for k, ex in enumerate(examples):
            ev.judgements.append(Judgement(
                id=f"j-{short_hash('human_refusal_match', axis, k, ex['response'])}", kind="human_refusal_match",
                judge="string-match", prompt_id=f"refusal-{axis}-{k}", group="human", axis=axis,
                label=classify_refusal(ex["response"]), reference=ex["label"]))
    if not ev.cfg.ai_refusal:
        return
    items = [(axis, k, ex) for axis, examples in sets for k, ex in enumerate(examples)]
    for spec, judge in judges.items():
        try:
            choices = [refusal_choice([{"role": "user", "content": ex["prompt"]}], ex["response"],
                                      ev.cfg.judge_mode) for _, _, ex in items]
            readings = ask(judge, choices, ev.cfg.judge_mode, ev.cfg.min_option_mass,
                           progress=ev.progress(f"hand-labelled refusals by {spec}"))
        except Exception as e:
            if not model_failure(e):
                raise
            ev.fail("refusal examples", spec, e)
            continue
        for (axis, k, ex), r in zip(items, readings, strict=True):
            ev.judgements.append(Judgement(
                id=f"j-{short_hash('human_refusal', spec, axis, k, ex['response'])}", kind="human_refusal",
                judge=spec, prompt_id=f"refusal-{axis}-{k}", group="human", axis=axis, label=refusal_label(r),
                value=refusal_value(r), probs=dict(r.probs), option_mass=r.option_mass,
                reference=ex["label"], status=r.status))


def pm_judge(ev: EvalSession, pairs: list[AnswerPair]) -> None:
    """The preference-model judge: a reward for every answer and for both sides of the human pairs."""
    from charter.evaluation.pm import PreferenceModel

    spec = ev.cfg.pm_judge or ""
    answers = ev.ok_answers()
    try:
        pm = PreferenceModel(spec, batch_size=ev.cfg.batch_size, threads=ev.cfg.threads, cache=ev.run.cache)
        scores = pm.score([[*a.prompt.messages(), {"role": "assistant", "content": a.text}] for a in answers],
                          progress=ev.progress(f"preference-model scores by {spec}"))
        hs = pm.score([[*p.prompt.messages(), {"role": "assistant", "content": t}]
                       for p in pairs for t in (p.a, p.b)])
    except Exception as e:
        if not model_failure(e):
            raise
        ev.fail("preference-model judge", spec, e)
        return
    for a, s in zip(answers, scores, strict=True):
        ev.judgements.append(Judgement(
            id=f"j-{short_hash('pm', pm.model_id, a.id)}", parent_id=a.id, kind="pm", judge=pm.spec,
            prompt_id=a.parent_id or "", group=a.group, model_names=[a.model_name], answer_ids=[a.id],
            value=s))
    for k, p in enumerate(pairs):
        sa, sb = hs[2 * k], hs[2 * k + 1]
        ev.judgements.append(Judgement(
            id=f"j-{short_hash('human_pm', pm.model_id, p.id)}", parent_id=p.id, kind="human_pm",
            judge=pm.spec, prompt_id=p.parent_id or "", group="human", model_names=["a", "b"],
            answer_ids=[p.a_id, p.b_id], label="a" if sa > sb else "b" if sb > sa else "tie", value=sa - sb,
            probs={"score_a": sa, "score_b": sb}, reference=p.human))
