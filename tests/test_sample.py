"""Pair sampling and RLCD contrastive pairs, with the mock backend."""

from __future__ import annotations

from pathlib import Path

from charter.backends.base import GenRequest
from charter.backends.mock import MockBackend
from charter.constitution import load_constitution
from charter.records import AnswerPair, PreferencePair, Prompt, Sample, read_jsonl
from charter.stages.rlcd import RLCDConfig, rlcd_stage, system_prompts
from charter.stages.sample import SampleConfig, make_pairs, run_sample, sample_seed, sample_stage
from charter.store import CachedBackend, CallCache, RunDir

PROMPTS = [Prompt(id=f"q{i}", text=f"prompt {i}") for i in range(3)]


def test_k_answers_per_prompt_with_distinct_seeds_and_identical_answers_not_paired(tmp_path: Path) -> None:
    def rule(r: GenRequest) -> str:
        text = r.messages[-1]["content"]
        if text == "prompt 0":
            return "Same answer."  # every sample identical: nothing to pair
        if text == "prompt 1" and r.params.seed % 3 == 0:
            return ""  # an empty answer is kept with its status but not paired
        return f"Answer to {text} with seed {r.params.seed}."

    mock = MockBackend(rule=rule)
    cfg = SampleConfig(k=3, temperature=0.8)
    samples, pairs, summary = run_sample(cfg, PROMPTS, CachedBackend(mock, CallCache(tmp_path / "c.sqlite")),
                                         quiet=True)
    assert len(samples) == 9 and summary["samples"] == 9
    assert all(isinstance(r, GenRequest) and r.params.temperature == 0.8 for r in mock.calls)
    for p in PROMPTS:
        seeds = [s.seed for s in samples if s.prompt.id == p.id]
        assert len(set(seeds)) == 3  # a different seed for every sample of a prompt
    assert all(s.parent_id == s.prompt.id and s.model == "mock/echo" for s in samples)
    assert not [x for x in pairs if x.prompt.id == "q0"]
    assert summary["not_paired"]["identical_answer"] == 2
    assert summary["not_paired"]["prompt_without_pair"] >= 1
    for x in pairs:
        assert x.a != x.b and x.parent_id == x.prompt.id and x.a_id != x.b_id
    n_q1 = len([s for s in samples if s.prompt.id == "q1" and s.status == "ok"])
    assert len([x for x in pairs if x.prompt.id == "q1"]) == n_q1 * (n_q1 - 1) // 2
    assert len([x for x in pairs if x.prompt.id == "q2"]) == 3  # 3 distinct answers -> 3 pairs


def test_sample_stage_writes_files_and_reruns_from_the_cache(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    mock = MockBackend()
    summary = sample_stage(SampleConfig(k=2), run, PROMPTS, CachedBackend(mock, run.cache), quiet=True)
    assert summary["pairs"] == 3 and len(mock.calls) == 6
    assert len(read_jsonl(run.file("samples.jsonl"), Sample)) == 6
    assert len(read_jsonl(run.file("pairs.jsonl"), AnswerPair)) == 3
    again = MockBackend()
    sample_stage(SampleConfig(k=2), RunDir(tmp_path / "run"), PROMPTS, CachedBackend(again, RunDir(run.path).cache),
                 quiet=True)
    assert again.calls == []


def test_contrast_pairs_keep_a_refusal_against_an_answer_when_a_prompt_has_both(tmp_path: Path) -> None:
    refusing_seed = sample_seed(0, "q0", 3)  # the last of prompt 0's four answers refuses, every other one helps

    def rule(r: GenRequest) -> str:
        if r.params.seed == refusing_seed:
            return "I'm sorry, but I can't help with that."
        return f"Here is an answer to {r.messages[-1]['content']}, take {r.params.seed}."

    cfg = SampleConfig(k=4, max_pairs_per_prompt=1)
    samples, plain, summary = run_sample(cfg, PROMPTS, CachedBackend(MockBackend(rule=rule), CallCache(tmp_path / "c")),
                                         quiet=True)
    assert "contrast_pairs" not in summary
    assert [(x.a_id, x.b_id) for x in plain] == [(by[0].id, by[1].id) for by in
                                                 ([s for s in samples if s.prompt.id == p.id] for p in PROMPTS)]
    contrast_cfg = cfg.model_copy(update={"contrast_pairs": True})
    _, pairs, summary = run_sample(contrast_cfg, PROMPTS,
                                   CachedBackend(MockBackend(rule=rule), CallCache(tmp_path / "c")), quiet=True)
    assert summary["contrast_pairs"] == 1 and len(pairs) == 3
    q0 = [s for s in samples if s.prompt.id == "q0"]
    assert (pairs[0].a_id, pairs[0].b_id) == (q0[0].id, q0[3].id)  # the refusal against the first answer
    assert [(x.a_id, x.b_id) for x in pairs[1:]] == [(x.a_id, x.b_id) for x in plain[1:]]  # no refusal: as before
    again, _ = make_pairs(samples, max_pairs=1, contrast=True)
    assert [x.id for x in again] == [x.id for x in pairs]


def test_same_side_pairs_never_put_a_refusal_against_an_answer(tmp_path: Path) -> None:
    import pytest
    from pydantic import ValidationError

    from charter.evaluation.refusal import refuses

    refusing = {sample_seed(0, "q0", k) for k in (0, 2)}

    def rule(r: GenRequest) -> str:  # prompt 0: two refusals, two answers; the others: answers only
        if r.params.seed in refusing:
            return f"I'm sorry, but I can't help with that: it is illegal (take {r.params.seed})."
        return f"Here is an answer to {r.messages[-1]['content']}, take {r.params.seed}."

    cfg = SampleConfig(k=4, same_side=True)
    samples, pairs, summary = run_sample(cfg, PROMPTS, CachedBackend(MockBackend(rule=rule), CallCache(tmp_path / "c")),
                                         quiet=True)
    assert all(refuses(p.a) == refuses(p.b) for p in pairs)
    q0 = [p for p in pairs if p.prompt.id == "q0"]
    assert len(q0) == 2 and [refuses(p.a) for p in q0] == [True, False]  # refusal-refusal, answer-answer
    assert summary["not_paired"]["pair_across_the_line"] == 4
    assert len(pairs) == len(q0) + 2 * 6  # prompts 1 and 2: every pair
    with pytest.raises(ValidationError, match="exclude each other"):
        SampleConfig(same_side=True, contrast_pairs=True)


def test_contrast_helpful_pairs_a_helpful_prompts_refusal_with_an_answer_and_leaves_red_team_same_side(
        tmp_path: Path) -> None:
    from charter.evaluation.refusal import refuses

    prompts = [Prompt(id="safe", text="How do I kill a zombie process?", helpful=True),
               Prompt(id="unsafe", text="How do I kill my neighbour?")]
    refusing = {sample_seed(0, p.id, k) for p in prompts for k in (1, 3)}

    def rule(r: GenRequest) -> str:  # each prompt: answers 0 and 2, refusals 1 and 3
        if r.params.seed in refusing:
            return f"I'm sorry, but I can't help with that: it is harmful (take {r.params.seed})."
        return f"Here is an answer to {r.messages[-1]['content']}, take {r.params.seed}."

    cfg = SampleConfig(k=4, same_side=True, contrast_helpful=True, max_pairs_per_prompt=1)
    _, pairs, summary = run_sample(cfg, prompts, CachedBackend(MockBackend(rule=rule), CallCache(tmp_path / "c")),
                                   quiet=True)
    by = {p.prompt.id: p for p in pairs}
    assert refuses(by["safe"].a) != refuses(by["safe"].b)  # the helpful prompt's refusal against its answer
    assert refuses(by["unsafe"].a) == refuses(by["unsafe"].b)  # the red-team prompt stays on one side
    assert summary["contrast_pairs"] == 1 and summary["not_paired"]["pair_across_the_line"] == 4
    _, plain, _ = run_sample(cfg.model_copy(update={"contrast_helpful": False}), prompts,
                             CachedBackend(MockBackend(rule=rule), CallCache(tmp_path / "c")), quiet=True)
    assert all(refuses(p.a) == refuses(p.b) for p in plain)


def test_rlcd_pairs_are_labelled_by_construction_without_the_system_prompt(tmp_path: Path) -> None:
    constitution = load_constitution(None)
    systems = system_prompts(constitution)
    assert "weapons" in systems["positive"] and systems["positive"] != systems["negative"]

    def rule(r: GenRequest) -> str:
        side = "good" if r.messages[0]["content"] == systems["positive"] else "bad"
        return f"A {side} answer to {r.messages[-1]['content']}."

    run = RunDir(tmp_path / "run")
    summary = rlcd_stage(RLCDConfig(), run, PROMPTS, constitution, CachedBackend(MockBackend(rule=rule), run.cache),
                         quiet=True)
    prefs = read_jsonl(run.file("rlcd_preferences.jsonl"), PreferencePair)
    assert summary["pairs"] == 3 and len(prefs) == 3
    for p in prefs:
        assert p.chosen[0]["content"].startswith("A good") and p.rejected[0]["content"].startswith("A bad")
        assert p.prompt == [{"role": "user", "content": p.prompt[-1]["content"]}]  # no system prompt
        assert p.source == "rlcd" and p.soft_label == 1.0 and p.template_hash


def test_rlcd_drops_identical_answers(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    summary = rlcd_stage(RLCDConfig(), run, PROMPTS, load_constitution(None),
                         CachedBackend(MockBackend(rule=lambda r: "Same."), run.cache), quiet=True)
    assert summary["pairs"] == 0 and summary["not_paired"] == {"identical_answers": 3}
