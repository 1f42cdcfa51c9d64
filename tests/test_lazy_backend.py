"""A fully cached re-run never loads model weights; the lazy identity equals the loaded backend's."""

from __future__ import annotations

from pathlib import Path

from charter.backends import BackendOptions, LazyBackend, load_backend
from charter.backends.base import GenParams, GenRequest
from charter.store import CachedBackend, CallCache


def test_cached_rerun_does_not_load_the_model(tmp_path: Path, tiny_model_dir: Path) -> None:
    spec = f"transformers/{tiny_model_dir}"
    options = BackendOptions(dtype="float32")
    requests = [GenRequest.of([{"role": "user", "content": f"hello {i}"}], GenParams(max_new_tokens=3))
                for i in range(3)]
    first = load_backend(spec, options, lazy=True)
    assert isinstance(first, LazyBackend) and first._inner is None
    out1 = CachedBackend(first, CallCache(tmp_path / "c.sqlite")).generate(requests)
    assert first._inner is not None and first.model_id == first.inner.model_id

    again = load_backend(spec, options, lazy=True)
    out2 = CachedBackend(again, CallCache(tmp_path / "c.sqlite")).generate(requests)
    assert again._inner is None, "a fully cached call loaded the weights"
    assert out1 == out2
