"""Shared fixtures: offline, CPU, one torch thread, state in temp folders."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# keeps every Ray port on loopback even if a test imports Ray early (see backends/ray_pool.py)
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


@pytest.fixture(autouse=True, scope="session")
def _one_thread() -> None:
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(int(os.environ.get("CHARTER_TEST_THREADS", "1")))


@pytest.fixture(scope="session")
def embedded_dir() -> Path:
    """The embedded SmolLM2-135M-Instruct as a safetensors folder (converted once into the user cache)."""
    from charter.embedded import embedded_model_dir

    return embedded_model_dir()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, embedded_dir: Path) -> Path:
    """A tiny Llama with random weights and the embedded model's tokenizer and chat template: fast plumbing tests."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("tiny-llama")
    tok = AutoTokenizer.from_pretrained(embedded_dir)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (public HH-RLHF and XSTest subsets); tests that need it skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} not found: shared data sits beside the checkout in CI")
    return SHARED_DATA


@pytest.fixture(scope="session")
def bf16_closeness():  # type: ignore[no-untyped-def]
    """``measure(make_backend)`` -> (engine bf16 answers equal to fp32's, plain bf16 answers equal to fp32's, n).

    ``make_backend(dtype)`` builds a backend with the engine on. Greedy answers to 96 prompts behind one shared system
    prompt (so the engine's prefix path runs), 8 new tokens; the fp32 reference is plain ``generate`` in fp32. Two
    bf16 paths that sum in different orders part on near-tied logits — on the tiny random models of these tests the
    engine and plain ``generate`` agree on about 3 prompts in 4 — so a bf16 path is judged by how often it reaches
    the exact (fp32) answer, not by equality with another bf16 path.
    """
    from charter.backends.base import GenParams, GenRequest

    system = {"role": "system", "content": "You are a careful assistant. Be brief, kind and accurate. " * 3}
    topics = ["sea", "basil", "France", "poems", "interest", "colours", "rivers", "bread", "cats", "code", "primes",
              "history", "music", "the", "moon", "trains"]
    questions = [f"Tell me about {a} and {b}, briefly." if i % 2 else f"Why is {a} like {b}? Explain in {i + 3} words."
                 for i, (a, b) in enumerate((topics[i % 15], topics[(i * 7 + 3) % 15]) for i in range(96))]

    def measure(make_backend):  # type: ignore[no-untyped-def]
        reqs = [GenRequest.of([system, {"role": "user", "content": q}], GenParams(max_new_tokens=8))
                for q in questions]
        b16, b32 = make_backend("bfloat16"), make_backend("float32")
        assert b16.engine is not None and str(b16.engine.dtype) == "torch.bfloat16"
        prompts = [b16.encode(b16.render(r.messages)) for r in reqs]
        fast = b16.generate(reqs)
        assert all(g.completion_tokens == 8 for g in fast)
        plain = b16.generate_plain(reqs, prompts)
        exact = b32.generate_plain(reqs, prompts)
        return (sum(f.text == e.text for f, e in zip(fast, exact, strict=True)),
                sum(p.text == e.text for p, e in zip(plain, exact, strict=True)), len(reqs))

    return measure
