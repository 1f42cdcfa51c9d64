"""``charter audit --tokenizer MODEL``: what a tokenizer's vocabulary says about the corpus it was trained on.

GPT-4o's tokenizer was trained on Chinese text polluted by spam, and its longest Chinese tokens turned out to be
gambling and porn phrases; the same tokens were barely seen in training, so the model's weights for them stayed near
where they started ("glitch" tokens). The audit shows a vocabulary the way that case was found, without a word list:

- **scripts**: the share of the vocabulary per Unicode script, and the longest tokens of each script;
- **long tokens**: tokens long for their script (at least the script's 99th length percentile, and at least 4
  characters for scripts written without spaces, 12 otherwise) or holding three or more words;
- **under-trained tokens** from the model's own weights (Land & Bartolo 2024, "Fishing for Magikarp"; Rumbelow &
  Watkins 2023): with reference tokens known to be unused — single bytes that valid UTF-8 never holds (0xC0, 0xC1,
  0xF5–0xFF), else the unreachable tokens — a row (input embedding, and the unembedding when not tied) whose cosine
  with the reference rows' mean (rows centred, first principal component removed) lies ``norm_z`` robust standard
  deviations above the median; without references, a row ``norm_z`` robust SDs closer to the mean row than usual;
- **unseen tokens**: tokens that never appear when the given reference corpus is tokenized (a script the corpus
  does not write in is not judged);
- **unreachable tokens**: a token whose own text does not encode back to it;
- **flagged (spam-like)**: long or multi-word tokens that are also under-trained (or, with no weights to read,
  unseen in the reference corpus).
"""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from charter.audit.findings import AuditConfig
from charter.audit.text import letter_scripts
from charter.errors import ConfigError

_NOSPACE = {"Han", "Hiragana", "Katakana", "Thai", "Lao", "Khmer", "Myanmar", "Tibetan"}
_EMBED = ("embed_tokens.weight", "wte.weight", "word_embeddings.weight", "embeddings.weight", "tok_embeddings.weight")
_UNEMBED = ("lm_head.weight", "embed_out.weight", "output.weight")


def resolve_tokenizer(spec: str) -> tuple[Path, Path | None]:
    """``(tokenizer.json, model folder or None)`` for ``transformers/embedded``, ``transformers/NAME`` (a folder
    under ``$CHARTER_CACHE/models``), ``transformers//path``, a model folder or a tokenizer.json file."""
    from charter.embedded import cache_root

    rest = spec.split("/", 1)[1] if spec.startswith("transformers/") else spec
    if rest == "embedded":
        from charter.embedded import embedded_model_dir

        folder: Path = embedded_model_dir()
    else:
        p = Path(rest).expanduser()
        cached = cache_root() / "models" / rest
        folder = p if p.exists() else cached if cached.is_dir() else p
    if folder.is_file():
        return folder, None
    tok = folder / "tokenizer.json"
    if not tok.is_file():
        raise ConfigError(f"tokenizer {spec}: no tokenizer.json in {folder}",
                          "pass a model folder saved by transformers (or a tokenizer.json file)")
    return tok, folder


def token_script(text: str) -> str:
    """The script of a token's text: one script, 'Common' (digits, punctuation, spaces), 'Mixed', or 'bytes'
    (a piece of a multi-byte character, which decodes to U+FFFD)."""
    if "\ufffd" in text:
        return "bytes"
    scripts = set(letter_scripts(text)) - {"Common"}
    if not scripts:
        return "Common"
    if len(scripts) == 1:
        return scripts.pop()
    return "Japanese" if scripts <= {"Han", "Hiragana", "Katakana"} else "Mixed"


def _robust_z(values: Any) -> Any:
    import numpy as np

    med = np.median(values)
    mad = np.median(np.abs(values - med)) * 1.4826
    return (values - med) / (mad if mad > 0 else (np.std(values) or 1.0))


def _byte_unicode() -> dict[int, str]:
    """GPT-2's byte → printable character map (how byte-level BPE vocabularies spell single bytes)."""
    keep = [*range(33, 127), *range(161, 173), *range(174, 256)]
    extra = [b for b in range(256) if b not in keep]
    return {**{b: chr(b) for b in keep}, **{b: chr(256 + k) for k, b in enumerate(extra)}}


def never_utf8_tokens(tok: Any) -> set[int]:
    """Tokens for a single byte that valid UTF-8 never holds (0xC0, 0xC1, 0xF5–0xFF), in byte-level BPE spelling
    or SentencePiece byte fallback (``<0xF5>``): no clean training text can have taught the model these."""
    bad = [0xC0, 0xC1, *range(0xF5, 0x100)]
    spellings = {_byte_unicode()[b] for b in bad} | {f"<0x{b:02X}>" for b in bad}
    return {i for s in spellings if (i := tok.token_to_id(s)) is not None}


def _clean(x: Any, mean: Any, v: Any) -> Any:
    """Rows centred on ``mean`` with their component along the unit vector ``v`` removed."""
    c = x - mean
    return c - (c @ v)[:, None] * v[None, :]


def _weights(folder: Path, n: int, reference: set[int]) -> dict[str, Any]:
    """Per weight matrix (embedding, unembedding): each token row's robust z-score of its distance from the mean
    row, and — when there are reference tokens known to be unused — Land & Bartolo's indicator: the cosine of the
    row (centred, first principal component removed) with the mean of the reference rows, as a robust z-score."""
    import numpy as np
    import torch
    from safetensors import safe_open

    files = sorted(folder.glob("*.safetensors"))
    found: dict[str, tuple[Path, str]] = {}
    for f in files:
        with safe_open(str(f), framework="pt") as st:
            for key in st.keys():  # noqa: SIM118 (safe_open is not a dict)
                for role, names in (("embedding", _EMBED), ("unembedding", _UNEMBED)):
                    if role not in found and key.endswith(names):
                        found[role] = (f, key)
    out: dict[str, Any] = {}
    ref = sorted(i for i in reference if i < n)
    for role, (f, key) in found.items():
        with safe_open(str(f), framework="pt") as st:
            w = st.get_tensor(key)
        rows = min(n, w.shape[0])
        w = w[:rows].float()  # 151936 × 1536 is 0.9 GB in float32
        mean = w.mean(dim=0)
        dist = np.empty(rows, dtype=np.float64)
        chunks = [(lo, min(rows, lo + 8192)) for lo in range(0, rows, 8192)]
        for lo, hi in chunks:
            dist[lo:hi] = (w[lo:hi] - mean).norm(dim=1).double().numpy()
        entry: dict[str, Any] = {"key": key, "dist": dist, "dist_z": _robust_z(dist)}
        if len(ref) >= 3:
            gen = torch.Generator().manual_seed(0)
            v = torch.randn(w.shape[1], generator=gen)
            for _ in range(30):  # power iteration for the first principal component of the centred rows
                acc = torch.zeros_like(v)
                for lo, hi in chunks:
                    c = w[lo:hi] - mean
                    acc += c.T @ (c @ v)
                v = acc / acc.norm()

            target = _clean(w[ref], mean, v).mean(dim=0)
            target = target / target.norm()
            cos = np.empty(rows, dtype=np.float64)
            for lo, hi in chunks:
                c = _clean(w[lo:hi], mean, v)
                cos[lo:hi] = ((c @ target) / c.norm(dim=1).clamp_min(1e-12)).double().numpy()
            entry.update(cos=cos, cos_z=_robust_z(cos))
        out[role] = entry
    config = folder / "config.json"
    tied = json.loads(config.read_text()).get("tie_word_embeddings") if config.is_file() else None
    if "unembedding" not in out and "embedding" in out:
        out["embedding"]["tied"] = tied is not False
    return out


def audit_tokenizer(spec: str, cfg: AuditConfig, corpus: list[str] | None = None) -> dict[str, Any]:
    """The audit of one tokenizer (and its model's weights, when the folder has them), as a JSON-ready dict."""
    from tokenizers import Tokenizer

    tok_path, folder = resolve_tokenizer(spec)
    tok = Tokenizer.from_file(str(tok_path))
    n = tok.get_vocab_size(with_added_tokens=True)
    added = {i: t for i, t in tok.get_added_tokens_decoder().items()}
    ids = [i for i in range(n) if tok.id_to_token(i) is not None]
    texts = tok.decode_batch([[i] for i in ids], skip_special_tokens=False)
    special = {i for i, t in added.items() if t.special}
    scripts = {i: ("special" if i in special else token_script(t)) for i, t in zip(ids, texts, strict=True)}
    text_of = dict(zip(ids, texts, strict=True))
    core = {i: t.strip() for i, t in text_of.items()}
    lengths: dict[str, list[int]] = defaultdict(list)
    for i in ids:
        lengths[scripts[i]].append(len(core[i]))
    floor_of = {s: (4 if s in _NOSPACE or s == "Japanese" else 12) for s in lengths}
    long_at = {s: max(floor_of[s], _quantile(v, 0.99)) for s, v in lengths.items()}

    # reachability: does the token's own text encode back to exactly this token?
    probe = [i for i in ids if scripts[i] not in ("special", "bytes") and text_of[i]]
    enc = tok.encode_batch([text_of[i] for i in probe], add_special_tokens=False)
    unreachable = {i for i, e in zip(probe, enc, strict=True) if e.ids != [i]}

    reference = never_utf8_tokens(tok)
    if len(reference) < 3:  # no byte tokens: the unreachable tokens are the next best guess at unused ones
        reference |= unreachable
    weights = _weights(folder, n, reference) if folder is not None else {}
    under: dict[int, dict[str, float]] = defaultdict(dict)
    extremes: dict[str, list[tuple[int, float]]] = {}
    for role, w in weights.items():
        score, sign = (w["cos_z"], 1.0) if "cos_z" in w else (w["dist_z"], -1.0)
        usable = [i for i in ids if i < len(score)]
        extremes[role] = [(i, round(float(score[i]), 2))
                          for i in sorted(usable, key=lambda i: -sign * score[i])[: cfg.max_tokens]]
        for i in usable:
            if sign * score[i] >= cfg.norm_z:
                under[i][role] = round(float(score[i]), 2)

    seen: Counter[int] | None = None
    judged: set[str] = set()
    if corpus:
        seen = Counter()
        for e in tok.encode_batch(corpus, add_special_tokens=False):
            seen.update(e.ids)
        corpus_letters: Counter[str] = Counter()
        for t in corpus:
            corpus_letters.update(letter_scripts(t))
        judged = {s for s, c in corpus_letters.items() if c >= 1000} | {"Common"}

    def signals(i: int) -> dict[str, Any]:
        s: dict[str, Any] = {"id": i, "text": text_of[i], "script": scripts[i], "chars": len(core[i])}
        words = len(core[i].split())
        if words > 1:
            s["words"] = words
        if i in under:
            s["under_trained"] = under[i]
        if seen is not None and scripts[i] in judged:
            s["corpus_count"] = seen[i]
        if i in unreachable:
            s["unreachable"] = True
        return s

    def is_long(i: int) -> bool:
        sc = scripts[i]
        if sc in ("special", "bytes", "Common"):
            return False
        return len(core[i]) >= long_at[sc] or (sc not in _NOSPACE and len(core[i].split()) >= 3)

    long_ids = [i for i in ids if is_long(i)]
    if weights:  # the weights say what training saw; a reference corpus only adds a fact to each token
        flagged = [i for i in long_ids if i in under]
    else:
        flagged = [i for i in long_ids if seen is not None and scripts[i] in judged and seen[i] == 0]
    long_set, flagged_set = set(long_ids), set(flagged)
    per_script: dict[str, Any] = {}
    by_script: dict[str, list[int]] = defaultdict(list)
    for i in ids:
        by_script[scripts[i]].append(i)
    for sc, members in sorted(by_script.items(), key=lambda kv: -len(kv[1])):
        longest = sorted(members, key=lambda i: (-len(core[i]), i))[: cfg.max_tokens]
        entry: dict[str, Any] = {"tokens": len(members), "share": round(len(members) / len(ids), 4),
                                 "long_at_chars": long_at[sc] if sc not in ("special", "bytes", "Common") else None,
                                 "long": sum(1 for i in members if i in long_set),
                                 "flagged": sum(1 for i in members if i in flagged_set),
                                 "under_trained": sum(1 for i in members if i in under),
                                 "longest": [signals(i) for i in longest]}
        if seen is not None and sc in judged:
            entry["unseen"] = sum(1 for i in members if seen[i] == 0)
        per_script[sc] = entry
    weights_info: dict[str, Any] = {role: {"tensor": w["key"], "median_distance": round(float(_median(w["dist"])), 4),
                           "signal": "indicator_z" if "cos_z" in w else "distance_z",
                           **({"tied": w["tied"]} if "tied" in w else {})} for role, w in weights.items()}
    for role, top in extremes.items():
        weights_info[role]["most_extreme"] = [{"id": i, "text": text_of[i], "z": z} for i, z in top]
    if weights_info:
        weights_info["reference_tokens"] = len(reference)
    return {
        "spec": spec, "tokenizer": str(tok_path), "vocab": len(ids), "added_tokens": len(added),
        "special_tokens": sorted(t.content for i, t in added.items() if t.special),
        "weights": weights_info or None,
        "corpus": {"texts": len(corpus), "scripts_judged": sorted(judged)} if corpus else None,
        "scripts": per_script,
        "long": len(long_ids), "unreachable": len(unreachable), "under_trained": len(under),
        "flagged": [signals(i) for i in _per_script(flagged, scripts, core, 30, under)],
        "flagged_count": len(flagged),
        "under_trained_tokens": [signals(i) for i in sorted(under, key=lambda i: -max(map(abs, under[i].values())))
                                 ][:50],
        "unreachable_tokens": [signals(i) for i in sorted(unreachable)][:30],
    }


def _per_script(ids: list[int], scripts: dict[int, str], core: dict[int, str], k: int,
                under: dict[int, dict[str, float]]) -> list[int]:
    """The ``k`` longest of ``ids`` in each script (most under-trained first among equals), script by script."""
    by: dict[str, list[int]] = defaultdict(list)
    for i in sorted(ids, key=lambda i: (-len(core[i]), -max(under.get(i, {0: 0.0}).values()), i)):
        by[scripts[i]].append(i)
    return [i for members in by.values() for i in members[:k]]


def _quantile(values: list[int], q: float) -> int:
    s = sorted(values)
    return s[min(len(s) - 1, math.ceil(q * len(s)) - 1)] if s else 0


def _median(values: Any) -> float:
    import numpy as np

    return float(np.median(values))
