"""The audit as a whole: files (+ contamination between training and evaluation files), tokenizers, ``--fix``,
``audit.json``, a text summary for the terminal, and :func:`audit_run_inputs` for ``charter run``."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from charter.audit import checks
from charter.audit.findings import AuditConfig, FileAudit, Finding
from charter.audit.load import Item, Loaded, load_items


def audit_loaded(loaded: Loaded, cfg: AuditConfig, special_tokens: Sequence[str] = ()) -> FileAudit:
    """Every text check on one file's records."""
    items = loaded.items
    findings = [check(items, cfg) for check in checks.TEXT_CHECKS]
    findings.insert(5, checks.template_tokens(items, cfg, special_tokens))
    mix, dominant = checks.script_mix(items, cfg)
    findings.insert(7, mix)
    return FileAudit(path=loaded.path, kind=loaded.kind, records=len(items), skipped=loaded.skipped,
                     scripts=dominant, findings=findings)


def audit_files(paths: Sequence[str | Path], evals: Sequence[str | Path] = (), cfg: AuditConfig | None = None, *,
                field: str = "prompt", fmt: str = "auto", tokenizers: Sequence[str] = (),
                corpus: Sequence[str | Path] = (), fix: str | Path | None = None) -> dict[str, Any]:
    """Audit files and tokenizers; returns what ``audit.json`` holds.

    Args:
        paths: Prompt, SFT or preference files (training side).
        evals: Evaluation files: each is audited and checked for overlap with every file of ``paths``. Without
            any, every later file of ``paths`` is checked against every earlier one.
        cfg: Thresholds (defaults when None).
        field: The JSONL key / CSV column of the prompt.
        fmt: The format ('auto' reads the extension).
        tokenizers: Tokenizer specs (``transformers/embedded``, a model folder, a tokenizer.json).
        corpus: Reference files for the tokenizer audit (their text is tokenized; default: the audited files).
        fix: A folder: write a cleaned copy of each file there and ``changes.json`` listing every change.
    """
    from charter.audit.tokenizer import audit_tokenizer, resolve_tokenizer

    cfg = cfg or AuditConfig()
    loaded = {str(p): load_items(p, field=field, fmt=fmt) for p in paths}
    loaded.update({str(p): load_items(p) for p in evals if str(p) not in loaded})
    special: list[str] = []
    for spec in tokenizers:
        special += _special_tokens(resolve_tokenizer(spec)[0])
    audits = {p: audit_loaded(ld, cfg, special) for p, ld in loaded.items()}
    overlaps = []
    train = [str(p) for p in paths]
    pairs = [(t, str(e)) for e in evals for t in train] if evals else \
        [(train[i], train[j]) for j in range(len(train)) for i in range(j)]
    for t, e in pairs:
        if Path(t).resolve() != Path(e).resolve():
            overlaps.append(checks.contamination(loaded[t].items, loaded[e].items, cfg))
    out: dict[str, Any] = {
        "version": 1, "config": cfg.model_dump(),
        "files": [a.model_dump() for a in audits.values()],
        "overlaps": [o.model_dump() for o in overlaps],
        "tokenizers": [],
    }
    if tokenizers:
        texts = _corpus_texts(corpus) if corpus else [it.full_text() for ld in loaded.values() for it in ld.items]
        out["tokenizers"] = [audit_tokenizer(spec, cfg, texts) for spec in tokenizers]
        out["corpus"] = [str(c) for c in corpus] or list(loaded)
    if fix is not None:
        from charter.audit.fix import fix_file

        folder = Path(fix)
        results = [fix_file(loaded[p], audits[p], folder / _out_name(p, list(loaded))) for p in loaded]
        (folder / "changes.json").write_text(json.dumps(results, ensure_ascii=False, indent=1) + "\n",
                                             encoding="utf-8")
        out["fix"] = [{k: v for k, v in r.items() if k != "changes"} for r in results]
    out["warnings"] = warnings(out)
    return out


def _out_name(path: str, all_paths: list[str]) -> str:
    name = Path(path).name
    same = [p for p in all_paths if Path(p).name == name]
    return name if len(same) == 1 else f"{same.index(path)}-{name}"


def _special_tokens(tok_json: Path) -> list[str]:
    data = json.loads(tok_json.read_text(encoding="utf-8"))
    return [t["content"] for t in data.get("added_tokens", []) if t.get("special")]


def _corpus_texts(paths: Sequence[str | Path]) -> list[str]:
    """Texts of reference files: records of a file charter loads, else the plain text by paragraph."""
    from charter.errors import ConfigError

    texts: list[str] = []
    for p in paths:
        try:
            texts += [it.full_text() for it in load_items(p).items]
        except ConfigError:
            texts += [t for t in Path(p).read_text(encoding="utf-8", errors="replace").split("\n\n") if t.strip()]
    return texts


def warnings(audit: dict[str, Any]) -> list[str]:
    """One line per finding with a non-zero count (what `charter run` prints; nothing is dropped)."""
    out = []
    for f in audit["files"]:
        for x in f["findings"]:
            if x["count"]:
                where = ", ".join(map(str, x["lines"][:5])) + (" …" if len(x["lines"]) > 5 else "")
                out.append(f"{f['path']}: {x['title']} (lines {where})")
    for o in audit["overlaps"]:
        if o["count"]:
            out.append(f"{o['detail']['eval_file']} vs {o['detail']['train_file']}: {o['title']} "
                       f"(lines {', '.join(map(str, o['lines'][:5]))}{' …' if len(o['lines']) > 5 else ''})")
    for t in audit["tokenizers"]:
        if t["flagged_count"] or t["under_trained"]:
            out.append(f"tokenizer {t['spec']}: {t['flagged_count']} long tokens look spam-like, "
                       f"{t['under_trained']} look under-trained")
    return out


def write_audit(audit: dict[str, Any], path: Path) -> Path:
    """Write ``audit.json`` atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(audit, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def summary(audit: dict[str, Any], examples: int = 2) -> str:
    """The audit as text for the terminal: each finding with its count, lines and examples."""
    lines: list[str] = []
    for f in audit["files"]:
        lines.append(f"== {f['path']}: {f['records']} {f['kind']} records"
                     f"{', ' + str(len(f['skipped'])) + ' lines skipped' if f['skipped'] else ''}; scripts "
                     + ", ".join(f"{k} {v}" for k, v in f["scripts"].items()))
        for x in f["findings"]:
            lines += _finding_lines(Finding.model_validate(x), examples)
    for o in audit["overlaps"]:
        lines.append(f"== overlap: {o['detail']['eval_file']} against {o['detail']['train_file']}")
        lines += _finding_lines(Finding.model_validate(o), examples)
    for t in audit["tokenizers"]:
        lines += tokenizer_lines(t)
    for r in audit.get("fix", []):
        lines.append(f"fixed: {r['file']} → {r['out']} ({r['dropped']} records dropped, {r['stripped']} "
                     "boilerplate strips)")
    return "\n".join(lines)


def _finding_lines(x: Finding, examples: int) -> list[str]:
    mark = "!" if x.count else "·"
    out = [f" {mark} {x.check}: {x.title}"]
    if x.check == "boilerplate":
        for a in x.detail.get("affixes", []):
            out.append(f"     {a['position']} on {a['paragraphs']} paragraphs ({a['share']:.0%}): {a['text']!r}")
    if x.count:
        more = " …" if len(x.lines) > 12 else ""
        out.append(f"     lines {', '.join(map(str, x.lines[:12]))}{more}")
        for e in x.examples[:examples]:
            facts = "; ".join(f"{k}={v}" for k, v in e.detail.items() if k not in ("first",))
            out.append(f"     line {e.line}: {e.text[:100]}  [{facts[:160]}]")
    return out


def tokenizer_lines(t: dict[str, Any], per_script: int = 8, flagged_per_script: int = 12) -> list[str]:
    """A tokenizer audit as text: vocabulary share and longest tokens per script, flagged tokens and signals."""
    w = t.get("weights") or {}
    lines = [f"== tokenizer {t['spec']}: {t['vocab']} tokens ({t['added_tokens']} added), {t['long']} long, "
             f"{t['under_trained']} under-trained, {t['unreachable']} unreachable, {t['flagged_count']} flagged"]
    for role in ("embedding", "unembedding"):
        if role in w:
            lines.append(f"   weights: {role} {w[role]['tensor']} (signal {w[role]['signal']}, "
                         f"{w.get('reference_tokens', 0)} reference tokens"
                         f"{', tied' if w[role].get('tied') else ''}); most extreme: "
                         + ", ".join(f"{e['text']!r} {e['z']:+.1f}" for e in w[role]["most_extreme"][:6]))
    for sc, e in t["scripts"].items():
        longest = ", ".join(repr(x["text"]) for x in e["longest"][:per_script])
        lines.append(f"   {sc:<10} {e['tokens']:>7} ({e['share']:.2%})  long {e['long']:>4}  flagged "
                     f"{e['flagged']:>4}  longest: {longest}")
    shown: dict[str, int] = {}
    for x in t["flagged"]:
        sc = x.get("script", "")
        shown[sc] = shown.get(sc, 0) + 1
        if shown[sc] <= flagged_per_script:
            lines.append(f"   flagged {sc:<9} " + token_facts(x))
    for x in t["under_trained_tokens"][:10]:
        lines.append("   under-trained " + token_facts(x))
    return lines


def token_facts(x: dict[str, Any]) -> str:
    """One token's signals on one line."""
    facts = [f"{x['chars']} chars"]
    if "words" in x:
        facts.append(f"{x['words']} words")
    for role, z in x.get("under_trained", {}).items():
        facts.append(f"{role} z {z:+.1f}")
    if "corpus_count" in x:
        facts.append(f"seen {x['corpus_count']}×")
    if x.get("unreachable"):
        facts.append("unreachable")
    return f"#{x['id']} {x['text']!r}: " + ", ".join(facts)


def audit_run_inputs(cfg: Any, run_dir: Path, log: Callable[[str], None] | None = None) -> list[str]:
    """``charter run``: audit the run's prompt files (and its evaluation files, for contamination), write
    ``RUN/audit.json``, and return one warning per finding (each also passed to ``log`` as ``[audit] ...``).
    Nothing is dropped. Does nothing unless ``audit.enabled`` is set in the run config (``cfg.audit``, an
    :class:`AuditConfig` or a dict of its fields)."""
    raw = getattr(cfg, "audit", None) or {}
    acfg = raw if isinstance(raw, AuditConfig) else AuditConfig.model_validate(raw)
    if not acfg.enabled:
        return []
    bundled = resources.files("charter").joinpath("data", "prompts")
    pc = cfg.prompts
    train = [str(bundled.joinpath(f"{kind}.jsonl")) if f.path == "bundled" else f.path
             for kind in ("red_team", "helpful") for f in pc.files(kind)]
    ev = getattr(cfg, "eval", None) or {}
    get = ev.get if isinstance(ev, dict) else (lambda k: getattr(ev, k, None))
    evals = [str(get(k)) for k in ("red_team", "benign", "helpful") if get(k) and get(k) not in train]
    audit = audit_files(train, evals, acfg, field=pc.field, fmt=pc.format)
    write_audit(audit, Path(run_dir) / "audit.json")
    for w in audit["warnings"] if log else []:
        log(f"[audit] {w}")  # type: ignore[misc]
    return list(audit["warnings"])


__all__ = ["AuditConfig", "Item", "audit_files", "audit_run_inputs", "summary", "write_audit"]
