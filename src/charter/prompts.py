"""Prompt sets: JSONL, CSV, plain text and HH-RLHF dialogues loaded as :class:`~charter.records.Prompt`.

One bad line never stops a load: it is recorded in :attr:`PromptSet.skipped` with its line number and reason.
Prompts are deduplicated by normalised text (case and whitespace) and the number dropped is counted. Formats:

- **JSONL** (``.jsonl``, ``.json``; a ``.json`` file holding one JSON array also works, numbered by item):
  the prompt is in ``field`` (default ``prompt``) as plain text, HH dialogue text, or a ``messages`` list of
  ``{role, content}``; a record without ``field`` but with ``messages`` uses those. Optional keys: ``id``,
  ``category``, ``helpful``. A line that is just a JSON string is a prompt too.
- **CSV** (``.csv``; ``.tsv`` tab-separated): a header row and a ``field`` column. Optional ``id``,
  ``category`` and ``helpful`` columns. XSTest files (``prompt,type,label``) get the category
  ``xstest:<label>:<type>``.
- **Text** (``.txt`` or anything else): one prompt per line; blanks and ``#`` comments are skipped silently.
- **HH-RLHF dialogues** (``\\n\\nHuman: ... \\n\\nAssistant: ...``) are recognised by content in any JSONL
  or CSV field, e.g. ``field="chosen"``. ``hh_mode="first"`` keeps the first human turn; ``"context"`` keeps
  the conversation up to the last human turn, earlier turns in :attr:`Prompt.context`. ``messages`` lists
  follow the same two modes. ``fmt="hh"`` reads JSONL and insists on a dialogue: from ``field`` when it
  holds one, else from ``chosen`` (as in the HH-RLHF files, whose ``prompt`` is only the first turn).
"""

from __future__ import annotations

import csv
import io
import json
import random
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from charter.errors import ConfigError
from charter.records import AnswerPair, PreferencePair, Prompt, short_hash

FORMATS = {"auto": "auto", "jsonl": "jsonl", "json": "jsonl", "hh": "hh", "csv": "csv", "tsv": "tsv",
           "text": "text", "txt": "text"}
HH_MODES = ("first", "context")
DEFAULT_SETS = {"red_team": ("red_team.jsonl", "red_team_pairs.jsonl"),
                "helpful": ("helpful.jsonl", "helpful_pairs.jsonl"),
                "all": ("red_team.jsonl", "red_team_pairs.jsonl", "helpful.jsonl", "helpful_pairs.jsonl")}
"""The bundled sets, files in order. ``*_pairs.jsonl``: 160 minimal pairs written for charter, each harmful request
beside a safe one sharing its scary word or topic (``pair`` names the other side), so the SL data teaches where the
line is, not which words to refuse."""
_EXTENSIONS = {".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".tsv": "tsv"}
_HH_TURN = re.compile(r"(?:\A\s*|\n\n)(Human|Assistant):[ \t]?")
_ROLES = {"user": "user", "human": "user", "assistant": "assistant", "system": "system"}


@dataclass
class PromptSet:
    """The prompts loaded from one or more files, with what was skipped and why."""

    prompts: list[Prompt]
    skipped: list[tuple[int, str]] = field(default_factory=list)
    """(line number, reason) for each line that gave no prompt; for a JSON array, the item number."""
    duplicates: int = 0
    """How many prompts were dropped as duplicates of an earlier one (normalised text and context)."""
    source: str = ""
    """The file(s) the set came from."""

    def __len__(self) -> int:
        return len(self.prompts)

    def __iter__(self) -> Iterator[Prompt]:
        return iter(self.prompts)

    def hash(self) -> str:
        """A stable short hash of the prompts' content (ids, text, context, category, helpful; not paths)."""
        return short_hash([p.model_dump(exclude={"source", "parent_id"}) for p in self.prompts])

    def summary(self) -> str:
        """One line for logs: counts, duplicates and the first few skipped lines."""
        line = f"{len(self.prompts)} prompts from {self.source} ({self.duplicates} duplicates, "
        line += f"{len(self.skipped)} skipped"
        if self.skipped:
            line += ": " + "; ".join(f"line {n}: {why}" for n, why in self.skipped[:3])
            line += "; …" if len(self.skipped) > 3 else ""
        return line + ")"


@dataclass
class _Raw:
    """A record before it becomes a Prompt: the field's value and the optional id/category/helpful."""

    value: Any
    id: Any = None
    category: Any = None
    helpful: Any = None


def load_prompts(
    path: str | Path | None = None,
    *,
    fmt: str = "auto",
    field: str = "prompt",
    hh_mode: str = "first",
    category: str | None = None,
    limit: int | None = None,
    helpful: bool | None = None,
) -> PromptSet:
    """Load a prompt set from a file.

    Args:
        path: JSONL, CSV or text file; ``None`` loads the bundled default set (red-team + helpful).
        fmt: ``"auto"`` (by extension), ``"jsonl"``/``"json"``, ``"hh"``, ``"csv"``, ``"tsv"`` or
            ``"text"``/``"txt"``.
        field: The JSONL key or CSV column holding the prompt (text, HH dialogue or a ``messages`` list).
        hh_mode: For dialogues and ``messages`` lists: the ``"first"`` human turn, or the whole ``"context"``
            up to the last human turn.
        category: Category for prompts whose file gives none (e.g. ``"harmful"`` for an HH red-team file).
        limit: Stop after this many unique prompts.
        helpful: Force :attr:`Prompt.helpful` for every prompt; ``None`` reads a ``helpful`` key or column
            (default False).

    Returns:
        The prompts in file order, plus skipped lines and the duplicate count.

    Raises:
        ConfigError: a missing or unreadable file, a bad option, a CSV without the column, or no usable
            prompt at all.
    """
    if path is None:
        return _load([_bundled(n) for n in DEFAULT_SETS["all"]], fmt="jsonl", field=field, hh_mode=hh_mode,
                     category=category, limit=limit, helpful=helpful, source="charter:default")
    p = Path(path)
    if not p.is_file():
        what = "is a directory" if p.is_dir() else "not found"
        raise ConfigError(f"prompt file {path}: {what}", "pass a .jsonl, .csv or .txt file of prompts")
    try:
        data = p.read_bytes()
    except OSError as e:
        raise ConfigError(f"prompt file {path}: cannot read ({e.strerror})",
                          "check the file's permissions") from None
    fmt = _resolve_format(fmt, p, data)
    return _load([(str(path), *_decode(data))], fmt=fmt, field=field, hh_mode=hh_mode, category=category,
                 limit=limit, helpful=helpful, source=str(path))


def default_prompts(kind: str = "all") -> PromptSet:
    """The bundled prompt sets, written for charter.

    Args:
        kind: ``"red_team"`` (harmful requests across the harm areas, ``category`` = area), ``"helpful"``
            (ordinary requests, some scary-sounding but safe; ``helpful=True``) or ``"all"`` (both).
    """
    if kind not in DEFAULT_SETS:
        raise ConfigError(f"unknown default prompt set '{kind}'", f"use one of: {', '.join(DEFAULT_SETS)}")
    return _load([_bundled(n) for n in DEFAULT_SETS[kind]], fmt="jsonl", field="prompt", hh_mode="first",
                 category=None, limit=None, helpful=None, source=f"charter:{kind}")


def _bundled(name: str) -> tuple[str, str, bool]:
    text = resources.files("charter").joinpath("data", "prompts", name).read_text(encoding="utf-8")
    return name, text, False


def _decode(data: bytes) -> tuple[str, bool]:
    """The text, and whether it had invalid UTF-8 (those lines carry U+FFFD and are skipped with a reason)."""
    try:
        return data.decode("utf-8-sig"), False
    except UnicodeDecodeError:
        return data.decode("utf-8-sig", errors="replace"), True


def _resolve_format(fmt: str, p: Path, data: bytes) -> str:
    if fmt not in FORMATS:
        raise ConfigError(f"unknown prompt format '{fmt}'", f"use one of: {', '.join(FORMATS)}")
    if FORMATS[fmt] != "auto":
        return FORMATS[fmt]
    if p.suffix.lower() in _EXTENSIONS:
        return _EXTENSIONS[p.suffix.lower()]
    return "jsonl" if data.lstrip()[:1] == b"{" else "text"


def _load(files: list[tuple[str, str, bool]], *, fmt: str, field: str, hh_mode: str, category: str | None,
          limit: int | None, helpful: bool | None, source: str) -> PromptSet:
    if hh_mode not in HH_MODES:
        raise ConfigError(f"unknown hh_mode '{hh_mode}'", f"use one of: {', '.join(HH_MODES)}")
    if limit is not None and limit < 1:
        raise ConfigError(f"prompt limit must be at least 1 (got {limit})", "pass a positive limit or none")
    out = _Builder(hh_mode, category, helpful, limit)
    for name, text, bad_utf8 in files:
        if fmt in ("jsonl", "hh"):
            rows = _read_jsonl(text, name, field, hh_only=fmt == "hh")
        elif fmt in ("csv", "tsv"):
            rows = _read_csv(text, name, field, "\t" if fmt == "tsv" else ",")
        else:
            rows = _read_text(text)
        if any(out.add(name, lineno, raw, field, bad_utf8) for lineno, raw in rows):
            break  # the limit is reached
    prompts = out.prompts
    if not prompts:
        first = "; ".join(f"line {n}: {why}" for n, why in out.skipped[:2]) or "the file is empty"
        raise ConfigError(f"{source}: no usable prompts ({first})",
                          f"check the format and field (now '{field}'; e.g. field='chosen' for HH dialogues)")
    return PromptSet(prompts=prompts, skipped=out.skipped, duplicates=out.duplicates, source=source)


class _Builder:
    """Turns raw records into Prompts: dialogue parsing, ids, dedup, skip reasons and the limit."""

    def __init__(self, hh_mode: str, category: str | None, helpful: bool | None, limit: int | None) -> None:
        self.hh_mode, self.category, self.helpful, self.limit = hh_mode, category, helpful, limit
        self.prompts: list[Prompt] = []
        self.skipped: list[tuple[int, str]] = []
        self.duplicates = 0
        self._seen: set[str] = set()
        self._ids: set[str] = set()

    def add(self, name: str, lineno: int, raw: _Raw | str, field: str, bad_utf8: bool) -> bool:
        """Add one record (or record why it was skipped). Returns True once the limit is reached."""
        parsed = raw if isinstance(raw, str) else _to_turns(raw.value, self.hh_mode, field)
        if isinstance(parsed, str):
            self.skipped.append((lineno, parsed))
            return False
        assert isinstance(raw, _Raw)
        text, context = parsed
        if bad_utf8 and any("\ufffd" in s for s in [text, *(t["content"] for t in context)]):
            self.skipped.append((lineno, "invalid UTF-8 bytes"))
            return False
        key = json.dumps([[_norm(t["content"]) for t in context], _norm(text)])
        if key in self._seen:
            self.duplicates += 1
            return False
        pid = str(raw.id).strip() if raw.id not in (None, "") else "p-" + (
            short_hash(context, text) if context else short_hash(text))
        if pid in self._ids:
            self.skipped.append((lineno, f"duplicate id '{pid}' with different text"))
            return False
        self._seen.add(key)
        self._ids.add(pid)
        self.prompts.append(Prompt(
            id=pid, text=text, context=context, source=f"{name}:{lineno}",
            category=str(raw.category or self.category or ""),
            helpful=self.helpful if self.helpful is not None else _truthy(raw.helpful),
        ))
        return self.limit is not None and len(self.prompts) >= self.limit


def _norm(s: str) -> str:
    return " ".join(s.split()).casefold()


def _truthy(v: Any) -> bool:
    if isinstance(v, str):
        return v.strip().lower() in ("1", "true", "yes", "y")
    return bool(v)


def _to_turns(value: Any, hh_mode: str, field: str) -> tuple[str, list[dict[str, str]]] | str:
    """Prompt text and earlier turns from plain text, HH dialogue or a messages list, or a skip reason."""
    if isinstance(value, str):
        if not _is_hh(value):
            text = value.strip()
            return (text, []) if text else "empty prompt"
        parts = _HH_TURN.split(value)
        turns = [{"role": "user" if r == "Human" else "assistant", "content": c.strip()}
                 for r, c in zip(parts[1::2], parts[2::2], strict=True)]
    elif isinstance(value, list):
        turns = []
        for m in value:
            role = _ROLES.get(str(m.get("role", "")).lower()) if isinstance(m, dict) else None
            if role is None or not isinstance(m.get("content"), str):
                return "bad messages list (each item needs a role user/assistant/system and text content)"
            turns.append({"role": role, "content": m["content"].strip()})
    else:
        return f"field '{field}' is not text or a messages list"
    users = [i for i, t in enumerate(turns) if t["role"] == "user"]
    if not users:
        return "no human/user turn"
    i = users[0] if hh_mode == "first" else users[-1]
    context = [t for t in turns[:i] if hh_mode == "context" or t["role"] == "system"]
    return (turns[i]["content"], context) if turns[i]["content"] else "empty prompt"


def _is_hh(s: str) -> bool:
    return "\n\nHuman:" in s or (s.lstrip().startswith("Human:") and "\n\nAssistant:" in s)


def _read_jsonl(text: str, name: str, field: str, hh_only: bool) -> Iterator[tuple[int, _Raw | str]]:
    if text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{name}:{e.lineno}:{e.colno}: invalid JSON array: {e.msg}",
                              "fix the JSON, or write one JSON object per line (JSONL)") from None
        yield from ((n, _from_json(rec, field, hh_only)) for n, rec in enumerate(items, 1))
        return
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            yield lineno, f"unparseable JSON ({e.msg} at column {e.colno})"
            continue
        yield lineno, _from_json(rec, field, hh_only)


def _from_json(rec: Any, field: str, hh_only: bool) -> _Raw | str:
    if isinstance(rec, str) and not hh_only:
        return _Raw(rec)
    if not isinstance(rec, dict):
        return f"not a JSON object{'' if hh_only else ' or string'} ({type(rec).__name__})"
    value = rec.get(field)
    if hh_only:
        value = next((v for v in (value, rec.get("chosen")) if isinstance(v, str) and _is_hh(v)), None)
        if value is None:
            return f"no HH dialogue in field '{field}' or 'chosen'"
    if value is None and isinstance(rec.get("messages"), list):
        value = rec["messages"]
    if value is None:
        return f"missing field '{field}' (has: {', '.join(map(str, rec)) or 'nothing'})"
    return _Raw(value, rec.get("id"), rec.get("category"), rec.get("helpful"))


def _read_csv(text: str, name: str, field: str, delim: str) -> Iterator[tuple[int, _Raw | str]]:
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delim)
    columns: list[str] | None = None
    while True:
        start = reader.line_num + 1  # a quoted field may span lines: report the line the row starts on
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            yield start, f"unparseable CSV ({e})"
            continue
        if not any(c.strip() for c in cells):
            continue
        if columns is None:
            columns = [c.strip() for c in cells]
            if field not in columns:
                raise ConfigError(f"{name}:{start}: no '{field}' column (columns: {', '.join(columns)})",
                                  "pass field=<column> or add a header row naming the prompt column")
            xstest = {"type", "label"} <= set(columns) and "category" not in columns
            continue
        row = dict(zip(columns, cells, strict=False))
        if field not in row:
            yield start, f"missing field '{field}' (row has {len(cells)} of {len(columns)} columns)"
            continue
        cat = f"xstest:{row.get('label', '')}:{row.get('type', '')}" if xstest else row.get("category")
        yield start, _Raw(row[field], row.get("id"), cat, row.get("helpful"))
    if columns is None:
        raise ConfigError(f"{name}: empty CSV file", "add a header row and one prompt per row")


def _read_text(text: str) -> Iterator[tuple[int, _Raw | str]]:
    for lineno, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if s and not s.startswith("#"):
            yield lineno, _Raw(s)


# --- human-labelled HH-RLHF pairs (the judges' and label-eval's ground truth) ------------------------------------

def parse_hh(text: str) -> list[dict[str, str]]:
    """An HH-RLHF dialogue (``\\n\\nHuman: … \\n\\nAssistant: …``) as chat messages."""
    marks = list(_HH_TURN.finditer(text))
    turns = []
    for m, nxt in zip(marks, [*marks[1:], None], strict=True):
        body = text[m.end(): nxt.start() if nxt else len(text)].strip()
        turns.append({"role": "user" if m.group(1) == "Human" else "assistant", "content": body})
    return turns


def load_hh_pairs(path: Path, n: int | None = None, seed: int = 0) -> tuple[list[AnswerPair], Counter[str]]:
    """Human-labelled pairs from an HH-RLHF JSONL file; returns the pairs and counts of rows skipped, by reason.

    Raises:
        ConfigError: the file is missing, a line is not JSON, or a row lacks ``chosen``/``rejected`` text.
    """
    if not path.is_file():
        raise ConfigError(f"{path}: file not found", "give an HH-RLHF JSONL file with chosen/rejected dialogues")
    pairs: list[AnswerPair] = []
    skipped: Counter[str] = Counter()
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ConfigError(f"{path}:{lineno}: not JSON ({e.msg})", "fix or remove that line") from None
            if not isinstance(row, dict) or not all(isinstance(row.get(k), str) for k in ("chosen", "rejected")):
                raise ConfigError(f"{path}:{lineno}: missing 'chosen' or 'rejected' dialogue text",
                                  "each line needs chosen and rejected HH dialogues (Human: … Assistant: …)")
            chosen, rejected = parse_hh(row["chosen"]), parse_hh(row["rejected"])
            why = _unusable(chosen, rejected)
            if why:
                skipped[why] += 1
                continue
            rid = str(row.get("id") or f"{path.name}:{lineno}")
            context = chosen[:-2]
            prompt = Prompt(id=rid, text=chosen[-2]["content"], context=context, source=f"{path}:{lineno}")
            good, bad = chosen[-1]["content"], rejected[-1]["content"]
            chosen_is_a = random.Random(f"{seed}:{rid}").random() < 0.5
            a, b = (good, bad) if chosen_is_a else (bad, good)
            ids = (f"{rid}:chosen", f"{rid}:rejected") if chosen_is_a else (f"{rid}:rejected", f"{rid}:chosen")
            pairs.append(AnswerPair(id=f"hh-{short_hash(rid, a, b)}", parent_id=rid, prompt=prompt, a=a, b=b,
                                    a_id=ids[0], b_id=ids[1], model="human-data", human="a" if chosen_is_a else "b"))
            if n is not None and len(pairs) >= n:
                break
    return pairs, skipped


def _unusable(chosen: list[dict[str, str]], rejected: list[dict[str, str]]) -> str | None:
    if len(chosen) < 2 or not rejected or chosen[-1]["role"] != "assistant" or rejected[-1]["role"] != "assistant":
        return "no_final_assistant_turn"
    if chosen[-2]["role"] != "user" or chosen[:-1] != rejected[:-1]:
        return "contexts_differ"
    if not chosen[-1]["content"] or not rejected[-1]["content"]:
        return "empty_answer"
    if chosen[-1]["content"] == rejected[-1]["content"]:
        return "identical_answers"
    return None


def human_preferences(pairs: Sequence[AnswerPair]) -> list[PreferencePair]:
    """Preference records from the human labels (soft label 1.0): the human-label baseline for DPO / RM."""
    out = []
    for p in pairs:
        if p.human is None:
            continue
        a_wins = p.human == "a"
        out.append(PreferencePair(
            id=f"p-{short_hash(p.id, 'human')}", parent_id=p.id, prompt=p.prompt.messages(),
            chosen=[{"role": "assistant", "content": p.a if a_wins else p.b}],
            rejected=[{"role": "assistant", "content": p.b if a_wins else p.a}], soft_label=1.0,
            chosen_id=p.a_id if a_wins else p.b_id, rejected_id=p.b_id if a_wins else p.a_id, source="human",
            model=p.model))
    return out
