"""A one-machine Ray cluster kept on 127.0.0.1, for tests, benchmarks and trying ``--ray`` out.

Ray clusters have no authentication by default, and on Linux Ray binds to the first network interface even with
``--node-ip-address=127.0.0.1``. With ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` in the environment of ``ray start`` and
of the driver, Ray resolves "this node" to 127.0.0.1 and every port it opens is loopback-only. :class:`LocalCluster`
starts such a cluster in its own session, lists the sockets it listens on, and stops exactly the processes it started.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Any

from charter.errors import BackendError

LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
"""Set to 0, Ray resolves "this node" to 127.0.0.1 instead of the first network interface, so a one-machine cluster
and its driver listen on loopback only (Ray must read it before it is imported)."""


class LocalCluster:
    """A one-machine Ray cluster on 127.0.0.1 (``ray start --head --block`` in its own session), for tests and
    benchmarks. It stops with :meth:`stop`, which ends only the processes it started (never ``ray stop``, which
    would end every Ray cluster of this user on the machine).

    Args:
        num_cpus: Logical CPUs the cluster offers its workers.
        env: Extra environment for the cluster's processes (the loopback and no-usage-stats settings are always on).
        timeout: Seconds to wait for the cluster to come up.
    """

    def __init__(self, num_cpus: int = 2, env: dict[str, str] | None = None, timeout: float = 120.0) -> None:
        import atexit
        import subprocess
        import sys
        import tempfile
        import time

        self.temp = Path(tempfile.mkdtemp(prefix="charter-ray-", dir="/tmp"))  # short: Ray's socket paths are long
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.log = self.temp / "ray-start.log"
        ray_cli = Path(sys.executable).with_name("ray")
        cmd = [str(ray_cli), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={self.port}",
               f"--num-cpus={num_cpus}", "--num-gpus=0", "--include-dashboard=false", "--disable-usage-stats",
               f"--temp-dir={self.temp}"]
        # Auth pinned off: otherwise `ray start` turns token auth on whenever ~/.ray/auth_token exists (a plain
        # `ray.init()` writes one) while a driver given an explicit address does not, and they cannot talk.
        # The cluster listens on loopback only.
        full_env = {**os.environ, **(env or {}), LOOPBACK_ENV: "0", "RAY_USAGE_STATS_ENABLED": "0",
                    "RAY_AUTH_MODE": "disabled"}
        with self.log.open("w") as out:
            self.head = subprocess.Popen(cmd, env=full_env, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        atexit.register(self.stop)  # also when the caller forgets or crashes (not on SIGKILL)
        deadline = time.monotonic() + timeout
        while "Ray runtime started" not in self.log.read_text():
            if self.head.poll() is not None or time.monotonic() > deadline:
                tail = self.log.read_text()[-2000:]
                self.stop()
                raise BackendError(f"`ray start` did not bring up a local cluster:\n{tail}",
                                   "check that ray is installed and /tmp is writable")
            time.sleep(0.2)

    def processes(self) -> list[Any]:
        """``psutil.Process`` of the head, of every process whose command line names this cluster's folder, and
        of all their children (the workers)."""
        import psutil

        found: dict[int, Any] = {}
        for p in psutil.process_iter(["cmdline"]):
            try:
                if p.pid == self.head.pid or str(self.temp) in " ".join(p.info["cmdline"] or []):
                    for q in [p, *p.children(recursive=True)]:
                        found[q.pid] = q
            except psutil.Error:
                continue
        return list(found.values())

    def listening(self) -> list[tuple[str, str, int]]:
        """``(process name, ip, port)`` of every listening TCP socket of the cluster's processes."""
        import psutil

        out = []
        for p in self.processes():
            try:
                name, conns = p.name(), p.net_connections(kind="inet")
            except psutil.Error:
                continue
            out += [(name, c.laddr.ip, c.laddr.port) for c in conns if c.status == psutil.CONN_LISTEN]
        return out

    def stop(self) -> None:
        """SIGTERM to ``ray start --block`` stops the cluster in seconds; whatever of it is still alive is killed."""
        import shutil
        from contextlib import suppress

        import psutil

        if not self.temp.exists():
            return  # already stopped
        procs = self.processes()
        if self.head.poll() is None:
            self.head.terminate()
        _, alive = psutil.wait_procs(procs, timeout=5)
        for sig in ("terminate", "kill"):
            for p in alive:
                with suppress(psutil.Error):
                    getattr(p, sig)()
            _, alive = psutil.wait_procs(alive, timeout=5)
        with suppress(Exception):
            self.head.wait(timeout=5)
        shutil.rmtree(self.temp, ignore_errors=True)

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def is_loopback_ip(ip: str) -> bool:
    """True for 127.0.0.0/8, ::1 and IPv4-mapped loopback (``::ffff:127.0.0.1``)."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    mapped = getattr(addr, "ipv4_mapped", None)
    return bool(addr.is_loopback or (mapped is not None and mapped.is_loopback))


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
