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
