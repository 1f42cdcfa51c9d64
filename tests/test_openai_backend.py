"""The openai backend over real HTTP on 127.0.0.1, against charter serve and a fault-injecting server."""

from __future__ import annotations

import json
import logging
import math
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from charter.backends import BackendOptions, load_backend
from charter.backends.base import GenParams, GenRequest, ScoreRequest
from charter.backends.mock import MockBackend
from charter.backends.openai import OpenAIBackend
from charter.errors import BackendError
from charter.serve import ChatServer, Job, answer, format_chat
from charter.store import CachedBackend, CallCache


def make_backend(url: str, **opts: Any) -> OpenAIBackend:
    # charter serve and FaultServer continue assistant prefixes: pinned, so no probe requests reach their counts
    extra = {"backoff": 0.01, "max_backoff": 0.05, "prefix": "continue"}
    options = BackendOptions(**{"timeout": 5.0, "max_retries": 3, "concurrency": 4, **opts}, extra=extra)
    return OpenAIBackend(f"openai/mock@{url}", f"mock@{url}", options)


def prompts(n: int, tag: str = "q") -> list[GenRequest]:
    return [
        GenRequest.of([{"role": "user", "content": f"{tag} number {i} " + "x" * i}], GenParams(seed=i))
        for i in range(n)
    ]


@pytest.fixture
def served() -> Iterator[ChatServer]:
    with ChatServer(MockBackend(), port=0) as server:
        yield server


class FaultServer:
    """A chat-completions server that answers like charter serve over a mock backend, except when ``plan``
    says otherwise: ``plan(n, body)`` (n = requests seen so far) returns "ok", "500", "429", "400", "sleep",
    "drop", "garbled" or "nologprobs"."""

    def __init__(
        self,
        plan: Callable[[int, dict[str, Any]], str],
        sleep: float = 1.0,
        respond: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    ) -> None:
        self.plan = plan
        self.sleep = sleep
        self.respond = respond
        self.backend = MockBackend()
        self.seen: list[dict[str, Any]] = []
        self.answered: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        fault = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def reply(self, status: int, payload: bytes, headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(payload)

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with fault.lock:
                    n = len(fault.seen)
                    fault.seen.append(body)
                action = fault.plan(n, body)
                if action in ("500", "429", "400"):
                    msg = {"500": "injected failure", "429": "slow down", "400": "prompt is too long for me"}[
                        action
                    ]
                    self.reply(
                        int(action), json.dumps({"error": {"message": msg}}).encode(), {"Retry-After": "0"}
                    )
                    return
                if action == "sleep":
                    time.sleep(fault.sleep)
                data = fault.respond(body) if fault.respond else answer(fault.backend, body, "fault")
                if action == "nologprobs":
                    data["choices"][0]["logprobs"] = None
                payload = json.dumps(data).encode()
                if action == "drop":  # promise the whole body, send half, hang up
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload[: len(payload) // 2])
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                if action == "garbled":  # a complete HTTP answer whose JSON is cut short
                    payload = payload[: len(payload) // 2]
                try:
                    self.reply(200, payload)
                except OSError:  # the client gave up (timeout)
                    return
                if action == "ok":
                    with fault.lock:
                        fault.answered.append(body)

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def server_bind(self) -> None:  # skip HTTPServer's reverse-DNS lookup
                socketserver.TCPServer.server_bind(self)

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> FaultServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def last_user(body: dict[str, Any]) -> str:
    return str(body["messages"][-1]["content"])


# --- end to end against charter serve -----------------------------------------------------------------------


def test_generate_over_http_matches_the_served_backend_in_request_order(served: ChatServer) -> None:
    requests = prompts(10)
    got = make_backend(served.url).generate(requests)
    want = MockBackend().generate(requests)
    assert [g.text for g in got] == [w.text for w in want]
    assert all(g.finish_reason == "stop" and g.completion_tokens > 0 for g in got)


def test_generation_cut_by_max_tokens_reports_length(served: ChatServer) -> None:
    req = GenRequest.of([{"role": "user", "content": "hi"}], GenParams(max_new_tokens=2))
    assert make_backend(served.url).generate([req])[0].finish_reason == "length"


def test_score_options_over_http_continues_the_assistant_prefix() -> None:
    seen: list[ScoreRequest] = []

    def rule(r: ScoreRequest) -> dict[str, float]:
        seen.append(r)
        return {"A": 0.9, "B": 0.1} if r.assistant_prefix == "The answer is: (" else {"A": 0.5, "B": 0.5}

    with ChatServer(MockBackend(score_rule=rule), port=0) as server:
        req = ScoreRequest.of(
            [{"role": "user", "content": "Which is kinder?"}], ("A", "B"), "The answer is: ("
        )
        [scores] = make_backend(server.url).score_options([req])
    assert scores.error is None
    assert scores.probs()["A"] == pytest.approx(0.9)
    assert (
        seen[-1].messages == req.messages
    )  # the prefix arrived as the prefix, not as a closed assistant turn (earlier: the backend's prefix check)


def test_api_key_is_sent_as_bearer_and_kept_out_of_ids_caches_and_logs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "sk-test-0123456789-very-secret"
    monkeypatch.setenv("CHARTER_TEST_KEY", secret)
    caplog.set_level(logging.DEBUG)
    with ChatServer(MockBackend(), port=0, token=secret) as server:
        backend = make_backend(server.url, api_key_env="CHARTER_TEST_KEY")
        cached = CachedBackend(backend, CallCache(tmp_path / "calls.sqlite"))
        assert len(cached.generate(prompts(3))) == 3
        monkeypatch.setenv("CHARTER_TEST_KEY", secret + "-wrong")
        with pytest.raises(BackendError) as info:
            make_backend(server.url, api_key_env="CHARTER_TEST_KEY").generate(prompts(1))
    assert "HTTP 401" in str(info.value) and "$CHARTER_TEST_KEY" in str(info.value)
    for text in (backend.model_id, repr(backend), str(info.value), caplog.text):
        assert secret not in text
    for f in tmp_path.iterdir():
        assert secret.encode() not in f.read_bytes()


def test_model_string_names_the_server_or_falls_back_to_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    b = load_backend("openai/Qwen/Qwen2.5-7B@http://127.0.0.1:9/v1/")
    assert isinstance(b, OpenAIBackend)
    assert (b.model, b.model_id) == ("Qwen/Qwen2.5-7B", "openai/Qwen/Qwen2.5-7B@http://127.0.0.1:9/v1")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:7/v1")
    assert load_backend("openai/llama").model_id == "openai/llama@http://127.0.0.1:7/v1"
    monkeypatch.delenv("OPENAI_BASE_URL")
    with pytest.raises(BackendError, match="OPENAI_BASE_URL"):
        load_backend("openai/llama")


# --- faults -------------------------------------------------------------------------------------------------


def test_500s_and_429s_are_retried_until_the_answer_comes() -> None:
    plan = {0: "500", 1: "429", 2: "500"}
    with FaultServer(lambda n, body: plan.get(n, "ok")) as server:
        got = make_backend(server.url, concurrency=1).generate(prompts(3))
    assert [g.text for g in got] == [w.text for w in MockBackend().generate(prompts(3))]
    assert len(server.seen) == 6


def test_a_request_that_times_out_is_retried() -> None:
    with FaultServer(lambda n, body: "sleep" if n == 0 else "ok", sleep=3.0) as server:
        start = time.monotonic()
        [g] = make_backend(server.url, timeout=0.3).generate(prompts(1))
    assert g.text == MockBackend().generate(prompts(1))[0].text
    assert len(server.seen) == 2 and time.monotonic() - start < 2.5


@pytest.mark.parametrize("fault", ["drop", "garbled"])
def test_an_answer_cut_off_mid_body_is_retried(fault: str) -> None:
    with FaultServer(lambda n, body: fault if n < 2 else "ok") as server:
        got = make_backend(server.url, concurrency=1).generate(prompts(2))
    assert [g.text for g in got] == [w.text for w in MockBackend().generate(prompts(2))]
    assert len(server.seen) == 4


def test_a_client_error_is_not_retried_and_quotes_the_server() -> None:
    with FaultServer(lambda n, body: "400") as server, pytest.raises(BackendError) as info:
        make_backend(server.url).generate(prompts(1))
    assert "HTTP 400: prompt is too long for me" in str(info.value)
    assert len(server.seen) == 1


def test_permanent_failure_keeps_finished_results_and_rerun_redoes_only_the_missing(tmp_path: Path) -> None:
    requests = prompts(12)
    poison = requests[5].messages[-1]["content"]  # requests go out shortest first: 0..11
    broken = {"on": True}

    def plan(n: int, body: dict[str, Any]) -> str:
        return "500" if broken["on"] and last_user(body) == poison else "ok"

    cache = CallCache(tmp_path / "calls.sqlite")
    with FaultServer(plan) as server:
        backend = make_backend(server.url, concurrency=1, max_retries=1)
        with pytest.raises(BackendError, match="HTTP 500: injected failure"):
            CachedBackend(backend, cache).generate(requests)
        first = {last_user(b) for b in server.answered}
        assert first == {r.messages[-1]["content"] for r in requests[:5]}  # the batch stopped at the failure
        assert cache.count() == 5  # every answer that arrived is kept

        broken["on"] = False
        server.answered.clear()
        got = CachedBackend(backend, cache).generate(requests)
    again = [last_user(b) for b in server.answered]
    assert sorted(again) == sorted(
        {r.messages[-1]["content"] for r in requests} - first
    )  # each missing one once
    assert [g.text for g in got] == [w.text for w in MockBackend().generate(requests)]
    assert cache.count() == 12


def test_unreachable_endpoint_fails_fast_with_one_line() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    start = time.monotonic()
    with pytest.raises(BackendError) as info:
        make_backend(url, max_retries=2, timeout=1.0).generate(prompts(3))
    assert time.monotonic() - start < 3
    assert str(info.value) == (
        f"cannot reach {url}: connection refused — start the server or fix the URL in the model string"
    )


def test_server_without_logprobs_gives_the_clear_error() -> None:
    with FaultServer(lambda n, body: "nologprobs") as server, pytest.raises(BackendError) as info:
        make_backend(server.url).score_options([ScoreRequest.of([{"role": "user", "content": "A or B?"}])])
    assert "server gives no log-probabilities" in str(info.value)
    assert "vLLM, llama.cpp server, charter serve" in str(info.value)


def test_options_are_read_from_the_top_tokens_with_a_floor_for_missing_ones() -> None:
    top = [(" A", -0.5), ("A", -2.0), ("Sure", -2.5), ("B", -9.0)] + [(f"t{i}", -10.0 - i) for i in range(20)]

    def respond(
        body: dict[str, Any],
    ) -> dict[str, Any]:  # what vLLM answers: the real top 20, whatever the options
        return format_chat(Job("top", ScoreRequest.of([]), body["top_logprobs"]), top, "fault")

    ask = [
        ScoreRequest.of([{"role": "user", "content": "?"}], opts) for opts in (("A", "B", "C"), ("X", "Y"))
    ]
    with FaultServer(lambda n, body: "ok", respond=respond) as server:
        backend = make_backend(server.url)
        both, none = backend.score_options(ask)
    assert all(b["top_logprobs"] == 20 and b["logprobs"] is True for b in server.seen)
    assert both.logprobs["A"] == pytest.approx(math.log(math.exp(-0.5) + math.exp(-2.0)))
    assert both.logprobs["B"] == pytest.approx(-9.0)
    assert both.logprobs["C"] == pytest.approx(-10.0 - 15 - 1)  # 20 tokens listed: floor = min(top) - 1
    assert both.error is None and backend.floored_options == 1
    assert none.logprobs == {} and "none of the options" in (none.error or "")


def test_top_logprobs_lists_the_servers_top_next_tokens() -> None:
    class Top(MockBackend):
        def top_logprobs(self, requests: list[ScoreRequest], k: int) -> list[list[tuple[str, float]]]:
            return [[("Yes", -0.2), ("No", -1.8), ("Maybe", -3.0)][:k] for _ in requests]

    with ChatServer(Top(), port=0) as server:
        [top] = make_backend(server.url).top_logprobs(
            [ScoreRequest.of([{"role": "user", "content": "?"}])], k=2
        )
    assert top == [("Yes", -0.2), ("No", -1.8)]
