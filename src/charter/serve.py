"""``charter serve``: any backend as an OpenAI-compatible chat-completions server.

Endpoints: ``GET /v1/models``, ``POST /v1/chat/completions`` and ``GET /health``. It binds 127.0.0.1 by
default; when the environment variable named by ``--token-env`` is set, every request but ``/health`` needs
``Authorization: Bearer <token>`` (401 otherwise). Concurrent requests are collected for a few milliseconds
and sent to the backend as one batch (one backend call at a time, so local models need no locking). The
request's ``model`` field is not checked: the server has one model.

Log-probabilities, so the server can act as a feedback model: a request with ``logprobs: true`` and
``max_tokens: 1`` gets the ``top_logprobs`` (at most 20) of the next token; later tokens' log-probabilities
are not available (``logprobs`` with ``max_tokens > 1`` gets a 400). A final assistant message is continued
rather than closed when the request says ``continue_final_message: true`` (vLLM's extra field), so an
assistant prefix such as ``"The answer is: ("`` works. Where the top tokens come from:

* the request names candidate tokens in ``charter_options`` (the charter ``openai`` backend does): the
  backend's ``score_options`` scores exactly those, and the answer lists them (no top-20 cut-off);
* else, when the backend has a ``top_logprobs(requests, k)`` method (:class:`TopLogprobsBackend`), the real
  top ``k``;
* else the request is refused (400) with that explanation.
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
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal, Protocol, runtime_checkable

from charter.backends.base import (
    Backend,
    Generation,
    GenParams,
    GenRequest,
    Message,
    OptionScores,
    ScoreRequest,
)
from charter.errors import BackendError, CharterError

MAX_TOP_LOGPROBS = 20


class HTTPFailure(Exception):
    """A request the server answers with an error status and an OpenAI-style error body."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@runtime_checkable
class TopLogprobsBackend(Protocol):
    """A backend that can list the ``k`` most likely next tokens ``(text, logprob)``, best first."""

    def top_logprobs(self, requests: Sequence[ScoreRequest], k: int) -> list[list[tuple[str, float]]]: ...


@dataclass
class Job:
    """One parsed chat-completions request: a generation, option scores, or the top-k next tokens."""

    kind: Literal["generate", "score", "top"]
    request: GenRequest | ScoreRequest
    k: int = 0


def _messages(body: dict[str, Any]) -> list[Message]:
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


def parse_chat(body: dict[str, Any], backend: Backend) -> Job:
    """Turn a chat-completions body into a :class:`Job`; raise :class:`HTTPFailure` (400) saying why not."""
    if body.get("stream"):
        raise HTTPFailure(400, "streaming is not supported by charter serve: send stream=false")
    if int(body.get("n") or 1) != 1:
        raise HTTPFailure(400, "n > 1 is not supported by charter serve: send one request per completion")
    messages = _messages(body)
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
    continue_final = bool(body.get("continue_final_message")) and messages[-1]["role"] == "assistant"
    if body.get("logprobs"):
        if max_tokens != 1:
            raise HTTPFailure(400, "charter serve gives log-probabilities of the first token only: "
                                   "send max_tokens=1")
        k = int(body.get("top_logprobs") or 0)
        if not 0 <= k <= MAX_TOP_LOGPROBS:
            raise HTTPFailure(400, f"top_logprobs must be between 0 and {MAX_TOP_LOGPROBS}")
        prefix = messages.pop()["content"] if continue_final else ""
        options = body.get("charter_options")
        if isinstance(options, list) and options and all(isinstance(o, str) for o in options):
            return Job("score", ScoreRequest.of(messages, options, prefix), k)
        if isinstance(backend, TopLogprobsBackend):
            return Job("top", ScoreRequest.of(messages, assistant_prefix=prefix), k)
        raise HTTPFailure(400, f"backend {backend.spec} cannot list the top next tokens: name the candidate "
                               "tokens in 'charter_options' (the charter openai backend does)")
    if continue_final:
        raise HTTPFailure(400, "continue_final_message is supported with logprobs=true and max_tokens=1 only")
    stop = body.get("stop") or ()
    params = GenParams(
        max_new_tokens=int(max_tokens) if max_tokens else GenParams().max_new_tokens,
        temperature=float(body["temperature"]) if body.get("temperature") is not None else 1.0,
        top_p=float(body["top_p"]) if body.get("top_p") is not None else 1.0,
        seed=int(body.get("seed") or 0),
        stop=(stop,) if isinstance(stop, str) else tuple(str(s) for s in stop),
    )
    return Job("generate", GenRequest.of(messages, params))


def run_jobs(backend: Backend, jobs: Sequence[Job]) -> list[Any]:
    """Run jobs of one kind (and one ``k``) as a single backend call; results in order."""
    kind, reqs = jobs[0].kind, [j.request for j in jobs]
    if kind == "generate":
        return list(backend.generate(reqs))  # type: ignore[arg-type]
    if kind == "score":
        return list(backend.score_options(reqs))  # type: ignore[arg-type]
    assert isinstance(backend, TopLogprobsBackend)
    return list(backend.top_logprobs(reqs, max(jobs[0].k, 1)))  # type: ignore[arg-type]


def _token(tok: str, lp: float) -> dict[str, Any]:
    return {"token": tok, "logprob": lp, "bytes": list(tok.encode())}


def format_chat(job: Job, result: Any, model: str) -> dict[str, Any]:
    """The OpenAI chat-completion object for ``result``; raise :class:`HTTPFailure` if the backend failed."""
    logprobs: dict[str, Any] | None = None
    if isinstance(result, Generation):
        if result.finish_reason == "error":
            raise HTTPFailure(500, f"the backend failed: {result.error}")
        text, finish = result.text, result.finish_reason
        usage = {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens}
    else:
        if isinstance(result, OptionScores):
            if result.error or not result.logprobs:
                raise HTTPFailure(400, f"the backend cannot score these options: {result.error}")
            top = sorted(result.logprobs.items(), key=lambda t: -t[1])
        else:
            top = list(result)
        if not top:
            raise HTTPFailure(500, "the backend returned no next-token log-probabilities")
        text, finish = top[0][0], "length"
        listed = [_token(t, lp) for t, lp in top[: job.k]]
        logprobs = {"content": [{**_token(*top[0]), "top_logprobs": listed}]}
        usage = {"prompt_tokens": 0, "completion_tokens": 1}
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion", "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish,
                     "logprobs": logprobs}],
        "usage": {**usage, "total_tokens": usage["prompt_tokens"] + usage["completion_tokens"]},
    }


def answer(backend: Backend, body: dict[str, Any], model: str) -> dict[str, Any]:
    """Answer one chat-completions body without batching (raises :class:`HTTPFailure` on a bad request)."""
    job = parse_chat(body, backend)
    try:
        result = run_jobs(backend, [job])[0]
    except BackendError as e:
        raise HTTPFailure(400, str(e)) from None
    return format_chat(job, result, model)


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
        """Queue ``job``; the future resolves to its backend result or exception."""
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
                groups.setdefault((job.kind, job.k if job.kind == "top" else 0), []).append((job, fut))
            for group in groups.values():
                self._run(group)

    def _run(self, group: list[tuple[Job, Future[Any]]]) -> None:
        self.batches += 1
        try:
            results = run_jobs(self.backend, [j for j, _ in group])
        except Exception as e:
            if len(group) > 1:  # one bad request must not fail the others: try them one by one
                for one in group:
                    self._run([one])
                return
            group[0][1].set_exception(e)
            return
        for (_, fut), res in zip(group, results, strict=True):
            fut.set_result(res)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HTTPServer
    timeout = 120  # seconds to read a request

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # no 40 ms delayed-ACK stalls

    def _send(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if status == 401:
            self.send_header("WWW-Authenticate", "Bearer")
        self.end_headers()
        self.wfile.write(data)

    def _fail(self, status: int, message: str) -> None:
        kinds = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error"}
        kind = kinds.get(status, "server_error")
        self._send(status, {"error": {"message": message, "type": kind, "code": status}})

    def _authorized(self) -> bool:
        token = self.server.app.token
        if not token:
            return True
        given = self.headers.get("Authorization", "")
        if hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            return True
        self._fail(401, "missing or wrong bearer token")
        return False

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        path = self.path.split("?")[0].rstrip("/")
        if path == "/health":
            self._send(200, {"status": "ok"})
        elif not self._authorized():
            return
        elif path in ("/v1/models", "/models"):
            app = self.server.app
            model = {"id": app.name, "object": "model", "created": app.created, "owned_by": "charter"}
            self._send(200, {"object": "list", "data": [model]})
        else:
            self._fail(404, f"no such endpoint {path}: use /v1/chat/completions or /v1/models")

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
            self._fail(404, f"no such endpoint {path}: use /v1/chat/completions")
            return
        app = self.server.app
        try:
            body = json.loads(raw or b"null")
            if not isinstance(body, dict):
                raise HTTPFailure(400, "the request body must be a JSON object")
            job = parse_chat(body, app.backend)
            try:
                result = app.batcher.submit(job).result()
            except BackendError as e:
                raise HTTPFailure(400, str(e)) from None
            self._send(200, format_chat(job, result, app.name))
        except json.JSONDecodeError as e:
            self._fail(400, f"the request body is not JSON ({e})")
        except HTTPFailure as e:
            self._fail(e.status, e.message)
        except (ValueError, TypeError) as e:
            self._fail(400, f"bad request: {e}")
        except Exception as e:  # a backend bug: say so, keep serving
            self._fail(500, f"{type(e).__name__}: {e}")

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (http.server's signature)
        if self.server.app.verbose:  # method, path and status only: never headers (they hold the token)
            sys.stderr.write(f"[serve] {self.address_string()} {format % args}\n")


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    app: ChatServer

    def server_bind(self) -> None:  # HTTPServer's own does a reverse-DNS lookup that can stall for seconds
        import socketserver

        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)


class ChatServer:
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
        self.backend = backend
        self.token = token or None
        self.name = name or backend.spec
        self.verbose = verbose
        self.created = int(time.time())
        try:
            self.httpd = _HTTPServer((host, port), _Handler)
        except OSError as e:
            raise CharterError(f"cannot listen on {host}:{port} ({e.strerror})",
                               "choose another --port (0 picks a free one)") from None
        self.httpd.app = self
        self.batcher = Batcher(backend, batch_size, window)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """Base URL clients use, e.g. ``http://127.0.0.1:8000/v1``."""
        host, port = self.httpd.server_address[:2]
        return f"http://{host!s}:{port}/v1"

    def start(self) -> ChatServer:
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
        self.batcher.close()

    def __enter__(self) -> ChatServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


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
