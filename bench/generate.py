"""Decode throughput on the embedded model: charter's engine vs plain ``generate`` vs llama.cpp, against the machine's
own limit, in the dtype the pipeline uses here.

**The prompt mix** is the SL-CAI stage's own: initial answers (system prompt + request), critiques (system prompt +
few-shot worked examples + critique request) and revisions (the same + critique + revision request), built with
charter's constitution, bundled prompts and the critique stage's own prompt builders. Each kind is one call, as in
the pipeline. Greedy decoding throughout. **Every figure is measured on the same requests in this one run** (batch
1 included), so ratios hold on a busy machine; absolute numbers need an idle one.

**The dtype** is what ``dtype: auto`` picks on this CPU (``charter.backends.transformers.auto_dtype()``: bf16 when
/proc/cpuinfo lists ``avx512_bf16`` or ``amx_bf16``, else fp32); the flags that decided it are printed. Where it is
not fp32, fp32 is measured as well — engine and plain ``generate`` on the first ``--fp32-prompts`` requests (and the
primary dtype's engine again on exactly those, for the ratio) — which also gives the greedy match rates: engine vs
plain in fp32, bf16 vs fp32, engine vs plain in bf16.

**The machine's limit** is measured in the same run: the best GEMM FLOP/s of that dtype (``F.linear`` and oneDNN
pre-packed weights) at the model's own weight shapes (fused QKV, O, fused gate/up, down, output head) with M rows,
M in ``slots, 2*slots, 4*slots``, aggregated over one forward's worth of those products (``peak_gflops``).
The engine's *achieved* FLOP/s counts the work it actually does, over the wall time of its calls:
``2 × (layer weights) × (prefill tokens computed + tokens decoded) + 2 × (output head) × (positions whose logits are
computed) + 4 × layers × heads × head_dim × (keys attended)``. Prefill tokens served from the shared-prefix cache are
not counted (the engine's prefills and ``_decode_step`` are wrapped to count tokens, keys and seconds; the counts
are checked against the engine's own ``stats``). ``fraction_of_limit`` = achieved / peak; ``limit_tok_s`` = peak /
(FLOPs per generated token of this mix), so ``engine_tok_s / limit_tok_s`` is the same fraction;
``limit_tok_s_weights_only`` = peak / (2 × parameters) is the textbook figure. ``decode_tok_s`` is tokens from decode
steps over decode-step time (prefill excluded).

**llama.cpp** (llama-cpp-python, the ``llamacpp`` extra) decodes the same token ids greedily with its batch API
(``bench/llamacpp_peer.py``: one ``llama_decode`` per step for all live sequences, continuous batching, the shared
prefix computed once and copied per sequence) on the Q4_1 GGUF the embedded model ships as and on an F16 GGUF
written from the same weights; ``--llamacpp-batches`` are swept (1 = its batch-1 figure), the batched ones in both
of llama.cpp's KV layouts (``--llamacpp-kv``), and its best is kept. ``llamacpp_b1_tok_s`` and
``llamacpp_best_tok_s`` are the F16 figures (the engine's precision class); the Q4_1 ones have their own keys.

    .venv/bin/python bench/generate.py --threads 2 --n-prompts 192 --max-new-tokens 128   # the measurement
    .venv/bin/python bench/generate.py --quick                  # a tiny run proving the script works
    .venv/bin/python bench/profile_engine.py --threads 2        # where the engine's time goes

The last line of output is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from itertools import cycle
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

HERE = Path(__file__).resolve().parent
NAN = float("nan")

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
DECIDING_FLAGS = ("avx512_bf16", "amx_bf16")
"""The flags ``auto_dtype()`` looks for (native bf16 matmuls)."""
SHOWN_FLAGS = ("avx2", "fma", "f16c", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16",
               "amx_int8")


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


Calls = dict[str, list[Any]]


def timed(fn: Callable[[list[Any]], list[Any]], calls: Calls) -> tuple[Calls, float, int]:
    """Run ``fn`` on each call; outputs per kind, total seconds and generated tokens."""
    outs, secs, tokens = {}, 0.0, 0
    for kind, reqs in calls.items():
        t = time.perf_counter()
        outs[kind] = fn(reqs)
        secs += time.perf_counter() - t
        tokens += sum(g.completion_tokens for g in outs[kind])
    return outs, secs, tokens


def match_rate(a: Calls, b: Calls) -> float:
    """Share of requests (those in both) whose greedy texts are identical."""
    pairs = [(x.text, y.text) for k in a if k in b for x, y in zip(a[k], b[k], strict=False)]
    return sum(x == y for x, y in pairs) / len(pairs) if pairs else NAN


def head(calls: Calls, k: int) -> Calls:
    """The first ``k`` requests of the mix, the same share from each kind (each kind stays one call)."""
    per = max(1, k // len(calls))
    return {kind: reqs[:per] for kind, reqs in calls.items()}


def cpu_flags() -> tuple[str, list[str]]:
    """The CPU model name and the SIMD flags of /proc/cpuinfo that matter here."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine(), []
    model = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name")),
                 platform.machine())
    flags = set(text.split())
    return model, [f for f in SHOWN_FLAGS if f in flags]


# --- the machine's limit ------------------------------------------------------------------------------------


def model_shapes(model: Any) -> list[tuple[str, int, int, int]]:
    """``(name, out_features, in_features, count per token)`` of the products one forward does, as the engine
    fuses them."""
    cfg = model.config
    D, n_layers = cfg.hidden_size, cfg.num_hidden_layers
    d = getattr(cfg, "head_dim", None) or D // cfg.num_attention_heads
    qkv = (cfg.num_attention_heads + 2 * cfg.num_key_value_heads) * d
    return [("qkv", qkv, D, n_layers), ("o", D, cfg.num_attention_heads * d, n_layers),
            ("gate_up", 2 * cfg.intermediate_size, D, n_layers), ("down", D, cfg.intermediate_size, n_layers),
            ("head", cfg.vocab_size, D, 1)]


def _time(fn: Callable[[], Any], seconds: float) -> float:
    fn()
    n, t = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        el = time.perf_counter() - t
        if el >= seconds and n >= 3:
            return el / n


def measure_peak(dtype: str, shapes: Sequence[tuple[str, int, int, int]], rows: Sequence[int],
                 seconds: float) -> dict[str, Any]:
    """Best aggregate GEMM FLOP/s at the model's shapes (one forward's mix), over methods and row counts."""
    import torch
    import torch.nn.functional as F

    dt = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    methods: dict[str, Callable[[torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]] = {
        "dense": lambda w: (lambda x: F.linear(x, w))}
    if hasattr(torch.ops.mkldnn, "_linear_pointwise") and torch.backends.mkldnn.is_available():
        def packed(w: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
            p = torch.ops.mkldnn._reorder_linear_weight(w, None)
            return lambda x: torch.ops.mkldnn._linear_pointwise(x, p, None, "none", [], "")

        methods["onednn_packed"] = packed
    gen = torch.Generator().manual_seed(0)
    weights = {name: torch.randn(n, k, generator=gen).to(dt) for name, n, k, _ in shapes}
    table: dict[str, Any] = {}
    best: tuple[float, str, int] = (0.0, "", 0)
    with torch.inference_mode():
        for mname, make in methods.items():
            try:
                fns = {name: make(w) for name, w in weights.items()}
            except RuntimeError as e:
                table[mname] = f"unavailable: {str(e).splitlines()[0][:80]}"
                continue
            for m in rows:
                flops = secs = 0.0
                per_shape = {}
                for name, n, k, count in shapes:
                    x = torch.randn(m, k, generator=gen).to(dt)
                    s = _time(lambda f=fns[name], x=x: f(x), seconds)
                    per_shape[name] = round(2 * m * n * k / s / 1e9, 1)
                    flops += 2 * m * n * k * count
                    secs += s * count
                agg = flops / secs
                table[f"{mname}@M={m}"] = {"aggregate_gflops": round(agg / 1e9, 1), "per_shape_gflops": per_shape}
                if agg > best[0]:
                    best = (agg, mname, m)
    return {"peak_flops": best[0], "method": best[1], "rows": best[2], "table": table}


# --- counting the engine's work -----------------------------------------------------------------------------


class EngineMeter:
    """Wraps an engine's prefills (one prompt or several at once) and ``_decode_step`` to count tokens computed, keys
    attended and seconds."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.reset()
        prefill, batch, step = engine._prefill, engine._prefill_batch, engine._decode_step
        inside = [False]  # a batched prefill may fall back to one-prompt prefills: count those once

        def count(ids: Sequence[int], start: int) -> None:
            n = len(ids)
            self.c["prefill_tokens"] += n
            self.c["prefill_calls"] += 1  # one output-head row per prompt
            self.c["prefill_keys"] += n * start + n * (n + 1) // 2  # token j attends start + j + 1 keys

        def timed_prefill(ids: Sequence[int], start: int, *a: Any, **k: Any) -> Any:
            if inside[0]:
                return prefill(ids, start, *a, **k)
            t = time.perf_counter()
            out = prefill(ids, start, *a, **k)
            self.c["prefill_secs"] += time.perf_counter() - t
            count(ids, start)
            return out

        def timed_batch(suffixes: Sequence[Sequence[int]], start: int, *a: Any, **k: Any) -> Any:
            t = time.perf_counter()
            inside[0] = True
            try:
                out = batch(suffixes, start, *a, **k)
            finally:
                inside[0] = False
            self.c["prefill_secs"] += time.perf_counter() - t
            for ids in suffixes:
                count(ids, start)
            return out

        def timed_step(tokens: Any, lens: Any, *a: Any, **k: Any) -> Any:
            P = len(engine._prefix_ids)
            t = time.perf_counter()
            out = step(tokens, lens, *a, **k)
            self.c["decode_secs"] += time.perf_counter() - t
            B = int(tokens.shape[0])
            self.c["decode_rows"] += B
            self.c["decode_steps"] += 1
            self.c["decode_keys"] += B * (P + 1) + int(lens.sum())  # row b attends P + lens[b] + 1 keys
            return out

        engine._prefill, engine._prefill_batch, engine._decode_step = timed_prefill, timed_batch, timed_step

    def reset(self) -> None:
        self.c: dict[str, float] = dict.fromkeys(
            ("prefill_secs", "prefill_tokens", "prefill_calls", "prefill_keys", "decode_secs", "decode_rows",
             "decode_steps", "decode_keys"), 0)
        self.stats0 = dict(self.engine.stats)

    def engine_counted(self) -> int:
        """Prefill tokens the engine's own stats say it computed since :meth:`reset` (prefix + suffixes)."""
        s = self.engine.stats
        return int(s["prefix_tokens"] - self.stats0["prefix_tokens"] + s["prefill_tokens"]
                   - self.stats0["prefill_tokens"])

    def flops(self, model: Any) -> dict[str, float]:
        cfg = model.config
        shapes = model_shapes(model)
        layer = sum(n * k * c for name, n, k, c in shapes if name != "head")
        head_p = sum(n * k for name, n, k, _ in shapes if name == "head")
        d = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        per_key = 4 * cfg.num_hidden_layers * cfg.num_attention_heads * d
        c = self.c
        mm = 2 * layer * (c["prefill_tokens"] + c["decode_rows"]) + 2 * head_p * (c["prefill_calls"] + c["decode_rows"])
        att = per_key * (c["prefill_keys"] + c["decode_keys"])
        return {"matmul": mm, "attention": att, "total": mm + att, "per_token_weights": 2 * (layer + head_p)}


# --- the runs -----------------------------------------------------------------------------------------------


def make_backend(dtype: str, threads: int, slots: int) -> Any:
    from charter.backends.base import BackendOptions
    from charter.backends.transformers import TransformersBackend

    return TransformersBackend("transformers/embedded", "embedded",
                               BackendOptions(dtype=dtype, threads=threads, extra={"slots": slots}))


def plain_fn(backend: Any, bs: int) -> Callable[[list[Any]], list[Any]]:
    def fn(reqs: list[Any]) -> list[Any]:
        backend.options.batch_size = bs
        return list(backend.generate_plain(reqs, [backend.encode(backend.render(r.messages)) for r in reqs]))

    return fn


def llamacpp_fn(backend: Any, gguf: Path, threads: int, slots: int, unified: bool) -> tuple[Any, Callable]:
    """A ``generate``-like function decoding with llama.cpp on ``slots`` sequences (texts finished as the backend
    finishes its own, so they compare exactly)."""
    from llamacpp_peer import LlamaCppGreedy

    lc = LlamaCppGreedy(gguf, threads, slots, backend.eos_ids, unified=unified)

    def fn(reqs: list[Any]) -> list[Any]:
        prompts = [backend.encode(backend.render(r.messages)) for r in reqs]
        outs = lc.run(prompts, [r.params.max_new_tokens for r in reqs])
        return [backend.finish(o, len(p), r.params) for o, p, r in zip(outs, prompts, reqs, strict=True)]

    return lc, fn


def r(x: float, n: int = 1) -> float:
    return round(x, n) if isinstance(x, float) and math.isfinite(x) else x


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1, help="torch and llama.cpp threads (the lead runs 2, idle)")
    ap.add_argument("--n-prompts", type=int, default=96, help="requests in the mix (answer/critique/revision)")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16"),
                    help="primary dtype (auto: what dtype: auto picks on this CPU)")
    ap.add_argument("--batches", default="1,16,32", help="plain generate batch sizes to sweep (all requests)")
    ap.add_argument("--engine-slots", type=int, default=64, help="sequences the engine decodes together")
    ap.add_argument("--engine-b1", action=argparse.BooleanOptionalAction, default=True,
                    help="also time the engine with one slot (its batch-1 figure)")
    ap.add_argument("--workers", type=int, default=1, help="also time the engine in this many worker processes "
                    "of threads/workers torch threads each (extra.workers; 1 = skip)")
    ap.add_argument("--fp32-prompts", type=int, default=48, help="requests of the fp32 comparison when the primary "
                    "dtype is not fp32 (0 = skip)")
    ap.add_argument("--fp32-batch", type=int, default=16, help="plain generate batch size in the fp32 comparison")
    ap.add_argument("--llamacpp-batches", default="1,32,64", help="llama.cpp sequences per batch to sweep ('' = "
                    "skip llama.cpp)")
    ap.add_argument("--llamacpp-kv", default="split,unified", help="llama.cpp KV layouts swept for batches > 1: "
                    "'split' (one stream per sequence, attention over its own cells; the shared prefix copied into "
                    "each) and/or 'unified' (kv_unified: one buffer, the prefix stored once, attention over all cells)")
    ap.add_argument("--peak-seconds", type=float, default=0.3, help="seconds per GEMM timing of the peak")
    ap.add_argument("--f16-gguf", type=Path, default=Path.home() / ".cache" / "charter" / "bench" /
                    "SmolLM2-135M-Instruct.F16.gguf", help="where the F16 GGUF is written (once)")
    ap.add_argument("--quick", action="store_true", help="a tiny run proving the script works")
    args = ap.parse_args(argv)
    if args.quick:
        args.n_prompts, args.max_new_tokens, args.batches, args.engine_slots = 6, 12, "1,3", 4
        args.fp32_prompts, args.fp32_batch, args.llamacpp_batches, args.peak_seconds = 6, 2, "1,2", 0.05

    import torch

    from charter.backends.transformers import auto_dtype

    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(HERE))
    cpu_model, flags = cpu_flags()
    dtype = auto_dtype() if args.dtype == "auto" else args.dtype
    deciding = [f for f in DECIDING_FLAGS if f in flags]
    print(f"machine: {cpu_model}, {os.cpu_count()} cpus, threads={args.threads}, torch {torch.__version__}")
    print(f"cpu flags: {' '.join(flags) or '(none found)'}")
    why = (f"/proc/cpuinfo lists {', '.join(deciding)}" if deciding else
           f"/proc/cpuinfo lists none of {', '.join(DECIDING_FLAGS)} (bf16 would be emulated)")
    print(f"dtype: {dtype}" + (f" (dtype: auto picks it: {why})" if args.dtype == "auto" else " (forced)"))

    backend = make_backend(dtype, args.threads, args.engine_slots)
    assert backend.engine is not None, "the embedded model should run on the engine"
    calls = build_requests(args.n_prompts, args.max_new_tokens)
    n_total = sum(len(v) for v in calls.values())
    for k, v in calls.items():
        lens = [len(backend.encode(backend.render(q.messages))) for q in v]
        print(f"  {k:9s} {len(v):3d} prompts, {min(lens)}-{max(lens)} tokens (mean {sum(lens) / len(lens):.0f})")

    shapes = model_shapes(backend.model)
    rows = [args.engine_slots, 2 * args.engine_slots, 4 * args.engine_slots]
    peak = measure_peak(dtype, shapes, rows, args.peak_seconds)
    print(f"peak GEMM ({dtype}, model shapes, M in {rows}): {peak['peak_flops'] / 1e9:.1f} GFLOP/s "
          f"({peak['method']}, M={peak['rows']}); {json.dumps(peak['table'])}")

    meter = EngineMeter(backend.engine)
    warm = head(calls, 3)
    timed(plain_fn(backend, 2), warm)
    timed(backend.generate, warm)
    backend.engine.clear_prefix()

    # --- the engine, primary dtype, every request
    meter.reset()
    e_outs, e_secs, e_toks = timed(backend.generate, calls)
    engine_tok_s = e_toks / e_secs
    c = dict(meter.c)
    fl = meter.flops(backend.model)
    served = sum(len(backend.encode(backend.render(q.messages))) for v in calls.values() for q in v) \
        - c["prefill_tokens"]
    achieved = fl["total"] / e_secs
    fraction = achieved / peak["peak_flops"] if peak["peak_flops"] else NAN
    limit_tok_s = peak["peak_flops"] / (fl["total"] / e_toks)
    decode_tok_s = c["decode_rows"] / c["decode_secs"] if c["decode_secs"] else NAN
    print(f"charter engine  slots {args.engine_slots:3d}: {e_toks:6d} tokens in {e_secs:7.1f} s = {engine_tok_s:7.1f} "
          f"tok/s  {backend.engine.stats}")
    print(f"  work: prefill {int(c['prefill_tokens'])} tokens computed ({meter.engine_counted()} by the engine's "
          f"stats), {int(served)} served from the shared-prefix cache; {int(c['decode_rows'])} tokens decoded in "
          f"{int(c['decode_steps'])} steps; prefill {c['prefill_secs']:.1f} s, decode {c['decode_secs']:.1f} s, "
          f"other {e_secs - c['prefill_secs'] - c['decode_secs']:.1f} s")
    print(f"  FLOPs: {fl['total'] / 1e9:.0f} G ({fl['matmul'] / 1e9:.0f} G matmul, {fl['attention'] / 1e9:.0f} G "
          f"attention) = {fl['total'] / e_toks / 1e9:.3f} GFLOP per generated token; achieved "
          f"{achieved / 1e9:.1f} GFLOP/s = {fraction:.1%} of the peak; limit {limit_tok_s:.0f} tok/s on this mix "
          f"({peak['peak_flops'] / fl['per_token_weights']:.0f} tok/s counting weights only); decode-only "
          f"{decode_tok_s:.1f} tok/s")

    e1_tok_s, e1_outs = NAN, None
    if args.engine_b1:
        b1 = make_backend(dtype, args.threads, 1)
        timed(b1.generate, warm)
        b1.engine.clear_prefix()
        e1_outs, e1_secs, e1_toks = timed(b1.generate, calls)
        e1_tok_s = e1_toks / e1_secs
        print(f"charter engine  slots   1: {e1_toks:6d} tokens in {e1_secs:7.1f} s = {e1_tok_s:7.1f} tok/s; greedy "
              f"match vs slots {args.engine_slots}: {match_rate(e1_outs, e_outs):.1%}")
        del b1

    # --- plain generate, primary dtype, every request
    results: dict[int, tuple[float, Calls]] = {}
    for bs in [int(b) for b in args.batches.split(",") if b]:
        outs, secs, toks = timed(plain_fn(backend, bs), calls)
        results[bs] = (toks / secs, outs)
        print(f"plain generate  batch {bs:3d}: {toks:6d} tokens in {secs:7.1f} s = {toks / secs:7.1f} tok/s")
    batch1 = results[1][0] if 1 in results else NAN
    best_bs = max((b for b in results if b != 1), key=lambda b: results[b][0], default=min(results))
    plain_best, plain_outs = results[best_bs]
    greedy = match_rate(e_outs, plain_outs)
    greedy_b1 = match_rate(e_outs, results[1][1]) if 1 in results else NAN
    print(f"greedy match ({dtype}) engine vs plain batch {best_bs}: {greedy:.1%}; vs plain batch 1: {greedy_b1:.1%}")

    one_process_tok_s, w_tok_s, w_greedy = engine_tok_s, NAN, NAN
    if args.workers > 1:
        from charter.backends import load_backend
        from charter.backends.base import BackendOptions

        lanes = load_backend("transformers/embedded", BackendOptions(
            dtype=dtype, threads=args.threads, extra={"slots": args.engine_slots, "workers": args.workers}))
        timed(lanes.generate, warm)
        w_outs, w_secs, w_toks = timed(lanes.generate, calls)
        lanes.close()  # type: ignore[attr-defined]
        w_tok_s, w_greedy = w_toks / w_secs, match_rate(w_outs, plain_outs)
        print(f"charter engine  {args.workers} worker processes x {max(1, args.threads // args.workers)} thread: "
              f"{w_toks:6d} tokens in {w_secs:7.1f} s = {w_tok_s:7.1f} tok/s; greedy match vs plain batch "
              f"{best_bs}: {w_greedy:.1%}")
        if w_tok_s > engine_tok_s:
            engine_tok_s, greedy = w_tok_s, w_greedy

    # --- llama.cpp on the same requests
    lc: dict[str, Any] = {}
    lc_batches = [int(b) for b in args.llamacpp_batches.split(",") if b]
    try:
        import llama_cpp  # noqa: F401
    except ImportError as e:
        print(f"llama.cpp: skipped ({e}; `make llamacpp` builds llama-cpp-python)")
        lc_batches = []
    if lc_batches:
        from charter.embedded import gguf_path
        from llamacpp_peer import write_f16_gguf

        args.f16_gguf.parent.mkdir(parents=True, exist_ok=True)
        ggufs = {"q4_1": gguf_path(), "f16": write_f16_gguf(gguf_path(), args.f16_gguf)}
        kvs = [k for k in args.llamacpp_kv.split(",") if k]
        runs = [(s, kv) for s in lc_batches for kv in (["unified"] if s == 1 else kvs)]
        for name, path in ggufs.items():
            by: dict[str, float] = {}
            outs_by: dict[str, Calls] = {}
            for s, kv in runs:
                model, fn = llamacpp_fn(backend, path, args.threads, s, kv == "unified")
                timed(fn, head(calls, 2))
                outs, secs, toks = timed(fn, calls)
                model.close()
                key = "1" if s == 1 else f"{s}/{kv}"
                by[key], outs_by[key] = toks / secs, outs
                layout = "" if s == 1 else kv
                print(f"llama.cpp {name:5s} batch {s:3d} {layout:7s}: {toks:6d} tokens in {secs:7.1f} s = "
                      f"{toks / secs:7.1f} tok/s; greedy match vs engine ({dtype}): {match_rate(outs, e_outs):.1%}, "
                      f"vs plain batch {best_bs}: {match_rate(outs, plain_outs):.1%}")
            batched = [k for k in by if k != "1"]
            best_k = max(batched, key=lambda k: by[k]) if batched else None
            lc[name] = {"by_batch": by, "b1": by.get("1", NAN), "best_batch": best_k,
                        "best": by[best_k] if best_k else NAN, "outs": outs_by}

    # --- fp32 beside the primary dtype, on the same first requests
    fp32: dict[str, Any] = {}
    if dtype != "float32" and args.fp32_prompts > 0:
        sub = head(calls, args.fp32_prompts)
        n_sub = sum(len(v) for v in sub.values())
        b32 = make_backend("float32", args.threads, args.engine_slots)
        timed(b32.generate, head(sub, 3))
        b32.engine.clear_prefix()
        o32, s32, t32 = timed(b32.generate, sub)
        backend.engine.clear_prefix()
        o16, s16, t16 = timed(backend.generate, sub)
        p32, ps32, pt32 = timed(plain_fn(b32, args.fp32_batch), sub)
        p16, ps16, pt16 = timed(plain_fn(backend, args.fp32_batch), sub)
        sub_of = lambda outs: {k: outs[k][: len(v)] for k, v in sub.items()}  # noqa: E731
        fp32 = {
            "fp32_prompts": n_sub,
            "fp32_engine_tok_s": r(t32 / s32),
            f"{dtype}_engine_tok_s_same_prompts": r(t16 / s16),
            "fp32_plain_tok_s": r(pt32 / ps32),
            f"{dtype}_plain_tok_s_same_prompts": r(pt16 / ps16),
            "fp32_plain_batch": args.fp32_batch,
            "greedy_match_rate_fp32": r(match_rate(o32, p32), 3),
            f"{dtype}_vs_fp32_match_rate": r(match_rate(o16, o32), 3),
            f"{dtype}_vs_fp32_plain_match_rate": r(match_rate(o16, p32), 3),
            f"{dtype}_plain_vs_fp32_plain_match_rate": r(match_rate(p16, p32), 3),
            f"{dtype}_engine_vs_plain_match_rate": r(match_rate(o16, p16), 3),
            f"{dtype}_engine_run_to_run_match_rate": r(match_rate(o16, sub_of(e_outs)), 3),
        }
        if 1 in results:  # bf16 greedy is not even self-consistent: plain batch 1 vs batched
            fp32[f"{dtype}_plain_batch1_vs_batched_match_rate"] = r(match_rate(results[1][1], plain_outs), 3)
        if "f16" in lc:
            best = lc["f16"]["outs"][lc["f16"]["best_batch"] or "1"]
            fp32["llamacpp_f16_vs_fp32_engine_match_rate"] = r(match_rate(sub_of(best), o32), 3)
        print(f"fp32 beside {dtype} on {n_sub} requests: {fp32}")
        for k in o16:
            for x, y in zip(o16[k], o32[k], strict=True):
                if x.text != y.text:
                    print(f"  {dtype} differs ({k}): fp32={y.text[:80]!r}\n  {' ' * len(dtype)}{' ' * 16}"
                          f"{dtype}={x.text[:80]!r}")
                    break
        del b32
    elif dtype == "float32":
        fp32 = {"greedy_match_rate_fp32": r(greedy, 3)}

    engine_config = f"{args.workers} worker processes" if engine_tok_s != one_process_tok_s else "one process"
    best_is_engine = engine_tok_s > plain_best
    f16, q4 = lc.get("f16", {}), lc.get("q4_1", {})
    figures = {
        "batch1_tok_s": r(batch1),
        "best_batch": args.engine_slots if best_is_engine else best_bs,
        "best_tok_s": r(max(engine_tok_s, plain_best)),
        "ratio": r(max(engine_tok_s, plain_best) / batch1, 2),
        "best_is_engine": best_is_engine,
        "plain_best_batch": best_bs,
        "plain_best_tok_s": r(plain_best),
        "plain_ratio": r(plain_best / batch1, 2),
        "engine_tok_s": r(engine_tok_s),
        "engine_config": engine_config,
        "engine_one_process_tok_s": r(one_process_tok_s),
        "engine_workers": args.workers,
        "engine_workers_tok_s": r(w_tok_s),
        "greedy_match_rate_workers": r(w_greedy, 3),
        "engine_vs_plain_best": r(engine_tok_s / plain_best, 2),
        "greedy_match_rate": r(greedy, 3),
        "greedy_match_rate_vs_batch1": r(greedy_b1, 3),
        "plain_tok_s_by_batch": {b: r(v[0]) for b, v in results.items()},
        "n_prompts": n_total,
        "max_new_tokens": args.max_new_tokens,
        "threads": args.threads,
        "dtype": dtype,
        "dtype_requested": args.dtype,
        "engine_slots": args.engine_slots,
        "engine_c_kernel": backend.engine.kernel is not None,
        "engine_linear": backend.engine.linear,
        "prefix_tokens": backend.engine.stats["prefix_tokens"],
        "engine_b1_tok_s": r(e1_tok_s),
        "peak_gflops": r(peak["peak_flops"] / 1e9),
        "peak_method": f"{peak['method']}@M={peak['rows']}",
        "achieved_gflops": r(achieved / 1e9),
        "fraction_of_limit": r(fraction, 3),
        "limit_tok_s": r(limit_tok_s),
        "limit_tok_s_weights_only": r(peak["peak_flops"] / fl["per_token_weights"]),
        "gflop_per_generated_token": r(fl["total"] / e_toks / 1e9, 3),
        "attention_share_of_flops": r(fl["attention"] / fl["total"], 3),
        "decode_tok_s": r(decode_tok_s),
        "prefill_tok_s": r(c["prefill_tokens"] / c["prefill_secs"] if c["prefill_secs"] else NAN),
        "prefill_tokens_computed": int(c["prefill_tokens"]),
        "prefill_tokens_cached": int(served),
        "engine_secs_prefill_decode_other": [r(c["prefill_secs"]), r(c["decode_secs"]),
                                             r(e_secs - c["prefill_secs"] - c["decode_secs"])],
        "llamacpp_b1_tok_s": r(f16.get("b1", NAN)),
        "llamacpp_best_tok_s": r(f16.get("best", NAN)),
        "llamacpp_best_batch": f16.get("best_batch"),
        "engine_vs_llamacpp": r(engine_tok_s / f16.get("best", NAN), 2),
        "engine_b1_vs_llamacpp_b1": r(e1_tok_s / f16.get("b1", NAN), 2),
        "llamacpp_q4_1_b1_tok_s": r(q4.get("b1", NAN)),
        "llamacpp_q4_1_best_tok_s": r(q4.get("best", NAN)),
        "engine_vs_llamacpp_q4_1": r(engine_tok_s / q4.get("best", NAN), 2),
        "engine_b1_vs_llamacpp_q4_1_b1": r(e1_tok_s / q4.get("b1", NAN), 2),
        "llamacpp_tok_s_by_batch": {k: {s: r(t) for s, t in v["by_batch"].items()} for k, v in lc.items()},
        "llamacpp_kv_swept": args.llamacpp_kv,
        **fp32,
        "cpu": cpu_model,
        "cpu_flags": flags,
        "cpus": os.cpu_count(),
    }
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main()
