"""Local data parallelism: a transformers model served by several worker processes gives the same answers."""

from __future__ import annotations

from pathlib import Path

import pytest

from charter.backends import BackendOptions, load_backend
from charter.backends.base import GenParams, GenRequest, ScoreRequest
from charter.errors import BackendError

QUESTIONS = ["Hi", "Name three colours.", "How do I keep basil alive?", "What is 2+2?", "Tell me a joke.", "Why?"]


def _reqs(params: list[GenParams]) -> list[GenRequest]:
    return [GenRequest.of([{"role": "user", "content": q}], p) for q, p in zip(QUESTIONS, params, strict=True)]


@pytest.fixture(scope="module")
def pair(tiny_model_dir: Path):  # type: ignore[no-untyped-def]
    """The tiny model in this process and behind two worker processes."""
    one = load_backend(f"transformers//{tiny_model_dir}", BackendOptions(dtype="float32", threads=1))
    two = load_backend(f"transformers//{tiny_model_dir}",
                       BackendOptions(dtype="float32", threads=2, extra={"workers": 2}))
    yield one, two
    two.close()


def test_two_workers_answer_like_one_process_greedy_and_sampled(pair) -> None:  # type: ignore[no-untyped-def]
    one, two = pair
    assert type(two).__name__ == "LanesBackend" and two.model_id == one.model_id
    greedy = _reqs([GenParams(max_new_tokens=n) for n in (3, 9, 1, 6, 12, 4)])
    assert [g.text for g in two.generate(greedy)] == [g.text for g in one.generate(greedy)]
    sampled = _reqs([GenParams(max_new_tokens=8, temperature=0.9, seed=i) for i in range(6)])
    assert [g.text for g in two.generate(sampled)] == [g.text for g in one.generate(sampled)]
    assert two.generate([]) == []


def test_two_workers_score_like_one_process(pair) -> None:  # type: ignore[no-untyped-def]
    one, two = pair
    reqs = [ScoreRequest.of([{"role": "user", "content": q + " (A) or (B)?"}], ("A", "B"), "(") for q in QUESTIONS]
    for a, b in zip(one.score_options(reqs), two.score_options(reqs), strict=True):
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-5)


def test_a_worker_that_cannot_load_the_model_is_a_one_line_error(tiny_model_dir: Path) -> None:
    with pytest.raises(BackendError, match="worker of .* failed: BackendError: unknown dtype 'float8'"):
        load_backend(f"transformers//{tiny_model_dir}", BackendOptions(dtype="float8", extra={"workers": 2}))
