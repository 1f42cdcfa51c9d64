"""A request has one answer: the same sampled text alone and in any batch (fp32, plain generate and the engine), a
model id that changes with the tokenizer and chat template, and worker processes that never hand a later call an
earlier call's reply."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from charter.backends import BackendOptions, load_backend
from charter.backends.base import GenParams, GenRequest
from charter.backends.transformers import TransformersBackend, model_identity
from charter.errors import BackendError

QUESTIONS = ["Hi", "Name three colours.", "How do I keep basil alive?", "What is 2+2?", "Tell me a joke.", "Why?"]


def _tiny(out: Path, embedded_dir: Path, arch: str) -> Path:
    """A tiny random model with the embedded tokenizer. ``initializer_range=1.0`` makes its next-token distributions
    peaked like a trained model's (a nucleus of 1-100 tokens; at the default 0.02 they are near-uniform over 49k
    tokens, where fp32 rounding between batch shapes, ~1e-7, reorders near-equal probabilities)."""
    import torch
    from transformers import (
        AutoTokenizer,
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    tok = AutoTokenizer.from_pretrained(embedded_dir)
    ids = {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
    model: Any
    torch.manual_seed(0)
    if arch == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=4, n_positions=1024,
                                           initializer_range=1.0, **ids))
    else:
        config_cls, model_cls = (Qwen2Config, Qwen2ForCausalLM) if arch == "qwen2" else (LlamaConfig, LlamaForCausalLM)
        model = model_cls(config_cls(
            vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=True, initializer_range=1.0,
            **ids))
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def tiny_gpt2_dir(tmp_path_factory: pytest.TempPathFactory, embedded_dir: Path) -> Path:
    """A tiny GPT-2 (the engine runs Llama and Qwen2 only, so generation takes the plain ``generate`` path)."""
    return _tiny(tmp_path_factory.mktemp("tiny-gpt2"), embedded_dir, "gpt2")


@pytest.fixture(scope="module")
def tiny_qwen2_dir(tmp_path_factory: pytest.TempPathFactory, embedded_dir: Path) -> Path:
    """A tiny Qwen2 (the engine runs it, with its q/k/v biases)."""
    return _tiny(tmp_path_factory.mktemp("tiny-qwen2"), embedded_dir, "qwen2")


@pytest.fixture(scope="module")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory, embedded_dir: Path) -> Path:
    """A tiny Llama (the engine runs it; ``extra.engine: false`` sends it down the plain path)."""
    return _tiny(tmp_path_factory.mktemp("tiny-llama-peaked"), embedded_dir, "llama")


def _requests(top_p: float = 1.0, n: int = 6) -> list[GenRequest]:
    return [GenRequest.of([{"role": "user", "content": q}],
                          GenParams(max_new_tokens=10, temperature=1.0, top_p=top_p, seed=100 + i))
            for i, q in enumerate(QUESTIONS[:n])]


def _backend(folder: Path, batch_size: int = 32, engine: bool = True) -> TransformersBackend:
    return TransformersBackend(f"transformers//{folder}", str(folder),
                               BackendOptions(dtype="float32", threads=1, batch_size=batch_size,
                                              extra={"engine": engine}))


def _texts(backend: Any, requests: list[GenRequest]) -> list[str]:
    return [g.text for g in backend.generate(requests)]


@pytest.mark.parametrize("path", ["plain-gpt2", "plain-llama", "engine-llama", "engine-qwen2"])
@pytest.mark.parametrize("top_p", [1.0, 0.9])
def test_a_sampled_answer_is_the_same_alone_and_in_any_batch(path: str, top_p: float, tiny_gpt2_dir: Path,
                                                             tiny_llama_dir: Path, tiny_qwen2_dir: Path) -> None:
    folder = {"plain-gpt2": tiny_gpt2_dir, "engine-qwen2": tiny_qwen2_dir}.get(path, tiny_llama_dir)
    engine = path.startswith("engine")
    backend = _backend(folder, engine=engine)
    assert (backend.engine is not None) == engine
    reqs = _requests(top_p)
    alone = [_texts(backend, [r])[0] for r in reqs]
    assert len(set(alone)) > 1 and all(alone)
    assert _texts(backend, reqs) == alone
    assert _texts(backend, reqs[::-1]) == alone[::-1]
    mates = _requests(top_p)[:2]
    mates = [GenRequest.of([{"role": "user", "content": "Something else entirely, quite a bit longer."}],
                           m.params) for m in mates]
    assert _texts(backend, [mates[0], reqs[3], mates[1]])[1] == alone[3]
    assert _texts(_backend(folder, batch_size=2, engine=engine), reqs) == alone  # chunked two by two


def test_the_same_prompt_with_other_seeds_samples_other_answers(tiny_gpt2_dir: Path) -> None:
    backend = _backend(tiny_gpt2_dir)
    reqs = [GenRequest.of([{"role": "user", "content": "Hi"}], GenParams(max_new_tokens=8, temperature=1.0, seed=s))
            for s in range(4)]
    texts = _texts(backend, reqs)
    assert len(set(texts)) > 1
    assert _texts(backend, reqs) == texts  # and each seed keeps its answer


def test_model_id_changes_with_the_chat_template_and_the_tokenizer(tmp_path: Path, tiny_model_dir: Path) -> None:
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    first = model_identity(str(folder), BackendOptions())
    assert model_identity(str(folder), BackendOptions()) == first  # nothing changed, nothing new

    template = next(f for f in (folder / "chat_template.jinja", folder / "tokenizer_config.json") if f.is_file())
    template.write_text(template.read_text() + "\n")
    second = model_identity(str(folder), BackendOptions())
    assert second != first

    config = folder / "tokenizer_config.json"
    config.write_text(config.read_text().replace("}", ', "model_max_length": 77}', 1)
                      if config.read_text().strip().startswith("{") else config.read_text())
    assert model_identity(str(folder), BackendOptions()) not in (first, second)


def test_a_failed_worker_call_leaves_no_reply_for_the_next_call(tiny_llama_dir: Path) -> None:
    spec = f"transformers//{tiny_llama_dir}"
    one = load_backend(spec, BackendOptions(dtype="float32", threads=1))
    two = load_backend(spec, BackendOptions(dtype="float32", threads=2, extra={"workers": 2}))
    try:
        params = GenParams(max_new_tokens=6, temperature=1.0)
        too_long = GenRequest.of([{"role": "user", "content": "word " * 1100}], params)  # > the 1024-token context
        short = GenRequest.of([{"role": "user", "content": "Hi"}], params)
        with pytest.raises(BackendError, match="worker of .* failed"):
            two.generate([too_long, short])  # the long one goes to lane 0 and fails; lane 1 answers "Hi"
        later = [GenRequest.of([{"role": "user", "content": q}], params) for q in ("What is 2+2?", "Why?")]
        want = _texts(one, later)
        assert _texts(one, [short])[0] not in want  # an earlier reply would show
        assert _texts(two, later) == want
    finally:
        two.close()  # type: ignore[attr-defined]
