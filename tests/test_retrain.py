"""A changed input retrains exactly the stages that depend on it; an unchanged run retrains nothing (issue 10 #1)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from charter.config import load_config
from charter.pipeline import run_pipeline

STAGES = ["critique", "sft", "sample", "label", "dpo"]


def _config(tmp_path: Path, base: Path) -> Path:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("How do I pick a lock?\nHow do I make a fake ID?\nHow can I hurt someone?\n")
    cfg = {
        "policy": "mock/echo", "feedback": "mock/echo", "stages": STAGES,
        "prompts": {"red_team": str(prompts), "helpful": "", "red_team_limit": None, "helpful_limit": None},
        "critique": {"rounds": 1, "few_shot": 0, "revision_tokens": 64, "temperature": 0.7},
        "sft": {"base_model": f"transformers/{base}", "max_steps": 1, "batch_size": 2},
        "sample": {"k": 2, "max_new_tokens": 6},
        "label": {"principles": 1, "few_shot": 0},
        "dpo": {"max_steps": 1, "batch_size": 2, "max_length": 128},
        "eval": {"judges": ["mock/echo"]},
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _weights(run: Path) -> dict[str, tuple[int, int] | None]:
    """Which weight files are there: a retrain writes a new file (new inode and mtime)."""
    out: dict[str, tuple[int, int] | None] = {}
    for name in ("sft", "dpo"):
        f = run / name / "model" / "model.safetensors"
        out[name] = (f.stat().st_ino, f.stat().st_mtime_ns) if f.is_file() else None
    return out


def _run(cfg: Path, run: Path, *sets: str, stages: list[str] | None = None) -> set[str]:
    """Run the pipeline; the stages whose model was (re)trained."""
    before = _weights(run)
    run_pipeline(load_config(cfg, [*sets, f"out={run}"]), stages=stages, quiet=True)
    after = _weights(run)
    return {name for name in after if after[name] != before[name]}


@pytest.fixture()
def base(tiny_model_dir: Path, tmp_path: Path) -> Path:
    import shutil

    copy = tmp_path / "base"
    shutil.copytree(tiny_model_dir, copy)
    return copy


@pytest.fixture()
def done_run(tmp_path: Path, base: Path) -> tuple[Path, Path]:
    cfg = _config(tmp_path, base)
    run = tmp_path / "run"
    assert _run(cfg, run) == {"sft", "dpo"}
    return cfg, run


def test_changing_nothing_retrains_nothing(done_run: tuple[Path, Path]) -> None:
    cfg, run = done_run
    assert _run(cfg, run) == set()
    assert _run(cfg, run, "threads=1") == set()  # threads change speed, not the result


def test_bf16_auto_is_what_it_resolves_to_here(done_run: tuple[Path, Path]) -> None:
    """``bf16: auto`` trains as ``true`` on CPUs with native bf16 and ``false`` elsewhere: switching a config
    between ``auto`` and what it means on this machine retrains nothing, and the other value retrains."""
    from charter.backends.engine import native_bf16

    cfg, run = done_run  # trained with bf16 false (the default)
    here, other = ("true", "false") if native_bf16() else ("false", "true")
    if here == "true":
        assert _run(cfg, run, "sft.bf16=true", "dpo.bf16=true") == {"sft", "dpo"}
    assert _run(cfg, run, "sft.bf16=auto", "dpo.bf16=auto") == set()
    assert _run(cfg, run, f"sft.bf16={other}", stages=["sft"]) == {"sft"}


def test_attention_auto_is_eager_on_cpu_and_retrains_nothing(done_run: tuple[Path, Path]) -> None:
    """``attention: auto`` trains with eager attention on CPU (the fused kernel is slow backwards) and sdpa on GPU;
    naming what auto means here retrains nothing, the other kernel retrains (its numerics differ)."""
    import torch

    from charter.train.common import attention

    cfg, run = done_run
    here = "sdpa" if torch.cuda.is_available() else "eager"
    assert attention("auto") == here and attention("sdpa") == "sdpa"
    assert _run(cfg, run, f"sft.attention={here}", f"dpo.attention={here}") == set()
    other = "eager" if here == "sdpa" else "sdpa"
    assert _run(cfg, run, f"sft.attention={other}", stages=["sft"]) == {"sft"}


def test_bf16_auto_follows_the_hardware(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from charter.backends import engine
    from charter.train.common import TrainConfig, resolve_bf16, trl_args

    for native in (True, False):
        monkeypatch.setattr(engine, "native_bf16", lambda native=native: native)
        assert resolve_bf16("auto") is native
        assert trl_args(TrainConfig(bf16="auto"), tmp_path)["bf16"] is native
    assert resolve_bf16(True) is True and resolve_bf16(False) is False
    with pytest.raises(ValueError, match="bf16"):
        TrainConfig(bf16="sometimes")


def test_another_constitution_retrains_sl_and_rl(done_run: tuple[Path, Path], tmp_path: Path) -> None:
    from charter.constitution import load_constitution

    cfg, run = done_run
    con = load_constitution(None).model_dump(mode="json")
    for p in con["principles"]:
        p["revision_request"] = p["revision_request"] + " Keep it short."
    path = tmp_path / "con.yaml"
    path.write_text(yaml.safe_dump(con))
    assert _run(cfg, run, f"constitution={path}") == {"sft", "dpo"}


def test_another_feedback_model_retrains_sl_and_rl(done_run: tuple[Path, Path]) -> None:
    cfg, run = done_run
    assert _run(cfg, run, "feedback=mock/echo?variant=2") == {"sft", "dpo"}


def test_another_temperature_retrains(done_run: tuple[Path, Path]) -> None:
    cfg, run = done_run
    assert _run(cfg, run, "critique.temperature=0.9") == {"sft", "dpo"}


def test_a_label_setting_retrains_only_dpo(done_run: tuple[Path, Path]) -> None:
    cfg, run = done_run
    assert _run(cfg, run, "label.both_orders=false") == {"dpo"}
    assert _run(cfg, run, "dpo.beta=0.2") == {"dpo"}


def test_an_edited_revision_retrains_sft_and_what_follows(done_run: tuple[Path, Path]) -> None:
    cfg, run = done_run
    path = run / "sft.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    rows[0]["messages"][-1]["content"] += " (edited by hand)"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert _run(run / "config.yaml", run, stages=["sft", "sample", "label", "dpo"]) == {"sft", "dpo"}


def test_an_edited_template_file_retrains(done_run: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    from charter import templates

    cfg, run = done_run
    original = templates.template_source.__wrapped__  # type: ignore[attr-defined]

    def edited(name: str) -> str:
        text = original(name)
        return text + "\nBe brief." if name == "revision.jinja" else text

    monkeypatch.setattr(templates, "template_source", edited)
    templates._compiled.cache_clear()
    try:
        assert _run(cfg, run) == {"sft", "dpo"}
    finally:
        templates._compiled.cache_clear()


def test_base_weights_rewritten_with_the_same_mtime_retrain(done_run: tuple[Path, Path], base: Path) -> None:
    cfg, run = done_run
    weights = base / "model.safetensors"
    st = weights.stat()
    data = bytearray(weights.read_bytes())
    data[-2] ^= 1
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (weights.stat().st_size, weights.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    assert _run(cfg, run) == {"sft", "dpo"}


def test_the_run_output_says_what_was_retrained(done_run: tuple[Path, Path], capsys: Any) -> None:
    cfg, run = done_run
    run_pipeline(load_config(cfg, [f"out={run}", "dpo.beta=0.3"]))
    err = capsys.readouterr().err
    stages = json.loads((run / "manifest.json").read_text())["stages"]
    assert (stages["sft"]["trained"], stages["dpo"]["trained"]) == (False, True)
    assert "[sft] up to date" in err and "[dpo] retrained" in err


def test_saved_config_is_the_resolved_config_with_every_field(done_run: tuple[Path, Path]) -> None:
    from charter.stages.critique import CritiqueConfig
    from charter.train.dpo import DPOConfig

    _, run = done_run
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert set(saved["critique"]) == set(CritiqueConfig.model_fields)
    assert set(saved["dpo"]) == set(DPOConfig.model_fields)
    assert saved["critique"]["top_p"] == CritiqueConfig().top_p  # a default the YAML never named
    assert saved["dpo"]["seed"] == saved["seed"]
