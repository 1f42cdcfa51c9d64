"""DPO: soft labels reach the loss, training changes the weights, and the saved model reloads."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from charter.errors import CharterError
from charter.records import PreferencePair, write_jsonl
from charter.train.dpo import DPOConfig, load_preferences, run_dpo, train_dpo


def _prefs(soft: list[float]) -> list[PreferencePair]:
    return [PreferencePair(id=f"p{i}", prompt=[{"role": "user", "content": f"How do I do thing {i}?"}],
                           chosen=[{"role": "assistant", "content": f"Here is a safe way to do thing {i}."}],
                           rejected=[{"role": "assistant", "content": "No."}], soft_label=s, chosen_id=f"a{i}",
                           rejected_id=f"b{i}", source="ai", model="mock") for i, s in enumerate(soft)]


def _weights(folder: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def test_dpo_changes_weights_and_the_saved_model_reloads(tmp_path: Path, tiny_model_dir: Path) -> None:
    import torch

    from charter.backends import load_backend
    from charter.backends.base import GenParams, GenRequest

    path = tmp_path / "preferences.jsonl"
    write_jsonl(path, _prefs([0.9, 0.8, 0.7, 0.95]))
    cfg = DPOConfig(max_steps=2, batch_size=2, learning_rate=5e-3, max_length=64)
    summary = run_dpo(cfg, path, tmp_path / "dpo", f"transformers/{tiny_model_dir}")
    assert summary["steps"] == 2 and summary["loss_type"] == "exo_pair" and summary["peak_rss_mb"] > 50
    before, after = _weights(tiny_model_dir), _weights(tmp_path / "dpo" / "model")
    assert before.keys() == after.keys()  # a merged, plain model folder
    assert [k for k in before if not torch.equal(before[k], after[k])]  # type: ignore[arg-type]
    assert (tmp_path / "dpo" / "adapter" / "adapter_config.json").is_file()

    backend = load_backend(f"transformers/{tmp_path / 'dpo' / 'model'}")
    assert backend.generate([GenRequest.of([{"role": "user", "content": "hi"}], GenParams(max_new_tokens=3))])
    assert "skipped" in run_dpo(cfg, path, tmp_path / "dpo", f"transformers/{tiny_model_dir}")


def test_soft_labels_set_each_pairs_target_in_the_exo_loss(tmp_path: Path, tiny_model_dir: Path) -> None:
    soft = [0.9, 0.6, 0.75]
    cfg = DPOConfig(max_steps=1, batch_size=len(soft), learning_rate=1e-3, max_length=64)
    summary = train_dpo(cfg, _prefs(soft), tmp_path / "dpo", f"transformers/{tiny_model_dir}")
    # At step 0 the LoRA policy equals the reference, so sigma(beta * delta) = 1/2 and EXO's loss is
    # KL((1/2, 1/2) || (p, 1 - p)) for each pair's own soft label p.
    expected = sum(0.5 * math.log(0.5 / p) + 0.5 * math.log(0.5 / (1 - p)) for p in soft) / len(soft)
    assert summary["first_loss"] == pytest.approx(expected, rel=1e-3)
    hard = train_dpo(cfg.model_copy(update={"loss": "hard"}), _prefs(soft), tmp_path / "dpo_hard",
                     f"transformers/{tiny_model_dir}")
    assert hard["loss_type"] == "sigmoid" and hard["first_loss"] == pytest.approx(math.log(2), rel=1e-3)


def test_min_confidence_drops_near_ties_and_says_so_when_nothing_is_left(tmp_path: Path,
                                                                        tiny_model_dir: Path) -> None:
    with pytest.raises(CharterError, match="no preference pair has soft_label >= 0.9"):
        train_dpo(DPOConfig(min_confidence=0.9), _prefs([0.55, 0.6]), tmp_path / "d", f"transformers/{tiny_model_dir}")


def test_an_hh_file_loads_as_human_preferences_for_the_baseline(tmp_path: Path) -> None:
    row = {"id": "h1", "chosen": "\n\nHuman: hi\n\nAssistant: Hello! How can I help?",
           "rejected": "\n\nHuman: hi\n\nAssistant: Go away."}
    path = tmp_path / "hh.jsonl"
    path.write_text(json.dumps(row) + "\n")
    prefs = load_preferences(path)
    assert len(prefs) == 1 and prefs[0].source == "human" and prefs[0].soft_label == 1.0
    assert prefs[0].prompt == [{"role": "user", "content": "hi"}]
    assert prefs[0].chosen == [{"role": "assistant", "content": "Hello! How can I help?"}]
