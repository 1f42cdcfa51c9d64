"""Does a request's answer depend on its batch-mates? The embedded model, each request alone vs all in one batch.

Every request carries its own seed and is sampled from its own generator (``charter.backends.sampling``), on the
engine and on the plain ``generate`` path, so the only way a batch-mate can change an answer is floating-point
rounding: another batch shape (padding, the shared prefix, the matmul blocking) rounds a row's logits differently,
and a greedy argmax or a sampled draw that sits on a boundary flips. In fp32 that is ~1e-7 of a logit; in bf16 it is
~1e-2, so bf16 kernels are not batch-invariant. This script counts how often it happens, per dtype and path, for
greedy and sampled decoding, and times the plain path's per-row sampler against the one-RNG-per-batch sampling of
Hugging Face ``generate`` that it replaced.

    .venv/bin/python bench/batch_invariance.py --threads 2 --n-prompts 16 --max-new-tokens 48   # ~5 min
    .venv/bin/python bench/batch_invariance.py --quick

The last line of output is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def requests(n: int, max_new_tokens: int, temperature: float) -> list[Any]:
    """``n`` bundled prompts (red-team and helpful alternating) with their own seeds."""
    from charter.backends.base import GenParams, GenRequest
    from charter.prompts import default_prompts

    red, helpful = list(default_prompts("red_team").prompts), list(default_prompts("helpful").prompts)
    mixed = [p for pair in zip(red, helpful, strict=False) for p in pair][:n]
    return [GenRequest.of(p.messages(), GenParams(max_new_tokens=max_new_tokens, temperature=temperature,
                                                  top_p=0.95 if temperature else 1.0, seed=1000 + i))
            for i, p in enumerate(mixed)]


def compare(backend: Any, reqs: list[Any]) -> dict[str, Any]:
    """Texts alone and in one batch; how many differ, and the first token position where they part."""
    t0 = time.perf_counter()
    alone = [backend.generate([r])[0].text for r in reqs]
    t1 = time.perf_counter()
    batched = [g.text for g in backend.generate(reqs)]
    t2 = time.perf_counter()
    differ = [i for i, (a, b) in enumerate(zip(alone, batched, strict=True)) if a != b]
    return {"n": len(reqs), "differ": len(differ), "rate": round(len(differ) / len(reqs), 3),
            "alone_s": round(t1 - t0, 1), "batched_s": round(t2 - t1, 1),
            "example": None if not differ else {"alone": alone[differ[0]][:80], "batched": batched[differ[0]][:80]}}


def time_plain_sampling(backend: Any, reqs: list[Any]) -> dict[str, float]:
    """Decode speed of one sampled batch on the plain path: charter's per-row sampler (one generator per request)
    vs Hugging Face ``generate(do_sample=True)`` with one torch seed for the batch (what it replaced). The two sample
    different tokens, so answers end at different lengths: compared in tokens per second."""
    import torch
    from transformers import GenerationConfig

    prompts = [backend.encode(backend.render(r.messages)) for r in reqs]
    p = reqs[0].params
    t0 = time.perf_counter()
    gens = backend._generate_batch(prompts, [r.params for r in reqs])
    t1 = time.perf_counter()
    ids, mask = backend.left_pad(prompts)
    cfg = GenerationConfig(max_new_tokens=p.max_new_tokens, do_sample=True, temperature=p.temperature, top_p=p.top_p,
                           top_k=None, pad_token_id=backend.pad_id, eos_token_id=backend.eos_ids)
    torch.manual_seed(0)
    with torch.inference_mode():
        seqs = backend.model.generate(input_ids=ids, attention_mask=mask, generation_config=cfg)
    t2 = time.perf_counter()
    ours = sum(g.completion_tokens for g in gens)
    theirs = sum(backend.finish(row, 0, p).completion_tokens for row in seqs[:, ids.shape[1]:].tolist())
    return {"seeded_per_row_tok_s": round(ours / (t1 - t0), 2), "one_rng_per_batch_tok_s": round(theirs / (t2 - t1), 2),
            "seeded_per_row_tokens": ours, "one_rng_per_batch_tokens": theirs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-prompts", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--dtypes", default="float32,bfloat16", help="comma-separated: float32, bfloat16")
    ap.add_argument("--paths", default="engine,plain", help="comma-separated: engine, plain")
    ap.add_argument("--modes", default="greedy,sampled", help="comma-separated: greedy, sampled")
    ap.add_argument("--quick", action="store_true", help="4 prompts, 8 tokens")
    args = ap.parse_args()
    if args.quick:
        args.n_prompts, args.max_new_tokens = 4, 8

    import torch

    from charter.backends import BackendOptions
    from charter.backends.transformers import TransformersBackend, auto_dtype

    torch.set_num_threads(args.threads)
    flags = set(Path("/proc/cpuinfo").read_text().split()) if Path("/proc/cpuinfo").exists() else set()
    native_bf16 = bool({"avx512_bf16", "amx_bf16"} & flags)
    out: dict[str, Any] = {"n_prompts": args.n_prompts, "max_new_tokens": args.max_new_tokens,
                           "threads": args.threads, "native_bf16": native_bf16, "auto_dtype": auto_dtype()}
    print(f"# {args.n_prompts} prompts x {args.max_new_tokens} tokens, {args.threads} threads, "
          f"native bf16: {native_bf16}", flush=True)
    modes = [m for m in (("greedy", 0.0), ("sampled", 0.7)) if m[0] in args.modes.split(",")]
    for dtype in args.dtypes.split(","):
        for engine in [path == "engine" for path in args.paths.split(",")]:
            backend = TransformersBackend("transformers/embedded", "embedded", BackendOptions(
                dtype=dtype, threads=args.threads, batch_size=args.n_prompts, extra={"engine": engine}))
            path = "engine" if engine else "plain"
            for mode, temperature in modes:
                key = f"{dtype}_{path}_{mode}"
                out[key] = compare(backend, requests(args.n_prompts, args.max_new_tokens, temperature))
                print(f"{key:28s} {out[key]['differ']:3d} of {out[key]['n']} answers differ alone vs batched "
                      f"(alone {out[key]['alone_s']} s, batched {out[key]['batched_s']} s)", flush=True)
                if out[key]["example"]:
                    ex = out[key]["example"]
                    print(f"    alone:   {ex['alone']!r}\n    batched: {ex['batched']!r}")
            if not engine and dtype == "float32":
                out["plain_sampling_cost"] = time_plain_sampling(
                    backend, requests(args.n_prompts, args.max_new_tokens, 0.7))
                print(f"plain path, one batch sampled: {out['plain_sampling_cost']}", flush=True)
            del backend
    print(json.dumps(out))


if __name__ == "__main__":
    main()
