"""Local Hugging Face models: the embedded SmolLM2-135M-Instruct or any model folder, on CPU.

``transformers/embedded``, an optional installed model (``transformers/qwen2.5-coder-1.5b``, see
:mod:`charter.models`) or ``transformers//path/to/folder``. Each conversation is rendered with the model's chat
template and decoded greedily at temperature 0, else sampled with temperature/top-p; the answer is cut at the first
stop string. Llama- and Qwen2-architecture models (the embedded one included) decode through charter's engine
(:mod:`charter.backends.engine`: shared-prefix KV cache, continuous batching, per-request seeds); other models, or
``extra={"engine": False}``, use ``model.generate`` on left-padded batches of requests sharing their sampling
parameters. Both paths sample each request from its own generator seeded by its ``GenParams.seed``
(:mod:`charter.backends.sampling`), so an answer does not depend on which requests shared its batch. Option
scoring reads next-token log-probabilities from one forward pass, in the generation dtype under "auto" when the
engine runs the model (its option logits are read in fp32), else in fp32 unless a dtype is forced.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from charter.backends.base import (
    BackendOptions,
    FinishReason,
    Generation,
    GenParams,
    GenRequest,
    Message,
    OptionScores,
    ScoreRequest,
)
from charter.backends.tokens import (
    OnText,
    TokenLogprob,
    hf_generate_logprobs,
    hf_generate_stream,
    hf_top_logprobs,
)
from charter.errors import BackendError

if TYPE_CHECKING:
    import torch

DTYPES = ("auto", "float32", "bfloat16")


ENGINE_SLOTS = 64
"""Fewest rows the engine decodes together by default: a decode step on this 2-core CPU gives ~110 tok/s at 32 rows
and ~180 at 64 (weights are read once per step), and the call cache sends chunks of 4 batches, so slots refill."""


def auto_dtype() -> str:
    """What ``dtype="auto"`` means for generation: bf16 only on CPUs with native bf16 matmuls (AVX512-BF16 or AMX).

    Without them (e.g. AVX2-only CPUs) PyTorch emulates bf16 and a matmul is 4-8x *slower* than fp32, measured on
    the 2-core AMD EPYC (AVX2) this was developed on.

    Scoring under "auto" runs in this dtype too when charter's engine runs the model (it recomputes the option
    tokens' logits in fp32 from the last hidden state, :meth:`charter.backends.engine.Engine.score`), else in fp32.
    Measured 2026-12-01 on a 2-core AVX512-BF16 EPYC (contended, 1 thread), 40 label-style A/B readings of HH pairs
    (``bench/feedback_model.py --part score``): Qwen2.5-Coder-1.5B bf16 vs fp32 picked the same option 39/40 (the
    other read 0.4977 vs 0.5003), max |dP(A)| 0.0066, mean 0.0023, at 3.1 vs 6.8 s per reading and 5.3 vs 13.4 GB
    peak RSS (no second, fp32 copy of the model); with bf16-rounded logits it was 35/40, max 0.025 (bf16 keeps ~3
    digits: P(A) moved in steps of ~0.03 and tied at exactly 0.5 in 9 of 40). The embedded 135M: 40/40, max 0.029.
    """
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return "float32"
    return "bfloat16" if {"avx512_bf16", "amx_bf16"} & set(flags) else "float32"


def resolve_folder(rest: str) -> Path:
    """The model folder named by the part of the spec after ``transformers/``."""
    if rest == "embedded":
        from charter.embedded import embedded_model_dir

        return embedded_model_dir()
    from charter.models import named_model_dir

    named = named_model_dir(rest)  # an optional installed model (charter.models.MODELS), e.g. qwen2.5-coder-1.5b
    if named is not None:
        return named
    folder = Path(rest).expanduser()
    if not folder.is_dir():
        raise BackendError(
            f"model folder {folder} does not exist",
            "check the path, or use 'transformers/embedded' for the built-in model",
        )
    if not (folder / "config.json").is_file():
        hint = (
            " (it looks like a LoRA adapter: point at the merged model folder instead)"
            if (folder / "adapter_config.json").is_file()
            else ""
        )
        raise BackendError(
            f"{folder} has no config.json{hint}",
            "point at a Hugging Face model folder (config.json + weights + tokenizer)",
        )
    return folder


def folder_fingerprint(folder: Path) -> str:
    """A short content hash of the model folder: weights, config, tokenizer and chat template (see
    :func:`charter.fingerprint.folder_digest`; digests are cached, so this is cheap after the first time)."""
    from charter.fingerprint import folder_digest

    return folder_digest(folder)[:16]


def _load_model(folder: Path, dtype: str) -> Any:
    """The causal LM in ``folder`` in eval mode, loaded quietly (no progress bar in the pipeline's output)."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch_dtype)
    finally:
        if shown:
            hf_logging.enable_progress_bar()
    return model.eval()


def model_identity(rest: str, options: BackendOptions) -> str:
    """The cache identity of a model folder in the generation dtype, computed without loading the weights: its
    content (weights, tokenizer, chat template), not its path, so a retrained model in the same folder is a new
    model and a copied run folder keeps its cache."""
    folder = resolve_folder(rest)
    gen_dtype = auto_dtype() if options.dtype == "auto" else options.dtype
    return f"hf:{folder_fingerprint(folder)}:{gen_dtype}"


class TransformersBackend:
    """A local causal LM behind the :class:`charter.backends.base.Backend` Protocol.

    Attributes:
        spec: The spec string that selected it.
        model_id: Folder, generation dtype and a fingerprint of the weights (used in cache keys).
        tokenizer: The Hugging Face tokenizer (left padding).
        model: The model used for generation (in ``gen_dtype``).
        context_length: Longest prompt + answer in tokens.
    """

    def __init__(self, spec: str, rest: str, options: BackendOptions | None = None) -> None:
        options = options or BackendOptions()
        if options.dtype not in DTYPES:
            raise BackendError(f"unknown dtype {options.dtype!r}", f"use one of: {', '.join(DTYPES)}")
        import torch
        from transformers import AutoTokenizer

        if options.threads > 0:
            torch.set_num_threads(options.threads)
        self.spec = spec
        self.options = options
        self.folder = resolve_folder(rest)
        self.gen_dtype = auto_dtype() if options.dtype == "auto" else options.dtype
        self.score_dtype = "float32" if options.dtype == "auto" else options.dtype
        self.model_id = model_identity(rest, options)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(self.folder)
            self.model = _load_model(self.folder, self.gen_dtype)
        except (OSError, ValueError) as e:
            raise BackendError(
                f"cannot load the model in {self.folder}: {str(e).splitlines()[0]}",
                "check the folder holds a complete Hugging Face model and tokenizer",
            ) from None
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.pad_id: int = int(self.tokenizer.pad_token_id)
        self.eos_ids = self._eos_ids()
        self.context_length = int(getattr(self.model.config, "max_position_embeddings", 2048) or 2048)
        self.engine = self._make_engine(options.extra.get("engine", True))
        if options.dtype == "auto" and self.engine is not None:
            self.score_dtype = self.gen_dtype  # see auto_dtype(): the engine reads option logits in fp32
        same = self.score_dtype == self.gen_dtype
        self._score_model: Any = self.model if same else None
        self._score_engine: Any = self.engine if same else None
        self._lock = threading.Lock()  # the engine keeps per-call state (its cached prefix): one call at a time

    def _make_engine(self, wanted: object) -> Any:
        """The fast engine (charter.backends.engine) unless ``extra["engine"]`` is false or the model is not
        one it runs (Llama, Qwen2; others use plain ``generate``); ``extra["slots"]`` sets its batch (default:
        ``batch_size``, at least :data:`ENGINE_SLOTS`) and ``extra["cache_gb"]`` caps its KV cache (default 2);
        ``extra["kernel"]: false`` skips its C attention kernel;
        ``extra["linear"]`` picks how it multiplies (:data:`charter.backends.engine.LINEAR_MODES`)."""
        from charter.backends.engine import Engine, supports

        if wanted in (False, "false", "off", "0", 0):
            return None
        if supports(self.model.config) is not None:
            return None
        slots = int(self.options.extra.get("slots", max(ENGINE_SLOTS, self.options.batch_size)))
        cache_gb = float(self.options.extra.get("cache_gb", 2.0))
        kernel = self.options.extra.get("kernel", True) not in (False, "false", "off", "0", 0)
        linear = str(self.options.extra.get("linear", "auto"))
        try:
            return Engine(
                self.model, self.eos_ids, slots, self._decode_ids, cache_gb=cache_gb, kernel=kernel, linear=linear
            )
        except ValueError as e:
            raise BackendError(str(e), "set extra.linear to auto, dense or onednn") from None

    def _decode_ids(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=True))

    # ----------------------------------------------------------------- prompts
    def _eos_ids(self) -> list[int]:
        ids: set[int] = set()
        for src in (self.model.generation_config.eos_token_id, self.tokenizer.eos_token_id):
            if isinstance(src, int):
                ids.add(src)
            elif src:
                ids.update(int(i) for i in src)
        return sorted(ids)

    def render(self, messages: Sequence[Message]) -> str:
        """The conversation rendered with the chat template, ending with an open assistant turn."""
        if getattr(self.tokenizer, "chat_template", None):
            text = self.tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
            return str(text)
        # A base model without a chat template: a plain transcript.
        turns = "".join(f"{m['role'].capitalize()}: {m['content']}\n\n" for m in messages)
        return f"{turns}Assistant:"

    def encode(self, text: str) -> list[int]:
        """Token ids of already-rendered text (the template carries its own special tokens)."""
        return list(self.tokenizer(text, add_special_tokens=False).input_ids)

    def _check_length(self, n_prompt: int, max_new_tokens: int) -> None:
        if max_new_tokens < 1:
            raise BackendError(f"max_new_tokens is {max_new_tokens}", "ask for at least 1 new token")
        if n_prompt + max_new_tokens > self.context_length:
            raise BackendError(
                f"a prompt has {n_prompt} tokens + max_new_tokens {max_new_tokens} > the model's context of "
                f"{self.context_length} tokens",
                "shorten the prompt (fewer few-shot examples, truncate inputs) or lower max_new_tokens",
            )

    def left_pad(self, rows: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(input_ids, attention_mask)`` of ``rows`` padded on the left to the longest."""
        import torch

        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            if r:
                ids[i, width - len(r) :] = torch.tensor(list(r), dtype=torch.long)
                mask[i, width - len(r) :] = 1
        return ids, mask

    # -------------------------------------------------------------- generation
    def generate(self, requests: Sequence[GenRequest]) -> list[Generation]:
        """Complete every request (see the module docstring); results in request order."""
        prompts = [self.encode(self.render(r.messages)) for r in requests]
        for ids, r in zip(prompts, requests, strict=True):
            self._check_length(len(ids), r.params.max_new_tokens)
        if self.engine is not None:
            with self._lock:
                news = self.engine.run(prompts, [r.params for r in requests])
            return [self.finish(t, len(ids), r.params) for t, ids, r in zip(news, prompts, requests, strict=True)]
        return self.generate_plain(requests, prompts)

    def generate_plain(self, requests: Sequence[GenRequest], prompts: list[list[int]]) -> list[Generation]:
        """``model.generate`` on batches of requests that share sampling parameters (the reference path)."""
        groups: dict[tuple[Any, ...], list[int]] = {}
        for i, r in enumerate(requests):
            p = r.params
            groups.setdefault((p.max_new_tokens, p.temperature, p.top_p, p.stop), []).append(i)
        out: list[Generation | None] = [None] * len(requests)
        bs = max(1, self.options.batch_size)
        for idx in groups.values():
            idx = sorted(idx, key=lambda i: len(prompts[i]))
            for start in range(0, len(idx), bs):
                chunk = idx[start : start + bs]
                params = [requests[i].params for i in chunk]
                gens = self._generate_batch([prompts[i] for i in chunk], params)
                for i, g in zip(chunk, gens, strict=True):
                    out[i] = g
        return [g for g in out if g is not None]

    def _generate_batch(self, prompts: list[list[int]], params: list[GenParams]) -> list[Generation]:
        import torch
        from transformers import GenerationConfig, LogitsProcessorList

        from charter.backends.sampling import SeededSampler

        p = params[0]
        ids, mask = self.left_pad(prompts)
        # Greedy decoding for generate; a sampled row is drawn by SeededSampler from its own request's generator,
        # so it does not depend on its batch-mates (one RNG per batch would).
        cfg = GenerationConfig(
            max_new_tokens=p.max_new_tokens,
            do_sample=False,
            pad_token_id=self.pad_id,
            eos_token_id=self.eos_ids,
            temperature=None,
            top_p=None,
            top_k=None,
            stop_strings=list(p.stop) or None,
        )
        sampler = LogitsProcessorList([SeededSampler(params)]) if p.temperature > 0 else None
        with torch.inference_mode():
            seqs = self.model.generate(
                input_ids=ids, attention_mask=mask, generation_config=cfg, logits_processor=sampler,
                tokenizer=self.tokenizer if p.stop else None,
            )
        new = seqs[:, ids.shape[1] :].tolist()
        return [self.finish(row, len(prompt), p) for row, prompt in zip(new, prompts, strict=True)]

    def finish(self, tokens: Sequence[int], n_prompt: int, p: GenParams) -> Generation:
        """Turn generated token ids into a :class:`Generation`: cut at end-of-turn and stop strings."""
        n = len(tokens)
        ended = False
        for j, t in enumerate(tokens):
            if t in self.eos_ids or t == self.pad_id:
                n, ended = j, True
                break
        text = str(self.tokenizer.decode(list(tokens[:n]), skip_special_tokens=True))
        cut = min((k for k in (text.find(s) for s in p.stop if s) if k >= 0), default=-1)
        if cut >= 0:
            text, ended = text[:cut], True
        reason: FinishReason = "stop" if ended or n < p.max_new_tokens else "length"
        return Generation(text.strip(), finish_reason=reason, prompt_tokens=n_prompt, completion_tokens=n)

    # ----------------------------------------------------------------- scoring
    @property
    def score_model(self) -> Any:
        """The model used for option scoring (see :func:`auto_dtype`), loaded on first use."""
        if self._score_model is None:
            self._score_model = _load_model(self.folder, self.score_dtype)
        return self._score_model

    def option_tokens(self, text: str, options: Sequence[str]) -> tuple[list[int], list[int]]:
        """The context ids and each option's first token id right after ``text``
        (:func:`charter.backends.option_tokens.option_first_tokens`)."""
        from charter.backends.option_tokens import option_first_tokens

        return option_first_tokens(self.encode, text, options)

    @property
    def score_engine(self) -> Any:
        """The engine that scores (shared-prefix prefill, last position only): the generation engine, or one on the
        scoring model when a forced dtype differs from generation's; None for models the engine does not run."""
        if self._score_engine is None and self.engine is not None:
            from charter.backends.engine import Engine

            self._score_engine = Engine(self.score_model, self.eos_ids, 1, kernel=False)
        return self._score_engine

    def score_options(self, requests: Sequence[ScoreRequest]) -> list[OptionScores]:
        """Log-probability of each option's first token right after the rendered prompt + assistant prefix."""
        import torch

        texts = [self.render(r.messages) + r.assistant_prefix for r in requests]
        prepared = [self.option_tokens(t, r.options) for t, r in zip(texts, requests, strict=True)]
        for ctx, _ in prepared:
            self._check_length(len(ctx), 1)
        if self.score_engine is not None:
            with self._lock:
                logits = self.score_engine.score([c for c, _ in prepared], [first for _, first in prepared])
            return [
                OptionScores(logprobs={o: float(row[t]) for o, t in zip(r.options, first, strict=True)})
                for row, (_, first), r in zip(torch.log_softmax(logits, -1), prepared, requests, strict=True)
            ]
        return self.score_options_plain(prepared, requests)

    def score_options_plain(
        self, prepared: Sequence[tuple[list[int], list[int]]], requests: Sequence[ScoreRequest]
    ) -> list[OptionScores]:
        """:meth:`score_options` by a padded forward pass of the Hugging Face model (the reference path)."""
        import torch

        out: list[OptionScores] = []
        bs = max(1, self.options.batch_size)
        for start in range(0, len(prepared), bs):
            chunk = prepared[start : start + bs]
            ids, mask = self.left_pad([c for c, _ in chunk])
            pos = (mask.cumsum(-1) - 1).clamp(min=0)
            with torch.inference_mode():
                logits = self.score_model(input_ids=ids, attention_mask=mask, position_ids=pos).logits[:, -1]
            logp = torch.log_softmax(logits.float(), dim=-1)
            for row, (_, first), r in zip(logp, chunk, requests[start : start + bs], strict=True):
                lp = {o: float(row[t]) for o, t in zip(r.options, first, strict=True)}
                out.append(OptionScores(logprobs=lp))
        return out

    # ---------------------------------------- token-level outputs (charter.backends.tokens)
    def generate_stream(self, requests: Sequence[GenRequest], on_text: OnText) -> list[Generation]:
        """:meth:`generate`, calling ``on_text(i, delta)`` as each answer grows (see charter.backends.tokens)."""
        return hf_generate_stream(self, requests, on_text)

    def generate_logprobs(self, requests: Sequence[GenRequest], k: int) -> list[tuple[Generation, list[TokenLogprob]]]:
        """:meth:`generate` plus every answer token's log-probability and the top ``k`` alternatives."""
        return hf_generate_logprobs(self, requests, k)

    def top_logprobs(self, requests: Sequence[ScoreRequest], k: int) -> list[list[tuple[str, float]]]:
        """The ``k`` most likely next tokens after each prompt + assistant prefix, best first."""
        return hf_top_logprobs(self, requests, k)

