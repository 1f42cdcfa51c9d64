"""Weak-to-strong generalisation on CPU: PGR for weak supervisors × strong students × losses × seeds on three tasks.

Sweeps (each into its own folder under ``--out``, each resumable; features are cached on disk by content, judge
calls in each folder's call cache):

* ``short`` — the synthetic ``sentiment`` task (generated in code, exact labels; negation flips the label, so a bag
  of words is capped near 1 − difficulty) and XSTest safe/unsafe (the evaluation part of charter.splits as test).
  Weak: bag of words, the embedded SmolLM2-135M as a zero-shot judge, and the two averaged. Strong: MiniLM-L6 +
  probe and SmolLM2-135M activations + probe.
* ``big`` — XSTest only (its texts are few and short: a 1.5B model on CPU reads ~1 short text a second): the larger
  feedback model (``--big-model``, ``make feedback-model``) + probe beside MiniLM, when it is installed (skipped with
  a message when absent).
* ``hh`` — HH-RLHF harmless pairs as Bradley–Terry (which response is less harmful): bag of words and the CAI
  labeller itself (charter.stages.label, one principle, both orders) as weak supervisors; MiniLM and SmolLM2
  probes as students.
* ``finetune`` (``--finetune``; outside the 30-minute budget) — SmolLM2-135M with a classification head, LoRA, as
  the student on ``sentiment``.

    .venv/bin/python bench/oversight.py --quick              # tiny sizes: proves the script works (a few minutes)
    .venv/bin/python bench/oversight.py                      # the measurement (≤ 30 min on an idle 2-core CPU)
    .venv/bin/python bench/oversight.py --finetune           # + the fine-tuned 135M student (longer)

The last line is one JSON object: ``{"cells": {"TASK | WEAK | STRONG | LOSS": {"pgr", "pgr_ci", "weak_acc",
"ceiling_acc", "student_acc", "gap", ...}}, "by_loss": ..., "seconds": ...}``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-oversight", help="folder of the sweeps")
    ap.add_argument("--seeds", type=int, default=3, help="seeds per cell")
    ap.add_argument("--sentiment-n", type=int, default=1200, help="synthetic sentiment items")
    ap.add_argument("--difficulty", type=float, default=0.25, help="sentiment: share of negated reviews")
    ap.add_argument("--hh-train", type=int, default=400, help="HH training pairs (the test part: --hh-test)")
    ap.add_argument("--hh-test", type=int, default=200, help="HH test pairs")
    ap.add_argument("--big-model", default="qwen2.5-coder-1.5b",
                    help="larger frozen model for a probe (a folder or a name under CHARTER_CACHE/models; skipped "
                         "when absent); '' for none")
    ap.add_argument("--judge", default="transformers/embedded", help="zero-shot judge backend; '' for none")
    ap.add_argument("--finetune", action="store_true", help="also the fine-tuned SmolLM2-135M student (slow)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument("--quick", action="store_true", help="tiny sizes, to prove the script works")
    args = ap.parse_args(argv)
    if args.quick:
        args.sentiment_n, args.hh_train, args.hh_test, args.seeds = 240, 40, 30, 2
        args.big_model = ""
    for f in ("hh_harmless_dev.jsonl", "xstest_dev.csv"):
        if not (DATA / f).is_file():
            sys.exit(f"error: {DATA / f} not found — the shared data sits beside the checkout (../shared/data)")

    from charter.oversight.finetune import FinetuneConfig
    from charter.oversight.stats import cells, summary
    from charter.oversight.sweep import OversightConfig, cli_backends, run_oversight
    from charter.oversight.tasks import TaskConfig

    judge = [f"judge:{args.judge}"] if args.judge else []
    big = [f"probe:{args.big_model}?"] if args.big_model else []
    seeds = list(range(args.seeds))
    common: dict[str, Any] = {"seeds": seeds, "losses": ["xent", "logconf"], "threads": args.threads,
                              "shared_data": str(DATA), "head": {"epochs": 10 if args.quick else 30}}
    sweeps: dict[str, dict[str, Any]] = {
        "short": {"tasks": [TaskConfig(kind="sentiment", n=args.sentiment_n, difficulty=args.difficulty),
                            TaskConfig(kind="xstest")],
                  "weak": ["bow", *judge, *([f"mean(bow,{judge[0]})"] if judge else [])],
                  "strong": ["minilm", "probe:embedded"]},
        "hh": {"tasks": [TaskConfig(kind="hh", max_train=args.hh_train, max_test=args.hh_test)],
               "weak": ["bow", *judge], "strong": ["minilm", "probe:embedded"]},
    }
    if big:
        sweeps["big"] = {"tasks": [TaskConfig(kind="xstest")], "weak": ["bow", *judge], "strong": ["minilm", *big]}
    if args.finetune:
        ft = FinetuneConfig(max_train=64 if args.quick else 256, eval_every=4 if args.quick else 16,
                            threads=args.threads)
        sweeps["finetune"] = {"tasks": [TaskConfig(kind="sentiment", n=args.sentiment_n, difficulty=args.difficulty)],
                              "weak": ["bow"], "strong": ["finetune:embedded"], "finetune": ft}
    rows: list[dict[str, Any]] = []
    timings: dict[str, float] = {}
    skipped: list[Any] = []
    start = time.monotonic()
    for name, spec in sweeps.items():
        t0 = time.monotonic()
        cfg = OversightConfig(**common, **spec)
        out = args.out / name
        result = run_oversight(cfg, out, backend=cli_backends(out, args.threads),
                               log=lambda t: print(t, file=sys.stderr, flush=True))
        skipped += result["skipped"]
        rows += [json.loads(x) for x in (out / "oversight" / "results.jsonl").read_text().splitlines()]
        timings[name] = round(time.monotonic() - t0, 1)
        print(f"[{name}] {result['runs']} runs in {timings[name]} s", file=sys.stderr, flush=True)
    cell_list = cells(rows)
    table = {}
    for c in cell_list:
        table[f"{c['task']} | {c['weak']} | {c['strong']} | {c['loss']}"] = {
            "pgr": _r(c["pgr"]), "pgr_ci": [_r(x) for x in c["pgr_ci"]] if c["pgr_ci"] else None,
            "weak_acc": _r(c["weak_acc"]), "ceiling_acc": _r(c["ceiling_acc"]), "student_acc": _r(c["student_acc"]),
            "gap": _r(c["gap"]), "misfit": _r(c["misfit"]), "n_test": c["n_test"], "seeds": len(c["seeds"]),
            "warnings": c["warnings"]}
    for key, v in table.items():
        ci = f"[{v['pgr_ci'][0]:+.2f}, {v['pgr_ci'][1]:+.2f}]" if v["pgr_ci"] else ""
        pg = f"{v['pgr']:+.2f}" if v["pgr"] is not None else "undefined"
        print(f"{key:70s} weak {v['weak_acc']:.3f} ceiling {v['ceiling_acc']:.3f} student {v['student_acc']:.3f} "
              f"PGR {pg} {ci}", file=sys.stderr)
    large = [k for k, v in table.items() if v["gap"] is not None and v["gap"] >= 0.10]
    report = {"cells": table, "by_loss": summary(cell_list), "cells_with_gap_ge_10_points": large,
              "skipped": sorted(set(skipped)), "seconds": {"total": round(time.monotonic() - start, 1), **timings},
              "threads": args.threads, "quick": args.quick}
    print(json.dumps(report))
    return report


def _r(x: float | None) -> float | None:
    return None if x is None else round(float(x), 4)


if __name__ == "__main__":
    main()
