"""Token-level outputs a backend may offer beyond the Protocol: streamed text, per-token log-probabilities, and the
top next tokens. ``charter serve`` and ``charter guard`` use them when a backend has them.

* :class:`StreamingBackend` — ``generate_stream(requests, on_text)`` calls ``on_text(i, delta)`` as request ``i``'s
  answer grows; the deltas of a request always join to exactly its final :attr:`Generation.text`.
* :class:`LogprobsBackend` — ``generate_logprobs(requests, k)`` returns each answer with its tokens'
  log-probabilities and the ``k`` most likely alternatives at every position.
* :class:`TopLogprobsBackend` — ``top_logprobs(requests, k)``: the ``k`` most likely next tokens after a prompt.

For local Hugging Face models (:class:`charter.backends.transformers.TransformersBackend`) the functions below do
the work: streaming taps the engine's per-token callback (other models stream the whole answer at once when it is
done); log-probabilities are read in one teacher-forced pass of the scoring model (fp32 under ``dtype: auto``)
over the prompt and the tokens that were generated, so they are the model's own distribution at each position,
before temperature and top-p.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from charter.backends.base import Generation, GenParams, GenRequest, Message, ScoreRequest

OnText = Callable[[int, str], None]
"""``on_text(request index, text delta)``."""


@dataclass
class TokenLogprob:
    """One generated token: its text, its log-probability and the most likely alternatives at its position.

    Attributes:
        token: The token's text as it adds to the answer (the pieces of an answer join to its text).
        logprob: Natural-log probability the model gave this token.
        top: The ``k`` most likely tokens at this position ``(text, logprob)``, best first.
    """

    token: str
    logprob: float
    top: list[tuple[str, float]] = field(default_factory=list)


@runtime_checkable
class StreamingBackend(Protocol):
    """A backend that reports each answer's text as it is generated."""

    def generate_stream(self, requests: Sequence[GenRequest], on_text: OnText) -> list[Generation]: ...


@runtime_checkable
class LogprobsBackend(Protocol):
    """A backend that returns the log-probability of every generated token (and the top ``k`` alternatives)."""

    def generate_logprobs(self, requests: Sequence[GenRequest],
                          k: int) -> list[tuple[Generation, list[TokenLogprob]]]: ...


@runtime_checkable
class TopLogprobsBackend(Protocol):
    """A backend that can list the ``k`` most likely next tokens ``(text, logprob)``, best first."""

    def top_logprobs(self, requests: Sequence[ScoreRequest], k: int) -> list[list[tuple[str, float]]]: ...


class TextStream:
    """Turns a growing token list into text deltas that are always a prefix of the final answer.

    The final answer (:meth:`TransformersBackend.finish`) is the decoded text cut at the first stop string and
    stripped. So a delta is sent only up to the last non-space character, never within ``len(longest stop) - 1``
    characters of the end (a stop string may be forming there), and never an incomplete UTF-8 character.
    """

    def __init__(self, decode: Callable[[list[int]], str], params: GenParams, end_ids: set[int]) -> None:
        self.decode = decode
        self.stops = [s for s in params.stop if s]
        self.hold = max((len(s) for s in self.stops), default=1) - 1
        self.end_ids = end_ids
        self.tokens: list[int] = []
        self.sent = ""
        self.ended = False

    def push(self, token: int) -> str:
        """Add a token; return the text that can now be sent ('' when none)."""
        if self.ended:
            return ""
        if token in self.end_ids:
            self.ended = True
            return ""
        self.tokens.append(token)
        text = self.decode(self.tokens).lstrip()
        cut = min((k for k in (text.find(s) for s in self.stops) if k >= 0), default=-1)
        if cut >= 0:
            self.ended = True
            safe = text[:cut]
        else:
            safe = text[: max(0, len(text) - self.hold)]
        safe = safe.rstrip().rstrip("\ufffd").rstrip()
        if len(safe) <= len(self.sent) or not safe.startswith(self.sent):
            return ""
        delta, self.sent = safe[len(self.sent):], safe
        return delta

    def rest(self, final: str) -> str:
        """What remains to send once the final text is known (the stream so far is a prefix of it)."""
        return final[len(self.sent):] if final.startswith(self.sent) else ""


# --- local Hugging Face models ---------------------------------------------------------------------------------


class TransformersBackend(Protocol):
    """What the functions below use of :class:`charter.backends.transformers.TransformersBackend` (named here, not
    imported: that module imports this one)."""

    engine: Any
    eos_ids: list[int]
    pad_id: int
    _lock: Any

    @property
    def score_model(self) -> Any: ...

    def render(self, messages: Sequence[Message]) -> str: ...

    def encode(self, text: str) -> list[int]: ...

    def _decode_ids(self, ids: list[int]) -> str: ...

    def _check_length(self, n_prompt: int, max_new_tokens: int) -> None: ...

    def finish(self, tokens: Sequence[int], n_prompt: int, p: GenParams) -> Generation: ...

    def generate(self, requests: Sequence[GenRequest]) -> list[Generation]: ...


def hf_generate_stream(backend: TransformersBackend, requests: Sequence[GenRequest],
                       on_text: OnText) -> list[Generation]:
    """:meth:`TransformersBackend.generate` with ``on_text`` called per token (engine) or once per answer."""
    if backend.engine is None:
        gens = backend.generate(requests)
        for i, g in enumerate(gens):
            if g.text:
                on_text(i, g.text)
        return gens
    prompts = [backend.encode(backend.render(r.messages)) for r in requests]
    for ids, r in zip(prompts, requests, strict=True):
        backend._check_length(len(ids), r.params.max_new_tokens)
    ends = set(backend.eos_ids) | {backend.pad_id}
    streams = [TextStream(backend._decode_ids, r.params, ends) for r in requests]

    def tap(i: int, tok: int) -> None:
        delta = streams[i].push(tok)
        if delta:
            on_text(i, delta)

    with backend._lock:
        news = backend.engine.run(prompts, [r.params for r in requests], on_token=tap)
    gens = [backend.finish(t, len(ids), r.params) for t, ids, r in zip(news, prompts, requests, strict=True)]
    for i, (g, s) in enumerate(zip(gens, streams, strict=True)):
        if rest := s.rest(g.text):
            on_text(i, rest)
    return gens


def _answer_tokens(backend: TransformersBackend, tokens: Sequence[int], params: GenParams) -> list[int]:
    """The generated tokens that make up the answer: up to the end-of-turn token and the first stop string."""
    ends = set(backend.eos_ids) | {backend.pad_id}
    kept: list[int] = []
    for t in tokens:
        if t in ends:
            break
        kept.append(t)
    stops = [s for s in params.stop if s]
    if stops:
        for n in range(1, len(kept) + 1):
            if any(s in backend._decode_ids(kept[:n]) for s in stops):
                return kept[: n - 1] if n > 1 else []
    return kept


def _pieces(backend: TransformersBackend, ids: Sequence[int]) -> list[str]:
    """Each token's text as it extends the decoded answer (pieces join to the decoded text)."""
    out, prev = [], ""
    for n in range(1, len(ids) + 1):
        text = backend._decode_ids(list(ids[:n]))
        out.append(text[len(prev):] if text.startswith(prev) else backend._decode_ids([ids[n - 1]]))
        prev = text
    return out


def hf_generate_logprobs(backend: TransformersBackend, requests: Sequence[GenRequest],
                         k: int) -> list[tuple[Generation, list[TokenLogprob]]]:
    """Generate, then read every answer token's log-probability (and the top ``k``) in one forward pass each."""
    import torch

    prompts = [backend.encode(backend.render(r.messages)) for r in requests]
    for ids, r in zip(prompts, requests, strict=True):
        backend._check_length(len(ids), r.params.max_new_tokens)
    if backend.engine is not None:
        with backend._lock:
            news = backend.engine.run(prompts, [r.params for r in requests])
        answers = [_answer_tokens(backend, t, r.params) for t, r in zip(news, requests, strict=True)]
        gens = [backend.finish(t, len(ids), r.params) for t, ids, r in zip(news, prompts, requests, strict=True)]
    else:  # plain generate returns text only: its tokens are the text re-tokenised
        gens = backend.generate(requests)
        answers = [backend.encode(g.text) for g in gens]
    out: list[tuple[Generation, list[TokenLogprob]]] = []
    model = backend.score_model
    for prompt, ans, g in zip(prompts, answers, gens, strict=True):
        if not ans:
            out.append((Generation("", g.finish_reason, g.prompt_tokens, 0), []))
            continue
        first = len(prompt) - 1  # the logits at position i predict token i + 1
        with torch.inference_mode():
            logits = model(input_ids=torch.tensor([prompt + ans])).logits[0, first : first + len(ans)]
        logp = torch.log_softmax(logits.float(), dim=-1)
        top_lp, top_ids = logp.topk(max(k, 1), dim=-1)
        pieces = _pieces(backend, ans)
        toks = []
        for j, (tok, piece) in enumerate(zip(ans, pieces, strict=True)):
            alts = [(backend._decode_ids([int(t)]), float(v)) for t, v in zip(top_ids[j], top_lp[j], strict=True)]
            toks.append(TokenLogprob(piece, float(logp[j, tok]), alts[:k]))
        text = "".join(pieces)
        out.append((Generation(text, g.finish_reason, g.prompt_tokens, len(ans)), toks))
    return out


def hf_top_logprobs(backend: TransformersBackend, requests: Sequence[ScoreRequest],
                    k: int) -> list[list[tuple[str, float]]]:
    """The ``k`` most likely next tokens after each rendered prompt + assistant prefix, best first."""
    import torch

    out: list[list[tuple[str, float]]] = []
    for r in requests:
        ids = backend.encode(backend.render(r.messages) + r.assistant_prefix)
        backend._check_length(len(ids), 1)
        with torch.inference_mode():
            logits = backend.score_model(input_ids=torch.tensor([ids])).logits[0, -1]
        lp, idx = torch.log_softmax(logits.float(), -1).topk(max(k, 1))
        out.append([(backend._decode_ids([int(t)]), float(v)) for t, v in zip(idx, lp, strict=True)])
    return out

