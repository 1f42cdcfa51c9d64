"""charter serve with the official openai SDK as the client: streaming (SSE) and per-token log-probabilities."""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx
import pytest

from charter.backends.base import Generation, GenParams, GenRequest
from charter.backends.mock import MockBackend
from charter.errors import BackendError
from charter.serve import ChatServer

openai = pytest.importorskip("openai", reason="the openai SDK is a dev dependency: pip install -e '.[dev]'")


def client(server: ChatServer, **kw: object) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0, timeout=30, **kw)  # type: ignore[arg-type]


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


@pytest.fixture
def mock_server() -> Iterator[ChatServer]:
    with ChatServer(MockBackend(), port=0) as s:
        yield s


def test_sdk_stream_joins_to_the_same_answer_as_without_streaming(mock_server: ChatServer) -> None:
    c = client(mock_server)
    whole = c.chat.completions.create(model="m", messages=user("Tell me about tea"), seed=4)  # type: ignore[arg-type]
    chunks = list(c.chat.completions.create(model="m", messages=user("Tell me about tea"), seed=4,  # type: ignore[arg-type]
                                            stream=True, stream_options={"include_usage": True}))
    texts = [ch.choices[0].delta.content or "" for ch in chunks if ch.choices]
    assert "".join(texts) == whole.choices[0].message.content
    assert len([t for t in texts if t]) > 3  # word by word, not one blob
    assert chunks[0].choices[0].delta.role == "assistant"
    finals = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    assert finals == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens  # type: ignore[union-attr]
    assert len({ch.id for ch in chunks}) == 1


class Failing(MockBackend):
    def generate(self, requests: Sequence[GenRequest]) -> list[Generation]:
        raise BackendError("prompt is too long", "shorten it")


def test_sdk_stream_error_before_the_first_chunk_is_an_http_error() -> None:
    with ChatServer(Failing(), port=0) as s, pytest.raises(openai.BadRequestError, match="prompt is too long"):
        list(client(s).chat.completions.create(model="m", messages=user("hi"), stream=True))  # type: ignore[arg-type]


class DiesMidway(MockBackend):
    def generate_stream(self, requests, on_text):  # type: ignore[no-untyped-def]
        on_text(0, "Half an")
        raise RuntimeError("the model crashed")


def test_sdk_stream_error_after_text_ends_the_stream_with_an_error_event() -> None:
    with ChatServer(DiesMidway(), port=0) as s:
        got: list[str] = []
        with pytest.raises(openai.APIError, match="the model crashed"):
            for ch in client(s).chat.completions.create(model="m", messages=user("hi"), stream=True):  # type: ignore[arg-type]
                if ch.choices:
                    got.append(ch.choices[0].delta.content or "")
        assert "".join(got) == "Half an"
        # the connection stays usable
        assert httpx.get(f"{s.url}/models").status_code == 200


def test_streams_of_concurrent_requests_are_batched_and_kept_apart() -> None:
    backend = MockBackend(word_delay=0.002)
    out: dict[int, str] = {}
    with ChatServer(backend, port=0, window=0.05) as s:
        c = client(s)

        def ask(i: int) -> None:
            stream = c.chat.completions.create(model="m", messages=user(f"question {i}"), stream=True)  # type: ignore[arg-type]
            out[i] = "".join(ch.choices[0].delta.content or "" for ch in stream if ch.choices)

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert s.batcher.batches < 6
    for i in range(6):
        assert f"'question {i}'" in out[i]


def test_logprobs_of_a_generation_need_a_backend_that_has_them(mock_server: ChatServer) -> None:
    with pytest.raises(openai.BadRequestError, match="no per-token log-probabilities"):
        client(mock_server).chat.completions.create(model="m", messages=user("hi"), logprobs=True, max_tokens=5)  # type: ignore[arg-type]


# --- a real (tiny, random) transformers model ------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_server(tiny_model_dir: Path) -> Iterator[ChatServer]:
    pytest.importorskip("charter.backends.transformers")
    from charter.backends import BackendOptions, load_backend

    local = load_backend(f"transformers/{tiny_model_dir}", BackendOptions(dtype="float32"))
    with ChatServer(local, port=0) as s:
        yield s


def test_a_local_model_streams_token_by_token_and_matches_the_plain_answer(tiny_server: ChatServer) -> None:
    c = client(tiny_server)
    msgs = user("Say something about cats.")  # sampled: the random model's greedy answer is all newlines
    want = tiny_server.backend.generate([GenRequest.of(msgs, GenParams(max_new_tokens=12, temperature=1.0, seed=3))])[0]
    chunks = list(c.chat.completions.create(model="m", messages=msgs, max_tokens=12, temperature=1.0, seed=3,  # type: ignore[arg-type]
                                            stream=True))
    pieces = [ch.choices[0].delta.content or "" for ch in chunks if ch.choices]
    assert "".join(pieces) == want.text
    assert len([p for p in pieces if p]) >= 3  # the engine's per-token callback, not the whole answer at once
    assert chunks[-1].choices[0].finish_reason == want.finish_reason


def test_a_local_model_gives_every_tokens_logprob_and_greedy_picks_the_top_one(tiny_server: ChatServer) -> None:
    c = client(tiny_server)
    r = c.chat.completions.create(model="m", messages=user("Name a colour."), max_tokens=8, temperature=0,  # type: ignore[arg-type]
                                  logprobs=True, top_logprobs=3)
    assert r.choices[0].finish_reason == "length"
    content = r.choices[0].logprobs.content  # type: ignore[union-attr]
    assert content is not None and len(content) == r.usage.completion_tokens == 8  # type: ignore[union-attr]
    assert "".join(t.token for t in content) == r.choices[0].message.content  # (8 newlines from a random model)
    for t in content:
        assert len(t.top_logprobs) == 3 and t.logprob <= 0
        assert [a.logprob for a in t.top_logprobs] == sorted((a.logprob for a in t.top_logprobs), reverse=True)
        assert t.logprob == pytest.approx(t.top_logprobs[0].logprob, abs=1e-4)  # greedy: the chosen token is the top
    assert sum(math.exp(a.logprob) for a in content[0].top_logprobs) <= 1.0 + 1e-6


def test_a_local_model_streams_logprobs_chunk_by_chunk(tiny_server: ChatServer) -> None:
    c = client(tiny_server)
    kw = {"model": "m", "messages": user("Name a colour."), "max_tokens": 6, "temperature": 1.0, "seed": 5,
          "logprobs": True, "top_logprobs": 2}
    whole = c.chat.completions.create(**kw)  # type: ignore[call-overload]
    chunks = [ch for ch in c.chat.completions.create(**kw, stream=True) if ch.choices and ch.choices[0].logprobs]  # type: ignore[call-overload]
    streamed = [t for ch in chunks for t in ch.choices[0].logprobs.content]
    assert [(t.token, round(t.logprob, 4)) for t in streamed] == [
        (t.token, round(t.logprob, 4)) for t in whole.choices[0].logprobs.content
    ]
    assert len(streamed) == 6 and "".join(t.token for t in streamed) == whole.choices[0].message.content
    assert any(t.logprob < t.top_logprobs[0].logprob - 1e-3 for t in streamed)  # sampled, not always the top
