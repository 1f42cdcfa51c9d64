"""``charter audit --fix OUT``: a cleaned copy of each file (duplicates dropped, boilerplate prefixes/suffixes
stripped from every paragraph) in the file's own format, and a JSON list of every change, by input line.

Nothing else is touched: lines that gave no record (bad JSON, blank) are copied as they are, and every other
finding (spam, mojibake, leaks, contamination) is left for a person to judge.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from charter.audit.findings import FileAudit
from charter.audit.load import Loaded

_ROLE = r"(?:(?:Human|Assistant):[ \t]?)?"


def _stripper(affixes: list[dict[str, Any]]) -> Callable[[str], tuple[str, list[str]]]:
    """A function that strips the affixes from the start/end of every paragraph of a string (an HH dialogue's
    turn markers count as paragraph starts), returning the new string and which affixes it removed."""
    subs = []
    for a in affixes:
        esc = re.escape(a["text"])
        if a["position"] == "suffix":
            subs.append((a["text"], re.compile(r"[ \t]*" + esc + r"[ \t]*(?=\n[ \t]*\n|\Z)"), ""))
        else:
            subs.append((a["text"], re.compile(r"(\A|\n[ \t]*\n" + _ROLE + r")[ \t]*" + esc + r"[ \t]*"), r"\1"))

    def strip(s: str) -> tuple[str, list[str]]:
        done = []
        for text, pattern, repl in subs:
            s, n = pattern.subn(repl, s)
            done += [text] * n
        return s, done

    return strip


def _walk(value: Any, strip: Callable[[str], tuple[str, list[str]]], done: list[str]) -> Any:
    if isinstance(value, str):
        new, got = strip(value)
        done += got
        return new
    if isinstance(value, list):
        return [_walk(v, strip, done) for v in value]
    if isinstance(value, dict):
        return {k: (v if k in ("id", "role") else _walk(v, strip, done)) for k, v in value.items()}
    return value


def fix_file(loaded: Loaded, audit: FileAudit, out: Path) -> dict[str, Any]:
    """Write the cleaned copy of ``loaded`` to ``out``; returns ``{"file", "out", "changes": [...]}``."""
    by_check = {f.check: f for f in audit.findings}
    drop: dict[int, str] = {}
    for check, why in (("exact_duplicates", "exact duplicate of line"), ("near_duplicates",
                                                                         "near-duplicate of line")):
        f = by_check.get(check)
        for line, first in (f.detail.get("same_as", {}) if f else {}).items():
            drop.setdefault(int(line), f"{why} {first}")
    affixes = by_check["boilerplate"].detail.get("affixes", []) if "boilerplate" in by_check else []
    strip = _stripper(affixes)
    changes: list[dict[str, Any]] = []
    text = Path(loaded.path).read_text(encoding="utf-8-sig", errors="replace")

    def clean(lineno: int, value: Any) -> Any:
        done: list[str] = []
        new = _walk(value, strip, done)
        for affix in dict.fromkeys(done):
            changes.append({"line": lineno, "action": "strip", "text": affix, "times": done.count(affix)})
        return new

    out.parent.mkdir(parents=True, exist_ok=True)
    if loaded.fmt in ("csv", "tsv"):
        delim = "\t" if loaded.fmt == "tsv" else ","
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=delim)
        buf = io.StringIO()
        writer = csv.writer(buf, delimiter=delim, lineterminator="\n")
        header = True
        while True:
            start = reader.line_num + 1
            try:
                cells = next(reader)
            except StopIteration:
                break
            if start in drop and not header:
                changes.append({"line": start, "action": "drop", "reason": drop[start]})
                continue
            writer.writerow(cells if header else clean(start, cells))
            header = header and not any(c.strip() for c in cells)
        out.write_text(buf.getvalue(), encoding="utf-8")
    elif loaded.fmt in ("jsonl", "hh") and text.lstrip().startswith("["):
        items = json.loads(text)
        kept = []
        for n, rec in enumerate(items, 1):
            if n in drop:
                changes.append({"line": n, "action": "drop", "reason": drop[n]})
            else:
                kept.append(clean(n, rec))
        out.write_text(json.dumps(kept, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    else:
        lines = []
        for n, line in enumerate(text.splitlines(), 1):
            if n in drop:
                changes.append({"line": n, "action": "drop", "reason": drop[n]})
                continue
            if loaded.fmt in ("jsonl", "hh"):
                try:
                    rec = json.loads(line) if line.strip() else None
                except json.JSONDecodeError:
                    rec = None
                lines.append(line if rec is None else json.dumps(clean(n, rec), ensure_ascii=False))
            else:
                lines.append(clean(n, line))
        out.write_text("".join(x + "\n" for x in lines), encoding="utf-8")
    changes.sort(key=lambda c: (c["line"], c["action"]))
    return {"file": loaded.path, "out": str(out), "dropped": sum(c["action"] == "drop" for c in changes),
            "stripped": sum(c["times"] for c in changes if c["action"] == "strip"), "changes": changes}
