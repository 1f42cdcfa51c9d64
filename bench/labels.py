"""Label quality of the embedded model as a feedback model: agreement with human labels on HH-RLHF harmless pairs.

Runs ``charter label-eval`` on ``../shared/data/hh_harmless_dev.jsonl`` for every labelling setting (one principle,
one order, ensemble, CoT, length-matched, length-debiased) with the embedded SmolLM2-135M-Instruct, and prints the
agreement with its Wilson 95% interval, the position bias and the length bias per setting, next to the baselines
"always the shorter / longer answer". Model calls are cached in the run folder (``--out``), so a re-run is instant
and an interrupted one resumes.

    .venv/bin/python bench/labels.py --n 300                 # the measurement (long on a busy 2-core machine)
    .venv/bin/python bench/labels.py --quick                 # a tiny run proving the script works
    .venv/bin/python bench/labels.py --n 300 --rm-steps 30   # + reward models on AI vs human labels

The last line of output is one JSON object:
``{"pairs": n, "settings": {NAME: {"agreement": a, "ci": [lo, hi], "position_bias": b, ...}, ...}, ...}``.
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
DATA = ROOT.parent / "shared" / "data" / "hh_harmless_dev.jsonl"
QUICK_SETTINGS = "one_principle,one_principle_one_order,length_matched,length_debiased"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=300, help="human-labelled pairs to use")
    ap.add_argument("--settings", default=None, help="comma-separated settings (default: all)")
    ap.add_argument("--data", type=Path, default=DATA, help="HH-RLHF JSONL with chosen/rejected dialogues")
    ap.add_argument("--model", default="transformers/embedded", help="feedback model")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-labels", help="run folder (call cache)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--batch-size", type=int, default=8, help="requests per model batch")
    ap.add_argument("--workers", type=int, default=1, help="model processes (extra.workers), threads/workers each")
    ap.add_argument("--rm-steps", type=int, default=0, help="> 0: also train RMs on AI vs human labels")
    ap.add_argument("--quick", action="store_true", help="a tiny run proving the script works")
    args = ap.parse_args(argv)
    if args.quick:
        args.n, args.settings = 6, args.settings or QUICK_SETTINGS
    if not args.data.is_file():
        sys.exit(f"error: {args.data} not found — the shared data sits beside the checkout (../shared/data)")

    import torch

    from charter.backends import BackendOptions, load_backend
    from charter.constitution import load_constitution
    from charter.stages.label_eval import SETTINGS, LabelEvalConfig, run_label_eval
    from charter.store import CachedBackend, RunDir

    torch.set_num_threads(args.threads)
    settings = [s.strip() for s in (args.settings or ",".join(SETTINGS)).split(",") if s.strip()]
    cfg = LabelEvalConfig(n=args.n, settings=settings, rm_steps=args.rm_steps,
                          rm_setting="ensemble" if "ensemble" in settings else settings[0])
    run = RunDir(args.out)
    extra = {"workers": args.workers} if args.workers > 1 else {}
    backend = CachedBackend(load_backend(args.model, BackendOptions(threads=args.threads, batch_size=args.batch_size,
                                                                    extra=extra)),
                            run.cache, batch_size=args.batch_size)
    start = time.monotonic()
    summary = run_label_eval(cfg, run, args.data, load_constitution(None), backend, rm_base=args.model,
                             quiet=False)
    seconds = time.monotonic() - start
    print(f"feedback model {args.model}, {summary['pairs']} HH pairs from {args.data.name}, {seconds:.0f} s "
          f"({run.cache.misses} new calls, {run.cache.hits} cached)")
    print(f"{'setting':26s} {'agreement':>9s} {'95% CI':>14s} {'n':>4s} {'pos.bias':>8s} {'order':>6s} {'longer':>6s}")
    for name, row in summary["settings"].items():
        lo, hi = row["ci"]
        fmt = (lambda v: "   -" if v is None else f"{v:+.3f}")  # noqa: E731
        print(f"{name:26s} {row['agreement'] if row['agreement'] is not None else float('nan'):9.3f} "
              f"[{lo:.3f}, {hi:.3f}] {row['n']:4d} {fmt(row['position_bias']):>8s} "
              f"{(row['order_consistency'] if row['order_consistency'] is not None else float('nan')):6.2f} "
              f"{(row['length_bias'] if row['length_bias'] is not None else float('nan')):6.2f}")
        for w in row["warnings"]:
            print(f"    warning: {w}")
    print(f"baselines: {summary['baselines']}")
    if "reward_models" in summary:
        print(f"reward models on held-back human pairs: {summary['reward_models']}")
    result: dict[str, Any] = {
        "pairs": summary["pairs"],
        "settings": {name: {"agreement": row["agreement"], "ci": row["ci"], "position_bias": row["position_bias"],
                            "n": row["n"], "length_bias": row["length_bias"],
                            "order_consistency": row["order_consistency"]}
                     for name, row in summary["settings"].items()},
        "baselines": summary["baselines"],
        "model": args.model,
        "seconds": round(seconds, 1),
        "threads": args.threads,
    }
    if "reward_models" in summary:
        result["reward_models"] = summary["reward_models"]
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
