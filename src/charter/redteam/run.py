"""``charter redteam``: write prompts per principle, attack the targets, report, and write each target's failures.

Files in the output folder: ``prompts.jsonl`` (every written prompt: a prompt file), ``answers-NAME.jsonl`` (each
target's answers with both verdicts), ``failures-NAME.jsonl`` (the attacks that broke it: a prompt file for
``charter run CFG --set prompts.red_team=FILE``), ``results.json`` (statistics, ASR and refusal rates with intervals,
the judge's agreement with hand labels), ``calls.sqlite`` (the call cache: a killed run resumes).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from charter.errors import ConfigError
from charter.records import read_jsonl, write_jsonl
from charter.redteam.attack import answer_prompts, failures, judge_agreement, open_target, summarise
from charter.redteam.generate import RedTeamConfig, RedTeamPrompt, write_prompts
from charter.store import CachedBackend, RunDir


def _fmt(r: dict[str, Any]) -> str:
    if r["value"] is None:
        return "—"
    lo, hi = r["ci"]
    return f"{r['value']:.2f} [{lo:.2f},{hi:.2f}] n={r['n']}"


def table(results: dict[str, dict[str, Any]]) -> str:
    """The ASR / benign-refusal table: one block per target, a row per principle and one for all."""
    head = f"{'target':<10} {'principle':<20} {'ASR (string)':<24} {'ASR (judge)':<24} " \
           f"{'benign refusal (string)':<24} {'benign refusal (judge)':<24}"
    lines = [head, "-" * len(head)]
    for name, res in results.items():
        rows = [*res["principles"].items(), ("ALL", res["overall"])]
        for pid, b in rows:
            lines.append(f"{name:<10} {pid:<20} {_fmt(b['asr_string']):<24} {_fmt(b['asr_judge']):<24} "
                         f"{_fmt(b['benign_refusal_string']):<24} {_fmt(b['benign_refusal_judge']):<24}")
    return "\n".join(lines)


def _load_prompts(path: str) -> list[RedTeamPrompt]:
    p = Path(path)
    try:
        return list(read_jsonl(p, RedTeamPrompt))
    except ConfigError:
        from charter.prompts import load_prompts

        loaded = load_prompts(p)  # any prompt file: its prompts are attacks, its category the principle
        return [RedTeamPrompt(id=q.id, prompt=q.text, category=q.category or "overall_harm",
                              principle_id=q.category or "overall_harm", kind="benign" if q.helpful else "attack",
                              helpful=q.helpful, model="file", template_hash="", seed=0) for q in loaded]


def redteam_command(feedback: str, constitution: str | None, out: str, per_principle: int, principles: str | None,
                    targets: list[str], judge: str | None, prompts: str | None, sets: list[str],
                    quiet: bool = False) -> str:
    """Run ``charter redteam`` and return what it prints."""
    from charter.backends import BackendOptions, load_backend
    from charter.constitution import load_constitution
    from charter.settings import apply_overrides

    data: dict[str, Any] = {"per_principle": per_principle}
    if principles:
        data["principles"] = [s.strip() for s in principles.split(",") if s.strip()]
    apply_overrides(data, sets)
    try:
        cfg = RedTeamConfig.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        raise ConfigError(f"redteam settings: {'.'.join(str(x) for x in err['loc'])}: {err['msg']}",
                          "see charter.redteam.generate.RedTeamConfig for the fields") from None
    named = []
    for t in targets:
        name, sep, spec = t.partition("=")
        if not sep or not name or not spec:
            raise ConfigError(f"--target {t!r} is not NAME=SPEC", "write e.g. --target base=transformers/embedded")
        named.append((name, spec))
    const = load_constitution(constitution)
    run = RunDir(Path(out))
    options = BackendOptions(threads=cfg.threads)
    fb = CachedBackend(load_backend(feedback, options, lazy=True), run.cache)
    lines: list[str] = []
    if prompts:
        records = _load_prompts(prompts)
        stats: dict[str, Any] = {"source": prompts}
    else:
        records, stats = write_prompts(cfg, const, fb, quiet)
    write_jsonl(run.file("prompts.jsonl"), records)
    attacks = sum(r.kind == "attack" for r in records)
    lines.append(f"{len(records)} prompts ({attacks} attacks, {len(records) - attacks} benign) in "
                 f"{run.file('prompts.jsonl')}")
    if not prompts:
        for pid, s in stats.items():
            sim = s["similarity"]
            lines.append(f"  {pid:<20} kept {s['kept']}/{cfg.per_principle} of {s['candidates']} candidates, "
                         f"{s['counterparts']} counterparts; max similarity {sim['max']}, mean {sim['mean']}; "
                         f"dropped {s['dropped']}")
    judge_backend = fb if judge is None or judge == feedback else CachedBackend(
        load_backend(judge, options, lazy=True), run.cache)
    results: dict[str, Any] = {}
    agreement = judge_agreement(judge_backend, quiet) if named else None
    by_id = {r.id: r for r in records}
    for name, spec in named:
        target = open_target(name, spec, run, options)
        try:
            answers = answer_prompts(cfg, const, target, judge_backend, records, quiet)
        finally:
            target.close()
        write_jsonl(run.file(f"answers-{name}.jsonl"), answers)
        broke = failures(cfg, answers, by_id)
        write_jsonl(run.file(f"failures-{name}.jsonl"), broke)
        results[name] = {**summarise(cfg, answers), "spec": spec, "failures": len(broke),
                         "failures_file": str(run.file(f"failures-{name}.jsonl"))}
        lines.append(f"{name}: {len(broke)} attacks broke it ({cfg.failure_criterion} criterion) → "
                     f"{run.file(f'failures-{name}.jsonl')}  (charter run CFG --set prompts.red_team=FILE)")
    summary = {"config": cfg.model_dump(mode="json"), "constitution": const.hash(), "writer": feedback,
               "prompts": {"total": len(records), "attacks": attacks}, "generation": stats, "targets": results,
               "judge_agreement": agreement}
    run.file("results.json").write_text(json.dumps(summary, indent=2, default=str))
    if results:
        assert agreement is not None
        j, s = agreement["judge"], agreement["string_match"]
        lines.append(f"judge {j['model']} vs {agreement['examples']} hand labels: refusal accuracy "
                     f"{_num(j['accuracy_refusal'])}, 3-class kappa {_num(j['kappa_3class'])} ({j['unusable']} "
                     f"unusable); string match: accuracy {_num(s['accuracy_refusal'])}, "
                     f"kappa {_num(s['kappa_3class'])}")
        lines.append(table(results))
    lines.append(f"results in {run.file('results.json')}")
    return "\n".join(lines)


def _num(x: float | None) -> str:
    return "—" if x is None else f"{x:.2f}"
