"""Read any file charter loads — prompts, SFT (``messages``) or preference (``prompt``/``chosen``/``rejected``) data —
as :class:`Item` records that keep the file's real line numbers and every duplicate.

:func:`charter.prompts.load_prompts` drops duplicates (it is a loader); an audit must see them, so this reads the
rows itself, with charter.prompts' own format detection, CSV/text row readers and dialogue parsing, so the audit
sees each record as the pipeline would.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from charter import prompts as P
from charter.errors import ConfigError

Kind = Literal["prompt", "sft", "preference"]


@dataclass
class Item:
    """One record of a file, as the audit sees it."""

    file: str
    """The file it came from (as given)."""
    line: int
    """The file's real line number (a CSV row spanning lines: the line it starts on; a JSON array: the item)."""
    kind: Kind
    """'prompt', 'sft' (a ``messages`` list ending with the assistant turn) or 'preference'."""
    turns: list[dict[str, str]]
    """The conversation before the answer(s): ``{role, content}``; for a prompt file the prompt and its context."""
    answers: dict[str, str] = field(default_factory=dict)
    """The answer(s) a model learns: ``{"response": ...}`` (SFT) or ``{"chosen": ..., "rejected": ...}``."""
    id: str | None = None
    """The record's own id, when the file gives one."""

    def prompt_text(self) -> str:
        """The user turns, joined: what a prompt set would hold."""
        return "\n\n".join(t["content"] for t in self.turns if t["role"] == "user")

    def texts(self) -> list[tuple[str, str]]:
        """Every text of the record as ``(where, text)``: ``user[0]``, ``assistant[1]``, ``chosen``…"""
        out = [(f"{t['role']}[{i}]", t["content"]) for i, t in enumerate(self.turns)]
        return out + list(self.answers.items())

    def full_text(self) -> str:
        """All of the record's text in one string (for duplicate detection)."""
        return "\n\n".join(text for _, text in self.texts())


@dataclass
class Loaded:
    """The records of one file, and the lines that gave none (with why)."""

    path: str
    kind: Kind
    items: list[Item]
    skipped: list[tuple[int, str]] = field(default_factory=list)
    fmt: str = "jsonl"


def load_items(path: str | Path, *, field: str = "prompt", fmt: str = "auto") -> Loaded:
    """All records of a prompt, SFT or preference file, duplicates included, with their real line numbers.

    Raises:
        ConfigError: the file is missing or unreadable, or holds no usable record.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{path}: file not found", "pass a .jsonl, .csv or .txt file charter loads")
    try:
        data = p.read_bytes()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror})", "check the file's permissions") from None
    text, _ = P._decode(data)  # invalid UTF-8 becomes U+FFFD, which the encoding check reports
    resolved = P._resolve_format(fmt, p, data)
    items: list[Item] = []
    skipped: list[tuple[int, str]] = []
    if resolved in ("jsonl", "hh"):
        rows: Iterator[tuple[int, Any]] = _json_rows(text, str(path))
    elif resolved in ("csv", "tsv"):
        rows = ((n, raw if isinstance(raw, str) else raw.value)
                for n, raw in P._read_csv(text, str(path), field, "\t" if resolved == "tsv" else ","))
    else:
        rows = ((n, raw if isinstance(raw, str) else raw.value) for n, raw in P._read_text(text))
    for lineno, rec in rows:
        if isinstance(rec, _Skip):
            skipped.append((lineno, rec.why))
            continue
        got = to_item(rec, str(path), lineno, field) if resolved in ("jsonl", "hh") else \
            _prompt_item(rec, str(path), lineno, None)
        if isinstance(got, str):
            skipped.append((lineno, got))
        else:
            items.append(got)
    if not items:
        first = "; ".join(f"line {n}: {why}" for n, why in skipped[:2]) or "the file is empty"
        raise ConfigError(f"{path}: no usable records ({first})",
                          f"check the format and field (now '{field}')")
    kinds = {i.kind for i in items}
    kind: Kind = "preference" if "preference" in kinds else "sft" if "sft" in kinds else "prompt"
    return Loaded(path=str(path), kind=kind, items=items, skipped=skipped, fmt=resolved)


@dataclass
class _Skip:
    why: str


def _json_rows(text: str, name: str) -> Iterator[tuple[int, Any]]:
    if text.lstrip().startswith("["):
        try:
            yield from enumerate(json.loads(text), 1)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{name}:{e.lineno}:{e.colno}: invalid JSON array: {e.msg}",
                              "fix the JSON, or write one JSON object per line (JSONL)") from None
        return
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield lineno, json.loads(line)
        except json.JSONDecodeError as e:
            yield lineno, _Skip(f"unparseable JSON ({e.msg} at column {e.colno})")


def dialogue(value: Any) -> list[dict[str, str]] | None:
    """Turns of an HH dialogue string or a ``messages`` list (roles user/assistant/system); None if neither."""
    if isinstance(value, str):
        if not P._is_hh(value):
            return None
        parts = P._HH_TURN.split(value)
        return [{"role": "user" if r == "Human" else "assistant", "content": c.strip()}
                for r, c in zip(parts[1::2], parts[2::2], strict=True)]
    if isinstance(value, list) and all(isinstance(m, dict) for m in value):
        turns = []
        for m in value:
            role = P._ROLES.get(str(m.get("role", "")).lower())
            if role is None or not isinstance(m.get("content"), str):
                return None
            turns.append({"role": role, "content": m["content"].strip()})
        return turns
    return None


def to_item(rec: Any, file: str, line: int, field: str = "prompt") -> Item | str:
    """One JSON record as an Item (kind read from its keys), or why it gives none."""
    if isinstance(rec, str):
        return _prompt_item(rec, file, line, None)
    if not isinstance(rec, dict):
        return f"not a JSON object or string ({type(rec).__name__})"
    rid = str(rec["id"]) if rec.get("id") not in (None, "") else None
    if "chosen" in rec and "rejected" in rec:
        return _preference_item(rec, file, line, rid, field)
    if field not in rec and isinstance(rec.get("messages"), list):
        turns = dialogue(rec["messages"])
        if turns is None:
            return "bad messages list (each item needs a role user/assistant/system and text content)"
        if turns and turns[-1]["role"] == "assistant":
            return Item(file, line, "sft", turns[:-1], {"response": turns[-1]["content"]}, rid)
        return Item(file, line, "prompt", turns, {}, rid)
    if field not in rec:
        return f"missing field '{field}' (has: {', '.join(map(str, rec)) or 'nothing'})"
    return _prompt_item(rec[field], file, line, rid)


def _prompt_item(value: Any, file: str, line: int, rid: str | None) -> Item | str:
    turns = dialogue(value)
    if turns is None:
        if not isinstance(value, str):
            return "prompt is not text or a messages list"
        if not value.strip():
            return "empty prompt"
        turns = [{"role": "user", "content": value.strip()}]
    elif turns and turns[-1]["role"] == "assistant":
        return Item(file, line, "sft", turns[:-1], {"response": turns[-1]["content"]}, rid)
    return Item(file, line, "prompt", turns, {}, rid)


def _answer(value: Any, prompt_turns: list[dict[str, str]]) -> tuple[list[dict[str, str]], str] | None:
    """(conversation before the answer, the answer) from a chosen/rejected value: a string, an HH dialogue or a
    messages list; the dialogue's last assistant turn is the answer."""
    turns = dialogue(value)
    if turns is None:
        return (prompt_turns, value.strip()) if isinstance(value, str) else None
    if turns and turns[-1]["role"] == "assistant":
        return (turns[:-1] if turns[:-1] else prompt_turns), turns[-1]["content"]
    return None


def _preference_item(rec: dict[str, Any], file: str, line: int, rid: str | None, field: str) -> Item | str:
    prompt = rec.get(field, rec.get("prompt"))
    prompt_turns = dialogue(prompt) if prompt is not None else []
    if prompt_turns is None:
        prompt_turns = [{"role": "user", "content": prompt.strip()}] if isinstance(prompt, str) else []
    chosen, rejected = _answer(rec["chosen"], prompt_turns), _answer(rec["rejected"], prompt_turns)
    if chosen is None or rejected is None:
        return "chosen/rejected is not text, an HH dialogue ending with an assistant turn, or a messages list"
    turns = chosen[0] or prompt_turns
    if not any(t["role"] == "user" for t in turns):
        return "no human/user turn"
    return Item(file, line, "preference", turns, {"chosen": chosen[1], "rejected": rejected[1]}, rid)
