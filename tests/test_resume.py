"""A run killed with SIGKILL mid-stage resumes without repeating calls or duplicating records (real subprocess)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from charter.records import CritiqueChain, SFTExample, read_jsonl

CHARTER = [sys.executable, "-m", "charter.cli"]


def _cached_rows(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(db, timeout=5) as conn:
            return int(conn.execute("SELECT COUNT(*) FROM calls").fetchone()[0])
    except sqlite3.OperationalError:  # table not created yet
        return 0


def _write_inputs(tmp_path: Path, n_prompts: int, log: Path) -> Path:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"risky request number {i}"}) + "\n" for i in range(n_prompts)))
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(
        f"name: killed\n"
        f"policy: {{model: 'mock/echo?delay=0.05&log={log}', batch_size: 1}}\n"
        f"prompts: {{red_team: '{prompts}', helpful: ''}}\n"
        f"stages: [critique]\n"
        f"critique: {{rounds: 2}}\n"
    )
    return cfg


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_killed_run_resumes_without_repeating_calls_or_duplicating_records(tmp_path: Path) -> None:
    n_prompts = 8
    total_calls = n_prompts * 5  # answer + 2 x (critique + revision)
    log = tmp_path / "calls.log"
    cfg = _write_inputs(tmp_path, n_prompts, log)
    run = tmp_path / "run"
    db = run / "calls.sqlite"

    proc = subprocess.Popen([*CHARTER, "critique", str(cfg), "--out", str(run)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while _cached_rows(db) < 12:  # mid-stage: inside the first round's critiques
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        assert time.monotonic() < deadline, "the stage never got going"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    cached_at_kill = _cached_rows(db)
    calls_before = _lines(log)
    assert 12 <= cached_at_kill < total_calls
    assert not (run / "critiques.jsonl").exists()  # nothing half-written

    done = subprocess.run([*CHARTER, "critique", str(cfg), "--out", str(run)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    repeated = _lines(log) - calls_before - (total_calls - cached_at_kill)
    assert repeated == 0, f"{repeated} finished calls were made again"
    assert _cached_rows(db) == total_calls

    chains = read_jsonl(run / "critiques.jsonl", CritiqueChain)
    assert len(chains) == n_prompts and len({c.id for c in chains}) == n_prompts
    sft = read_jsonl(run / "sft.jsonl", SFTExample)
    assert len({e.id for e in sft}) == len(sft)

    # a third run of the finished stage makes no calls at all and gives the same records
    before = _lines(log)
    again = subprocess.run([*CHARTER, "critique", str(cfg), "--out", str(run)], capture_output=True, text=True,
                           timeout=120)
    assert again.returncode == 0, again.stderr
    assert _lines(log) == before
    assert [c.model_dump() for c in read_jsonl(run / "critiques.jsonl", CritiqueChain)] == [
        c.model_dump() for c in chains]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "missing.yaml"], "missing.yaml: config file not found"),
        (["run", "--set", "policy=nosuch/model"], "unknown backend 'nosuch'"),
        (["run", "--set", "policy=transformers//no/such/folder"], "/no/such/folder"),
        (["run", "--set", "stages=[critique, fly]"], "unknown stage"),
        (["run", "--set", "critique.rounds=0"], "critique.rounds"),
    ],
)
def test_bad_input_gives_one_line_error(tmp_path: Path, args: list[str], message: str) -> None:
    out = subprocess.run([*CHARTER, *args, "--out", str(tmp_path / "r")], capture_output=True, text=True,
                         timeout=120, cwd=tmp_path)
    assert out.returncode != 0
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("error: ") and message in lines[0] and " — " in lines[0]
