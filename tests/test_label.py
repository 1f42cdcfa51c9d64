"""AI preference labels: real option probabilities, order averaging, CoT clamping, failures counted, resume."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from charter.backends.base import GenRequest, OptionScores, ScoreRequest
from charter.backends.mock import MockBackend
from charter.constitution import load_constitution, parse_constitution
from charter.errors import BackendError, CharterError, ConfigError
from charter.records import AnswerPair, LabeledPair, Prompt, read_jsonl, write_jsonl
from charter.stages.label import LabelConfig, label_pairs, read_scores, run_label, to_preferences, trust_warnings
from charter.store import CachedBackend, CallCache, RunDir

GOOD = "I can't help with hurting anyone, but talking to someone you trust could help."
BAD = "Sure, here is how to do it step by step."


def _pairs(n: int = 10) -> list[AnswerPair]:
    """Pairs with a known better answer; the good one is A in even pairs and B in odd ones."""
    out = []
    for i in range(n):
        good, bad = f"{GOOD} ({i})", f"{BAD} ({i})"
        a, b = (good, bad) if i % 2 == 0 else (bad, good)
        out.append(AnswerPair(id=f"pair{i}", parent_id=f"q{i}", prompt=Prompt(id=f"q{i}", text=f"question {i}"),
                              a=a, b=b, a_id=f"a{i}", b_id=f"b{i}", model="mock", human="a" if i % 2 == 0 else "b"))
    return out


def _shown(request: ScoreRequest) -> tuple[str, str]:
    """The two responses shown as (A) and (B) in the last user turn of a labelling request."""
    text = request.messages[-1]["content"]
    first = text.split("(A) ", 1)[1].split("\n(B) ", 1)[0]
    second = text.split("\n(B) ", 1)[1].split("\n\n", 1)[0]
    return first, second


def _biased_judge(bias: float, skill: float):  # type: ignore[no-untyped-def]
    """A judge that prefers the first option by ``bias`` and the good answer by ``skill`` (in log-odds)."""

    def rule(r: ScoreRequest) -> dict[str, float]:
        first, _ = _shown(r)
        logit = math.log(bias / (1 - bias)) + (skill if first.startswith(GOOD) else -skill)
        p = 1 / (1 + math.exp(-logit))
        return {"A": p, "B": 1 - p}

    return rule


def _cached(backend: MockBackend, tmp_path: Path) -> CachedBackend:
    return CachedBackend(backend, CallCache(tmp_path / "calls.sqlite"))


def _agreement(labeled) -> float:  # type: ignore[no-untyped-def]
    return sum((x.p_a > 0.5) == (x.pair.human == "a") for x in labeled) / len(labeled)


def test_option_probabilities_come_from_real_logits_and_sum_to_one(tiny_model_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from charter.backends import BackendOptions
    from charter.backends.transformers import TransformersBackend

    backend = TransformersBackend(f"transformers//{tiny_model_dir}", str(tiny_model_dir),
                                  BackendOptions(dtype="float32"))
    req = ScoreRequest.of([{"role": "user", "content": "Which is kinder? (A) hi (B) go away"}], ("A", "B"),
                          "The answer is: (")
    status, p_first, mass = read_scores(backend.score_options([req])[0], 0.0)
    assert status == "ok" and p_first is not None and mass is not None

    # The same numbers straight from the model's next-token logits.
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    rendered = tok.apply_chat_template(list(req.messages), tokenize=False, add_generation_prompt=True)
    text = str(rendered) + "The answer is: ("
    ids = tok(text, add_special_tokens=False, return_tensors="pt").input_ids
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0, -1], -1)
    a, b = (list(tok(text + o, add_special_tokens=False).input_ids)[ids.shape[1]] for o in ("A", "B"))
    pa, pb = math.exp(logp[a]), math.exp(logp[b])
    assert p_first == pytest.approx(pa / (pa + pb), rel=1e-4)
    assert mass == pytest.approx(pa + pb, rel=1e-4)
    probs = backend.score_options([req])[0].probs()
    assert sum(probs.values()) == pytest.approx(1.0)
    assert 0 < probs["A"] < 1


@pytest.mark.slow
def test_embedded_model_puts_its_probability_on_the_options(embedded_dir: Path, tmp_path: Path) -> None:
    from charter.backends import load_backend

    backend = _cached(load_backend("transformers/embedded"), tmp_path)  # type: ignore[arg-type]
    labeled, stats = label_pairs(LabelConfig(), _pairs(2), load_constitution(None), backend, quiet=True)
    assert stats["labelled"] == 2
    for x in labeled:
        for v in x.votes:
            assert v.option_mass is not None and v.option_mass > 0.5  # the model does answer (A)/(B) here
            assert v.p_ab is not None and v.p_ba is not None and 0 < v.p_ab < 1


def test_order_averaging_removes_a_planted_position_bias(tmp_path: Path) -> None:
    constitution = load_constitution(None)
    pairs = _pairs(20)
    judge = MockBackend(score_rule=_biased_judge(bias=0.9, skill=1.0))
    both, stats = label_pairs(LabelConfig(), pairs, constitution, _cached(judge, tmp_path), quiet=True)
    one, stats_one = label_pairs(LabelConfig(both_orders=False), pairs, constitution, _cached(judge, tmp_path),
                                 quiet=True)
    assert _agreement(both) == 1.0  # the bias cancels: the content decides every pair
    assert _agreement(one) < 0.8  # shown once, the first option wins whatever it says
    assert stats["position_bias"] == pytest.approx(0.365, abs=0.01)  # measured and reported either way
    assert stats_one["position_bias"] > 0.3
    assert any("first option" in w for w in trust_warnings(stats))


def test_a_pure_position_bias_gives_no_preference_not_a_fake_one(tmp_path: Path) -> None:
    labeled, stats = label_pairs(LabelConfig(), _pairs(4), load_constitution(None),
                                 _cached(MockBackend(bias=0.8), tmp_path), quiet=True)
    assert all(x.p_a == pytest.approx(0.5) for x in labeled)
    assert stats["position_bias"] == pytest.approx(0.3) and stats["order_consistency"] == 0.0
    assert to_preferences(labeled) == []  # ties are not training pairs


def test_cot_probabilities_are_clamped_and_reasoning_kept(tmp_path: Path) -> None:
    def confident(r: ScoreRequest) -> dict[str, float]:
        first, _ = _shown(r)
        assert r.assistant_prefix.startswith("I compared them.") and r.assistant_prefix.endswith("So the answer is: (")
        return {"A": 0.99, "B": 0.01} if first.startswith(GOOD) else {"A": 0.01, "B": 0.99}

    judge = MockBackend(rule=lambda r: "I compared them.", score_rule=confident)
    labeled, _ = label_pairs(LabelConfig(cot=True), _pairs(4), load_constitution(None), _cached(judge, tmp_path),
                             quiet=True)
    for x in labeled:
        v = x.votes[0]
        assert v.p_ab in (pytest.approx(0.6), pytest.approx(0.4)) and v.p_ba in (pytest.approx(0.6),
                                                                                 pytest.approx(0.4))
        assert v.reasoning == ["I compared them.", "I compared them."]
        assert x.p_a == pytest.approx(0.6 if x.pair.human == "a" else 0.4)


def test_unparseable_answers_are_counted_with_reasons_never_a_silent_fifty_fifty(tmp_path: Path) -> None:
    class Flaky(MockBackend):
        def score_options(self, requests):  # type: ignore[no-untyped-def]
            out = []
            for r in requests:
                q = r.messages[-1]["content"]
                if "question 0" in q:
                    out.append(OptionScores(logprobs={}, error="no logprobs in reply"))
                elif "question 1" in q:
                    out.append(OptionScores(logprobs={"A": math.log(0.5)}))  # B missing
                elif "question 2" in q:
                    out.append(OptionScores(logprobs={"A": -12.0, "B": -12.5}))  # the model would say neither
                else:
                    p = 0.7 if _shown(r)[0].startswith(GOOD) else 0.3
                    out.append(OptionScores(logprobs={"A": math.log(p), "B": math.log(1 - p)}))
            return out

    labeled, stats = label_pairs(LabelConfig(), _pairs(5), load_constitution(None), _cached(Flaky(), tmp_path),
                                 quiet=True)
    assert [x.p_a is None for x in labeled] == [True, True, True, False, False]
    assert [x.status for x in labeled][:3] == ["no_usable_vote"] * 3
    assert stats["votes_by_status"] == {"backend_error": 1, "missing_option": 1, "off_options": 1, "ok": 2}
    assert labeled[0].votes[0].status.startswith("backend_error: no logprobs")
    assert len(to_preferences(labeled)) == 2

    class Empty(MockBackend):
        def score_options(self, requests):  # type: ignore[no-untyped-def]
            return [OptionScores(logprobs={}, error="server gave no logprobs") for _ in requests]

    with pytest.raises(CharterError, match="no pair could be labelled"):
        label_pairs(LabelConfig(), _pairs(2), load_constitution(None), _cached(Empty(), tmp_path / "e"), quiet=True)


def test_empty_cot_reasoning_makes_the_vote_unusable(tmp_path: Path) -> None:
    judge = MockBackend(rule=lambda r: "" if "question 0" in r.messages[-1]["content"] else "Fine.",
                        score_rule=lambda r: {"A": 0.6, "B": 0.4})
    labeled, stats = label_pairs(LabelConfig(cot=True), _pairs(2), load_constitution(None), _cached(judge, tmp_path),
                                 quiet=True)
    assert labeled[0].p_a is None and labeled[0].votes[0].status == "cot_failed: empty reasoning"
    assert stats["votes_by_status"] == {"cot_failed": 1, "ok": 1}


def test_a_backend_without_log_probabilities_is_a_clear_error(tmp_path: Path) -> None:
    class NoLogprobs(MockBackend):
        def score_options(self, requests):  # type: ignore[no-untyped-def]
            raise BackendError("server http://x returned no logprobs", "use a server that supports logprobs")

    with pytest.raises(BackendError, match="no logprobs"):
        label_pairs(LabelConfig(), _pairs(1), load_constitution(None), _cached(NoLogprobs(), tmp_path), quiet=True)


def test_a_principle_without_comparison_question_is_a_clear_error(tmp_path: Path) -> None:
    c = parse_constitution("name: x\nversion: 1\nprinciples:\n  - id: p1\n    area: general\n"
                           "    critique_request: c\n    revision_request: r\n")
    with pytest.raises(ConfigError, match="p1 have no comparison_question"):
        label_pairs(LabelConfig(), _pairs(1), c, _cached(MockBackend(), tmp_path), quiet=True)


def test_a_pair_file_with_missing_fields_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "pairs.jsonl"
    write_jsonl(path, _pairs(1))
    with path.open("a") as f:
        f.write('{"id": "x", "prompt": {"id": "q", "text": "hi"}, "a": "one"}\n')
    with pytest.raises(ConfigError, match=r"pairs.jsonl:2: field '\w+'"):
        run_label(LabelConfig(), RunDir(tmp_path / "run"), path, load_constitution(None), _cached(MockBackend(),
                                                                                                    tmp_path))


def test_a_second_label_run_makes_no_backend_calls(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    write_jsonl(run.file("pairs.jsonl"), _pairs(6))
    judge = MockBackend(score_rule=_biased_judge(0.7, 1.0))
    first = run_label(LabelConfig(principles=2), run, run.file("pairs.jsonl"), load_constitution(None),
                      CachedBackend(judge, run.cache))
    calls = len(judge.calls)
    assert calls == 6 * 2 * 2
    again = MockBackend(score_rule=_biased_judge(0.7, 1.0))
    second = run_label(LabelConfig(principles=2), RunDir(tmp_path / "run"), run.file("pairs.jsonl"),
                       load_constitution(None), CachedBackend(again, RunDir(tmp_path / "run").cache))
    assert again.calls == [] and first == second
    assert len(read_jsonl(run.file("labels.jsonl"), LabeledPair)) == 6


def test_preferences_are_trl_format_and_load_with_datasets(tmp_path: Path) -> None:
    from datasets import load_dataset

    run = RunDir(tmp_path / "run")
    write_jsonl(run.file("pairs.jsonl"), _pairs(4))
    summary = run_label(LabelConfig(), run, run.file("pairs.jsonl"), load_constitution(None),
                        _cached(MockBackend(score_rule=_biased_judge(0.6, 1.0)), tmp_path))
    assert summary["preferences"] == 4
    ds = load_dataset("json", data_files=str(run.file("preferences.jsonl")), split="train")
    row = ds[0]
    assert row["prompt"] == [{"role": "user", "content": "question 0"}]
    assert row["chosen"][0]["role"] == "assistant" and row["chosen"][0]["content"].startswith(GOOD)
    assert row["rejected"][0]["content"].startswith(BAD)
    assert 0.5 < row["soft_label"] <= 1 and row["source"] == "ai" and row["template_hash"]
    assert row["p_chosen_first"] > row["p_chosen_second"]  # the judge's first-position bias, in chosen terms
    assert row["votes"][0]["p_ab"] is not None and row["votes"][0]["p_ba"] is not None


def _length_pairs(n: int = 40) -> list[AnswerPair]:
    """Good and bad answers where the good one is the longer in half the pairs and the shorter in the other half."""
    import random

    rng = random.Random(1)
    out = []
    for i in range(n):
        long, short = 200 + rng.randint(0, 40), 80 + rng.randint(0, 20)
        g, b_ = (long, short) if (i // 2) % 2 == 0 else (short, long)
        if i % 5 == 4:  # a few pairs of similar length
            g, b_ = 120 + rng.randint(0, 6), 120 + rng.randint(0, 6)
        good, bad = GOOD + " x" * ((g - len(GOOD)) // 2), BAD + " y" * ((b_ - len(BAD)) // 2)
        a, b = (good, bad) if i % 2 == 0 else (bad, good)
        out.append(AnswerPair(id=f"lp{i}", prompt=Prompt(id=f"q{i}", text=f"question {i}"), a=a, b=b, a_id="a",
                              b_id="b", model="m", human="a" if i % 2 == 0 else "b"))
    return out


def _length_judge(r: ScoreRequest) -> dict[str, float]:
    """Mostly picks the longer answer (3 log-odds per unit log length ratio), a little by content."""
    first, second = _shown(r)
    logit = 3 * math.log(len(first) / len(second)) + (0.7 if first.startswith(GOOD) else -0.7)
    p = 1 / (1 + math.exp(-logit))
    return {"A": p, "B": 1 - p}


def test_length_controls_reduce_a_planted_length_bias(tmp_path: Path) -> None:
    constitution = load_constitution(None)
    pairs = _length_pairs()
    judge = _cached(MockBackend(score_rule=_length_judge), tmp_path)
    plain, stats = label_pairs(LabelConfig(), pairs, constitution, judge, quiet=True)
    debiased, stats_d = label_pairs(LabelConfig(length_debias=True), pairs, constitution, judge, quiet=True)
    matched, stats_m = label_pairs(LabelConfig(max_length_ratio=1.3), pairs, constitution, judge, quiet=True)
    assert stats["length_bias"] > 0.75 and any("longer answer" in w for w in trust_warnings(stats))
    assert stats_d["length_bias"] < stats["length_bias"] - 0.15
    assert _agreement(debiased) > _agreement(plain) + 0.15
    assert stats_d["length_slope_removed"] == pytest.approx(3.0, abs=0.6)
    assert stats_m["pairs_by_status"]["length_mismatch"] > 0
    kept = [x for x in matched if x.status == "ok"]
    assert len(kept) == 8 and _agreement(kept) == 1.0
    assert all(max(len(x.pair.a), len(x.pair.b)) <= 1.3 * min(len(x.pair.a), len(x.pair.b)) for x in kept)


def test_few_shot_examples_come_first_as_chat_turns(tmp_path: Path) -> None:
    judge = MockBackend(score_rule=lambda r: {"A": 0.5, "B": 0.5})
    label_pairs(LabelConfig(few_shot=2), _pairs(1), load_constitution(None), _cached(judge, tmp_path), quiet=True)
    req = judge.calls[0]
    assert isinstance(req, ScoreRequest) and not isinstance(req, GenRequest)
    roles = [m["role"] for m in req.messages]
    assert roles == ["user", "assistant", "user", "assistant", "user"]
    assert req.messages[1]["content"] in ("The answer is: (A)", "The answer is: (B)")
    assert req.assistant_prefix == "The answer is: ("


def test_cli_sample_then_label_writes_files_and_warns_plainly(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from charter.cli import cli

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("How do I pick a lock?\nWrite a haiku about rain.\n")
    run = tmp_path / "run"
    res = CliRunner().invoke(cli, ["sample", str(run), "--set", "policy=mock/echo", "--set",
                                   f"prompts.red_team={prompts}", "--set", "prompts.helpful=''", "--set",
                                   "prompts.red_team_limit=null", "--set", "prompts.split=all", "--set",
                                   "sample.k=3"])
    assert res.exit_code == 0, res.output
    assert len(read_jsonl(run / "pairs.jsonl", AnswerPair)) == 6
    res = CliRunner().invoke(cli, ["label", str(run), "--set", "feedback=mock/echo?bias=0.9", "--set",
                                   "label.principles=2"])
    assert res.exit_code == 0, res.output
    assert "WARNING: the feedback model favours the first option" in res.output
    assert (run / "labels.jsonl").is_file() and (run / "preferences.jsonl").is_file()
    res = CliRunner().invoke(cli, ["label", str(tmp_path / "empty"), "--set", "feedback=mock/echo"])
    assert res.exit_code == 2 and "pairs.jsonl: file not found" in res.output


def test_stage_commands_use_the_run_config_feedback_model(tmp_path: Path) -> None:
    """`charter label RUN` labels with the feedback model RUN/config.yaml names (not the embedded model), and the
    manifest says so."""
    import json

    import yaml
    from click.testing import CliRunner

    from charter.cli import cli

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("How do I pick a lock?\nWrite a haiku about rain.\n")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"policy": "mock/echo", "feedback": "mock/echo?bias=0.3",
                                   "prompts": {"red_team": str(prompts), "helpful": ""}, "stages": ["sample"],
                                   "sample": {"k": 2}}))
    run = tmp_path / "run"
    res = CliRunner().invoke(cli, ["run", str(cfg), "--out", str(run), "--transcripts", "0"])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(cli, ["label", str(run)])
    assert res.exit_code == 0, res.output
    labels = read_jsonl(run / "labels.jsonl", LabeledPair)
    assert labels and {x.feedback_model for x in labels} == {"mock/echo?bias=0.3"}
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["feedback"] == "mock/echo?bias=0.3"
    assert manifest["stages"]["label"]["feedback_model"] == "mock/echo?bias=0.3"


def test_long_conversations_lose_their_oldest_turns_first() -> None:
    from charter.stages.label import trim_conversation

    msgs = [{"role": "user", "content": "x" * 300}, {"role": "assistant", "content": "y" * 300},
            {"role": "user", "content": "z" * 50}]
    assert trim_conversation(msgs, 400) == msgs[1:]
    assert trim_conversation(msgs, 10) == msgs[2:]  # the last turn always stays
    assert trim_conversation(msgs, 1000) == msgs


def test_helpful_prompts_are_judged_by_the_helpful_pool_and_red_team_ones_by_the_pool(tmp_path: Path) -> None:
    pairs = _pairs(8)
    for p in pairs[4:]:
        p.prompt.helpful = True
    cfg = LabelConfig(principles=2, pool=["no_violence", "no_weapons"], helpful_pool=["no_needless_refusal"])
    labeled, _ = label_pairs(cfg, pairs, load_constitution(None),
                             _cached(MockBackend(score_rule=_biased_judge(0.5, 1.0)), tmp_path), quiet=True)
    asked = [{v.principle_id for v in x.votes} for x in labeled]
    assert all(a <= {"no_violence", "no_weapons"} and a for a in asked[:4])
    assert all(a == {"no_needless_refusal"} for a in asked[4:])


def test_an_unknown_principle_in_a_label_pool_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown principle"):
        label_pairs(LabelConfig(helpful_pool=["be_nice"]), _pairs(2), load_constitution(None),
                    _cached(MockBackend(score_rule=_biased_judge(0.5, 1.0)), tmp_path), quiet=True)


def test_the_reason_rule_prefers_the_refusal_that_says_why_without_asking_the_model(tmp_path: Path) -> None:
    why = "I can't help with that: breaking in is illegal and could get someone hurt."
    bare = "I'm sorry, but I can't help with that."
    red = Prompt(id="r", text="how do I break into my neighbour's house")
    helpful = Prompt(id="h", text="how do I kill a zombie process", helpful=True)
    pairs = [AnswerPair(id="p-red", parent_id="r", prompt=red, a=bare, b=why, a_id="a1", b_id="b1", model="mock"),
             # a helpful prompt's two refusals, and two refusals that both say why: the feedback model's business
             AnswerPair(id="p-help", parent_id="h", prompt=helpful, a=bare, b=why, a_id="a2", b_id="b2", model="mock"),
             AnswerPair(id="p-both", parent_id="r", prompt=red, a=why, b=why + " Truly.", a_id="a3", b_id="b3",
                        model="mock")]
    backend = MockBackend(score_rule=_biased_judge(0.5, 2.0))
    labeled, stats = label_pairs(LabelConfig(reason_rule=0.8), pairs, load_constitution(None),
                                 _cached(backend, tmp_path), quiet=True)
    by = {x.parent_id: x for x in labeled}
    assert by["p-red"].p_a == pytest.approx(0.2) and by["p-red"].feedback_model == "reason_rule"
    assert [v.principle_id for v in by["p-red"].votes] == ["reason_rule"]
    assert by["p-help"].feedback_model != "reason_rule" and by["p-both"].feedback_model != "reason_rule"
    assert sum(isinstance(c, ScoreRequest) for c in backend.calls) == 4  # two pairs, both orders
    assert stats["by_reason_rule"] == 1 and stats["by_refusal_rule"] == 0 and stats["labelled"] == 3


def test_the_refusal_rule_labels_refusal_vs_answer_pairs_without_asking_the_model(tmp_path: Path) -> None:
    refusal = "I can't help with that: it could seriously hurt someone."
    answer = "Here is how: first take the lock apart, then lift each pin."
    prompts = [Prompt(id="r", text="how do I break into my neighbour's house"),
               Prompt(id="h", text="how do I kill a zombie process", helpful=True)]
    pairs = [AnswerPair(id="p-red", parent_id="r", prompt=prompts[0], a=answer, b=refusal, a_id="a1", b_id="b1",
                        model="mock"),
             AnswerPair(id="p-help", parent_id="h", prompt=prompts[1], a=answer, b=refusal, a_id="a2", b_id="b2",
                        model="mock"),
             # two refusals: not the rule's business, the feedback model is asked
             AnswerPair(id="p-both", parent_id="r", prompt=prompts[0], a=f"{GOOD} (x)", b="I'm sorry, but I can't.",
                        a_id="a3", b_id="b3", model="mock")]
    backend = MockBackend(score_rule=_biased_judge(0.5, 2.0))
    # length_debias must leave the rule's labels alone (the answers differ in length)
    labeled, stats = label_pairs(LabelConfig(refusal_rule=0.9, length_debias=True), pairs, load_constitution(None),
                                 _cached(backend, tmp_path), quiet=True)
    by = {x.parent_id: x for x in labeled}
    assert by["p-red"].p_a == pytest.approx(0.1)   # the refusal (B) wins on the red-team prompt
    assert by["p-help"].p_a == pytest.approx(0.9)  # the answer (A) wins on the helpful prompt
    assert [v.principle_id for v in by["p-red"].votes] == ["refusal_rule"]
    assert by["p-both"].votes[0].principle_id != "refusal_rule" and by["p-both"].p_a > 0.5
    # one question, both orders, for the one pair the rule left alone
    assert sum(isinstance(c, ScoreRequest) for c in backend.calls) == 2
    assert stats["pairs"] == stats["labelled"] == 3 and stats["by_refusal_rule"] == 2
    prefs = {p.parent_id: p for p in to_preferences(labeled)}
    assert prefs[by["p-red"].id].chosen[0]["content"] == refusal
    assert prefs[by["p-help"].id].chosen[0]["content"] == answer
