"""Stages on a real local Ray cluster (2 CPUs, 127.0.0.1 only): same results as local, same resume guarantees.

The cluster is started with ``ray start --head --block`` in its own session and stopped in teardown by the ids of the
processes it started (never ``ray stop``, which would stop every Ray cluster of this user on the machine).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from charter.backends import BackendOptions, load_backend
from charter.backends.base import GenParams, GenRequest, ScoreRequest
from charter.backends.mock import MockBackend
from charter.backends.ray_local import LocalCluster, is_loopback_ip
from charter.backends.ray_pool import RayBackend, wrap_with_ray
from charter.errors import BackendError
from charter.store import CachedBackend, CallCache

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # read by Ray when it is imported: loopback only
CLUSTER_ENV = {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


@pytest.fixture(scope="module")
def ray() -> Any:
    return pytest.importorskip("ray")


@pytest.fixture(scope="module")
def cluster(ray: Any) -> Iterator[LocalCluster]:
    from ray._private import ray_constants

    assert not ray_constants.ENABLE_RAY_CLUSTER, "Ray was imported before this module could keep it on loopback"
    c = LocalCluster(num_cpus=2, env=CLUSTER_ENV)
    try:
        yield c
    finally:
        if ray.is_initialized():
            ray.shutdown()
        c.stop()


@pytest.fixture(scope="module")
def lively_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random Llama with larger weights, so that it writes varied words (the default init only emits
    newlines, which would make comparing outputs vacuous)."""
    import torch
    from transformers import AutoConfig, AutoTokenizer, LlamaForCausalLM

    out = tmp_path_factory.mktemp("lively-llama-ray")
    config = AutoConfig.from_pretrained(tiny_model_dir)
    config.initializer_range = 0.2
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(out)
    return out


def _gen_requests(n: int, params: GenParams) -> list[GenRequest]:
    return [GenRequest.of([{"role": "user", "content": f"question {i}: " + "why? " * (i % 5)}], params)
            for i in range(n)]


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


class OutOfOrder(MockBackend):
    """A parallel backend stand-in: yields chunks last-first, optionally failing after ``fail_after`` chunks."""

    def __init__(self, fail_after: int | None = None) -> None:
        super().__init__()
        self.fail_after = fail_after

    def map_chunks(self, method: str, chunks: list[list[Any]]) -> Iterator[tuple[int, list[Any]]]:
        for n, j in enumerate(reversed(range(len(chunks)))):
            if n == self.fail_after:
                raise BackendError("worker lost", "re-run")
            yield j, getattr(self, method)(chunks[j])


def test_cached_backend_persists_streamed_chunks_in_completion_order(tmp_path: Path) -> None:
    reqs = _gen_requests(10, GenParams(max_new_tokens=40))
    cache = CallCache(tmp_path / "calls.sqlite")
    seen: list[int] = []
    got = CachedBackend(OutOfOrder(), cache, batch_size=3).generate(reqs, progress=lambda d, t: seen.append(d))
    assert got == MockBackend().generate(reqs)  # request order, whatever order the chunks finished in
    assert seen == [0, 1, 4, 7, 10] and cache.count() == 10  # the last (shortest) chunk of 1 came back first


def test_chunks_finished_before_a_parallel_failure_are_kept_and_not_redone(tmp_path: Path) -> None:
    reqs = _gen_requests(10, GenParams(max_new_tokens=40))
    cache = CallCache(tmp_path / "calls.sqlite")
    with pytest.raises(BackendError, match="worker lost"):
        CachedBackend(OutOfOrder(fail_after=2), cache, batch_size=3).generate(reqs)
    assert cache.count() == 4  # chunks of 1 and 3 came back before the failure
    again = OutOfOrder()
    assert CachedBackend(again, cache, batch_size=3).generate(reqs) == MockBackend().generate(reqs)
    assert len(again.calls) == 6


def test_an_address_where_no_cluster_listens_fails_fast_with_one_line(ray: Any) -> None:
    with socket.socket() as s:  # a loopback port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = ("from charter.backends.ray_pool import RayBackend\n"
            f"RayBackend('mock/echo', address='127.0.0.1:{port}')")
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and time.monotonic() - start < 45
    assert f"BackendError: no Ray cluster answers at 127.0.0.1:{port}" in done.stderr


def test_cluster_and_workers_listen_on_loopback_only(cluster: LocalCluster, ray: Any) -> None:
    with RayBackend("mock/echo", address=cluster.address, num_workers=2) as rb:
        assert len(set(rb.worker_pids)) == 2
        sockets = cluster.listening()
    assert any(port == cluster.port for _, _, port in sockets), sockets
    assert {"gcs_server", "raylet"} <= {name for name, _, _ in sockets}
    assert len(sockets) >= 4
    exposed = [s for s in sockets if not is_loopback_ip(s[1])]
    assert not exposed, f"Ray listens beyond loopback: {exposed}"
    driver = [c for c in psutil.Process().net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
    assert all(is_loopback_ip(c.laddr.ip) for c in driver), driver
    assert ray.util.get_node_ip_address() == "127.0.0.1"


def test_pool_results_equal_local_and_a_rerun_makes_no_calls(cluster: LocalCluster, tmp_path: Path) -> None:
    log = tmp_path / "calls.log"
    spec = f"mock/echo?delay=0.02&log={log}"
    gen = _gen_requests(24, GenParams(max_new_tokens=40, seed=3))
    score = [ScoreRequest.of([{"role": "user", "content": f"pick {i}"}], ("A", "B")) for i in range(10)]
    local = CachedBackend(MockBackend.from_spec("mock/echo"), CallCache(tmp_path / "local.sqlite"), batch_size=3)
    want_gen, want_score = local.generate(gen), local.score_options(score)

    rb = wrap_with_ray(spec, BackendOptions(batch_size=3, extra={"ray_workers": 2}), cluster.address)
    try:
        assert rb.num_workers == 2 and rb.model_id == "mock/echo"  # the wrapped backend's identity: same cache keys
        cache = CallCache(tmp_path / "ray.sqlite")
        first = CachedBackend(rb, cache, batch_size=3)
        progress: list[tuple[int, int]] = []
        assert first.generate(gen, progress=lambda d, t: progress.append((d, t))) == want_gen
        assert first.score_options(score) == want_score
        assert rb.calls == _lines(log) == 34 and cache.count() == 34
        assert progress[-1] == (24, 24) and len(progress) == 1 + 8  # one update per chunk of 3
        assert len(rb.worker_chunks) == 2, "both workers should have run chunks"

        again = CachedBackend(rb, cache, batch_size=3)
        assert again.generate(gen) == want_gen and again.score_options(score) == want_score
        assert rb.calls == _lines(log) == 34 and again.cache.misses == 34  # only the first run's misses
        # and the plain Protocol (no cache) gives the same answers in request order
        assert rb.generate(gen[:7]) == want_gen[:7]
    finally:
        rb.close()


def test_tiny_model_on_two_workers_equals_the_local_backend(cluster: LocalCluster, lively_dir: Path,
                                                            tmp_path: Path) -> None:
    spec = f"transformers//{lively_dir}"
    opts = BackendOptions(dtype="float32", threads=1, batch_size=2)
    reqs = (_gen_requests(6, GenParams(max_new_tokens=8))
            + _gen_requests(4, GenParams(max_new_tokens=8, temperature=0.8, seed=7)))
    local_backend = load_backend(spec, opts)
    want = CachedBackend(local_backend, CallCache(tmp_path / "local.sqlite"), batch_size=2).generate(reqs)
    assert len({g.text for g in want}) > 3  # varied words, so the comparison means something

    with RayBackend(spec, opts, address=cluster.address, num_workers=2) as rb:
        assert rb.model_id == local_backend.model_id
        cache = CallCache(tmp_path / "ray.sqlite")
        assert CachedBackend(rb, cache, batch_size=2).generate(reqs) == want
        assert rb.calls == 10 and len(rb.worker_chunks) == 2
        assert CachedBackend(rb, cache, batch_size=2).generate(reqs) == want
        assert rb.calls == 10


def test_a_worker_that_cannot_load_its_model_is_a_one_line_error(cluster: LocalCluster, tmp_path: Path) -> None:
    with pytest.raises(BackendError, match="does not exist"):
        RayBackend(f"transformers//{tmp_path}/no-such-model", address=cluster.address, num_workers=1)


DRIVER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from charter.backends import BackendOptions
    from charter.backends.base import GenParams, GenRequest
    from charter.backends.ray_pool import RayBackend
    from charter.store import CachedBackend, CallCache

    address, db, log, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    rb = RayBackend(f"mock/echo?delay=0.15&log={log}", BackendOptions(batch_size=2), address=address, num_workers=2)
    reqs = [GenRequest.of([{"role": "user", "content": f"q{i}"}], GenParams(max_new_tokens=40)) for i in range(n)]
    print("ready", flush=True)
    CachedBackend(rb, CallCache(Path(db)), batch_size=2).generate(reqs)
    print("done", flush=True)
""")


def _rows(db: Path) -> int:
    try:
        with sqlite3.connect(db, timeout=5) as conn:
            return int(conn.execute("SELECT COUNT(*) FROM calls").fetchone()[0])
    except sqlite3.OperationalError:
        return 0


@pytest.mark.slow
def test_killed_ray_driver_resumes_without_repeating_finished_calls(cluster: LocalCluster, tmp_path: Path) -> None:
    n = 40
    db, log1, log2 = tmp_path / "calls.sqlite", tmp_path / "run1.log", tmp_path / "run2.log"
    env = {**os.environ, **CLUSTER_ENV, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, cluster.address, str(db), str(log1), str(n)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 90
    while _rows(db) < 8:  # a few chunks persisted, the rest still to do
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert time.monotonic() < deadline, "the Ray driver never got going"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    at_kill = _rows(db)
    assert 8 <= at_kill < n

    # log is not part of the mock's identity: the second run hits the same cache keys but logs to its own file
    done = subprocess.run([sys.executable, "-c", DRIVER, cluster.address, str(db), str(log2), str(n)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert _lines(log2) == n - at_kill, "the resumed run must call exactly the requests not yet persisted"
    assert _rows(db) == n


LOCAL_DRIVER = textwrap.dedent("""
    import json
    import psutil
    from charter.backends.base import GenRequest
    from charter.backends.ray_local import is_loopback_ip
    from charter.backends.ray_pool import RayBackend

    rb = RayBackend("mock/echo", address="local", num_workers=2, cpus_per_worker=0.5)
    out = rb.generate([GenRequest.of([{"role": "user", "content": f"q{i}"}]) for i in range(4)])
    me = psutil.Process()
    sockets = []
    for p in [me, *me.children(recursive=True)]:
        try:
            sockets += [c.laddr.ip for c in p.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
        except psutil.Error:
            pass
    print(json.dumps({"texts": [g.text for g in out], "sockets": sockets,
                      "exposed": [ip for ip in sockets if not is_loopback_ip(ip)]}))
""")


@pytest.mark.slow
def test_ray_local_starts_a_private_loopback_cluster(ray: Any, tmp_path: Path) -> None:
    import json

    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_ADDRESS")}
    env["HOME"] = str(tmp_path)  # ray.init() writes ~/.ray/auth_token for its private cluster: keep it out of $HOME
    ray_tmp = tempfile.mkdtemp(prefix="charter-rl-", dir="/tmp")  # its session logs (short path: Ray's sockets)
    env["RAY_TMPDIR"] = ray_tmp
    try:
        done = subprocess.run([sys.executable, "-c", LOCAL_DRIVER], env=env, capture_output=True, text=True,
                              timeout=180)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["texts"] == [g.text for g in MockBackend().generate(
        [GenRequest.of([{"role": "user", "content": f"q{i}"}]) for i in range(4)])]
    assert len(result["sockets"]) >= 4 and result["exposed"] == []
