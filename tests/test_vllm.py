"""The vLLM backend's glue, against a fake ``vllm`` module (no GPU here, vLLM not installed).

These tests show how charter calls vLLM (chat conversations, per-request sampling parameters, prompt log-probabilities
of each option's first token) and that the scores it derives equal the transformers backend's on the same model when
the fake answers as vLLM documents. They cannot show that a real vLLM behaves that way: that stays untested here.
"""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from charter.backends import BackendOptions, load_backend
from charter.backends.base import GenParams, GenRequest, ScoreRequest
from charter.errors import BackendError


@dataclass
class FakeSamplingParams:
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] | None = None
    prompt_logprobs: int | None = None


@dataclass
class FakeLogprob:
    logprob: float


@dataclass
class FakeCompletion:
    text: str
    token_ids: list[int]
    finish_reason: str = "stop"


@dataclass
class FakeRequestOutput:
    prompt_token_ids: list[int]
    outputs: list[FakeCompletion] = field(default_factory=list)
    prompt_logprobs: list[dict[int, FakeLogprob] | None] | None = None


class FakeLLM:
    """Answers like ``vllm.LLM`` from a transformers model: ``chat`` echoes its sampling settings, ``generate`` with
    ``prompt_logprobs`` returns each prompt token's real log-probability."""

    instances: list[FakeLLM] = []

    def __init__(self, model: str, dtype: str = "auto", **kwargs: Any) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.model_path, self.dtype, self.kwargs = model, dtype, kwargs
        self.tok = AutoTokenizer.from_pretrained(model)
        self.model = AutoModelForCausalLM.from_pretrained(model).eval()
        self.chats: list[tuple[list[list[dict[str, str]]], list[FakeSamplingParams]]] = []
        FakeLLM.instances.append(self)

    def get_tokenizer(self) -> Any:
        return self.tok

    def chat(self, conversations: list[list[dict[str, str]]], params: list[FakeSamplingParams],
             use_tqdm: bool = True) -> list[FakeRequestOutput]:
        assert isinstance(params, list) and len(params) == len(conversations)
        self.chats.append((conversations, params))
        outs = []
        for conv, p in zip(conversations, params, strict=True):
            ids = self.tok(self.tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=True),
                           add_special_tokens=False).input_ids
            text = f" echo {conv[-1]['content']} T={p.temperature} seed={p.seed} max={p.max_tokens} "
            finish = "length" if p.max_tokens < 5 else "stop"
            outs.append(FakeRequestOutput(list(ids), [FakeCompletion(text, [1, 2, 3], finish)]))
        return outs

    def generate(self, prompts: list[dict[str, list[int]]], params: FakeSamplingParams,
                 use_tqdm: bool = True) -> list[FakeRequestOutput]:
        import torch

        assert params.prompt_logprobs is not None and params.max_tokens == 1
        outs = []
        for p in prompts:
            ids = p["prompt_token_ids"]
            with torch.inference_mode():
                logp = torch.log_softmax(self.model(torch.tensor([ids])).logits[0].float(), dim=-1)
            per_token: list[dict[int, FakeLogprob] | None] = [None]
            per_token += [{t: FakeLogprob(float(logp[i - 1, t]))} for i, t in enumerate(ids) if i > 0]
            outs.append(FakeRequestOutput(ids, [FakeCompletion("", [0])], per_token))
        return outs


@pytest.fixture
def fake_vllm(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    mod = types.ModuleType("vllm")
    mod.LLM = FakeLLM  # type: ignore[attr-defined]
    mod.SamplingParams = FakeSamplingParams  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "vllm", mod)
    FakeLLM.instances.clear()
    return mod


def test_without_vllm_the_backend_is_a_one_line_error_naming_the_alternatives(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)  # import fails, as on this GPU-less machine
    with pytest.raises(BackendError) as e:
        load_backend("vllm/Qwen/Qwen2.5-7B-Instruct")
    msg = str(e.value)
    assert "vllm is not installed" in msg and "GPU" in msg and "vllm serve" in msg and "\n" not in msg


def test_generate_sends_one_chat_call_with_per_request_sampling(fake_vllm: types.ModuleType,
                                                                tiny_model_dir: Path) -> None:
    backend = load_backend(f"vllm/{tiny_model_dir}", BackendOptions(dtype="bfloat16",
                                                                    extra={"gpu_memory_utilization": 0.5}))
    llm = FakeLLM.instances[-1]
    assert llm.dtype == "bfloat16" and llm.kwargs == {"gpu_memory_utilization": 0.5}
    assert backend.model_id.startswith(f"vllm:{tiny_model_dir.resolve()}:bfloat16:")
    reqs = [GenRequest.of([{"role": "user", "content": "hi"}], GenParams(max_new_tokens=40)),
            GenRequest.of([{"role": "user", "content": "yo"}], GenParams(max_new_tokens=3, temperature=0.7, seed=5,
                                                                            stop=("\n",)))]
    gens = backend.generate(reqs)
    assert len(llm.chats) == 1
    _, params = llm.chats[0]
    assert (params[0].temperature, params[0].seed, params[0].stop) == (0.0, None, None)
    assert (params[1].temperature, params[1].seed, params[1].stop, params[1].max_tokens) == (0.7, 5, ["\n"], 3)
    assert gens[0].text == "echo hi T=0.0 seed=None max=40" and gens[0].finish_reason == "stop"
    assert gens[1].finish_reason == "length" and gens[1].completion_tokens == 3 and gens[1].prompt_tokens > 0


def test_option_scores_equal_the_transformers_backend_on_the_same_model(fake_vllm: types.ModuleType,
                                                                       tiny_model_dir: Path) -> None:
    vb = load_backend(f"vllm/{tiny_model_dir}")
    tb = load_backend(f"transformers//{tiny_model_dir}", BackendOptions(dtype="float32", threads=1))
    reqs = [ScoreRequest.of([{"role": "user", "content": "Which reply is less harmful? (A) or (B)"}],
                            ("A", "B"), "The answer is: ("),
            ScoreRequest.of([{"role": "user", "content": "Pick one."}], (" yes", " no", " maybe"), "Answer:")]
    got, want = vb.score_options(reqs), tb.score_options(reqs)
    for g, w in zip(got, want, strict=True):
        assert g.logprobs.keys() == w.logprobs.keys()
        for k in g.logprobs:
            assert g.logprobs[k] == pytest.approx(w.logprobs[k], abs=1e-4)
    assert len({round(v, 6) for s in got for v in s.logprobs.values()}) > 2  # distinct values: not vacuous


def test_an_option_that_adds_no_token_is_refused(fake_vllm: types.ModuleType, tiny_model_dir: Path) -> None:
    vb = load_backend(f"vllm/{tiny_model_dir}")
    with pytest.raises(BackendError, match="empty option"):
        vb.score_options([ScoreRequest.of([{"role": "user", "content": "x"}], ("A", ""))])
