"""An offline backend with queued or rule-based outputs: the test default.

From a spec string (usable in YAML configs and subprocess tests)::

    mock/echo                          deterministic answers derived from the prompt
    mock/echo?delay=0.05&log=calls.txt sleep per request; append one line per request to a file
    mock/echo?bias=0.8                 score_options gives option A probability 0.8 whatever the content
    mock/echo?word_delay=0.01          generate_stream sleeps this long before each word it streams

In code, pass ``replies`` (a queue, consumed in order) or ``rule`` (a function of the request).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from urllib.parse import parse_qsl

from charter.backends.base import FinishReason, Generation, GenRequest, OptionScores, ScoreRequest


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def echo_rule(request: GenRequest) -> str:
    """A deterministic answer that depends on the last user turn and the seed."""
    last = request.messages[-1]["content"] if request.messages else ""
    tag = _digest(f"{last}|{request.params.seed}|{request.params.temperature}")
    return f"Mock reply {tag}: I considered '{last[:60].strip()}' carefully."


class MockBackend:
    """A backend that answers from a queue or a rule, with no model at all."""

    def __init__(
        self,
        spec: str = "mock/echo",
        replies: Iterable[str] | None = None,
        rule: Callable[[GenRequest], str] | None = None,
        score_rule: Callable[[ScoreRequest], dict[str, float]] | None = None,
        bias: float | None = None,
        delay: float = 0.0,
        log: str | None = None,
        word_delay: float = 0.0,
    ) -> None:
        self.spec = spec
        # delay and log change how it runs, not what it answers: keep them out of the cache identity
        base, _, query = spec.partition("?")
        kept = "&".join(f"{k}={v}" for k, v in parse_qsl(query) if k not in ("delay", "log", "word_delay"))
        self.model_id = f"{base}?{kept}" if kept else base
        self.replies: deque[str] = deque(replies or [])
        self.rule = rule or echo_rule
        self.score_rule = score_rule
        self.bias = bias
        self.delay = delay
        self.log = Path(log) if log else None
        self.word_delay = word_delay
        self.calls: list[GenRequest | ScoreRequest] = []

    @classmethod
    def from_spec(cls, spec: str) -> MockBackend:
        """Parse ``mock/NAME?key=value&...`` (keys: delay, bias, log)."""
        _, _, query = spec.partition("?")
        opts = dict(parse_qsl(query))
        return cls(
            spec=spec,
            bias=float(opts["bias"]) if "bias" in opts else None,
            delay=float(opts.get("delay", 0.0)),
            log=opts.get("log"),
            word_delay=float(opts.get("word_delay", 0.0)),
        )

    def _record(self, request: GenRequest | ScoreRequest) -> None:
        """Count the call; with ``delay`` sleep first; with ``log`` append a line once the call completes."""
        self.calls.append(request)
        if self.delay:
            time.sleep(self.delay)
        if self.log:
            with self.log.open("a") as f:
                f.write(_digest(repr(request)) + "\n")

    def generate(self, requests: Sequence[GenRequest]) -> list[Generation]:
        """Answer each request from the queue, else from the rule."""
        out = []
        for r in requests:
            self._record(r)
            text = self.replies.popleft() if self.replies else self.rule(r)
            words = len(text.split())
            reason: FinishReason = "length" if words > r.params.max_new_tokens else "stop"
            out.append(Generation(text=text, finish_reason=reason, prompt_tokens=0, completion_tokens=words))
        return out

    def generate_stream(self, requests: Sequence[GenRequest], on_text: Callable[[int, str], None]) -> list[Generation]:
        """:meth:`generate`, then each answer sent to ``on_text(i, delta)`` word by word (``word_delay`` apart)."""
        gens = self.generate(requests)
        for i, g in enumerate(gens):
            words = g.text.split(" ")
            for j, w in enumerate(words):
                if self.word_delay:
                    time.sleep(self.word_delay)
                on_text(i, w if j == 0 else " " + w)
        return gens

    def score_options(self, requests: Sequence[ScoreRequest]) -> list[OptionScores]:
        """Option log-probabilities from ``score_rule``, else a fixed ``bias`` towards the first option,
        else a content-free pseudo-random split derived from the prompt."""
        out = []
        for r in requests:
            self._record(r)
            if self.score_rule is not None:
                probs = self.score_rule(r)
            else:
                first = self.bias if self.bias is not None else int(_digest(repr(r.messages)), 16) % 1000 / 1000
                first = min(max(first, 1e-6), 1 - 1e-6)
                rest = (1 - first) / max(len(r.options) - 1, 1)
                probs = {o: (first if i == 0 else rest) for i, o in enumerate(r.options)}
            out.append(OptionScores(logprobs={k: math.log(max(v, 1e-12)) for k, v in probs.items()}))
        return out
