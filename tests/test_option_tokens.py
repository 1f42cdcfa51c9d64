"""One option-token helper for the local backends: options are read from their first token, so two options that
start with the same token are a clear error, not two equal scores."""

from __future__ import annotations

from pathlib import Path

import pytest

from charter.backends import BackendOptions
from charter.backends.base import ScoreRequest
from charter.backends.transformers import TransformersBackend
from charter.backends.vllm import option_first_tokens
from charter.errors import BackendError


def _chars(text: str) -> list[int]:
    """A character tokenizer: every character is a token."""
    return [ord(c) for c in text]


def test_options_sharing_a_first_token_are_refused_by_the_helper() -> None:
    assert option_first_tokens(_chars, "Answer: ", ["A", "B"]) == (_chars("Answer: "), [ord("A"), ord("B")])
    with pytest.raises(BackendError, match="'Yes' and 'Yes please' start with the same token"):
        option_first_tokens(_chars, "Answer: ", ["Yes", "Yes please"])


def test_the_transformers_backend_refuses_options_sharing_a_first_token(tiny_model_dir: Path) -> None:
    backend = TransformersBackend(f"transformers//{tiny_model_dir}", str(tiny_model_dir),
                                  BackendOptions(dtype="float32"))
    question = [{"role": "user", "content": "Is the sky blue?"}]
    [ok] = backend.score_options([ScoreRequest.of(question, ("Yes", "No"), "Answer: ")])
    assert ok.error is None and set(ok.logprobs) == {"Yes", "No"}
    with pytest.raises(BackendError, match="start with the same token") as info:
        backend.score_options([ScoreRequest.of(question, ("Yes", "Yes, but"), "Answer: ")])
    assert "use options whose first tokens differ" in str(info.value)
