"""Where a reading stops meaning anything: the option-mass floor (``min_option_mass``), derived from real readings.

A reading is the feedback model's next-token probabilities of ``A`` and ``B`` after ``The answer is: (``; its
*option mass* is P(A) + P(B). The label stage asks every question in both orders; a reading that carries
information about the answers must, on average, agree with the reading of the same question with the answers
swapped. This script labels HH-RLHF harmless pairs (``../shared/data/hh_harmless_dev.jsonl``) with charter's own
label stage (``label_pairs``, ``min_option_mass=0`` so nothing is dropped) from each *source* of readings and
measures agreement per option-mass bin (criteria below).

Sources (``--sources``), each a backend and label settings a user can choose:

* ``transformers``: the embedded model through the transformers backend (the pipeline's default feedback model),
  default label settings;
* ``transformers-0shot``: the same without the few-shot examples (``few_shot: 0``);
* ``transformers-noparen``: the same with the answer prefix ``The answer is:`` (no ``(``: the model would rather
  write `` (A)`` or `` A``, so less mass lands on ``A``/``B`` as read);
* ``transformers-noprefix``: no assistant prefix at all (the first token of a fresh answer);
* ``llamacpp``: the same weights (the embedded Q4_1 GGUF) behind llama-cpp-python's OpenAI-compatible server,
  scored the way the ``openai`` backend now does there (completions over the chat template);
* ``llamacpp-chat``: the same server through the chat endpoint with the assistant prefix sent as a final
  assistant message, which that server does not continue: the readings a user got before (issue 12).

Together they put real readings at every option mass, from the failure the floor exists to catch (~0.001) to
the working path (~0.95).

Three criteria, per option-mass bin, each with a Wilson 95% interval:

* ``raw``: the two orders pick the same answer (the label stage's ``order_consistency``);
* ``debiased``: the two orders agree once each order's median log-odds is taken off, so a constant position bias
  (the embedded model's is -0.26, which makes ``raw`` agreement 0) does not hide the information; chance 0.5;
* ``model``: the reading agrees with the model's own answer read where it should be (the ``transformers`` source,
  default settings, the same question and order; each debiased by its own medians; chance 0.5) — is the reading
  the model's answer at all, which is what ``min_option_mass`` is for ("the model would not answer A or B").

The floor is looked for among readings below :data:`FAILURE_RANGE`: the bin edges where the readings at or above
agree better than chance and those below do not (at least :data:`MIN_SIDE` each side); ``floor`` is the highest such
edge, ``lowest`` the lowest. Calls are cached in ``--out`` (charter's call cache; the server's ``--port`` is part of
the openai backend's id, hence fixed), so a re-run is instant and an interrupted one resumes.

    .venv/bin/python bench/option_mass.py --n 150 --sources transformers,llamacpp-chat   # the floor
    .venv/bin/python bench/option_mass.py --n 60                # every source
    .venv/bin/python bench/option_mass.py --quick               # a tiny run

The last line of output is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "hh_harmless_dev.jsonl"
SOURCES: dict[str, tuple[str, dict[str, Any]]] = {
    "transformers": ("transformers", {}),
    "transformers-0shot": ("transformers", {"few_shot": 0}),
    "transformers-noparen": ("transformers", {"answer_prefix": "The answer is:"}),
    "transformers-noprefix": ("transformers", {"answer_prefix": ""}),
    "llamacpp": ("llamacpp", {}),
    "llamacpp-chat": ("llamacpp-chat", {}),
}
"""Source name -> (backend, LabelConfig fields)."""
EDGES = (0.0, 3e-4, 1e-3, 2e-3, 3e-3, 5e-3, 1e-2, 3e-2, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0000001)
"""Option-mass bin edges: log-spaced where readings fail, linear where they work."""


def logit(p: float) -> float:
    p = min(max(p, 1e-6), 1 - 1e-6)
    return math.log(p / (1 - p))


Vote = tuple[float, float, float]
"""``(option mass, P(A) read with A first, P(A) read with A second)``."""


def votes_of(labeled: Sequence[Any]) -> dict[tuple[str, str], Vote]:
    """Every vote read in both orders, by (pair id, principle id)."""
    return {(x.pair.id, v.principle_id): (v.option_mass, v.p_ab, v.p_ba) for x in labeled for v in x.votes
            if v.option_mass is not None and v.p_ab is not None and v.p_ba is not None}


def _medians(votes: dict[tuple[str, str], Vote]) -> tuple[float, float]:
    return (statistics.median(logit(v[1]) for v in votes.values()),
            statistics.median(logit(v[2]) for v in votes.values()))


def indicators(votes: dict[tuple[str, str], Vote], ref: dict[tuple[str, str], Vote] | None
               ) -> list[tuple[float, str, bool]]:
    """``(mass, criterion, hit)`` rows: ``raw`` and ``debiased`` order agreement per vote, and ``model`` — each
    reading's agreement with the model's own answer (``ref``: the transformers backend's reading of the same
    question, default settings), both debiased by their order's median — per reading."""
    if not votes:
        return []
    m_ab, m_ba = _medians(votes)
    out = []
    for m, ab, ba in votes.values():
        out.append((m, "raw", (ab - 0.5) * (ba - 0.5) > 0))
        out.append((m, "debiased", (logit(ab) - m_ab) * (logit(ba) - m_ba) > 0))
    if ref is not None and ref is not votes and ref:
        r_ab, r_ba = _medians(ref)
        for key, (m, ab, ba) in votes.items():
            if key in ref:
                _, rab, rba = ref[key]
                out.append((m, "model", (logit(ab) - m_ab) * (logit(rab) - r_ab) > 0))
                out.append((m, "model", (logit(ba) - m_ba) * (logit(rba) - r_ba) > 0))
    return out


def summary(rows: Sequence[tuple[float, str, bool]], crit: str) -> dict[str, Any]:
    from charter.train.reward import wilson

    hits = [h for _, c, h in rows if c == crit]
    n, k = len(hits), sum(hits)
    return {"n": n, "agree": round(k / n, 3) if n else None, "ci": list(wilson(k, n))}


FAILURE_RANGE = 0.1
"""Readings below this mass are where the floor is looked for: every one of them here is a fresh-turn reading (the
lowest reading where the model answers the question, over all sources and settings, is 0.38). Above it, readings
where the model does answer would make every edge in the empty gap look like a boundary."""
MIN_SIDE = 20
"""Fewest readings each side of an edge for it to count."""


def agreement_table(rows: Sequence[tuple[float, str, bool]], crit: str) -> dict[str, Any]:
    """Agreement by option-mass bin for one criterion, and where it stops being better than chance: among readings
    below :data:`FAILURE_RANGE`, the bin edges ``e`` such that those at or above ``e`` agree better than chance
    (Wilson 95% lower bound > 0.5) and those below do not, with at least :data:`MIN_SIDE` readings each side.
    ``floor`` is the highest such edge (readings below it are no better than chance), ``lowest`` the lowest (the
    transition lies between them); None when no edge qualifies."""
    bins = [{"lo": lo, "hi": min(hi, 1.0), **summary([x for x in rows if lo <= x[0] < hi], crit)}
            for lo, hi in zip(EDGES[:-1], EDGES[1:], strict=True)]
    low = [x for x in rows if x[0] < FAILURE_RANGE]
    edges = []
    for e in EDGES[1:-1]:
        if e >= FAILURE_RANGE:
            break
        above = summary([x for x in low if x[0] >= e], crit)
        below = summary([x for x in low if x[0] < e], crit)
        if min(above["n"], below["n"]) >= MIN_SIDE and above["ci"][0] > 0.5 >= below["ci"][0]:
            edges.append({"edge": e, "below": below, "above": above})
    return {"criterion": crit, "all": summary(rows, crit), "bins": [b for b in bins if b["n"]],
            "floor": edges[-1]["edge"] if edges else None, "lowest": edges[0]["edge"] if edges else None,
            "edges": edges}


def print_table(name: str, t: dict[str, Any]) -> None:
    if not t["all"]["n"]:
        return
    print(f"  {name} — {CRITERIA[t['criterion']]}")
    for b in t["bins"]:
        print(f"    mass [{b['lo']:<6g}, {b['hi']:<6g}) n={b['n']:4d}  agree {b['agree']:.3f}  95% CI "
              f"[{b['ci'][0]:.3f}, {b['ci'][1]:.3f}]")
    a = t["all"]
    print(f"    all: n={a['n']} agree {a['agree']:.3f} [{a['ci'][0]:.3f}, {a['ci'][1]:.3f}]")
    for e in t["edges"]:
        b, u = e["below"], e["above"]
        print(f"    edge {e['edge']:g} (readings < {FAILURE_RANGE:g}): below n={b['n']} agree {b['agree']:.3f} "
              f"[{b['ci'][0]:.3f}, {b['ci'][1]:.3f}]"
              f", at or above n={u['n']} agree {u['agree']:.3f} [{u['ci'][0]:.3f}, {u['ci'][1]:.3f}]")
    print(f"    floor (highest such edge): {t['floor']}; lowest: {t['lowest']}")


CRITERIA = {"raw": "the two orders pick the same answer",
            "debiased": "the two orders agree once each order's median log-odds is taken off (chance 0.5)",
            "model": "the reading agrees with the model's own answer read where it should be (transformers, "
                     "default settings; each debiased; chance 0.5)"}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=150, help="HH pairs (each read in both orders)")
    ap.add_argument("--sources", default=",".join(SOURCES), help="comma-separated sources (see above)")
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-option-mass", help="run folder (call cache)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads / llama.cpp threads")
    ap.add_argument("--port", type=int, default=51195, help="llama_cpp.server port: part of the openai backend's "
                    "model id, so a fixed port keeps the call cache valid between runs")
    ap.add_argument("--principles", type=int, default=1, help="principles per pair (votes per pair)")
    ap.add_argument("--quick", action="store_true", help="a tiny run proving the script works")
    args = ap.parse_args(argv)
    if args.quick:
        args.n = 4
    if not args.data.is_file():
        sys.exit(f"error: {args.data} not found — the shared data sits beside the checkout (../shared/data)")

    from charter.backends import BackendOptions, load_backend
    from charter.constitution import load_constitution
    from charter.stages.label import LabelConfig, label_pairs
    from charter.stages.label_eval import load_hh_pairs
    from charter.store import CachedBackend, RunDir

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from llamacpp_peer import LlamaServer

    sources = [s for s in args.sources.split(",") if s]
    pairs, _ = load_hh_pairs(args.data, args.n)
    constitution = load_constitution()
    logging.getLogger("charter.backends.openai").setLevel(logging.ERROR)  # floored options are expected here
    run = RunDir(args.out)
    out: dict[str, Any] = {"pairs": len(pairs), "data": str(args.data), "sources": {}}
    all_votes: dict[str, dict[tuple[str, str], Vote]] = {}
    server: LlamaServer | None = None
    try:
        for src in sources:
            t = time.perf_counter()
            if src not in SOURCES:
                sys.exit(f"error: unknown source {src!r}; use {', '.join(SOURCES)}")
            kind, overrides = SOURCES[src]
            if kind == "transformers":
                backend = load_backend("transformers/embedded", BackendOptions(threads=args.threads), lazy=True)
            else:
                if server is None:
                    from charter.embedded import gguf_path

                    server = LlamaServer(gguf_path(), threads=args.threads, port=args.port).start()
                mode: dict[str, Any] = {"prefix": "continue"}  # llamacpp-chat: the path that fails there
                if kind == "llamacpp":
                    mode = {"prefix": "completions", "template": "embedded"}
                backend = load_backend(f"openai/smollm@{server.url}",
                                       BackendOptions(concurrency=1, timeout=600, extra=mode))
            cfg = LabelConfig(min_option_mass=0.0, principles=args.principles, **overrides)
            cached = CachedBackend(backend, run.cache, batch_size=16)
            labeled, stats = label_pairs(cfg, pairs, constitution, cached, quiet=True)
            all_votes[src] = votes_of(labeled)
            masses = sorted(v[0] for v in all_votes[src].values())
            out["sources"][src] = {
                "model_id": backend.model_id, "seconds": round(time.perf_counter() - t, 1),
                "votes": len(masses), "position_bias": stats["position_bias"],
                "order_consistency": stats["order_consistency"],
                "mass_quartiles": [round(masses[int(q * (len(masses) - 1))], 4) for q in (0, .25, .5, .75, 1)]
                if masses else []}
    finally:
        if server is not None:
            server.close()

    ref = all_votes.get("transformers")
    pooled: list[tuple[float, str, bool]] = []
    for src in sources:
        s = out["sources"][src]
        rows = indicators(all_votes[src], ref)
        pooled += rows
        s["tables"] = {c: agreement_table(rows, c) for c in CRITERIA}
        print(f"{src}: {s['votes']} votes in {s['seconds']} s, {s['model_id']}; option mass quartiles "
              f"{s['mass_quartiles']}; position bias {s['position_bias']}, order consistency {s['order_consistency']}")
        for t in s["tables"].values():
            print_table(src, t)
    print("all sources pooled:")
    out["pooled"] = {c: agreement_table(pooled, c) for c in CRITERIA}
    for t in out["pooled"].values():
        print_table("pooled", t)
    out["floor"] = {c: t["floor"] for c, t in out["pooled"].items()}
    low = [m for src in sources if src.endswith("-chat") for m, _, _ in all_votes[src].values()]
    high = [m for src in sources if not src.endswith("-chat") for m, _, _ in all_votes[src].values()]
    if low and high:
        out["gap"] = {"fresh_turn_max": round(max(low), 4), "answer_min": round(min(high), 4)}
        print(f"option mass of fresh-turn readings (the chat path llama-cpp-python does not continue): at most "
              f"{max(low):.4f}; of readings where the model answers the question: at least {min(high):.4f}")
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
