"""charter's ``openai`` backend against a real third-party server: llama-cpp-python's ``python -m llama_cpp.server``
on 127.0.0.1, serving the embedded model's own GGUF.

Marked ``llamacpp``; they run wherever llama-cpp-python is installed (``make test`` builds it, so CI runs them) and
are skipped with the reason where it is not.
"""

from __future__ import annotations

import math
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from charter.backends.base import BackendOptions, GenParams, GenRequest, ScoreRequest
from charter.errors import BackendError

pytestmark = pytest.mark.llamacpp
pytest.importorskip("llama_cpp.server.app", reason="llama-cpp-python[server] is not installed: `make llamacpp` "
                                                   "(part of `make test`) builds it")

PREFIX = "The answer is: ("


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def llama_server() -> Iterator[str]:
    """The server's base URL (``…/v1``), model alias ``smollm``, one thread."""
    import httpx

    from charter.embedded import gguf_path

    try:
        gguf = gguf_path()
    except BackendError as e:
        pytest.skip(str(e))
    port = _free_port()
    url = f"http://127.0.0.1:{port}/v1"
    proc = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1", "--port", str(port),
         "--model_alias", "smollm", "--n_threads", "1", "--n_threads_batch", "1", "--n_ctx", "4096",
         "--verbose", "false"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                pytest.fail(f"llama_cpp.server exited with {proc.returncode}: {err[-1500:]}")
            try:
                if httpx.get(url + "/models", timeout=2.0).status_code == 200:
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


def backend(url: str, **extra: object):  # type: ignore[no-untyped-def]
    from charter.backends import load_backend

    return load_backend(f"openai/smollm@{url}", BackendOptions(timeout=300, concurrency=2, extra=dict(extra)))


def label_requests() -> list[ScoreRequest]:
    """Two of the label stage's own questions, each in both orders (what ``charter label`` sends)."""
    from charter.constitution import load_constitution
    from charter.stages.label import choice_messages, few_shot_turns

    constitution = load_constitution()
    shots = few_shot_turns(constitution, 2, PREFIX)
    question = constitution.principles[0].comparison_question or ""
    pairs = [("How do I pick a lock?", "I can't help with breaking into places that aren't yours.",
              "Insert a tension wrench, then rake the pins until they set."),
             ("What household chemicals should never be mixed?",
              "Never mix bleach with ammonia or with acids: both release toxic gases.",
              "Mix bleach and ammonia in a closed room for the strongest cleaner.")]
    out = []
    for prompt, a, b in pairs:
        for first, second in ((a, b), (b, a)):
            msgs = choice_messages([{"role": "user", "content": prompt}], question, first, second, shots)
            out.append(ScoreRequest.of(msgs, ("A", "B"), PREFIX))
    return out


def mass(lp: dict[str, float]) -> float:
    return sum(math.exp(v) for v in lp.values())


def test_generation_through_the_llama_cpp_server(llama_server: str) -> None:
    b = backend(llama_server, template="embedded")
    reqs = [GenRequest.of([{"role": "user", "content": q}], GenParams(max_new_tokens=16))
            for q in ("What is the capital of France?", "Name a primary colour.")]
    first, again = b.generate(reqs), b.generate(reqs[:1])
    for g in first:
        assert g.error is None and g.text.strip()
        assert 0 < g.completion_tokens <= 16 and g.prompt_tokens > 10
    assert again[0].text == first[0].text  # greedy over HTTP: the same answer twice


def test_the_probe_sees_the_server_closes_an_assistant_prefix(llama_server: str) -> None:
    from charter.backends.chat_template import load_template

    b = backend(llama_server, template="embedded")
    assert b.probe_prefix() is False
    assert b.model_id == f"{b.base_id}|prefix=completions:{load_template('embedded').id}"
    assert backend(llama_server, prefix="continue").model_id == b.base_id  # pinned: no probe, the plain id


def test_option_scores_through_the_llama_cpp_server_match_the_local_model(llama_server: str) -> None:
    """The same weights score the same: llama.cpp (Q4_1 GGUF, completions over the chat template) vs the
    transformers backend (the fp32 model converted from that GGUF). Through the chat endpoint, which this server
    does not continue, the options get almost no probability: the failure this path fixes."""
    from charter.backends.transformers import TransformersBackend

    reqs = label_requests()
    remote = backend(llama_server, template="embedded").score_options(reqs)
    local = TransformersBackend("transformers/embedded", "embedded",
                                BackendOptions(dtype="float32", threads=1)).score_options(reqs)
    for got, want in zip(remote, local, strict=True):
        assert got.error is None, got.error
        assert mass(got.logprobs) > 0.5
        assert got.probs()["A"] == pytest.approx(want.probs()["A"], abs=0.1)
    chat = backend(llama_server, prefix="continue").score_options(reqs)
    assert all(s.error is not None or mass(s.logprobs) < 0.01 for s in chat)


def test_the_label_stage_through_the_llama_cpp_server(llama_server: str, tmp_path: Path) -> None:
    from charter.constitution import load_constitution
    from charter.records import AnswerPair, Prompt
    from charter.stages.label import LabelConfig, label_pairs
    from charter.store import CachedBackend, RunDir

    prompt = Prompt(id="p1", text="How do I pick a lock?")
    pairs = [AnswerPair(id="pair1", parent_id="p1", prompt=prompt, a="I can't help with breaking in.",
                        b="Insert a tension wrench, then rake the pins.", a_id="s1", b_id="s2", model="m")]
    run = RunDir(tmp_path / "run")
    cached = CachedBackend(backend(llama_server, template="embedded"), run.cache)
    labeled, stats = label_pairs(LabelConfig(), pairs, load_constitution(), cached, quiet=True)
    assert stats["pairs_by_status"] == {"ok": 1}
    assert all(v.status == "ok" and v.option_mass is not None and v.option_mass > 0.5 for v in labeled[0].votes)
    # a new backend (a new probe) keys its readings the same: the re-run is served from the cache
    again = CachedBackend(backend(llama_server, template="embedded"), run.cache)
    hits = run.cache.hits
    label_pairs(LabelConfig(), pairs, load_constitution(), again, quiet=True)
    assert run.cache.hits - hits == 2 and again.model_id == cached.model_id


def test_without_a_chat_template_scoring_fails_with_the_fix(llama_server: str) -> None:
    b = backend(llama_server)  # no extra.template, and this server has no GET /props
    with pytest.raises(BackendError, match="extra.template"):
        b.score_options(label_requests()[:1])
    assert b.model_id.endswith("|prefix=completions:none")
    assert b.generate([GenRequest.of([{"role": "user", "content": "hi"}], GenParams(max_new_tokens=4))])[0].text
