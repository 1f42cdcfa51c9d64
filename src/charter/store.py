"""The run folder, its manifest, and the SQLite call cache that makes every run resumable.

Every model call's result is written to ``calls.sqlite`` (WAL mode) in the run folder as soon as its batch returns,
keyed by backend, model, parameters and prompt (the seed is a parameter). Running the same command again after a
kill (even SIGKILL) re-does no finished call; a finished stage re-runs from the cache in seconds. Stage outputs are
written whole and atomically at the end of each stage, so there is never a duplicated or half-written record.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from charter.backends.base import Backend, Generation, GenRequest, OptionScores, ScoreRequest
from charter.errors import ConfigError
from charter.records import short_hash

Progress = Callable[[int, int], None]
"""Called as ``progress(done, total)`` after each batch."""


class CallCache:
    """A persistent map from a call's key to its result (SQLite, WAL mode, safe across processes)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        with self._conn() as db:
            db.execute("CREATE TABLE IF NOT EXISTS calls (key TEXT PRIMARY KEY, kind TEXT, model TEXT, "
                       "request TEXT, result TEXT, created REAL)")
        self.hits = 0
        self.misses = 0

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            try:
                conn = sqlite3.connect(self.path, timeout=60, isolation_level=None)
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
            except sqlite3.Error as e:
                raise ConfigError(f"{self.path}: cannot open the call cache ({e})",
                                  "check the run folder is writable and not on a network drive") from None
            self._local.conn = conn
        return conn

    def get_many(self, keys: Sequence[str]) -> dict[str, str]:
        """Stored results for those of ``keys`` that are present."""
        found: dict[str, str] = {}
        db = self._conn()
        for i in range(0, len(keys), 500):
            chunk = list(keys[i : i + 500])
            marks = ",".join("?" * len(chunk))
            for key, result in db.execute(f"SELECT key, result FROM calls WHERE key IN ({marks})", chunk):
                found[key] = result
        return found

    def put_many(self, rows: Sequence[tuple[str, str, str, str, str]]) -> None:
        """Store ``(key, kind, model, request_json, result_json)`` rows in one transaction."""
        db = self._conn()
        now = time.time()
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany("INSERT OR REPLACE INTO calls VALUES (?,?,?,?,?,?)", [(*r, now) for r in rows])
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def count(self) -> int:
        """Number of stored results."""
        return int(self._conn().execute("SELECT COUNT(*) FROM calls").fetchone()[0])


def _request_key(kind: str, backend: Backend, payload: dict[str, Any]) -> tuple[str, str]:
    body = json.dumps({"kind": kind, "model": backend.model_id, **payload}, sort_keys=True, ensure_ascii=False)
    return short_hash(body, n=32), body


def _length(messages: Sequence[dict[str, str]]) -> int:
    return sum(len(m["content"]) for m in messages)


class CachedBackend:
    """Wraps any backend so that every result is persisted as soon as its batch completes and never recomputed.

    Misses are de-duplicated, sorted by prompt length (similar lengths batch well) and sent in chunks of
    ``batch_size``. Errored generations are not cached, so a re-run tries them again.
    """

    def __init__(self, backend: Backend, cache: CallCache, batch_size: int = 32) -> None:
        self.backend = backend
        self.cache = cache
        self.batch_size = max(1, batch_size)
        self.spec = backend.spec
        self.model_id = backend.model_id

    def generate(self, requests: Sequence[GenRequest], progress: Progress | None = None) -> list[Generation]:
        """Like :meth:`Backend.generate`, from the cache where possible."""
        payloads = [{"messages": list(r.messages), "params": r.params.as_dict()} for r in requests]
        return self._run("generate", requests, payloads, self.backend.generate,
                         lambda g: json.dumps(asdict(g)), lambda s: Generation(**json.loads(s)),
                         lambda g: g.finish_reason != "error", progress)

    def score_options(self, requests: Sequence[ScoreRequest], progress: Progress | None = None) -> list[OptionScores]:
        """Like :meth:`Backend.score_options`, from the cache where possible."""
        payloads = [{"messages": list(r.messages), "options": list(r.options), "prefix": r.assistant_prefix}
                    for r in requests]
        return self._run("score", requests, payloads, self.backend.score_options,
                         lambda s: json.dumps(asdict(s)), lambda s: OptionScores(**json.loads(s)),
                         lambda s: s.error is None, progress)

    def _run(self, kind, requests, payloads, call, dump, load, cacheable, progress):  # type: ignore[no-untyped-def]
        keyed = [_request_key(kind, self.backend, p) for p in payloads]
        keys = [k for k, _ in keyed]
        stored = self.cache.get_many(keys)
        results: dict[str, Any] = {k: load(v) for k, v in stored.items()}
        todo: dict[str, int] = {}
        for i, k in enumerate(keys):
            if k not in results and k not in todo:
                todo[k] = i
        self.cache.hits += len(keys) - len(todo)
        order = sorted(todo.items(), key=lambda kv: _length(requests[kv[1]].messages))
        done = len(keys) - len(todo)
        if progress:
            progress(done, len(keys))
        chunks = [order[start : start + self.batch_size] for start in range(0, len(order), self.batch_size)]
        map_chunks = getattr(self.backend, "map_chunks", None)

        def finished():  # type: ignore[no-untyped-def]
            """``(chunk, outs)`` as each chunk completes."""
            if map_chunks is not None:  # a parallel backend (ray_pool): all chunks in flight, yielded as they finish
                method = "generate" if kind == "generate" else "score_options"
                for j, outs in map_chunks(method, [[requests[i] for _, i in c] for c in chunks]):
                    yield chunks[j], outs
                return
            for chunk in chunks:
                try:
                    outs = call([requests[i] for _, i in chunk])
                except Exception as e:  # keep what finished before the failure (a backend may attach it as `partial`)
                    partial = getattr(e, "partial", None) or []
                    self.cache.put_many([(k, kind, self.backend.model_id, keyed[i][1], dump(out))
                                         for (k, i), out in zip(chunk, partial, strict=False)
                                         if out is not None and cacheable(out)])
                    raise
                yield chunk, outs

        for chunk, outs in finished():
            rows = []
            for (k, i), out in zip(chunk, outs, strict=True):
                results[k] = out
                if cacheable(out):
                    rows.append((k, kind, self.backend.model_id, keyed[i][1], dump(out)))
            self.cache.put_many(rows)
            self.cache.misses += len(chunk)
            done += len(chunk)
            if progress:
                progress(min(done, len(keys)), len(keys))
        return [results[k] for k in keys]


def package_versions() -> dict[str, str]:
    """Versions of charter and the libraries whose behaviour shapes results."""
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in ("charter", "torch", "transformers", "trl", "peft", "accelerate", "datasets"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[name] = metadata.version(name)
    return out


def now_iso() -> str:
    """UTC timestamp for manifests."""
    return datetime.now(UTC).isoformat(timespec="seconds")


class RunDir:
    """One folder per run: ``config.yaml``, ``manifest.json``, ``calls.sqlite`` and each stage's outputs."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"{self.path}: cannot create the run folder ({e.strerror})",
                              "choose another folder with --out") from None
        self._cache: CallCache | None = None

    @property
    def cache(self) -> CallCache:
        """The run's call cache (opened on first use)."""
        if self._cache is None:
            self._cache = CallCache(self.path / "calls.sqlite")
        return self._cache

    def file(self, name: str) -> Path:
        """Path of a file in the run folder."""
        return self.path / name

    @property
    def manifest_path(self) -> Path:
        return self.path / "manifest.json"

    def manifest(self) -> dict[str, Any]:
        """The manifest so far (empty for a new run)."""
        if not self.manifest_path.exists():
            return {}
        return dict(json.loads(self.manifest_path.read_text()))

    def update_manifest(self, **fields: Any) -> dict[str, Any]:
        """Merge ``fields`` into the manifest (``stages`` merged per stage) and write it atomically."""
        m = self.manifest()
        m.setdefault("created", now_iso())
        m["versions"] = package_versions()
        stages = fields.pop("stages", None)
        m.update(fields)
        if stages:
            m.setdefault("stages", {}).update(stages)
        m["updated"] = now_iso()
        tmp = self.manifest_path.with_name(f".manifest.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(m, indent=2, sort_keys=True, default=str))
        os.replace(tmp, self.manifest_path)
        return m
