"""A model folder is never half-written: a process SIGKILLed in the middle of saving leaves the previous complete
model or none, and the next run retrains or reuses only a complete model (issue 10 #6)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import yaml

from charter.records import SFTExample, write_jsonl

ROOT = Path(__file__).resolve().parents[1]

# Loaded first by the child interpreter: once a weights file has been written, announce it and wait to be killed
# (the save is then half done). Nothing in charter knows about it.
HOOK = """
import os, time
import safetensors.torch as st
real = st.save_file
def slow(*args, **kwargs):
    real(*args, **kwargs)
    flag = os.environ.get("CHARTER_TEST_SAVING")
    if flag:
        open(flag, "w").write("saving")
        time.sleep(120)
st.save_file = slow
"""

def _examples(path: Path, text: str) -> None:
    write_jsonl(path, [SFTExample(id=f"s{i}", parent_id=f"r{i}", source="revision", model="mock/echo",
                                  messages=[{"role": "user", "content": f"question {i}?"},
                                            {"role": "assistant", "content": f"{text} {i}."}]) for i in range(4)])


def _sft(run: Path, flag: Path | None, hook_dir: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": f"{hook_dir}{os.pathsep}{ROOT / 'src'}", "CHARTER_TEST_THREADS": "1"}
    if flag is not None:
        env["CHARTER_TEST_SAVING"] = str(flag)
    code = "import sitecustomize_hook; from charter.cli import main; main()"
    return subprocess.Popen([sys.executable, "-c", code, "sft", str(run), "--quiet"], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _kill_while_saving(run: Path, tmp_path: Path, hook_dir: Path) -> None:
    flag = tmp_path / "saving.flag"
    flag.unlink(missing_ok=True)
    proc = _sft(run, flag, hook_dir)
    deadline = time.monotonic() + 300
    while not flag.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the child never reached the save"
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def test_sigkill_during_a_save_leaves_no_half_model_and_the_next_run_retrains(tiny_model_dir: Path,
                                                                              tmp_path: Path) -> None:
    hook_dir = tmp_path / "hook"
    hook_dir.mkdir()
    (hook_dir / "sitecustomize_hook.py").write_text(textwrap.dedent(HOOK))
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({
        "policy": f"transformers/{tiny_model_dir}", "stages": ["sft"],
        "sft": {"max_steps": 1, "batch_size": 2, "lora": False}}))
    _examples(run / "sft.jsonl", "A safe answer")
    model = run / "sft" / "model"

    # 1. killed while saving its first model: there is no model folder, so nothing downstream can use one
    _kill_while_saving(run, tmp_path, hook_dir)
    assert not model.exists()
    assert any(p.name.startswith(".staging-") for p in (run / "sft").iterdir())  # the partial files were there

    # 2. the next run trains again and leaves a complete model (and no staging debris)
    from charter.train.common import is_complete

    proc = _sft(run, None, hook_dir)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()
    assert is_complete(model)
    assert not [p for p in (run / "sft").iterdir() if p.name.startswith(".")]
    first = (model / "model.safetensors").read_bytes()

    # 3. new data, killed while saving the new model: the old complete model is still there, whole
    _examples(run / "sft.jsonl", "A different safe answer")
    _kill_while_saving(run, tmp_path, hook_dir)
    assert is_complete(model) and (model / "model.safetensors").read_bytes() == first

    # 4. ... and it is not mistaken for the model of the new data: the next run retrains
    proc = _sft(run, None, hook_dir)
    proc.communicate(timeout=300)
    assert proc.returncode == 0
    assert (model / "model.safetensors").read_bytes() != first


def test_a_folder_without_the_done_marker_is_not_a_trained_model(tiny_model_dir: Path, tmp_path: Path) -> None:
    import shutil

    from charter.config import load_config
    from charter.pipeline import Session, sl_model, trained_models
    from charter.store import RunDir

    run = tmp_path / "run"
    shutil.copytree(tiny_model_dir, run / "sft" / "model")  # config.json and weights, but no marker
    cfg = load_config(None, [f"out={run}", "policy=mock/echo"])
    session = Session(cfg, RunDir(run))
    assert sl_model(session) == "mock/echo"
    assert "sl" not in trained_models(session)
