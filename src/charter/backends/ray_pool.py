"""Any backend on a Ray cluster: a pool of Ray actors, each holding one copy of the backend.

:class:`RayBackend` implements the same :class:`~charter.backends.base.Backend` Protocol as the backend it wraps, so
every stage runs on Ray unchanged::

    charter run cfg.yaml --ray auto            # the cluster `ray start --head` started on this machine
    charter run cfg.yaml --ray 10.0.0.5:6379   # a cluster's GCS address
    charter run cfg.yaml --ray local           # a private one-machine cluster on 127.0.0.1, gone when the run ends

Requests are split into chunks (``batch_size`` each) and the chunks spread over the workers. Results come back to
the driver: :class:`charter.store.CachedBackend` calls :meth:`RayBackend.map_chunks` and writes each chunk to the run
folder's SQLite cache the moment it completes, so the resume guarantees are those of a local run (a killed driver
loses only the chunks in flight, at most one per worker). Cache keys use the wrapped backend's ``model_id``, so a run
may switch between local and Ray freely.

``num_workers`` long-lived actors load the model once and serve every stage's calls, dispatched by
:class:`ray.util.ActorPool` (a free worker takes the next chunk). (A Ray Data ``map_batches`` engine was tried and
removed: it loaded the model afresh on every call and no measurement showed a gain; see docs/scale.md.)

Per role in a run config, ``extra`` may set ``ray_workers``, ``ray_cpus_per_worker``, ``ray_threads_per_worker`` and
``ray_gpus_per_worker`` (see :func:`wrap_with_ray`). Every worker needs charter and the model
files at the same path as the driver (true on one machine; on a real cluster install both on every node).
"""

from __future__ import annotations

import logging
import os
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import Any

from charter import errors
from charter.backends.base import BackendOptions, Generation, GenRequest, OptionScores, ScoreRequest, split_spec
from charter.backends.ray_local import LOOPBACK_ENV, is_loopback_ip
from charter.errors import BackendError, CharterError

RAY_EXTRA_KEYS = ("ray_workers", "ray_cpus_per_worker", "ray_threads_per_worker", "ray_gpus_per_worker")
FORWARD_ENV = ("CHARTER_CACHE", "HF_HOME", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "TOKENIZERS_PARALLELISM")
"""Environment variables copied from the driver into every worker (where models live, offline mode)."""


# ----------------------------------------------------------------------------------------------- connecting


def _auto_address() -> str | None:
    """What Ray's ``"auto"`` resolves to: ``$RAY_ADDRESS``, else the cluster ``ray start`` recorded on this machine."""
    if os.environ.get("RAY_ADDRESS"):
        return os.environ["RAY_ADDRESS"]
    recorded = Path(os.environ.get("RAY_TMPDIR", "/tmp")) / "ray" / "ray_current_cluster"
    if not recorded.is_file():
        return None
    return recorded.read_text().strip() or None


def ray_init(address: str) -> ModuleType:
    """Connect this process to the Ray cluster at ``address`` (once) and return the ``ray`` module.

    Args:
        address: ``"auto"`` (the cluster started on this machine or ``$RAY_ADDRESS``), ``"HOST:PORT"`` of a
            cluster's GCS, ``"ray://HOST:PORT"`` (Ray Client) or ``"local"`` (start a private cluster in this
            process on 127.0.0.1 with every CPU; usage statistics off).

    Raises:
        BackendError: Ray is not installed, or no cluster answers at ``address``.
    """
    resolved = _auto_address() if address == "auto" else address
    host, _, port = (resolved or "").removeprefix("ray://").rpartition(":")
    host = host.strip("[]")
    on_loopback = address == "local" or host == "localhost" or is_loopback_ip(host)
    if on_loopback:
        os.environ.setdefault(LOOPBACK_ENV, "0")
    if address == "local":
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        import ray
    except ImportError:
        raise BackendError("ray is not installed", "pip install 'charter[ray]'") from None
    if ray.is_initialized():
        return ray
    from ray._private import ray_constants

    if on_loopback and ray_constants.ENABLE_RAY_CLUSTER:
        raise BackendError(
            f"Ray was imported before charter could keep it on 127.0.0.1 (address {address!r})",
            f"set {LOOPBACK_ENV}=0 in the environment for `ray start` and for charter",
        )
    if address != "local" and host and port.isdigit():
        _check_reachable(host, int(port), address)  # Ray itself retries an unreachable address for minutes
    kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": False}
    try:
        if address == "local":
            ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False, _node_ip_address="127.0.0.1", **kwargs)
        else:
            ray.init(address=address, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as e:
        if "InvalidAuthToken" in f"{e} {e.__cause__}":
            raise BackendError(f"the Ray cluster at {address!r} requires token authentication",
                               "set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN (or ~/.ray/auth_token) to the "
                               "cluster's token") from None
        raise BackendError(
            f"cannot connect to a Ray cluster at {address!r} ({str(e).splitlines()[0]})",
            "start one with `ray start --head --node-ip-address=127.0.0.1` and pass its address, or use --ray local",
        ) from None
    return ray


def _check_reachable(host: str, port: int, address: str, timeout: float = 5.0) -> None:
    import socket

    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as e:
        raise BackendError(f"no Ray cluster answers at {host}:{port} (from {address!r}: {e.strerror or e})",
                           "start one with `ray start --head --node-ip-address=127.0.0.1`, check the address "
                           "(`ray status`), or use --ray local") from None


# ------------------------------------------------------------------------------------------------- workers


class BackendWorker:
    """One backend inside a Ray worker process (a Ray actor)."""

    def __init__(self, spec: str, options: BackendOptions, env: dict[str, str]) -> None:
        os.environ.update(env)
        if options.threads > 0:
            os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(options.threads)
        from charter.backends import load_backend

        self.backend = load_backend(spec, options)

    def info(self) -> dict[str, Any]:
        """The wrapped backend's identity and where it runs."""
        return {"model_id": self.backend.model_id, "pid": os.getpid()}

    def run(self, index: int, method: str, requests: list[Any]) -> tuple[int, list[Any], int]:
        """Run one chunk (``method`` is ``"generate"`` or ``"score_options"``): ``(index, results, worker pid)``."""
        return index, getattr(self.backend, method)(requests), os.getpid()


def _charter_error(e: BaseException) -> BaseException:
    """The CharterError a worker raised (Ray wraps it), else a BackendError naming the Ray failure."""
    seen: BaseException | None = e
    while seen is not None:
        if isinstance(seen, CharterError):
            return seen
        seen = getattr(seen, "cause", None) or seen.__cause__
    # An actor whose __init__ failed reports it only as text (its traceback): take the error's last line.
    found = re.findall(r"charter\.errors\.(\w+): (.+)", str(e))
    if found:
        name, message = found[-1]
        cls = getattr(errors, name, BackendError)
        return (cls if isinstance(cls, type) and issubclass(cls, CharterError) else BackendError)(message.strip())
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return BackendError(f"a Ray worker failed: {first}",
                        "finished chunks are saved; see the worker logs under the Ray session folder, then re-run")


# --------------------------------------------------------------------------------------------------- backend


class RayBackend:
    """The backend named by ``spec``, run by a pool of Ray workers; same Protocol, same results, same cache keys.

    Args:
        spec: The wrapped backend's spec, e.g. ``"transformers/embedded"``.
        options: Its options; ``batch_size`` is the chunk one worker runs at a time, ``threads`` is replaced by
            ``threads_per_worker``.
        address: Where the cluster is (see :func:`ray_init`).
        num_workers: Workers in the pool (default: as many as the cluster's free CPUs hold).
        cpus_per_worker: Ray CPUs reserved per worker (fractions allowed, e.g. 0.5 to share a small box).
        threads_per_worker: torch threads in each worker (default: ``cpus_per_worker`` rounded down, at least 1).
        gpus_per_worker: Ray GPUs per worker (e.g. 1 for a vLLM backend).
        ready_timeout: Seconds to wait for the workers to load the model before giving up.

    Raises:
        BackendError: Ray is missing, the cluster is unreachable or too small, or a worker cannot load the backend.
    """

    def __init__(
        self,
        spec: str,
        options: BackendOptions | None = None,
        address: str = "auto",
        num_workers: int | None = None,
        cpus_per_worker: float = 1.0,
        threads_per_worker: int | None = None,
        gpus_per_worker: float = 0.0,
        ready_timeout: float = 600.0,
    ) -> None:
        split_spec(spec)  # a malformed spec fails here, before any worker starts
        if cpus_per_worker <= 0:
            raise BackendError(f"cpus_per_worker must be > 0, got {cpus_per_worker}", "use e.g. 1 or 0.5")
        options = options or BackendOptions()
        self.ray = ray_init(address)
        self.spec = spec
        self.batch_size = max(1, options.batch_size)
        threads = threads_per_worker or max(1, int(cpus_per_worker))
        extra = {k: v for k, v in options.extra.items() if k not in RAY_EXTRA_KEYS}
        self.options = replace(options, threads=threads, extra=extra)
        self.remote_args: dict[str, Any] = {"num_cpus": cpus_per_worker, "num_gpus": gpus_per_worker}
        self.num_workers = num_workers or self._free_workers(cpus_per_worker, gpus_per_worker)
        self.env = {k: os.environ[k] for k in FORWARD_ENV if k in os.environ}
        self.calls = 0
        """Requests completed by the workers through this object (a cache hit never reaches here)."""
        self.worker_chunks: Counter[int] = Counter()
        """Chunks completed per worker process id."""
        self._actors: list[Any] = []
        worker = self.ray.remote(BackendWorker).options(max_restarts=1, max_task_retries=1, **self.remote_args)
        self._actors = [worker.remote(spec, self.options, self.env) for _ in range(self.num_workers)]
        infos = self._wait_ready(ready_timeout)
        self.model_id: str = infos[0]["model_id"]
        self.worker_pids = [i["pid"] for i in infos]

    # ------------------------------------------------------------------ setup
    def _free_workers(self, cpus: float, gpus: float) -> int:
        free = self.ray.available_resources()
        n = int(free.get("CPU", 0) // cpus)
        if gpus:
            n = min(n, int(free.get("GPU", 0) // gpus))
        if n < 1:
            raise BackendError(
                f"the Ray cluster has no free {'GPU' if gpus and free.get('GPU', 0) < gpus else 'CPU'} for a worker "
                f"of {self.spec} (free: {dict(free)})",
                "stop other Ray jobs, or give each role fewer/lighter workers (extra: ray_workers, "
                "ray_cpus_per_worker: 0.5)",
            )
        return n

    def _wait_ready(self, timeout: float) -> list[dict[str, Any]]:
        refs = [a.info.remote() for a in self._actors]
        done, pending = self.ray.wait(refs, num_returns=len(refs), timeout=timeout)
        if pending:
            self.close()
            raise BackendError(
                f"{len(pending)} of {len(refs)} Ray workers for {self.spec} were not ready after {timeout:.0f}s",
                "check `ray status` for free CPUs (lower ray_workers or ray_cpus_per_worker) and the worker logs",
            )
        try:
            return list(self.ray.get(refs))
        except self.ray.exceptions.RayError as e:
            self.close()
            raise _charter_error(e) from None

    def close(self) -> None:
        """Stop the pool's actors (they also end with the driver process)."""
        for a in self._actors:
            self.ray.kill(a)
        self._actors = []

    def __enter__(self) -> RayBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------- running
    def map_chunks(self, method: str, chunks: Sequence[Sequence[Any]]) -> Iterator[tuple[int, list[Any]]]:
        """Run every chunk on the pool; yield ``(chunk index, results)`` in completion order.

        This is the streaming hook :class:`charter.store.CachedBackend` uses to persist each chunk as it finishes.

        Args:
            method: ``"generate"`` or ``"score_options"``.
            chunks: Lists of requests; each goes to one worker as one call of ``method``.
        """
        if method not in ("generate", "score_options"):
            raise ValueError(f"unknown backend method {method!r}")
        if not chunks:
            return
        ray = self.ray
        items = [(j, method, list(c)) for j, c in enumerate(chunks)]
        if not self._actors:
            raise BackendError(f"the Ray pool for {self.spec} is closed", "create a new RayBackend")
        pool = ray.util.ActorPool(self._actors)  # a fresh pool per call: nothing left over from a failed call
        results: Iterator[tuple[int, list[Any], int]] = pool.map_unordered(lambda a, v: a.run.remote(*v), items)
        try:
            for j, outs, pid in results:
                if len(outs) != len(chunks[j]):
                    raise BackendError(f"a Ray worker returned {len(outs)} results for {len(chunks[j])} requests",
                                       "this is a bug in the wrapped backend; please report it")
                self.calls += len(outs)
                self.worker_chunks[pid] += 1
                yield j, outs
        except ray.exceptions.RayError as e:
            raise _charter_error(e) from None

    def _ordered(self, method: str, requests: Sequence[Any]) -> list[Any]:
        chunks = [list(requests[s : s + self.batch_size]) for s in range(0, len(requests), self.batch_size)]
        out: list[list[Any]] = [[] for _ in chunks]
        for j, outs in self.map_chunks(method, chunks):
            out[j] = outs
        return [r for chunk in out for r in chunk]

    def generate(self, requests: Sequence[GenRequest]) -> list[Generation]:
        """Complete every request on the pool; results in request order."""
        return self._ordered("generate", requests)

    def score_options(self, requests: Sequence[ScoreRequest]) -> list[OptionScores]:
        """Read option log-probabilities on the pool; results in request order."""
        return self._ordered("score_options", requests)


def wrap_with_ray(backend_spec: str, options: BackendOptions | None, address: str) -> RayBackend:
    """The backend of ``backend_spec`` on a Ray pool, configured from ``options.extra`` (``charter run --ray``).

    ``extra`` keys (all optional): ``ray_workers`` (int), ``ray_cpus_per_worker`` (float, default 1),
    ``ray_threads_per_worker`` (int), ``ray_gpus_per_worker`` (float, default 0).
    """
    options = options or BackendOptions()
    x = options.extra
    try:
        workers = int(x["ray_workers"]) if x.get("ray_workers") else None
        threads = int(x["ray_threads_per_worker"]) if x.get("ray_threads_per_worker") else None
        cpus = float(x.get("ray_cpus_per_worker", 1.0))
        gpus = float(x.get("ray_gpus_per_worker", 0.0))
    except (TypeError, ValueError) as e:
        raise BackendError(f"bad Ray setting in extra for {backend_spec}: {e}",
                           "ray_workers/ray_threads_per_worker are integers, ray_*_per_worker numbers") from None
    return RayBackend(backend_spec, options, address=address, num_workers=workers, cpus_per_worker=cpus,
                      threads_per_worker=threads, gpus_per_worker=gpus)
