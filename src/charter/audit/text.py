"""Text primitives of the audit: normalisation, the Unicode script of a character, word/character tokens that work
for scripts written without spaces (Chinese, Japanese, Thai), shingles, and an exact MinHash + LSH.

MinHash is written here (about 40 lines, numpy) rather than taken from ``datasketch``: the signatures are exact
integer arithmetic (32-bit shingle hashes, a·x+b mod the Mersenne prime 2^61−1, no overflow), deterministic across
machines, and every candidate pair the LSH bands propose is then checked with the *exact* Jaccard similarity of the
two shingle sets, so a reported similarity is never an estimate.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections import defaultdict
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import Any

# Scripts written without spaces between words (Han, kana, Thai, Lao, Myanmar, Khmer, Tibetan): a character of
# one of them is a token of its own.
_NOSPACE = ("\u2e80-\u2fdf\u3005\u3007\u3021-\u3029\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
            "\U00020000-\U0003134f\u0e00-\u0eff\u1000-\u109f\u1780-\u17ff\u0f00-\u0fff")
_TOKEN = re.compile(f"[{_NOSPACE}]|(?:(?![{_NOSPACE}])[^\\W_])+(?:['’](?:(?![{_NOSPACE}])[^\\W_])+)*|\\S")
_HAN_WORDS = {"CJK", "KANGXI", "IDEOGRAPHIC"}
_SCRIPTS = {
    "LATIN", "GREEK", "CYRILLIC", "ARMENIAN", "HEBREW", "ARABIC", "SYRIAC", "THAANA", "NKO", "DEVANAGARI",
    "BENGALI", "GURMUKHI", "GUJARATI", "ORIYA", "TAMIL", "TELUGU", "KANNADA", "MALAYALAM", "SINHALA", "THAI", "LAO",
    "TIBETAN", "MYANMAR", "GEORGIAN", "HANGUL", "ETHIOPIC", "CHEROKEE", "KHMER", "MONGOLIAN", "HIRAGANA",
    "KATAKANA", "KATAKANA-HIRAGANA", "BOPOMOFO", "YI", "COPTIC", "RUNIC", "OGHAM", "TIFINAGH", "JAVANESE",
    "BALINESE", "SUNDANESE",
}


def normalize(text: str) -> str:
    """NFKC, case-folded, whitespace collapsed: the form duplicates are compared in."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


@lru_cache(maxsize=65536)
def script_of(ch: str) -> str:
    """The Unicode script of a letter ('Latin', 'Han', 'Cyrillic', …); 'Common' for digits, punctuation, spaces.

    Read from the character's Unicode name (Python has no script property): the first word of the name that is a
    script ("FULLWIDTH LATIN CAPITAL LETTER A" → Latin, "CJK UNIFIED IDEOGRAPH-4E2D" → Han).
    """
    if not ch.isalpha():
        return "Common"
    try:
        words = unicodedata.name(ch).split()
    except ValueError:
        return "Other"
    for w in words:
        if w in _HAN_WORDS:
            return "Han"
        if w in _SCRIPTS:
            return "Katakana" if w == "KATAKANA-HIRAGANA" else w.capitalize()
    return "Other"


def letter_scripts(text: str) -> dict[str, int]:
    """How many letters of each script ``text`` holds (digits, punctuation and spaces are not counted)."""
    out: dict[str, int] = defaultdict(int)
    for ch in text:
        if ch.isalpha():
            out[script_of(ch)] += 1
    return dict(out)


def tokens(text: str) -> list[str]:
    """Normalised word tokens; a character of a script written without spaces is a token of its own."""
    return _TOKEN.findall(normalize(text))


def shingles(text: str, k: int = 3) -> set[str]:
    """The set of k-token shingles of ``text`` (the whole text when it has fewer than k tokens)."""
    toks = tokens(text)
    if len(toks) < k:
        return {" ".join(toks)} if toks else set()
    return {" ".join(toks[i:i + k]) for i in range(len(toks) - k + 1)}


def jaccard(a: set[str], b: set[str]) -> float:
    """Exact Jaccard similarity of two sets (0 when both are empty)."""
    return len(a & b) / len(a | b) if a or b else 0.0


_PRIME = (1 << 61) - 1


class MinHasher:
    """MinHash signatures of shingle sets with ``num_perm`` hash functions, and LSH candidate pairs."""

    def __init__(self, num_perm: int = 128, bands: int = 32, seed: int = 1) -> None:
        import numpy as np

        if num_perm % bands:
            raise ValueError("num_perm must be a multiple of bands")
        rng = np.random.default_rng(seed)
        self.a = rng.integers(1, 1 << 32, size=num_perm, dtype=np.uint64)
        self.b = rng.integers(0, 1 << 32, size=num_perm, dtype=np.uint64)
        self.num_perm, self.bands, self.rows = num_perm, bands, num_perm // bands

    def signature(self, items: Iterable[str]) -> Any:
        """The MinHash signature (uint64 array) of a set of strings."""
        import numpy as np

        hashes = np.array([int.from_bytes(hashlib.blake2b(s.encode(), digest_size=4).digest(), "big")
                           for s in items] or [0], dtype=np.uint64)
        # a, b, x < 2^32, so a*x + b < 2^64: exact in uint64
        return ((hashes[:, None] * self.a[None, :] + self.b[None, :]) % np.uint64(_PRIME)).min(axis=0)

    def candidate_pairs(self, signatures: Sequence[Any]) -> set[tuple[int, int]]:
        """Index pairs (i < j) whose signatures agree on all rows of at least one band."""
        pairs: set[tuple[int, int]] = set()
        for band in range(self.bands):
            buckets: dict[bytes, list[int]] = defaultdict(list)
            lo, hi = band * self.rows, (band + 1) * self.rows
            for i, sig in enumerate(signatures):
                buckets[sig[lo:hi].tobytes()].append(i)
            for members in buckets.values():
                if len(members) > 1:
                    pairs.update((members[x], members[y]) for x in range(len(members))
                                 for y in range(x + 1, len(members)))
        return pairs


def near_duplicate_pairs(sets: Sequence[set[str]], threshold: float, min_shingles: int = 4,
                         hasher: MinHasher | None = None) -> list[tuple[int, int, float]]:
    """Pairs (i, j, exact Jaccard) of sets at least ``threshold`` similar: LSH proposes, exact Jaccard decides.

    Sets with fewer than ``min_shingles`` shingles are left out (very short texts are compared exactly instead).
    """
    h = hasher or MinHasher()
    keep = [i for i, s in enumerate(sets) if len(s) >= min_shingles]
    sigs = [h.signature(sets[i]) for i in keep]
    out = []
    for x, y in sorted(h.candidate_pairs(sigs)):
        i, j = keep[x], keep[y]
        sim = jaccard(sets[i], sets[j])
        if sim >= threshold:
            out.append((i, j, sim))
    return out


def groups(n: int, pairs: Iterable[tuple[int, int]]) -> list[list[int]]:
    """Connected groups (size > 1, each sorted, in order of first member) of ``n`` items joined by ``pairs``."""
    parent = list(range(n))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for i, j in pairs:
        ri, rj = find(i), find(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    members: dict[int, list[int]] = defaultdict(list)
    for i in range(n):
        members[find(i)].append(i)
    return sorted((m for m in members.values() if len(m) > 1), key=lambda m: m[0])


def snippet(text: str, n: int = 160) -> str:
    """``text`` on one line, cut to ``n`` characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= n else flat[: n - 1] + "…"


def paragraphs(text: str) -> list[str]:
    """The paragraphs of a text (split at blank lines), stripped, empty ones dropped."""
    return [p.strip() for p in re.split(r"\n[ \t]*\n", text) if p.strip()]
