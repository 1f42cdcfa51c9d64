"""charter serve over real HTTP on 127.0.0.1: endpoints, log-probabilities, batching, tokens, the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import httpx
import pytest

from charter.backends.base import Generation, GenParams, GenRequest, ScoreRequest
from charter.backends.mock import MockBackend
from charter.errors import BackendError, CharterError
from charter.serve import ChatServer


def chat(text: str, **extra: Any) -> dict[str, Any]:
    return {"model": "any", "messages": [{"role": "user", "content": text}], **extra}


@pytest.fixture
def server() -> Iterator[ChatServer]:
    with ChatServer(MockBackend(), port=0) as s:
        yield s


def test_models_endpoint_lists_the_served_model(server: ChatServer) -> None:
    data = httpx.get(f"{server.url}/models").json()
    assert [m["id"] for m in data["data"]] == ["mock/echo"]


def test_chat_completion_has_the_openai_shape(server: ChatServer) -> None:
    data = httpx.post(
        f"{server.url}/chat/completions", json=chat("Hello there", seed=3, temperature=0)
    ).json()
    want = MockBackend().generate(
        [GenRequest.of([{"role": "user", "content": "Hello there"}], GenParams(seed=3, temperature=0.0))]
    )[0]
    choice = data["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": want.text}
    assert choice["finish_reason"] == "stop" and data["object"] == "chat.completion"
    assert data["usage"]["completion_tokens"] == want.completion_tokens


class CountingBackend(MockBackend):
    """Records the size of every generate batch; fails on any prompt containing 'BAD'."""

    def __init__(self) -> None:
        super().__init__(delay=0.02)
        self.batches: list[int] = []
        self.lock = threading.Lock()

    def generate(self, requests: Sequence[GenRequest]) -> list[Generation]:
        with self.lock:
            self.batches.append(len(requests))
        if any("BAD" in r.messages[-1]["content"] for r in requests):
            raise BackendError("prompt BAD is too long", "shorten it")
        return super().generate(requests)


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer() -> None:
    backend = CountingBackend()
    texts = [f"question {i}" for i in range(12)]
    results: dict[str, str] = {}
    with ChatServer(backend, port=0, window=0.05) as s, httpx.Client(timeout=10) as client:

        def ask(t: str) -> None:
            results[t] = client.post(f"{s.url}/chat/completions", json=chat(t)).json()["choices"][0][
                "message"
            ]["content"]

        threads = [threading.Thread(target=ask, args=(t,)) for t in texts]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    assert sum(backend.batches) == 12 and len(backend.batches) < 12
    for t in texts:
        assert f"'{t}'" in results[t]


def test_one_failing_request_does_not_fail_the_rest_of_its_batch() -> None:
    backend = CountingBackend()
    texts = ["fine 1", "BAD one", "fine 2", "fine 3"]
    status: dict[str, int] = {}
    with ChatServer(backend, port=0, window=0.05) as s, httpx.Client(timeout=10) as client:

        def ask(t: str) -> None:
            status[t] = client.post(f"{s.url}/chat/completions", json=chat(t)).status_code

        threads = [threading.Thread(target=ask, args=(t,)) for t in texts]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        bad = client.post(f"{s.url}/chat/completions", json=chat("BAD again"))
    assert status == {"fine 1": 200, "BAD one": 400, "fine 2": 200, "fine 3": 200}
    assert "prompt BAD is too long — shorten it" in bad.json()["error"]["message"]


class TopBackend(MockBackend):
    def __init__(self) -> None:
        super().__init__(spec="mock/top")
        self.seen: list[ScoreRequest] = []

    def top_logprobs(self, requests: Sequence[ScoreRequest], k: int) -> list[list[tuple[str, float]]]:
        self.seen.extend(requests)
        return [[("B", -0.1), ("A", -2.5), ("C", -4.0)][:k] for _ in requests]


def test_logprobs_request_returns_the_top_next_tokens_after_the_prefix() -> None:
    backend = TopBackend()
    body = {
        "messages": [{"role": "user", "content": "A or B?"}, {"role": "assistant", "content": "Answer: ("}],
        "max_tokens": 1,
        "logprobs": True,
        "top_logprobs": 2,
        "continue_final_message": True,
        "add_generation_prompt": False,
    }
    with ChatServer(backend, port=0) as s:
        data = httpx.post(f"{s.url}/chat/completions", json=body).json()
    first = data["choices"][0]["logprobs"]["content"][0]
    assert data["choices"][0]["message"]["content"] == "B"
    assert [(t["token"], t["logprob"]) for t in first["top_logprobs"]] == [("B", -0.1), ("A", -2.5)]
    assert backend.seen[0].assistant_prefix == "Answer: ("
    assert backend.seen[0].messages == ({"role": "user", "content": "A or B?"},)


def test_logprobs_for_a_backend_without_top_tokens_need_candidate_options(server: ChatServer) -> None:
    body = chat("A or B?", max_tokens=1, logprobs=True, top_logprobs=5)
    refused = httpx.post(f"{server.url}/chat/completions", json=body)
    assert refused.status_code == 400 and "charter_options" in refused.json()["error"]["message"]
    ok = httpx.post(f"{server.url}/chat/completions", json={**body, "charter_options": ["A", "B"]}).json()
    tops = ok["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
    assert sorted(t["token"] for t in tops) == ["A", "B"]


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (chat("hi", logprobs=True, max_tokens=5), "max_tokens=1"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0]"),
        (chat("hi", n=2), "n > 1"),
    ],
)
def test_unsupported_requests_get_400_with_the_reason(
    server: ChatServer, body: dict[str, Any], says: str
) -> None:
    r = httpx.post(f"{server.url}/chat/completions", json=body)
    assert r.status_code == 400 and says in r.json()["error"]["message"]


def test_body_that_is_not_json_gets_400(server: ChatServer) -> None:
    r = httpx.post(f"{server.url}/chat/completions", content=b"{not json")
    assert r.status_code == 400 and "not JSON" in r.json()["error"]["message"]


def test_bearer_token_rejects_missing_and_wrong_tokens() -> None:
    with ChatServer(MockBackend(), port=0, token="s3cret") as s:
        url = f"{s.url}/chat/completions"
        assert httpx.post(url, json=chat("hi")).status_code == 401
        assert httpx.post(url, json=chat("hi"), headers={"Authorization": "Bearer nope"}).status_code == 401
        assert httpx.get(f"{s.url}/models", headers={"Authorization": "s3cret"}).status_code == 401
        assert httpx.post(url, json=chat("hi"), headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert httpx.get(f"http://127.0.0.1:{s.httpd.server_address[1]}/health").status_code == 200


def test_a_port_in_use_gives_a_one_line_error(server: ChatServer) -> None:
    with pytest.raises(CharterError, match="cannot listen on 127.0.0.1:.* choose another --port"):
        ChatServer(MockBackend(), port=server.httpd.server_address[1])


def test_cli_serve_runs_a_real_server_that_requires_the_token() -> None:
    env = {**os.environ, "MY_SERVE_TOKEN": "tok-123"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "charter.cli",
            "serve",
            "mock/echo",
            "--port",
            "0",
            "--token-env",
            "MY_SERVE_TOKEN",
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "auth: bearer token from $MY_SERVE_TOKEN" in line and "tok-123" not in line
        url = line.split(" at ")[1].split()[0]
        assert url.startswith("http://127.0.0.1:")
        assert httpx.post(f"{url}/chat/completions", json=chat("hi")).status_code == 401
        ok = httpx.post(
            f"{url}/chat/completions", json=chat("hi"), headers={"Authorization": "Bearer tok-123"}
        )
        assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["content"].startswith(
            "Mock reply"
        )
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_cli_serve_with_an_unset_token_variable_refuses_to_start() -> None:
    env = {k: v for k, v in os.environ.items() if k != "NO_SUCH_TOKEN"}
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "charter.cli",
            "serve",
            "mock/echo",
            "--port",
            "0",
            "--token-env",
            "NO_SUCH_TOKEN",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )
    assert r.returncode == 2 and r.stderr.strip() == (
        "error: $NO_SUCH_TOKEN is not set — export NO_SUCH_TOKEN=<a secret> or drop --token-env"
    )


def test_a_served_transformers_model_answers_like_the_model_itself(tiny_model_dir: Any) -> None:
    pytest.importorskip("charter.backends.transformers")
    from charter.backends import BackendOptions, load_backend
    from charter.backends.openai import OpenAIBackend

    local = load_backend(f"transformers/{tiny_model_dir}", BackendOptions(dtype="float32"))
    gens = [
        GenRequest.of([{"role": "user", "content": f"Say something about {w}."}], GenParams(max_new_tokens=6))
        for w in ("cats", "the sea", "bread")
    ]
    scores = [ScoreRequest.of([{"role": "user", "content": "Pick one."}], ("A", "B"), "The answer is: (")]
    with ChatServer(local, port=0) as s:
        remote = OpenAIBackend("openai/tiny", f"tiny@{s.url}", BackendOptions())
        got_gens, got_scores = remote.generate(gens), remote.score_options(scores)
    assert [g.text for g in got_gens] == [g.text for g in local.generate(gens)]
    want = local.score_options(scores)[0].logprobs
    assert got_scores[0].logprobs == pytest.approx(want, abs=1e-5)
