"""The openai backend's assistant-prefix probe and its completions path, over real HTTP on 127.0.0.1 against small
fake servers (the real third-party server is in test_llamacpp_server.py)."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from charter.backends.base import BackendOptions, ScoreRequest
from charter.backends.mock import MockBackend
from charter.backends.openai import OpenAIBackend
from charter.errors import BackendError
from charter.serve import ChatServer

PREFIX = "The answer is: ("
REQ = ScoreRequest.of([{"role": "user", "content": "Which is kinder, (A) or (B)?"}], ("A", "B"), PREFIX)
_TOKENS = re.compile(r"<\|im_(?:start|end)\|>|\w+|[^\w\s]|\n")


def chatml(messages: list[dict[str, str]], continue_final: bool) -> str:
    out = ""
    for i, m in enumerate(messages):
        last = i == len(messages) - 1
        out += f"<|im_start|>{m['role']}\n{m['content']}"
        if not (last and continue_final):
            out += "<|im_end|>\n"
    return out if continue_final else out + "<|im_start|>assistant\n"


def next_tokens(prompt: str) -> list[tuple[str, float]]:
    """What the fake model puts next: the options after the prefix, else the start of a fresh answer."""
    if prompt.endswith(PREFIX):
        return [("A", -0.2), ("B", -1.8), ("C", -6.0)]
    return [("The", -0.05), ("I", -3.5), ("A", -8.0), ("B", -8.5)]


class FakeServer:
    """An OpenAI-compatible server whose chat endpoint continues a final assistant message (like vLLM) or closes
    it and opens a fresh turn (like llama-cpp-python); ``usage.prompt_tokens`` counts the rendered prompt's tokens.
    ``/completions`` answers in OpenAI's legacy logprobs shape, or in the chat shape (llama-server's)."""

    def __init__(self, continues: bool, completions_shape: str = "legacy") -> None:
        self.continues, self.shape = continues, completions_shape
        self.seen: list[tuple[str, dict[str, Any]]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.seen.append((self.path, body))
                if self.path.endswith("/chat/completions"):
                    cont = fake.continues and bool(body.get("continue_final_message"))
                    prompt = chatml(body["messages"], cont)
                    top = next_tokens(prompt)[: int(body.get("top_logprobs") or 1)]
                    lp = {"content": [{"token": top[0][0], "logprob": top[0][1],
                                       "top_logprobs": [{"token": t, "logprob": v} for t, v in top]}]}
                    choice = {"message": {"role": "assistant", "content": top[0][0]}, "finish_reason": "length",
                              "logprobs": lp if body.get("logprobs") else None}
                else:
                    prompt = body["prompt"]
                    top = next_tokens(prompt)[: int(body.get("logprobs") or 1)]
                    if fake.shape == "legacy":
                        lp = {"tokens": [top[0][0]], "token_logprobs": [top[0][1]], "top_logprobs": [dict(top)]}
                    else:
                        lp = {"content": [{"token": top[0][0], "logprob": top[0][1],
                                           "top_logprobs": [{"token": t, "logprob": v} for t, v in top]}]}
                    choice = {"text": top[0][0], "finish_reason": "length", "logprobs": lp}
                data = json.dumps({"choices": [choice], "usage": {"prompt_tokens": len(_TOKENS.findall(prompt)),
                                                                  "completion_tokens": 1}}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def fake(request: pytest.FixtureRequest) -> Iterator[FakeServer]:
    continues, shape = getattr(request, "param", (False, "legacy"))
    server = FakeServer(continues, shape)
    yield server
    server.close()


def make(url: str, **extra: Any) -> OpenAIBackend:
    return OpenAIBackend(f"openai/m@{url}", f"m@{url}", BackendOptions(timeout=5, max_retries=1, extra=extra))


@pytest.mark.parametrize("fake", [(True, "legacy"), (False, "legacy")], indirect=True, ids=["continues", "closes"])
def test_the_probe_tells_a_server_that_continues_the_prefix_from_one_that_closes_it(fake: FakeServer) -> None:
    b = make(fake.url, template="embedded")
    assert b.probe_prefix() is fake.continues
    if fake.continues:
        assert b.model_id == b.base_id  # the id caches had before: vLLM and charter serve runs keep theirs
    else:
        assert re.fullmatch(re.escape(b.base_id) + r"\|prefix=completions:[0-9a-f]{10}", b.model_id)
    n = len(fake.seen)
    assert b.model_id and len(fake.seen) == n  # probed once per backend


@pytest.mark.parametrize("fake", [(False, "legacy"), (False, "chat")], indirect=True, ids=["legacy", "chat-shape"])
def test_a_server_that_closes_the_prefix_is_scored_over_completions_with_the_chat_template(fake: FakeServer) -> None:
    from charter.backends.chat_template import load_template

    [scores] = make(fake.url, template="embedded").score_options([REQ])
    assert scores.error is None and scores.logprobs == {"A": -0.2, "B": -1.8}
    path, body = fake.seen[-1]
    assert path == "/v1/completions"
    assert body["prompt"] == load_template("embedded").render(REQ.messages) + PREFIX
    assert body["max_tokens"] == 1 and body["logprobs"] == 20


def test_pinned_continue_against_a_closing_server_reads_the_wrong_token(fake: FakeServer) -> None:
    """What llama-cpp-python users got before: the options barely appear (the reason for the probe)."""
    [scores] = make(fake.url, prefix="continue").score_options([REQ])
    assert fake.seen[0][0] == "/v1/chat/completions" and len(fake.seen) == 1  # pinned: no probe
    assert scores.error is None and max(scores.logprobs.values()) < -7


def test_charter_serve_leaves_the_probe_inconclusive_and_the_id_unchanged() -> None:
    seen: list[ScoreRequest] = []

    def rule(r: ScoreRequest) -> dict[str, float]:
        seen.append(r)
        return {"A": 0.9, "B": 0.1}

    with ChatServer(MockBackend(score_rule=rule), port=0) as server:
        b = make(server.url)
        assert b.probe_prefix() is None  # scoring answers carry no prompt token counts
        assert b.model_id == b.base_id
        [scores] = b.score_options([REQ])
    assert scores.probs()["A"] == pytest.approx(0.9)
    assert seen[-1].assistant_prefix == PREFIX and seen[-1].messages == REQ.messages


def test_an_unreachable_server_keeps_the_plain_id_without_waiting() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    b = make(f"http://127.0.0.1:{port}/v1")
    start = time.monotonic()
    assert b.model_id == b.base_id == f"openai/m@http://127.0.0.1:{port}/v1"
    assert time.monotonic() - start < 2
    assert b._path is None  # not settled: the next access probes again


def test_completions_without_a_template_names_the_fix(fake: FakeServer) -> None:
    b = make(fake.url)
    assert b.model_id.endswith("|prefix=completions:none")
    with pytest.raises(BackendError, match="extra.template"):
        b.score_options([REQ])


def test_a_bad_prefix_mode_is_refused_with_the_choices() -> None:
    with pytest.raises(BackendError, match="auto, continue, completions"):
        make("http://127.0.0.1:9/v1", prefix="sometimes")
