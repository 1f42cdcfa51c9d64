"""The constitution: principles that drive critiques, revisions and preference labels, as validated YAML.

A constitution file holds a name and version, a list of principles (each with a critique request, a revision
request and, for the RL stage, a comparison question), worked examples for the SL stage (``few_shot``) and
labelled comparisons for the RL stage (``comparison_few_shot``). :func:`load_constitution` validates it and
turns every problem into one :class:`~charter.errors.ConfigError` line naming the file, the YAML line,
the field and the fix.
"""

from __future__ import annotations

import difflib
import random
from collections import defaultdict
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from charter.errors import ConfigError
from charter.records import short_hash

#: Harm areas the default constitution covers; ``area`` may also take other slugs.
HARM_AREAS = (
    "violence", "weapons", "crime", "self_harm", "hate", "sexual", "privacy",
    "medical", "legal", "financial", "deception",
)
SLUG = r"^[a-z0-9][a-z0-9_-]*$"
DEFAULT_NAME = "constitution.yaml"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class Principle(_Strict):
    """One principle: how to critique and revise an answer, and how to compare two answers."""

    id: str = Field(pattern=SLUG, description="Unique slug, e.g. 'protect_privacy'; recorded on outputs.")
    area: str = Field(pattern=SLUG, description="Area: 'weapons', 'privacy', 'over_refusal', 'general'...")
    critique_request: str = Field(min_length=1, description="Asks the feedback model to critique the answer.")
    revision_request: str = Field(min_length=1, description="Asks the feedback model to rewrite the answer.")
    comparison_question: str | None = Field(
        default=None, min_length=1, description="RL stage: a question about two responses, answered (A)/(B)."
    )


class FewShotExample(_Strict):
    """A worked SL example: a prompt, a bad first answer, a critique under one principle, and the revision."""

    prompt: str = Field(min_length=1, description="The user's request.")
    answer: str = Field(min_length=1, description="A harmful or needlessly preachy/refusing first answer.")
    critique: str = Field(min_length=1, description="What is wrong with it, grounded in the principle.")
    revision: str = Field(min_length=1, description="The better answer.")
    principle_id: str = Field(description="Id of the principle the critique applies.")


class ComparisonExample(_Strict):
    """A labelled RL example: two responses to a prompt and which one the principle prefers."""

    prompt: str = Field(min_length=1, description="The user's request.")
    response_a: str = Field(min_length=1, description="Response (A).")
    response_b: str = Field(min_length=1, description="Response (B).")
    answer: Literal["A", "B"] = Field(description="The preferred response: 'A' or 'B'.")
    principle_id: str = Field(description="Id of the principle whose comparison question is answered.")


class _LocatedError(ValueError):
    """A cross-field check that failed; ``loc`` points at the offending field for line lookup."""

    def __init__(self, loc: tuple[str | int, ...], problem: str, fix: str) -> None:
        self.loc, self.problem, self.fix = loc, problem, fix
        super().__init__(problem)


class Constitution(_Strict):
    """A named, versioned set of principles with few-shot examples for both stages."""

    name: str = Field(min_length=1, description="Short name, recorded in the run manifest.")
    version: str = Field(min_length=1, description="Version string, e.g. '1.0'.")
    description: str = Field(default="", description="What this constitution is for.")
    system_prompt: str | None = Field(default=None, description="Optional system prompt for the policy.")
    principles: list[Principle] = Field(min_length=1, description="The principles; ids are unique.")
    few_shot: list[FewShotExample] = Field(default_factory=list, description="SL-stage worked examples.")
    comparison_few_shot: list[ComparisonExample] = Field(
        default_factory=list, description="RL-stage labelled comparisons."
    )

    @field_validator("version", mode="before")
    @classmethod
    def _version_as_text(cls, v: Any) -> Any:
        return str(v) if isinstance(v, int | float) and not isinstance(v, bool) else v

    @model_validator(mode="after")
    def _cross_check(self) -> Constitution:
        seen: dict[str, int] = {}
        for i, p in enumerate(self.principles):
            if p.id in seen:
                raise _LocatedError(
                    ("principles", i, "id"),
                    f"duplicate principle id '{p.id}' (also principles[{seen[p.id]}])",
                    "give each principle a unique id",
                )
            seen[p.id] = i
        refs = [("few_shot", i, ex.principle_id) for i, ex in enumerate(self.few_shot)]
        refs += [("comparison_few_shot", i, ex.principle_id) for i, ex in enumerate(self.comparison_few_shot)]
        for key, i, pid in refs:
            if pid not in seen:
                raise _LocatedError(
                    (key, i, "principle_id"), f"unknown principle '{pid}'", f"use one of: {', '.join(seen)}"
                )
        return self

    def hash(self) -> str:
        """A stable short hash of the content (not of the YAML formatting): recorded in run manifests."""
        return short_hash(self.model_dump(mode="json"))

    def principle(self, id: str) -> Principle:
        """The principle with this id.

        Raises:
            ConfigError: when no principle has that id.
        """
        for p in self.principles:
            if p.id == id:
                return p
        known = ", ".join(p.id for p in self.principles)
        raise ConfigError(f"unknown principle '{id}'", f"use one of: {known}")

    def sample_principles(self, rng: random.Random, k: int) -> list[Principle]:
        """Draw ``k`` principles for one critique chain.

        Draws without replacement until every principle has been used, then starts a fresh shuffled cycle
        (never repeating the previous draw at a cycle boundary when there is more than one principle). The
        result depends only on ``rng``'s state, so a seeded ``random.Random`` reproduces it.
        """
        out: list[Principle] = []
        pool: list[Principle] = []
        while len(out) < k:
            if not pool:
                pool = list(self.principles)
                rng.shuffle(pool)
                if out and len(pool) > 1 and pool[-1].id == out[-1].id:
                    pool[0], pool[-1] = pool[-1], pool[0]
            out.append(pool.pop())
        return out

    def subset(self, ids: Sequence[str]) -> Constitution:
        """The same constitution with only the principles ``ids`` (for drawing from part of it).

        Raises:
            ConfigError: an id that is not one of its principles.
        """
        known = {p.id for p in self.principles}
        unknown = [i for i in ids if i not in known]
        if unknown:
            raise ConfigError(f"unknown principle id(s) {unknown}", f"use some of: {', '.join(sorted(known))}")
        return self.model_copy(update={"principles": [p for p in self.principles if p.id in set(ids)]})

    def require_comparison(self) -> None:
        """Check every principle has a ``comparison_question`` (the RL stage needs one per principle).

        Raises:
            ConfigError: naming the principles that lack one.
        """
        missing = [p.id for p in self.principles if not p.comparison_question]
        if missing:
            raise ConfigError(
                f"constitution '{self.name}': principle(s) {', '.join(missing)} have no comparison_question",
                "add a comparison_question (a question answered with (A) or (B)) to each for the RL stage",
            )


def load_constitution(path: str | Path | None = None) -> Constitution:
    """Load and validate a constitution YAML file.

    Args:
        path: The YAML file; ``None`` loads charter's bundled default constitution.

    Returns:
        The validated constitution.

    Raises:
        ConfigError: a missing or unreadable file, invalid YAML, or a schema error; the message names the
            file, the YAML line, the field path and the fix.
    """
    if path is None:
        name = DEFAULT_NAME
        text = resources.files("charter").joinpath("data", DEFAULT_NAME).read_text(encoding="utf-8")
    else:
        name = str(path)
        p = Path(path)
        if not p.is_file():
            what = "is a directory" if p.is_dir() else "not found"
            raise ConfigError(f"constitution {name}: {what}", "pass the path of a constitution YAML file")
        try:
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"constitution {name}: cannot read ({e})",
                              "check the file's permissions and that it is UTF-8 text") from None
    return parse_constitution(text, name)


def parse_constitution(text: str, name: str = "<string>") -> Constitution:
    """Validate constitution YAML ``text``; ``name`` is the file name used in error messages."""
    try:
        data = yaml.safe_load(text)
        root = yaml.compose(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        where = f"{name}:{mark.line + 1}:{mark.column + 1}" if mark else name
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{where}: invalid YAML: {problem}", "fix the YAML syntax there") from None
    if not isinstance(data, dict):
        raise ConfigError(
            f"{name}:1: a constitution must be a YAML mapping (got {type(data).__name__})",
            "start from the default: name, version, principles, few_shot",
        )
    try:
        return Constitution.model_validate(data)
    except ValidationError as e:
        raise _explain(e, data, root, name) from None


def _explain(e: ValidationError, data: dict[str, Any], root: yaml.Node | None, name: str) -> ConfigError:
    """Turn pydantic's first error into a one-line ConfigError with the YAML line of the offending field."""
    errors = e.errors()
    # a misspelt key also shows up as a missing field: report the misspelling, it names the fix
    err = next((x for x in errors if x["type"] == "extra_forbidden"), errors[0])
    cause = (err.get("ctx") or {}).get("error")
    more = f" (+{e.error_count() - 1} more)" if e.error_count() > 1 else ""
    if isinstance(cause, _LocatedError):
        loc, problem, fix = cause.loc, cause.problem, cause.fix
    else:
        loc = tuple(x for x in err["loc"] if isinstance(x, str | int))
        problem, fix = err["msg"][:1].lower() + err["msg"][1:], _fix_for(err, data)
    line = _line_of(root, loc)
    return ConfigError(f"{name}:{line}: {_dotted(loc)}: {problem}{more}", fix)


def _fix_for(err: Any, data: dict[str, Any]) -> str:
    loc, kind = err["loc"], err["type"]
    field = str(loc[-1]) if loc else "field"
    owner = "the constitution"
    if len(loc) >= 2 and loc[0] == "principles" and isinstance(loc[1], int):
        items = data.get("principles")
        raw = items[loc[1]] if isinstance(items, list) and loc[1] < len(items) else None
        pid = raw.get("id") if isinstance(raw, dict) else None
        owner = f"principle '{pid}'" if pid else f"principles[{loc[1]}]"
    elif len(loc) >= 2 and isinstance(loc[1], int):
        owner = f"{loc[0]}[{loc[1]}]"
    if kind == "missing":
        return f"add a {field} to {owner}"
    if kind == "extra_forbidden":
        model = _SECTIONS.get(str(loc[0])) if len(loc) > 1 else Constitution
        close = difflib.get_close_matches(field, list(model.model_fields) if model else [], n=1)
        return f"rename it to '{close[0]}' (a typo?)" if close else f"remove '{field}' from {owner}"
    if kind == "string_pattern_mismatch":
        return "use a lowercase slug such as 'self_harm' (letters, digits, '_' or '-')"
    if kind == "too_short" and field == "principles":
        return "add at least one principle"
    if kind in ("too_short", "string_too_short"):
        return f"write the {field} text"
    if kind == "literal_error":
        return "answer with \"A\" or \"B\""
    if kind in ("list_type", "dict_type", "model_type"):
        return f"make {field} a {'list' if kind == 'list_type' else 'mapping'} as in the default constitution"
    return f"fix {field} in {owner} (see charter's default constitution for the expected shape)"


_SECTIONS: dict[str, type[BaseModel]] = {
    "principles": Principle, "few_shot": FewShotExample, "comparison_few_shot": ComparisonExample,
}


def _line_of(root: yaml.Node | None, loc: tuple[str | int, ...]) -> int:
    """The 1-based YAML line of the field at ``loc`` (or of its closest existing parent)."""
    node, line = root, (root.start_mark.line + 1) if root is not None else 1
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = next(((k, v) for k, v in node.value if getattr(k, "value", None) == part), None)
            if match is None:
                break
            line, node = match[0].start_mark.line + 1, match[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line


def _dotted(loc: tuple[str | int, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out or "(top level)"


def summary(c: Constitution) -> str:
    """A short human-readable summary: name, version, hash, counts and principle ids by area."""
    by_area: dict[str, list[str]] = defaultdict(list)
    for p in c.principles:
        by_area[p.area].append(p.id)
    no_cmp = [p.id for p in c.principles if not p.comparison_question]
    lines = [
        f"constitution {c.name} v{c.version} (hash {c.hash()})",
        f"  {len(c.principles)} principles in {len(by_area)} areas, {len(c.few_shot)} SL few-shot examples, "
        f"{len(c.comparison_few_shot)} comparison examples",
        *(f"  {area}: {', '.join(ids)}" for area, ids in by_area.items()),
    ]
    missing = [a for a in HARM_AREAS if a not in by_area]
    if missing:
        lines.append(f"  note: no principle for {', '.join(missing)}")
    if no_cmp:
        lines.append(f"  note: no comparison_question for {', '.join(no_cmp)} (needed by the RL stage)")
    if c.system_prompt:
        lines.append(f"  system prompt: {c.system_prompt[:80]}{'…' if len(c.system_prompt) > 80 else ''}")
    return "\n".join(lines)
