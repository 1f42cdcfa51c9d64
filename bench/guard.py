"""The guard's cost and its decisions: added latency and throughput with a real client, and block rates on XSTest.

    python bench/guard.py [--scorers none,feedback,classifier] [--feedback transformers/embedded]
                          [--classifier DIR] [--principles all|id,id] [--requests 32] [--limit N] [--threads 0]
                          [--levels 1,8,32]

1. **Latency**, loopback only, bounded: ``charter serve`` over a mock model that takes ``--upstream-delay`` seconds
   per batch is the local upstream; the official ``openai`` SDK sends ``--requests`` requests per level (at least
   the concurrency) at concurrency 1, 8 and 32, straight to the upstream and through the guard (input + output
   checks). Printed per scorer and level: p50/p99 latency direct and guarded, the added p50/p99, requests/s
   through the guard, and the scorer's cost per request (scoring calls, ms). ``none`` is the proxy with its checks
   off (the HTTP overhead alone).
2. **Decisions** on XSTest (``../shared/data/xstest_dev.csv``): thresholds calibrated on the TRAIN part
   (:mod:`charter.guard.calibrate`, false-block budget ``--target-false-block``), then the block rate on unsafe and
   the false-block rate on safe prompts of the EVAL part, for each scorer, at the calibrated threshold and at the
   uncalibrated 0.5. These are the guard's input decisions (the request alone, before any answer).

Last line: one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def pct(values: list[float], q: float) -> float:
    """The q-quantile (0..1) of ``values`` in milliseconds, interpolated."""
    from charter.evaluation.stats import percentile

    return round(percentile(sorted(values), q) * 1000, 1)


def fire(url: str, n: int, concurrency: int, budget: float) -> tuple[list[float], float, int]:
    """``n`` chat requests with the openai SDK, ``concurrency`` at a time; (latencies, wall seconds, errors)."""
    import openai

    client = openai.OpenAI(base_url=url, api_key="bench", max_retries=0, timeout=300)
    lat: list[float] = []
    errors = 0
    lock = threading.Lock()
    todo = list(range(n))
    stop = time.monotonic() + budget

    def worker() -> None:
        nonlocal errors
        while time.monotonic() < stop:
            with lock:
                if not todo:
                    return
                i = todo.pop()
            t = time.perf_counter()
            try:
                client.chat.completions.create(model="m", messages=[  # type: ignore[arg-type]
                    {"role": "user", "content": f"How long should I steep green tea? (request {i})"}],
                    max_tokens=48)
                with lock:
                    lat.append(time.perf_counter() - t)
            except openai.OpenAIError:
                with lock:
                    errors += 1

    start = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return lat, time.perf_counter() - start, errors


def batch_delay_backend(delay: float) -> Any:
    """A mock model that takes ``delay`` seconds per batch, whatever its size (as a batched model roughly does)."""
    from charter.backends.mock import MockBackend

    class PerBatch(MockBackend):
        def generate(self, requests: Any) -> Any:
            time.sleep(delay)
            return super().generate(requests)

    return PerBatch()


def latency(args: argparse.Namespace, scorer: str, principles: list[str] | None) -> dict[str, Any]:
    """Direct vs guarded latency at each concurrency level for one scorer."""
    from charter.guard.config import GuardConfig
    from charter.guard.server import build_guard
    from charter.serve import ChatServer

    work = Path(tempfile.mkdtemp(prefix="charter-bench-guard-"))
    out: dict[str, Any] = {}
    with ChatServer(batch_delay_backend(args.upstream_delay), port=0) as up:
        fields: dict[str, Any] = {"upstream": f"openai/mock@{up.url}", "port": 0, "log": str(work / "g.sqlite"),
                                  "threads": args.threads, "principles": principles, "latency_budget": None,
                                  "verify_revision": False, "feedback": args.feedback, "dtype": args.dtype}
        if scorer == "none":
            fields |= {"check_input": False, "check_output": False, "feedback": "mock/echo"}
        elif scorer == "classifier":
            fields |= {"scorer": "classifier", "classifier": args.classifier}
        guard = build_guard(GuardConfig(**fields))
        with guard:
            fire(guard.url, 2, 1, 600)  # warm-up: weights loaded, caches built
            for level in args.levels:
                n = max(args.requests, level)
                d_lat, d_wall, d_err = fire(up.url, n, level, args.level_budget)
                g_lat, g_wall, g_err = fire(guard.url, n, level, args.level_budget)
                rows = guard.log.rows("requests", "ORDER BY created") if guard.log else []
                calls = [int(str(r["scorer_calls"])) for r in rows[-len(g_lat):]] if g_lat else []
                row = {"requests": len(g_lat), "errors": d_err + g_err,
                       "direct_p50_ms": pct(d_lat, 0.5), "direct_p99_ms": pct(d_lat, 0.99),
                       "guard_p50_ms": pct(g_lat, 0.5), "guard_p99_ms": pct(g_lat, 0.99),
                       "added_p50_ms": round(pct(g_lat, 0.5) - pct(d_lat, 0.5), 1),
                       "added_p99_ms": round(pct(g_lat, 0.99) - pct(d_lat, 0.99), 1),
                       "guard_rps": round(len(g_lat) / g_wall, 2) if g_wall else None,
                       "direct_rps": round(len(d_lat) / d_wall, 2) if d_wall else None,
                       "scorer_calls_per_request": statistics.mean(calls) if calls else 0}
                out[str(level)] = row
                print(f"  {scorer:<10} c={level:<3} n={row['requests']:<3} direct p50 {row['direct_p50_ms']:>7} ms "
                      f"p99 {row['direct_p99_ms']:>7} | guard p50 {row['guard_p50_ms']:>8} p99 "
                      f"{row['guard_p99_ms']:>8} | added p50 {row['added_p50_ms']:>8} p99 {row['added_p99_ms']:>8} "
                      f"| {row['guard_rps']} req/s | {row['scorer_calls_per_request']:.0f} scoring calls/request",
                      flush=True)
    return out


def decisions(args: argparse.Namespace, scorer: str, principles: list[str] | None) -> dict[str, Any]:
    """XSTest EVAL block rates at TRAIN-calibrated thresholds and at 0.5, for one scorer."""
    from charter.guard.calibrate import calibrate, guard_principles, load_labelled, open_scorer, rates, score_prompts
    from charter.guard.config import GuardConfig

    data = SHARED / "xstest_dev.csv"
    cfg = GuardConfig(upstream="mock/echo", feedback=args.feedback, threads=args.threads, principles=principles,
                      dtype=args.dtype,
                      scorer="classifier" if scorer == "classifier" else "feedback", classifier=args.classifier)
    cache = Path(tempfile.mkdtemp(prefix="charter-bench-xs-")) / "calls.sqlite"
    s = open_scorer(cfg, cache)
    ps, blocking = guard_principles(cfg)
    t = time.perf_counter()
    entry = calibrate(s, ps, blocking, [str(data)], args.target_false_block, limit=args.limit)
    seconds = time.perf_counter() - t
    evals = load_labelled(data, "eval", args.limit)
    fixed = rates(evals, score_prompts(s, evals, ps), blocking, {}, 0.5)  # served from the cache
    g = entry["global"]
    row = {"scorer_id": s.id, "threshold": g["threshold"], "eval": g["eval"], "eval_at_0.5": fixed,
           "train_n": g["train_n"], "cost": entry["cost"], "seconds": round(seconds, 1)}
    ev = g["eval"]
    print(f"  {scorer:<10} threshold {g['threshold']:.4f}: EVAL block rate unsafe "
          f"{ev['block_rate_unsafe']['value']} {ev['block_rate_unsafe']['ci']} (n={ev['block_rate_unsafe']['n']}), "
          f"false-block safe {ev['false_block_rate_safe']['value']} {ev['false_block_rate_safe']['ci']} "
          f"(n={ev['false_block_rate_safe']['n']}); at 0.5: {fixed['block_rate_unsafe']['value']} / "
          f"{fixed['false_block_rate_safe']['value']}; {entry['cost']['calls_per_check']:.0f} calls, "
          f"{entry['cost']['seconds_per_check'] * 1000:.0f} ms per check", flush=True)
    return row


def main() -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scorers", default="none,feedback,classifier",
                    help="Comma-separated: none (checks off), feedback, classifier (needs --classifier).")
    ap.add_argument("--feedback", default="transformers/embedded", help="The feedback model (scorer=feedback).")
    ap.add_argument("--classifier", help="A folder from `charter guard distill` (scorer=classifier).")
    ap.add_argument("--principles", default="all", help="'all' (every harm principle) or comma-separated ids.")
    ap.add_argument("--requests", type=int, default=32, help="Requests per concurrency level (at least the level).")
    ap.add_argument("--level-budget", type=float, default=120.0, help="Seconds per level and path before stopping.")
    ap.add_argument("--upstream-delay", type=float, default=0.05, help="Seconds the mock upstream takes per batch.")
    ap.add_argument("--limit", type=int, help="At most this many XSTest prompts per part (evenly spaced).")
    ap.add_argument("--target-false-block", type=float, default=0.05)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--dtype", default="auto", help="Local feedback model: auto, float32 or bfloat16.")
    ap.add_argument("--levels", default="1,8,32", help="Concurrency levels, comma-separated.")
    ap.add_argument("--skip-latency", action="store_true")
    ap.add_argument("--skip-decisions", action="store_true")
    args = ap.parse_args()
    args.levels = [int(x) for x in str(args.levels).split(",") if x.strip()]
    principles = None if args.principles == "all" else [p.strip() for p in args.principles.split(",")]
    scorers = [s.strip() for s in args.scorers.split(",") if s.strip()]
    if "classifier" in scorers and not args.classifier:
        print("classifier: skipped (no --classifier DIR; train one with `charter guard distill`)", file=sys.stderr)
        scorers.remove("classifier")
    cpu = Path("/proc/cpuinfo").read_text().split("model name")[1].split("\n")[0].strip(" :\t") \
        if Path("/proc/cpuinfo").is_file() else "unknown"
    result: dict[str, Any] = {"cpu": cpu, "principles": principles or "all", "feedback": args.feedback,
                              "classifier": args.classifier, "threads": args.threads, "latency": {},
                              "xstest_eval": {}}
    start = time.perf_counter()
    if not args.skip_latency:
        print(f"latency (upstream: mock, {args.upstream_delay * 1000:.0f} ms per batch; client: openai SDK)")
        for s in scorers:
            result["latency"][s] = latency(args, s, principles)
    if not args.skip_decisions:
        if not (SHARED / "xstest_dev.csv").is_file():
            print(f"decisions: skipped ({SHARED} not found)", file=sys.stderr)
        else:
            print("XSTest decisions (thresholds from the TRAIN part, rates on the EVAL part)")
            for s in [s for s in scorers if s != "none"]:
                result["xstest_eval"][s] = decisions(args, s, principles)
    result["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
