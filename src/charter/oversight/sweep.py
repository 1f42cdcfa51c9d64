"""``charter oversight CONFIG`` and the ``oversight`` stage: weak supervisors × strong students × losses × seeds.

Per task and seed, the task's *training* items (the test items are :mod:`charter.splits`' evaluation part, the same
in every seed) are ordered by a hash of (seed, item id) and cut into three disjoint parts:

* **weak** (``weak_fraction``): ground truth here trains a trainable weak supervisor (three quarters) and picks its
  checkpoint (one quarter). A zero-shot judge uses none of it;
* **val** (``val_fraction``): the weak supervisor labels it; the student picks its checkpoint against those *weak*
  labels; the ceiling picks its checkpoint against ground truth;
* **student** (the rest): the weak supervisor labels it and the student trains on those soft labels; the ceiling
  trains on its ground truth.

Ground truth of the val and student parts reaches only the ceiling and the reporting (accuracy, misfit) — never
the weak labels, the student's training or its checkpoint choice (``tests/test_oversight_sweep.py`` poisons it and
checks the student is unchanged).

Every finished unit (weak labels, a ceiling, a student) is appended to ``oversight/journal.jsonl`` under a key that
hashes the task's content and every setting that shapes it, so a killed sweep resumes where it stopped; judge calls go
through the run's call cache. ``oversight/results.jsonl`` (one row per run) and ``oversight/summary.json`` are
written atomically at the end.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from charter.errors import ConfigError
from charter.oversight.finetune import FinetuneConfig
from charter.oversight.heads import HeadConfig, auroc
from charter.oversight.losses import LossName, LossSpec
from charter.oversight.models import Lab, Spec, identity, missing, parse_spec
from charter.oversight.stats import cells, summary
from charter.oversight.tasks import Task, TaskConfig, load_task
from charter.records import short_hash

Log = Callable[[str], None]
DEFAULT_LOSSES: tuple[LossName, ...] = ("xent", "logconf")


class OversightConfig(BaseModel):
    """Settings of ``charter oversight`` and of the ``oversight`` stage of ``charter run``."""

    model_config = ConfigDict(extra="forbid")

    out: str | None = Field(default=None, description="Run folder (CLI; a `charter run` stage uses the run's).")
    tasks: list[TaskConfig] = Field(default_factory=lambda: [TaskConfig(kind="sentiment")],
                                    description="Tasks to sweep (see charter.oversight.tasks.TaskConfig).")
    weak: list[str] = Field(default_factory=lambda: ["bow"], description="Weak supervisors (model specs, see "
                                                                         "charter.oversight.models).")
    strong: list[str] = Field(default_factory=lambda: ["minilm", "probe:embedded"],
                              description="Strong students (model specs; not judge:).")
    losses: list[LossName] = Field(default_factory=lambda: list(DEFAULT_LOSSES),
                                   description="Student losses: xent, logconf, product.")
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], description="Seeds (partition, init, batches).")
    alpha: float = Field(default=0.5, ge=0, le=1, description="logconf: final weight of the student's own "
                                                              "hardened predictions.")
    warmup: float = Field(default=0.2, ge=0, le=1, description="logconf: share of training over which that "
                                                               "weight ramps linearly from 0 to alpha.")
    product_alpha: float = Field(default=1.0, gt=0, description="product: exponent of the weak labels.")
    product_beta: float = Field(default=1.0, gt=0, description="product: exponent of the student's predictions.")
    weak_fraction: float = Field(default=0.4, gt=0, lt=1, description="Share of training items for the weak "
                                                                      "supervisor's own training.")
    val_fraction: float = Field(default=0.2, gt=0, lt=1, description="Share of training items for checkpoint "
                                                                     "choice (weak-labelled for students).")
    head: HeadConfig = Field(default_factory=HeadConfig, description="Linear probes' training.")
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig, description="finetune: students' training.")
    min_gap: float = Field(default=0.05, ge=0, description="Below this gap (ceiling − weak accuracy) a cell's PGR "
                                                           "is flagged as meaningless.")
    bootstrap_rounds: int = Field(default=2000, ge=100, description="Rounds of the nested bootstrap.")
    feature_cache: str | None = Field(default=None, description="Folder of cached features (default "
                                                                "CHARTER_CACHE/oversight-features).")
    shared_data: str | None = Field(default=None, description="Folder of hh/xstest data (default ../shared/data).")
    constitution: str | None = Field(default=None, description="Constitution of judge: on pair tasks (None = "
                                                               "bundled).")
    threads: int = Field(default=0, ge=0, description="torch threads (0 = torch's default).")

    @model_validator(mode="after")
    def _check(self) -> OversightConfig:
        if self.weak_fraction + self.val_fraction >= 0.9:
            raise ValueError("weak_fraction + val_fraction must leave at least 10% of training items for students")
        for s in self.weak + self.strong:
            parse_spec(s)
        bad = [s for s in self.strong if parse_spec(s).kind in ("judge", "mean", "vote")]
        if bad:
            raise ValueError(f"strong students must be trainable, not {bad}")
        if not self.weak or not self.strong or not self.losses or not self.seeds:
            raise ValueError("weak, strong, losses and seeds each need at least one entry")
        return self

    def loss(self, name: LossName) -> LossSpec:
        """The loss named, with this config's settings."""
        if name == "product":
            return LossSpec("product", alpha=self.product_alpha, beta=self.product_beta)
        return LossSpec(name, alpha=self.alpha, warmup=self.warmup)


def load_oversight_config(path: str | Path | None, overrides: tuple[str, ...] | list[str] = ()) -> OversightConfig:
    """An :class:`OversightConfig` from YAML (None = defaults) with ``KEY=VALUE`` overrides.

    Raises:
        ConfigError: a missing file, bad YAML, or an invalid field (named).
    """
    from charter.settings import apply_overrides, read_yaml

    where = str(path) if path is not None else "oversight config"
    data: dict[str, Any] = read_yaml(path) if path is not None else {}
    try:
        apply_overrides(data, list(overrides))
    except yaml.YAMLError as e:
        raise ConfigError(f"--set: a value is not YAML ({getattr(e, 'problem', e)})",
                          "quote it, e.g. --set 'strong=[\"probe:NAME?\"]'") from None
    try:
        return OversightConfig.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        field = ".".join(str(x) for x in err["loc"])
        raise ConfigError(f"{where}: {field}: {err['msg']}", "fix that field (charter oversight --help)") from None


def partition(task: Task, seed: int, weak_fraction: float, val_fraction: float) -> dict[str, list[int]]:
    """The seed's disjoint parts of the training items: weak_fit, weak_select, val, student (by content hash)."""
    train = sorted(task.part("train"),
                   key=lambda i: hashlib.sha256(f"{seed}:{task.items[i].id}".encode()).hexdigest())
    n = len(train)
    n_weak = max(2, round(n * weak_fraction))
    n_val = max(2, round(n * val_fraction))
    if n - n_weak - n_val < 2:
        raise ConfigError(f"task {task.name}: {n} training items are too few to split", "give more items")
    weak = train[:n_weak]
    n_fit = max(1, min(len(weak) - 1, round(len(weak) * 0.75)))
    return {"weak_fit": weak[:n_fit], "weak_select": weak[n_fit:], "val": train[n_weak: n_weak + n_val],
            "student": train[n_weak + n_val:]}


class Journal:
    """Finished units of a sweep, appended as JSON lines (a killed sweep resumes from here)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.done: dict[str, Any] = {}
        if path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:  # a line cut by a kill
                    continue
                self.done[entry["key"]] = entry["value"]

    def get_or_run(self, key: str, fn: Callable[[], Any]) -> Any:
        if key not in self.done:
            value = fn()
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps({"key": key, "value": value}) + "\n")
            self.done[key] = value
        return self.done[key]


def _weak_probs(lab: Lab, spec: Spec, fit: list[int], select: list[int], labelled: list[int],
                seed: int) -> list[float]:
    return [float(x) for x in lab.supervise(spec, fit, select, labelled, seed)]


def _fit(lab: Lab, spec: Spec, train: list[int], t_train: Any, val: list[int], t_val: Any, loss: LossSpec,
         seed: int, predict: list[int]) -> list[float]:
    return [float(x) for x in lab.fit_predict(spec, train, t_train, val, t_val, loss, seed, predict)]


def _acc(probs: Any, labels: Any) -> tuple[float, float | None, str]:
    import numpy as np

    correct = (np.asarray(probs) > 0.5) == (np.asarray(labels) > 0.5)
    return float(correct.mean()), auroc(labels, probs), "".join("1" if c else "0" for c in correct)


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def run_oversight(cfg: OversightConfig, out: Path, backend: Callable[[str], Any] | None = None,
                  log: Log = print, tasks: list[Task] | None = None) -> dict[str, Any]:
    """Run the sweep into ``out/oversight/``; returns the stage summary.

    ``tasks`` (tests) replaces the configured tasks with ready-made ones.
    """
    import numpy as np

    if cfg.threads:
        import torch

        torch.set_num_threads(cfg.threads)
    from charter.embedded import cache_root

    folder = Path(out) / "oversight"
    journal = Journal(folder / "journal.jsonl")
    feature_dir = Path(cfg.feature_cache) if cfg.feature_cache else cache_root() / "oversight-features"
    shared = Path(cfg.shared_data) if cfg.shared_data else None
    task_list = tasks if tasks is not None else [load_task(t, shared) for t in cfg.tasks]
    skipped: list[dict[str, str]] = []

    def usable(specs: list[str]) -> list[Spec]:
        ok = []
        for text in specs:
            spec = parse_spec(text)
            why = missing(spec)
            if why and spec.optional:
                log(f"skipping {spec.text}: {why}")
                skipped.append({"model": spec.text, "reason": why})
            elif why:
                raise ConfigError(f"model {spec.text}: {why}", "install it, or mark it optional with a trailing '?'")
            else:
                ok.append(spec)
        return ok

    weak_specs, strong_specs = usable(cfg.weak), usable(cfg.strong)
    ids = {s.text: short_hash(identity(s)) for s in weak_specs + strong_specs}
    settings = short_hash(cfg.head.model_dump(), cfg.finetune.model_dump(exclude={"threads"}), cfg.weak_fraction,
                          cfg.val_fraction, cfg.alpha, cfg.warmup, cfg.product_alpha, cfg.product_beta,
                          cfg.constitution)
    rows: list[dict[str, Any]] = []
    judge_stats: dict[str, Any] = {}
    start = time.monotonic()
    for task in task_list:
        lab = Lab(task, cfg.head, feature_dir, backend, cfg.finetune, cfg.constitution, log)
        fp = task.fingerprint()
        test = task.part("test")
        y_test = np.array([task.items[i].label for i in test], dtype=np.float64)
        log(f"task {task.name}: {len(task.part('train'))} train / {len(test)} test items ({task.kind})")
        for seed in cfg.seeds:
            parts = partition(task, seed, cfg.weak_fraction, cfg.val_fraction)
            stu, val = parts["student"], parts["val"]
            labelled = stu + val + test
            y_stu = np.array([task.items[i].label for i in stu], dtype=np.float64)

            weak_p = {w.text: np.array(journal.get_or_run(
                f"weak:{fp}:{ids[w.text]}:{seed}:{settings}",
                partial(_weak_probs, lab, w, parts["weak_fit"], parts["weak_select"], labelled, seed)))
                for w in weak_specs}
            for s in strong_specs:
                gt = np.array([task.items[i].label for i in stu], dtype=np.float32)
                gt_val = np.array([task.items[i].label for i in val], dtype=np.float32)
                ceiling = partial(_fit, lab, s, stu, gt, val, gt_val, LossSpec("xent"), seed, test)
                t0 = time.monotonic()
                ceil_p = np.array(journal.get_or_run(f"ceiling:{fp}:{ids[s.text]}:{seed}:{settings}", ceiling))
                ceil_seconds = round(time.monotonic() - t0, 2)
                ceil_acc, ceil_auc, ceil_bits = _acc(ceil_p, y_test)
                for w in weak_specs:
                    if w.text == s.text:
                        log(f"skipping weak {w.text} = strong {s.text}")
                        continue
                    pw = weak_p[w.text]
                    p_stu, p_val, p_test = pw[: len(stu)], pw[len(stu): len(stu) + len(val)], pw[len(stu) + len(val):]
                    weak_acc, weak_auc, weak_bits = _acc(p_test, y_test)
                    for loss in cfg.losses:
                        t1 = time.monotonic()
                        ps = np.array(journal.get_or_run(
                            f"student:{fp}:{ids[w.text]}:{ids[s.text]}:{loss}:{seed}:{settings}",
                            partial(_fit, lab, s, stu, p_stu, val, p_val, cfg.loss(loss), seed, stu + test)))
                        ps_stu, ps_test = ps[: len(stu)], ps[len(stu):]
                        st_acc, st_auc, st_bits = _acc(ps_test, y_test)
                        disagree = (ps_stu > 0.5) != (p_stu > 0.5)
                        right = (ps_stu > 0.5) == (y_stu > 0.5)
                        rows.append({
                            "task": task.name, "task_fingerprint": fp, "weak": w.text, "strong": s.text,
                            "loss": loss, "seed": seed, "n_student": len(stu), "n_val": len(val),
                            "n_weak": len(parts["weak_fit"]) + len(parts["weak_select"]), "n_test": len(test),
                            "weak_acc": weak_acc, "weak_auroc": weak_auc, "ceiling_acc": ceil_acc,
                            "ceiling_auroc": ceil_auc, "student_acc": st_acc, "student_auroc": st_auc,
                            "weak_label_acc": float(((p_stu > 0.5) == (y_stu > 0.5)).mean()),
                            "misfit": float(disagree.mean()),
                            "misfit_right": float(right[disagree].mean()) if disagree.any() else None,
                            "correct": {"weak": weak_bits, "ceiling": ceil_bits, "student": st_bits},
                            "seconds": round(time.monotonic() - t1, 2), "ceiling_seconds": ceil_seconds,
                        })
                        log(f"  {task.name} seed {seed} {w.text} → {s.text} [{loss}]: weak {weak_acc:.3f} "
                            f"ceiling {ceil_acc:.3f} student {st_acc:.3f} misfit {disagree.mean():.3f}")
        judge_stats.update({f"{task.name}/{k}": v for k, v in lab.judge_stats.items()})
    cell_list = cells(rows, cfg.min_gap, cfg.bootstrap_rounds)
    summ = {"cells": cell_list, "by_loss": summary(cell_list, cfg.min_gap), "skipped": skipped,
            "judges": judge_stats, "tasks": {t.name: {"kind": t.kind, "positive": t.positive, **t.info}
                                             for t in task_list},
            "min_gap": cfg.min_gap, "seconds": round(time.monotonic() - start, 1),
            "config": cfg.model_dump(mode="json")}
    _write_atomic(folder / "results.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    _write_atomic(folder / "summary.json", json.dumps(summ, indent=2, default=str))
    return {"results": str(folder / "results.jsonl"), "runs": len(rows), "cells": len(cell_list),
            "skipped": [s["model"] for s in skipped]}


def stage_oversight(session: Any) -> dict[str, Any]:
    """The ``oversight`` stage of ``charter run``: the sweep configured under ``oversight:`` in the run config,
    into ``RUN/oversight/`` (judges go through the run's call cache)."""
    from charter.settings import ModelConfig

    cfg: OversightConfig = session.cfg.stage("oversight")
    if not cfg.threads and session.cfg.threads:
        cfg = cfg.model_copy(update={"threads": session.cfg.threads})

    def backend(spec: str) -> Any:
        return session.backend(ModelConfig(model=spec, threads=cfg.threads, dtype="float32"))

    return run_oversight(cfg, session.run.path, backend=backend, log=session.log)


def cli_backends(run_dir: Path, threads: int) -> Callable[[str], Any]:
    """Backends for ``charter oversight``: each judge loaded once, lazily, behind the run folder's call cache."""
    from charter.backends import BackendOptions, load_backend
    from charter.store import CachedBackend, RunDir

    run = RunDir(run_dir)
    loaded: dict[str, Any] = {}

    def backend(spec: str) -> Any:
        if spec not in loaded:
            inner = load_backend(spec, BackendOptions(threads=threads, dtype="float32"), lazy=True)
            loaded[spec] = CachedBackend(inner, run.cache, batch_size=32)
        return loaded[spec]

    return backend
