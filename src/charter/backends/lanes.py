"""Local data parallelism: one model process per core (``extra: {workers: N}`` on a ``transformers`` model).

On a small CPU, one process with N torch threads uses the extra cores poorly for a small model: a decode step is
many small matrix products, and a second thread added ~25% on the 2-core machine charter is built on, while two
processes of one thread each doubled throughput (bench/ray.py: 2.05x). :class:`LanesBackend` does that without Ray:
it starts ``workers`` fresh Python processes (``python -m charter.backends.lanes``: nothing forked, so no OpenMP
state is copied, and the caller's script needs no ``__main__`` guard), each loading the model with
``threads / workers`` torch threads, splits each call's requests between them (sorted by length and dealt in turn,
so every lane gets a similar mix) and puts the answers back in request order.

Answers do not depend on the split: sampling is seeded per request, and greedy decoding is per row. The cache
identity is the single-process backend's, so a run may switch ``workers`` freely.
"""

from __future__ import annotations

import atexit
import contextlib
import os
from collections.abc import Sequence
from typing import Any

from charter.backends.base import BackendOptions, Generation, GenRequest, OptionScores, ScoreRequest
from charter.errors import BackendError


def _lane_main(conn: Any) -> None:
    """A lane process: load the model named by the first message, then answer ``(method, requests)`` messages
    until ``None`` arrives."""
    try:
        spec, rest, options = conn.recv()
    except (EOFError, OSError):
        return
    try:
        from charter.backends.transformers import TransformersBackend

        backend: Any = TransformersBackend(spec, rest, options)
        conn.send(("ready", None))
    except Exception as e:  # noqa: BLE001 - reported to the parent, which raises it as a BackendError
        conn.send(("error", f"{type(e).__name__}: {e}"))
        return
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):  # the parent is gone (killed): nothing left to answer
            return
        if message is None:
            return
        method, requests = message
        try:
            conn.send(("ok", getattr(backend, method)(requests)))
        except Exception as e:  # noqa: BLE001
            conn.send(("error", f"{type(e).__name__}: {e}"))


class LanesBackend:
    """A ``transformers`` model served by ``workers`` local processes (see the module docstring).

    Args:
        spec: The model spec, e.g. ``transformers/embedded``.
        rest: The part after ``transformers/``.
        options: Backend options; ``extra["workers"]`` lanes, each with ``threads // workers`` torch threads
            (``threads`` 0 = every core).
    """

    def __init__(self, spec: str, rest: str, options: BackendOptions) -> None:
        import socket
        import subprocess
        import sys
        from multiprocessing.connection import Connection

        from charter.backends.transformers import model_identity

        self.spec = spec
        self.model_id = model_identity(rest, options)
        self.workers = int(options.extra.get("workers", 1))
        if self.workers < 1:
            raise BackendError(f"workers is {self.workers}", "set extra.workers to 1 or more")
        total = options.threads or os.cpu_count() or 1
        per_lane = max(1, total // self.workers)
        extra = {k: v for k, v in options.extra.items() if k != "workers"}
        lane_options = BackendOptions(**{**vars(options), "threads": per_lane, "extra": extra})
        self._lanes: list[tuple[Any, Any]] = []
        atexit.register(self.close)
        for _ in range(self.workers):
            mine, theirs = socket.socketpair()
            proc = subprocess.Popen(
                [sys.executable, "-m", "charter.backends.lanes", str(theirs.fileno())],
                pass_fds=[theirs.fileno()],
                env={**os.environ, "OMP_NUM_THREADS": str(per_lane)},
            )
            theirs.close()
            conn = Connection(mine.detach())
            conn.send((spec, rest, lane_options))
            self._lanes.append((proc, conn))
        self._collect([conn for _, conn in self._lanes])

    def _collect(self, conns: Sequence[Any]) -> list[Any]:
        """The reply of every lane in ``conns``, read from *all* of them before any failure is raised, so no lane
        is left holding an unread reply that a later call would take for its own."""
        replies: list[tuple[str, Any]] = []
        for conn in conns:
            try:
                replies.append(conn.recv())
            except (EOFError, OSError):
                replies.append(("died", None))
        if any(status == "died" for status, _ in replies):
            self.close()
            raise BackendError(f"a worker process of {self.spec} died", "check memory (each worker holds the "
                               "model), or set extra.workers to 1")
        failed = next((value for status, value in replies if status == "error"), None)
        if failed is not None:
            raise BackendError(f"worker of {self.spec} failed: {failed}", "run with extra.workers: 1 to see it "
                               "in this process")
        return [value for _, value in replies]

    def _spread(self, method: str, requests: Sequence[Any], size: Any) -> list[Any]:
        """Deal ``requests`` (longest first) to the lanes in turn, run them at once, and restore their order."""
        if not requests:
            return []
        order = sorted(range(len(requests)), key=lambda i: -size(requests[i]))
        shares = [order[k :: len(self._lanes)] for k in range(len(self._lanes))]
        busy = [(conn, share) for (_, conn), share in zip(self._lanes, shares, strict=True) if share]
        for conn, share in busy:
            conn.send((method, [requests[i] for i in share]))
        out: list[Any] = [None] * len(requests)
        for (_, share), results in zip(busy, self._collect([conn for conn, _ in busy]), strict=True):
            for i, result in zip(share, results, strict=True):
                out[i] = result
        return out

    def generate(self, requests: Sequence[GenRequest]) -> list[Generation]:
        """See :meth:`charter.backends.base.Backend.generate`."""
        return self._spread("generate", requests, lambda r: sum(len(m["content"]) for m in r.messages))

    def score_options(self, requests: Sequence[ScoreRequest]) -> list[OptionScores]:
        """See :meth:`charter.backends.base.Backend.score_options`."""
        return self._spread("score_options", requests, lambda r: sum(len(m["content"]) for m in r.messages))

    def close(self) -> None:
        """Stop the worker processes (also done at exit)."""
        import subprocess

        for proc, conn in self._lanes:
            with contextlib.suppress(OSError, ValueError):  # already gone
                conn.send(None)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
        self._lanes = []


if __name__ == "__main__":
    import sys
    from multiprocessing.connection import Connection

    _lane_main(Connection(int(sys.argv[1])))
