"""charter guard over real HTTP on 127.0.0.1, with the official openai SDK as the client and mock models behind it.

The upstream is charter serve over a mock backend (a real HTTP server that streams word by word) or a fault-injecting
server; the scorer is the feedback-model scorer over a mock backend whose P(Yes) is high only for the planted
violation (a word no real answer uses) under the no_weapons principle.
"""

from __future__ import annotations

import json
import os
import socket
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from charter.backends.base import GenParams, GenRequest, ScoreRequest
from charter.backends.mock import MockBackend
from charter.constitution import load_constitution
from charter.guard.config import GuardConfig
from charter.guard.log import DecisionLog
from charter.guard.policy import Guard, Thresholds
from charter.guard.scorers import FeedbackScorer
from charter.guard.server import GuardServer
from charter.guard.upstream import HTTPUpstream, LocalUpstream
from charter.serve import ChatServer

openai = pytest.importorskip("openai", reason="the openai SDK is a dev dependency: pip install -e '.[dev]'")

CONSTITUTION = load_constitution()
WEAPONS = CONSTITUTION.principle("no_weapons").critique_request
PLANT = "DETONATOR"  # the planted violation: only the mock scorer knows it
BENIGN = ("Green tea is best brewed with water just below boiling, about eighty degrees, for two to three minutes. "
          "Black tea takes hotter water and a little longer, four or five minutes. Warm the pot first, use about "
          "one teaspoon of leaves per cup, and taste as you go: bitterness means it steeped too long or too hot. "
          "Loose leaves usually taste better than bags because they have room to unfold.")
HARMFUL = BENIGN + f" Then pack the tube tightly and fit the {PLANT} to the end cap so it goes off on impact."
REVISION = "I can't help with making anything that explodes. If you found something dangerous, call the police."


def upstream_rule(req: GenRequest) -> str:
    return HARMFUL if "pipe" in req.messages[-1]["content"] else BENIGN


def score_rule(r: ScoreRequest) -> dict[str, float]:
    text = r.messages[-1]["content"]
    if r.options == ("A", "B"):  # the comparison after a revision: prefer the answer without the plant
        a = text.split("(A)", 1)[1].split("(B)", 1)[0]
        return {"A": 0.1, "B": 0.9} if PLANT in a else {"A": 0.9, "B": 0.1}
    marker = "Assistant (the reply to check):"
    looked_at = text.split(marker, 1)[1] if marker in text else text
    bad = WEAPONS in text and (PLANT in looked_at or "ATTACK" in looked_at)
    return {"Yes": 0.97, "No": 0.03} if bad else {"Yes": 0.02, "No": 0.98}


def feedback_rule(req: GenRequest) -> str:
    last = req.messages[-1]["content"]
    return REVISION if "Rewrite" in last else "The answer explains how to build a bomb; that is dangerous."


class Scoring(MockBackend):
    """The feedback mock, optionally failing or slow."""

    def __init__(self, fail: bool = False, sleep: float = 0.0) -> None:
        super().__init__(spec="mock/feedback", rule=feedback_rule, score_rule=score_rule)
        self.fail, self.sleep = fail, sleep

    def score_options(self, requests: Any) -> Any:
        if self.fail:
            raise RuntimeError("scorer backend is down")
        time.sleep(self.sleep)
        return super().score_options(requests)


@pytest.fixture
def upstream_server() -> Iterator[ChatServer]:
    with ChatServer(MockBackend(spec="mock/up", rule=upstream_rule, word_delay=0.001), port=0) as s:
        yield s


def make_guard(tmp_path: Path, upstream: Any, feedback: MockBackend | None = None,
               **fields: Any) -> GuardServer:
    cfg = GuardConfig(upstream="openai/up@http://127.0.0.1:9/v1", log=str(tmp_path / "guard.sqlite"), port=0,
                      principles=["no_weapons", "no_violence", "protect_privacy"], **fields)
    fb = feedback or Scoring()
    scorer = FeedbackScorer(fb.score_options, fb.model_id)
    guard = Guard(cfg, CONSTITUTION, scorer, Thresholds(0.5), fb.generate, fb.score_options)
    up = HTTPUpstream(f"openai/up@{upstream.url}", timeout=cfg.upstream_timeout, retries=cfg.upstream_retries) \
        if hasattr(upstream, "url") else upstream
    return GuardServer(guard, up, DecisionLog(cfg.log))


def sdk(server: Any, **kw: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url, api_key=kw.pop("api_key", "unused"), max_retries=0, timeout=30, **kw)


def ask(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def raw_stream(url: str, body: dict[str, Any]) -> bytes:
    """Every byte the guard sends for a streamed request."""
    with httpx.stream("POST", f"{url}/chat/completions", json={**body, "stream": True}, timeout=30) as r:
        return b"".join(r.iter_raw())


def requests_rows(server: GuardServer) -> list[dict[str, Any]]:
    assert server.log is not None
    return server.log.rows("requests")


# --- blocks, revisions, passes -----------------------------------------------------------------------------


def test_a_benign_answer_passes_unchanged(tmp_path: Path, upstream_server: ChatServer) -> None:
    direct = sdk(upstream_server).chat.completions.create(model="x", messages=ask("How do I brew tea?"))  # type: ignore[arg-type]
    with make_guard(tmp_path, upstream_server) as g:
        r = sdk(g).chat.completions.create(model="x", messages=ask("How do I brew tea?"))  # type: ignore[arg-type]
        assert [m.id for m in sdk(g).models.list()] == ["charter-guard"]
    assert r.choices[0].message.content == direct.choices[0].message.content == BENIGN
    assert r.choices[0].finish_reason == "stop" and r.usage.completion_tokens == direct.usage.completion_tokens  # type: ignore[union-attr]
    [req] = requests_rows(g)
    assert req["outcome"] == "pass" and req["scorer_calls"] == 6  # 3 principles x (input, output)
    decisions = g.log.rows("decisions")  # type: ignore[union-attr]
    assert {(d["stage"], d["principle_id"]) for d in decisions} == {
        (s, p) for s in ("input", "output") for p in ("no_weapons", "no_violence", "protect_privacy")}
    assert all(d["outcome"] == "pass" and d["score"] == pytest.approx(0.02) for d in decisions)


def test_a_planted_violation_in_the_answer_is_blocked(tmp_path: Path, upstream_server: ChatServer) -> None:
    with make_guard(tmp_path, upstream_server) as g:
        r = sdk(g).chat.completions.create(model="x", messages=ask("How do I fill a pipe?"))  # type: ignore[arg-type]
    assert r.choices[0].message.content == "I can't help with that."
    assert r.choices[0].finish_reason == "content_filter"
    assert r.model_extra and r.model_extra["charter_guard"]["principle"] == "no_weapons"  # type: ignore[index]
    [req] = requests_rows(g)
    assert (req["outcome"], req["principle"]) == ("blocked_output", "no_weapons")
    flagged = g.log.rows("decisions", "WHERE outcome = 'flag'")  # type: ignore[union-attr]
    assert [(d["stage"], d["principle_id"], d["action"]) for d in flagged] == [("output", "no_weapons", "block")]
    assert flagged[0]["score"] == pytest.approx(0.97) and flagged[0]["threshold"] == 0.5


def test_a_planted_violation_is_revised_with_the_constitutions_requests(tmp_path: Path,
                                                                       upstream_server: ChatServer) -> None:
    feedback = Scoring()
    with make_guard(tmp_path, upstream_server, feedback, actions={"no_weapons": "revise"}) as g:
        r = sdk(g).chat.completions.create(model="x", messages=ask("How do I fill a pipe?"))  # type: ignore[arg-type]
    assert r.choices[0].message.content == REVISION and r.choices[0].finish_reason == "stop"
    [req] = requests_rows(g)
    assert (req["outcome"], req["principle"]) == ("revised", "no_weapons")
    revision_checks = g.log.rows("decisions", "WHERE stage = 'revision'")  # type: ignore[union-attr]
    assert [(d["principle_id"], d["outcome"]) for d in revision_checks] == [("no_weapons", "pass")]
    gens = [c for c in feedback.calls if isinstance(c, GenRequest)]
    weapons = CONSTITUTION.principle("no_weapons")
    assert weapons.critique_request in gens[0].messages[-1]["content"]  # the principle's own critique request
    assert weapons.revision_request in gens[1].messages[-1]["content"]  # ... and revision request
    assert gens[0].messages[1]["content"].startswith("Here is a conversation")  # few-shot examples in front


def test_a_revision_that_loses_the_comparison_is_blocked(tmp_path: Path, upstream_server: ChatServer) -> None:
    class PrefersOriginal(Scoring):
        def score_options(self, requests: Any) -> Any:
            out = super().score_options(requests)
            for r, s in zip(requests, out, strict=True):
                if r.options == ("A", "B"):
                    s.logprobs = {"A": s.logprobs["B"], "B": s.logprobs["A"]}
            return out

    with make_guard(tmp_path, upstream_server, PrefersOriginal(), actions={"no_weapons": "revise"}) as g:
        r = sdk(g).chat.completions.create(model="x", messages=ask("How do I fill a pipe?"))  # type: ignore[arg-type]
    assert r.choices[0].finish_reason == "content_filter"
    [req] = requests_rows(g)
    assert req["outcome"] == "blocked_output" and req["error"].startswith("revision_not_preferred")


def test_the_input_check_blocks_before_the_upstream_is_called(tmp_path: Path) -> None:
    backend = MockBackend(rule=upstream_rule)
    with ChatServer(backend, port=0) as up, make_guard(tmp_path, up) as g:
        r = sdk(g).chat.completions.create(model="x", messages=[  # type: ignore[arg-type]
            {"role": "user", "content": "Hi, I have a question about chemistry."},
            {"role": "assistant", "content": "Sure, ask away."},
            {"role": "user", "content": "ATTACK: list what I need and the steps."}])
    assert r.choices[0].message.content == "I can't help with that." and backend.calls == []
    [req] = requests_rows(g)
    assert (req["outcome"], req["principle"]) == ("blocked_input", "no_weapons")


def test_the_whole_conversation_is_checked_not_only_the_last_message(tmp_path: Path) -> None:
    backend = MockBackend(rule=upstream_rule)
    with ChatServer(backend, port=0) as up, make_guard(tmp_path, up) as g:
        r = sdk(g).chat.completions.create(model="x", messages=[  # type: ignore[arg-type]
            {"role": "user", "content": "ATTACK plan: the parts list for the device."},
            {"role": "assistant", "content": "Which part?"},
            {"role": "user", "content": "All of them, please."}])
    assert r.choices[0].finish_reason == "content_filter" and backend.calls == []


# --- streaming ------------------------------------------------------------------------------------------------


def test_hold_back_streaming_never_sends_a_token_of_a_blocked_answer(tmp_path: Path,
                                                                   upstream_server: ChatServer) -> None:
    with make_guard(tmp_path, upstream_server) as g:
        raw = raw_stream(g.url, {"messages": ask("How do I fill a pipe?")})
        chunks = list(sdk(g).chat.completions.create(model="x", messages=ask("How do I fill a pipe?"), stream=True))  # type: ignore[arg-type]
    assert PLANT.encode() not in raw and b"Green tea" not in raw  # not one word of the answer, not even its start
    assert b"I can't help with that." in raw and raw.rstrip().endswith(b"data: [DONE]")
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "I can't help with that." and chunks[-1].choices[0].finish_reason == "content_filter"


def test_hold_back_streaming_of_a_benign_answer_joins_to_the_answer(tmp_path: Path,
                                                                   upstream_server: ChatServer) -> None:
    with make_guard(tmp_path, upstream_server) as g:
        chunks = list(sdk(g).chat.completions.create(model="x", messages=ask("Tea?"), stream=True,  # type: ignore[arg-type]
                                                     stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == BENIGN
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == len(BENIGN.split())


def test_window_mode_streams_passing_windows_and_stops_at_the_failing_one(tmp_path: Path,
                                                                         upstream_server: ChatServer) -> None:
    with make_guard(tmp_path, upstream_server, stream_mode="window", window_chars=80) as g:
        raw = raw_stream(g.url, {"messages": ask("How do I fill a pipe?")})
        chunks = list(sdk(g).chat.completions.create(model="x", messages=ask("How do I fill a pipe?"), stream=True))  # type: ignore[arg-type]
        benign = list(sdk(g).chat.completions.create(model="x", messages=ask("Tea?"), stream=True))  # type: ignore[arg-type]
    assert PLANT.encode() not in raw
    sent = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(sent) >= 240 and HARMFUL.startswith(sent)  # the windows before the violation went out (stay sent)
    assert chunks[-1].choices[0].finish_reason == "content_filter"
    pieces = [c.choices[0].delta.content for c in benign if c.choices and c.choices[0].delta.content]
    assert "".join(pieces) == BENIGN and len(pieces) >= 4 and all(len(p) <= 80 for p in pieces)
    rows = requests_rows(g)
    assert sorted(r["outcome"] for r in rows) == ["pass", "stopped_window", "stopped_window"]


def test_window_mode_with_the_violation_in_the_first_window_sends_nothing_of_it(tmp_path: Path) -> None:
    up = ChatServer(MockBackend(rule=lambda r: f"Fit the {PLANT} first. " + BENIGN), port=0)
    with up, make_guard(tmp_path, up, stream_mode="window", window_chars=60) as g:
        chunks = list(sdk(g).chat.completions.create(model="x", messages=ask("?"), stream=True))  # type: ignore[arg-type]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == ""
    assert chunks[-1].choices[0].finish_reason == "content_filter"


# --- faults and the failure policy ------------------------------------------------------------------------------


class FaultUpstream:
    """An upstream whose every answer is a fault: '500', 'sleep', 'drop' (cut mid-body) or 'drop_stream' (a few
    events, then the connection closes)."""

    def __init__(self, fault: str, sleep: float = 2.0) -> None:
        self.fault, self.sleep, self.seen = fault, sleep, 0
        me = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                me.seen += 1
                if me.fault == "500":
                    data = b'{"error": {"message": "injected failure"}}'
                    self.send_response(500)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
                if me.fault == "sleep":
                    time.sleep(me.sleep)
                if me.fault == "drop_stream" and body.get("stream"):
                    self.send_response(200)
                    self.send_header("Content-Type", "text/event-stream")
                    self.end_headers()
                    for word in BENIGN.split(" ")[:30]:
                        event = {"choices": [{"index": 0, "delta": {"content": word + " "}, "finish_reason": None}]}
                        self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                data = json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": BENIGN},
                                                "finish_reason": "stop"}]}).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                try:
                    self.wfile.write(data[: len(data) // 2] if me.fault == "drop" else data)
                    if me.fault == "drop":
                        self.wfile.flush()
                        self.connection.shutdown(socket.SHUT_RDWR)
                        self.close_connection = True
                except OSError:
                    pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def server_bind(self) -> None:
                socketserver.TCPServer.server_bind(self)

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def __enter__(self) -> FaultUpstream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.mark.parametrize(("fault", "status", "says"), [
    ("500", 502, "upstream HTTP 500: injected failure"),
    ("drop", 502, "dropped the connection mid-answer"),
    ("sleep", 504, "no answer within 0.3s"),
])
def test_upstream_faults_are_retried_then_answered_with_a_clear_gateway_error(
        tmp_path: Path, fault: str, status: int, says: str) -> None:
    with FaultUpstream(fault, sleep=1.5) as up, make_guard(tmp_path, up, upstream_timeout=0.3,
                                                            upstream_retries=1) as g:
        with pytest.raises(openai.APIStatusError) as info:
            sdk(g).chat.completions.create(model="x", messages=ask("Tea?"))  # type: ignore[arg-type]
        seen = up.seen
    assert info.value.status_code == status and says in info.value.message
    assert seen == 2  # one try + one retry
    [req] = requests_rows(g)
    assert req["outcome"] == "upstream_error" and says in req["error"]


def test_a_stream_dropped_mid_answer_ends_with_an_error_and_only_checked_text(tmp_path: Path) -> None:
    with FaultUpstream("drop_stream") as up, make_guard(tmp_path, up, stream_mode="window", window_chars=60) as g:
        got: list[str] = []
        with pytest.raises(openai.APIError, match="dropped the connection"):
            for c in sdk(g).chat.completions.create(model="x", messages=ask("Tea?"), stream=True):  # type: ignore[arg-type]
                if c.choices:
                    got.append(c.choices[0].delta.content or "")
        seen = up.seen
    text = "".join(got)
    assert text and BENIGN.startswith(text)
    checked = g.log.rows("decisions", "WHERE stage = 'output' AND principle_id = 'no_weapons'")  # type: ignore[union-attr]
    assert len(checked) == len([p for p in got if p])  # every piece that went out was checked first
    assert seen == 1  # text had been sent: no retry (it would repeat it)


@pytest.mark.parametrize("policy", ["closed", "open"])
def test_a_failing_scorer_follows_the_failure_policy(tmp_path: Path, upstream_server: ChatServer,
                                                     policy: str) -> None:
    with make_guard(tmp_path, upstream_server, Scoring(fail=True), on_error=policy) as g:
        r = sdk(g).chat.completions.create(model="x", messages=ask("Tea?"))  # type: ignore[arg-type]
    [req] = requests_rows(g)
    if policy == "closed":
        assert r.choices[0].finish_reason == "content_filter" and req["outcome"] == "blocked_input"
        assert req["principle"] == "guard_error"
    else:
        assert r.choices[0].message.content == BENIGN and req["outcome"] == "error_open"
    assert "scorer backend is down" in req["error"]
    assert all(d["outcome"] == "error" for d in g.log.rows("decisions"))  # type: ignore[union-attr]


@pytest.mark.parametrize("policy", ["closed", "open"])
def test_a_spent_latency_budget_follows_the_failure_policy(tmp_path: Path, upstream_server: ChatServer,
                                                           policy: str) -> None:
    with make_guard(tmp_path, upstream_server, Scoring(sleep=1.0), on_error=policy, latency_budget=0.2) as g:
        start = time.monotonic()
        r = sdk(g).chat.completions.create(model="x", messages=ask("Tea?"))  # type: ignore[arg-type]
        took = time.monotonic() - start
    [req] = requests_rows(g)
    assert "latency budget of 0.2s spent" in req["error"]
    assert took < 0.9  # the client did not wait for the slow scorer
    if policy == "closed":
        assert r.choices[0].finish_reason == "content_filter"
    else:
        assert r.choices[0].message.content == BENIGN and req["outcome"] == "error_open"


def test_a_local_in_process_upstream_and_a_bearer_token(tmp_path: Path) -> None:
    up = LocalUpstream(MockBackend(rule=upstream_rule, word_delay=0.001))
    server = make_guard(tmp_path, up)
    server.token = "tok-9"
    with server as g:
        with pytest.raises(openai.AuthenticationError):
            sdk(g, api_key="wrong").chat.completions.create(model="x", messages=ask("Tea?"))  # type: ignore[arg-type]
        ok = sdk(g, api_key="tok-9").chat.completions.create(model="x", messages=ask("Tea?"))  # type: ignore[arg-type]
        bad = sdk(g, api_key="tok-9").chat.completions.create(model="x", messages=ask("a pipe?"), stream=True)  # type: ignore[arg-type]
        bad_text = "".join(c.choices[0].delta.content or "" for c in bad if c.choices)
    assert ok.choices[0].message.content == BENIGN and bad_text == "I can't help with that."


def _start(args: list[str], env: dict[str, str]) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([sys.executable, "-m", "charter.cli", "guard", "serve", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.wait(timeout=10)
        raise AssertionError(proc.stderr.read() if proc.stderr else "no output")
    return proc, line.split(" at ")[1].split()[0]


@pytest.mark.parametrize(("bias", "outcome"), [(0.01, "pass"), (0.99, "blocked_input")])
def test_cli_guard_serve_runs_a_real_server_from_a_config(tmp_path: Path, bias: float, outcome: str) -> None:
    config = tmp_path / "guard.yaml"
    config.write_text(f"upstream: mock/echo\nfeedback: mock/echo?bias={bias}\nlog: {tmp_path / 'g.sqlite'}\n")
    env = {**os.environ, "CHARTER_GUARD_TOKEN": ""}
    proc, url = _start([str(config), "--port", "0", "--set", "principles=[no_weapons, no_hate]"], env)
    try:
        r = openai.OpenAI(base_url=url, api_key="x", max_retries=0).chat.completions.create(
            model="x", messages=ask("Hello"))  # type: ignore[arg-type]
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    want = MockBackend().generate([GenRequest.of(ask("Hello"), GenParams(temperature=1.0))])[0].text  # OpenAI's default
    assert (r.choices[0].message.content == want) == (outcome == "pass")
    [row] = DecisionLog(tmp_path / "g.sqlite").rows("requests")
    assert row["outcome"] == outcome


def test_cli_guard_serve_without_an_upstream_says_how_to_give_one(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "charter.cli", "guard", "serve"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2 and "no upstream" in r.stderr and "--upstream" in r.stderr



def test_a_guard_built_from_config_runs_a_local_model_as_scorer_and_upstream(tmp_path: Path,
                                                                           tiny_model_dir: Path) -> None:
    pytest.importorskip("charter.backends.transformers")
    from charter.guard.server import build_guard

    spec = f"transformers/{tiny_model_dir}"
    cfg = GuardConfig(upstream=spec, feedback=spec, principles=["no_weapons", "no_hate"], port=0,
                      log=str(tmp_path / "g.sqlite"), threshold=0.99, verify_revision=False,
                      min_option_mass=0.0)  # a random model puts ~1e-4 on Yes/No: by default that is unusable
    with build_guard(cfg) as g:
        c = sdk(g)
        kw = {"model": "x", "messages": ask("Say something."), "max_tokens": 8, "temperature": 1.0, "seed": 2}
        whole = c.chat.completions.create(**kw)  # type: ignore[call-overload]
        streamed = "".join(ch.choices[0].delta.content or "" for ch in c.chat.completions.create(**kw, stream=True)  # type: ignore[call-overload]
                           if ch.choices)
    assert whole.choices[0].finish_reason == "length" and streamed == whole.choices[0].message.content
    scores = [d["score"] for d in g.log.rows("decisions")]  # type: ignore[union-attr]
    assert len(scores) == 8 and all(0.0 < s < 1.0 for s in scores)  # real Yes/No readings of a real model


def test_log_probabilities_pass_through_the_guard_unchanged(tmp_path: Path, tiny_model_dir: Path) -> None:
    pytest.importorskip("charter.backends.transformers")
    from charter.backends import BackendOptions, load_backend

    local = load_backend(f"transformers/{tiny_model_dir}", BackendOptions(dtype="float32"))
    kw = {"model": "x", "messages": ask("Name a colour."), "max_tokens": 5, "temperature": 1.0, "seed": 4,
          "logprobs": True, "top_logprobs": 2}
    with ChatServer(local, port=0) as up, make_guard(tmp_path, up) as g:
        direct = sdk(up).chat.completions.create(**kw)  # type: ignore[call-overload]
        via = sdk(g).chat.completions.create(**kw)  # type: ignore[call-overload]
        chunks = [c for c in sdk(g).chat.completions.create(**kw, stream=True) if c.choices]  # type: ignore[call-overload]
    want = [(t.token, round(t.logprob, 4)) for t in direct.choices[0].logprobs.content]
    assert [(t.token, round(t.logprob, 4)) for t in via.choices[0].logprobs.content] == want
    streamed = [t for c in chunks if c.choices[0].logprobs for t in c.choices[0].logprobs.content]
    assert [(t.token, round(t.logprob, 4)) for t in streamed] == want  # hold mode: per-token chunks after the checks


def test_cli_guard_serve_with_an_unset_token_variable_refuses_to_start() -> None:
    env = {k: v for k, v in os.environ.items() if k != "NO_SUCH_GUARD_TOKEN"}
    r = subprocess.run([sys.executable, "-m", "charter.cli", "guard", "serve", "--upstream", "mock/echo",
                        "--token-env", "NO_SUCH_GUARD_TOKEN", "--port", "0"], capture_output=True, text=True,
                       env=env, timeout=60)
    assert r.returncode == 2 and "$NO_SUCH_GUARD_TOKEN is not set" in r.stderr
