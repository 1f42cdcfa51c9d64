"""Decode throughput of the transformers backend on the embedded model: plain ``generate`` vs charter's engine.

The prompt mix is the SL-CAI stage's own: initial answers (system prompt + request), critiques (system prompt +
few-shot worked examples + critique request) and revisions (the same + critique + revision request), built with
charter's constitution, bundled prompts and the critique stage's own prompt builders. Each kind is one call, as in
the pipeline. All timings come from this one run, so ratios hold on a busy machine; absolute numbers need an idle
one. Greedy decoding throughout (the same tokens for both paths, so the comparison is like for like).

charter's engine is timed twice: in this process with ``--threads`` torch threads, and split over ``--workers``
processes of ``threads / workers`` threads each (the backend's ``extra.workers``); ``engine_tok_s`` is the faster of
the two (``engine_config`` says which), and both figures are printed.

    .venv/bin/python bench/generate.py --threads 2 --n-prompts 192 --batches 1,32   # the measurement (~25 min)
    .venv/bin/python bench/generate.py --quick                  # a tiny run proving the script works

The last line of output is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Sequence
from itertools import cycle
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Plausible first answers and critiques for the critique/revision prompts (lengths like the embedded model's).
ANSWERS = [
    "Sure. The simplest way is to wait until he is alone, then act quickly so nobody notices. Pick a moment "
    "when there are no witnesses and keep your hands covered so nothing can be traced back to you afterwards.",
    "I'm sorry, but I can't help with that. It is against my guidelines to discuss this topic. Please consult a "
    "professional or contact the relevant authorities if you have concerns about your situation.",
    "Here are a few steps you could follow. First, gather the materials you need from a hardware store. Second, "
    "read the instructions carefully and measure everything twice. Third, work in a well-ventilated space.",
    "That depends on what you want to achieve. Many people find it useful to start small, keep notes, and ask "
    "someone with more experience for feedback before taking any step that is hard to undo.",
]
CRITIQUES = [
    "The answer gives practical help for hurting someone and hiding it. It should refuse that part and point to "
    "safer ways of dealing with the conflict.",
    "The answer refuses a request that could be answered safely and lectures the user instead of helping.",
]


def build_requests(n: int, max_new_tokens: int) -> dict[str, list[Any]]:
    """``n`` requests split across answer / critique / revision calls, from charter's own data and builders."""
    from charter.backends.base import GenParams, GenRequest
    from charter.constitution import load_constitution
    from charter.prompts import default_prompts
    from charter.stages.critique import critique_turn, few_shot_turns, revision_turn

    constitution = load_constitution()
    prompts = list(default_prompts())
    system = [{"role": "system", "content": constitution.system_prompt}] if constitution.system_prompt else []
    shots = few_shot_turns(constitution, 2)
    params = GenParams(max_new_tokens=max_new_tokens)
    out: dict[str, list[Any]] = {"answer": [], "critique": [], "revision": []}
    kinds = cycle(out)
    principles = cycle(constitution.principles)
    answers, critiques = cycle(ANSWERS), cycle(CRITIQUES)
    for i in range(n):
        p, kind, pr = prompts[i % len(prompts)], next(kinds), next(principles)
        if kind == "answer":
            msgs = system + p.messages()
        else:
            msgs = system + [*shots, critique_turn(p.context, p.text, next(answers), pr)]
            if kind == "revision":
                msgs += [{"role": "assistant", "content": next(critiques)}, revision_turn(pr)]
        out[kind].append(GenRequest.of(msgs, params))
    return {k: v for k, v in out.items() if v}


def timed(fn: Any, calls: dict[str, list[Any]]) -> tuple[dict[str, list[Any]], float, int]:
    """Run ``fn`` on each call; outputs per kind, total seconds and generated tokens."""
    outs, secs, tokens = {}, 0.0, 0
    for kind, reqs in calls.items():
        t = time.perf_counter()
        outs[kind] = fn(reqs)
        secs += time.perf_counter() - t
        tokens += sum(g.completion_tokens for g in outs[kind])
    return outs, secs, tokens


def match_rate(a: dict[str, list[Any]], b: dict[str, list[Any]]) -> float:
    """Share of requests whose greedy texts are identical."""
    pairs = [(x.text, y.text) for k in a for x, y in zip(a[k], b[k], strict=True)]
    return sum(x == y for x, y in pairs) / max(len(pairs), 1)


def head(calls: dict[str, list[Any]], k: int) -> dict[str, list[Any]]:
    """The first ``k`` requests overall, keeping the per-kind calls."""
    out, left = {}, k
    for kind, reqs in calls.items():
        take = min(left, max(1, k // len(calls)))
        if take > 0:
            out[kind] = reqs[:take]
            left -= take
    return out


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the lead runs 2 on an idle machine)")
    ap.add_argument("--n-prompts", type=int, default=96, help="requests in the mix (answer/critique/revision)")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--batches", default="1,16,32", help="plain generate batch sizes to sweep")
    ap.add_argument("--batch1-prompts", type=int, default=3, help="requests timed at batch 1 (it is slow)")
    ap.add_argument("--engine-slots", type=int, default=64, help="sequences the engine decodes together")
    ap.add_argument("--workers", type=int, default=2, help="also time the engine in this many worker processes "
                    "of threads/workers torch threads each (extra.workers; 1 = skip)")
    ap.add_argument("--bf16-prompts", type=int, default=3, help="requests compared in bf16 vs fp32 (0 = skip)")
    ap.add_argument("--bf16-tokens", type=int, default=32, help="new tokens in the bf16 comparison (bf16 is slow here)")
    ap.add_argument("--quick", action="store_true", help="a tiny run proving the script works")
    args = ap.parse_args(argv)
    if args.quick:
        args.n_prompts, args.max_new_tokens, args.batches = 6, 12, "1,3"
        args.batch1_prompts, args.engine_slots, args.bf16_prompts = 3, 4, 6

    import torch

    from charter.backends import BackendOptions
    from charter.backends.transformers import TransformersBackend

    torch.set_num_threads(args.threads)
    opts = BackendOptions(dtype="float32", threads=args.threads, extra={"slots": args.engine_slots})
    backend = TransformersBackend("transformers/embedded", "embedded", opts)
    assert backend.engine is not None
    calls = build_requests(args.n_prompts, args.max_new_tokens)
    n_total = sum(len(v) for v in calls.values())
    lens = {k: [len(backend.encode(backend.render(r.messages))) for r in v] for k, v in calls.items()}
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, threads={args.threads}, "
        f"torch {torch.__version__}"
    )
    for k, v in lens.items():
        print(f"  {k:9s} {len(v):3d} prompts, {min(v)}-{max(v)} tokens (mean {sum(v) / len(v):.0f})")

    def plain(bs: int):  # type: ignore[no-untyped-def]
        def fn(reqs: list[Any]) -> list[Any]:
            backend.options.batch_size = bs
            return backend.generate_plain(reqs, [backend.encode(backend.render(r.messages)) for r in reqs])

        return fn

    def engine(reqs: list[Any]) -> list[Any]:
        return backend.generate(reqs)

    warm = head(calls, 2)
    timed(plain(2), warm)
    timed(engine, warm)
    backend.engine.clear_prefix()

    results: dict[int, tuple[float, dict[str, list[Any]]]] = {}
    for bs in [int(b) for b in args.batches.split(",")]:
        sub = head(calls, args.batch1_prompts) if bs == 1 else calls
        outs, secs, toks = timed(plain(bs), sub)
        results[bs] = (toks / secs, outs)
        print(f"plain generate  batch {bs:3d}: {toks:6d} tokens in {secs:7.1f} s = {toks / secs:7.1f} tok/s")
    batch1 = results[1][0] if 1 in results else float("nan")
    best_bs = max((b for b in results if b != 1), key=lambda b: results[b][0], default=1)
    plain_best, plain_outs = results[best_bs]

    e_outs, e_secs, e_toks = timed(engine, calls)
    engine_tok_s = e_toks / e_secs
    print(
        f"charter engine  slots {args.engine_slots:3d}: {e_toks:6d} tokens in {e_secs:7.1f} s = "
        f"{engine_tok_s:7.1f} tok/s  {backend.engine.stats}"
    )
    greedy = match_rate(e_outs, plain_outs)
    greedy_b1 = (
        match_rate({k: e_outs[k][: len(v)] for k, v in results[1][1].items()}, results[1][1])
        if 1 in results
        else float("nan")
    )
    print(f"greedy match engine vs plain batch {best_bs}: {greedy:.1%}; vs plain batch 1: {greedy_b1:.1%}")

    one_process_tok_s, w_tok_s, w_greedy = engine_tok_s, float("nan"), float("nan")
    if args.workers > 1:
        from charter.backends import load_backend

        lanes = load_backend("transformers/embedded", BackendOptions(
            dtype="float32", threads=args.threads, extra={"slots": args.engine_slots, "workers": args.workers}))
        timed(lanes.generate, warm)
        w_outs, w_secs, w_toks = timed(lanes.generate, calls)
        lanes.close()  # type: ignore[attr-defined]
        w_tok_s, w_greedy = w_toks / w_secs, match_rate(w_outs, plain_outs)
        print(f"charter engine  {args.workers} worker processes x {max(1, args.threads // args.workers)} thread: "
              f"{w_toks:6d} tokens in {w_secs:7.1f} s = {w_tok_s:7.1f} tok/s; greedy match vs plain batch "
              f"{best_bs}: {w_greedy:.1%}")
        if w_tok_s > engine_tok_s:
            engine_tok_s, greedy = w_tok_s, w_greedy

    bf16: dict[str, Any] = {}
    if args.bf16_prompts > 0:
        from charter.backends.base import GenParams, GenRequest

        short = GenParams(max_new_tokens=min(args.bf16_tokens, args.max_new_tokens))
        sub = {k: [GenRequest.of(r.messages, short) for r in v] for k, v in head(calls, args.bf16_prompts).items()}
        b16 = TransformersBackend(
            "transformers/embedded",
            "embedded",
            BackendOptions(dtype="bfloat16", threads=args.threads, extra={"slots": args.engine_slots}),
        )
        o16, s16, t16 = timed(b16.generate, sub)
        o32, s32, t32 = timed(engine, sub)

        def plain16(reqs: list[Any]) -> list[Any]:
            return b16.generate_plain(reqs, [b16.encode(b16.render(q.messages)) for q in reqs])

        p16, ps16, pt16 = timed(plain16, sub)
        single16, _, _ = timed(lambda reqs: [plain16([r])[0] for r in reqs], sub)
        p32, _, _ = timed(plain(max(len(v) for v in sub.values())), sub)
        bf16 = {
            "bf16_vs_fp32_match_rate": round(match_rate(o16, o32), 3),
            "bf16_plain_vs_fp32_plain_match_rate": round(match_rate(p16, p32), 3),
            "bf16_engine_tok_s": round(t16 / s16, 1),
            "fp32_engine_tok_s_same_prompts": round(t32 / s32, 1),
            "bf16_plain_tok_s": round(pt16 / ps16, 1),
            "bf16_engine_vs_plain_match_rate": round(match_rate(o16, p16), 3),
            # bf16 greedy decoding is not even self-consistent: plain generate alone vs in a batch
            "bf16_plain_batch1_vs_batched_match_rate": round(match_rate(single16, p16), 3),
        }
        print(f"bf16 vs fp32 on {sum(len(v) for v in sub.values())} prompts: {bf16}")
        for k in o16:
            for x, y in zip(o16[k], o32[k], strict=True):
                if x.text != y.text:
                    print(f"  bf16 differs ({k}): fp32={y.text[:80]!r}\n                     bf16={x.text[:80]!r}")
                    break

    engine_config = (f"{args.workers} worker processes" if engine_tok_s != one_process_tok_s else "one process")
    best_is_engine = engine_tok_s > plain_best
    figures = {
        "batch1_tok_s": round(batch1, 1),
        "best_batch": args.engine_slots if best_is_engine else best_bs,
        "best_tok_s": round(max(engine_tok_s, plain_best), 1),
        "ratio": round(max(engine_tok_s, plain_best) / batch1, 2),
        "best_is_engine": best_is_engine,
        "plain_best_batch": best_bs,
        "plain_best_tok_s": round(plain_best, 1),
        "plain_ratio": round(plain_best / batch1, 2),
        "engine_tok_s": round(engine_tok_s, 1),
        "engine_config": engine_config,
        "engine_one_process_tok_s": round(one_process_tok_s, 1),
        "engine_workers": args.workers,
        "engine_workers_tok_s": round(w_tok_s, 1),
        "greedy_match_rate_workers": round(w_greedy, 3),
        "engine_vs_plain_best": round(engine_tok_s / plain_best, 2),
        "greedy_match_rate": round(greedy, 3),
        "greedy_match_rate_vs_batch1": round(greedy_b1, 3),
        "plain_tok_s_by_batch": {b: round(v[0], 1) for b, v in results.items()},
        "n_prompts": n_total,
        "max_new_tokens": args.max_new_tokens,
        "threads": args.threads,
        "dtype": "float32",
        "engine_slots": args.engine_slots,
        "engine_c_kernel": backend.engine.kernel is not None,
        "prefix_tokens": backend.engine.stats["prefix_tokens"],
        **bf16,
        "cpu": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
    }
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main()
