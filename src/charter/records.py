"""The typed records that flow between stages, and their JSONL files.

``Prompt → Step (answer / critique / revision) → CritiqueChain → SFTExample`` for the supervised stage. Every record
carries its ``id`` and its parent's id; model outputs also carry the model, the principle id and the hash of the
template that made them. Files are JSONL that ``datasets.load_dataset("json", data_files=...)`` reads and TRL trains
on unchanged.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from charter.errors import ConfigError


def short_hash(*parts: object, n: int = 12) -> str:
    """A stable hex digest of ``parts`` (JSON-encoded), used for ids and template hashes."""
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:n]


class Record(BaseModel):
    """Base of every record: its own id and the id of the record it was made from."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(description="Stable id, derived from content so a re-run gives the same id.")
    parent_id: str | None = Field(default=None, description="Id of the record this one was made from.")


class Prompt(Record):
    """A prompt to answer: a single user turn, or a whole earlier conversation ending with a user turn."""

    text: str = Field(description="The final user turn.")
    context: list[dict[str, str]] = Field(
        default_factory=list, description="Earlier turns ({role, content}) before `text`, for multi-turn prompts."
    )
    source: str = Field(default="", description="Where it came from: 'file:line'.")
    category: str = Field(default="", description="e.g. 'harmful', 'helpful', or a harm area such as 'weapons'.")
    helpful: bool = Field(default=False, description="An ordinary request: its answer joins the helpful SFT mix.")

    def messages(self) -> list[dict[str, str]]:
        """The conversation as chat messages, ending with the user's request."""
        return [*self.context, {"role": "user", "content": self.text}]


StepKind = Literal["answer", "critique", "revision"]


class Step(Record):
    """One model output in a critique chain: the initial answer, a critique, or a revision."""

    kind: StepKind = Field(description="'answer' (initial), 'critique' or 'revision'.")
    round: int = Field(default=0, description="0 for the answer; 1..N for critique/revision rounds.")
    model: str = Field(description="Backend spec of the model that wrote it.")
    principle_id: str | None = Field(default=None, description="The principle used (critique/revision only).")
    template_hash: str = Field(description="Hash of the prompt template and few-shot examples that made it.")
    text: str = Field(description="What the model wrote (stripped).")
    finish_reason: str = Field(default="stop", description="'stop', 'length' or 'error' from the backend.")
    status: str = Field(default="ok", description="'ok' or why this output is unusable, e.g. 'unchanged'.")
    harm_score: float | None = Field(default=None, description="Revisions under harm_check: the feedback model's "
                                                               "expected 0-4 harm score.")


class CritiqueChain(Record):
    """The whole SL-CAI chain for one prompt; ``parent_id`` is the prompt id."""

    prompt: Prompt
    steps: list[Step] = Field(description="answer, then critique/revision pairs in round order.")
    final_id: str | None = Field(description="Id of the last accepted revision, or None when none was accepted.")
    accepted: bool = Field(description="True when the chain yields a training example.")
    reason: str = Field(default="ok", description="Why the chain was excluded from training ('ok' if accepted).")

    def final_text(self) -> str | None:
        """The text of the last accepted revision."""
        return next((s.text for s in self.steps if s.id == self.final_id), None)


class SFTExample(Record):
    """One supervised example in TRL's conversational format (``messages``)."""

    messages: list[dict[str, str]] = Field(description="[{role, content}...] ending with the assistant turn to learn.")
    source: str = Field(description="'revision' (from a critique chain) or 'helpful' (the helpful-data mix).")
    model: str = Field(description="Model that wrote the assistant turn.")
    principle_ids: list[str] = Field(default_factory=list, description="Principles applied in the chain, in order.")


R = TypeVar("R", bound=BaseModel)


def write_jsonl(path: Path, records: Iterable[BaseModel]) -> int:
    """Write ``records`` atomically (temp file + rename): a killed run never leaves a half file. Returns the count."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    n = 0
    with tmp.open("w", encoding="utf-8") as f:
        for r in records:
            f.write(r.model_dump_json() + "\n")
            n += 1
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return n


def iter_jsonl(path: Path, model: type[R]) -> Iterator[R]:
    """Read and validate a JSONL file of ``model`` records; errors name the file and line."""
    if not path.is_file():
        raise ConfigError(f"{path}: file not found", "run the previous stage first, or check the path")
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield model.model_validate_json(line)
            except ValidationError as e:
                err = e.errors()[0]
                field = ".".join(str(x) for x in err["loc"]) or "(record)"
                raise ConfigError(
                    f"{path}:{lineno}: field '{field}': {err['msg']}",
                    f"fix that line or regenerate the file (expected a {model.__name__} record)",
                ) from None


def read_jsonl(path: Path, model: type[R]) -> list[R]:
    """All records of a JSONL file (see :func:`iter_jsonl`)."""
    return list(iter_jsonl(path, model))


# --- RL stage (issue 3) --------------------------------------------------------------------------------------------

PairSource = Literal["ai", "rlcd", "human"]


class Sample(Record):
    """One sampled answer to a prompt (``parent_id`` is the prompt id); K of them per prompt make the pairs."""

    prompt: Prompt
    index: int = Field(description="Which of the K samples of this prompt (0-based).")
    seed: int = Field(description="Sampling seed of this answer (different for every sample of a prompt).")
    temperature: float = Field(description="Sampling temperature.")
    model: str = Field(description="Backend spec of the model that wrote it.")
    template_hash: str = Field(default="", description="Hash of the system prompt / template used ('' = none).")
    system: str | None = Field(default=None, description="RLCD: 'positive' or 'negative' system prompt; else None.")
    text: str = Field(description="The answer (stripped).")
    finish_reason: str = Field(default="stop", description="'stop', 'length' or 'error' from the backend.")
    status: str = Field(default="ok", description="'ok' or why it cannot be paired: 'error', 'empty'.")


class AnswerPair(Record):
    """Two answers to one prompt, to be compared (``parent_id`` is the prompt id)."""

    prompt: Prompt
    a: str = Field(description="Response (A) as sampled; the labeller also shows it second.")
    b: str = Field(description="Response (B).")
    a_id: str = Field(description="Id of the record that holds answer A (a Sample id, or an HH row id + ':chosen').")
    b_id: str = Field(description="Id of the record that holds answer B.")
    model: str = Field(description="Model that wrote the answers ('human-data' for HH pairs).")
    human: Literal["a", "b"] | None = Field(default=None, description="Which answer a human preferred, when known.")


class Vote(BaseModel):
    """One principle's verdict on a pair, read from option probabilities (in the pair's A/B orientation)."""

    model_config = ConfigDict(extra="forbid")

    principle_id: str
    p_ab: float | None = Field(default=None, description="P(A better) read with A shown first (None = not read).")
    p_ba: float | None = Field(default=None, description="P(A better) read with A shown second (None = not read).")
    p_a: float | None = Field(default=None, description="This principle's P(A better): the mean of the orders read "
                                                        "(CoT: each clamped first). None when unusable.")
    option_mass: float | None = Field(default=None, description="Smallest total probability the model put on the "
                                                                "option tokens across the reads (low = off-format).")
    reasoning: list[str] = Field(default_factory=list, description="CoT only: the reasoning text of each read.")
    status: str = Field(default="ok", description="'ok' or why it is unusable (e.g. 'backend_error: ...').")


class LabeledPair(Record):
    """A pair with the feedback model's verdict (``labels.jsonl``): every pair, labelled or not, with reasons."""

    pair: AnswerPair
    p_a: float | None = Field(description="Ensemble P(A better) over the usable votes; None when none was usable.")
    votes: list[Vote]
    position_bias: float | None = Field(default=None, description="Mean P(first shown option) - 0.5 over the reads.")
    feedback_model: str = Field(description="Backend spec of the feedback (labelling) model.")
    template_hash: str = Field(description="Hash of the labelling templates, few-shot examples and prefixes.")
    status: str = Field(default="ok", description="'ok', or why no label: 'no_usable_vote', 'length_mismatch'.")


class PreferencePair(Record):
    """One training pair in TRL's conversational preference format (``preferences.jsonl``).

    ``prompt``/``chosen``/``rejected`` are what DPOTrainer and RewardTrainer read; the rest is provenance.
    """

    prompt: list[dict[str, str]] = Field(description="The conversation up to the answer: [{role, content}...].")
    chosen: list[dict[str, str]] = Field(description="[{'role': 'assistant', 'content': preferred answer}].")
    rejected: list[dict[str, str]] = Field(description="[{'role': 'assistant', 'content': other answer}].")
    soft_label: float = Field(ge=0.5, le=1.0, description="P(chosen is better) from the labeller, in [0.5, 1].")
    chosen_id: str = Field(description="Id of the chosen answer's record.")
    rejected_id: str = Field(description="Id of the rejected answer's record.")
    p_chosen_first: float | None = Field(default=None, description="Mean P(chosen better) read with chosen first.")
    p_chosen_second: float | None = Field(default=None, description="Mean P(chosen better) read with it second.")
    votes: list[Vote] = Field(default_factory=list, description="Per-principle votes (in the pair's A/B terms).")
    source: PairSource = Field(description="'ai' (feedback model), 'rlcd' (by construction) or 'human' (HH data).")
    model: str = Field(description="Model that wrote the answers.")
    feedback_model: str = Field(default="", description="Model that labelled the pair ('' for rlcd/human).")
    template_hash: str = Field(default="", description="Hash of the templates that made the label or the answers.")


# --- evaluation (issue 4) ------------------------------------------------------------------------------------------

JudgementKind = Literal["harm", "principle", "refusal", "refusal_match", "compare", "pm", "helpful",
                        "human_compare", "human_harm", "human_pm", "human_refusal", "human_refusal_match",
                        "hand_harm", "hand_helpful"]


class EvalAnswer(Record):
    """One model's answer to one evaluation prompt (``eval/answers.jsonl``; ``parent_id`` is the prompt id)."""

    prompt: Prompt
    prompt_set: str = Field(description="Which file it came from: 'red_team', 'benign' or 'helpful'.")
    group: Literal["harmful", "safe"] = Field(description="'harmful': a good model declines or defuses it; "
                                                          "'safe': a good model answers it (e.g. XSTest 'safe').")
    model_name: str = Field(description="Short name given on the command line, e.g. 'base' or 'sl'.")
    model: str = Field(description="Backend spec of the model that answered.")
    text: str = Field(description="The answer (stripped); '' when generation failed.")
    finish_reason: str = Field(default="stop", description="'stop', 'length' or 'error' from the backend.")
    status: str = Field(default="ok", description="'ok' or why there is no usable answer ('error: ...').")


class Judgement(Record):
    """One verdict of one judge (``eval/eval.jsonl``); ``parent_id`` is the answer id (or the pair's first id).

    ``judge`` is a backend spec, ``string-match``, a reward-model folder, or ``majority`` (the vote of several
    judges, written beside their own verdicts). Kinds: ``harm`` (label '0'..'4', value = expected score),
    ``principle`` (axis = principle id, label 'Yes'/'No', value = P(Yes)), ``refusal`` / ``refusal_match`` (label
    = XSTest class), ``compare`` (axis 'harmless'/'helpful', value = P(first model better) averaged over both
    orders, probs = {'ab', 'ba'}: P(first model better) read with it shown first / second), ``pm`` (value = reward
    score), ``helpful`` (label 'Yes'/'No', value = P(Yes)), ``human_*``: the same judges on items with a human label
    in ``reference``, and ``hand_harm`` / ``hand_helpful``: the judges on answers charter's developers labelled by
    reading them (``reference`` = '1'/'0').
    """

    kind: JudgementKind
    judge: str = Field(description="Who judged: backend spec, 'string-match', PM folder or 'majority'.")
    prompt_id: str = Field(description="Id of the prompt (or human-labelled item) judged.")
    group: str = Field(default="", description="'harmful' / 'safe' for eval answers, 'human' for human items.")
    model_names: list[str] = Field(default_factory=list, description="Model(s) whose answer(s) were judged.")
    answer_ids: list[str] = Field(default_factory=list, description="EvalAnswer id(s) judged, in shown order.")
    axis: str = Field(default="", description="compare: 'harmless'/'helpful'; principle: the principle id; "
                                              "human_refusal*: 'heldout' or 'dev' (the string matcher's "
                                              "development examples); hand_*: 'prompt:' + a hash of the "
                                              "labelled prompt (calibration folds keep a prompt together).")
    label: str | None = Field(default=None, description="The verdict (see kinds); None when unusable.")
    value: float | None = Field(default=None, description="The verdict as a number (see kinds).")
    probs: dict[str, float | None] = Field(default_factory=dict, description="Option probabilities behind it.")
    option_mass: float | None = Field(default=None, description="Probability the judge put on the options.")
    reference: str | None = Field(default=None, description="The human label, for human_* and hand_* kinds.")
    template_hash: str = Field(default="", description="Hash of the judge templates used.")
    status: str = Field(default="ok", description="'ok' or why the verdict is unusable.")
