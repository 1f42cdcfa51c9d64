"""The one small Protocol every model backend implements.

A backend does two things, always on a batch:

* ``generate``: chat completions for a list of :class:`GenRequest`;
* ``score_options``: the log-probabilities of the first token of each option (e.g. ``"A"``/``"B"``) right after a
  chat prompt and an assistant prefix, for multiple-choice feedback labels.

Backends are selected by a ``"provider/model"`` string (see :func:`charter.backends.load_backend`). They never cache:
:class:`charter.store.CachedBackend` wraps any backend and persists every result as soon as it completes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from charter.errors import BackendError

Message = dict[str, str]
"""One chat turn: ``{"role": "system" | "user" | "assistant", "content": str}``."""

FinishReason = Literal["stop", "length", "error"]


@dataclass(frozen=True)
class GenParams:
    """Sampling parameters of one generation request.

    Attributes:
        max_new_tokens: Upper bound on generated tokens; hitting it gives ``finish_reason="length"``.
        temperature: 0 means greedy decoding.
        top_p: Nucleus sampling mass (ignored when greedy).
        seed: Seed of this request; part of the cache key, so the same seed gives the same cached answer.
        stop: Strings that end the answer early (not included in the text).
    """

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    stop: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, object]:
        """Plain-JSON form, used in cache keys and records."""
        d = asdict(self)
        d["stop"] = list(self.stop)
        return d


@dataclass(frozen=True)
class GenRequest:
    """One chat completion to make: the conversation so far and how to sample the next assistant turn."""

    messages: tuple[Message, ...]
    params: GenParams = field(default_factory=GenParams)

    @staticmethod
    def of(messages: Sequence[Message], params: GenParams | None = None) -> GenRequest:
        """Build a request from any sequence of message dicts (copied, so later edits do not leak in)."""
        return GenRequest(tuple(dict(m) for m in messages), params or GenParams())


@dataclass
class Generation:
    """The result of one :class:`GenRequest`.

    Attributes:
        text: The assistant's answer (stop strings and end-of-turn tokens removed).
        finish_reason: ``"stop"`` (ended by itself), ``"length"`` (hit max_new_tokens) or ``"error"``.
        prompt_tokens: Tokens in the rendered prompt, where the backend knows.
        completion_tokens: Tokens generated.
        error: Why the request failed, when ``finish_reason == "error"``.
    """

    text: str
    finish_reason: FinishReason = "stop"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None


@dataclass(frozen=True)
class ScoreRequest:
    """A multiple-choice question whose answer is read from next-token log-probabilities.

    The backend renders ``messages`` with the chat template, opens the assistant turn, appends
    ``assistant_prefix`` (e.g. ``"The answer is: ("``) and reads the log-probability of the first token of each
    option string as the very next token.
    """

    messages: tuple[Message, ...]
    options: tuple[str, ...] = ("A", "B")
    assistant_prefix: str = ""

    @staticmethod
    def of(
        messages: Sequence[Message], options: Sequence[str] = ("A", "B"), assistant_prefix: str = ""
    ) -> ScoreRequest:
        """Build a request from any sequence of message dicts."""
        return ScoreRequest(tuple(dict(m) for m in messages), tuple(options), assistant_prefix)


@dataclass
class OptionScores:
    """Log-probabilities of each option's first token.

    Attributes:
        logprobs: Option -> log-probability of its first token.
        error: Why they are missing.
        floored: True when at least one option's log-probability is not a reading but a floor (an OpenAI-compatible
            server lists only its top 20 next tokens; an option outside them gets ``min(top) - 1``). Readers treat
            such scores as unusable (status ``floored``), never as a confident answer.
    """

    logprobs: dict[str, float]
    error: str | None = None
    floored: bool = False

    def probs(self) -> dict[str, float]:
        """Probabilities normalised over the options only (they sum to 1)."""
        if not self.logprobs:
            return {}
        top = max(self.logprobs.values())
        exp = {k: math.exp(v - top) for k, v in self.logprobs.items()}
        total = sum(exp.values())
        return {k: v / total for k, v in exp.items()}


FLOORED = ("floored: an option was not among the server's top next tokens, so its log-probability is a floor, "
           "not a reading")
"""The status readers give :class:`OptionScores` marked ``floored`` (the reading is unusable)."""


@runtime_checkable
class Backend(Protocol):
    """What every backend implements. Results come back in request order."""

    spec: str
    """The string that selected it, e.g. ``"transformers/embedded"``."""

    model_id: str
    """A stable identity of the weights (used in cache keys and records), e.g. a folder path plus its hash."""

    def generate(self, requests: Sequence[GenRequest]) -> list[Generation]:
        """Complete every request; failures come back as ``Generation(finish_reason="error")`` or raise
        :class:`charter.errors.BackendError` when nothing can be done (server unreachable, prompt too long)."""
        ...

    def score_options(self, requests: Sequence[ScoreRequest]) -> list[OptionScores]:
        """Read option log-probabilities; raise :class:`charter.errors.BackendError` when the backend cannot."""
        ...


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
