"""Thresholds per scorer from labelled prompts: calibrated on the TRAIN part of the split, reported on the EVAL part.

Labelled prompts come from two kinds of file:

* an XSTest CSV (``../shared/data/xstest_dev.csv``): ``safe`` prompts a model should answer and ``unsafe`` ones it
  should refuse. They carry no principle, so they calibrate the scorer's **global** threshold, on the statistic the
  guard blocks on — the largest P(violates) over the principles whose action is ``block``;
* a ``charter redteam`` prompts file: attacks labelled with the principle they test and their benign
  counterparts. They calibrate a **per-principle** threshold where a principle has at least ``min_per_class``
  prompts of each kind (elsewhere the global one applies); the XSTest safe prompts count as its safe prompts too.

The rule: the lowest threshold that blocks at most ``target_false_block`` of the safe TRAIN prompts (a refusal
budget, as in Constitutional Classifiers), reported with the unsafe block rate it buys. Per-principle thresholds
are set first; the XSTest safe prompts they already block spend the global threshold's budget, so the TRAIN
figures of the whole rule are the ones printed (they exceed the budget only if the per-principle ones alone do).
The TRAIN/EVAL parts are :func:`charter.splits.select`'s (XSTest siblings kept together), so the EVAL figures are
on prompts the thresholds never saw. Checks are input checks (the prompt alone); every scoring call goes through a
call cache.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from charter.constitution import Principle
from charter.evaluation.stats import proportion
from charter.guard.config import GuardConfig
from charter.guard.scorers import Check, Scorer, Scores
from charter.records import Prompt
from charter.splits import Part, select
from charter.store import now_iso


@dataclass
class Labelled:
    """A prompt with its label: ``unsafe`` (should be blocked) and, for red-team prompts, its principle."""

    prompt: Prompt
    unsafe: bool
    principle_id: str | None
    source: str


def load_labelled(path: str | Path, part: Part | None, limit: int | None = None) -> list[Labelled]:
    """Labelled prompts of one part (None = all) of an XSTest CSV or a ``charter redteam`` prompts file."""
    from charter.errors import ConfigError
    from charter.prompts import load_prompts

    prompts = load_prompts(path).prompts
    rows = {}
    if str(path).endswith((".jsonl", ".json")):
        for line in Path(path).read_text(encoding="utf-8").splitlines():
            if line.strip():
                rec = json.loads(line)
                rows[str(rec.get("id"))] = rec
    kept = select(prompts, part, path) if part else list(prompts)
    out = []
    for p in kept:
        if p.category.startswith("xstest:"):
            out.append(Labelled(p, p.category.split(":")[1] == "unsafe", None, str(path)))
        elif p.id in rows and rows[p.id].get("kind") in ("attack", "benign"):
            out.append(Labelled(p, rows[p.id]["kind"] == "attack", rows[p.id].get("principle_id"), str(path)))
    if not out and part is None:
        raise ConfigError(f"{path}: no labelled prompts (an XSTest CSV with safe/unsafe labels, or a charter "
                          "redteam prompts.jsonl with kind attack/benign)", "pass one of those with --data")
    if limit is not None and len(out) > limit:
        step = len(out) / limit
        out = [out[int(i * step)] for i in range(limit)]
    return out


def score_prompts(scorer: Scorer, items: Sequence[Labelled], principles: Sequence[Principle],
                  chunk: int = 16) -> list[Scores]:
    """Input-check scores of every prompt against every principle."""
    out: list[Scores] = []
    for start in range(0, len(items), chunk):
        checks = [Check("input", it.prompt.messages()) for it in items[start:start + chunk]]
        out.extend(scorer.score_many(checks, principles))
    return out


def pick_threshold(safe: Sequence[float], target: float) -> float:
    """The lowest threshold at which at most ``target`` of ``safe`` scores are at or above it."""
    if not safe:
        return 0.5
    ranked = sorted(safe, reverse=True)
    allowed = math.floor(target * len(ranked) + 1e-9)
    if allowed >= len(ranked):
        return min(ranked)
    return min(1.0, math.nextafter(ranked[allowed], math.inf))


def blocked(scores: Scores, blocking: Sequence[str], thresholds: dict[str, float], default: float) -> bool | None:
    """Whether the guard would block, by any blocking principle's score at or above its threshold (None: unscored)."""
    values = [(pid, scores.values.get(pid)) for pid in blocking]
    if any(v is None for _, v in values):
        return None
    return any(v is not None and v >= thresholds.get(pid, default) for pid, v in values)


def rates(items: Sequence[Labelled], scores: Sequence[Scores], blocking: Sequence[str], thresholds: dict[str, float],
          default: float) -> dict[str, Any]:
    """Block rate on unsafe and false-block rate on safe prompts (Wilson intervals), unscored prompts counted apart."""
    verdicts = [blocked(s, blocking, thresholds, default) for s in scores]
    unsafe = [v for it, v in zip(items, verdicts, strict=True) if it.unsafe and v is not None]
    safe = [v for it, v in zip(items, verdicts, strict=True) if not it.unsafe and v is not None]
    return {"block_rate_unsafe": proportion(sum(unsafe), len(unsafe)),
            "false_block_rate_safe": proportion(sum(safe), len(safe)),
            "unscored": sum(v is None for v in verdicts)}


def _stat(s: Scores, pids: Sequence[str]) -> float | None:
    vals = [s.values.get(p) for p in pids]
    return None if not vals or any(v is None for v in vals) else max(v for v in vals if v is not None)


def calibrate(scorer: Scorer, principles: Sequence[Principle], blocking: Sequence[str], files: Sequence[str],
              target_false_block: float = 0.05, min_per_class: int = 3, limit: int | None = None) -> dict[str, Any]:
    """Thresholds for ``scorer`` from the TRAIN part of ``files``; block rates on their EVAL part."""
    train = [it for f in files for it in load_labelled(f, "train", limit)]
    evals = [it for f in files for it in load_labelled(f, "eval", limit)]
    s_train = score_prompts(scorer, train, principles)
    s_eval = score_prompts(scorer, evals, principles)
    per: dict[str, Any] = {}
    # Safe prompts are safe under every principle: XSTest's safe prompts are negatives of each principle too.
    general_safe = [s for it, s in zip(train, s_train, strict=True) if it.principle_id is None and not it.unsafe]
    for pid in blocking:
        mine = [(it, s) for it, s in zip(train, s_train, strict=True) if it.principle_id == pid]
        pos = [v for it, s in mine if it.unsafe and (v := s.values.get(pid)) is not None]
        own = [v for it, s in mine if not it.unsafe and (v := s.values.get(pid)) is not None]
        if len(pos) >= min_per_class and len(own) >= min_per_class:
            neg = own + [v for s in general_safe if (v := s.values.get(pid)) is not None]
            t = pick_threshold(neg, target_false_block)
            per[pid] = {"threshold": t, "train_n": {"unsafe": len(pos), "safe": len(own),
                                                    "safe_general": len(neg) - len(own)},
                        "train_block_rate_unsafe": sum(v >= t for v in pos) / len(pos)}
    thresholds = {pid: v["threshold"] for pid, v in per.items()}
    # The global threshold covers the other principles; safe prompts the per-principle thresholds already block
    # spend the same false-block budget, so the rule as a whole keeps it on the TRAIN part.
    xs = [(it, s) for it, s in zip(train, s_train, strict=True) if it.principle_id is None]
    rest = [pid for pid in blocking if pid not in thresholds]
    safe = [s for it, s in xs if not it.unsafe and blocked(s, blocking, {}, 0.0) is not None]
    spent = sum(bool(blocked(s, list(thresholds), thresholds, 1.0)) for s in safe)
    free = [v for s in safe if not blocked(s, list(thresholds), thresholds, 1.0) and (v := _stat(s, rest)) is not None]
    budget = max(0.0, (math.floor(target_false_block * len(safe) + 1e-9) - spent) / max(len(free), 1))
    glob = pick_threshold(free, budget) if free else 0.5

    def part_rates(items: list[Labelled], scores: list[Scores], principle: str | None = None) -> dict[str, Any]:
        if principle is None:
            pairs = [(i, s) for i, s in zip(items, scores, strict=True) if i.principle_id is None]
        else:
            pairs = [(i, s) for i, s in zip(items, scores, strict=True) if i.principle_id == principle]
        return rates([i for i, _ in pairs], [s for _, s in pairs], blocking if principle is None else [principle],
                     thresholds, glob)

    for pid in per:
        per[pid]["eval"] = part_rates(evals, s_eval, pid)
    calls = [s.calls for s in s_train + s_eval]
    seconds = [s.seconds for s in s_train + s_eval]
    return {
        "global": {"threshold": glob, "rule": f"lowest threshold blocking <= {target_false_block:g} of safe TRAIN "
                                              "prompts (max P(violates) over blocking principles)",
                   "train_n": {"safe": len(safe), "unsafe": sum(1 for it, _ in xs if it.unsafe)},
                   "safe_blocked_by_per_principle": spent,
                   "train": part_rates(train, s_train), "eval": part_rates(evals, s_eval)},
        "principles": per,
        "data": list(files), "target_false_block": target_false_block, "blocking": list(blocking),
        "cost": {"calls_per_check": sum(calls) / max(len(calls), 1),
                 "seconds_per_check": sum(seconds) / max(len(seconds), 1)},
        "created": now_iso(),
    }


def open_scorer(cfg: GuardConfig, cache_path: Path | None = None) -> Scorer:
    """The scorer ``cfg`` names, without a server: the feedback model through a call cache, or the classifier."""
    from charter.backends import BackendOptions, load_backend
    from charter.guard.scorers import ClassifierScorer, FeedbackScorer
    from charter.store import CachedBackend, CallCache

    if cfg.scorer == "classifier":
        from charter.errors import ConfigError

        if not cfg.classifier:
            raise ConfigError("scorer: classifier needs `classifier:`", "set classifier: PATH or scorer: feedback")
        return ClassifierScorer(cfg.classifier, threads=cfg.threads)
    options = BackendOptions(dtype=cfg.dtype, threads=cfg.threads, batch_size=cfg.batch_size)
    backend = load_backend(cfg.feedback, options, lazy=True)
    if cache_path is not None:
        cached = CachedBackend(backend, CallCache(cache_path), cfg.batch_size)
        return FeedbackScorer(lambda reqs: cached.score_options(reqs), backend.model_id, cfg.max_context_chars,
                              min_mass=cfg.min_option_mass)
    return FeedbackScorer(backend.score_options, backend.model_id, cfg.max_context_chars, min_mass=cfg.min_option_mass)


def guard_principles(cfg: GuardConfig) -> tuple[list[Principle], list[str]]:
    """The principles the guard checks and the ids of those whose action is ``block``."""
    from charter.constitution import load_constitution

    const = load_constitution(cfg.constitution)
    ids = cfg.principles or [p.id for p in const.principles if p.area != "over_refusal"]
    principles = [const.principle(i) for i in ids]
    return principles, [p.id for p in principles if cfg.action(p.id) == "block"]


def calibrate_command(cfg: GuardConfig, files: list[str], out: str, target_false_block: float,
                      limit: int | None = None) -> str:
    """``charter guard calibrate``: calibrate, merge into ``out``, and say what was found."""
    path = Path(out)
    scorer = open_scorer(cfg, path.with_name(path.stem + ".calls.sqlite"))
    principles, blocking = guard_principles(cfg)
    entry = calibrate(scorer, principles, blocking, files, target_false_block, limit=limit)
    data = json.loads(path.read_text()) if path.is_file() else {}
    data.setdefault("scorers", {})[scorer.id] = entry
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2))
    g = entry["global"]
    ev = g["eval"]

    def pct(r: dict[str, Any]) -> str:
        if r["value"] is None:
            return "—"
        return f"{r['value']:.2f} [{r['ci'][0]:.2f},{r['ci'][1]:.2f}] (n={r['n']})"

    per = ", ".join(f"{k}={v['threshold']:.3f}" for k, v in entry["principles"].items()) or "none"
    lines = [f"scorer {scorer.id}: global threshold {g['threshold']:.4f} ({g['rule']})",
             f"  EVAL part: block rate on unsafe {pct(ev['block_rate_unsafe'])}, false-block rate on safe "
             f"{pct(ev['false_block_rate_safe'])}",
             f"  per-principle thresholds: {len(entry['principles'])} ({per})",
             f"  cost: {entry['cost']['calls_per_check']:.1f} scoring calls and "
             f"{entry['cost']['seconds_per_check'] * 1000:.0f} ms per check (readings from the call cache take ~0)",
             f"written to {path} (use it with `thresholds: {path}`)"]
    return "\n".join(lines)
