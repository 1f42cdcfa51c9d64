"""A deterministic train / evaluation split of any prompt file, so that nothing a run trains on is evaluated.

The split is a property of the *content*, not of the file's order or of a random draw: each prompt belongs to a
group, and a group's part is read off a salted hash of its key, so the same prompt lands in the same part in every
run, on every machine, in every file it appears in (HH-RLHF rows that repeat a prompt go together).

Groups keep siblings together:

* **XSTest** (a CSV with ``id,prompt,type,label,focus``): each safe prompt has unsafe *contrast* siblings that share
  its wording ("kill a Python process" / "kill a person"). Rows are joined when they share a ``focus`` word, and
  when they hold the same position in XSTest v2's blocks of 25 (a safe type and its ``contrast_*`` type, e.g.
  ids 1–25 and 26–50); a group is the connected set. Splitting by row would put one sibling in training and the
  other in evaluation and flatter the over-refusal figure.
* **Everything else** (HH-RLHF first turns, JSONL, text): the group is the prompt's normalised final user turn.

:data:`EVAL_FRACTION` of the groups go to evaluation (0.5 for XSTest, which is small and evaluation-first; 0.3
otherwise). :func:`describe` gives what the run manifest records: the rule, the salt and the counts per part.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from charter.records import Prompt

Part = Literal["train", "eval"]
Selection = Literal["all", "train", "eval"]
SALT = "charter-split-v1"
EVAL_FRACTION = {"xstest": 0.5, "text": 0.3}
"""Share of groups that go to the evaluation part, by kind of file."""

# XSTest v2 lays its 450 prompts out in blocks of 25: a safe type, then its contrast type (discrimination and
# privacy have two safe types sharing one contrast type). Ids in one family at the same offset are siblings.
_XSTEST_FAMILIES = ((1, 50), (51, 100), (101, 150), (151, 200), (201, 250), (251, 325), (326, 375), (376, 450))


def _norm(text: str) -> str:
    return " ".join(text.split()).casefold()


def part_of(key: str, fraction: float) -> Part:
    """The part of a group: its salted hash read as a number in [0, 1), below ``fraction`` = evaluation."""
    digest = hashlib.sha256(f"{SALT}:{key}".encode()).digest()
    return "eval" if int.from_bytes(digest[:8], "big") / 2**64 < fraction else "train"


def _xstest_position(row_id: int) -> str | None:
    for start, end in _XSTEST_FAMILIES:
        if start <= row_id <= end:
            return f"pos:{start}:{(row_id - start) % 25}"
    return None


def xstest_groups(path: str | Path) -> dict[str, str] | None:
    """``{row id: group key}`` for an XSTest CSV (None when the file is not one: no id/type/label/focus columns)."""
    try:
        with Path(path).open(encoding="utf-8-sig", newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error):
        return None
    if not rows or not {"id", "prompt", "type", "label", "focus"} <= set(rows[0]):
        return None
    parent = {r["id"].strip(): r["id"].strip() for r in rows}

    def find(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    links: dict[str, list[str]] = {}
    for r in rows:
        rid = r["id"].strip()
        keys = [f"focus:{_norm(r['focus'])}"] if r["focus"].strip() else []
        if rid.isdigit() and (pos := _xstest_position(int(rid))):
            keys.append(pos)
        for k in keys:
            links.setdefault(k, []).append(rid)
    for ids in links.values():
        for other in ids[1:]:
            parent[find(other)] = find(ids[0])
    members: dict[str, list[str]] = {}
    for rid in parent:
        members.setdefault(find(rid), []).append(rid)
    # a group's key: its smallest member id, so it does not depend on union order
    return {rid: "xstest:" + min(group, key=lambda s: (len(s), s)) for group in members.values() for rid in group}


def assign(prompts: Sequence[Prompt], path: str | Path | None = None) -> dict[str, Part]:
    """``{prompt id: part}`` for prompts loaded from ``path`` (XSTest grouping when it is an XSTest CSV)."""
    groups = xstest_groups(path) if path is not None and str(path).lower().endswith((".csv", ".tsv")) else None
    out: dict[str, Part] = {}
    for p in prompts:
        if groups is not None and p.id in groups:
            out[p.id] = part_of(groups[p.id], EVAL_FRACTION["xstest"])
        else:
            out[p.id] = part_of("text:" + _norm(p.text), EVAL_FRACTION["text"])
    return out


def select(prompts: Sequence[Prompt], part: Selection, path: str | Path | None = None) -> list[Prompt]:
    """The prompts of one part (``"all"`` keeps every prompt), in their original order."""
    if part == "all":
        return list(prompts)
    parts = assign(prompts, path)
    return [p for p in prompts if parts[p.id] == part]


def describe(prompts: Sequence[Prompt], path: str | Path | None, part: Selection) -> dict[str, Any]:
    """What the manifest records about a split file: the rule, the salt, the counts and which part was used."""
    parts = assign(prompts, path)
    xstest = path is not None and xstest_groups(path) is not None
    return {
        "used": part, "salt": SALT,
        "rule": "xstest: focus + sibling groups" if xstest else "normalised prompt text",
        "eval_fraction": EVAL_FRACTION["xstest" if xstest else "text"],
        "train": sum(v == "train" for v in parts.values()), "eval": sum(v == "eval" for v in parts.values()),
    }
