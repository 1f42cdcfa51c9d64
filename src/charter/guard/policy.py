"""What the guard decides: checks against thresholds, the failure policy, and run-time critique → revision.

A check scores every checked principle (:mod:`charter.guard.scorers`). A principle is *flagged* when its
P(violates) is at or above its threshold (calibrated per scorer, per principle where labelled data exists, else
the scorer's global one, else ``threshold``). A flagged principle's action decides: ``block`` (the short refusal),
``revise`` (the SL-CAI step at run time, with the constitution's own critique and revision requests and its
worked examples in front — :func:`charter.stages.critique.critique_turn`, ``revision_turn``, ``few_shot_turns``),
or ``allow`` (logged only).

When a check cannot decide — the scorer failed or gave an unusable reading, or the latency budget ran out — the
``on_error`` policy applies: ``closed`` blocks, ``open`` lets the answer through (logged as ``error_open``). A
flagged answer whose revision fails (it echoes, is unchanged, still scores over the threshold, or loses the
principle's comparison with the original in both orders) is blocked, whatever the policy. A model call cannot be
interrupted: a check that overruns the budget finishes in the background and its result is dropped.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from charter.backends.base import Generation, GenParams, GenRequest, Message, OptionScores, ScoreRequest
from charter.constitution import Constitution, Principle
from charter.errors import ConfigError
from charter.guard.config import GuardConfig
from charter.guard.log import Decision, RequestRecord
from charter.guard.scorers import Check, Scorer, Scores
from charter.stages.critique import clean_revision, critique_turn, few_shot_turns, revision_failure, revision_turn
from charter.stages.label import choice_messages

GenerateFn = Callable[[list[GenRequest]], list[Generation]]
ScoreFn = Callable[[list[ScoreRequest]], list[OptionScores]]


class BudgetSpent(Exception):
    """The latency budget of the request ran out."""


@dataclass
class Thresholds:
    """Thresholds of one scorer: per principle where calibrated, else ``default``."""

    default: float
    per_principle: dict[str, float] = field(default_factory=dict)
    source: str = "config"

    def of(self, principle_id: str) -> float:
        """The threshold of one principle."""
        return self.per_principle.get(principle_id, self.default)


def load_thresholds(cfg: GuardConfig, scorer_id: str) -> Thresholds:
    """The thresholds for ``scorer_id`` from ``cfg.thresholds`` (a calibration JSON), else ``cfg.threshold``."""
    if not cfg.thresholds:
        return Thresholds(cfg.threshold)
    path = Path(cfg.thresholds)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"thresholds file {path}: cannot read it ({e})",
                          "write it with `charter guard calibrate` or drop `thresholds:`") from None
    entry = (data.get("scorers") or {}).get(scorer_id)
    if entry is None:
        known = ", ".join(data.get("scorers") or {}) or "none"
        raise ConfigError(f"thresholds file {path} has no entry for scorer {scorer_id} (has: {known})",
                          "calibrate this scorer with `charter guard calibrate`, or drop `thresholds:`")
    per = {pid: float(v["threshold"]) for pid, v in (entry.get("principles") or {}).items()}
    return Thresholds(float(entry["global"]["threshold"]), per, source=str(path))


@dataclass
class CheckResult:
    """What one check decided.

    Attributes:
        block: The flagged principle whose action is ``block`` (highest score first), or None.
        revise: Flagged principles whose action is ``revise``, highest score first.
        error: Why the check could not decide (scorer error, budget), None when it could.
        scores: The scores it read.
    """

    block: str | None = None
    revise: list[Principle] = field(default_factory=list)
    error: str | None = None
    scores: Scores | None = None


def split_conversation(messages: Sequence[Message]) -> tuple[list[Message], str]:
    """Earlier turns (without the system prompt) and the last user message."""
    last = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=len(messages) - 1)
    context = [dict(m) for m in messages[:last] if m["role"] != "system"]
    return context, messages[last]["content"] if messages else ""


class Guard:
    """Checks, decides and revises; the HTTP server (:mod:`charter.guard.server`) calls it.

    Args:
        cfg: The guard config.
        constitution: The constitution (principles, critique/revision requests, worked examples).
        scorer: Scores checks.
        thresholds: Thresholds of that scorer.
        generate: The feedback model's batched ``generate`` (critiques and revisions); None if no revising.
        score: The feedback model's batched ``score_options`` (revision comparisons); None to skip them.
    """

    def __init__(self, cfg: GuardConfig, constitution: Constitution, scorer: Scorer, thresholds: Thresholds,
                 generate: GenerateFn | None = None, score: ScoreFn | None = None) -> None:
        self.cfg = cfg
        self.constitution = constitution
        self.scorer = scorer
        self.thresholds = thresholds
        self.generate = generate
        self.score = score
        ids = cfg.principles or [p.id for p in constitution.principles if p.area != "over_refusal"]
        self.principles = [constitution.principle(i) for i in ids]
        for pid in cfg.actions:
            constitution.principle(pid)  # a typo in `actions` fails at start, not at the first request
        if self.generate is None and any(cfg.action(p.id) == "revise" for p in self.principles):
            raise ConfigError("the guard revises answers but has no feedback model to write revisions",
                              "set `feedback:` or change the revise actions to block")
        self.shots = few_shot_turns(constitution, cfg.few_shot)
        self.pool = ThreadPoolExecutor(64, thread_name_prefix="charter-guard-check")

    # --- checks ---------------------------------------------------------------------------------------------
    def _wait(self, fut: Future[Any], deadline: float | None) -> Any:
        if deadline is None:
            return fut.result()
        left = deadline - time.monotonic()
        if left <= 0:
            fut.cancel()
            raise BudgetSpent
        try:
            return fut.result(timeout=left)
        except FutureTimeout:
            raise BudgetSpent from None

    def check(self, check: Check, rec: RequestRecord, decisions: list[Decision], deadline: float | None,
              principles: Sequence[Principle] | None = None, stage: str | None = None) -> CheckResult:
        """Score ``check`` against the principles, log a decision per principle, and decide."""
        principles = list(principles or self.principles)
        stage = stage or check.stage
        start = time.perf_counter()
        try:
            scores = self._wait(self.pool.submit(self.scorer.score_many, [check], principles), deadline)[0]
            error = None
        except BudgetSpent:
            scores, error = None, f"latency budget of {self.cfg.latency_budget:g}s spent"
        except Exception as e:  # the scorer's backend failed (unreachable, crashed): the policy decides
            scores, error = None, f"scorer failed: {type(e).__name__}: {e}"
        seconds = time.perf_counter() - start
        result = CheckResult(scores=scores)
        flagged: list[tuple[float, Principle]] = []
        for p in principles:
            value = scores.values.get(p.id) if scores else None
            why = error or (scores.errors.get(p.id, "no score") if scores and value is None else "")
            threshold = self.thresholds.of(p.id)
            action = self.cfg.action(p.id)
            if value is None:
                outcome = "error"
                result.error = result.error or f"{p.id}: {why}"
            else:
                outcome = "flag" if value >= threshold else "pass"
                if outcome == "flag":
                    flagged.append((value, p))
            decisions.append(Decision(stage, p.id, self.scorer.id, value, threshold, action, outcome,
                                      seconds, why))
        if scores is not None:
            rec.scorer_calls += scores.calls
        for _, p in sorted(flagged, key=lambda t: -t[0]):
            action = self.cfg.action(p.id)
            if action == "block" and result.block is None:
                result.block = p.id
            elif action == "revise":
                result.revise.append(p)
        if result.error and result.block is None and self.cfg.on_error == "closed":
            result.block = "guard_error"
        return result

    # --- revision -------------------------------------------------------------------------------------------
    def _gen(self, reqs: list[GenRequest], deadline: float | None) -> list[Generation]:
        assert self.generate is not None
        return list(self._wait(self.pool.submit(self.generate, reqs), deadline))

    def revise(self, messages: Sequence[Message], reply: str, principles: Sequence[Principle],
               rec: RequestRecord, decisions: list[Decision], deadline: float | None) -> tuple[str | None, str]:
        """Critique → revise ``reply`` once per principle; ``(revision, "revised")`` or ``(None, why not)``."""
        context, prompt = split_conversation(messages)
        system = self.constitution.system_prompt
        head = ([{"role": "system", "content": system}] if system else []) + self.shots
        examples = [ex.revision for ex in self.constitution.few_shot]
        text = reply
        for p in principles:
            crit_msgs = [*head, critique_turn(context, prompt, text, p)]
            try:
                crit = self._gen([GenRequest.of(crit_msgs, GenParams(self.cfg.critique_tokens))], deadline)[0]
                if crit.finish_reason == "error" or not crit.text.strip():
                    return None, f"critique_failed: {crit.error or 'empty'}"
                rev_msgs = [*crit_msgs, {"role": "assistant", "content": crit.text.strip()}, revision_turn(p)]
                rev = self._gen([GenRequest.of(rev_msgs, GenParams(self.cfg.revision_tokens))], deadline)[0]
            except BudgetSpent:
                return None, f"revision_timeout: latency budget of {self.cfg.latency_budget:g}s spent"
            except Exception as e:
                return None, f"revision_error: {type(e).__name__}: {e}"
            new = clean_revision(rev.text)
            why = revision_failure(new, rev.finish_reason, text, crit.text, p.revision_request, examples=examples)
            if why:
                return None, f"revision_{why}"
            if self.cfg.verify_revision:
                res = self.check(Check("output", messages, new), rec, decisions, deadline, [p], stage="revision")
                if res.error or res.block or res.revise:
                    return None, "revision_still_flagged" if not res.error else f"revision_unchecked: {res.error}"
                preferred = self.prefers(messages, text, new, p, deadline)
                if preferred is not None and preferred < 0.5:
                    return None, f"revision_not_preferred: P(revision better) = {preferred:.2f}"
            text = new
        return text, "revised"

    def prefers(self, messages: Sequence[Message], original: str, revision: str, principle: Principle,
                deadline: float | None) -> float | None:
        """P(the revision is the better answer) by the principle's comparison question, asked in both orders and
        averaged (cancels position bias); None when there is no question or no scorer for it."""
        if self.score is None or not principle.comparison_question:
            return None
        q = principle.comparison_question
        reqs = [ScoreRequest.of(choice_messages(messages, q, a, b, []), ("A", "B"), "The answer is: (")
                for a, b in ((original, revision), (revision, original))]
        try:
            first, second = self._wait(self.pool.submit(self.score, reqs), deadline)
        except Exception:
            return None
        if first.error or second.error or not first.logprobs or not second.logprobs:
            return None
        return (first.probs()["B"] + second.probs()["A"]) / 2

    def close(self) -> None:
        """Stop the check threads."""
        self.pool.shutdown(wait=False, cancel_futures=True)
