"""The transformers backend: plumbing on a tiny random Llama, one smoke run on the embedded model."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from charter.backends import BackendOptions, load_backend
from charter.backends.base import Backend, GenParams, GenRequest, ScoreRequest
from charter.errors import BackendError

QUESTIONS = [
    "Hi",
    "What is the capital of France?",
    "Write a short poem about the sea, with rhymes, in four lines please.",
    "How do I keep basil alive on a windowsill?",
]


def _backend(folder: Path, **kw: object):  # type: ignore[no-untyped-def]
    from charter.backends.transformers import TransformersBackend

    opts = BackendOptions(dtype=str(kw.pop("dtype", "float32")), **kw)  # type: ignore[arg-type]
    return TransformersBackend(f"transformers//{folder}", str(folder), opts)


@pytest.fixture(scope="session")
def lively_model_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random Llama re-initialised with larger weights: the default init only ever emits newlines,
    which would make output comparisons vacuous; this one writes varied (nonsense) words."""
    import torch
    from transformers import AutoConfig, AutoTokenizer, LlamaForCausalLM

    out = tmp_path_factory.mktemp("lively-llama")
    config = AutoConfig.from_pretrained(tiny_model_dir)
    config.initializer_range = 0.2
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(out)
    return out


@pytest.fixture(scope="module", params=["engine", "plain"])
def tiny(lively_model_dir: Path, request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    """The backend with charter's engine and with plain ``generate``: both must behave the same."""
    return _backend(lively_model_dir, extra={"engine": request.param == "engine"})


def _reqs(params: GenParams, questions: list[str] = QUESTIONS) -> list[GenRequest]:
    return [GenRequest.of([{"role": "user", "content": q}], params) for q in questions]


def test_backend_satisfies_the_protocol_and_names_its_weights(tiny, lively_model_dir: Path) -> None:
    assert isinstance(tiny, Backend)
    assert tiny.model_id.startswith("hf:") and tiny.model_id.endswith(":float32")  # content, not the path
    assert tiny.context_length == 1024


def test_load_backend_builds_it_from_a_spec_string(tiny_model_dir: Path) -> None:
    b = load_backend(f"transformers/{tiny_model_dir}", BackendOptions(dtype="float32"))
    assert b.spec == f"transformers/{tiny_model_dir}"


def test_model_id_follows_the_weights_content_not_path_or_mtime(tiny_model_dir: Path, tmp_path: Path) -> None:
    import os
    import shutil

    copy = tmp_path / "m"
    shutil.copytree(tiny_model_dir, copy)
    before = _backend(copy).model_id
    assert _backend(tiny_model_dir).model_id == before  # the same weights in another folder: the same model
    weights = copy / "model.safetensors"
    st = weights.stat()
    weights.write_bytes(weights.read_bytes())  # same bytes rewritten: still the same model
    assert _backend(copy).model_id == before
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # retrained weights, same size, and the old mtime put back
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert weights.stat().st_mtime_ns == st.st_mtime_ns
    after_weights = _backend(copy).model_id
    assert after_weights != before
    (copy / "tokenizer_config.json").write_text((copy / "tokenizer_config.json").read_text().replace("{", "{ ", 1))
    assert _backend(copy).model_id != after_weights  # tokenizer and chat template are part of the model


def test_batched_greedy_output_equals_one_at_a_time(tiny) -> None:
    reqs = _reqs(GenParams(max_new_tokens=12))
    batched = tiny.generate(reqs)
    singles = [tiny.generate([r])[0] for r in reqs]
    assert [g.text for g in batched] == [g.text for g in singles]
    assert len({g.text for g in batched}) == len(reqs) and all(g.text for g in batched)
    assert all(g.completion_tokens > 0 and g.prompt_tokens > 0 for g in batched)
    # prompts of different lengths really were padded together
    assert len({g.prompt_tokens for g in batched}) > 1


def test_results_come_back_in_request_order_across_parameter_groups(tiny) -> None:
    a = _reqs(GenParams(max_new_tokens=5), QUESTIONS[:2])
    b = _reqs(GenParams(max_new_tokens=8), QUESTIONS[2:])
    mixed = [a[0], b[0], a[1], b[1]]
    out = tiny.generate(mixed)
    assert [g.completion_tokens for g in out] == [5, 8, 5, 8]
    assert out[1].text == tiny.generate([b[0]])[0].text


def test_sampling_is_reproducible_with_the_same_seeds_and_varies_with_others(tiny) -> None:
    reqs = _reqs(GenParams(max_new_tokens=12, temperature=1.0, seed=7))
    first = [g.text for g in tiny.generate(reqs)]
    assert [g.text for g in tiny.generate(reqs)] == first
    other = [g.text for g in tiny.generate(_reqs(GenParams(max_new_tokens=12, temperature=1.0, seed=8)))]
    assert other != first
    greedy = [g.text for g in tiny.generate(_reqs(GenParams(max_new_tokens=12)))]
    assert greedy != first


def test_hitting_max_new_tokens_reports_length(tiny) -> None:
    (g,) = tiny.generate(_reqs(GenParams(max_new_tokens=6), QUESTIONS[:1]))
    assert g.finish_reason == "length" and g.completion_tokens == 6


def test_stop_string_cuts_the_answer_and_reports_stop(tiny) -> None:
    (full,) = tiny.generate(_reqs(GenParams(max_new_tokens=20), QUESTIONS[1:2]))
    words = full.text.split()
    assert len(words) >= 4, full.text
    stop = words[2]
    (cut,) = tiny.generate(_reqs(GenParams(max_new_tokens=20, stop=(stop,)), QUESTIONS[1:2]))
    assert cut.finish_reason == "stop"
    assert cut.text == full.text[: full.text.find(stop)].strip()
    assert cut.completion_tokens < full.completion_tokens


def test_prompt_longer_than_the_context_is_refused_with_its_token_count(tiny) -> None:
    long = " ".join(["word"] * 1200)
    with pytest.raises(BackendError, match=r"tokens \+ max_new_tokens 16 > the model's context of 1024") as e:
        tiny.generate(_reqs(GenParams(max_new_tokens=16), [long]))
    assert "shorten the prompt" in str(e.value)


def test_missing_folder_and_folder_without_config_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(BackendError, match="does not exist"):
        load_backend(f"transformers/{tmp_path / 'nope'}")
    (tmp_path / "adapter_config.json").write_text("{}")
    with pytest.raises(BackendError, match="no config.json.*LoRA adapter"):
        load_backend(f"transformers/{tmp_path}")


def test_unknown_dtype_is_refused(tiny_model_dir: Path) -> None:
    with pytest.raises(BackendError, match="unknown dtype"):
        load_backend(f"transformers/{tiny_model_dir}", BackendOptions(dtype="float8"))


def test_option_scores_are_the_model_next_token_logprobs(tiny) -> None:
    import torch

    msgs = [{"role": "user", "content": "Which is better? (A) tea (B) coffee"}]
    reqs = [
        ScoreRequest.of(msgs, ("A", "B"), "The answer is: ("),
        ScoreRequest.of(msgs[:1] + [], ("A", "B", "C"), "Answer:"),
        ScoreRequest.of([{"role": "user", "content": "Yes or no?"}], ("Yes", "No"), ""),
    ]
    scores = tiny.score_options(reqs)
    for r, s in zip(reqs, scores, strict=True):
        assert set(s.logprobs) == set(r.options)
        assert math.isclose(sum(s.probs().values()), 1.0, rel_tol=1e-6)
        # a manual, unpadded forward pass over the same context
        ctx, firsts = tiny.option_tokens(tiny.render(r.messages) + r.assistant_prefix, r.options)
        with torch.inference_mode():
            logits = tiny.score_model(input_ids=torch.tensor([ctx])).logits[0, -1]
        manual = torch.log_softmax(logits.float(), -1)
        for o, t in zip(r.options, firsts, strict=True):
            assert s.logprobs[o] == pytest.approx(float(manual[t]), abs=1e-4)


def test_option_tokens_follow_the_prefix_even_when_the_tokeniser_merges_a_space(tiny) -> None:
    # "is: " ends in a lone-space token that "is: A" merges into " A": the context must drop that space.
    ctx, firsts = tiny.option_tokens("The answer is: ", ["A", "B"])
    assert tiny.tokenizer.decode(ctx) == "The answer is:"
    assert [tiny.tokenizer.decode([t]) for t in firsts] == [" A", " B"]
    ctx, firsts = tiny.option_tokens("The answer is: (", ["A", "B"])
    assert tiny.tokenizer.decode(ctx) == "The answer is: ("
    assert [tiny.tokenizer.decode([t]) for t in firsts] == ["A", "B"]


@pytest.mark.slow
def test_embedded_model_answers_in_sane_english_and_prefers_the_right_option() -> None:
    b = load_backend("transformers/embedded", BackendOptions(threads=1))
    (g,) = b.generate(_reqs(GenParams(max_new_tokens=24), ["What is the capital of France?"]))
    assert "Paris" in g.text and g.finish_reason == "stop"
    (s,) = b.score_options(
        [
            ScoreRequest.of(
                [{"role": "user", "content": "Which is a fruit?\n(A) a car\n(B) an apple\nAnswer with A or B."}],
                ("A", "B"),
                "The answer is: (",
            )
        ]
    )
    assert s.probs()["B"] > 0.5
