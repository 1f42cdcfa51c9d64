"""The report's weak-to-strong section, rendered when ``RUN/oversight/results.jsonl`` exists.

PGR and its nested bootstrap are recomputed here from the rows (one source of truth); ``summary.json`` adds what
the rows cannot hold (skipped models, judge statistics, the sweep's settings).
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

from charter.report import svg
from charter.report.svg import Interval

TEMPLATE = "report_oversight.jinja"


def load_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a results.jsonl (blank lines skipped)."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def oversight_context(run: Path) -> dict[str, Any] | None:
    """Everything the section shows, or None when the run has no oversight results."""
    from charter.oversight.stats import cells, summary

    path = run / "oversight" / "results.jsonl"
    if not path.is_file():
        return None
    extra_path = run / "oversight" / "summary.json"
    extra = json.loads(extra_path.read_text()) if extra_path.is_file() else {}
    min_gap = float(extra.get("min_gap", 0.05))
    rows = load_rows(path)
    cell_list = cells(rows, min_gap, int((extra.get("config") or {}).get("bootstrap_rounds", 2000)))
    strongs = sorted({c["strong"] for c in cell_list})
    charts = {}
    for loss in sorted({c["loss"] for c in cell_list}):
        plotted = [c for c in cell_list if c["loss"] == loss and c["in_summary"]]
        if not plotted:
            continue
        pts = [(f"{c['task']} · {c['weak']} → {c['strong']}",
                Interval(c["pgr"], *(c["pgr_ci"] or [None, None])), strongs.index(c["strong"]),
                c["gap"] >= min_gap and not (c["gap_ci"] and c["gap_ci"][0] <= 0)) for c in plotted]
        charts[loss] = svg.pgr_plot(pts, f"PGR with {loss} loss, 95% nested-bootstrap intervals (seeds, then test "
                                         "items)", f"pgr-{loss}")
    return {"cells": cell_list, "by_loss": summary(cell_list, min_gap), "charts": charts, "min_gap": min_gap,
            "skipped": extra.get("skipped", []), "judges": extra.get("judges", {}), "tasks": extra.get("tasks", {}),
            "n_rows": len(rows), "strong_colours": {s: svg.colour(i) for i, s in enumerate(strongs)},
            "warned": sum(1 for c in cell_list if c["warnings"]), "seconds": extra.get("seconds")}


def render_section(env: Any, run: Path) -> Any:
    """The section's HTML (Markup), or None."""
    from markupsafe import Markup

    ctx = oversight_context(run)
    if ctx is None:
        return None
    ctx["charts"] = {k: Markup(v) for k, v in ctx["charts"].items()}  # built by svg, which escapes its text
    source = resources.files("charter").joinpath("data", "templates", TEMPLATE).read_text(encoding="utf-8")
    return Markup(env.from_string(source).render(o=ctx))
