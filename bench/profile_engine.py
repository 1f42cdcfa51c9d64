"""Where charter's engine spends its time: prefill vs decode, and within each matmul vs attention vs other tensor
ops vs Python, on bench/generate.py's prompt mix (smaller), in the dtype ``dtype: auto`` picks here (or ``--dtype``).

Method: the engine's ``_prefill``/``_prefill_batch`` and ``_decode_step`` are wrapped in
``torch.profiler.record_function`` regions (and the C decode-attention kernel, a ctypes call the profiler cannot see
inside, in its own region), the run is profiled with ``torch.profiler`` on CPU, and every operator's *self* time is
assigned to the region it ran in and to a category by its name:

* ``matmul``: linear / addmm / mm / bmm / matmul and oneDNN's packed linear;
* ``attention``: the fused CPU attention (``_scaled_dot_product_flash_attention_for_cpu``), plain-matmul attention
  inside it, and the C kernel region;
* ``other ops``: everything else PyTorch runs (RMSNorm, RoPE, SiLU, cat, index_put, argmax, softmax…);
* ``python``: the region's wall time minus its operators' self time — interpreter work between ops, plus the
  profiler's own per-op cost (so it is an upper bound; ``--no-profile`` gives the unprofiled wall times).

Outside both regions (``outside``) is the backend's work around the engine: rendering and tokenising prompts,
finishing texts, choosing tokens in Python.

    .venv/bin/python bench/profile_engine.py --threads 2 --n-prompts 48 --max-new-tokens 64   # the lead's run
    .venv/bin/python bench/profile_engine.py --quick

The last line of output is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

MATMUL = ("aten::linear", "aten::addmm", "aten::mm", "aten::bmm", "aten::matmul", "mkldnn::_linear_pointwise",
          "aten::baddbmm", "mkldnn::_linear_pointwise.binary")
ATTENTION = ("aten::_scaled_dot_product_flash_attention_for_cpu", "aten::scaled_dot_product_attention",
             "aten::_scaled_dot_product_attention_math", "kernel.own_attention")
REGIONS = ("engine.prefill", "engine.decode")


def category(name: str, parents: Sequence[str]) -> str:
    if name in ATTENTION or any(p in ATTENTION for p in parents):
        return "attention"
    if name in MATMUL:
        return "matmul"
    return "other ops"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--n-prompts", type=int, default=48)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--engine-slots", type=int, default=64)
    ap.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16"))
    ap.add_argument("--top", type=int, default=12, help="operators listed, by self time")
    ap.add_argument("--quick", action="store_true", help="a tiny run proving the script works")
    args = ap.parse_args(argv)
    if args.quick:
        args.n_prompts, args.max_new_tokens, args.engine_slots = 6, 8, 4

    import torch
    from torch.profiler import ProfilerActivity, profile, record_function

    import charter.backends.decode_kernel as decode_kernel
    from charter.backends.transformers import auto_dtype

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from generate import build_requests, head, make_backend, timed

    torch.set_num_threads(args.threads)
    dtype = auto_dtype() if args.dtype == "auto" else args.dtype
    backend = make_backend(dtype, args.threads, args.engine_slots)
    engine = backend.engine
    calls = build_requests(args.n_prompts, args.max_new_tokens)
    timed(backend.generate, head(calls, 3))  # warm up
    engine.clear_prefix()

    walls: dict[str, float] = defaultdict(float)
    prefill, batch, step = engine._prefill, engine._prefill_batch, engine._decode_step
    own = decode_kernel.own_attention
    inside: set[str] = set()  # a batched prefill may call the one-prompt prefill: count its time once

    def wrap(fn: Any, name: str) -> Any:
        def inner(*a: Any, **k: Any) -> Any:
            if name in inside:
                return fn(*a, **k)
            inside.add(name)
            t = time.perf_counter()
            try:
                with record_function(name):
                    out = fn(*a, **k)
            finally:
                inside.discard(name)
            walls[name] += time.perf_counter() - t
            return out

        return inner

    engine._prefill, engine._decode_step = wrap(prefill, "engine.prefill"), wrap(step, "engine.decode")
    engine._prefill_batch = wrap(batch, "engine.prefill")
    decode_kernel.own_attention = wrap(own, "kernel.own_attention")
    try:
        t = time.perf_counter()
        _, plain_secs, plain_toks = timed(backend.generate, calls)  # unprofiled, for the wall times
        plain_walls = dict(walls)
        walls.clear()
        engine.clear_prefix()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            _, secs, toks = timed(backend.generate, calls)
        del t
    finally:
        engine._prefill, engine._prefill_batch, engine._decode_step = prefill, batch, step
        decode_kernel.own_attention = own

    # self time per (region, category), from the event tree
    table: dict[str, dict[str, float]] = {r: defaultdict(float) for r in (*REGIONS, "outside")}
    ops: dict[tuple[str, str], float] = defaultdict(float)
    for ev in prof.events():
        if ev.name in REGIONS:
            continue
        chain, p = [], ev.cpu_parent
        while p is not None:
            chain.append(p.name)
            p = p.cpu_parent
        region = next((c for c in chain if c in REGIONS), "outside")
        us = ev.self_cpu_time_total
        if ev.name == "kernel.own_attention":
            table[region]["attention"] += us
            continue
        table[region][category(ev.name, chain)] += us
        ops[(region, ev.name)] += us
    out: dict[str, Any] = {"dtype": dtype, "threads": args.threads, "n_prompts": sum(len(v) for v in calls.values()),
                           "max_new_tokens": args.max_new_tokens, "engine_slots": args.engine_slots,
                           "c_kernel": engine.kernel is not None, "linear": engine.linear,
                           "tokens": toks, "profiled_secs": round(secs, 2), "unprofiled_secs": round(plain_secs, 2),
                           "unprofiled_tok_s": round(plain_toks / plain_secs, 1),
                           "unprofiled_region_secs": {k: round(v, 2) for k, v in plain_walls.items()}}
    print(f"engine ({dtype}, {args.threads} threads, {args.engine_slots} slots): {out['n_prompts']} requests, "
          f"{toks} tokens; unprofiled {plain_secs:.1f} s ({out['unprofiled_tok_s']} tok/s): prefill "
          f"{plain_walls.get('engine.prefill', 0):.1f} s, decode {plain_walls.get('engine.decode', 0):.1f} s, "
          f"outside {plain_secs - plain_walls.get('engine.prefill', 0) - plain_walls.get('engine.decode', 0):.1f} s")
    print(f"profiled {secs:.1f} s; seconds by region and kind (operators' self time; python = the rest):")
    regions: dict[str, Any] = {}
    for region in (*REGIONS, "outside"):
        wall = walls.get(region, secs - walls.get("engine.prefill", 0) - walls.get("engine.decode", 0))
        cats = {k: v / 1e6 for k, v in table[region].items()}
        cats["python"] = max(0.0, wall - sum(cats.values()))
        regions[region] = {"wall": round(wall, 2), **{k: round(v, 2) for k, v in sorted(cats.items())}}
        shares = ", ".join(f"{k} {v:.2f} s ({v / wall:.0%})" for k, v in sorted(cats.items(), key=lambda kv: -kv[1])
                           if wall > 0)
        print(f"  {region:15s} {wall:6.2f} s: {shares}")
    out["regions"] = regions
    print("top operators by self time (s):")
    top = sorted(ops.items(), key=lambda kv: -kv[1])[: args.top]
    for (region, name), us in top:
        print(f"  {us / 1e6:7.2f}  {region:15s} {name}")
    out["top_ops"] = [[region, name, round(us / 1e6, 3)] for (region, name), us in top]
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
