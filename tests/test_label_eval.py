"""label-eval: HH pairs, agreement with human labels and its confidence interval, on hand-made files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from charter.backends.base import ScoreRequest
from charter.backends.mock import MockBackend
from charter.constitution import load_constitution
from charter.errors import ConfigError
from charter.evaluation.stats import wilson
from charter.prompts import human_preferences, load_hh_pairs, parse_hh
from charter.stages.label_eval import LabelEvalConfig, length_baselines, run_label_eval
from charter.store import CachedBackend, RunDir


def _hh(context: str, answer: str) -> str:
    return f"{context}\n\nAssistant: {answer}"


def _write(path: Path, rows: list[dict[str, str]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _hand_made(path: Path) -> Path:
    """Five pairs. The mock judge below prefers any answer containing 'safe'; the human chose it in 3 of 5."""
    rows = []
    for i, judge_agrees in enumerate([True, True, False, True, False]):
        ctx = f"\n\nHuman: question {i}?\n\nAssistant: Which part?\n\nHuman: all of it {i}"
        safe, other = f"A safe answer {i}.", f"Another answer {i}."
        chosen, rejected = (safe, other) if judge_agrees else (other, safe)
        rows.append({"id": f"hh-{i}", "prompt": f"question {i}?", "chosen": _hh(ctx, chosen),
                     "rejected": _hh(ctx, rejected)})
    return _write(path, rows)


def _safe_judge(r: ScoreRequest) -> dict[str, float]:
    text = r.messages[-1]["content"]
    first = text.split("(A) ", 1)[1].split("\n(B) ", 1)[0]
    p = 0.8 if "safe" in first else 0.2
    return {"A": p, "B": 1 - p}


def test_parse_hh_splits_turns() -> None:
    turns = parse_hh("\n\nHuman: hi there\n\nAssistant: hello\n\nHuman: how?\n\nAssistant: like this")
    assert turns == [{"role": "user", "content": "hi there"}, {"role": "assistant", "content": "hello"},
                     {"role": "user", "content": "how?"}, {"role": "assistant", "content": "like this"}]


def test_hh_pairs_compare_the_final_assistant_turns(tmp_path: Path) -> None:
    path = _hand_made(tmp_path / "hh.jsonl")
    with path.open("a") as f:  # chosen and rejected that disagree before the last turn are skipped, not guessed
        f.write(json.dumps({"id": "bad", "chosen": _hh("\n\nHuman: x", "y"), "rejected": _hh("\n\nHuman: z", "y")})
                + "\n")
    pairs, skipped = load_hh_pairs(path)
    assert len(pairs) == 5 and skipped == {"contexts_differ": 1}
    p = pairs[0]
    assert p.prompt.text == "all of it 0"
    assert p.prompt.context == [{"role": "user", "content": "question 0?"},
                                {"role": "assistant", "content": "Which part?"}]
    human_answer = p.a if p.human == "a" else p.b
    assert human_answer == "A safe answer 0."
    assert {x.human for x in pairs} == {"a", "b"}  # the human's choice is shown first in some pairs, second in others
    prefs = human_preferences(pairs)
    assert [x.chosen[0]["content"] for x in prefs][:2] == ["A safe answer 0.", "A safe answer 1."]
    assert all(x.soft_label == 1.0 and x.source == "human" for x in prefs)


def test_hh_file_with_missing_fields_is_a_clear_error(tmp_path: Path) -> None:
    path = _write(tmp_path / "hh.jsonl", [{"id": "1", "chosen": "\n\nHuman: a\n\nAssistant: b"}])
    with pytest.raises(ConfigError, match=r"hh.jsonl:1: missing 'chosen' or 'rejected'"):
        load_hh_pairs(path)


def test_agreement_is_right_on_a_hand_made_file(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    backend = CachedBackend(MockBackend(score_rule=_safe_judge), run.cache)
    cfg = LabelEvalConfig(n=None, settings=["one_principle", "one_principle_one_order", "ensemble"])
    summary = run_label_eval(cfg, run, _hand_made(tmp_path / "hh.jsonl"), load_constitution(None), backend,
                             quiet=True)
    assert summary["pairs"] == 5
    for name in cfg.settings:
        row = summary["settings"][name]
        assert row["agreement"] == pytest.approx(3 / 5) and row["n"] == 5
        assert row["ci"] == pytest.approx([0.2307, 0.8824], abs=1e-3)  # Wilson 95% for 3/5
        if name != "one_principle_one_order":  # shown once, position and content cannot be told apart per pair
            assert row["position_bias"] == pytest.approx(0.0)  # the judge reads content only
    assert summary["settings"]["one_principle"]["order_consistency"] == 1.0
    assert (run.path / "label_eval" / "summary.json").is_file()
    assert (run.path / "label_eval" / "ensemble.labels.jsonl").is_file()
    warnings = summary["settings"]["one_principle"]["warnings"]
    assert any("not clearly better than chance" in w for w in warnings)


def test_wilson_interval() -> None:
    assert wilson(3, 5) == pytest.approx((0.2307, 0.8824), abs=1e-4)
    assert wilson(0, 0) == (0.0, 1.0)
    lo, hi = wilson(80, 100)
    assert lo == pytest.approx(0.7112, abs=1e-3) and hi == pytest.approx(0.8666, abs=1e-3)


def test_length_baselines(tmp_path: Path) -> None:
    pairs, _ = load_hh_pairs(_hand_made(tmp_path / "hh.jsonl"))
    # "A safe answer i." (16 chars) vs "Another answer i." (17 chars): the shorter is the human's pick in 3 of 5.
    assert length_baselines(pairs) == {"always_shorter": 0.6, "always_longer": 0.4, "n": 5}


def test_unknown_setting_is_a_clear_error(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    with pytest.raises(ConfigError, match="unknown label-eval setting 'best'"):
        run_label_eval(LabelEvalConfig(settings=["best"]), run, _hand_made(tmp_path / "hh.jsonl"),
                       load_constitution(None), CachedBackend(MockBackend(), run.cache), quiet=True)


def test_real_hh_file_loads(shared_data: Path) -> None:
    pairs, skipped = load_hh_pairs(shared_data / "hh_harmless_dev.jsonl", n=300)
    assert len(pairs) == 300 and all(p.a != p.b and p.human in ("a", "b") for p in pairs)
    assert 0.35 < sum(p.human == "a" for p in pairs) / len(pairs) < 0.65


def test_reward_models_on_ai_and_human_labels_are_compared_on_held_back_pairs(tmp_path: Path,
                                                                              tiny_model_dir: Path) -> None:
    run = RunDir(tmp_path / "run")
    backend = CachedBackend(MockBackend(score_rule=_safe_judge), run.cache)
    cfg = LabelEvalConfig(n=None, settings=["one_principle"], rm_setting="one_principle", rm_steps=1,
                          rm_test_fraction=0.4)
    summary = run_label_eval(cfg, run, _hand_made(tmp_path / "hh.jsonl"), load_constitution(None), backend,
                             rm_base=f"transformers/{tiny_model_dir}", quiet=True)
    rms = summary["reward_models"]
    assert rms["train_pairs"] == 3 and rms["test_pairs"] == 2
    for name in ("ai_labels", "human_labels"):
        assert rms[name]["n"] == 2 and rms[name]["trained_on"] == 3 and 0 <= rms[name]["accuracy"] <= 1
    assert rms["gap"] == pytest.approx(rms["human_labels"]["accuracy"] - rms["ai_labels"]["accuracy"])
