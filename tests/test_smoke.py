"""One real run on the embedded model: a few prompts, one round, a few SFT steps (slow; CI runs it)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from charter.records import CritiqueChain, SFTExample, read_jsonl


@pytest.mark.slow
def test_quickstart_pipeline_runs_end_to_end_on_the_embedded_model(tmp_path: Path, embedded_dir: Path) -> None:
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "charter.cli", "run", "examples/quickstart.yaml", "--out", str(run),
           "--set", "stages=[critique, sft]", "--set", "threads=1",
           "--set", "prompts.red_team_limit=3", "--set", "prompts.helpful_limit=2",
           "--set", "critique.rounds=1", "--set", "critique.answer_tokens=160", "--set", "critique.critique_tokens=48",
           "--set", "critique.revision_tokens=96", "--set", "sft.max_steps=2", "--set", "sft.max_length=192"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=Path(__file__).parents[1])
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"run folder: {run.resolve()}" in out.stdout
    assert "PROMPT" in out.stdout and "CRITIQUE" in out.stdout  # example transcripts printed
    chains = read_jsonl(run / "critiques.jsonl", CritiqueChain)
    assert len(chains) == 5
    red = [c for c in chains if not c.prompt.helpful]
    assert all([s.kind for s in c.steps] == ["answer", "critique", "revision"] for c in red)
    assert all(s.text or s.status != "ok" for c in chains for s in c.steps)
    sft = read_jsonl(run / "sft.jsonl", SFTExample)
    assert sft, "no example was accepted"
    assert (run / "sft" / "model" / "model.safetensors").exists()
    assert "[critique]" in out.stderr  # progress lines
