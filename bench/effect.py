"""Does charter change the model it aligns? Run a config end to end (or read a finished run) and print the figures.

    .venv/bin/python bench/effect.py --config examples/cpu-effect.yaml --out runs/cpu-effect   # run, then report
    .venv/bin/python bench/effect.py --run runs/cpu-effect                                      # report only

Every figure is on the evaluation part of ``../shared/data`` (``charter.splits``), which no stage of the run trains
on: XSTest ``unsafe`` prompts (should be refused; string-match classifier, full or partial refusal), XSTest ``safe``
prompts (should be answered), HH-RLHF red-team first turns (harmful answers, by the run's judge). Beside them:

* the judge's agreement with answers labelled by reading them (``bench/data/effect_hand_labels.jsonl``; the rule is
  in ``bench/data/README.md``), so the reader knows how far to trust the harmful and helpful rates;
* the hand-read figures where hand labels exist for the final model's answers: of its refusals on unsafe prompts, the
  share that say briefly why or offer a safe alternative; of its answers to safe prompts, the share that help;
* the share of the SFT targets taken by the most common sentence (a canned refusal), and the SL stage's revision
  acceptance rate;
* ten transcripts (prompt → base answer → final answer) drawn at random with a fixed seed.

The last line is one JSON object: minutes, unsafe_refusal, safe_over_refusal, harmful_rate, judge agreement,
helpful Elo delta, revisions_ok_rate, and the rest, each rate per model (base, sl, rl) with its 95% interval.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
HAND = ROOT / "bench" / "data" / "effect_hand_labels.jsonl"
NAMES = {"base": "base", "sl": "sl", "rl-dpo": "rl"}


def cpu_kind() -> str:
    """'AVX512-BF16' or 'AVX2-only' (or 'unknown'), from /proc/cpuinfo."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return "unknown"
    if {"avx512_bf16", "amx_bf16"} & flags:
        return "AVX512-BF16"
    return "AVX2-only" if "avx2" in flags else "unknown"


def run_config(config: Path, out: Path, sets: list[str]) -> float:
    """``charter run CONFIG --out OUT``; returns the wall minutes."""
    cmd = [sys.executable, "-m", "charter.cli", "run", str(config), "--out", str(out), "--transcripts", "0"]
    for s in sets:
        cmd += ["--set", s]
    start = time.monotonic()
    subprocess.run(cmd, cwd=ROOT, check=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    return (time.monotonic() - start) / 60


def _rate(row: dict[str, Any] | None) -> dict[str, Any] | None:
    if not row:
        return None
    out = {"value": None if row["value"] is None else round(row["value"], 4),
           "ci": [round(x, 4) for x in row["ci"]], "n": row["n"]}
    for key, diff in row.items():
        if key.startswith("vs_") and diff.get("value") is not None:
            out[key] = {"value": round(diff["value"], 4), "ci": [round(x, 4) for x in diff["ci"]]}
    return out


def per_model(effect: dict[str, Any], metric: str) -> dict[str, Any]:
    """``{base, sl, rl}`` → that model's rate with its CI (and its paired difference from base)."""
    rows = effect.get(metric, {})
    return {short: _rate(rows.get(name)) for name, short in NAMES.items() if name in rows}


def hand_figures(run: Path, final: str) -> dict[str, Any]:
    """The hand-read figures for the run's answers that have hand labels (matched by prompt and text; the labels of
    one answer drawn for several checks are merged)."""
    if not HAND.is_file():
        return {"labelled_file": None}
    labels: dict[tuple[str, str], dict[str, Any]] = {}
    for r in map(json.loads, HAND.read_text().splitlines()):
        merged = labels.setdefault((r["prompt"], r["answer"]), {})
        merged.update({k: v for k, v in r.items() if v is not None})
    answers = [json.loads(line) for line in (run / "eval" / "answers.jsonl").read_text().splitlines()]

    def labelled(model: str, key: str, keep: Any) -> list[dict[str, Any]]:
        """The labels of ``model``'s answers that ``keep`` selects and that have ``key`` set."""
        out = []
        for a in answers:
            lab = labels.get((a["prompt"]["text"], a["text"]))
            if a["model_name"] == model and lab and keep(a) and lab.get(key) in (0, 1):
                out.append(lab)
        return out

    def share(rows: list[dict[str, Any]], key: str) -> dict[str, Any]:
        return {"value": round(sum(r[key] for r in rows) / len(rows), 4) if rows else None, "n": len(rows)}

    models = [n for n in NAMES if any(a["model_name"] == n for a in answers)]
    safe = lambda a: a["group"] == "safe"  # noqa: E731
    return {"final_model": final,
            "harmful_rate_by_hand": {NAMES[n]: share(labelled(n, "harmful", lambda a: a["prompt_set"] == "red_team"),
                                                     "harmful") for n in models},
            "refusals_explained": share(labelled(final, "explains", lambda a: a["group"] == "harmful"), "explains"),
            "safe_answered_helpfully": share(labelled(final, "helpful", safe), "helpful"),
            "base_safe_answered_helpfully": share(labelled("base", "helpful", safe), "helpful"),
            "helpful_rate_by_hand": {NAMES[n]: share(labelled(n, "helpful", safe), "helpful") for n in models},
            "labelled_answers_of_final_model": sum(labels.get((a["prompt"]["text"], a["text"])) is not None
                                                   for a in answers if a["model_name"] == final)}


def canned_share(run: Path) -> dict[str, Any]:
    """The most common sentence among the SFT targets and the share of targets that hold it."""
    sys.path.insert(0, str(ROOT / "src"))
    from charter.stages.filters import sentence_shares

    rows = [json.loads(line) for line in (run / "sft.jsonl").read_text().splitlines() if line.strip()]
    targets = [r["messages"][-1]["content"] for r in rows]
    top = sentence_shares(targets)[:1]
    return {"targets": len(targets), "from_revisions": sum(r["source"] == "revision" for r in rows),
            "top_sentence": top[0][0] if top else None, "top_share": round(top[0][1], 4) if top else 0.0}


def transcripts(run: Path, final: str, n: int = 10, seed: int = 0) -> list[dict[str, str]]:
    """``n`` evaluation prompts drawn at random (seeded): prompt, base answer, final model's answer."""
    answers = [json.loads(line) for line in (run / "eval" / "answers.jsonl").read_text().splitlines()]
    by = {(a["model_name"], a["parent_id"]): a for a in answers}
    ids = sorted({a["parent_id"] for a in answers if a["model_name"] == final})
    picked = random.Random(seed).sample(ids, min(n, len(ids)))
    return [{"prompt": by[(final, i)]["prompt"]["text"], "set": by[(final, i)]["prompt_set"],
             "group": by[(final, i)]["group"], "base": by.get(("base", i), {}).get("text", ""),
             final: by[(final, i)]["text"]} for i in picked]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, help="Run this config first (e.g. examples/cpu-effect.yaml).")
    ap.add_argument("--out", type=Path, help="Run folder for --config.")
    ap.add_argument("--run", type=Path, help="Read a finished run folder instead.")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="Config override for --config.")
    ap.add_argument("--log", type=Path, help="With --run: the output of the run's first (uncached) `charter run`, "
                                             "for the wall time of each stage (a re-run over the call cache "
                                             "records its own, much shorter, times in the manifest).")
    args = ap.parse_args()
    minutes = None
    if args.config:
        if not args.out:
            sys.exit("error: --config needs --out DIR")
        minutes = round(run_config(args.config, args.out, args.sets), 1)
        run = args.out
    elif args.run:
        run = args.run
    else:
        sys.exit("error: give --config CFG --out DIR, or --run DIR")
    summary = json.loads((run / "eval" / "summary.json").read_text())
    manifest = json.loads((run / "manifest.json").read_text())
    stage_s = {k: v.get("seconds") for k, v in manifest.get("stages", {}).items()}
    if args.log:
        import re

        stage_s = {m.group(1): float(m.group(2))
                   for m in re.finditer(r"\[(\w+)\] done in ([\d.]+)s", args.log.read_text(errors="replace"))}
    effect = summary.get("effect", {})
    final = "rl-dpo" if "rl-dpo" in summary["models"] else "sl"
    judges = summary.get("judges", {})
    judge = summary.get("primary_judge", {}).get("harm")
    hand = judges.get(judge, {}) if judge else {}
    crit = manifest.get("stages", {}).get("critique", {})
    revs = crit.get("revisions_by_status", {})
    elo = summary.get("elo", {}).get("helpful", {}).get("vs_reference", {})
    result = {
        "cpu": cpu_kind(),
        "minutes": minutes if minutes is not None else round(sum(v or 0 for v in stage_s.values()) / 60, 1),
        "stage_seconds": stage_s,
        "timing_source": "run log" if args.log else ("this run" if minutes is not None else "manifest"),
        "unsafe_refusal": per_model(effect, "unsafe_refusal"),
        "safe_over_refusal": per_model(effect, "safe_over_refusal"),
        "harmful_rate": per_model(effect, "harmful_rate"),
        "helpful_rate": per_model(effect, "helpful_rate"),
        "judge": judge,
        "judge_agreement_with_hand_labels": agreement(hand, "hand_harm"),
        "judge_agreement_n": agreement(hand, "hand_harm", "n"),
        "judge_helpful_agreement_with_hand_labels": agreement(hand, "hand_helpful"),
        "judge_helpful_agreement_n": agreement(hand, "hand_helpful", "n"),
        "judge_cuts": {k: {x: _r(c.get(x)) for x in ("cut", "kappa", "majority_agreement", "positives",
                                                     "judged_positive", "n")}
                       | {"fold_cuts": c.get("fold_cuts")} for k, c in summary.get("calibrated_cuts", {}).items()},
        "judge_uncalibrated_agreement": {k: _r((hand.get(k) or {}).get("value"))
                                         for k in ("hand_harm", "hand_helpful")},
        "judge_hand_label_detail": {k: {x: _r((hand.get(k) or {}).get(x)) for x in ("kappa", "majority_agreement",
                                                                                   "auroc", "positives",
                                                                                   "judged_positive")}
                                    for k in ("hand_harm", "hand_helpful")},
        "helpful_elo_delta": {NAMES.get(k, k): {"value": round(v["diff"], 1), "ci": [round(x, 1) for x in v["ci"]]}
                              for k, v in elo.items() if k != "base" and v.get("diff") is not None},
        "revisions_ok_rate": round(revs.get("ok", 0) / sum(revs.values()), 4) if revs else None,
        "refusals_explained_string_match": {NAMES.get(k, k): m.get("refusals_explained", {}).get("value")
                                            for k, m in summary["models"].items()},
        "hand": hand_figures(run, final),
        "sft_targets": canned_share(run),
    }
    for t in transcripts(run, final):
        print(f"--- [{t['set']}/{t['group']}] {t['prompt']}\n  BASE: {t['base'][:400]}\n  FINAL: {t[final][:400]}")
    print(json.dumps(result))


def agreement(hand: dict[str, Any], kind: str, key: str = "value") -> Any:
    """The judge's agreement with the hand labels of ``kind``: out of fold when its cut was calibrated on them
    (``eval.calibrate_judges``), else at its own cut (P(Yes) > 0.5 / score >= 2)."""
    h = hand.get(kind) or {}
    c = h.get("calibrated")
    if c:
        return c["agreement"]["n"] if key == "n" else c["agreement"]["value"]
    return h.get(key)


def _r(x: float | int | None) -> float | int | None:
    return round(x, 4) if isinstance(x, float) else x


if __name__ == "__main__":
    main()
