"""The model behind the guard: an OpenAI-compatible server over HTTP, or a charter backend in-process.

Both answer a chat-completions body whole (:meth:`complete`) or as text deltas (:meth:`stream`). Faults become an
:class:`UpstreamError` carrying the status the guard answers with: 504 when the upstream timed out, 502 when it
failed (5xx after the retries, a refused or dropped connection, an answer that is not JSON), the upstream's own
4xx when it refused the request. Retries (``retries``, with a short backoff) happen only before any text arrived:
once a stream has started, a dropped connection ends it with an error.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Protocol

from charter.backends.base import Backend
from charter.errors import BackendError
from charter.serve import Batcher, HTTPFailure, format_chat, parse_chat, stream_events

if TYPE_CHECKING:
    import httpx

Delta = tuple[str, str | None]
"""``(text, finish_reason)``: a piece of the answer; the last one carries the finish reason."""


class UpstreamError(Exception):
    """The upstream could not answer; ``status`` is what the guard answers the client with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Upstream(Protocol):
    """What the guard calls for the answer."""

    spec: str

    def complete(self, body: dict[str, Any]) -> dict[str, Any]: ...

    def stream(self, body: dict[str, Any]) -> Iterator[Delta]: ...

    def close(self) -> None: ...


def answer_text(completion: dict[str, Any]) -> tuple[str, str]:
    """``(text, finish_reason)`` of a chat.completion object; :class:`UpstreamError` (502) if it has none."""
    try:
        choice = completion["choices"][0]
        return str(choice["message"].get("content") or ""), str(choice.get("finish_reason") or "stop")
    except (KeyError, IndexError, TypeError, AttributeError):
        raise UpstreamError(502, "the upstream answered without choices[0].message") from None


class HTTPUpstream:
    """An OpenAI-compatible server: ``openai/NAME@http://HOST:PORT/v1``.

    Args:
        spec: The model string; ``NAME`` replaces the client's ``model`` field.
        api_key_env: Env var with the upstream's API key (never logged).
        timeout: Seconds to connect and between bytes of an answer.
        retries: Retries on 5xx / 429, timeouts, refused or dropped connections, before any text arrived.
    """

    def __init__(self, spec: str, api_key_env: str = "OPENAI_API_KEY", timeout: float = 60.0,
                 retries: int = 2) -> None:
        from charter.backends.openai import parse_rest

        self.spec = spec
        self.model, self.base_url = parse_rest(spec.partition("/")[2])
        self.timeout = timeout
        self.retries = retries
        self._key = os.environ.get(api_key_env) or None
        self._client: httpx.Client | None = None

    def _http(self) -> httpx.Client:
        if self._client is None:
            import httpx

            headers = {"Authorization": f"Bearer {self._key}"} if self._key else {}
            self._client = httpx.Client(timeout=self.timeout, headers=headers,
                                        limits=httpx.Limits(max_connections=64, max_keepalive_connections=64),
                                        verify=self.base_url.startswith("https://"))
        return self._client

    def _body(self, body: dict[str, Any], stream: bool) -> dict[str, Any]:
        out = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
        out["model"] = self.model
        if stream:
            out["stream"] = True
        return out

    def _redact(self, text: str) -> str:
        return text.replace(self._key, "***") if self._key else text

    def _tries(self) -> Iterator[int]:
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(min(2.0, 0.1 * 2 ** (attempt - 1)))
            yield attempt

    def _error(self, resp: httpx.Response) -> UpstreamError:
        try:
            data = json.loads(resp.read())
            err = data.get("error", data) if isinstance(data, dict) else data
            msg = str(err.get("message", err) if isinstance(err, dict) else err)
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            msg = resp.reason_phrase
        status = resp.status_code if 400 <= resp.status_code < 500 and resp.status_code != 429 else 502
        return UpstreamError(status, self._redact(f"upstream HTTP {resp.status_code}: {' '.join(msg.split())[:300]}"))

    def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        """POST the body (not streamed) and return the chat.completion object."""
        import httpx

        last = UpstreamError(502, "upstream failed")
        for _ in self._tries():
            try:
                resp = self._http().post(f"{self.base_url}/chat/completions", json=self._body(body, False))
            except httpx.TimeoutException:
                last = UpstreamError(504, f"the upstream gave no answer within {self.timeout:g}s")
                continue
            except httpx.ConnectError as e:
                last = UpstreamError(502, f"cannot reach the upstream {self.base_url} ({type(e).__name__})")
                continue
            except httpx.TransportError as e:
                last = UpstreamError(502, f"the upstream dropped the connection mid-answer ({type(e).__name__})")
                continue
            if resp.status_code == 429 or resp.status_code >= 500:
                last = self._error(resp)
                continue
            if resp.status_code >= 400:
                raise self._error(resp)
            try:
                data = resp.json()
            except (json.JSONDecodeError, UnicodeDecodeError):
                last = UpstreamError(502, "the upstream's answer was cut off or is not JSON")
                continue
            if isinstance(data, dict):
                answer_text(data)
                return data
            last = UpstreamError(502, "the upstream's answer is not a JSON object")
        raise last

    def stream(self, body: dict[str, Any]) -> Iterator[Delta]:
        """POST with ``stream: true`` and yield the text as it arrives (server-sent events)."""
        import httpx

        last = UpstreamError(502, "upstream failed")
        for _ in self._tries():
            started = False
            try:
                with self._http().stream("POST", f"{self.base_url}/chat/completions",
                                         json=self._body(body, True)) as resp:
                    if resp.status_code == 429 or resp.status_code >= 500:
                        last = self._error(resp)
                        continue
                    if resp.status_code >= 400:
                        raise self._error(resp)
                    finish: str | None = None
                    for line in resp.iter_lines():
                        if not line.startswith("data:"):
                            continue
                        data = line[5:].strip()
                        if data == "[DONE]":
                            yield "", finish or "stop"
                            return
                        event = json.loads(data)
                        if isinstance(event, dict) and event.get("error"):
                            err = event["error"]
                            msg = err.get("message", err) if isinstance(err, dict) else err
                            raise UpstreamError(502, self._redact(f"the upstream failed mid-answer: {msg}"))
                        for choice in event.get("choices") or []:
                            text = (choice.get("delta") or {}).get("content") or ""
                            finish = choice.get("finish_reason") or finish
                            if text:
                                started = True
                                yield text, None
                    raise UpstreamError(502, "the upstream's stream ended without [DONE] (dropped the connection?)")
            except httpx.TimeoutException:
                last = UpstreamError(504, f"the upstream sent nothing for {self.timeout:g}s")
            except (httpx.TransportError, json.JSONDecodeError) as e:
                last = UpstreamError(502, f"the upstream dropped the connection ({type(e).__name__})")
            if started:  # text went out already: a retry would repeat it
                raise last
        raise last

    def close(self) -> None:
        """Close the connections."""
        if self._client is not None:
            self._client.close()
            self._client = None


class LocalUpstream:
    """A charter backend in-process, batched across concurrent requests like ``charter serve``.

    Args:
        backend: Any backend.
        timeout: Seconds to wait for an answer before giving up (504).
        batch_size: Most requests in one backend call.
        batcher: A batcher over ``backend`` to share (when the guard's feedback model is the upstream too).
    """

    def __init__(self, backend: Backend, timeout: float = 60.0, batch_size: int = 32,
                 batcher: Batcher | None = None) -> None:
        self.spec = backend.spec
        self.backend = backend
        self.timeout = timeout
        self._own = batcher is None
        self.batcher = batcher or Batcher(backend, batch_size)

    def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        """Answer the body whole."""
        from concurrent.futures import TimeoutError as FutureTimeout

        job = self._job({**body, "stream": False})
        try:
            result = self.batcher.submit(job).result(timeout=self.timeout)
            return format_chat(job, result, self.spec)
        except FutureTimeout:
            raise UpstreamError(504, f"the upstream gave no answer within {self.timeout:g}s") from None
        except HTTPFailure as e:
            raise UpstreamError(502 if e.status >= 500 else e.status, e.message) from None
        except BackendError as e:
            raise UpstreamError(502, f"the upstream failed: {e}") from None

    def stream(self, body: dict[str, Any]) -> Iterator[Delta]:
        """Answer the body as text deltas (token by token where the backend streams)."""
        job = self._job({**body, "stream": True})
        if job.kind != "generate":
            yield answer_text(self.complete(body))[0], "stop"
            return
        fut = self.batcher.submit(job)
        yield from ((d, None) for d in stream_events(job))
        try:
            gen = fut.result()
        except Exception as e:
            raise UpstreamError(502, f"the upstream failed: {e}") from None
        if gen.finish_reason == "error":
            raise UpstreamError(502, f"the upstream failed: {gen.error}")
        yield "", gen.finish_reason

    def _job(self, body: dict[str, Any]) -> Any:
        try:
            return parse_chat(body, self.backend)
        except HTTPFailure as e:
            raise UpstreamError(e.status, e.message) from None

    def close(self) -> None:
        """Stop the batcher (if it is this upstream's own)."""
        if self._own:
            self.batcher.close()


def open_upstream(spec: str, api_key_env: str = "OPENAI_API_KEY", timeout: float = 60.0, retries: int = 2,
                  batch_size: int = 32, backend: Backend | None = None) -> Upstream:
    """The upstream named by ``spec``: HTTP for ``openai/...``, else the backend in-process (``backend`` given
    or loaded with :func:`charter.backends.load_backend`)."""
    if spec.startswith("openai/") and backend is None:
        return HTTPUpstream(spec, api_key_env, timeout, retries)
    if backend is None:
        from charter.backends import BackendOptions, load_backend

        backend = load_backend(spec, BackendOptions(batch_size=batch_size))
    return LocalUpstream(backend, timeout, batch_size)
