"""``charter serve``: any backend as an OpenAI-compatible chat-completions server.

Endpoints: ``GET /v1/models``, ``POST /v1/chat/completions`` and ``GET /health``. It binds 127.0.0.1 by
default; when the environment variable named by ``--token-env`` is set, every request but ``/health`` needs
``Authorization: Bearer <token>`` (401 otherwise). Concurrent requests are collected for a few milliseconds
and sent to the backend as one batch (one backend call at a time, so local models need no locking). The
request's ``model`` field is not checked: the server has one model. The HTTP side (:class:`HTTPService`) is
shared with ``charter guard``.

Streaming: ``stream: true`` answers with server-sent events (``chat.completion.chunk`` objects, then
``data: [DONE]``), as the ``openai`` SDK expects; ``stream_options: {include_usage: true}`` adds a last chunk
with the token counts. A backend that streams (:class:`~charter.backends.tokens.StreamingBackend`: local
Llama-family models through charter's engine, and the mock) sends text as it is decoded, batched with the other
requests in flight; any other backend sends the whole answer in one chunk when it is done. An error before the
first chunk is an ordinary HTTP error; after it, an ``{"error": ...}`` event ends the stream.

Log-probabilities:

* ``logprobs: true`` on a generation gets every answer token's log-probability and, with ``top_logprobs: k``
  (at most 20), the ``k`` most likely tokens at each position — from backends that can
  (:class:`~charter.backends.tokens.LogprobsBackend`: local models, read in one teacher-forced pass of the
  scoring model); others answer 400 saying so. With ``stream: true`` each chunk carries its token's entry.
* ``logprobs: true`` with ``max_tokens: 1``, for the server acting as a feedback model, gets the ``top_logprobs``
  of the next token only. A final assistant message is continued rather than closed when the request says
  ``continue_final_message: true`` (vLLM's extra field), so an assistant prefix such as
  ``"The answer is: ("`` works. Where the top tokens come from: the request names candidate tokens in
  ``charter_options`` (the charter ``openai`` backend does) and the backend's ``score_options`` scores exactly
  those (no top-20 cut-off); else the backend's ``top_logprobs(requests, k)``
  (:class:`~charter.backends.tokens.TopLogprobsBackend`); else the request is refused (400) with that
  explanation.
"""

from __future__ import annotations

import hmac
import json
import os
import queue
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal, Protocol

from charter.backends.base import (
    Backend,
    Generation,
    GenParams,
    GenRequest,
    Message,
    OptionScores,
    ScoreRequest,
)
from charter.backends.tokens import LogprobsBackend, StreamingBackend, TokenLogprob, TopLogprobsBackend
from charter.errors import BackendError, CharterError

__all__ = ["ChatServer", "HTTPFailure", "HTTPService", "Job", "TopLogprobsBackend", "answer", "format_chat",
           "parse_chat", "run_server"]

MAX_TOP_LOGPROBS = 20


class HTTPFailure(Exception):
    """A request the server answers with an error status and an OpenAI-style error body."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Job:
    """One parsed chat-completions request.

    Attributes:
        kind: ``generate``; ``logprobs`` (a generation with per-token log-probabilities); ``score`` (option
            log-probabilities of the next token); ``top`` (the top-k next tokens).
        request: What the backend gets.
        k: ``top_logprobs`` asked for.
        stream: Answer with server-sent events.
        include_usage: Streaming: end with a chunk holding the token counts.
        sink: Streaming generations: text deltas as they come, then ``None`` when the job is finished.
    """

    kind: Literal["generate", "logprobs", "score", "top"]
    request: GenRequest | ScoreRequest
    k: int = 0
    stream: bool = False
    include_usage: bool = False
    sink: queue.Queue[str | None] | None = field(default=None, repr=False)
    streamed: bool = field(default=False, repr=False)


def parse_messages(body: dict[str, Any]) -> list[Message]:
    """The ``messages`` of a chat-completions body (text parts joined); :class:`HTTPFailure` (400) if malformed."""
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise HTTPFailure(400, "'messages' must be a non-empty list of {role, content}")
    out: list[Message] = []
    for i, m in enumerate(raw):
        role = m.get("role") if isinstance(m, dict) else None
        content = m.get("content") if isinstance(m, dict) else None
        if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
            parts = [p for p in content if isinstance(p, dict) and p.get("type") == "text"]
            content = "".join(str(p.get("text", "")) for p in parts)
        if role not in ("system", "user", "assistant") or not isinstance(content, str):
            raise HTTPFailure(400, f"messages[{i}]: need role system/user/assistant and text content")
        out.append({"role": role, "content": content})
    return out


def gen_params(body: dict[str, Any]) -> GenParams:
    """Sampling parameters of a chat-completions body (OpenAI's defaults: temperature 1, top_p 1)."""
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
    stop = body.get("stop") or ()
    return GenParams(
        max_new_tokens=int(max_tokens) if max_tokens else GenParams().max_new_tokens,
        temperature=float(body["temperature"]) if body.get("temperature") is not None else 1.0,
        top_p=float(body["top_p"]) if body.get("top_p") is not None else 1.0,
        seed=int(body.get("seed") or 0),
        stop=(stop,) if isinstance(stop, str) else tuple(str(s) for s in stop),
    )


def parse_chat(body: dict[str, Any], backend: Backend) -> Job:
    """Turn a chat-completions body into a :class:`Job`; raise :class:`HTTPFailure` (400) saying why not."""
    if int(body.get("n") or 1) != 1:
        raise HTTPFailure(400, "n > 1 is not supported by charter serve: send one request per completion")
    stream = bool(body.get("stream"))
    usage = bool((body.get("stream_options") or {}).get("include_usage")) if stream else False
    messages = parse_messages(body)
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
    continue_final = bool(body.get("continue_final_message")) and messages[-1]["role"] == "assistant"
    options = body.get("charter_options")
    named = isinstance(options, list) and bool(options) and all(isinstance(o, str) for o in options)
    if body.get("logprobs"):
        k = int(body.get("top_logprobs") or 0)
        if not 0 <= k <= MAX_TOP_LOGPROBS:
            raise HTTPFailure(400, f"top_logprobs must be between 0 and {MAX_TOP_LOGPROBS}")
        first_only = max_tokens == 1 and (named or continue_final or not isinstance(backend, LogprobsBackend))
        if first_only:
            prefix = messages.pop()["content"] if continue_final else ""
            if named:
                return Job("score", ScoreRequest.of(messages, list(options or ()), prefix), k, stream, usage)
            if isinstance(backend, TopLogprobsBackend):
                return Job("top", ScoreRequest.of(messages, assistant_prefix=prefix), k, stream, usage)
            raise HTTPFailure(400, f"backend {backend.spec} cannot list the top next tokens: name the candidate "
                                   "tokens in 'charter_options' (the charter openai backend does)")
        if continue_final:
            raise HTTPFailure(400, "continue_final_message is supported with logprobs=true and max_tokens=1 only")
        if not isinstance(backend, LogprobsBackend):
            raise HTTPFailure(400, f"backend {backend.spec} gives no per-token log-probabilities: send "
                                   "max_tokens=1 with charter_options, or serve a local transformers model")
        return Job("logprobs", GenRequest.of(messages, gen_params(body)), k, stream, usage)
    if continue_final:
        raise HTTPFailure(400, "continue_final_message is supported with logprobs=true and max_tokens=1 only")
    sink: queue.Queue[str | None] | None = queue.Queue() if stream else None
    return Job("generate", GenRequest.of(messages, gen_params(body)), 0, stream, usage, sink)


def run_jobs(backend: Backend, jobs: Sequence[Job]) -> list[Any]:
    """Run jobs of one kind (and one ``k``) as a single backend call; results in order. Streaming generations
    get their text deltas in their ``sink`` (the whole answer at once from a backend that does not stream)."""
    kind, reqs = jobs[0].kind, [j.request for j in jobs]
    if kind == "generate":
        if any(j.sink is not None for j in jobs) and isinstance(backend, StreamingBackend):

            def on_text(i: int, delta: str) -> None:
                sink = jobs[i].sink
                if sink is not None and delta:
                    jobs[i].streamed = True
                    sink.put(delta)

            return list(backend.generate_stream(reqs, on_text))  # type: ignore[arg-type]
        gens = list(backend.generate(reqs))  # type: ignore[arg-type]
        for j, g in zip(jobs, gens, strict=True):
            if j.sink is not None and g.text and g.finish_reason != "error":
                j.streamed = True
                j.sink.put(g.text)
        return gens
    if kind == "logprobs":
        assert isinstance(backend, LogprobsBackend)
        return list(backend.generate_logprobs(reqs, jobs[0].k))  # type: ignore[arg-type]
    if kind == "score":
        return list(backend.score_options(reqs))  # type: ignore[arg-type]
    assert isinstance(backend, TopLogprobsBackend)
    return list(backend.top_logprobs(reqs, max(jobs[0].k, 1)))  # type: ignore[arg-type]


def _token(tok: str, lp: float) -> dict[str, Any]:
    return {"token": tok, "logprob": lp, "bytes": list(tok.encode())}


def token_entry(t: TokenLogprob, k: int) -> dict[str, Any]:
    """One token's entry of ``logprobs.content`` in the OpenAI format."""
    return {**_token(t.token, t.logprob), "top_logprobs": [_token(a, lp) for a, lp in t.top[:k]]}


def completion_id() -> str:
    """A fresh ``chatcmpl-...`` id."""
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def chat_completion(text: str, finish: str, model: str, usage: dict[str, int] | None = None,
                    logprobs: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    """An OpenAI ``chat.completion`` object."""
    usage = usage or {"prompt_tokens": 0, "completion_tokens": 0}
    return {
        "id": completion_id(), "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish,
                     "logprobs": logprobs}],
        "usage": {**usage, "total_tokens": usage["prompt_tokens"] + usage["completion_tokens"]},
        **extra,
    }


def _unpack(job: Job, result: Any) -> tuple[str, str, dict[str, int], dict[str, Any] | None, list[dict[str, Any]]]:
    """``(text, finish_reason, usage, logprobs object, per-token entries)`` of a job's backend result."""
    if job.kind == "logprobs":
        gen, toks = result
        if gen.finish_reason == "error":
            raise HTTPFailure(500, f"the backend failed: {gen.error}")
        entries = [token_entry(t, job.k) for t in toks]
        usage = {"prompt_tokens": gen.prompt_tokens, "completion_tokens": gen.completion_tokens}
        return gen.text, gen.finish_reason, usage, {"content": entries}, entries
    if isinstance(result, Generation):
        if result.finish_reason == "error":
            raise HTTPFailure(500, f"the backend failed: {result.error}")
        usage = {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens}
        return result.text, result.finish_reason, usage, None, []
    if isinstance(result, OptionScores):
        if result.error or not result.logprobs:
            raise HTTPFailure(400, f"the backend cannot score these options: {result.error}")
        top = sorted(result.logprobs.items(), key=lambda t: -t[1])
    else:
        top = list(result)
    if not top:
        raise HTTPFailure(500, "the backend returned no next-token log-probabilities")
    entry = {**_token(*top[0]), "top_logprobs": [_token(t, lp) for t, lp in top[: job.k]]}
    return top[0][0], "length", {"prompt_tokens": 0, "completion_tokens": 1}, {"content": [entry]}, [entry]


def format_chat(job: Job, result: Any, model: str) -> dict[str, Any]:
    """The OpenAI chat-completion object for ``result``; raise :class:`HTTPFailure` if the backend failed."""
    text, finish, usage, logprobs, _ = _unpack(job, result)
    return chat_completion(text, finish, model, usage, logprobs)


class ChunkWriter:
    """Builds the ``chat.completion.chunk`` objects of one streamed answer (one id and timestamp for all)."""

    def __init__(self, model: str) -> None:
        self.id, self.created, self.model = completion_id(), int(time.time()), model

    def chunk(self, delta: dict[str, Any] | None = None, finish: str | None = None,
              logprobs: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
        """One chunk: a delta (``{"content": ...}``), or the last one with ``finish``."""
        return {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                "choices": [{"index": 0, "delta": delta or {}, "finish_reason": finish, "logprobs": logprobs}],
                **extra}

    def role(self) -> dict[str, Any]:
        """The first chunk: the assistant role, no text yet."""
        return self.chunk({"role": "assistant", "content": ""})

    def usage(self, usage: dict[str, int]) -> dict[str, Any]:
        """The chunk ``stream_options.include_usage`` asks for: no choices, the token counts."""
        return {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                "choices": [], "usage": {**usage, "total_tokens": usage["prompt_tokens"] + usage["completion_tokens"]}}


class Batcher:
    """Collects jobs for ``window`` seconds (up to ``batch_size``) and runs each kind as one backend call."""

    def __init__(self, backend: Backend, batch_size: int = 32, window: float = 0.005) -> None:
        self.backend = backend
        self.batch_size = max(1, batch_size)
        self.window = window
        self.batches = 0
        """Backend calls made so far (fewer than requests when batching works)."""
        self._queue: queue.Queue[tuple[Job, Future[Any]] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="charter-batcher", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> Future[Any]:
        """Queue ``job``; the future resolves to its backend result or exception (a streaming job's ``sink``
        gets its text deltas first, then ``None``)."""
        fut: Future[Any] = Future()
        self._queue.put((job, fut))
        return fut

    def close(self) -> None:
        """Stop the worker after the jobs already queued."""
        self._queue.put(None)
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while (item := self._queue.get()) is not None:
            batch = [item]
            deadline = time.monotonic() + self.window
            while len(batch) < self.batch_size:
                try:
                    nxt = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)
                    break
                batch.append(nxt)
            groups: dict[tuple[str, int], list[tuple[Job, Future[Any]]]] = {}
            for job, fut in batch:
                groups.setdefault((job.kind, job.k if job.kind in ("top", "logprobs") else 0), []).append((job, fut))
            for group in groups.values():
                self._run(group)

    def _run(self, group: list[tuple[Job, Future[Any]]]) -> None:
        self.batches += 1
        try:
            results = run_jobs(self.backend, [j for j, _ in group])
        except Exception as e:
            if len(group) > 1:  # one bad request must not fail the others: try them one by one
                for one in group:
                    if one[0].streamed:  # it already sent text: a second try would send it twice
                        _settle(one, exc=e)
                    else:
                        self._run([one])
                return
            _settle(group[0], exc=e)
            return
        for one, res in zip(group, results, strict=True):
            _settle(one, res)


def _settle(item: tuple[Job, Future[Any]], result: Any = None, exc: BaseException | None = None) -> None:
    job, fut = item
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(result)
    if job.sink is not None:
        job.sink.put(None)


class Responder(Protocol):
    """How a service writes its answer: one JSON body, or a stream of server-sent events."""

    def send_json(self, status: int, payload: dict[str, Any]) -> None: ...

    def fail(self, status: int, message: str) -> None: ...

    def start_stream(self) -> None: ...

    def send_event(self, payload: dict[str, Any] | str) -> None: ...

    def end_stream(self) -> None: ...


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HTTPServer
    timeout = 120  # seconds to read a request
    streaming = False

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # no 40 ms delayed-ACK stalls

    # --- Responder ------------------------------------------------------------------------------------------
    def send_json(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if status == 401:
            self.send_header("WWW-Authenticate", "Bearer")
        self.end_headers()
        self.wfile.write(data)

    def fail(self, status: int, message: str) -> None:
        kinds = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error"}
        error = {"message": message, "type": kinds.get(status, "server_error"), "code": status}
        if self.streaming:  # headers are gone: the error is the stream's last event
            self.send_event({"error": error})
            self._end_chunks()
            return
        self.send_json(status, {"error": error})

    def start_stream(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.streaming = True

    def send_event(self, payload: dict[str, Any] | str) -> None:
        data = payload if isinstance(payload, str) else json.dumps(payload)
        raw = f"data: {data}\n\n".encode()
        self.wfile.write(f"{len(raw):x}\r\n".encode() + raw + b"\r\n")
        self.wfile.flush()

    def end_stream(self) -> None:
        self.send_event("[DONE]")
        self._end_chunks()

    def _end_chunks(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()
        self.streaming = False

    # --- routing --------------------------------------------------------------------------------------------
    def _authorized(self) -> bool:
        token = self.server.app.token
        if not token:
            return True
        given = self.headers.get("Authorization", "")
        if hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            return True
        self.fail(401, "missing or wrong bearer token")
        return False

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        path = self.path.split("?")[0].rstrip("/")
        if path == "/health":
            self.send_json(200, {"status": "ok"})
        elif not self._authorized():
            return
        elif path in ("/v1/models", "/models"):
            self.send_json(200, {"object": "list", "data": self.server.app.models()})
        else:
            self.fail(404, f"no such endpoint {path}: use /v1/chat/completions or /v1/models")

    def do_POST(self) -> None:  # noqa: N802
        path = self.path.split("?")[0].rstrip("/")
        try:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
        except (ValueError, OSError):
            self.close_connection = True
            return
        if not self._authorized():
            return
        if path not in ("/v1/chat/completions", "/chat/completions"):
            self.fail(404, f"no such endpoint {path}: use /v1/chat/completions")
            return
        try:
            body = json.loads(raw or b"null")
            if not isinstance(body, dict):
                raise HTTPFailure(400, "the request body must be a JSON object")
            self.server.app.chat(body, self)
        except json.JSONDecodeError as e:
            self.fail(400, f"the request body is not JSON ({e})")
        except HTTPFailure as e:
            self.fail(e.status, e.message)
        except (BrokenPipeError, ConnectionResetError):  # the client went away mid-answer
            self.close_connection = True
        except (ValueError, TypeError) as e:
            self.fail(400, f"bad request: {e}")
        except Exception as e:  # a backend bug: say so, keep serving
            self.fail(500, f"{type(e).__name__}: {e}")

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (http.server's signature)
        if self.server.app.verbose:  # method, path and status only: never headers (they hold the token)
            sys.stderr.write(f"[serve] {self.address_string()} {format % args}\n")


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    app: HTTPService

    def server_bind(self) -> None:  # HTTPServer's own does a reverse-DNS lookup that can stall for seconds
        import socketserver

        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)


class HTTPService:
    """An OpenAI-style HTTP server on a background thread; subclasses answer :meth:`chat`.

    Args:
        host: Address to bind; keep 127.0.0.1 unless a token is set.
        port: Port to bind; 0 picks a free one (see :attr:`url`).
        token: Bearer token every request must carry; ``None`` for none.
        name: Model name reported by ``/v1/models``.
        verbose: Log one line per request to stderr (never headers).
    """

    def __init__(self, host: str, port: int, token: str | None, name: str, verbose: bool = False) -> None:
        self.token = token or None
        self.name = name
        self.verbose = verbose
        self.created = int(time.time())
        try:
            self.httpd = _HTTPServer((host, port), _Handler)
        except OSError as e:
            raise CharterError(f"cannot listen on {host}:{port} ({e.strerror})",
                               "choose another --port (0 picks a free one)") from None
        self.httpd.app = self
        self._thread: threading.Thread | None = None

    def models(self) -> list[dict[str, Any]]:
        """The ``data`` of ``GET /v1/models``."""
        return [{"id": self.name, "object": "model", "created": self.created, "owned_by": "charter"}]

    def chat(self, body: dict[str, Any], out: Responder) -> None:
        """Answer one chat-completions body (raise :class:`HTTPFailure` for an error status)."""
        raise NotImplementedError

    @property
    def url(self) -> str:
        """Base URL clients use, e.g. ``http://127.0.0.1:8000/v1``."""
        host, port = self.httpd.server_address[:2]
        return f"http://{host!s}:{port}/v1"

    def start(self) -> HTTPService:
        """Serve in a daemon thread and return at once."""
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="charter-serve", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve in this thread until interrupted (Ctrl-C), then close."""
        try:
            self.httpd.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            self.close()

    def close(self) -> None:
        """Stop accepting requests and release the port."""
        if self._thread is not None:
            self.httpd.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self.httpd.server_close()

    def __enter__(self) -> HTTPService:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def stream_events(job: Job) -> Iterator[str]:
    """A streaming generation's text deltas as they arrive (then read the job's future for the result)."""
    assert job.sink is not None
    while (delta := job.sink.get()) is not None:
        yield delta


class ChatServer(HTTPService):
    """An OpenAI-compatible HTTP server in front of ``backend``; ``start()`` runs it in a background thread.

    Args:
        backend: Any backend; it is called from one thread only.
        host: Address to bind; keep 127.0.0.1 unless a token is set.
        port: Port to bind; 0 picks a free one (see :attr:`url`).
        token: Bearer token every request must carry; ``None`` for none.
        name: Model name reported by ``/v1/models`` (default: the backend's spec).
        batch_size: Most requests sent to the backend in one call.
        window: Seconds to wait for more requests before a batch is sent.
        verbose: Log one line per request to stderr (never headers).
    """

    def __init__(self, backend: Backend, host: str = "127.0.0.1", port: int = 8000, token: str | None = None,
                 name: str | None = None, batch_size: int = 32, window: float = 0.005,
                 verbose: bool = False) -> None:
        super().__init__(host, port, token, name or backend.spec, verbose)
        self.backend = backend
        self.batcher = Batcher(backend, batch_size, window)

    def chat(self, body: dict[str, Any], out: Responder) -> None:
        """Parse, queue for the batcher, and answer as one JSON body or as a stream of chunks."""
        job = parse_chat(body, self.backend)
        fut = self.batcher.submit(job)
        if not job.stream:
            out.send_json(200, format_chat(job, _result(fut), self.name))
            return
        w = ChunkWriter(self.name)
        if job.kind == "generate":
            deltas = stream_events(job)
            first = next(deltas, None)  # an error before the first text is an ordinary HTTP error
            if first is None:
                _result(fut)
            out.start_stream()
            out.send_event(w.role())
            try:
                for delta in ([first] if first is not None else []):
                    out.send_event(w.chunk({"content": delta}))
                for delta in deltas:
                    out.send_event(w.chunk({"content": delta}))
                _, finish, usage, _, _ = _unpack(job, _result(fut))
            except HTTPFailure as failure:
                out.fail(failure.status, failure.message)
                return
        else:
            _, finish, usage, _, entries = _unpack(job, _result(fut))
            out.start_stream()
            out.send_event(w.role())
            for entry in entries:
                out.send_event(w.chunk({"content": entry["token"]}, logprobs={"content": [entry]}))
        out.send_event(w.chunk(finish=finish))
        if job.include_usage:
            out.send_event(w.usage(usage))
        out.end_stream()

    def close(self) -> None:
        """Stop accepting requests, release the port and stop the batcher."""
        super().close()
        self.batcher.close()

    def __enter__(self) -> ChatServer:
        self.start()
        return self


def _result(fut: Future[Any]) -> Any:
    try:
        return fut.result()
    except BackendError as e:
        raise HTTPFailure(400, str(e)) from None


def answer(backend: Backend, body: dict[str, Any], model: str) -> dict[str, Any]:
    """Answer one chat-completions body without batching (raises :class:`HTTPFailure` on a bad request)."""
    job = parse_chat({**body, "stream": False}, backend)
    try:
        result = run_jobs(backend, [job])[0]
    except BackendError as e:
        raise HTTPFailure(400, str(e)) from None
    return format_chat(job, result, model)


def run_server(model: str, host: str = "127.0.0.1", port: int = 8000, token_env: str = "CHARTER_SERVE_TOKEN",
               require_token: bool = False, batch_size: int = 32, name: str | None = None,
               verbose: bool = False) -> None:
    """Load ``model`` (:func:`charter.backends.load_backend`) and serve it until Ctrl-C: ``charter serve``."""
    from charter.backends import BackendOptions, load_backend

    token = os.environ.get(token_env) or None
    if require_token and not token:
        raise CharterError(f"${token_env} is not set", f"export {token_env}=<a secret> or drop --token-env")
    backend = load_backend(model, BackendOptions(batch_size=batch_size))
    server = ChatServer(backend, host, port, token=token, name=name or model, batch_size=batch_size,
                        verbose=verbose)
    auth = f"bearer token from ${token_env}" if token else f"none (set ${token_env} to require a token)"
    if not token and host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: serving on {host} without a token: anyone who can reach it can use the model",
              file=sys.stderr)
    print(f"serving {model} at {server.url} (model name {server.name!r}; auth: {auth}); Ctrl-C stops",
          flush=True)
    server.serve_forever()
