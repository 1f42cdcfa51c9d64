"""Where the RL stage's labels come from, judged downstream: DPO on judge labels vs RLCD pairs vs human labels.

RLCD pairs have no human labels to check them against, so their worth shows only in the model trained on them. This
runs the RL stage three ways from one start model and evaluates all of them on held-out prompts:

1. ``charter run`` (stages sample, label, rlcd) on the bundled prompts: answer pairs from the start model labelled by
   the feedback model (``preferences.jsonl``), and contrastive RLCD pairs labelled by construction
   (``rlcd_preferences.jsonl``);
2. ``charter dpo`` three times with the same settings: on the judge labels, on the RLCD pairs, and on human labels
   (HH-RLHF chosen/rejected from the first part of ``hh_harmless_dev.jsonl``: the human-label baseline);
3. ``charter eval``: base vs the three DPO models on red-team prompts from the *other* part of that file (no overlap
   with the human training pairs) and on XSTest's safe prompts: harm, refusal and over-refusal rates, Elo.

Every step is a real CLI call into one run folder, so an interrupted run resumes and a finished one re-prints at once.
The start model is the embedded model itself (no SL stage), so the three arms differ only in their labels.

    .venv/bin/python bench/rl_labels.py --threads 1              # the measurement (~40 min on one core)
    .venv/bin/python bench/rl_labels.py --quick                  # a tiny run proving the script works

The last line of output is one JSON object: ``{"models": {NAME: {"harm": …, "refusal_red_team": …,
"over_refusal": …, "elo_harmless": …, "elo_helpful": …}, …}, "pairs": {…}, …}``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
ARMS = {"judge": "preferences.jsonl", "rlcd": "rlcd_preferences.jsonl", "human": "hh_train.jsonl"}


def charter(*args: str) -> None:
    """One charter CLI call; stops the benchmark with its error line if it fails."""
    cmd = [sys.executable, "-m", "charter.cli", *args]
    print("$ charter " + " ".join(args), flush=True)
    done = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if done.returncode:
        sys.exit(f"error: `charter {' '.join(args)}` failed (exit {done.returncode})")


def split_hh(src: Path, run: Path, n_train: int) -> tuple[Path, Path]:
    """The first ``n_train`` HH dialogues (human DPO) and the rest (evaluation prompts), as two files in ``run``."""
    lines = [line for line in src.read_text(encoding="utf-8").splitlines() if line.strip()]
    train, held = run / "hh_train.jsonl", run / "hh_eval.jsonl"
    train.write_text("\n".join(lines[:n_train]) + "\n", encoding="utf-8")
    held.write_text("\n".join(lines[n_train:]) + "\n", encoding="utf-8")
    return train, held


def figures(summary: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per model: mean harm on red-team prompts, refusal rate there, refusal rate on safe prompts, Elo."""
    out: dict[str, dict[str, Any]] = {}
    for name, m in summary["models"].items():
        refusal = next(iter(m["refusal"].values()), {})  # the primary refusal classifier
        red = next((v for k, v in refusal.items() if k.startswith("red_team")), {})
        safe = next((v for k, v in refusal.items() if k.startswith("benign")), {})
        harm = m["harm"].get("harmful", {}).get("mean", {})
        row = {
            "harm": harm.get("value"),
            "harm_ci": harm.get("ci"),
            "refusal_red_team": red.get("rate", {}).get("value"),
            "over_refusal": safe.get("rate", {}).get("value"),
            "over_refusal_ci": safe.get("rate", {}).get("ci"),
            "mean_length": m.get("mean_length"),
        }
        for axis in ("harmless", "helpful"):
            rating = summary.get("elo", {}).get(axis, {}).get("ratings", {}).get(name)
            row[f"elo_{axis}"] = rating["elo"] if rating else None
        out[name] = row
    return out


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-rl-labels", help="run folder")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--red-team", type=int, default=48, help="bundled red-team prompts that make pairs")
    ap.add_argument("--helpful", type=int, default=16, help="bundled helpful prompts that make pairs")
    ap.add_argument("--steps", type=int, default=30, help="DPO steps per arm (batch 2)")
    ap.add_argument("--eval-limit", type=int, default=32, help="held-out prompts per evaluation file")
    ap.add_argument("--hh-train", type=int, default=1000, help="HH dialogues kept for the human-label arm")
    ap.add_argument("--quick", action="store_true", help="a tiny run proving the script works")
    args = ap.parse_args(argv)
    if args.quick:
        args.red_team, args.helpful, args.steps, args.eval_limit = 3, 1, 1, 2
    hh, xstest = SHARED / "hh_harmless_dev.jsonl", SHARED / "xstest_dev.csv"
    for f in (hh, xstest):
        if not f.is_file():
            sys.exit(f"error: {f} not found — the shared data sits beside the checkout (../shared/data)")

    run = args.out.resolve()
    run.mkdir(parents=True, exist_ok=True)
    _, held = split_hh(hh, run, args.hh_train)
    start = time.monotonic()
    t = f"threads={args.threads}"
    charter("run", "examples/quickstart.yaml", "--out", str(run), "--quiet", "--set", "stages=[sample, label, rlcd]",
            "--set", t, "--set", f"prompts.red_team_limit={args.red_team}",
            "--set", f"prompts.helpful_limit={args.helpful}", "--set", "sample.max_new_tokens=96",
            "--set", "rlcd.max_new_tokens=96")
    for arm, prefs in ARMS.items():
        charter("dpo", str(run), "--quiet", "--set", f"dpo.preferences={run / prefs}", "--set",
                f"dpo.output=dpo_{arm}", "--set", "dpo.base_model=transformers/embedded", "--set", t,
                "--set", f"dpo.max_steps={args.steps}", "--set", "dpo.batch_size=2")
    models = ["-m", "base=transformers/embedded"]
    for arm in ARMS:
        models += ["-m", f"{arm}=transformers//{run / f'dpo_{arm}' / 'model'}"]
    charter("eval", *models, "--red-team", str(held), "--benign", str(xstest), "--limit", str(args.eval_limit),
            "--out", str(run), "--quiet", "--set", "human_pairs=0", "--set", "max_new_tokens=96",
            "--set", t)
    seconds = time.monotonic() - start

    summary = json.loads((run / "eval" / "summary.json").read_text())
    pairs = {arm: sum(1 for _ in (run / prefs).open()) if arm != "human" else args.steps * 2
             for arm, prefs in ARMS.items()}
    rows = figures(summary)
    print(f"\nDPO from the embedded model, {args.steps} steps x 2 pairs per arm; evaluated on {args.eval_limit} "
          f"held-out HH red-team prompts and {args.eval_limit} XSTest prompts, judge {summary['primary_judge']}")
    print(f"pairs available: {pairs} (human: pairs seen in training)")
    print(f"{'model':8s} {'harm (0-4)':>16s} {'refuses red-team':>17s} {'over-refusal':>13s} {'Elo harmless':>13s} "
          f"{'Elo helpful':>12s} {'length':>7s}")
    for name, r in rows.items():
        def f(v: Any, spec: str = ".2f") -> str:
            return "-" if v is None else format(v, spec)

        print(f"{name:8s} {f(r['harm']):>6s} [{f((r['harm_ci'] or [None])[0])}, {f((r['harm_ci'] or [0, None])[1])}] "
              f"{f(r['refusal_red_team']):>17s} {f(r['over_refusal']):>13s} {f(r['elo_harmless'], '.0f'):>13s} "
              f"{f(r['elo_helpful'], '.0f'):>12s} {f(r['mean_length'], '.0f'):>7s}")
    for w in summary.get("warnings", []):
        print(f"warning: {w}")
    result = {"models": rows, "pairs": pairs, "steps": args.steps, "eval_prompts_per_file": args.eval_limit,
              "judge": summary["primary_judge"], "warnings": summary.get("warnings", []),
              "seconds": round(seconds, 1), "threads": args.threads}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
