"""How good are the AI labels? Agreement with human preference labels, per labelling setting.

Human-labelled pairs come from an HH-RLHF file (``chosen``/``rejected`` dialogues that share their context): the two
final assistant turns are the answers to compare, the rest is the conversation. Which of the two is shown as (A) is
decided by a seeded coin per pair, so a judge that always picks (A) scores 0.5, not 1.0. For each setting
(:data:`SETTINGS`: one principle, ensemble, with/without order averaging, CoT, length control) the pairs are labelled
and the agreement with the human choice is reported with a Wilson 95% interval, next to the position bias, order
consistency and length bias, and the simple baselines "always the shorter / longer answer". Settings share readings
through the call cache (the one-principle readings are the first readings of the ensemble, the length-controlled
settings reuse them), so adding a setting costs only its new calls.

Optionally (``rm_steps`` > 0) it also trains two reward models on the same training split — one on AI labels, one on
the human labels — and reports their accuracy on held-back human pairs: the gap is what AI oversight costs.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from charter.constitution import Constitution
from charter.errors import ConfigError
from charter.evaluation.stats import wilson
from charter.prompts import human_preferences, load_hh_pairs
from charter.records import AnswerPair, LabeledPair, write_jsonl
from charter.stages.label import LabelConfig, label_pairs, to_preferences, trust_warnings
from charter.store import CachedBackend, RunDir

SETTINGS: dict[str, dict[str, Any]] = {
    "one_principle": {"principles": 1},
    "one_principle_one_order": {"principles": 1, "both_orders": False},
    "ensemble": {"principles": 4},
    "cot": {"principles": 1, "cot": True},
    "length_matched": {"principles": 1, "max_length_ratio": 1.5},
    "length_debiased": {"principles": 1, "length_debias": True},
}
"""Labelling settings compared by label-eval: name → LabelConfig fields over the base config."""


class LabelEvalConfig(BaseModel):
    """Settings of ``charter label-eval``."""

    model_config = ConfigDict(extra="forbid")

    n: int | None = Field(default=200, ge=1, description="Human-labelled pairs to use (None = all).")
    settings: list[str] = Field(default_factory=lambda: list(SETTINGS), description="Settings to compare, by name.")
    base: LabelConfig = Field(default_factory=LabelConfig, description="Label settings the named settings modify.")
    ensemble_size: int = Field(default=4, ge=2, description="Principles in the 'ensemble' setting.")
    rm_steps: int = Field(default=0, ge=0, description="> 0: also train reward models on AI vs human labels.")
    rm_setting: str = Field(default="ensemble", description="Whose AI labels train the AI-label reward model.")
    rm_test_fraction: float = Field(default=0.3, gt=0, lt=1, description="Share of pairs held back to test the RMs.")
    seed: int = Field(default=0, description="Seed of the A/B assignment and the train/test split.")


def agreement(labeled: Sequence[LabeledPair]) -> dict[str, Any]:
    """Agreement of the AI labels with the human ones over the labelled pairs (a 0.5 label counts half), with a
    Wilson 95% CI, plus how many pairs had a human label but no AI label."""
    scored = [(x.p_a, x.pair.human) for x in labeled if x.p_a is not None and x.pair.human is not None]
    hits = sum(0.5 if p == 0.5 else float((p > 0.5) == (human == "a")) for p, human in scored)
    n = len(scored)
    return {"agreement": round(hits / n, 4) if n else None, "ci": [round(x, 4) for x in wilson(hits, n)], "n": n,
            "unlabelled": sum(x.p_a is None for x in labeled)}


def length_baselines(pairs: Sequence[AnswerPair]) -> dict[str, Any]:
    """Agreement of "always pick the shorter / longer answer" with the human labels (equal lengths count half)."""
    known = [p for p in pairs if p.human is not None]
    shorter = sum(0.5 if len(p.a) == len(p.b) else float((len(p.a) < len(p.b)) == (p.human == "a")) for p in known)
    n = len(known)
    return {"always_shorter": round(shorter / n, 4) if n else None,
            "always_longer": round(1 - shorter / n, 4) if n else None, "n": n}


def setting_config(cfg: LabelEvalConfig, name: str) -> LabelConfig:
    """The LabelConfig of a named setting."""
    if name not in SETTINGS:
        raise ConfigError(f"unknown label-eval setting {name!r}", f"use some of: {', '.join(SETTINGS)}")
    fields = dict(SETTINGS[name])
    if name == "ensemble":
        fields["principles"] = cfg.ensemble_size
    return cfg.base.model_copy(update=fields)


def evaluate_settings(cfg: LabelEvalConfig, pairs: Sequence[AnswerPair], constitution: Constitution,
                      backend: CachedBackend, quiet: bool = False,
                      ) -> tuple[dict[str, dict[str, Any]], dict[str, list[LabeledPair]]]:
    """Label ``pairs`` under each setting; returns per-setting figures and the labelled pairs."""
    results: dict[str, dict[str, Any]] = {}
    labels: dict[str, list[LabeledPair]] = {}
    for name in cfg.settings:
        lcfg = setting_config(cfg, name)
        if not quiet:
            print(f"[label-eval] setting {name}", flush=True)
        labeled, stats = label_pairs(lcfg, pairs, constitution, backend, quiet)
        row = {**agreement(labeled), **{k: stats[k] for k in ("position_bias", "order_consistency", "length_bias",
                                                               "mean_confidence", "votes_by_status")}}
        row["pairs_by_status"] = stats["pairs_by_status"]
        row["warnings"] = trust_warnings({**stats, **row}, lcfg.both_orders)
        results[name] = row
        labels[name] = labeled
    return results, labels


def compare_reward_models(cfg: LabelEvalConfig, pairs: Sequence[AnswerPair], ai_labels: Sequence[LabeledPair],
                          out_dir: Path, base_spec: str) -> dict[str, Any]:
    """Train one reward model on AI labels and one on human labels (same training pairs, same settings); report
    both accuracies on held-back human-labelled pairs."""
    from charter.train.reward import RewardConfig, reward_accuracy, train_reward_model

    rng = random.Random(f"{cfg.seed}:rm-split")
    order = sorted(pairs, key=lambda p: p.id)
    rng.shuffle(order)
    n_test = max(1, int(len(order) * cfg.rm_test_fraction))
    test, train = order[:n_test], order[n_test:]
    train_ids = {p.id for p in train}
    ai = to_preferences([x for x in ai_labels if x.pair.id in train_ids])
    human = human_preferences(train)
    test_prefs = human_preferences(test)
    rcfg = RewardConfig(max_steps=cfg.rm_steps, seed=cfg.seed)
    out: dict[str, Any] = {"train_pairs": len(train), "test_pairs": len(test), "ai_label_setting": cfg.rm_setting,
                           "steps": cfg.rm_steps}
    for name, prefs in (("ai_labels", ai), ("human_labels", human)):
        summary = train_reward_model(rcfg, prefs, out_dir / f"rm_{name}", base_spec)
        out[name] = {**reward_accuracy(Path(summary["model"]), test_prefs), "trained_on": len(prefs)}
    a, h = out["ai_labels"]["accuracy"], out["human_labels"]["accuracy"]
    out["gap"] = round(h - a, 4) if a is not None and h is not None else None
    return out


def run_label_eval(cfg: LabelEvalConfig, run: RunDir, pairs_path: Path, constitution: Constitution,
                   backend: CachedBackend, rm_base: str | None = None, quiet: bool = False) -> dict[str, Any]:
    """``charter label-eval``: label the human-labelled pairs in ``pairs_path`` under each setting and compare with
    the human labels; writes ``label_eval/SETTING.labels.jsonl`` and ``label_eval/summary.json``."""
    pairs, skipped = load_hh_pairs(pairs_path, cfg.n, cfg.seed)
    if not pairs:
        raise ConfigError(f"{pairs_path}: no usable human-labelled pair ({dict(skipped)})",
                          "give HH-RLHF dialogues whose chosen and rejected share the conversation")
    results, labels = evaluate_settings(cfg, pairs, constitution, backend, quiet)
    for name, labeled in labels.items():
        write_jsonl(run.file(f"label_eval/{name}.labels.jsonl"), labeled)
    summary: dict[str, Any] = {"pairs": len(pairs), "skipped": dict(skipped), "file": str(pairs_path),
                               "feedback_model": backend.spec, "settings": results,
                               "baselines": length_baselines(pairs),
                               "human_prefers_longer": length_baselines(pairs)["always_longer"]}
    if cfg.rm_steps > 0:
        if cfg.rm_setting not in labels:
            raise ConfigError(f"rm_setting {cfg.rm_setting!r} is not among the settings run",
                              f"use one of: {', '.join(labels)}")
        summary["reward_models"] = compare_reward_models(cfg, pairs, labels[cfg.rm_setting],
                                                         run.file("label_eval"), rm_base or "transformers/embedded")
    run.file("label_eval").mkdir(parents=True, exist_ok=True)
    run.file("label_eval/summary.json").write_text(json.dumps(summary, indent=2))
    return summary
