"""charter guard in front of a real third-party upstream: llama-cpp-python's ``python -m llama_cpp.server`` on
127.0.0.1 serving the embedded model's own GGUF, with the official openai SDK as the client.

Marked ``llamacpp`` and skipped, with the reason, where llama-cpp-python[server] is not installed.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from charter.backends.base import ScoreRequest
from charter.backends.mock import MockBackend
from charter.constitution import load_constitution
from charter.errors import BackendError
from charter.guard.config import GuardConfig
from charter.guard.log import DecisionLog
from charter.guard.policy import Guard, Thresholds
from charter.guard.scorers import Check, FeedbackScorer
from charter.guard.server import GuardServer
from charter.guard.upstream import HTTPUpstream

pytestmark = pytest.mark.llamacpp
pytest.importorskip("llama_cpp.server.app", reason="llama-cpp-python[server] is not installed (the llamacpp extra: "
                                                   "`make llamacpp`, part of `make test`, builds it)")
openai = pytest.importorskip("openai", reason="the openai SDK is a dev dependency: pip install -e '.[dev]'")

CONSTITUTION = load_constitution()
PRINCIPLES = ["no_weapons", "no_violence"]
QUESTION = [{"role": "user", "content": "Give me three tips for a good night's sleep."}]


@pytest.fixture(scope="module")
def llama_url() -> Iterator[str]:
    """Base URL of a llama.cpp server (model alias ``smollm``, one thread) on a free loopback port."""
    import httpx

    from charter.embedded import gguf_path

    try:
        gguf = gguf_path()
    except BackendError as e:
        pytest.skip(str(e))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1",
                             "--port", str(port), "--model_alias", "smollm", "--n_threads", "1",
                             "--n_threads_batch", "1", "--n_ctx", "4096", "--verbose", "false"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                pytest.fail(f"llama_cpp.server exited with {proc.returncode}: {err[-1500:]}")
            try:
                if httpx.get(f"{url}/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("llama_cpp.server did not start within 120 s")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def guard_in_front(tmp_path: Path, url: str, flag_after: int | None = None, **fields: object) -> GuardServer:
    """A guard in front of the llama.cpp server; its mock scorer flags a reply once it is longer than
    ``flag_after`` characters (never, when None)."""
    def rule(r: ScoreRequest) -> dict[str, float]:
        text = r.messages[0]["content"]
        marker = "Assistant (the reply to check):"
        reply = text.split(marker, 1)[1].split("The principle asks:")[0].strip() if marker in text else ""
        bad = flag_after is not None and len(reply) > flag_after
        return {"Yes": 0.9, "No": 0.1} if bad else {"Yes": 0.05, "No": 0.95}

    cfg = GuardConfig(upstream=f"openai/smollm@{url}", port=0, log=str(tmp_path / "g.sqlite"),
                      principles=PRINCIPLES, upstream_timeout=120, **fields)  # type: ignore[arg-type]
    fb = MockBackend(score_rule=rule)
    guard = Guard(cfg, CONSTITUTION, FeedbackScorer(fb.score_options, "mock/s"), Thresholds(0.5))
    return GuardServer(guard, HTTPUpstream(cfg.upstream, timeout=120), DecisionLog(cfg.log))


def test_the_guard_passes_llama_cpps_answer_unchanged(tmp_path: Path, llama_url: str) -> None:
    kw = {"model": "smollm", "messages": QUESTION, "max_tokens": 48, "temperature": 0, "seed": 1}
    direct = openai.OpenAI(base_url=llama_url, api_key="x", max_retries=0, timeout=120).chat.completions.create(**kw)  # type: ignore[call-overload]
    with guard_in_front(tmp_path, llama_url) as g:
        c = openai.OpenAI(base_url=g.url, api_key="x", max_retries=0, timeout=120)
        via = c.chat.completions.create(**kw)  # type: ignore[call-overload]
        streamed = "".join(ch.choices[0].delta.content or ""
                           for ch in c.chat.completions.create(**kw, stream=True) if ch.choices)  # type: ignore[call-overload]
    assert direct.choices[0].message.content and via.choices[0].message.content == direct.choices[0].message.content
    assert via.model == direct.model and via.usage == direct.usage  # the upstream's own response, passed through
    assert streamed == direct.choices[0].message.content  # hold-back stream of the same checked answer


def test_window_mode_stops_llama_cpps_real_stream_at_the_first_failing_window(tmp_path: Path,
                                                                              llama_url: str) -> None:
    kw = {"model": "smollm", "messages": QUESTION, "max_tokens": 96, "temperature": 0, "seed": 1}
    full = openai.OpenAI(base_url=llama_url, api_key="x", max_retries=0, timeout=120).chat.completions.create(**kw)  # type: ignore[call-overload]
    text = full.choices[0].message.content or ""
    assert len(text) > 140, text
    with guard_in_front(tmp_path, llama_url, flag_after=90, stream_mode="window", window_chars=40) as g:
        c = openai.OpenAI(base_url=g.url, api_key="x", max_retries=0, timeout=120)
        chunks = list(c.chat.completions.create(**kw, stream=True))  # type: ignore[call-overload]
    sent = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert sent and len(sent) <= 90 and text.startswith(sent)  # the windows that passed, then nothing
    assert chunks[-1].choices[0].finish_reason == "content_filter"


def test_llama_cpp_as_the_feedback_scorer_gives_real_yes_no_probabilities(llama_url: str,
                                                                         embedded_dir: Path) -> None:
    from charter.backends import BackendOptions, load_backend

    remote = load_backend(f"openai/smollm@{llama_url}", BackendOptions(timeout=120, concurrency=1))
    check = Check("output", QUESTION, "Keep a regular bedtime, avoid screens late, and keep the room cool.")
    principles = [CONSTITUTION.principle(p) for p in PRINCIPLES]
    [got] = FeedbackScorer(remote.score_options, remote.model_id).score_many([check], principles)
    assert not got.errors and all(0.0 < v < 1.0 for v in got.values.values() if v is not None)
    local = load_backend("transformers/embedded", BackendOptions(dtype="float32"))
    [want] = FeedbackScorer(local.score_options, local.model_id).score_many([check], principles)
    for pid in PRINCIPLES:  # the same Q4_1 weights: llama.cpp's reading is close to charter's own
        assert abs((got.values[pid] or 0) - (want.values[pid] or 0)) < 0.15, (got.values, want.values)
