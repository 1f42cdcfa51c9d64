"""The scale examples are valid: accelerate/DeepSpeed configs parse with accelerate's own loader, and
examples/vllm.yaml is a run config charter accepts (vLLM itself cannot run here: no GPU)."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ACCELERATE = sorted((ROOT / "examples" / "accelerate").glob("*.yaml"))


def test_there_are_ddp_zero2_and_zero3_configs() -> None:
    assert {p.name for p in ACCELERATE} >= {"multi_gpu.yaml", "deepspeed_zero2.yaml", "deepspeed_zero3.yaml"}


@pytest.mark.parametrize("path", ACCELERATE, ids=lambda p: p.name)
def test_accelerate_config_loads_with_accelerate(path: Path) -> None:
    from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file

    cfg = load_config_from_file(str(path))
    assert isinstance(cfg, ClusterConfig) and cfg.num_processes >= 2 and not cfg.use_cpu
    ds = cfg.deepspeed_config or {}
    if path.name.startswith("deepspeed_zero"):
        assert cfg.distributed_type == "DEEPSPEED"
        assert ds["zero_stage"] == int(path.stem[-1])
        assert ds.get("zero3_save_16bit_model", False) == (ds["zero_stage"] == 3)
    else:
        assert cfg.distributed_type == "MULTI_GPU" and not ds


def test_vllm_example_is_a_valid_run_config_with_vllm_roles() -> None:
    from charter.backends import split_spec
    from charter.config import load_config

    cfg = load_config(ROOT / "examples" / "vllm.yaml")
    assert split_spec(cfg.policy.model)[0] == "vllm" and split_spec(cfg.feedback_model().model)[0] == "vllm"
    share = cfg.policy.extra["gpu_memory_utilization"] + cfg.feedback_model().extra["gpu_memory_utilization"]
    assert share < 0.95  # both engines share the GPU
    assert cfg.stage("sft").base_model.startswith("transformers/")  # training reads the same weights locally
