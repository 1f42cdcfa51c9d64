"""One real run on the embedded model: a few prompts, one round, a few SFT steps (slow; CI runs it)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from charter.records import CritiqueChain, SFTExample, read_jsonl


@pytest.mark.slow
def test_quickstart_pipeline_runs_end_to_end_on_the_embedded_model(tmp_path: Path, embedded_dir: Path) -> None:
    """The quick-start's own critique settings on 12 red-team + 2 helpful prompts, one round, two SFT steps.

    12 prompts because the embedded model's direct revisions often fail the filters (they copy a few-shot example,
    keep helping, or run on past the length limit; the quick-start keeps their complete sentences), so at least one
    accepted revision is expected among 12 on any machine; a run of only helpful answers fails the test."""
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "charter.cli", "run", "examples/quickstart.yaml", "--out", str(run),
           "--set", "stages=[critique, sft]", "--set", "threads=1",
           "--set", "prompts.red_team_limit=12", "--set", "prompts.helpful_limit=2", "--set", "critique.rounds=1",
           "--set", "sft.max_steps=2", "--set", "sft.max_length=320"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=1500, cwd=Path(__file__).parents[1])
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"run folder: {run.resolve()}" in out.stdout
    assert "PROMPT" in out.stdout and "REVISION" in out.stdout  # example transcripts printed
    chains = read_jsonl(run / "critiques.jsonl", CritiqueChain)
    assert len(chains) == 14
    red = [c for c in chains if not c.prompt.helpful]
    # direct revisions: answer, then up to revision_samples attempts, stopping at the first accepted one
    assert all(c.steps[0].kind == "answer" and {s.kind for s in c.steps[1:]} == {"revision"} for c in red)
    tries = yaml.safe_load((run / "config.yaml").read_text())["critique"]["revision_samples"]
    assert tries == 4  # the quick-start's own setting, as resolved into the run folder
    assert all(len(c.steps) - 1 <= tries and all(s.status != "ok" for s in c.steps[1:-1]) for c in red)
    assert all(s.text or s.status != "ok" for c in chains for s in c.steps)
    sft = read_jsonl(run / "sft.jsonl", SFTExample)
    revised = [e for e in sft if e.source == "revision"]
    accepted = [c for c in red if c.accepted]
    assert revised, f"no revision was accepted: {[c.steps[-1].status for c in red]}"  # helpful answers alone do not do
    assert len(revised) == len(accepted)
    finals = {c.final_text() for c in accepted}
    answers = {c.steps[0].text for c in accepted}
    for e in revised:
        text = e.messages[-1]["content"]
        assert text in finals and text not in answers  # the revised text, not the policy's first answer
    assert (run / "sft" / "model" / "model.safetensors").exists()
    assert "[critique]" in out.stderr  # progress lines
