"""The same generation stage on 1 Ray worker (1 CPU) and on 2 workers (1 CPU each), one torch thread per worker.

A batch of charter's bundled prompts (initial answers, as the SL stage makes them) goes through
``CachedBackend(RayBackend(...))`` exactly as ``charter run --ray`` sends it, into a fresh call cache each time.
Workers load the model before the clock starts. Unless ``--address`` names a running cluster, the script starts its
own 2-CPU cluster on 127.0.0.1, checks that every socket it listens on is loopback, and stops it at the end.

    .venv/bin/python bench/ray.py                # 64 prompts x 64 new tokens on the embedded model
    .venv/bin/python bench/ray.py --quick        # a tiny run proving the script works

The last line of output is one JSON object: ``one_worker_s``, ``two_workers_s``, ``ratio`` (target >= 1.7) and
the settings and checks behind them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# This file is named ray.py: drop its folder from the path so `import ray` finds Ray, here and in Ray's workers
# (which inherit the driver's sys.path).
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]


def prompt_requests(n: int, max_new_tokens: int) -> list[Any]:
    """``n`` initial-answer requests spread evenly over the bundled red-team and helpful prompts."""
    from charter.backends.base import GenParams, GenRequest
    from charter.prompts import default_prompts

    prompts = default_prompts("all").prompts
    step = max(1, len(prompts) // n)
    picked = (prompts[::step] + prompts)[:n]
    params = GenParams(max_new_tokens=max_new_tokens)
    return [GenRequest.of(p.messages(), params) for p in picked]


def run_stage(address: str, workers: int, args: argparse.Namespace, requests: list[Any],
              folder: Path) -> dict[str, Any]:
    """Time the batch through CachedBackend on ``workers`` Ray workers of 1 CPU and 1 torch thread each."""
    from charter.backends import BackendOptions
    from charter.backends.base import GenParams, GenRequest
    from charter.backends.ray_pool import RayBackend
    from charter.store import CachedBackend, CallCache

    options = BackendOptions(dtype=args.dtype, threads=1, batch_size=args.batch_size)
    t0 = time.perf_counter()
    rb = RayBackend(args.model, options, address=address, num_workers=workers, cpus_per_worker=1.0,
                    threads_per_worker=1)
    load_s = time.perf_counter() - t0
    try:
        warm = [[GenRequest.of([{"role": "user", "content": "Hi"}], GenParams(max_new_tokens=4))]] * workers
        list(rb.map_chunks("generate", warm))
        rb.worker_chunks.clear()
        cached = CachedBackend(rb, CallCache(folder / f"workers{workers}.sqlite"), batch_size=args.batch_size)
        cpu0 = worker_cpu_seconds(rb.worker_pids)
        t0 = time.perf_counter()
        outs = cached.generate(requests)
        seconds = time.perf_counter() - t0
        cpu1 = worker_cpu_seconds(rb.worker_pids)
        cpu = cpu1 - cpu0 if min(cpu0, cpu1) >= 0 else -1.0
    finally:
        rb.close()
    tokens = sum(g.completion_tokens for g in outs)
    # CPU the workers actually got per second of wall time each: ~1.0 on an idle machine, much less when contended
    share = cpu / (seconds * workers) if cpu >= 0 else None
    print(f"{workers} worker(s): {seconds:.1f}s for {len(requests)} prompts, {tokens} tokens "
          f"({tokens / seconds:.0f} tok/s); model load {load_s:.1f}s; chunks per worker "
          f"{sorted(rb.worker_chunks.values())}; CPU share per worker {share if share is None else round(share, 2)}",
          flush=True)
    return {"seconds": seconds, "tokens": tokens, "texts": [g.text for g in outs],
            "chunks_per_worker": sorted(rb.worker_chunks.values()), "cpu_share": share}


def worker_cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds used so far by the worker processes (-1 when they are not on this machine)."""
    import psutil

    try:
        return sum(sum(psutil.Process(pid).cpu_times()[:2]) for pid in pids)
    except psutil.Error:
        return -1.0


def wait_for_free_cpus(ray: Any, want: float, timeout: float = 60.0) -> None:
    """Killed actors give their CPUs back asynchronously; wait until the next pool fits."""
    deadline = time.monotonic() + timeout
    while ray.available_resources().get("CPU", 0) < want and time.monotonic() < deadline:
        time.sleep(0.2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="transformers/embedded")
    ap.add_argument("--dtype", default="auto", help="auto (fp32 unless the CPU has native bf16), float32, bfloat16")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=8, help="requests per chunk (one worker call)")
    ap.add_argument("--address", default=None, help="a running cluster (HOST:PORT); default: start one here")
    ap.add_argument("--quick", action="store_true", help="8 prompts x 8 tokens, batch 2: proves the script works")
    args = ap.parse_args()
    if args.quick:
        args.prompts, args.max_new_tokens, args.batch_size = 8, 8, 2

    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # before Ray is imported: loopback only
    from charter.backends.ray_local import LocalCluster, is_loopback_ip
    from charter.backends.ray_pool import ray_init

    requests = prompt_requests(args.prompts, args.max_new_tokens)
    cluster = None if args.address else LocalCluster(num_cpus=2, env={"OMP_NUM_THREADS": "1"})
    address = args.address or (cluster.address if cluster else "")
    try:
        ray = ray_init(address)
        loopback: bool | None = None
        if cluster is not None:
            sockets = cluster.listening()
            exposed = [s for s in sockets if not is_loopback_ip(s[1])]
            if exposed:
                sys.exit(f"Ray listens beyond loopback, stopping before any work: {exposed}")
            loopback = True
            print(f"cluster {address}: {len(sockets)} listening sockets, all on loopback", flush=True)
        with tempfile.TemporaryDirectory(prefix="charter-bench-ray-") as tmp:
            one = run_stage(address, 1, args, requests, Path(tmp))
            wait_for_free_cpus(ray, 2.0)
            two = run_stage(address, 2, args, requests, Path(tmp))
    finally:  # always stop the cluster this script started, whatever failed
        try:
            if ray_is_up():
                sys.modules["ray"].shutdown()
        finally:
            if cluster is not None:
                cluster.stop()

    ratio = one["seconds"] / two["seconds"]
    same = sum(a == b for a, b in zip(one["texts"], two["texts"], strict=True)) / len(requests)
    result = {
        "one_worker_s": round(one["seconds"], 2),
        "two_workers_s": round(two["seconds"], 2),
        "ratio": round(ratio, 2),
        "target_ratio": 1.7,
        "prompts": len(requests),
        "max_new_tokens": args.max_new_tokens,
        "batch_size": args.batch_size,
        "model": args.model,
        "dtype": args.dtype,
        "completion_tokens": one["tokens"],
        "one_worker_tok_s": round(one["tokens"] / one["seconds"], 1),
        "two_workers_tok_s": round(two["tokens"] / two["seconds"], 1),
        "chunks_per_worker": two["chunks_per_worker"],
        "outputs_identical_rate": round(same, 3),
        "cpu_share_per_worker": [None if r["cpu_share"] is None else round(r["cpu_share"], 2) for r in (one, two)],
        "ray_loopback_only": loopback,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, load avg {os.getloadavg()[0]:.1f}",
    }
    print(json.dumps(result))


def ray_is_up() -> bool:
    """True when this process is connected to Ray (without importing it otherwise)."""
    mod = sys.modules.get("ray")
    return bool(mod is not None and getattr(mod, "is_initialized", lambda: False)())


if __name__ == "__main__":
    main()
