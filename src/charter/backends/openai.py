"""The ``openai`` backend: any OpenAI-compatible chat server (vLLM, llama.cpp server, Ollama, charter serve).

Selected by ``openai/MODEL@BASE_URL``, e.g. ``openai/qwen2.5-7b@http://127.0.0.1:8000/v1``; without
``@BASE_URL`` the ``OPENAI_BASE_URL`` environment variable is used. The API key, when the server needs one, is
read from the environment variable named by :attr:`BackendOptions.api_key_env` and sent only as a bearer
header: it is never part of ``model_id``, a record, a log line or an error message.

Requests run on a thread pool of ``options.concurrency``; each has a timeout and is retried with exponential
backoff and jitter on HTTP 5xx and 429, timeouts, refused or dropped connections and answers cut off mid-body.
Other 4xx answers are not retried. Results come back in request order. When one request still fails after its
retries, the batch stops (queued requests are not sent) and a :class:`BatchError` is raised carrying the
results that did finish, so :class:`charter.store.CachedBackend` keeps them and a re-run re-does only the
rest.

``score_options`` asks for one token with ``logprobs=true, top_logprobs=20`` (the OpenAI maximum) and reads
the options from the top list: a token matches an option when both are equal after stripping whitespace, and
several matching tokens (``"A"`` and ``" A"``) are summed. An option missing from the top 20 gets the floor
``min(top) - 1`` (logged, counted in :attr:`OpenAIBackend.floored_options` and marked ``floored`` on the
scores, which readers count as unusable); when no option is in the top 20 the result is an error.

Chat APIs have no standard way to start the assistant turn with a prefix. We send the prefix as a final
assistant message with vLLM's extra fields ``continue_final_message: true, add_generation_prompt: false``
(``charter serve`` honours them too; other servers may continue a final assistant message on their own — the
probe below checks what each one does). Score requests also carry
``charter_options`` (the option strings): ``charter serve`` then scores exactly those options with the backend's
``score_options``; vLLM and llama.cpp ignore the field, but strict servers such as api.openai.com reject unknown
fields.

A server that ignores those fields (llama-cpp-python's ``python -m llama_cpp.server``) closes the assistant
message and opens a fresh turn, so the option tokens are not where they are read. ``extra.prefix`` says what to
do: ``"auto"`` (default) probes the server once per backend (:meth:`OpenAIBackend.probe_prefix`, three one-token
requests compared by their ``usage.prompt_tokens``) and scores over ``POST /completions`` when the prefix is not
continued; ``"continue"`` or ``"completions"`` pin the path without a probe. The completions path renders the
conversation with the model's chat template on the client (:mod:`charter.backends.chat_template`: from
``extra.template`` — ``embedded``, a ``.gguf`` file or a tokenizer folder — else from the server's ``GET /props``
when it has one), appends the assistant prefix and reads the top log-probabilities of the next token. The path is
part of :attr:`OpenAIBackend.model_id` (``…|prefix=completions:<template hash>``), so readings made one way are
never served from the cache for the other.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import re
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from typing import TYPE_CHECKING, Any, TypeVar

from charter.backends.base import Generation, GenRequest, OptionScores, ScoreRequest
from charter.errors import BackendError

if TYPE_CHECKING:
    import httpx

    from charter.backends.base import BackendOptions
    from charter.backends.chat_template import ChatTemplate

log = logging.getLogger(__name__)

TOP_LOGPROBS = 20
"""The most next-token alternatives the OpenAI API returns."""

PREFIX_MODES = ("auto", "continue", "completions")
"""``extra.prefix``: probe the server, or pin chat-with-continuation or completions-over-the-chat-template."""

PROBE_USER = [{"role": "user", "content": "Say yes."}]
PROBE_PREFIXES = ("Yes.", "Yes. Yes.")
"""The probe's assistant prefixes: the second adds as many tokens after the first as the first adds after the
opened assistant turn, unless the server closes the turn (end-of-turn + a new header: more tokens)."""

NO_LOGPROBS_FIX = ("use a server that supports logprobs (vLLM, llama.cpp server, charter serve) "
                   "or the transformers backend")

T = TypeVar("T")
TopTokens = list[tuple[str, float]]
"""The most likely next tokens as ``(text, logprob)``, best first."""


class BatchError(BackendError):
    """A request of a batch failed for good; ``partial`` holds the results that finished (else ``None``)."""

    def __init__(self, problem: str, fix: str | None, partial: list[Any]) -> None:
        super().__init__(problem, fix)
        self.partial = partial


class _Retryable(Exception):
    """One attempt failed in a way worth retrying; ``wait`` is the server's Retry-After, if any."""

    def __init__(self, reason: str, wait: float | None = None) -> None:
        super().__init__(reason)
        self.wait = wait


def parse_rest(rest: str) -> tuple[str, str]:
    """Split ``"MODEL@BASE_URL"`` into ``(model, base_url)``; the URL falls back to ``$OPENAI_BASE_URL``."""
    m = re.fullmatch(r"(.+?)@(https?://\S+)", rest)
    if m:
        model, url = m.group(1), m.group(2)
    elif "@" in rest:
        raise BackendError(f"model 'openai/{rest}': the part after '@' is not an http(s) URL",
                           "write it as openai/MODEL@http://HOST:PORT/v1")
    else:
        model, url = rest, os.environ.get("OPENAI_BASE_URL", "")
        if not url:
            raise BackendError(f"model 'openai/{rest}' names no server URL",
                               "write it as openai/MODEL@http://HOST:PORT/v1 or set OPENAI_BASE_URL")
    return model, url.rstrip("/")


class OpenAIBackend:
    """Chat completions and option log-probabilities from an OpenAI-compatible HTTP server."""

    def __init__(self, spec: str, rest: str, options: BackendOptions) -> None:
        self.spec = spec
        self.model, self.base_url = parse_rest(rest)
        self.base_id = f"openai/{self.model}@{self.base_url}"
        """The server and model, without the scoring path (see :attr:`model_id`)."""
        self.options = options
        mode = str(options.extra.get("prefix", "auto"))
        if mode not in PREFIX_MODES:
            raise BackendError(f"extra.prefix {mode!r} is not one of {', '.join(PREFIX_MODES)}",
                               "use auto (probe the server), continue or completions")
        self.prefix_mode = mode
        template = options.extra.get("template")
        self.template_spec: str | None = str(template) if template else None
        """``extra.template``: where the completions path takes the chat template from (else the server)."""
        self._path: str | None = None if mode == "auto" else mode
        self._template: ChatTemplate | None = None
        self._template_error: BackendError | None = None
        self._pinned_id: str | None = None
        self.backoff = float(options.extra.get("backoff", 0.5))
        """Seconds before the first retry; doubled each retry (with jitter), capped at ``max_backoff``."""
        self.max_backoff = float(options.extra.get("max_backoff", 30.0))
        self.floored_options = 0
        """How many option log-probs were set to the floor because the option was not in the top list."""
        self._key = os.environ.get(options.api_key_env) or None
        self._client: httpx.Client | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._probe_lock = threading.Lock()  # the probe itself uses _lock (via _http)

    def __repr__(self) -> str:
        return f"OpenAIBackend({self.base_id!r})"

    @property
    def model_id(self) -> str:
        """The cache identity: ``openai/MODEL@URL`` when the server continues assistant prefixes, plus
        ``|prefix=completions:<template hash>`` when scoring goes through the completions endpoint (``:none`` when
        no chat template is at hand, so scoring fails). Reading it probes the server once (``extra.prefix: auto``)."""
        if self._pinned_id is not None:
            return self._pinned_id
        if self.score_path() == "continue":
            return self.base_id
        template = self._chat_template(required=False)
        return f"{self.base_id}|prefix=completions:{template.id if template else 'none'}"

    @model_id.setter
    def model_id(self, value: str) -> None:
        """Pin the identity (the Protocol's attribute is settable); the probe no longer decides it."""
        self._pinned_id = value

    def score_path(self) -> str:
        """``"continue"`` (chat completions continuing the assistant prefix) or ``"completions"``; probed once in
        ``auto`` mode. A server that cannot be reached is not settled: the next call probes again."""
        with self._probe_lock:
            if self._path is not None:
                return self._path
            try:
                continues = self.probe_prefix()
            except _Retryable as e:
                log.info("%s: cannot probe assistant-prefix continuation yet (%s)", self.base_url, e)
                return "continue"
            if continues is None:
                log.info("%s: the prefix probe was inconclusive; assuming the server continues an assistant "
                         "prefix (set extra.prefix to pin the path)", self.base_url)
            self._path = "completions" if continues is False else "continue"
            if self._path == "completions":
                log.info("%s does not continue an assistant prefix: options are scored over /completions with "
                         "the chat template", self.base_url)
            return self._path

    def probe_prefix(self) -> bool | None:
        """Whether the server continues a final assistant message (``continue_final_message``): True, False (it
        closes the message and opens a fresh turn), or None when it cannot tell (no usage counts, a 4xx answer).

        Three one-token requests: the user turn alone (assistant turn opened), then with the assistant prefixes
        :data:`PROBE_PREFIXES` continued. A continued prefix adds only its own tokens; a closed one adds the
        end-of-turn and a new assistant header as well, so the first step grows more than the second.
        Raises ``_Retryable`` when the server cannot be reached (one try, no backoff)."""

        def prompt_tokens(prefix: str | None) -> int:
            body: dict[str, Any] = {"model": self.model, "max_tokens": 1, "temperature": 0.0}
            messages = list(PROBE_USER)
            if prefix is not None:
                messages.append({"role": "assistant", "content": prefix})
                body |= {"continue_final_message": True, "add_generation_prompt": False, "logprobs": True,
                         "top_logprobs": 1, "charter_options": [prefix.split()[-1]]}
            body["messages"] = messages
            try:
                data = self._attempt(self.base_url + "/chat/completions", body)
            except BackendError:  # a 4xx: e.g. a strict server refusing the extra fields
                return 0
            return int((data.get("usage") or {}).get("prompt_tokens") or 0)

        n0, n1, n2 = (prompt_tokens(p) for p in (None, *PROBE_PREFIXES))
        if min(n0, n1, n2) <= 0 or n2 <= n1 or n1 <= n0:
            return None
        return (n1 - n0) <= (n2 - n1)

    def _chat_template(self, required: bool = True) -> ChatTemplate | None:
        """The chat template of the completions path: ``extra.template``, else the server's ``GET /props``."""
        if self._template is None and self._template_error is None:
            from charter.backends.chat_template import ChatTemplate, load_template

            try:
                if self.template_spec:
                    self._template = load_template(self.template_spec)
                else:
                    props = self._server_props()
                    text = props.get("chat_template")
                    if not isinstance(text, str) or not text:
                        raise BackendError(
                            f"{self.base_url} does not continue an assistant prefix (continue_final_message) and "
                            "does not expose its chat template",
                            "set extra.template to the served model's GGUF file or tokenizer folder ('embedded' "
                            "for the embedded model), or serve it with vLLM, llama-server or charter serve")
                    self._template = ChatTemplate(text, str(props.get("bos_token") or ""),
                                                  str(props.get("eos_token") or ""), self.base_url + "/props")
            except BackendError as e:
                self._template_error = e
        if self._template is None and required:
            assert self._template_error is not None
            raise self._template_error
        return self._template

    def _server_props(self) -> dict[str, Any]:
        """llama-server's ``GET /props`` (at the server root), or ``{}`` when the server has none."""
        import httpx

        root = self.base_url[:-3] if self.base_url.endswith("/v1") else self.base_url
        try:
            resp = self._http().get(root + "/props")
            data = resp.json() if resp.status_code == 200 else {}
        except (httpx.HTTPError, json.JSONDecodeError, UnicodeDecodeError):
            return {}
        return data if isinstance(data, dict) else {}

    # --- the Protocol ---------------------------------------------------------------------------------------

    def generate(self, requests: Sequence[GenRequest]) -> list[Generation]:
        """Complete every request (``POST /chat/completions``), in request order."""
        return self._map(self._generate_one, requests)

    def score_options(self, requests: Sequence[ScoreRequest]) -> list[OptionScores]:
        """Log-probabilities of each option as the next token after the assistant prefix."""
        return self._map(self._score_one, requests)

    def top_logprobs(self, requests: Sequence[ScoreRequest], k: int = TOP_LOGPROBS) -> list[TopTokens]:
        """The ``k`` most likely next tokens ``(text, logprob)`` after each request's prefix, best first."""
        return self._map(lambda r: self._top_one(r, min(k, TOP_LOGPROBS)), requests)

    def close(self) -> None:
        """Close the HTTP connections and the thread pool."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        if self._client is not None:
            self._client.close()
            self._client = None

    # --- one request ----------------------------------------------------------------------------------------

    def _generate_one(self, r: GenRequest) -> Generation:
        p = r.params
        body: dict[str, Any] = {"model": self.model, "messages": list(r.messages),
                                "max_tokens": p.max_new_tokens, "temperature": p.temperature,
                                "top_p": p.top_p, "seed": p.seed}
        if p.stop:
            body["stop"] = list(p.stop)
        data = self._post("/chat/completions", body)
        try:
            choice = data["choices"][0]
            text = choice["message"].get("content") or ""
            reason = choice.get("finish_reason")
        except (KeyError, IndexError, TypeError, AttributeError):
            raise BackendError(f"{self.base_url} answered without choices[0].message",
                               "check that the URL points at an OpenAI-compatible /v1 endpoint") from None
        usage = data.get("usage") or {}
        gen = Generation(text=text, finish_reason="length" if reason == "length" else "stop",
                         prompt_tokens=int(usage.get("prompt_tokens") or 0),
                         completion_tokens=int(usage.get("completion_tokens") or 0))
        if reason == "content_filter":
            gen.finish_reason, gen.error = "error", f"{self.base_url} withheld the answer (content_filter)"
        return gen

    def _top_one(self, r: ScoreRequest, k: int, options: Sequence[str] = ()) -> TopTokens:
        if r.assistant_prefix and self.score_path() == "completions":  # no prefix: any chat server reads it right
            return self._top_completion(r, k)
        messages = list(r.messages)
        body: dict[str, Any] = {"model": self.model, "max_tokens": 1, "temperature": 0.0, "logprobs": True,
                                "top_logprobs": k}
        if options:
            body["charter_options"] = list(options)
        if r.assistant_prefix:
            messages.append({"role": "assistant", "content": r.assistant_prefix})
            body |= {"continue_final_message": True, "add_generation_prompt": False}
        body["messages"] = messages
        data = self._post("/chat/completions", body)
        try:
            content = (data["choices"][0].get("logprobs") or {}).get("content") or []
            top = (content[0].get("top_logprobs") or []) if content else []
            pairs = [(str(t["token"]), float(t["logprob"])) for t in top]
        except (KeyError, IndexError, TypeError, AttributeError, ValueError):
            raise BackendError(f"{self.base_url} answered with malformed logprobs",
                               "check that the server is OpenAI-compatible") from None
        if not pairs:
            raise BackendError(f"{self.base_url}: server gives no log-probabilities", NO_LOGPROBS_FIX)
        return sorted(pairs, key=lambda t: -t[1])

    def _top_completion(self, r: ScoreRequest, k: int) -> TopTokens:
        """The top ``k`` next tokens after the chat-templated conversation + assistant prefix (``/completions``)."""
        template = self._chat_template()
        assert template is not None
        body = {"model": self.model, "prompt": template.render(r.messages) + r.assistant_prefix, "max_tokens": 1,
                "temperature": 0.0, "logprobs": k}
        data = self._post("/completions", body)
        try:
            lp = data["choices"][0].get("logprobs") or {}
            legacy = lp.get("top_logprobs")  # OpenAI's legacy shape: [{token: logprob, ...}] per position
            if legacy:
                pairs = [(str(t), float(v)) for t, v in legacy[0].items()]
            else:  # the chat shape, as llama-server answers: {"content": [{"top_logprobs": [...]}]}
                content = lp.get("content") or []
                pairs = [(str(t["token"]), float(t["logprob"])) for t in (content[0].get("top_logprobs") or [])] \
                    if content else []
        except (KeyError, IndexError, TypeError, AttributeError, ValueError):
            raise BackendError(f"{self.base_url}/completions answered with malformed logprobs",
                               "check that the server is OpenAI-compatible") from None
        if not pairs:
            raise BackendError(f"{self.base_url}/completions gives no log-probabilities", NO_LOGPROBS_FIX)
        return sorted(pairs, key=lambda t: -t[1])[:k]

    def _score_one(self, r: ScoreRequest) -> OptionScores:
        top = self._top_one(r, TOP_LOGPROBS, r.options)
        found: dict[str, float] = {}
        for option in r.options:
            matches = [lp for tok, lp in top if tok.strip() == option.strip()]
            if matches:
                peak = max(matches)
                found[option] = peak + math.log(sum(math.exp(lp - peak) for lp in matches))
        if not found:
            shown = ", ".join(repr(t) for t, _ in top[:5])
            return OptionScores(logprobs={}, error=f"none of the options {list(r.options)} is among the "
                                                   f"server's top {len(top)} next tokens (top: {shown})")
        floor = min(lp for _, lp in top) - 1.0
        missing = [o for o in r.options if o not in found]
        if missing:
            self.floored_options += len(missing)
            log.warning("options %s not in the top %d next tokens: floor log-prob %.2f used (reading marked "
                        "floored)", missing, len(top), floor)
        return OptionScores(logprobs={o: found.get(o, floor) for o in r.options}, floored=bool(missing))

    # --- HTTP with retries ----------------------------------------------------------------------------------

    def _http(self) -> httpx.Client:
        with self._lock:
            if self._client is None:
                import httpx

                headers = {"Authorization": f"Bearer {self._key}"} if self._key else {}
                n = max(1, self.options.concurrency)
                limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
                tls = self.base_url.startswith("https://")  # plain http: skip loading the certificate store
                self._client = httpx.Client(timeout=self.options.timeout, headers=headers, limits=limits,
                                            verify=tls)
            return self._client

    def _redact(self, text: str) -> str:
        return text.replace(self._key, "***") if self._key else text

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST ``body`` and return the JSON answer, retrying what is worth it; else raise BackendError."""
        abort: threading.Event | None = getattr(_local, "abort", None)  # set by _map for the current batch
        url = self.base_url + path
        tries = max(0, self.options.max_retries) + 1
        reason = ""
        last: _Retryable | None = None
        for attempt in range(tries):
            if attempt:
                delay = min(self.max_backoff, self.backoff * 2 ** (attempt - 1))
                delay = delay / 2 + random.uniform(0, delay / 2)  # jitter: spread retries of a batch apart
                if wait_for := getattr(last, "wait", None):
                    delay = min(max(delay, wait_for), self.max_backoff)
                if abort is None:
                    time.sleep(delay)
                elif abort.wait(delay):
                    break  # another request of the batch failed for good: stop retrying
            try:
                return self._attempt(url, body)
            except _Retryable as e:
                last, reason = e, str(e)
                log.info("%s: %s (try %d of %d)", url, reason, attempt + 1, tries)
        if reason.startswith("connection refused") or reason.startswith("cannot connect"):
            raise BackendError(f"cannot reach {self.base_url}: {reason}",
                               "start the server or fix the URL in the model string")
        if reason.startswith("no answer within"):
            raise BackendError(f"{url}: {reason} ({tries} tries)",
                               "raise the backend timeout or lower concurrency; check the server's load")
        raise BackendError(f"{url}: {reason} ({tries} tries)",
                           "check the server's log, then run again to resume")

    def _attempt(self, url: str, body: dict[str, Any]) -> dict[str, Any]:
        import httpx

        try:
            resp = self._http().post(url, json=body)
        except httpx.ConnectError as e:
            text = str(e)
            why = "connection refused" if "refused" in text.lower() else f"cannot connect ({text})"
            raise _Retryable(why) from None
        except httpx.TimeoutException:
            raise _Retryable(f"no answer within {self.options.timeout:g}s") from None
        except httpx.TransportError as e:  # dropped connection, body cut short
            raise _Retryable(f"connection closed mid-answer ({type(e).__name__})") from None
        if resp.status_code == 429 or resp.status_code >= 500:
            raise _Retryable(f"HTTP {resp.status_code}: {self._server_message(resp)}", _retry_after(resp))
        if resp.status_code >= 400:
            fix = {401: f"set the API key in ${self.options.api_key_env}",
                   403: f"check the API key in ${self.options.api_key_env}",
                   404: "check the model name and the base URL (it usually ends in /v1)"}.get(
                resp.status_code, "fix the request (e.g. a shorter prompt or fewer max tokens) and run again")
            msg = self._server_message(resp)
            raise BackendError(f"{url} refused the request: HTTP {resp.status_code}: {msg}", fix)
        try:
            data = resp.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise _Retryable("answer cut off or not JSON") from None
        if not isinstance(data, dict):
            raise _Retryable("answer is not a JSON object")
        return data

    def _server_message(self, resp: httpx.Response) -> str:
        try:
            data = resp.json()
            err = data.get("error", data) if isinstance(data, dict) else data
            msg = err.get("message", err) if isinstance(err, dict) else err
            text = str(msg)
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            text = resp.text
        text = " ".join(text.split())[:300] or resp.reason_phrase
        return self._redact(text)

    # --- batches --------------------------------------------------------------------------------------------

    def _map(self, fn: Callable[[Any], T], requests: Sequence[Any]) -> list[T]:
        """Run ``fn`` over ``requests`` on the pool: results in order, or a BatchError with what finished."""
        if not requests:
            return []
        with self._lock:
            if self._pool is None:
                n = max(1, self.options.concurrency)
                self._pool = ThreadPoolExecutor(n, thread_name_prefix="charter-http")
            pool = self._pool
        abort = threading.Event()

        def run(r: Any) -> T:
            if abort.is_set():
                raise _Cancelled
            _local.abort = abort
            try:
                return fn(r)
            except BaseException:
                abort.set()  # queued requests are dropped; those in flight give up at their next retry
                raise

        futures: list[Future[T]] = [pool.submit(run, r) for r in requests]
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        failed = next((f for f in futures if f in done and f.exception() is not None), None)
        if failed is None:
            return [f.result() for f in futures]
        for f in futures:
            f.cancel()
        wait(futures)
        partial = [f.result() if not f.cancelled() and f.exception() is None else None for f in futures]
        exc = failed.exception()
        if isinstance(exc, BackendError):
            raise BatchError(exc.problem, exc.fix, partial) from None
        raise exc  # type: ignore[misc]


class _Cancelled(Exception):
    """A queued request skipped because another request of its batch failed."""


_local = threading.local()


def _retry_after(resp: httpx.Response) -> float | None:
    try:
        return float(resp.headers.get("retry-after", ""))
    except ValueError:
        return None
