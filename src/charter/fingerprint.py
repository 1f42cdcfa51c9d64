"""Content fingerprints of the inputs that decide whether a trained model is still current.

A trainer skips training only when the fingerprint of its inputs matches the one saved with its model: the bytes of
the training file, every setting, and the weights (and tokenizer, and chat template) of every model that is an input.
Paths and modification times never stand in for content: a file rewritten in place with the same size and mtime
still gets a new digest, because the digest cache is keyed by inode, size, mtime *and ctime* (which no user-level
call can set back). charter's own version is not an input.

Digests are SHA-256 of the bytes, cached in ``<cache root>/digests.sqlite`` so a 3 GB weight file is read once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Any

MARKER_NAMES = ("charter_model.json", "charter_sft.json", "charter_train.json")
"""charter's own files in a model folder (timings, summaries): not part of the model's content."""
_CHUNK = 1 << 22


def _cache() -> sqlite3.Connection | None:
    from charter.embedded import cache_root

    path = cache_root() / "digests.sqlite"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, timeout=30, isolation_level=None)
        conn.execute("CREATE TABLE IF NOT EXISTS digests (key TEXT PRIMARY KEY, digest TEXT)")
        return conn
    except (OSError, sqlite3.Error):
        return None  # an unwritable cache only costs time: digests are recomputed


def file_digest(path: str | Path) -> str:
    """SHA-256 (hex) of a file's bytes, cached by device, inode, size, mtime and ctime."""
    p = Path(path)
    st = p.stat()
    key = f"{p.resolve()}:{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"
    conn = _cache()
    if conn is not None:
        with contextlib.closing(conn):
            row = conn.execute("SELECT digest FROM digests WHERE key = ?", (key,)).fetchone()
        if row:
            return str(row[0])
    h = hashlib.sha256()
    with p.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    digest = h.hexdigest()
    conn = _cache()
    if conn is not None:
        with contextlib.closing(conn), contextlib.suppress(sqlite3.Error):
            conn.execute("INSERT OR REPLACE INTO digests VALUES (?, ?)", (key, digest))
    return digest


def folder_digest(folder: str | Path) -> str:
    """SHA-256 over every file of a model folder (weights, config, tokenizer, chat template), by relative name and
    content; charter's own marker files are left out."""
    root = Path(folder)
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = f.relative_to(root).as_posix()
        if f.name in MARKER_NAMES or any(part.startswith(".") for part in f.relative_to(root).parts):
            continue
        h.update(f"{rel}\0{file_digest(f)}\n".encode())
    return h.hexdigest()


def server_model_ids(rest: str, options: Any = None) -> list[str]:
    """The model ids an OpenAI-compatible server reports (``GET /v1/models``); [] when it does not answer."""
    import httpx

    _, _, url = rest.partition("@")
    if not url:
        return []
    key_env = getattr(options, "api_key_env", "OPENAI_API_KEY")
    headers = {"Authorization": f"Bearer {os.environ[key_env]}"} if os.environ.get(key_env) else {}
    try:
        r = httpx.get(url.rstrip("/") + "/models", headers=headers, timeout=10)
        r.raise_for_status()
        return sorted(str(m.get("id")) for m in r.json().get("data", []))
    except (httpx.HTTPError, ValueError, AttributeError):
        return []


def digest_of(*parts: object, files: Iterable[str | Path] = ()) -> str:
    """One fingerprint of JSON-able ``parts`` and the contents of ``files``."""
    h = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str, ensure_ascii=False).encode())
    for f in files:
        h.update(file_digest(f).encode())
    return h.hexdigest()[:24]
