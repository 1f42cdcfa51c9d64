"""The fast engine: same greedy tokens as transformers' generate, with prefix sharing and continuous batching."""

from __future__ import annotations

from pathlib import Path

import pytest

from charter.backends import BackendOptions
from charter.backends.base import GenParams, GenRequest

SYSTEM = {"role": "system", "content": "You are a careful assistant. Be brief, kind and accurate. " * 3}
QUESTIONS = [
    "Hi",
    "What is the capital of France?",
    "Write a short poem about the sea, with rhymes, in four lines please.",
    "How do I keep basil alive on a windowsill?",
    "Name three colours.",
    "Explain, step by step and with an example, how compound interest works over ten years.",
]


@pytest.fixture(scope="module")
def lively_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random Llama with larger weights, so greedy outputs are varied words rather than newlines."""
    import torch
    from transformers import AutoConfig, AutoTokenizer, LlamaForCausalLM

    out = tmp_path_factory.mktemp("lively-llama-engine")
    config = AutoConfig.from_pretrained(tiny_model_dir)
    config.initializer_range = 0.2
    torch.manual_seed(1)
    LlamaForCausalLM(config).save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(out)
    return out


def _backend(folder: Path | str, slots: int = 3, engine: bool = True):  # type: ignore[no-untyped-def]
    from charter.backends.transformers import TransformersBackend

    opts = BackendOptions(dtype="float32", batch_size=8, extra={"engine": engine, "slots": slots})
    return TransformersBackend(f"transformers//{folder}", str(folder), opts)


@pytest.fixture(scope="module")
def backend(lively_dir: Path):  # type: ignore[no-untyped-def]
    return _backend(lively_dir)


def _reqs(params: GenParams | list[GenParams], questions: list[str] = QUESTIONS) -> list[GenRequest]:
    ps = params if isinstance(params, list) else [params] * len(questions)
    return [GenRequest.of([SYSTEM, {"role": "user", "content": q}], p) for q, p in zip(questions, ps, strict=True)]


def _prompts(b, reqs: list[GenRequest]) -> list[list[int]]:  # type: ignore[no-untyped-def]
    return [b.encode(b.render(r.messages)) for r in reqs]


def test_engine_is_used_for_llama_models_and_can_be_switched_off(backend, lively_dir: Path) -> None:
    assert backend.engine is not None
    assert _backend(lively_dir, engine=False).engine is None


def test_greedy_engine_output_equals_plain_generate(backend) -> None:
    reqs = _reqs(GenParams(max_new_tokens=16))
    plain = backend.generate_plain(reqs, _prompts(backend, reqs))
    fast = backend.generate(reqs)
    assert [g.text for g in fast] == [g.text for g in plain]
    assert [g.completion_tokens for g in fast] == [g.completion_tokens for g in plain]
    assert [g.finish_reason for g in fast] == [g.finish_reason for g in plain]
    assert len({g.text for g in fast}) == len(reqs)


def test_shared_prefix_is_computed_once_and_gives_the_same_tokens_as_no_sharing(backend) -> None:
    prompts = _prompts(backend, _reqs(GenParams()))
    params = [GenParams(max_new_tokens=10)] * len(prompts)
    engine = backend.engine
    engine.clear_prefix()
    before = engine.stats["prefix_tokens"]
    shared = engine.run(prompts, params)
    prefix = engine.stats["prefix_tokens"] - before
    assert prefix > 20  # the system prompt and chat-template header
    assert engine.run(prompts, params, share_prefix=False) == shared
    reused = engine.stats["prefix_reused"]
    assert engine.run(prompts, params) == shared
    assert engine.stats["prefix_reused"] == reused + 1
    assert engine.stats["prefix_tokens"] - before == prefix  # nothing recomputed


def test_a_cached_prefix_is_extended_or_cut_back_for_the_next_call(backend) -> None:
    engine = backend.engine
    base = _prompts(backend, _reqs(GenParams()))
    longer = [p[:5] + [int(t) for t in base[1][5:40]] + p[40:] for p in base]  # share 40 tokens instead of ~30
    params = [GenParams(max_new_tokens=6)] * len(base)
    for prompts in (base, longer, base):
        engine.clear_prefix()
        fresh = engine.run(prompts, params)
        engine.run(longer if prompts is base else base, params)  # leaves a different prefix cached
        assert engine.run(prompts, params) == fresh


@pytest.mark.parametrize("shared", [True, False])
def test_prompts_prefilled_together_equal_each_prefilled_alone(backend, shared: bool) -> None:
    import torch

    engine = backend.engine
    prompts = _prompts(backend, _reqs(GenParams()))  # six lengths, GQA (4 query heads on 2 KV heads)
    engine.clear_prefix()
    if shared:
        engine._set_prefix(prompts[0][:20])
    P = len(engine._prefix_ids)
    suffixes = [p[P:] for p in prompts]
    G, d, n = engine.n_kv, engine.head_dim, max(len(s) for s in suffixes)
    caches = [[torch.zeros(6, G, n, d) for _ in engine.layers] for _ in range(4)]
    with torch.inference_mode():
        together = engine._prefill_batch(suffixes, P, (caches[0], caches[1], range(6)))
        alone = torch.cat([engine._prefill(s, P, (caches[2], caches[3], j), hidden=True)[0]
                           for j, s in enumerate(suffixes)])
    assert torch.allclose(together, alone, atol=1e-5)
    for mine, theirs in zip(caches[:2], caches[2:], strict=True):
        assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(mine, theirs, strict=True))
    engine.clear_prefix()


def test_rows_that_finish_early_do_not_disturb_the_others(backend) -> None:
    # Different lengths make rows leave at different steps; 3 slots for 6 prompts forces refills into freed slots.
    lengths = [3, 14, 1, 9, 5, 12]
    reqs = _reqs([GenParams(max_new_tokens=n) for n in lengths])
    together = backend.generate(reqs)
    alone = [backend.generate([r])[0] for r in reqs]
    assert [g.text for g in together] == [g.text for g in alone]
    assert [g.completion_tokens for g in together] == lengths
    assert all(g.finish_reason == "length" for g in together)


def test_stop_strings_end_a_row_early_in_the_engine(backend) -> None:
    reqs = _reqs(GenParams(max_new_tokens=20))
    full = backend.generate(reqs)
    stops = [g.text.split()[3] for g in full]
    stopped = backend.generate(
        [GenRequest.of(r.messages, GenParams(max_new_tokens=20, stop=(s,))) for r, s in zip(reqs, stops, strict=True)]
    )
    for f, s, g in zip(full, stops, stopped, strict=True):
        assert g.finish_reason == "stop"
        assert g.text == f.text[: f.text.find(s)].strip()
        assert g.completion_tokens < 20


def test_sampled_answer_depends_only_on_its_own_request(backend) -> None:
    reqs = _reqs([GenParams(max_new_tokens=12, temperature=0.9, top_p=0.95, seed=i) for i in range(6)])
    together = backend.generate(reqs)
    assert [g.text for g in backend.generate(reqs[::-1])][::-1] == [g.text for g in together]
    assert backend.generate(reqs[2:3])[0].text == together[2].text
    greedy = backend.generate(_reqs(GenParams(max_new_tokens=12)))
    assert [g.text for g in together] != [g.text for g in greedy]
    reseeded = backend.generate(
        _reqs([GenParams(max_new_tokens=12, temperature=0.9, top_p=0.95, seed=100 + i) for i in range(6)])
    )
    assert [g.text for g in reseeded] != [g.text for g in together]


@pytest.mark.slow
def test_engine_matches_plain_generate_on_the_embedded_model() -> None:
    b = _backend("embedded", slots=4)
    b.spec = "transformers/embedded"
    qs = ["What is the capital of France?", "Give me two tips for sleeping better.", "What is 12 times 12?"]
    reqs = _reqs(GenParams(max_new_tokens=16), qs)
    plain = b.generate_plain(reqs, _prompts(b, reqs))
    fast = b.generate(reqs)
    assert [g.text for g in fast] == [g.text for g in plain]
    assert "Paris" in fast[0].text


def test_c_attention_kernel_matches_pytorch_attention() -> None:
    import torch

    from charter.backends import decode_kernel

    lib = decode_kernel.load()
    if lib is None:
        pytest.skip("no C compiler here: the engine uses PyTorch attention")
    torch.manual_seed(0)
    B, G, R, D, L = 5, 3, 3, 64, 40
    kc, vc, q = torch.randn(B + 2, G, L, D), torch.randn(B + 2, G, L, D), torch.randn(B, G, R, D)
    lens = torch.tensor([0, 7, 39, 12, 20])
    out, lse = decode_kernel.own_attention(lib, q, kc, vc, lens, 0.125)
    for b in range(B):
        n = int(lens[b]) + 1
        s = torch.einsum("grd,gtd->grt", q[b], kc[b, :, :n]) * 0.125
        assert torch.allclose(lse[b], torch.logsumexp(s, -1), atol=1e-5)
        assert torch.allclose(out[b], torch.einsum("grt,gtd->grd", torch.softmax(s, -1), vc[b, :, :n]), atol=1e-5)


def test_engine_gives_the_same_tokens_with_and_without_the_c_kernel(backend, lively_dir: Path) -> None:
    from charter.backends.transformers import TransformersBackend

    opts = BackendOptions(dtype="float32", extra={"slots": 3, "kernel": False})
    without = TransformersBackend("t", str(lively_dir), opts)
    assert without.engine is not None and without.engine.kernel is None
    reqs = _reqs(GenParams(max_new_tokens=12))
    assert [g.text for g in backend.generate(reqs)] == [g.text for g in without.generate(reqs)]


def test_engine_in_bfloat16_reaches_the_fp32_answer_as_often_as_plain_bf16_generate(lively_dir: Path,
                                                                                   bf16_closeness) -> None:
    from charter.backends.transformers import TransformersBackend

    def make(dtype: str) -> TransformersBackend:
        return TransformersBackend("t", str(lively_dir), BackendOptions(dtype=dtype, extra={"slots": 4}))

    assert make("bfloat16").engine.kernel is None  # the C decode kernel is fp32-only
    engine, plain, n = bf16_closeness(make)
    # measured: the engine reaches fp32's answer on e.g. 62 and 67 of 96 where plain bf16 does on 70 and 72
    assert engine >= plain - n // 10 and engine >= n // 2, (engine, plain, n)


def test_scoring_through_the_engine_equals_the_padded_forward_pass(backend) -> None:
    from charter.backends.base import ScoreRequest

    reqs = [
        ScoreRequest.of([SYSTEM, {"role": "user", "content": q + " (A) yes (B) no"}], ("A", "B"), "Answer: (")
        for q in QUESTIONS
    ]
    engine = backend.score_engine
    assert engine is backend.engine
    engine.clear_prefix()
    before = engine.stats["prefix_tokens"]
    fast = backend.score_options(reqs)
    assert engine.stats["prefix_tokens"] - before > 20  # the system prompt was run once, for all six
    texts = [backend.render(r.messages) + r.assistant_prefix for r in reqs]
    prepared = [backend.option_tokens(t, r.options) for t, r in zip(texts, reqs, strict=True)]
    plain = backend.score_options_plain(prepared, reqs)
    for f, p in zip(fast, plain, strict=True):
        for o in ("A", "B"):
            assert f.logprobs[o] == pytest.approx(p.logprobs[o], abs=1e-4)


def test_packed_fp32_weights_give_the_same_tokens_as_plain_matmuls(backend, lively_dir: Path) -> None:
    from charter.backends.transformers import TransformersBackend

    dense = TransformersBackend("t", str(lively_dir), BackendOptions(dtype="float32", extra={"linear": "dense"}))
    assert dense.engine.linear == "dense"
    reqs = _reqs(GenParams(max_new_tokens=12))
    assert [g.text for g in backend.generate(reqs)] == [g.text for g in dense.generate(reqs)]


def test_an_unknown_linear_mode_is_a_one_line_error(lively_dir: Path) -> None:
    from charter.backends.transformers import TransformersBackend
    from charter.errors import BackendError

    with pytest.raises(BackendError, match="unknown linear mode 'fp4'"):
        TransformersBackend("t", str(lively_dir), BackendOptions(extra={"linear": "fp4"}))
