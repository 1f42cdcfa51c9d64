"""``charter guard serve``: an OpenAI-compatible chat-completions proxy that applies the constitution at run time.

For each request: the whole conversation is checked (input); if it passes, the upstream answers; the answer is
checked with the whole conversation (output); a flagged answer is blocked or revised (:mod:`charter.guard.policy`).
A blocked answer is the config's short ``refusal`` with ``finish_reason: "content_filter"``; a passing answer is the
upstream's own response, unchanged. Every decision is logged (:mod:`charter.guard.log`).

Streaming (``stream: true``):

* ``stream_mode: hold`` (default) — nothing reaches the client before the whole answer has been checked, so a
  block or a revision replaces it cleanly; the checked answer is then sent as chunks.
* ``stream_mode: window`` — the upstream streams; every ``window_chars`` characters (cut at a space) the answer so
  far is checked, and the window is sent once it passes. At the first window that fails, the stream ends with
  ``finish_reason: "content_filter"``. **What was sent stays sent**: window mode trades a clean replacement for
  latency, and a revise action acts as a block there (a revision cannot replace text the client already has).

Faults: an upstream that times out answers 504, one that fails (5xx after the retries, refused or dropped
connection) 502 — before anything was sent; after a window was sent, an error event ends the stream, and nothing
unchecked is ever sent. A failing check (the scorer's backend down, the latency budget spent) follows
``on_error``.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

from charter.backends.base import Message
from charter.guard.config import GuardConfig
from charter.guard.log import Decision, DecisionLog, RequestRecord
from charter.guard.policy import Guard
from charter.guard.scorers import Check
from charter.guard.upstream import Delta, Upstream, UpstreamError, answer_text
from charter.serve import ChunkWriter, HTTPFailure, HTTPService, Responder, chat_completion, parse_messages


class GuardServer(HTTPService):
    """The guard as an HTTP server; ``start()`` serves in a background thread.

    Args:
        guard: Checks and decisions.
        upstream: The model behind the guard.
        log: Where decisions go (None: not logged).
        token: Bearer token clients must send.
    """

    def __init__(self, guard: Guard, upstream: Upstream, log: DecisionLog | None = None,
                 token: str | None = None, host: str | None = None, port: int | None = None) -> None:
        cfg = guard.cfg
        super().__init__(host or cfg.host, cfg.port if port is None else port, token, cfg.name)
        self.guard = guard
        self.cfg = cfg
        self.upstream = upstream
        self.log = log

    # --- one request ----------------------------------------------------------------------------------------
    def chat(self, body: dict[str, Any], out: Responder) -> None:
        """Check, call the upstream, check, act; log every decision."""
        start = time.perf_counter()
        messages = parse_messages(body)
        if int(body.get("n") or 1) != 1:
            raise HTTPFailure(400, "n > 1 is not supported by charter guard: send one request per completion")
        stream = bool(body.get("stream"))
        rec = RequestRecord(f"g-{uuid.uuid4().hex[:16]}", stream, self.cfg.stream_mode if stream else "whole")
        decisions: list[Decision] = []
        budget = self.cfg.latency_budget
        deadline = time.monotonic() + budget if budget else None
        out = _LogFirst(out, lambda: self._write(rec, decisions, start))
        try:
            forced = []
            if self.cfg.check_input:
                t = time.perf_counter()
                res = self.guard.check(Check("input", messages), rec, decisions, deadline)
                rec.input_seconds = time.perf_counter() - t
                self._note_error(rec, res.error)
                if res.block:
                    rec.outcome, rec.principle = "blocked_input", res.block
                    self._refuse(out, rec, stream, body)
                    return
                forced = res.revise
            if stream and self.cfg.stream_mode == "window" and self.cfg.check_output and not forced:
                self._window(body, messages, out, rec, decisions, deadline)
                return  # (a request whose input asks for a revision is held back whole: it cannot be windowed)
            self._whole(body, messages, out, rec, decisions, deadline, forced, stream)
        except UpstreamError as e:
            rec.outcome, rec.error = "upstream_error", e.message
            raise HTTPFailure(e.status, e.message) from None
        finally:
            out.flush()  # the decisions are on disk before the last byte of the answer goes out

    def _write(self, rec: RequestRecord, decisions: list[Decision], start: float) -> None:
        rec.total_seconds = time.perf_counter() - start
        if self.log is not None:
            self.log.write(rec, decisions)

    def _note_error(self, rec: RequestRecord, error: str | None) -> None:
        if error:
            rec.error = rec.error or error
            if rec.outcome == "pass":
                rec.outcome = "error_open"  # an undecided check that the policy let through

    def _whole(self, body: dict[str, Any], messages: list[Message], out: Responder, rec: RequestRecord,
               decisions: list[Decision], deadline: float | None, forced: list[Any], stream: bool) -> None:
        t = time.perf_counter()
        completion = self.upstream.complete(body)
        rec.upstream_seconds = time.perf_counter() - t
        text, finish = answer_text(completion)
        revise = list(forced)
        if self.cfg.check_output:
            t = time.perf_counter()
            res = self.guard.check(Check("output", messages, text), rec, decisions, deadline)
            rec.output_seconds = time.perf_counter() - t
            self._note_error(rec, res.error)
            if res.block:
                rec.outcome, rec.principle = "blocked_output", res.block
                self._refuse(out, rec, stream, body)
                return
            revise += [p for p in res.revise if p not in revise]
        if revise:
            t = time.perf_counter()
            new, why = self.guard.revise(messages, text, revise, rec, decisions, deadline)
            rec.output_seconds += time.perf_counter() - t
            if new is None:
                rec.outcome, rec.principle, rec.error = "blocked_output", revise[0].id, why
                self._refuse(out, rec, stream, body)
                return
            rec.outcome, rec.principle = "revised", ",".join(p.id for p in revise)
            info = self._info(rec)
            if not stream:
                out.send_json(200, chat_completion(new, "stop", self.name, completion.get("usage"), None,
                                                   charter_guard=info))
                return
            self._send_whole(out, new, "stop", body, None, info)
            return
        if not stream:
            out.send_json(200, completion)  # the upstream's answer, unchanged
            return
        choice = completion["choices"][0]
        entries = ((choice.get("logprobs") or {}).get("content") or []) if body.get("logprobs") else []
        self._send_whole(out, text, finish, body, completion.get("usage"), None, entries)

    def _send_whole(self, out: Responder, text: str, finish: str, body: dict[str, Any],
                    usage: dict[str, int] | None, info: dict[str, Any] | None,
                    entries: list[dict[str, Any]] | None = None) -> None:
        """A checked answer as a stream: the role, the text (per token when log-probs came with it), the end."""
        w = ChunkWriter(self.name)
        out.start_stream()
        out.send_event(w.role())
        if entries and "".join(str(e.get("token", "")) for e in entries) == text:
            for e in entries:
                out.send_event(w.chunk({"content": e["token"]}, logprobs={"content": [e]}))
        elif text:
            out.send_event(w.chunk({"content": text}))
        extra = {"charter_guard": info} if info else {}
        out.send_event(w.chunk(finish=finish, **extra))
        if (body.get("stream_options") or {}).get("include_usage") and usage:
            out.send_event(w.usage({"prompt_tokens": int(usage.get("prompt_tokens") or 0),
                                    "completion_tokens": int(usage.get("completion_tokens") or 0)}))
        out.end_stream()

    def _info(self, rec: RequestRecord) -> dict[str, Any]:
        return {"request_id": rec.id, "outcome": rec.outcome, "principle": rec.principle}

    def _refuse(self, out: Responder, rec: RequestRecord, stream: bool, body: dict[str, Any]) -> None:
        info = self._info(rec)
        if not stream:
            out.send_json(200, chat_completion(self.cfg.refusal, "content_filter", self.name, None, None,
                                               charter_guard=info))
            return
        self._send_whole(out, self.cfg.refusal, "content_filter", body, None, info)

    # --- window mode ----------------------------------------------------------------------------------------
    def _window(self, body: dict[str, Any], messages: list[Message], out: Responder, rec: RequestRecord,
                decisions: list[Decision], deadline: float | None) -> None:
        """Stream each window once the answer up to it passes; stop at the first that fails."""
        w = ChunkWriter(self.name)
        started = False
        sent, pending, finish = "", "", "stop"
        size = self.cfg.window_chars
        t = time.perf_counter()
        deltas: Iterator[Delta] = self.upstream.stream(body)

        def begin() -> None:
            nonlocal started
            if not started:
                out.start_stream()
                out.send_event(w.role())
                started = True

        def timed() -> None:  # the time spent waiting for the upstream, before the answer's last bytes go out
            rec.upstream_seconds = time.perf_counter() - t - rec.output_seconds

        def passes(window: str) -> bool:
            t0 = time.perf_counter()
            res = self.guard.check(Check("output", messages, sent + window), rec, decisions, deadline)
            rec.output_seconds += time.perf_counter() - t0
            self._note_error(rec, res.error)
            flagged = res.block or (res.revise[0].id if res.revise else None)
            if flagged:
                rec.outcome, rec.principle = "stopped_window", flagged
            return not flagged

        try:
            for text, fin in deltas:
                pending += text
                finish = fin or finish
                while len(pending) >= size:
                    cut = pending.rfind(" ", size // 2, size) + 1 or size
                    window, rest = pending[:cut], pending[cut:]
                    if not passes(window):
                        timed()
                        self._stop(out, w, rec, begin)
                        return
                    begin()
                    out.send_event(w.chunk({"content": window}))
                    sent, pending = sent + window, rest
            if pending and not passes(pending):
                timed()
                self._stop(out, w, rec, begin)
                return
        except UpstreamError as e:
            rec.outcome, rec.error = "upstream_error", e.message
            timed()
            if not started:
                raise
            out.fail(e.status, e.message)  # an error event ends the stream; nothing unchecked was sent
            return
        finally:
            close = getattr(deltas, "close", None)
            if close is not None:
                close()
        timed()
        begin()
        if pending:
            out.send_event(w.chunk({"content": pending}))
        out.send_event(w.chunk(finish=finish))
        out.end_stream()

    def _stop(self, out: Responder, w: ChunkWriter, rec: RequestRecord, begin: Any) -> None:
        begin()
        out.send_event(w.chunk(finish="content_filter", charter_guard=self._info(rec)))
        out.end_stream()

    def __enter__(self) -> GuardServer:
        self.start()
        return self

    def close(self) -> None:
        """Stop serving, the checks and the upstream."""
        super().close()
        self.guard.close()
        self.upstream.close()


def build_guard(cfg: GuardConfig, token: str | None = None) -> GuardServer:
    """Load the constitution, scorer, feedback model and upstream named by ``cfg`` into a :class:`GuardServer`."""
    from charter.backends import BackendOptions, load_backend
    from charter.constitution import load_constitution
    from charter.guard.policy import load_thresholds
    from charter.guard.scorers import ClassifierScorer, FeedbackScorer, Scorer
    from charter.guard.upstream import HTTPUpstream, LocalUpstream

    constitution = load_constitution(cfg.constitution)
    needs_feedback = (cfg.scorer == "feedback" or cfg.verify_revision
                      or any(a == "revise" for a in [cfg.default_action, *cfg.actions.values()]))
    options = BackendOptions(dtype=cfg.dtype, threads=cfg.threads, batch_size=cfg.batch_size)
    feedback = load_backend(cfg.feedback, options) if needs_feedback else None
    # One check's principles go to the feedback model as one call, so they share the conversation's prefix (the
    # engine computes it once); calls of concurrent requests take turns on a local model and overlap over HTTP.
    lock: Any = contextlib.nullcontext() if cfg.feedback.startswith("openai/") else threading.Lock()

    def score_fn(reqs: list[Any]) -> list[Any]:
        assert feedback is not None
        with lock:
            return list(feedback.score_options(reqs))

    def gen_fn(reqs: list[Any]) -> list[Any]:
        assert feedback is not None
        with lock:
            return list(feedback.generate(reqs))

    scorer: Scorer
    if cfg.scorer == "classifier":
        if not cfg.classifier:
            from charter.errors import ConfigError

            raise ConfigError("scorer: classifier needs `classifier:` (a folder from `charter guard distill`)",
                              "set classifier: PATH or scorer: feedback")
        scorer = ClassifierScorer(cfg.classifier, threads=cfg.threads)
    else:
        assert feedback is not None
        scorer = FeedbackScorer(score_fn, feedback.model_id, cfg.max_context_chars, min_mass=cfg.min_option_mass)
    upstream: Upstream
    if cfg.upstream.startswith("openai/"):
        upstream = HTTPUpstream(cfg.upstream, cfg.upstream_api_key_env, cfg.upstream_timeout, cfg.upstream_retries)
    elif feedback is not None and cfg.upstream == cfg.feedback:  # one model in memory
        upstream = LocalUpstream(_Locked(feedback, lock), cfg.upstream_timeout, cfg.batch_size)
    else:
        upstream = LocalUpstream(load_backend(cfg.upstream, options), cfg.upstream_timeout, cfg.batch_size)
    guard = Guard(cfg, constitution, scorer, load_thresholds(cfg, scorer.id),
                  gen_fn if feedback is not None else None, score_fn if feedback is not None else None)
    return GuardServer(guard, upstream, DecisionLog(cfg.log), token)


class _LogFirst:
    """A Responder that writes the request's log (once) just before the answer's last bytes are sent."""

    def __init__(self, out: Responder, write: Any) -> None:
        self.out, self._write, self._done = out, write, False

    def flush(self) -> None:
        if not self._done:
            self._done = True
            self._write()

    def send_json(self, status: int, payload: dict[str, Any]) -> None:
        self.flush()
        self.out.send_json(status, payload)

    def fail(self, status: int, message: str) -> None:
        self.flush()
        self.out.fail(status, message)

    def start_stream(self) -> None:
        self.out.start_stream()

    def send_event(self, payload: dict[str, Any] | str) -> None:
        self.out.send_event(payload)

    def end_stream(self) -> None:
        self.flush()
        self.out.end_stream()


class _Locked:
    """A backend whose calls take ``lock`` (the guard's scorer and the upstream sharing one local model)."""

    def __init__(self, backend: Any, lock: Any) -> None:
        self.backend, self.lock = backend, lock
        self.spec, self.model_id = backend.spec, backend.model_id

    def generate(self, requests: Any) -> Any:
        with self.lock:
            return self.backend.generate(requests)

    def generate_stream(self, requests: Any, on_text: Any) -> Any:
        with self.lock:
            stream = getattr(self.backend, "generate_stream", None)
            if stream is None:
                gens = self.backend.generate(requests)
                for i, g in enumerate(gens):
                    if g.text:
                        on_text(i, g.text)
                return gens
            return stream(requests, on_text)

    def score_options(self, requests: Any) -> Any:
        with self.lock:
            return self.backend.score_options(requests)


def run_guard(cfg: GuardConfig, require_token: bool = False) -> None:
    """``charter guard serve``: build the guard and serve until Ctrl-C."""
    from charter.errors import CharterError

    token = os.environ.get(cfg.token_env) or None
    if require_token and not token:
        raise CharterError(f"${cfg.token_env} is not set", f"export {cfg.token_env}=<a secret> or drop --token-env")
    server = build_guard(cfg, token)
    auth = f"bearer token from ${cfg.token_env}" if token else f"none (set ${cfg.token_env} to require a token)"
    if not token and cfg.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: guarding on {cfg.host} without a token: anyone who can reach it can use the upstream",
              file=sys.stderr)
    print(f"guarding {cfg.upstream} at {server.url} (scorer {server.guard.scorer.id}; "
          f"{len(server.guard.principles)} principles; stream_mode {cfg.stream_mode}; on_error {cfg.on_error}; "
          f"decisions in {cfg.log}; auth: {auth}); Ctrl-C stops", flush=True)
    server.serve_forever()
