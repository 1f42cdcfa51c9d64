"""Kill a real run mid-stage with SIGKILL, restart it, and count repeated model calls; then time a fully cached
re-run against the first run.

    python bench/resume.py [--prompts 8] [--threads 0] [--model transformers/embedded]

Last line: {"repeated_calls": n, "cached_speedup": x, ...}. Targets (issue 5): 0 repeated calls, >= 50x speed-up.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHARTER = [sys.executable, "-m", "charter.cli"]


def rows(db: Path) -> int:
    """Results stored in a run's call cache."""
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(db, timeout=5) as conn:
            return int(conn.execute("SELECT COUNT(*) FROM calls").fetchone()[0])
    except sqlite3.OperationalError:
        return 0


def stage_calls(run: Path) -> dict[str, int]:
    """Model calls made / served from cache by the last critique stage, from the manifest."""
    return dict(json.loads((run / "manifest.json").read_text())["stages"]["critique"]["model_calls"])


def command(cfg: Path, run: Path) -> list[str]:
    return [*CHARTER, "critique", str(cfg), "--out", str(run), "--quiet"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--model", default="transformers/embedded")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="charter-resume-"))
    cfg = work / "cfg.yaml"
    cfg.write_text(
        f"policy: {{model: '{args.model}', batch_size: 4}}\nthreads: {args.threads}\nstages: [critique]\n"
        f"prompts: {{red_team_limit: {args.prompts}, helpful: ''}}\n"
        "critique: {rounds: 2, few_shot: 1, answer_tokens: 64, critique_tokens: 48, revision_tokens: 64}\n"
    )
    total = args.prompts * 5

    # 1. an uninterrupted first run, timed
    first = work / "first"
    t0 = time.monotonic()
    subprocess.run(command(cfg, first), check=True, cwd=ROOT)
    first_s = time.monotonic() - t0

    # 2. the same stage again: everything from the cache
    t0 = time.monotonic()
    subprocess.run(command(cfg, first), check=True, cwd=ROOT)
    cached_s = time.monotonic() - t0
    cached = stage_calls(first)

    # 3. a run killed mid-stage, then restarted
    killed = work / "killed"
    proc = subprocess.Popen(command(cfg, killed), cwd=ROOT)
    while rows(killed / "calls.sqlite") < total // 2:
        if proc.poll() is not None:
            sys.exit("the run finished before it could be killed: use more --prompts")
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    at_kill = rows(killed / "calls.sqlite")
    subprocess.run(command(cfg, killed), check=True, cwd=ROOT)
    resumed = stage_calls(killed)
    done = rows(killed / "calls.sqlite")
    repeated = resumed["made"] - (done - at_kill)

    same = (killed / "critiques.jsonl").read_text() == (first / "critiques.jsonl").read_text()
    figures = {
        "model": args.model, "prompts": args.prompts, "unique_calls": done, "cached_at_kill": at_kill,
        "calls_after_restart": resumed["made"], "repeated_calls": repeated,
        "first_run_s": round(first_s, 2), "cached_rerun_s": round(cached_s, 2),
        "cached_rerun_calls_made": cached["made"], "cached_speedup": round(first_s / cached_s, 1),
        "killed_run_output_identical": same, "threads": args.threads or os.cpu_count(),
    }
    for k, v in figures.items():
        print(f"{k:>26}: {v}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
