"""``charter report RUN``: one self-contained HTML file (``RUN/report.html``) to open with no server.

It reads the evaluation (``RUN/eval/summary.json``, ``answers.jsonl``, ``eval.jsonl``) and the SL stage's
critique chains (``RUN/critiques.jsonl``) — whichever exist — and renders ``report.html.jinja`` with plots
drawn as inline SVG (:mod:`.svg`). No script, font or style is fetched from anywhere; a few lines of inline
JavaScript only filter the transcripts.
"""

from __future__ import annotations

import json
from collections import defaultdict
from importlib import resources
from pathlib import Path
from typing import Any

from charter.errors import ConfigError
from charter.records import CritiqueChain, EvalAnswer, Judgement, read_jsonl
from charter.report import svg
from charter.report.svg import Interval

TEMPLATE = "report.html.jinja"
HARM_LABELS = ("0 not harmful", "1 slight", "2 moderate", "3 very", "4 severe")
REFUSAL_SHORT = {"full_compliance": "complies", "full_refusal": "refuses",
                 "partial_refusal": "partly refuses"}


def _iv(d: dict[str, Any] | None, key: str = "value") -> Interval | None:
    """An Interval from a summary figure ``{"value"/"elo"/"diff", "ci": [lo, hi]}``; None when missing."""
    if not d or d.get(key) is None:
        return None
    lo, hi = (d.get("ci") or [None, None])[:2]
    return Interval(float(d[key]), lo, hi)


def _charts(s: dict[str, Any], names: list[str]) -> dict[str, str]:
    """Every plot of the report as SVG markup, keyed by name (missing data → no entry)."""
    charts: dict[str, str] = {}
    elo = s.get("elo", {})
    if elo:
        pts = []
        for n in names:
            x = _iv(elo.get("helpful", {}).get("ratings", {}).get(n), "elo") or Interval(1000.0)
            y = _iv(elo.get("harmless", {}).get("ratings", {}).get(n), "elo") or Interval(1000.0)
            pts.append((n, x, y))
        charts["elo"] = svg.elo_scatter(pts, "helpfulness Elo (safe prompts) →",
                                        "harmlessness Elo (harmful prompts) →",
                                        "Harmlessness vs helpfulness Elo with 95% bootstrap intervals")
    order = ["red_team/harmful", "benign/harmful", "red_team/safe", "benign/safe"]
    slices = sorted(s.get("slices", {}), key=lambda k: order.index(k) if k in order else 99)
    for key, title in (("string-match", "string match"), ("ai", "AI judge")):
        series = [(n, [_iv(s["models"][n]["refusal"][key].get(sl, {}).get("rate")) for sl in slices])
                  for n in names]
        if any(v is not None for _, vs in series for v in vs):
            charts[f"refusal_{key}"] = svg.hbars(
                [s["slices"][sl] for sl in slices], series,
                f"Refusal rate by prompt group ({title}), 95% Wilson intervals", f"refusal-{key}",
                label_width=300)
    rows = []
    for n in names:
        for g in ("harmful", "safe"):
            h = s["models"][n]["harm"].get(g)
            if h:
                rows.append((f"{n} · {g} prompts", [h["dist"][str(k)] for k in range(5)]))
    if rows and any(sum(c) for _, c in rows):
        charts["harm_dist"] = svg.stacked_dist(rows, HARM_LABELS, "Harm score distribution (0–4)",
                                               "harm-dist",
                                               label_width=200)
    dot_rows = [(f"{n} · {g} prompts", _iv(s["models"][n]["harm"].get(g, {}).get("mean")), i)
                for i, n in enumerate(names) for g in ("harmful", "safe") if s["models"][n]["harm"].get(g)]
    if any(r[1] is not None for r in dot_rows):
        charts["harm_mean"] = svg.dots(dot_rows,
                                       "Mean harm score (expected value under the judge), 95% bootstrap "
                                                 "intervals", "harm-mean", label_width=200, zero_line=False)
    pids = [p for p in s.get("principles", {})
            if any((s["models"][n]["principles"].get(p) or {}).get("k") for n in names)]
    if pids:
        series = [(n, [_iv(s["models"][n]["principles"].get(p)) for p in pids]) for n in names]
        top = max((iv.hi or iv.value) for _, vs in series for iv in vs if iv is not None)
        charts["principles"] = svg.hbars(pids, series, "Share of answers flagged as breaking each principle",
                                         "principles", xmax=min(1.0, max(0.05, top * 1.15)), label_width=180)
    pm_rows = [(f"{n} · {g} prompts", _iv(s["models"][n]["pm"].get(g)), i)
               for i, n in enumerate(names) for g in ("harmful", "safe") if s["models"][n]["pm"].get(g)]
    if pm_rows:
        charts["pm"] = svg.dots(pm_rows, "Mean preference-model score, 95% bootstrap intervals", "pm",
                                label_width=200)
    return charts


def _transcripts(answers: list[EvalAnswer], judgements: list[Judgement], s: dict[str, Any],
                 names: list[str]) -> list[dict[str, Any]]:
    """One entry per prompt: the prompt and every model's answer with its verdicts and comparisons."""
    primary = (s.get("primary_judge") or {}) if s else {}
    per_answer: dict[str, dict[str, Any]] = defaultdict(lambda: {
        "principles": [], "harm": None, "harm_value": None, "refusal_ai": None, "refusal_match": None,
        "pm": None})
    comparisons: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for j in judgements:
        if not j.answer_ids:
            continue
        aid = j.answer_ids[0]
        if j.kind == "harm" and j.judge == primary.get("harm"):
            per_answer[aid]["harm"] = j.label
            per_answer[aid]["harm_value"] = j.value
        elif j.kind == "refusal" and j.judge == primary.get("refusal"):
            per_answer[aid]["refusal_ai"] = REFUSAL_SHORT.get(j.label or "", "unclear")
        elif j.kind == "refusal_match":
            per_answer[aid]["refusal_match"] = REFUSAL_SHORT.get(j.label or "", "?")
        elif j.kind == "principle" and j.judge == primary.get("principle") and j.label == "Yes":
            per_answer[aid]["principles"].append(j.axis)
        elif j.kind == "pm":
            per_answer[aid]["pm"] = j.value
        elif j.kind == "compare":
            comparisons[j.prompt_id].append({"axis": j.axis, "judge": j.judge, "models": j.model_names,
                                             "winner": j.label, "p": j.value, "status": j.status})
    colours = {n: svg.colour(i) for i, n in enumerate(names)}
    by_prompt: dict[str, dict[str, Any]] = {}
    for a in answers:
        key = f"{a.prompt_set}/{a.group}"
        entry = by_prompt.setdefault(a.parent_id or a.prompt.id, {
            "id": a.parent_id, "text": a.prompt.text, "context": a.prompt.context, "slice": key,
            "slice_name": (s.get("slices") or {}).get(key, key),
            "category": a.prompt.category, "answers": [],
            "comparisons": comparisons.get(a.parent_id or "", [])})
        entry["answers"].append({"model": a.model_name, "colour": colours.get(a.model_name, "#777"),
                                 "text": a.text,
                                 "status": a.status, "finish": a.finish_reason, **per_answer[a.id]})
    out = list(by_prompt.values())
    for e in out:
        e["answers"].sort(key=lambda x: names.index(x["model"]) if x["model"] in names else 99)
        harms = [x.get("harm") for x in e["answers"] if x.get("harm") is not None]
        e["max_harm"] = max((_harm_number(h) for h in harms), default=None)
        e["disagree"] = len({x.get("refusal_match") for x in e["answers"]}) > 1
    return out


def _harm_number(label: str) -> int:
    """A harm verdict on the 0-4 scale: a score as it is; on the yes-no scale Yes is 2 (harmful), No is 0."""
    return int(label) if label.isdigit() else (2 if label == "Yes" else 0)


def _chains(path: Path, limit: int) -> tuple[list[dict[str, Any]], int]:
    if not path.is_file():
        return [], 0
    chains = read_jsonl(path, CritiqueChain)
    out = []
    for c in chains[:limit]:
        out.append({"prompt": c.prompt.text, "context": c.prompt.context, "accepted": c.accepted,
                    "reason": c.reason,
                    "helpful": c.prompt.helpful, "category": c.prompt.category,
                    "steps": [{"kind": st.kind, "round": st.round, "principle": st.principle_id,
                               "text": st.text,
                               "status": st.status, "finish": st.finish_reason,
                               "final": st.id == c.final_id} for st in c.steps]})
    return out, len(chains)


def build_report(run: Path, out: Path | None = None, max_chains: int = 400) -> Path:
    """Render ``RUN/report.html`` from whatever the run folder holds; returns the file written.

    Raises:
        ConfigError: the folder does not exist, or holds neither an evaluation nor critique chains.
    """
    import jinja2

    run = Path(run)
    if not run.is_dir():
        raise ConfigError(f"run folder {run} not found", "pass the folder given to `charter run --out` or "
                                                         "`charter eval --out`")
    ev = run / "eval"
    summary: dict[str, Any] = json.loads((ev / "summary.json").read_text()) \
        if (ev / "summary.json").is_file() \
        else {}
    answers = read_jsonl(ev / "answers.jsonl", EvalAnswer) if (ev / "answers.jsonl").is_file() else []
    judgements = read_jsonl(ev / "eval.jsonl", Judgement) if (ev / "eval.jsonl").is_file() else []
    chains, n_chains = _chains(run / "critiques.jsonl", max_chains)
    has_oversight = (run / "oversight" / "results.jsonl").is_file()
    if not summary and not chains and not has_oversight and not (run / "audit.json").is_file():
        raise ConfigError(f"{run} has no evaluation (eval/summary.json), no critique chains "
                          "(critiques.jsonl) and no oversight results (oversight/results.jsonl)",
                          "run `charter eval --out RUN ...`, `charter run` or `charter oversight` first")
    names = [n for n in summary.get("model_specs", {}) if summary["models"][n]["answers"]]
    manifest = json.loads((run / "manifest.json").read_text()) if (run / "manifest.json").is_file() else {}
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True,
                             lstrip_blocks=True)
    env.filters["pct"] = lambda v: "–" if v is None else f"{v:.0%}"
    env.filters["num"] = lambda v, d=2: "–" if v is None else f"{v:.{d}f}"
    source = resources.files("charter").joinpath("data", "templates", TEMPLATE).read_text(encoding="utf-8")
    audit_html = _audit_section(run / "audit.json", env)  # issue 15: RUN/audit.json, when the run has one
    from charter.report.oversight import render_section

    html = env.from_string(source).render(
        oversight=render_section(env, run) if has_oversight else None,
        run_name=run.resolve().name, run_path=str(run.resolve()), manifest=manifest, s=summary, names=names,
        all_names=list(summary.get("model_specs", {})), colours=_colours(summary),
        charts={k: _markup(v) for k, v in (_charts(summary, names).items() if summary else [])},
        transcripts=_transcripts(answers, judgements, summary, names) if answers else [],
        chains=chains, n_chains=n_chains, max_chains=max_chains, audit_html=audit_html)
    target = out or run / "report.html"
    target.write_text(html, encoding="utf-8")
    return target


def _audit_section(path: Path, env: Any) -> Any:
    """The data-audit section (``report_audit.html.jinja``) rendered from ``audit.json``; '' when there is none."""
    if not path.is_file():
        return ""
    source = resources.files("charter").joinpath("data", "templates", "report_audit.html.jinja")
    return _markup(env.from_string(source.read_text(encoding="utf-8")).render(
        audit=json.loads(path.read_text(encoding="utf-8"))))


def _colours(summary: dict[str, Any]) -> dict[str, str]:
    """One colour per model that answered, in order (the same in every chart); grey for failed models."""
    names = [n for n in summary.get("model_specs", {}) if summary["models"][n]["answers"]]
    out = {n: svg.colour(i) for i, n in enumerate(names)}
    return {n: out.get(n, "#999") for n in summary.get("model_specs", {})}


def _markup(svg_text: str) -> Any:
    from markupsafe import Markup

    return Markup(svg_text)  # built by charter.report.svg, which escapes every piece of text it draws
