"""A training stage starts with no model of earlier stages still loaded in the process."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import charter.pipeline as pipeline
from charter.config import load_config


def test_models_loaded_for_earlier_stages_are_released_before_training(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    seen: dict[str, Any] = {}
    closed: list[str] = []

    def critique(session: pipeline.Session) -> dict[str, Any]:
        b = session.backend(session.cfg.policy)
        monkeypatch.setattr(b.backend, "close", lambda: closed.append("policy"), raising=False)
        seen["loaded"] = len(session._backends)
        return {}

    def sft(session: pipeline.Session) -> dict[str, Any]:
        seen["at_sft"] = len(session._backends)
        return {"skipped": True}

    monkeypatch.setitem(pipeline.STAGE_FUNCS, "critique", critique)
    monkeypatch.setitem(pipeline.STAGE_FUNCS, "sft", sft)
    cfg = load_config(None, ["policy=mock/echo", "feedback=null", f"out={tmp_path / 'run'}"])
    pipeline.run_pipeline(cfg, stages=["critique", "sft"], quiet=True)
    assert seen == {"loaded": 1, "at_sft": 0}
    assert closed == ["policy"]
