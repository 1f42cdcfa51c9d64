"""An optional feedback model (default Qwen2.5-Coder-1.5B-Instruct) through the transformers backend: engine vs plain.

Two parts, each a separate run so each stays within a few minutes on 2 cores:

``--part generate``: load time and peak RSS of the backend in the dtype ``auto`` picks here; ``--n`` chat prompts
(the bundled red-team + helpful sets behind one system prompt, so the engine's shared prefix is the system prompt)
x ``--new-tokens`` greedy tokens through charter's engine, then through plain ``model.generate`` in one batch of all
prompts, same dtype; tok/s of each and how many answers are identical.

``--part score``: ``--readings`` A/B option readings like the label stage's (HH-RLHF harmless pairs from
../shared/data, the constitution's first comparison question, both orders, its two few-shot turns as the shared
prefix), scored through the engine in ``--dtype`` (time per reading) and the first ``--plain-readings`` through the
padded forward pass (the fallback path); ``--probs`` saves P(first option) per reading and ``--compare`` reads such a
file of the other dtype: how often the two dtypes pick the same option, and their largest difference.

    .venv/bin/python bench/feedback_model.py --part generate --threads 1 --n 24 --new-tokens 96
    .venv/bin/python bench/feedback_model.py --part score --dtype bfloat16 --probs /tmp/bf16.json
    .venv/bin/python bench/feedback_model.py --part score --dtype float32 --plain-readings 0 --compare /tmp/bf16.json
    .venv/bin/python bench/feedback_model.py --part generate --model transformers/qwen2.5-coder-0.5b

The last line of output is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import resource
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SYSTEM = "You are a helpful, honest and harmless assistant. Answer briefly and clearly."
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_flags() -> list[str]:
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return []
    return sorted(flags & {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"})


def backend(model: str, dtype: str, threads: int, **extra: Any) -> tuple[Any, float]:
    from charter.backends import BackendOptions, load_backend

    t0 = time.perf_counter()
    b = load_backend(model, BackendOptions(dtype=dtype, threads=threads, batch_size=64, extra=extra))
    return b, time.perf_counter() - t0


def part_generate(args: argparse.Namespace) -> dict[str, Any]:
    from charter.backends.base import GenParams, GenRequest
    from charter.prompts import default_prompts

    prompts = default_prompts("all").prompts
    step = max(1, len(prompts) // args.n)
    picked = [p.text for p in prompts[::step][: args.n]]
    reqs = [
        GenRequest.of([{"role": "system", "content": SYSTEM}, {"role": "user", "content": t}],
                      GenParams(max_new_tokens=args.new_tokens))
        for t in picked
    ]
    b, load_s = backend(args.model, args.dtype, args.threads, linear=args.linear)
    out: dict[str, Any] = {"linear": b.engine.linear if b.engine else None, "load_s": round(load_s, 1),
                           "dtype": b.gen_dtype, "rss_after_load_mb": round(peak_rss_mb())}
    assert b.engine is not None, "the engine does not run this model"
    t0 = time.perf_counter()
    fast = b.generate(reqs)
    engine_s = time.perf_counter() - t0
    n_fast = sum(g.completion_tokens for g in fast)
    print(f"engine: {n_fast} tokens in {engine_s:.1f}s = {n_fast / engine_s:.1f} tok/s", flush=True)
    prompt_ids = [b.encode(b.render(r.messages)) for r in reqs]
    b.options = dataclasses.replace(b.options, batch_size=len(reqs))
    t0 = time.perf_counter()
    plain = b.generate_plain(reqs, prompt_ids)
    plain_s = time.perf_counter() - t0
    n_plain = sum(g.completion_tokens for g in plain)
    print(f"plain generate (batch {len(reqs)}): {n_plain} tokens in {plain_s:.1f}s = {n_plain / plain_s:.1f} tok/s")
    same = sum(f.text == p.text for f, p in zip(fast, plain, strict=True))
    for f, p, t in list(zip(fast, plain, picked, strict=True))[:3]:
        print(f"--- {t[:70]!r}\nengine: {f.text[:160]!r}\nplain:  {p.text[:160]!r}")
    out.update({
        "prompts": len(reqs), "new_tokens": args.new_tokens, "prompt_tokens_mean": round(
            sum(map(len, prompt_ids)) / len(prompt_ids), 1),
        "engine_tokens": n_fast, "engine_s": round(engine_s, 1), "engine_tok_s": round(n_fast / engine_s, 1),
        "plain_tokens": n_plain, "plain_s": round(plain_s, 1), "plain_tok_s": round(n_plain / plain_s, 1),
        "engine_vs_plain": round((n_fast / engine_s) / (n_plain / plain_s), 2),
        "greedy_same_as_plain": f"{same}/{len(reqs)}", "peak_rss_mb": round(peak_rss_mb()),
    })
    return out


def readings(n: int, answer_chars: int, context_chars: int) -> list[Any]:
    from charter.backends.base import ScoreRequest
    from charter.constitution import load_constitution
    from charter.stages.label import OPTIONS, _cut, choice_messages, few_shot_turns, trim_conversation
    from charter.stages.label_eval import load_hh_pairs

    prefix = "The answer is: ("
    constitution = load_constitution()
    question = next(p.comparison_question for p in constitution.principles if p.comparison_question)
    shots = few_shot_turns(constitution, 2, prefix)
    pairs, _ = load_hh_pairs(SHARED / "hh_harmless_dev.jsonl", n=(n + 1) // 2, seed=0)
    out = []
    for pair in pairs:
        a, b = _cut(pair.a, answer_chars), _cut(pair.b, answer_chars)
        conv = trim_conversation(pair.prompt.messages(), context_chars)
        for first, second in ((a, b), (b, a)):
            out.append(ScoreRequest.of(choice_messages(conv, question or "", first, second, shots), OPTIONS, prefix))
    return out[:n]


def p_first(scores: Any) -> float:
    a, b = math.exp(scores.logprobs["A"]), math.exp(scores.logprobs["B"])
    return a / (a + b)


def part_score(args: argparse.Namespace) -> dict[str, Any]:
    """Readings through the engine in ``args.dtype`` (and, in bf16, the first ``--plain-readings`` through the
    padded forward pass too); the P(first option) of each is written to ``--probs`` so a run in the other dtype can
    compare (``--compare``)."""
    reqs = readings(args.readings, args.answer_chars, args.context_chars)
    dtype = "bfloat16" if args.dtype == "auto" else args.dtype
    b, load_s = backend(args.model, dtype, args.threads)
    assert b.score_engine is b.engine is not None
    prepared = [b.option_tokens(b.render(r.messages) + r.assistant_prefix, r.options) for r in reqs]
    n_tok = [len(c) for c, _ in prepared]
    b.score_options(reqs[:1])  # warm-up; caches the shared few-shot prefix, as a label run's first chunk would
    t0 = time.perf_counter()
    scores = b.score_options(reqs)
    engine_s = time.perf_counter() - t0
    probs = [p_first(x) for x in scores]
    out: dict[str, Any] = {
        "dtype": dtype, "load_s": round(load_s, 1), "readings": len(reqs),
        "prompt_tokens_mean": round(sum(n_tok) / len(n_tok)), "engine_s_per_reading": round(engine_s / len(reqs), 2),
        "option_mass_min": round(min(math.exp(x.logprobs["A"]) + math.exp(x.logprobs["B"]) for x in scores), 3),
    }
    print(f"{dtype} engine: {engine_s / len(reqs):.2f} s/reading ({out['prompt_tokens_mean']} tokens each)", flush=True)
    if args.plain_readings:
        k = min(args.plain_readings, len(reqs))
        t0 = time.perf_counter()
        plain = b.score_options_plain(prepared[:k], reqs[:k])
        plain_s = time.perf_counter() - t0
        pp = [p_first(x) for x in plain]
        same = sum((x > 0.5) == (y > 0.5) for x, y in zip(pp, probs[:k], strict=True))
        out.update({
            "plain_readings": k, "plain_s_per_reading": round(plain_s / k, 2),
            "engine_vs_plain": round((plain_s / k) / (engine_s / len(reqs)), 2),
            "plain_argmax_same_as_engine": f"{same}/{k}",
            "plain_max_abs_p_diff": round(max(abs(x - y) for x, y in zip(pp, probs[:k], strict=True)), 4),
        })
        print(f"{dtype} plain forward: {plain_s / k:.2f} s/reading", flush=True)
    if args.probs:
        Path(args.probs).write_text(json.dumps({"dtype": dtype, "p_first": probs}))
    if args.compare:
        other = json.loads(Path(args.compare).read_text())
        q = other["p_first"]
        out["compared_with"] = other["dtype"]
        out["argmax_agree"] = f"{sum((x > 0.5) == (y > 0.5) for x, y in zip(probs, q, strict=True))}/{len(q)}"
        out["max_abs_p_diff"] = round(max(abs(x - y) for x, y in zip(probs, q, strict=True)), 4)
        out["mean_abs_p_diff"] = round(sum(abs(x - y) for x, y in zip(probs, q, strict=True)) / len(q), 4)
    out["p_first"] = [round(x, 4) for x in probs]
    out["peak_rss_mb"] = round(peak_rss_mb())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=("generate", "score"), required=True)
    ap.add_argument("--model", default="transformers/qwen2.5-coder-1.5b")
    ap.add_argument("--dtype", default="auto", help="generation dtype (auto: bf16 where the CPU has native bf16)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--linear", default="auto", help="the engine's extra.linear (auto, dense, onednn)")
    ap.add_argument("--n", type=int, default=24, help="chat prompts (generate)")
    ap.add_argument("--new-tokens", type=int, default=96)
    ap.add_argument("--readings", type=int, default=40, help="A/B readings (score)")
    ap.add_argument("--answer-chars", type=int, default=200, help="answers cut to this many characters (score)")
    ap.add_argument("--context-chars", type=int, default=300, help="conversation cut to this many characters (score)")
    ap.add_argument("--plain-readings", type=int, default=8, help="readings also scored by the padded forward pass")
    ap.add_argument("--probs", help="write P(first option) of each reading here (score)")
    ap.add_argument("--compare", help="a --probs file of another dtype to compare with (score)")
    args = ap.parse_args()
    t0 = time.perf_counter()
    result = part_generate(args) if args.part == "generate" else part_score(args)
    loads = os.getloadavg()
    print(json.dumps({"bench": f"feedback_model/{args.part}", "model": args.model, "threads": args.threads,
                      "cpu": platform.processor() or platform.machine(), "cpu_flags": cpu_flags(),
                      "load_avg_1m": round(loads[0], 2), "wall_s": round(time.perf_counter() - t0, 1), **result}))


if __name__ == "__main__":
    main()
