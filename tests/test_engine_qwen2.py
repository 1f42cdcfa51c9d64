"""The engine on the Qwen2 family (q/k/v biases, tied or untied embeddings, its RoPE theta and RMSNorm eps, GQA):
the same greedy tokens and option scores as transformers' own forward pass, on tiny random Qwen2 models."""

from __future__ import annotations

from pathlib import Path

import pytest

from charter.backends import BackendOptions
from charter.backends.base import GenParams, GenRequest, ScoreRequest

SYSTEM = {"role": "system", "content": "You are a careful assistant. Be brief, kind and accurate. " * 3}
QUESTIONS = [
    "Hi",
    "What is the capital of France?",
    "Write a short poem about the sea, with rhymes, in four lines please.",
    "How do I keep basil alive on a windowsill?",
    "Name three colours.",
    "Explain, step by step and with an example, how compound interest works over ten years.",
]


def _tiny_qwen2(out: Path, tokenizer_dir: Path, tied: bool) -> Path:
    """A 2-layer Qwen2 with the embedded tokenizer, large random weights and *non-zero* q/k/v biases (transformers
    initialises biases to zero, which would hide a engine that drops them)."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = Qwen2Config(
        vocab_size=len(tok), hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=tied, rope_theta=1e6,
        rms_norm_eps=1e-6, initializer_range=0.2, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(2 if tied else 3)
    model = Qwen2ForCausalLM(config)
    with torch.no_grad():
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.normal_(0.0, 0.5)
    assert layer.self_attn.o_proj.bias is None
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module", params=[True, False], ids=["tied", "untied"])
def qwen2_dir(request: pytest.FixtureRequest, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _tiny_qwen2(tmp_path_factory.mktemp("tiny-qwen2"), tiny_model_dir, tied=request.param)


def _backend(folder: Path, dtype: str = "float32", **extra: object):  # type: ignore[no-untyped-def]
    from charter.backends.transformers import TransformersBackend

    opts = BackendOptions(dtype=dtype, batch_size=8, extra={"slots": 3, **extra})
    return TransformersBackend(f"transformers//{folder}", str(folder), opts)


@pytest.fixture(scope="module")
def backend(qwen2_dir: Path):  # type: ignore[no-untyped-def]
    return _backend(qwen2_dir)


def _reqs(params: GenParams | list[GenParams]) -> list[GenRequest]:
    ps = params if isinstance(params, list) else [params] * len(QUESTIONS)
    return [GenRequest.of([SYSTEM, {"role": "user", "content": q}], p) for q, p in zip(QUESTIONS, ps, strict=True)]


def _prompts(b, reqs: list[GenRequest]) -> list[list[int]]:  # type: ignore[no-untyped-def]
    return [b.encode(b.render(r.messages)) for r in reqs]


def test_engine_runs_qwen2_but_not_its_sliding_window_layers(backend) -> None:
    from transformers import Qwen2Config

    from charter.backends.engine import supports

    assert backend.model.config.model_type == "qwen2" and backend.engine is not None
    sliding = Qwen2Config(num_hidden_layers=2, use_sliding_window=True, sliding_window=16, max_window_layers=1)
    assert "sliding-window" in (supports(sliding) or "")


def test_greedy_qwen2_engine_output_equals_plain_generate(backend) -> None:
    reqs = _reqs(GenParams(max_new_tokens=16))
    prompts = _prompts(backend, reqs)
    assert len({len(p) for p in prompts}) == len(prompts)  # different lengths
    backend.engine.clear_prefix()
    before = backend.engine.stats["prefix_tokens"]
    fast = backend.generate(reqs)
    assert backend.engine.stats["prefix_tokens"] - before > 20  # the shared system prompt ran once
    plain = backend.generate_plain(reqs, prompts)
    assert [g.text for g in fast] == [g.text for g in plain]
    assert [g.completion_tokens for g in fast] == [g.completion_tokens for g in plain]
    assert len({g.text for g in fast}) == len(reqs)


def test_engine_without_shared_prefix_or_c_kernel_gives_the_same_qwen2_tokens(backend, qwen2_dir: Path) -> None:
    prompts = _prompts(backend, _reqs(GenParams()))
    params = [GenParams(max_new_tokens=10)] * len(prompts)
    shared = backend.engine.run(prompts, params)
    assert backend.engine.run(prompts, params, share_prefix=False) == shared
    dense = _backend(qwen2_dir, kernel=False, linear="dense")
    assert dense.engine.kernel is None and dense.engine.linear == "dense"
    assert dense.engine.run(prompts, params) == shared


def test_qwen2_option_scores_equal_a_plain_forward_pass(backend) -> None:
    reqs = [
        ScoreRequest.of([SYSTEM, {"role": "user", "content": q + " (A) yes (B) no"}], ("A", "B"), "Answer: (")
        for q in QUESTIONS
    ]
    assert backend.score_engine is backend.engine
    fast = backend.score_options(reqs)
    texts = [backend.render(r.messages) + r.assistant_prefix for r in reqs]
    prepared = [backend.option_tokens(t, r.options) for t, r in zip(texts, reqs, strict=True)]
    plain = backend.score_options_plain(prepared, reqs)
    for f, p in zip(fast, plain, strict=True):
        for o in ("A", "B"):
            assert f.logprobs[o] == pytest.approx(p.logprobs[o], abs=1e-4)
    assert len({round(f.logprobs["A"], 4) for f in fast}) > 1  # the scores depend on the prompt


def test_qwen2_sampled_answer_depends_only_on_its_own_request(backend) -> None:
    reqs = _reqs([GenParams(max_new_tokens=12, temperature=0.9, top_p=0.95, seed=i) for i in range(6)])
    together = backend.generate(reqs)
    prefix = len(backend.engine._prefix_ids)
    assert [g.text for g in backend.generate(reqs[::-1])][::-1] == [g.text for g in together]
    # Other batch-mates, same shared prefix. (A one-prompt call puts the whole prompt in the "prefix": another
    # summation order, logits ~6e-6 apart, and on this random model's flat distributions — top token ~0.5% — that
    # reorders near-tied tokens inside the top-p nucleus, so it is not compared here.)
    some = [0, 3, 5]
    assert [g.text for g in backend.generate([reqs[i] for i in some])] == [together[i].text for i in some]
    assert len(backend.engine._prefix_ids) == prefix
    reseeded = backend.generate(
        _reqs([GenParams(max_new_tokens=12, temperature=0.9, top_p=0.95, seed=100 + i) for i in range(6)])
    )
    assert [g.text for g in reseeded] != [g.text for g in together]


def test_qwen2_engine_in_bfloat16_reaches_the_fp32_answer_as_often_as_plain_bf16_generate(qwen2_dir: Path,
                                                                                         bf16_closeness) -> None:
    engine, plain, n = bf16_closeness(lambda dtype: _backend(qwen2_dir, dtype=dtype))
    # measured: the engine reaches fp32's answer on e.g. 62 and 67 of 96 where plain bf16 does on 70 and 72
    assert engine >= plain - n // 10 and engine >= n // 2, (engine, plain, n)


def test_bf16_option_logits_are_recomputed_in_fp32(qwen2_dir: Path) -> None:
    """bf16 rounds the head's outputs to ~3 digits (on the 1.5B, P(A) moved in steps of ~0.03); the engine
    recomputes the named option tokens' logits in fp32 from the last hidden state and leaves the rest alone."""
    import torch

    bf = _backend(qwen2_dir, dtype="bfloat16")
    prompts = [bf.encode(bf.render([SYSTEM, {"role": "user", "content": q}])) for q in QUESTIONS]
    options = [[int(t) for t in torch.randint(0, len(bf.tokenizer), (8,), generator=torch.Generator().manual_seed(i))]
               for i in range(len(prompts))]
    rounded = bf.engine.score(prompts)
    exact = bf.engine.score(prompts, options)
    for i, ids in enumerate(options):
        r, e = rounded[i][ids], exact[i][ids]
        assert torch.equal(r, r.bfloat16().float())  # the head's own outputs are bf16 values
        assert not torch.equal(e, e.bfloat16().float())  # the recomputed ones carry fp32 digits
        # the same logits, only finer: apart by what bf16 rounding of the normed hidden state moves (~2^-7 of scale)
        assert float((e - r).abs().max()) <= 2**-6 * float(rounded[i].abs().max())
        others = torch.ones(rounded.shape[1], dtype=torch.bool)
        others[ids] = False
        assert torch.equal(exact[i][others], rounded[i][others])


def test_auto_scores_in_bf16_only_where_the_engine_reads_options_in_fp32(
    qwen2_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from charter.backends import transformers as tb

    monkeypatch.setattr(tb, "auto_dtype", lambda: "bfloat16")  # as on a CPU with native bf16
    fast = _backend(qwen2_dir, dtype="auto")
    assert fast.gen_dtype == fast.score_dtype == "bfloat16"
    assert fast.score_model is fast.model and fast.score_engine is fast.engine  # no second, fp32 copy
    plain = _backend(qwen2_dir, dtype="auto", engine=False)
    assert plain.gen_dtype == "bfloat16" and plain.score_dtype == "float32"


def test_bf16_weights_packed_for_onednn_give_the_same_tokens_as_dense(
    qwen2_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    from charter.backends import engine

    monkeypatch.setattr(engine, "native_bf16", lambda: False)  # emulated bf16 (AVX2): plain matmuls
    assert _backend(qwen2_dir, dtype="bfloat16").engine.linear == "dense"
    if not torch.backends.mkldnn.is_available():
        pytest.skip("this PyTorch has no oneDNN")
    flags = set(Path("/proc/cpuinfo").read_text().split()) if Path("/proc/cpuinfo").exists() else set()
    if not ({"avx512bw", "avx512vl", "avx512dq"} <= flags or "avx_ne_convert" in flags):
        pytest.skip("oneDNN packs bf16 weights only on CPUs with AVX512-BW/VL/DQ or AVX-NE-CONVERT (this one has "
                    "neither; the engine never packs bf16 here)")
    monkeypatch.setattr(engine, "native_bf16", lambda: True)  # packing is chosen on CPUs with native bf16 only
    packed = _backend(qwen2_dir, dtype="bfloat16")
    dense = _backend(qwen2_dir, dtype="bfloat16", linear="dense")
    assert packed.engine.linear == "onednn" and dense.engine.linear == "dense"
    prompts = _prompts(packed, _reqs(GenParams()))
    params = [GenParams(max_new_tokens=12)] * len(prompts)
    assert packed.engine.run(prompts, params) == dense.engine.run(prompts, params)
