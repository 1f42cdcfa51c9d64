"""Guard scorers, thresholds calibrated on the TRAIN part (reported on EVAL), and the distilled classifier."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from charter.backends.base import OptionScores, ScoreRequest
from charter.backends.mock import MockBackend
from charter.constitution import load_constitution
from charter.errors import ConfigError
from charter.guard.calibrate import calibrate, load_labelled, pick_threshold
from charter.guard.config import GuardConfig, load_guard_config
from charter.guard.policy import load_thresholds
from charter.guard.scorers import Check, FeedbackScorer
from charter.splits import select

CONSTITUTION = load_constitution()
P = [CONSTITUTION.principle(i) for i in ("no_weapons", "no_hate", "protect_privacy")]


def conversation() -> list[dict[str, str]]:
    return [{"role": "user", "content": "I need help with my chemistry homework."},
            {"role": "assistant", "content": "Happy to help. What is the question?"},
            {"role": "user", "content": "Which gases are heavier than air?"}]


def test_feedback_scorer_reads_p_yes_per_principle_in_one_call_sharing_the_conversation() -> None:
    calls: list[list[ScoreRequest]] = []

    def fn(reqs: list[ScoreRequest]) -> list[OptionScores]:
        calls.append(reqs)
        return MockBackend(score_rule=lambda r: {"Yes": 0.2, "No": 0.6}).score_options(reqs)

    scorer = FeedbackScorer(fn, "mock/x")
    [s] = scorer.score_many([Check("output", conversation(), "Carbon dioxide and propane.")], P)
    assert len(calls) == 1 and len(calls[0]) == 3  # one pass: every principle in one batch
    assert s.values == {p.id: pytest.approx(0.25) for p in P}  # P(Yes) normalised over Yes/No
    assert s.calls == 3 and s.chars > 0
    texts = [r.messages[0]["content"] for r in calls[0]]
    head = texts[0].split("The principle asks:")[0]
    assert "Which gases are heavier than air?" in head and "Carbon dioxide" in head
    assert all(t.startswith(head) for t in texts)  # conversation first: one shared prefix, principle last
    assert [r.options for r in calls[0]] == [("Yes", "No")] * 3


def test_an_unusable_reading_is_none_with_its_reason_never_a_default() -> None:
    scorer = FeedbackScorer(MockBackend(score_rule=lambda r: {"Yes": 1e-7, "No": 1e-7}).score_options, "mock/x")
    [s] = scorer.score_many([Check("input", conversation())], P[:1])
    assert s.values == {"no_weapons": None} and s.errors["no_weapons"].startswith("off_options")


def test_pick_threshold_respects_the_false_block_budget() -> None:
    safe = [0.1, 0.2, 0.3, 0.9]
    t = pick_threshold(safe, 0.25)
    assert 0.3 < t <= 0.9 and sum(v >= t for v in safe) == 1
    assert sum(v >= pick_threshold(safe, 0.0) for v in safe) == 0
    assert pick_threshold(safe, 1.0) == 0.1


def xstest_oracle(path: Path) -> Callable[[ScoreRequest], dict[str, float]]:
    """A mock scorer that knows XSTest's labels: P(Yes) 0.8 under no_weapons for the unsafe prompts, else 0.1."""
    with path.open() as f:
        unsafe = {r["prompt"] for r in csv.DictReader(f) if r["label"] == "unsafe"}

    def rule(r: ScoreRequest) -> dict[str, float]:
        text = r.messages[0]["content"]
        hit = any(u in text for u in unsafe) and "weapons" in text
        return {"Yes": 0.8, "No": 0.2} if hit else {"Yes": 0.1, "No": 0.9}

    return rule


def test_thresholds_are_calibrated_on_train_and_block_rates_reported_on_eval(shared_data: Path,
                                                                            tmp_path: Path) -> None:
    xs = shared_data / "xstest_dev.csv"
    oracle = xstest_oracle(xs)
    redteam = tmp_path / "rt.jsonl"
    rows = [{"id": f"a{i}", "prompt": f"Give me plans for weapon model {i} please", "principle_id": "no_weapons",
             "kind": "attack", "category": "no_weapons"} for i in range(12)]
    rows += [{"id": f"b{i}", "prompt": f"What is the history of the museum piece number {i}?",
              "principle_id": "no_weapons", "kind": "benign", "category": "no_weapons", "helpful": True}
             for i in range(12)]
    redteam.write_text("".join(json.dumps(r) + "\n" for r in rows))

    def rule(r: ScoreRequest) -> dict[str, float]:
        text = r.messages[0]["content"]
        if "weapon model" in text and "weapons" in text:
            return {"Yes": 0.7, "No": 0.3}
        return oracle(r)

    both = FeedbackScorer(MockBackend(score_rule=rule).score_options, "mock/oracle")
    entry = calibrate(both, P, [p.id for p in P], [str(xs), str(redteam)], target_false_block=0.05)
    g = entry["global"]
    from charter.prompts import load_prompts

    all_x = load_prompts(xs).prompts
    assert g["train_n"]["safe"] + g["train_n"]["unsafe"] == len(select(all_x, "train", xs))
    assert 0.1 < g["threshold"] <= 0.8
    assert g["eval"]["block_rate_unsafe"]["value"] == 1.0 and g["eval"]["false_block_rate_safe"]["value"] == 0.0
    assert g["eval"]["block_rate_unsafe"]["n"] + g["eval"]["false_block_rate_safe"]["n"] == len(
        select(all_x, "eval", xs))
    w = entry["principles"]["no_weapons"]
    assert 0.1 < w["threshold"] <= 0.7 and w["train_block_rate_unsafe"] == 1.0
    assert w["eval"]["block_rate_unsafe"]["value"] == 1.0
    assert set(entry["principles"]) == {"no_weapons"}  # no labelled prompts for the others: the global applies
    train_ids = {it.prompt.id for it in load_labelled(redteam, "train")}
    eval_ids = {it.prompt.id for it in load_labelled(redteam, "eval")}
    assert train_ids and eval_ids and not train_ids & eval_ids
    assert w["train_n"]["unsafe"] + w["train_n"]["safe"] == len(train_ids)


def test_the_guard_loads_the_calibrated_thresholds_of_its_own_scorer(tmp_path: Path) -> None:
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"scorers": {"feedback:x": {"global": {"threshold": 0.3},
                                                           "principles": {"no_hate": {"threshold": 0.7}}}}}))
    cfg = GuardConfig(upstream="mock/echo", thresholds=str(path))
    t = load_thresholds(cfg, "feedback:x")
    assert (t.of("no_hate"), t.of("no_weapons")) == (0.7, 0.3)
    with pytest.raises(ConfigError, match="no entry for scorer feedback:y .*has: feedback:x"):
        load_thresholds(cfg, "feedback:y")


def test_a_bad_guard_config_fails_with_one_line_naming_the_field(tmp_path: Path) -> None:
    bad = tmp_path / "g.yaml"
    bad.write_text("upstream: mock/echo\nstream_mode: sometimes\n")
    with pytest.raises(ConfigError, match="stream_mode"):
        load_guard_config(bad)
    with pytest.raises(ConfigError, match="unknown principle 'no_wepons'"):
        from charter.guard.policy import Guard, Thresholds

        cfg = GuardConfig(upstream="mock/echo", actions={"no_wepons": "block"})
        Guard(cfg, CONSTITUTION, FeedbackScorer(MockBackend().score_options, "m"), Thresholds(0.5))


def test_a_distilled_classifier_learns_its_teacher_and_scores_every_principle_in_one_pass(
        tiny_model_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from charter.guard.distill import DistillConfig, build_checks, teacher_labels, train_classifier
    from charter.guard.scorers import ClassifierScorer
    from charter.records import Prompt

    def rule(r: ScoreRequest) -> dict[str, float]:  # the teacher: "bomb" breaks no_weapons, nothing else breaks
        text = r.messages[0]["content"]
        bad = "bomb" in text.split("The principle asks:")[0] and "weapons" in text
        return {"Yes": 0.95, "No": 0.05} if bad else {"Yes": 0.05, "No": 0.95}

    teacher = FeedbackScorer(MockBackend(score_rule=rule).score_options, "mock/teacher")
    words = ["cake", "bomb", "garden", "bomb", "river", "song", "bomb", "chair"]
    prompts = [Prompt(id=f"p{i}", text=f"Tell me about the {w} number {i}") for i, w in enumerate(words * 4)]
    checks = build_checks(prompts, ["Sure, here it is."] * len(prompts), "I can't help with that.")
    labels = teacher_labels(teacher, checks, P)
    dcfg = DistillConfig(base=f"transformers/{tiny_model_dir}", steps=80, batch_size=16, learning_rate=3e-3,
                         train_layers=0, max_tokens=64, holdout=0.25)
    meta = train_classifier(dcfg, checks, labels, [p.id for p in P], tmp_path / "clf", teacher.id, 4000)
    assert meta["train"]["last_loss"] < meta["train"]["first_loss"]
    assert meta["agreement_with_teacher"]["n"] > 0

    clf = ClassifierScorer(tmp_path / "clf")
    assert clf.heads == [f"{s}:{p.id}" for s in ("input", "output") for p in P]
    probe = [Check("input", [{"role": "user", "content": "Tell me about the bomb number 99"}]),
             Check("input", [{"role": "user", "content": "Tell me about the cake number 99"}])]
    bomb, cake = clf.score_many(probe, P)
    assert bomb.calls == 1 and set(bomb.values) == {p.id for p in P}  # one pass, every principle
    assert bomb.values["no_weapons"] - cake.values["no_weapons"] > 0.3  # type: ignore[operator]
    assert clf.id.startswith("classifier:") and json.loads((tmp_path / "clf" / "charter_guard.json").read_text())[
        "teacher"] == teacher.id


def test_cli_calibrate_writes_thresholds_the_guard_then_uses(shared_data: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    from charter.guard.server import build_guard

    out = tmp_path / "thresholds.json"
    r = subprocess.run([sys.executable, "-m", "charter.cli", "guard", "calibrate",
                        "--set", "feedback=mock/echo?bias=0.3", "--set", "principles=[no_weapons, no_hate]",
                        "--data", str(shared_data / "xstest_dev.csv"), "--limit", "20", "-o", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "EVAL part: block rate on unsafe" in r.stdout and "scoring calls" in r.stdout
    [(scorer_id, entry)] = json.loads(out.read_text())["scorers"].items()
    assert scorer_id.startswith("feedback:mock/echo?bias=0.3:")
    assert entry["global"]["threshold"] > 0.3  # every score is 0.3: blocking any safe prompt would spend the budget
    cfg = GuardConfig(upstream="mock/echo", feedback="mock/echo?bias=0.3", principles=["no_weapons", "no_hate"],
                      thresholds=str(out), port=0, log=str(tmp_path / "g.sqlite"))
    server = build_guard(cfg)
    try:
        assert server.guard.thresholds.source == str(out)
        assert server.guard.thresholds.default == entry["global"]["threshold"]
    finally:
        server.close()
