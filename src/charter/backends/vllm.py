"""vLLM in-process, for users with CUDA GPUs: ``vllm/MODEL`` (a Hugging Face folder or hub name already on disk).

UNTESTED HERE: charter's machine has no GPU and vLLM is not installed on it, so this backend has never run against a
real vLLM. Its tests replace the ``vllm`` module with a fake that checks how charter calls it (chat template, sampling
parameters, seeds, prompt log-probabilities) — they do not show that vLLM itself behaves as assumed. The tested way
to use vLLM is its server: ``vllm serve MODEL`` and the ``openai`` backend (``openai/MODEL@http://HOST:8000/v1``).

* ``generate``: one ``LLM.chat`` call for the whole batch (vLLM batches continuously), one ``SamplingParams`` per
  request (greedy at temperature 0, else seeded per request), stop strings cut by vLLM.
* ``score_options``: for each option, the conversation rendered with the chat template plus the assistant prefix plus
  the option's first token, sent with ``prompt_logprobs``; the log-probability of that last prompt token is the
  option's score (exact, not a top-k lookup). vLLM's prefix cache makes the repeated context cheap.

``options.extra`` is passed to ``vllm.LLM`` unchanged (e.g. ``tensor_parallel_size``, ``gpu_memory_utilization``,
``max_model_len``); ``dtype`` maps to vLLM's ``dtype``. See ``examples/vllm.yaml``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from charter.backends.base import (
    BackendOptions,
    FinishReason,
    Generation,
    GenParams,
    GenRequest,
    OptionScores,
    ScoreRequest,
)
from charter.backends.option_tokens import option_first_tokens
from charter.errors import BackendError

NOT_AVAILABLE_FIX = ("pip install vllm on a machine with a CUDA GPU, or run `vllm serve MODEL` there and use "
                     "'openai/MODEL@http://HOST:8000/v1'")


def _import_vllm() -> Any:
    try:
        import vllm
    except ImportError as e:
        raise BackendError(f"vllm is not installed or cannot be imported here ({e}); it needs a GPU",
                           NOT_AVAILABLE_FIX) from None
    return vllm


class VLLMBackend:
    """A model served by vLLM inside this process (GPU). Untested here — see the module docstring.

    Attributes:
        spec: The spec string that selected it.
        model_id: ``vllm:`` + the model (folder or name) + dtype (+ a fingerprint of a local folder's weights).
        llm: The ``vllm.LLM`` engine.
    """

    def __init__(self, spec: str, rest: str, options: BackendOptions | None = None) -> None:
        options = options or BackendOptions()
        vllm = _import_vllm()
        self.spec = spec
        self.options = options
        self._sampling_params = vllm.SamplingParams
        model = rest
        fingerprint = ""
        if rest == "embedded":
            from charter.embedded import embedded_model_dir

            model = str(embedded_model_dir())
        if Path(model).expanduser().is_dir():
            from charter.backends.transformers import folder_fingerprint

            folder = Path(model).expanduser().resolve()
            model, fingerprint = str(folder), f":{folder_fingerprint(folder)}"
        self.model_id = f"vllm:{model}:{options.dtype}{fingerprint}"
        try:
            self.llm = vllm.LLM(model=model, dtype=options.dtype, **options.extra)
        except Exception as e:  # CUDA missing, out of memory, bad model: vLLM raises many kinds
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise BackendError(f"vLLM could not load {model}: {first}", NOT_AVAILABLE_FIX) from None
        self.tokenizer = self.llm.get_tokenizer()

    def _sampling(self, p: GenParams) -> Any:
        greedy = p.temperature <= 0
        return self._sampling_params(
            max_tokens=p.max_new_tokens,
            temperature=0.0 if greedy else p.temperature,
            top_p=1.0 if greedy else p.top_p,
            seed=None if greedy else p.seed,
            stop=list(p.stop) or None,
        )

    def generate(self, requests: Sequence[GenRequest]) -> list[Generation]:
        """Complete every request in one ``LLM.chat`` call; results in request order."""
        if not requests:
            return []
        outputs = self.llm.chat([list(r.messages) for r in requests], [self._sampling(r.params) for r in requests],
                                use_tqdm=False)
        results = []
        for out in outputs:
            best = out.outputs[0]
            reason: FinishReason = "stop" if best.finish_reason == "stop" else (
                "length" if best.finish_reason == "length" else "error")
            results.append(Generation(
                text=best.text.strip(), finish_reason=reason, prompt_tokens=len(out.prompt_token_ids or []),
                completion_tokens=len(best.token_ids), error=None if reason != "error" else f"vLLM: {reason}",
            ))
        return results

    def _render(self, r: ScoreRequest) -> str:
        return str(self.tokenizer.apply_chat_template(list(r.messages), tokenize=False, add_generation_prompt=True)
                   ) + r.assistant_prefix

    def score_options(self, requests: Sequence[ScoreRequest]) -> list[OptionScores]:
        """Exact first-token log-probabilities of each option, read from ``prompt_logprobs``."""
        def encode(text: str) -> list[int]:
            return list(self.tokenizer.encode(text, add_special_tokens=False))

        prompts, owners = [], []
        for n, r in enumerate(requests):
            context, firsts = option_first_tokens(encode, self._render(r), r.options)
            for option, token in zip(r.options, firsts, strict=True):
                prompts.append({"prompt_token_ids": [*context, token]})
                owners.append((n, option, token))
        if not prompts:
            return []
        params = self._sampling_params(max_tokens=1, temperature=0.0, prompt_logprobs=1)
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        scores: list[dict[str, float]] = [{} for _ in requests]
        for (n, option, token), out in zip(owners, outputs, strict=True):
            scores[n][option] = float(out.prompt_logprobs[-1][token].logprob)
        return [OptionScores(logprobs=s) for s in scores]
