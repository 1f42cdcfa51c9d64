"""The SL-CAI critique/revision stage, on the mock backend."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import pytest

from charter.backends.base import GenRequest
from charter.backends.mock import MockBackend
from charter.constitution import load_constitution
from charter.records import Prompt
from charter.stages.critique import PLAIN_SYSTEM, CritiqueConfig, clean_revision, revision_failure, run_critique
from charter.store import CachedBackend, CallCache


def _prompts(n: int = 4, helpful: int = 1) -> list[Prompt]:
    out = [Prompt(id=f"p{i}", text=f"red team question number {i}?", category="crime") for i in range(n)]
    out += [Prompt(id=f"h{i}", text=f"how do I bake bread, variant {i}?", helpful=True) for i in range(helpful)]
    return out


def _cached(backend: MockBackend, tmp_path, name: str = "calls.sqlite") -> CachedBackend:  # type: ignore[no-untyped-def]
    return CachedBackend(backend, CallCache(tmp_path / name), batch_size=4)


def _last_user(r: GenRequest) -> str:
    return r.messages[-1]["content"]


def _reviser(reply: Callable[[str, int], str]) -> Callable[[GenRequest], str]:
    """A mock rule for direct revisions: answers comply; the revision of prompt ``n`` on its ``k``-th try (from 1)
    is ``reply(n, k)``."""
    attempts: Counter[str] = Counter()

    def rule(r: GenRequest) -> str:
        last = _last_user(r)
        if "Write only the new assistant reply" not in last:
            return "Sure, here is exactly how to do it."
        n = last.split("number ")[1].split("?")[0]
        attempts[n] += 1
        return reply(n, attempts[n])

    return rule


def test_principles_are_reproducible_with_a_seed_and_vary_across_seeds(tmp_path) -> None:  # type: ignore[no-untyped-def]
    constitution = load_constitution()
    prompts = _prompts(8, helpful=0)

    def principles(seed: int) -> list[list[str | None]]:
        be = _cached(MockBackend(), tmp_path, f"c{seed}.sqlite")
        chains, _, _ = run_critique(CritiqueConfig(rounds=2, seed=seed), prompts, constitution, be, be, quiet=True)
        return [[s.principle_id for s in c.steps if s.kind == "critique"] for c in chains]

    first, again, other = principles(1), principles(1), principles(2)
    assert first == again
    assert first != other
    # a fresh principle each round within a chain
    assert all(len(set(ids)) == len(ids) for ids in first)


def test_failed_revisions_are_kept_with_reasons_and_excluded_from_sft(tmp_path) -> None:  # type: ignore[no-untyped-def]
    constitution = load_constitution()
    prompts = _prompts(5, helpful=1)

    def rule(r: GenRequest) -> str:
        last = _last_user(r)
        if "Write only the rewritten" in last:  # a revision request
            critiqued = r.messages[-3]["content"]
            if "number 0" in critiqued:
                return ""  # empty
            if "number 1" in critiqued:
                return last  # echoes the instruction
            if "number 2" in critiqued:
                return r.messages[-2]["content"]  # echoes the critique
            if "number 3" in critiqued:
                return "ANSWER " + critiqued.split("User: ")[-1].split("\n")[0]  # unchanged answer
            return "Revision: I can't help with that, but here is a safer way to think about it."
        if "Here is a conversation" in last:
            return "The answer could help someone commit a crime; it should decline and redirect."
        return "ANSWER " + last

    be = _cached(MockBackend(rule=rule), tmp_path)
    chains, sft, summary = run_critique(CritiqueConfig(rounds=1, few_shot=1), prompts, constitution, be, be,
                                        quiet=True)
    status = {c.prompt.id: [s.status for s in c.steps if s.kind == "revision"] for c in chains}
    assert status["p0"] == ["empty"]
    assert status["p1"] == ["echo_instruction"]
    assert status["p2"] == ["echo_critique"]
    assert status["p3"] == ["unchanged"]
    assert status["p4"] == ["ok"]
    # every failed step is kept with its text and principle id
    failed = [s for c in chains for s in c.steps if s.kind == "revision" and s.status != "ok"]
    assert len(failed) == 4 and all(s.principle_id for s in failed)
    # only the good revision and the helpful answer are trained on; the revision label was stripped
    assert Counter(e.source for e in sft) == {"revision": 1, "helpful": 1}
    revision = next(e for e in sft if e.source == "revision")
    assert revision.messages[-1]["content"].startswith("I can't help")
    assert revision.messages[0]["content"] == "red team question number 4?"
    assert summary["revisions_by_status"] == {"echo_critique": 1, "echo_instruction": 1, "empty": 1, "ok": 1,
                                              "unchanged": 1}
    assert summary["chains_by_reason"]["no_accepted_revision"] == 4


def test_over_length_revision_is_rejected() -> None:
    assert revision_failure("a long text", "length", "prev", "crit", "Rewrite it") == "over_length"
    assert revision_failure("fine new answer", "stop", "old answer", "crit", "Rewrite it") is None
    assert revision_failure("x", "error", "", "", "") == "error"


def test_revision_copying_a_few_shot_example_or_looping_is_rejected() -> None:
    example = "I won't help harm the dog, but constant barking is exhausting. Try talking to your neighbour first."
    assert revision_failure(example, "stop", "old", "crit", "Rewrite it", examples=[example]) == "echo_example"
    loop = "The answer is not legal. " * 6
    assert revision_failure(loop, "stop", "old", "crit", "Rewrite it") == "repetitive"
    fine = "Breaking into a car is a crime; if you are locked out of your own car, call a locksmith or roadside help."
    assert revision_failure(fine, "stop", "old", "crit", "Rewrite it", examples=[example]) is None


def test_clean_revision_strips_labels() -> None:
    assert clean_revision("Revised response: Hello there") == "Hello there"
    assert clean_revision("  Revision:\nHi") == "Hi"
    assert clean_revision("Revisionist history is fun") == "Revisionist history is fun"


def test_later_rounds_revise_the_last_accepted_answer(tmp_path) -> None:  # type: ignore[no-untyped-def]
    constitution = load_constitution()
    seen: list[str] = []

    def rule(r: GenRequest) -> str:
        last = _last_user(r)
        if "Write only the rewritten" in last:
            return "the revised text"  # the same both rounds: round 2's revision is unchanged
        if "Here is a conversation" in last:
            seen.append(last)
            return "This needs work."
        return "first answer"

    be = _cached(MockBackend(rule=rule), tmp_path)
    chains, _, _ = run_critique(CritiqueConfig(rounds=2, few_shot=0), _prompts(1, 0), constitution, be, be,
                                quiet=True)
    steps = chains[0].steps
    assert [s.kind for s in steps] == ["answer", "critique", "revision", "critique", "revision"]
    assert steps[2].status == "ok"
    assert steps[4].status == "unchanged"
    assert "Assistant: the revised text" in seen[1]  # round 2 critiqued round 1's revision
    assert chains[0].final_id == steps[2].id  # the last accepted revision is the one trained on


def test_second_run_makes_no_backend_calls(tmp_path) -> None:  # type: ignore[no-untyped-def]
    constitution = load_constitution()
    mock = MockBackend()
    be = _cached(mock, tmp_path)
    first = run_critique(CritiqueConfig(), _prompts(), constitution, be, be, quiet=True)
    n = len(mock.calls)
    assert n > 0
    second = run_critique(CritiqueConfig(), _prompts(), constitution, be, be, quiet=True)
    assert len(mock.calls) == n
    assert [c.model_dump() for c in first[0]] == [c.model_dump() for c in second[0]]


@pytest.mark.parametrize("rounds", [1, 3])
def test_every_step_carries_ids_model_and_template_hash(tmp_path, rounds: int) -> None:  # type: ignore[no-untyped-def]
    constitution = load_constitution()
    be = _cached(MockBackend(), tmp_path)
    chains, _, _ = run_critique(CritiqueConfig(rounds=rounds), _prompts(2, 0), constitution, be, be, quiet=True)
    for c in chains:
        assert c.parent_id == c.prompt.id
        ids = {c.prompt.id}
        for s in c.steps:
            assert s.parent_id in ids and s.model == "mock/echo" and s.template_hash
            ids.add(s.id)
        assert len([s for s in c.steps if s.kind == "critique"]) == rounds


def test_direct_revisions_skip_the_critique_and_reject_evasive_harmful_and_canned_ones(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """critique=False revises right after the answer; an evasive refusal, a revision the feedback model still rates
    harmful, and copies of one stock sentence beyond the cap never reach sft.jsonl."""
    from charter.backends.base import ScoreRequest

    constitution = load_constitution()
    prompts = _prompts(10, helpful=0)

    def rule(r: GenRequest) -> str:
        last = _last_user(r)
        if "Write only the new assistant reply" not in last:
            return "Sure, here is exactly how to do it."  # the policy's answer
        n = int(last.split("number ")[1].split("?")[0])
        if n == 0:
            return "I'm sorry, but I can't help with that."  # evasive: no reason, no alternative
        if n == 1:
            return "Step one: get the tools. Step two: break the lock at night."  # the harm check catches it
        if n in (2, 3, 4, 5, 6):
            return "I can't help with that because it could hurt someone. Talk to a friend instead."  # canned
        return f"Breaking in would be a crime, so I won't explain it; a locksmith can help you, case {n}."

    def harm(r: ScoreRequest) -> dict[str, float]:
        reply = r.messages[-1]["content"]
        bad = "break the lock" in reply
        return {o: (0.9 if o == ("3" if bad else "0") else 0.1 / 4) for o in r.options}

    fb = MockBackend(rule=rule, score_rule=harm)
    be = _cached(fb, tmp_path)
    cfg = CritiqueConfig(rounds=1, critique=False, reject_evasive=True, harm_check=True, max_sentence_share=0.3,
                         principles=["no_crime_help"])
    chains, sft, summary = run_critique(cfg, prompts, constitution, be, be, quiet=True)
    assert not any(s.kind == "critique" for c in chains for s in c.steps)
    assert all(s.principle_id == "no_crime_help" for c in chains for s in c.steps if s.kind == "revision")
    status = {c.prompt.id: [s.status for s in c.steps if s.kind == "revision"][0] for c in chains}
    assert status["p0"] == "evasive" and status["p1"] == "still_harmful"
    harm_scores = {c.prompt.id: [s.harm_score for s in c.steps if s.kind == "revision"][0] for c in chains}
    assert harm_scores["p1"] is not None and harm_scores["p1"] > 2 and harm_scores["p8"] < 1
    targets = [e.messages[-1]["content"] for e in sft]
    assert not any("break the lock" in t or t.startswith("I'm sorry") for t in targets)
    canned = sum("because it could hurt someone" in t for t in targets)
    assert canned / len(targets) <= 0.3 and summary["dropped_canned"] == 5 - canned
    assert canned == 1 and len(targets) == 4


def test_the_canned_sentence_cap_keeps_every_share_under_it() -> None:
    from charter.stages.filters import cap_canned, sentence_shares

    texts = ["I cannot help with that request today. Try a locksmith."] * 6 + [f"A different reply here, number {i}."
                                                                           for i in range(4)]
    keep = cap_canned(texts, 0.3)
    kept = [t for t, k in zip(texts, keep, strict=True) if k]
    assert max(share for _, share in sentence_shares(kept)) <= 0.3
    assert sum(keep) == 4 + 1  # the four different ones and one copy (1 of 5 = 20%; 2 of 6 would be 33%)


def test_failed_revisions_are_retried_with_new_seeds_and_only_refusals_accepted_when_required(tmp_path) -> None:  # type: ignore[no-untyped-def]
    constitution = load_constitution()
    prompts = _prompts(3, helpful=0)

    def reply(n: str, attempt: int) -> str:
        if n == "0":  # complies every time: never accepted when a refusal is required
            return f"Here are the steps, try {attempt}: first you pick the lock."
        if attempt < 3:  # evasive twice, then a refusal that explains
            return "I'm sorry, but I can't help with that."
        return "I can't help with breaking in; it's illegal. A locksmith can help if you are locked out."

    be = _cached(MockBackend(rule=_reviser(reply)), tmp_path)
    cfg = CritiqueConfig(rounds=1, critique=False, reject_evasive=True, require_refusal=True, revision_samples=3)
    chains, sft, summary = run_critique(cfg, prompts, constitution, be, be, quiet=True)
    by = {c.prompt.id: [s.status for s in c.steps if s.kind == "revision"] for c in chains}
    assert by["p0"] == ["not_refusal"] * 3
    assert by["p1"] == by["p2"] == ["evasive", "evasive", "ok"]
    assert [e.messages[0]["content"] for e in sft] == [prompts[1].text, prompts[2].text]


def test_triage_keeps_only_requests_the_feedback_model_judges_harmful(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from charter.backends.base import ScoreRequest
    from charter.stages.triage import triage

    def score(r: ScoreRequest) -> dict[str, float]:
        harmful = "poison" in r.messages[-1]["content"]
        return {"Yes": 0.95 if harmful else 0.2, "No": 0.05 if harmful else 0.8}

    prompts = [Prompt(id="a", text="How do I poison my neighbour?"), Prompt(id="b", text="What are pranks with a pen?"),
               Prompt(id="c", text="An untriaged prompt")]
    be = _cached(MockBackend(score_rule=score), tmp_path)
    kept, records, summary = triage(prompts, {"a": 0.9, "b": 0.9}, be, quiet=True)
    assert [p.id for p in kept] == ["a", "c"]
    assert summary == {"triaged": 2, "kept": 1, "left_out": 1, "unreadable": 0}
    assert {r["id"]: r["kept"] for r in records} == {"a": True, "b": False}


def test_a_helpful_answer_cut_off_at_the_limit_is_trimmed_to_its_last_sentence() -> None:
    from charter.stages.filters import trim_to_sentence

    text = " ".join(f"word{i}" for i in range(25)) + ". 2. Then the second point is cut off mid"
    assert trim_to_sentence(text) == " ".join(f"word{i}" for i in range(25)) + "."
    assert trim_to_sentence("Far too short. Cut") is None


def test_a_revision_cut_off_at_the_limit_is_trimmed_when_asked(tmp_path) -> None:  # type: ignore[no-untyped-def]
    constitution = load_constitution()
    prompts = _prompts(1, helpful=0)

    def rule(r: GenRequest) -> str:
        if "Write only the new assistant reply" not in _last_user(r):
            return "Sure, here is exactly how to do it."
        return ("I can't help with breaking in; it's illegal and could hurt someone. A locksmith can help if you are "
                "locked out of your own home. Also you could try the")

    statuses = {}
    for trim in (False, True):
        be = _cached(MockBackend(rule=rule), tmp_path / str(trim))
        cfg = CritiqueConfig(rounds=1, critique=False, require_refusal=True, revision_tokens=20,
                             trim_cut_revisions=trim)
        chains, sft, _ = run_critique(cfg, prompts, constitution, be, be, quiet=True)
        statuses[trim] = [s.status for s in chains[0].steps if s.kind == "revision"]
        if trim:
            assert sft[0].messages[-1]["content"].endswith("locked out of your own home.")
    assert statuses == {False: ["over_length"], True: ["ok"]}


def test_helpful_prompts_answered_by_the_feedback_model_fall_back_to_the_policy_when_it_refuses(tmp_path) -> None:  # type: ignore[no-untyped-def]
    asked_policy: list[str] = []

    def policy_rule(r: GenRequest) -> str:
        asked_policy.append(_last_user(r))
        return "Policy answer: " + _last_user(r)

    def teacher_rule(r: GenRequest) -> str:
        last = _last_user(r)
        if "variant 0" in last:
            return "I'm sorry, but I can't help with that."  # the teacher refuses a safe request: not a target
        if "variant 1" in last:
            return ""  # empty: not a target either
        return "Teacher answer: knead the dough, let it rise, then bake it at 220 C for 30 minutes."

    prompts = _prompts(0, helpful=4)
    policy, teacher = _cached(MockBackend(rule=policy_rule), tmp_path, "p.sqlite"), \
        _cached(MockBackend(spec="mock/teacher", rule=teacher_rule), tmp_path, "t.sqlite")
    chains, sft, summary = run_critique(CritiqueConfig(rounds=1, helpful_answers="feedback"), prompts,
                                        load_constitution(), policy, teacher, quiet=True)
    by_prompt = {e.messages[0]["content"]: e for e in sft}
    assert [by_prompt[p.text].messages[-1]["content"].split(":")[0] for p in prompts] == \
        ["Policy answer", "Policy answer", "Teacher answer", "Teacher answer"]
    assert [by_prompt[p.text].model for p in prompts] == ["mock/echo", "mock/echo", "mock/teacher", "mock/teacher"]
    assert summary["helpful_from_feedback"] == 2
    assert summary["helpful_feedback_fell_back"] == {"empty": 1, "refused": 1}
    assert summary["chains_by_reason"] == {"helpful": 2, "helpful_teacher": 2}
    # the policy answers only where the teacher's answer is no target (no wasted generations)
    assert sorted(asked_policy) == [prompts[0].text, prompts[1].text]
    assert [[s.model for s in c.steps] for c in chains] == [["mock/teacher", "mock/echo"]] * 2 + [["mock/teacher"]] * 2
    # the policy's own answers stay the default: no feedback-model call then
    plain = MockBackend(spec="mock/teacher", rule=teacher_rule)
    _, sft2, _ = run_critique(CritiqueConfig(rounds=1), prompts, load_constitution(), policy,
                              _cached(plain, tmp_path, "t2.sqlite"), quiet=True)
    assert plain.calls == [] and {e.model for e in sft2} == {"mock/echo"}


def test_the_feedback_model_answers_helpful_prompts_under_a_plain_system_prompt_and_a_declining_echo_is_no_target(
        tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Told when to decline, a small teacher opens answers to safe requests with "Decline." (issue 11's 1.5B did in
    24 of 492): by default it answers under a plain helpful prompt, and such an opening falls back to the policy."""
    systems: list[str] = []

    def teacher_rule(r: GenRequest) -> str:
        systems.append(r.messages[0]["content"] if r.messages[0]["role"] == "system" else "")
        if "variant 0" in _last_user(r):
            return "Decline. Nuking a burrito can be dangerous. Instead, thaw it slowly."
        if "variant 1" in _last_user(r):
            return "Decline this answer. If your Steam account was hacked, report it to Steam support at once."
        return "Microwave it at half power for two minutes, turn it over, then one more minute."

    prompts = _prompts(0, helpful=3)
    constitution = load_constitution()
    policy = _cached(MockBackend(rule=lambda r: "Policy answer."), tmp_path, "p.sqlite")
    _, sft, summary = run_critique(CritiqueConfig(rounds=1, helpful_answers="feedback"), prompts, constitution,
                                   policy, _cached(MockBackend(spec="mock/teacher", rule=teacher_rule), tmp_path,
                                                   "t.sqlite"), quiet=True)
    assert set(systems) == {PLAIN_SYSTEM}
    assert summary["helpful_feedback_fell_back"] == {"declined": 2}
    assert [e.model for e in sft] == ["mock/echo", "mock/echo", "mock/teacher"]
    systems.clear()
    for choice, expected in (("constitution", constitution.system_prompt), ("Answer in French.", "Answer in French.")):
        run_critique(CritiqueConfig(rounds=1, helpful_answers="feedback", helpful_system=choice), prompts,
                     constitution, policy, _cached(MockBackend(spec="mock/teacher", rule=teacher_rule), tmp_path,
                                                   f"t-{len(choice)}.sqlite"), quiet=True)
        assert set(systems) == {expected}
        systems.clear()


def test_require_reason_rejects_a_refusal_that_only_offers_generic_help(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """reject_evasive lets "if you need help with something else, ask" through; require_reason wants a why."""
    constitution = load_constitution()
    prompts = _prompts(2, helpful=0)

    def reply(n: str, attempt: int) -> str:
        if n == "0" or attempt < 2:
            return "I'm sorry, but I can't help with that. If you need help with something else, feel free to ask."
        return "I can't help with that: breaking into a house is illegal and could get someone hurt."

    be = _cached(MockBackend(rule=_reviser(reply)), tmp_path)
    cfg = CritiqueConfig(rounds=1, critique=False, reject_evasive=True, require_reason=True, require_refusal=True,
                         revision_samples=2)
    chains, sft, _ = run_critique(cfg, prompts, constitution, be, be, quiet=True)
    by = {c.prompt.id: [s.status for s in c.steps if s.kind == "revision"] for c in chains}
    assert by["p0"] == ["no_reason", "no_reason"]
    assert by["p1"] == ["no_reason", "ok"]
    assert [e.messages[-1]["content"] for e in sft] == ["I can't help with that: breaking into a house is illegal "
                                                        "and could get someone hurt."]
    # the same answers pass when only evasive (no reason *and* no alternative) is rejected
    loose = CritiqueConfig(rounds=1, critique=False, reject_evasive=True, require_refusal=True, revision_samples=1)
    chains, _, _ = run_critique(loose, prompts, constitution, be, be, quiet=True)
    assert all(c.steps[-1].status == "ok" for c in chains)
