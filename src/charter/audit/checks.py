"""The text checks: each takes the records of a file and returns a :class:`Finding` with a count, every affected
line and a few examples. A check that finds nothing still returns its finding (count 0), so a report shows what ran.

Nothing here is a list of bad words: duplicates are shingle overlap, boilerplate is a prefix/suffix that recurs on
many distinct paragraphs (found by sorting them and reading their longest common prefixes), spam is link density,
repeated n-grams, character runs and shouting, and mojibake is text that becomes valid UTF-8 when re-encoded.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from typing import Any

from charter.audit.findings import AuditConfig, Example, Finding
from charter.audit.load import Item
from charter.audit.text import (
    _TOKEN,
    groups,
    letter_scripts,
    near_duplicate_pairs,
    normalize,
    paragraphs,
    script_of,
    shingles,
    snippet,
    tokens,
)


def _finding(check: str, title: str, hits: dict[int, Example], cfg: AuditConfig, **detail: Any) -> Finding:
    """A finding from ``{line: example}`` (one example per affected record)."""
    lines = sorted(hits)
    return Finding(check=check, title=title, count=len(lines), lines=lines,
                   examples=[hits[n] for n in lines[: cfg.max_examples]], detail=detail)


# --- duplicates ----------------------------------------------------------------------------------------------------

def exact_duplicates(items: list[Item], cfg: AuditConfig) -> Finding:
    """Records whose whole text (normalised) equals an earlier record's; also counts repeated prompts."""
    first: dict[str, Item] = {}
    hits: dict[int, Example] = {}
    for it in items:
        key = normalize(it.full_text())
        if key in first:
            hits[it.line] = Example(file=it.file, line=it.line, text=snippet(it.full_text()),
                                    detail={"same_as": first[key].line})
        else:
            first[key] = it
    prompts = Counter(normalize(it.prompt_text()) for it in items if it.answers)
    repeated = sum(n - 1 for n in prompts.values() if n > 1)
    return _finding("exact_duplicates", f"{len(hits)} records repeat an earlier record exactly", hits, cfg,
                    groups=len({e.detail["same_as"] for e in hits.values()}), repeated_prompts=repeated,
                    same_as={str(n): e.detail["same_as"] for n, e in hits.items()})


def near_duplicates(items: list[Item], cfg: AuditConfig) -> Finding:
    """Records at least ``near_threshold`` similar (exact Jaccard of shingles, MinHash LSH candidates) to another
    record, exact duplicates left to :func:`exact_duplicates`."""
    seen: set[str] = set()
    keep: list[Item] = []
    for it in items:
        key = normalize(it.full_text())
        if key not in seen:
            seen.add(key)
            keep.append(it)
    sets = [shingles(it.full_text(), cfg.shingle) for it in keep]
    pairs = near_duplicate_pairs(sets, cfg.near_threshold)
    best: dict[int, float] = defaultdict(float)
    for _i, j, sim in pairs:
        best[j] = max(best[j], sim)
    hits: dict[int, Example] = {}
    for g in groups(len(keep), ((i, j) for i, j, _ in pairs)):
        head = keep[g[0]]
        for k in g[1:]:
            it = keep[k]
            hits[it.line] = Example(file=it.file, line=it.line, text=snippet(it.full_text()),
                                    detail={"like": head.line, "jaccard": round(best.get(k, 0.0), 3),
                                            "first": snippet(head.full_text(), 100)})
    return _finding("near_duplicates", f"{len(hits)} records are near-duplicates (Jaccard ≥ {cfg.near_threshold}) "
                    "of an earlier record", hits, cfg, method="MinHash (128 perms, 32 bands; charter.audit.text) + "
                    f"exact Jaccard of {cfg.shingle}-token shingles", threshold=cfg.near_threshold,
                    same_as={str(n): e.detail["like"] for n, e in hits.items()})


# --- boilerplate ---------------------------------------------------------------------------------------------------

def _lcp(a: str, b: str, cap: int = 400) -> int:
    n = min(len(a), len(b), cap)
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def common_prefixes(units: list[str], min_count: int, min_chars: int) -> list[tuple[str, int]]:
    """Prefixes of at least ``min_chars`` characters shared by at least ``min_count`` of ``units``: the most
    general such prefix of each family (the LCP intervals of the sorted units whose parent does not qualify)."""
    s = sorted(units)
    n = len(s)
    lcp = [0] + [_lcp(s[i - 1], s[i]) for i in range(1, n)]
    intervals: list[tuple[int, int, int]] = []
    stack: list[list[int]] = [[0, 0]]
    for i in range(1, n):
        lb = i - 1
        while lcp[i] < stack[-1][0]:
            depth, lb = stack.pop()
            intervals.append((depth, lb, i - 1))
        if lcp[i] > stack[-1][0]:
            stack.append([lcp[i], lb])
    while stack:
        depth, lb = stack.pop()
        if depth > 0:
            intervals.append((depth, lb, n - 1))
    picked: list[tuple[int, int, int]] = []
    for depth, lb, rb in sorted(intervals):
        if depth >= min_chars and rb - lb + 1 >= min_count and \
                not any(plb <= lb and rb <= prb for _, plb, prb in picked):
            picked.append((depth, lb, rb))
    return [(s[lb][:depth], rb - lb + 1) for depth, lb, rb in picked]


def _trim_prefix(text: str) -> str:
    """Cut a shared prefix back to a word boundary (it may end inside the first differing word)."""
    if text and text[-1].isalnum() and script_of(text[-1]) not in ("Han", "Hiragana", "Katakana", "Thai"):
        cut = max(text.rfind(" "), text.rfind("\t"))
        text = text[:cut] if cut > 0 else ""
    return text.rstrip()


_STOPS = ".。!！?？;；,，:： \t"


_ENDS = "。！？.!?"


def _cut_content(text: str, carriers: list[str], min_chars: int, suffix: bool) -> str:
    """A shared affix can reach into the paragraphs' own text when they happen to end (or begin) alike:
    '…了。【watermark】', 'BREAKING: The …'. Cut it at a sentence end (or, for a prefix, a colon) when the part
    beyond the cut is ordinary text: it also occurs elsewhere in most of the paragraphs that carry the affix."""
    cuts = []
    for p in range(1, len(text)):
        prev, nxt = text[p - 1], text[p]
        if (suffix and prev in _ENDS and not nxt.isalnum()) or \
                (not suffix and prev in _ENDS + ":：" and (nxt == " " or prev in "。：")):
            cuts.append(p)
    for p in (cuts if suffix else reversed(cuts)):
        part = text[:p] if suffix else text[p:].strip()
        keep = text[p:].lstrip(_STOPS) if suffix else text[:p].rstrip()
        if len(keep) < min_chars or not part:
            continue
        rest = [u[: len(u) - len(text)] if suffix else u[len(text):] for u in carriers]
        if sum(1 for r in rest if part in r) >= 0.5 * len(carriers):
            return _cut_content(keep, carriers, min_chars, suffix)
    return text


def find_affixes(units: list[str], cfg: AuditConfig) -> list[dict[str, Any]]:
    """Prefixes and suffixes that recur on at least ``boilerplate_share`` of the distinct paragraphs."""
    distinct = sorted(set(units))
    need = max(cfg.min_count, int(cfg.boilerplate_share * len(distinct) + 0.999999))
    out = []
    for position in ("prefix", "suffix"):
        rev = position == "suffix"
        found = common_prefixes([u[::-1] if rev else u for u in distinct], need, cfg.boilerplate_min_chars)
        for raw, _ in found:
            # a suffix may start with the paragraphs' own full stop: leave it to them
            text = _trim_prefix(raw)[::-1].lstrip(_STOPS) if rev else _trim_prefix(raw)
            carriers = [u for u in distinct if (u.endswith(text) if rev else u.startswith(text))]
            text = _cut_content(text, carriers, cfg.boilerplate_min_chars, rev)
            if len(text) < cfg.boilerplate_min_chars:
                continue
            n = sum(1 for u in distinct if (u.endswith(text) if rev else u.startswith(text)) and u != text)
            if n >= need:
                out.append({"position": position, "text": text, "paragraphs": n,
                            "share": round(n / len(distinct), 3)})
    return out


def record_units(it: Item) -> list[str]:
    """The distinct paragraphs of every text of a record (what boilerplate detection counts)."""
    return list(dict.fromkeys(p for _, text in it.texts() for p in paragraphs(text)))


def boilerplate(items: list[Item], cfg: AuditConfig) -> Finding:
    """A prefix or suffix repeated on most distinct paragraphs (a crawler watermark, a signature), found without
    being told what it is; and whole paragraphs repeated across many records (reported, never stripped)."""
    per_record = [record_units(it) for it in items]
    units = [u for us in per_record for u in us]
    affixes = find_affixes(units, cfg)
    hits: dict[int, Example] = {}
    for it, us in zip(items, per_record, strict=True):
        for a in affixes:
            match = (lambda u, t=a["text"]: u.endswith(t)) if a["position"] == "suffix" else \
                (lambda u, t=a["text"]: u.startswith(t))
            got = [u for u in us if match(u) and u != a["text"]]
            if got and it.line not in hits:
                hits[it.line] = Example(file=it.file, line=it.line, text=snippet(got[0]),
                                        detail={"position": a["position"], "affix": a["text"],
                                                "paragraphs": len(got)})
    in_records = Counter(u for us in per_record for u in set(us) if len(u) >= cfg.boilerplate_min_chars)
    need = max(cfg.min_count, int(cfg.boilerplate_share * len(items) + 0.999999))
    repeated = [{"text": snippet(u, 200), "records": n} for u, n in in_records.most_common(20) if n >= need]
    title = (f"{len(affixes)} boilerplate prefix/suffix pattern(s) on {len(hits)} records" if affixes
             else "no prefix/suffix recurs on most paragraphs")
    return _finding("boilerplate", title, hits, cfg, affixes=affixes, repeated_paragraphs=repeated,
                    distinct_paragraphs=len(set(units)))


# --- spam / SEO ----------------------------------------------------------------------------------------------------

_URL = re.compile(r"https?://\S+|www\.[\w-]+(?:\.[\w-]+)+\S*|\b[\w-]+(?:\.[\w-]+)*\.(?:com|net|org|cn|info|biz|xyz|"
                  r"top|io|co|ru|cc|tk|me|vip|app|site|online)\b(?:/\S*)?", re.I)
_CONTACT = re.compile(r"[\w.+-]+@[\w-]+\.[\w.-]+|(?<![\w.])\+?\d[\d\s()-]{8,}\d(?![\w.])")
_RUN = re.compile(r"([^\w\s])\1{5,}|(\w)\2{7,}")
_HASHTAG = re.compile(r"(?<!\w)#[^\s#]{2,}")


def spam_signals(text: str) -> dict[str, Any]:
    """Statistical spam/SEO signals of one text: links, contact details, a repeated n-gram that fills much of it
    (keyword stuffing), long character runs, shouting and hashtags. Empty when it looks ordinary."""
    out: dict[str, Any] = {}
    links = _URL.findall(text)
    toks = tokens(text)
    if len(links) >= 3 or (len(links) >= 2 and len(toks) < 60):
        out["links"] = len(links)
    contacts = _CONTACT.findall(text)
    if contacts:
        out["contact"] = len(contacts)
    for n in (2, 3, 4):
        grams = Counter(tuple(toks[i:i + n]) for i in range(len(toks) - n + 1))
        if grams:
            gram, c = grams.most_common(1)[0]
            words = [t for t in gram if t.isalnum()]
            if c >= 4 and words and c * n >= 0.25 * len(toks) and sum(map(len, gram)) >= 4:
                out["stuffing"] = {"ngram": " ".join(gram), "times": c}
                break
    if _RUN.search(text):
        out["char_run"] = _RUN.search(text).group(0)[:20]  # type: ignore[union-attr]
    letters = [c for c in text if c.isalpha() and c.lower() != c.upper()]
    if len(letters) >= 30 and sum(c.isupper() for c in letters) >= 0.7 * len(letters):
        out["shouting"] = True
    if len(_HASHTAG.findall(text)) >= 4:
        out["hashtags"] = len(_HASHTAG.findall(text))
    strong = {"links", "stuffing"} & set(out)
    return out if strong or len(out) >= 2 else {}


def spam(items: list[Item], cfg: AuditConfig) -> Finding:
    """Records with a text that shows strong spam/SEO signals (or two weak ones)."""
    hits: dict[int, Example] = {}
    kinds: Counter[str] = Counter()
    for it in items:
        for where, text in it.texts():
            sig = spam_signals(text)
            if sig:
                kinds.update(list(sig))
                hits.setdefault(it.line, Example(file=it.file, line=it.line, text=snippet(text),
                                                 detail={"where": where, **sig}))
    return _finding("spam", f"{len(hits)} records look like spam/SEO", hits, cfg, signals=dict(kinds))


# --- encoding damage -----------------------------------------------------------------------------------------------

_LATIN1_RUN = re.compile(r"[\u00a0-\u00ff\u0152\u0153\u0160\u0161\u0178\u017d\u017e\u0192\u02c6\u02dc"
                         r"\u2013\u2014\u2018-\u201e\u2020-\u2022\u2026\u2030\u2039\u203a\u20ac\u2122\x80-\x9f]{2,}")
_HAN_RUN = re.compile(r"[\u4e00-\u9fff]{3,}")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\x80-\x9f]")
_INVISIBLE = re.compile(r"[\u00ad\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff]")


def _cp1252_bytes(s: str) -> bytes | None:
    out = bytearray()
    for ch in s:
        try:
            out += ch.encode("cp1252")
        except UnicodeEncodeError:
            if ord(ch) > 255:
                return None
            out.append(ord(ch))
    return bytes(out)


def mojibake(text: str) -> list[tuple[str, str]]:
    """``(damaged, repaired)`` runs: UTF-8 that was decoded as cp1252/Latin-1 ('CafÃ©') or as GBK ('锟斤拷'),
    recognised because re-encoding the run gives valid UTF-8 with non-ASCII characters."""
    out = []
    for m in _LATIN1_RUN.finditer(text):
        raw = _cp1252_bytes(m.group(0))
        if raw is None:
            continue
        for start in range(len(raw)):  # the run may begin with a genuine Latin-1 character
            try:
                fixed = raw[start:].decode("utf-8")
            except UnicodeDecodeError:
                continue
            if any(ord(c) > 127 for c in fixed):
                out.append((m.group(0), fixed))
            break
    for m in _HAN_RUN.finditer(text):
        try:
            fixed = m.group(0).encode("gbk").decode("utf-8")
        except (UnicodeEncodeError, UnicodeDecodeError):
            continue
        if any(ord(c) > 127 for c in fixed):
            out.append((m.group(0), fixed))
    return out


def encoding(items: list[Item], cfg: AuditConfig) -> Finding:
    """Encoding damage: U+FFFD replacement characters, mojibake, control characters and invisible/bidi marks."""
    hits: dict[int, Example] = {}
    kinds: Counter[str] = Counter()
    for it in items:
        for where, text in it.texts():
            sig: dict[str, Any] = {}
            if "\ufffd" in text:
                sig["replacement_chars"] = text.count("\ufffd")
            moji = mojibake(text)
            if moji:
                sig["mojibake"] = [f"{a} → {b}" for a, b in moji[:3]]
            if _CONTROL.search(text):
                sig["control_chars"] = [f"U+{ord(c):04X}" for c in sorted(set(_CONTROL.findall(text)))][:5]
            if _INVISIBLE.search(text):
                sig["invisible_chars"] = [f"U+{ord(c):04X}" for c in sorted(set(_INVISIBLE.findall(text)))][:5]
            if sig:
                kinds.update(list(sig))
                hits.setdefault(it.line, Example(file=it.file, line=it.line, text=snippet(text),
                                                 detail={"where": where, **sig}))
    return _finding("encoding", f"{len(hits)} records show encoding damage", hits, cfg, signals=dict(kinds))


# --- scripts -------------------------------------------------------------------------------------------------------

def mixed_words(text: str) -> list[tuple[str, list[str]]]:
    """Words whose letters come from more than one script ('pаypal' with a Cyrillic 'а'); scripts written without
    spaces are tokens of their own, so '用Python' is not a mixed word."""
    out = []
    for w in _TOKEN.findall(text):
        if len(w) < 2:
            continue
        scripts = sorted({script_of(c) for c in w if c.isalpha()} - {"Common"})
        if len(scripts) > 1:
            out.append((w, scripts))
    return out


def mixed_script_words(items: list[Item], cfg: AuditConfig) -> Finding:
    """Records with a word that mixes scripts: homoglyph spoofing or encoding damage."""
    hits: dict[int, Example] = {}
    pairs: Counter[str] = Counter()
    for it in items:
        for where, text in it.texts():
            words = mixed_words(text)
            if words:
                pairs.update("+".join(s) for _, s in words)
                hits.setdefault(it.line, Example(file=it.file, line=it.line, text=snippet(text),
                                                 detail={"where": where,
                                                         "words": [f"{w} ({'+'.join(s)})" for w, s in words[:5]]}))
    return _finding("mixed_script_words", f"{len(hits)} records have words mixing scripts", hits, cfg,
                    script_pairs=dict(pairs))


def record_scripts(it: Item) -> dict[str, int]:
    """Letters per script over all of a record's text."""
    total: Counter[str] = Counter()
    for _, text in it.texts():
        total.update(letter_scripts(text))
    return dict(total)


def script_mix(items: list[Item], cfg: AuditConfig) -> tuple[Finding, dict[str, int]]:
    """Which script each record is written in (Python has no offline language identifier, so this is the script,
    not the language), and the records where a second script holds at least a fifth of the letters."""
    dominant: Counter[str] = Counter()
    hits: dict[int, Example] = {}
    for it in items:
        counts = record_scripts(it)
        if not counts:
            dominant["none"] += 1
            continue
        ranked = sorted(counts.items(), key=lambda kv: -kv[1])
        dominant[ranked[0][0]] += 1
        total = sum(counts.values())
        if len(ranked) > 1 and ranked[1][1] >= max(10, 0.2 * total):
            shares = {k: round(v / total, 2) for k, v in ranked[:3]}
            hits[it.line] = Example(file=it.file, line=it.line, text=snippet(it.full_text()), detail=shares)
    f = _finding("script_mix", f"{len(hits)} records mix scripts (second script ≥ 20% of letters)", hits, cfg,
                 dominant=dict(dominant.most_common()))
    return f, dict(dominant.most_common())


# --- prompt hygiene ------------------------------------------------------------------------------------------------

_TEMPLATE = re.compile(r"<\|[A-Za-z0-9_:.\-]{1,40}\|>|\[/?INST\]|<</?SYS>>|</s>|<s>|<(?:bos|eos|pad|unk)>"
                       r"|(?m:^[ \t]*(?:###[ \t]*)?(?:Instruction|Response|Human|Assistant|User|System)[ \t]*:)")
_LABEL = re.compile(r"(?im)^[ \t]*(?:the[ \t]+)?(?:correct[ \t]+|final[ \t]+|reference[ \t]+|expected[ \t]+)?"
                    r"(?:answer|solution|ground[ -]truth|output|label)[ \t]*(?:is)?[ \t]*[:：]"
                    r"|(?:参考|正确|标准)?答案[ \t]*[:：]|(?:正确|标准|参考)答案")


def template_tokens(items: list[Item], cfg: AuditConfig, extra: Iterable[str] = ()) -> Finding:
    """Chat-template control tokens or turn markers inside a turn's text (``<|im_start|>``, ``[INST]``, a line
    ``Assistant:``): an unparsed conversation, or a prompt that injects turns. ``extra``: a tokenizer's own
    special tokens, matched literally."""
    literal = [t for t in extra if t and len(t) >= 3]
    pattern = _TEMPLATE if not literal else re.compile(
        _TEMPLATE.pattern + "|" + "|".join(map(re.escape, sorted(literal, key=len, reverse=True))))
    hits: dict[int, Example] = {}
    found: Counter[str] = Counter()
    for it in items:
        for where, text in it.texts():
            got = [m.group(0).strip() for m in pattern.finditer(text)]
            if got:
                found.update(got)
                hits.setdefault(it.line, Example(file=it.file, line=it.line, text=snippet(text),
                                                 detail={"where": where, "tokens": sorted(set(got))[:5]}))
    return _finding("template_tokens", f"{len(hits)} records contain chat-template tokens or turn markers", hits,
                    cfg, tokens=dict(found.most_common(20)))


def answer_leaks(items: list[Item], cfg: AuditConfig) -> Finding:
    """Prompts that give away an answer: a line like 'Answer:' / '答案：' in a user turn, or (SFT/preference) the
    answer to learn already inside the prompt (≥ 80% of its shingles, or verbatim)."""
    hits: dict[int, Example] = {}
    kinds: Counter[str] = Counter()
    for it in items:
        prompt = it.prompt_text()
        m = _LABEL.search(prompt)
        if m:
            kinds["label_in_prompt"] += 1
            hits[it.line] = Example(file=it.file, line=it.line, text=snippet(prompt),
                                    detail={"kind": "label_in_prompt", "match": m.group(0).strip()})
            continue
        psh = shingles(prompt, cfg.shingle)
        for name, answer in it.answers.items():
            ash = shingles(answer, cfg.shingle)
            verbatim = len(normalize(answer)) >= 30 and normalize(answer) in normalize(prompt)
            contained = len(ash) >= 8 and len(ash & psh) >= 0.8 * len(ash)
            if verbatim or contained:
                kinds["answer_in_prompt"] += 1
                hits[it.line] = Example(file=it.file, line=it.line, text=snippet(answer),
                                        detail={"kind": "answer_in_prompt", "answer": name,
                                                "contained": round(len(ash & psh) / max(1, len(ash)), 2)})
                break
    return _finding("answer_leaks", f"{len(hits)} prompts leak an answer", hits, cfg, kinds=dict(kinds))


# --- contamination -------------------------------------------------------------------------------------------------

def contamination(train: list[Item], evals: list[Item], cfg: AuditConfig) -> Finding:
    """Evaluation records whose prompt a training file already holds: the same prompt (normalised), a
    near-duplicate prompt (Jaccard ≥ ``near_threshold``), or a shared ``ngram``-token n-gram anywhere in a training
    record (prompt or answers); a prompt shorter than the n-gram counts when it appears whole in a training text."""
    n = cfg.ngram
    exact: dict[str, int] = {}
    for it in train:
        exact.setdefault(normalize(it.prompt_text()), it.line)
    train_toks = [tokens(it.full_text()) for it in train]
    grams: dict[int, int] = {}
    for it, toks in zip(train, train_toks, strict=True):
        for i in range(len(toks) - n + 1):
            grams.setdefault(hash(tuple(toks[i:i + n])), it.line)
    joined = [" " + " ".join(t) + " " for t in train_toks]
    tsets = [shingles(it.prompt_text(), cfg.shingle) for it in train]
    esets = [shingles(it.prompt_text(), cfg.shingle) for it in evals]
    near = near_duplicate_pairs(tsets + esets, cfg.near_threshold, min_shingles=3)
    near_of: dict[int, tuple[int, float]] = {}
    for i, j, sim in near:
        if i < len(train) <= j and sim > near_of.get(j - len(train), (0, 0.0))[1]:
            near_of[j - len(train)] = (train[i].line, sim)
    hits: dict[int, Example] = {}
    kinds: Counter[str] = Counter()
    for k, it in enumerate(evals):
        detail: dict[str, Any] = {}
        key = normalize(it.prompt_text())
        if key in exact:
            detail = {"kind": "exact", "train_line": exact[key]}
        elif k in near_of:
            detail = {"kind": "near", "train_line": near_of[k][0], "jaccard": round(near_of[k][1], 3)}
        else:
            toks = tokens(it.prompt_text())
            if len(toks) >= n:
                found = [grams[h] for h in (hash(tuple(toks[i:i + n])) for i in range(len(toks) - n + 1))
                         if h in grams]
                if found:
                    detail = {"kind": f"{n}-gram", "train_line": found[0],
                              "shared": round(len(found) / (len(toks) - n + 1), 3)}
            elif len(toks) >= 4:
                needle = " " + " ".join(toks) + " "
                line = next((t.line for t, hay in zip(train, joined, strict=True) if needle in hay), None)
                if line is not None:
                    detail = {"kind": "contained", "train_line": line}
        if detail:
            kinds[detail["kind"]] += 1
            hits[it.line] = Example(file=it.file, line=it.line, text=snippet(it.prompt_text()), detail=detail)
    title = f"{len(hits)} of {len(evals)} evaluation prompts overlap the training file"
    return _finding("contamination", title, hits, cfg, kinds=dict(kinds), train_file=train[0].file if train else "",
                    eval_file=evals[0].file if evals else "", eval_records=len(evals))


TEXT_CHECKS: tuple[Callable[[list[Item], AuditConfig], Finding], ...] = (
    exact_duplicates, near_duplicates, boilerplate, spam, encoding, mixed_script_words, answer_leaks)
"""The per-file checks in report order (script_mix and template_tokens are called separately)."""
