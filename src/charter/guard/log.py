"""Every guard decision in SQLite (WAL): one row per request, one per principle checked at each stage.

No message text is stored — only ids, principles, scores, thresholds, actions, outcomes and latencies — so the
log can be kept and shared without holding users' conversations.

Tables::

    requests(id, created, stream, mode, outcome, principle, input_seconds, upstream_seconds,
             output_seconds, total_seconds, scorer_calls, error)
    decisions(request_id, created, stage, principle_id, scorer, score, threshold, action, outcome, seconds,
              detail)

``outcome`` of a request: ``pass``, ``blocked_input``, ``blocked_output``, ``revised``, ``stopped_window`` (window
mode stopped the stream), ``error_open`` (a check failed and the answer went through: fail-open), ``upstream_error``.
A decision's ``outcome``: ``pass``, ``flag`` (at or above the threshold), ``error`` (no usable score).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from charter.errors import ConfigError

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS requests (id TEXT PRIMARY KEY, created REAL, stream INTEGER, mode TEXT, "
    "outcome TEXT, principle TEXT, input_seconds REAL, upstream_seconds REAL, output_seconds REAL, "
    "total_seconds REAL, scorer_calls INTEGER, error TEXT)",
    "CREATE TABLE IF NOT EXISTS decisions (request_id TEXT, created REAL, stage TEXT, principle_id TEXT, "
    "scorer TEXT, score REAL, threshold REAL, action TEXT, outcome TEXT, seconds REAL, detail TEXT)",
    "CREATE INDEX IF NOT EXISTS decisions_request ON decisions(request_id)",
)


@dataclass
class Decision:
    """One principle checked at one stage of one request."""

    stage: str
    principle_id: str
    scorer: str
    score: float | None
    threshold: float
    action: str
    outcome: str
    seconds: float
    detail: str = ""


@dataclass
class RequestRecord:
    """The summary row of one request."""

    id: str
    stream: bool
    mode: str
    outcome: str = "pass"
    principle: str | None = None
    input_seconds: float = 0.0
    upstream_seconds: float = 0.0
    output_seconds: float = 0.0
    total_seconds: float = 0.0
    scorer_calls: int = 0
    error: str | None = None


class DecisionLog:
    """Appends requests and decisions to a SQLite file (safe from many threads)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        db = self._conn()
        for stmt in SCHEMA:
            db.execute(stmt)

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            try:
                conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
            except sqlite3.Error as e:
                raise ConfigError(f"{self.path}: cannot open the decision log ({e})",
                                  "point `log:` at a writable file") from None
            self._local.conn = conn
        return conn

    def write(self, req: RequestRecord, decisions: list[Decision]) -> None:
        """Store one request and its decisions in one transaction."""
        now = time.time()
        db = self._conn()
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("INSERT OR REPLACE INTO requests VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                       (req.id, now, int(req.stream), req.mode, req.outcome, req.principle, req.input_seconds,
                        req.upstream_seconds, req.output_seconds, req.total_seconds, req.scorer_calls, req.error))
            db.executemany("INSERT INTO decisions VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                           [(req.id, now, d.stage, d.principle_id, d.scorer, d.score, d.threshold, d.action,
                             d.outcome, d.seconds, d.detail) for d in decisions])
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def rows(self, table: str = "decisions", where: str = "", args: tuple[object, ...] = ()) -> list[dict[str, object]]:
        """Rows of ``requests`` or ``decisions`` as dicts (for tests and reports)."""
        if table not in ("requests", "decisions"):
            raise ValueError(table)
        cur = self._conn().execute(f"SELECT * FROM {table} {where}", args)
        cols = [c[0] for c in cur.description]
        return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]
