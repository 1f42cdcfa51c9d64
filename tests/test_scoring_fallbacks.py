"""Scoring fallbacks never pass as readings: floored options, servers that ignore the assistant prefix, and the GRPO
feedback reward (same reader, same call cache as the label stage). Real HTTP on 127.0.0.1."""

from __future__ import annotations

import json
import socketserver
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from charter.backends import BackendOptions
from charter.backends.base import ScoreRequest
from charter.backends.mock import MockBackend
from charter.backends.openai import OpenAIBackend
from charter.constitution import load_constitution
from charter.evaluation.judge import Choice, ask
from charter.records import AnswerPair, Prompt
from charter.stages.label import LabelConfig, label_pairs, trust_warnings
from charter.store import CachedBackend, CallCache

TopFn = Callable[[dict[str, Any]], list[tuple[str, float]]]


def _tokens(messages: list[dict[str, str]], body: dict[str, Any], prefix: str) -> int:
    """A chat-template token count: 3 header + words + 1 end-of-turn per message, 3 for an opened turn.

    ``prefix``: "honours" keeps a final assistant message open when the request asks (vLLM); "ignores" always closes
    it and opens a new turn; "always" always keeps a final assistant message open (llama.cpp)."""
    n = sum(3 + len(m["content"].split()) + 1 for m in messages)
    keep_open = messages[-1]["role"] == "assistant" and (
        prefix == "always" or (prefix == "honours" and body.get("continue_final_message")))
    return n - 1 if keep_open else n + 3


@contextmanager
def chat_server(top: TopFn, prefix: str = "honours") -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """An OpenAI-style server whose next-token top list is ``top(body)`` and whose usage counts follow ``prefix``."""
    seen: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append(body)
            pairs = top(body)[: int(body.get("top_logprobs") or 1)]
            listed = [{"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in pairs]
            data = {"choices": [{"index": 0, "message": {"role": "assistant", "content": pairs[0][0]},
                                 "finish_reason": "length",
                                 "logprobs": {"content": [{**listed[0], "top_logprobs": listed}]}}],
                    "usage": {"prompt_tokens": _tokens(body["messages"], body, prefix), "completion_tokens": 1}}
            payload = json.dumps(data).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    class Server(ThreadingHTTPServer):
        daemon_threads = True

        def server_bind(self) -> None:
            socketserver.TCPServer.server_bind(self)

    httpd = Server(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/v1", seen
    finally:
        httpd.shutdown()
        httpd.server_close()


def _backend(url: str) -> OpenAIBackend:
    return OpenAIBackend(f"openai/m@{url}", f"m@{url}", BackendOptions(timeout=5.0, max_retries=0, concurrency=2))


def _filler(n: int = 18) -> list[tuple[str, float]]:
    return [(f"w{i}", -6.0 - i * 0.1) for i in range(n)]


def _only_a(body: dict[str, Any]) -> list[tuple[str, float]]:
    """The server lists "A" but not "B" among its top 20: B's log-probability is unknown."""
    return [("A", -3.0), ("Sure", -0.5), *_filler()]


def _pairs(n: int) -> list[AnswerPair]:
    return [AnswerPair(id=f"p{i}", prompt=Prompt(id=f"q{i}", text=f"question {i}"), a=f"answer one {i}",
                       b=f"answer two is longer {i}", a_id=f"a{i}", b_id=f"b{i}", model="m") for i in range(n)]


def _a_and_b_for_pair_zero(body: dict[str, Any]) -> list[tuple[str, float]]:
    if any("question 0" in m["content"] for m in body["messages"]):
        return [("A", -1.0), ("B", -1.2), *_filler()]
    return _only_a(body)


def test_a_floored_option_is_its_own_vote_status_not_a_confident_label(tmp_path: Path) -> None:
    with chat_server(_a_and_b_for_pair_zero) as (url, _):
        backend = CachedBackend(_backend(url), CallCache(tmp_path / "calls.sqlite"))
        labeled, stats = label_pairs(LabelConfig(few_shot=0), _pairs(3), load_constitution(None), backend,
                                     quiet=True)
    assert stats["votes_by_status"] == {"floored": 2, "ok": 1}
    assert [x.status for x in labeled] == ["ok", "no_usable_vote", "no_usable_vote"]
    assert labeled[1].p_a is None and labeled[1].votes[0].status.startswith("floored")
    assert any("floored" in w for w in trust_warnings(stats))


def test_a_judge_reading_with_a_floored_option_is_unusable() -> None:
    with chat_server(_only_a) as (url, _):
        [reading] = ask(_backend(url), [Choice(({"role": "user", "content": "A or B?"},), ("A", "B"), "Answer: (")])
    assert reading.label is None and reading.status.startswith("floored")


def _two_options(body: dict[str, Any]) -> list[tuple[str, float]]:
    return [("A", -0.4), ("B", -1.2), *_filler()]


@pytest.mark.parametrize("prefix", ["honours", "always", "ignores"])
def test_a_server_that_ignores_the_assistant_prefix_is_detected_and_said(prefix: str) -> None:
    """Probed once per backend; a server that closes the assistant turn is never read at the wrong position: its
    scores go over /completions with a chat template, and with none at hand the error says how to give one."""
    from charter.backends.openai import PROBE_USER
    from charter.errors import BackendError

    req = ScoreRequest.of([{"role": "user", "content": "Which is kinder?"}], ("A", "B"), "The answer is: (")
    with chat_server(_two_options, prefix) as (url, seen):
        backend = _backend(url)
        if prefix == "ignores":
            with pytest.raises(BackendError, match="extra.template"):
                backend.score_options([req, req])
            assert backend.score_path() == "completions"
        else:
            first = backend.score_options([req, req])
            again = backend.score_options([req])
            assert all(s.error is None and s.probs()["A"] > 0.5 for s in [*first, *again])
    probes = [b for b in seen if b["messages"][0] == PROBE_USER[0]]
    assert len(probes) == 3  # checked once per backend, not per request


def test_scores_without_a_prefix_need_no_check() -> None:
    req = ScoreRequest.of([{"role": "user", "content": "A or B?"}], ("A", "B"))
    with chat_server(_two_options, "ignores") as (url, seen):
        [scores] = _backend(url).score_options([req])
    assert scores.error is None and len(seen) == 1


# --- the GRPO feedback reward ---------------------------------------------------------------------------------


def test_feedback_reward_refuses_readings_the_label_stage_refuses(tmp_path: Path) -> None:
    from charter.train.online import FeedbackReward

    def off_options(r: ScoreRequest) -> dict[str, float]:  # the options get 2e-4 of the probability
        return {"A": 1e-4, "B": 1e-4}

    reward = FeedbackReward(MockBackend(score_rule=off_options))
    got = reward([[{"role": "user", "content": "hi"}]], [[{"role": "assistant", "content": "hello"}]])
    assert got == [None] and reward.failed == 1 and reward.statuses == {"off_options": 1}

    with chat_server(_only_a) as (url, _):
        floored = FeedbackReward(_backend(url))
        got = floored([[{"role": "user", "content": "hi"}]], [[{"role": "assistant", "content": "hello"}]])
    assert got == [None] and floored.statuses == {"floored": 1}

    fine = FeedbackReward(MockBackend(bias=0.8))
    assert fine(["hi"], ["hello"]) == [pytest.approx(0.8)]


def test_grpo_feedback_reward_goes_through_the_run_call_cache(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import charter.train.online as online
    from charter.config import RunConfig
    from charter.pipeline import Session, stage_online
    from charter.store import RunDir

    got: dict[str, Any] = {}

    def fake_train(cfg: Any, prompts: Any, out: Path, base: str, rm: Any = None, feedback: Any = None) -> dict:
        got["feedback"] = feedback
        return {}

    monkeypatch.setattr(online, "train_online", fake_train)
    cfg = RunConfig.model_validate({"feedback": "mock/echo?bias=0.7", "online": {"reward": "feedback"},
                                    "prompts": {"red_team_limit": 1, "helpful_limit": 0}})
    run = RunDir(tmp_path / "run")
    stage_online(Session(cfg, run, quiet=True))
    feedback = got["feedback"]
    assert isinstance(feedback, CachedBackend) and feedback.cache.path == run.cache.path
    reward = online.FeedbackReward(feedback)
    reward(["hi"], ["hello"])
    reward(["hi"], ["hello"])
    assert run.cache.count() == 1 and run.cache.hits == 1
