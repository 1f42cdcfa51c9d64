"""The SFT stage: TRL SFTTrainer (LoRA and full) changes the weights, and the saved model reloads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from charter.records import SFTExample, write_jsonl
from charter.train.sft import SFTConfig, run_sft, to_prompt_completion


def _data(tmp_path: Path, n: int = 6) -> Path:
    examples = [
        SFTExample(id=f"s{i}", parent_id=f"r{i}", source="revision", model="mock/echo", principle_ids=["x"],
                   messages=[{"role": "user", "content": f"question {i}?"},
                             {"role": "assistant", "content": f"A careful, safe answer number {i}."}])
        for i in range(n)
    ]
    path = tmp_path / "sft.jsonl"
    write_jsonl(path, examples)
    return path


def _weights(folder: Path) -> dict[str, object]:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def test_sft_jsonl_loads_with_datasets_in_trl_messages_format(tmp_path: Path) -> None:
    from datasets import load_dataset

    ds = load_dataset("json", data_files=str(_data(tmp_path)), split="train")
    assert ds[0]["messages"][-1]["role"] == "assistant"
    pc = to_prompt_completion(SFTExample.model_validate(ds[0]))
    assert pc["completion"][0]["role"] == "assistant" and pc["prompt"][-1]["role"] == "user"


@pytest.mark.parametrize("lora", [True, False])
def test_sft_changes_weights_and_saved_model_reloads(tmp_path: Path, tiny_model_dir: Path, lora: bool) -> None:
    import torch

    from charter.backends import BackendOptions
    from charter.backends.base import GenParams, GenRequest
    from charter.backends.transformers import TransformersBackend

    cfg = SFTConfig(max_steps=2, batch_size=2, learning_rate=5e-3, lora=lora, max_length=64)
    summary = run_sft(cfg, _data(tmp_path), tmp_path / "sft", f"transformers/{tiny_model_dir}")
    assert summary["steps"] == 2 and summary["peak_rss_mb"] > 50  # a process holding torch + a model
    before, after = _weights(tiny_model_dir), _weights(tmp_path / "sft" / "model")
    assert before.keys() == after.keys()  # merged: a plain model folder, no LoRA leftovers
    changed = [k for k in before if not torch.equal(before[k], after[k])]  # type: ignore[arg-type]
    assert changed, "training left every weight unchanged"
    assert (tmp_path / "sft" / "adapter" / "adapter_config.json").exists() == lora

    backend = TransformersBackend(f"transformers/{tmp_path / 'sft' / 'model'}", str(tmp_path / "sft" / "model"),
                                  BackendOptions(dtype="float32"))
    out = backend.generate([GenRequest.of([{"role": "user", "content": "hi"}], GenParams(max_new_tokens=4))])
    assert out[0].completion_tokens > 0

    # same data and settings: not trained again
    again = run_sft(cfg, tmp_path / "sft.jsonl", tmp_path / "sft", f"transformers/{tiny_model_dir}")
    assert "skipped" in again


def test_sft_without_examples_explains_what_to_do(tmp_path: Path, tiny_model_dir: Path) -> None:
    from charter.errors import CharterError

    empty = tmp_path / "sft.jsonl"
    empty.write_text("")
    with pytest.raises(CharterError, match="no training examples"):
        run_sft(SFTConfig(max_steps=1), empty, tmp_path / "sft", f"transformers/{tiny_model_dir}")


def test_the_opening_weighted_loss_counts_the_first_reply_tokens_more() -> None:
    import math
    from types import SimpleNamespace

    import torch

    from charter.train.sft import opening_weighted_loss

    vocab = 4
    # two rows; labels -100 on the prompt and on padding; the model is right (p=1 after softmax ~) except on the
    # first labelled token of each row, where it is uniform
    labels = torch.tensor([[-100, -100, 1, 2, 3, -100], [-100, 2, 2, 1, -100, -100]])
    logits = torch.full((2, 6, vocab), -30.0)
    for b in range(2):
        for t in range(5):
            if labels[b, t + 1] != -100:
                logits[b, t, labels[b, t + 1]] = 30.0
    logits[0, 1] = 0.0  # predicts labels[0, 2], the first reply token of row 0: uniform
    logits[1, 0] = 0.0  # predicts labels[1, 1], the first reply token of row 1
    out = SimpleNamespace(logits=logits)
    plain = opening_weighted_loss(1, 1.0)(out, labels)
    weighted = opening_weighted_loss(1, 5.0)(out, labels)
    n = 6  # labelled tokens after the shift: 3 + 3
    assert float(plain) == pytest.approx(2 * math.log(vocab) / n, rel=1e-4)
    assert float(weighted) == pytest.approx(5 * 2 * math.log(vocab) / (n + 2 * 4), rel=1e-4)
    # weighting later tokens leaves the uniform openings' share where plain loss has it
    assert float(opening_weighted_loss(0, 5.0)(out, labels)) == pytest.approx(float(plain), rel=1e-4)


def test_sft_trains_with_the_opening_weighted_loss(tmp_path: Path, tiny_model_dir: Path) -> None:
    cfg = SFTConfig(max_steps=2, batch_size=2, learning_rate=5e-3, lora=False, max_length=64, opening_tokens=3,
                    opening_weight=4.0)
    summary = run_sft(cfg, _data(tmp_path), tmp_path / "sft", f"transformers/{tiny_model_dir}")
    assert summary["steps"] == 2 and summary["final_loss"] is not None
    plain = run_sft(cfg.model_copy(update={"opening_tokens": 0}), tmp_path / "sft.jsonl", tmp_path / "plain",
                    f"transformers/{tiny_model_dir}")
    assert plain["first_loss"] != summary["first_loss"]  # the weighting reached the trainer's loss


@pytest.mark.parametrize("lora", [False, True])
def test_head_on_labels_loss_equals_trl_loss_and_its_gradient(tmp_path: Path, tiny_model_dir: Path,
                                                               lora: bool) -> None:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig as TRLSFTConfig
    from trl import SFTTrainer

    from charter.records import read_jsonl
    from charter.train.common import lora_config, training_tokenizer, trl_args
    from charter.train.sft import _head_on_labels

    cfg = SFTConfig(max_steps=1, batch_size=4, lora=lora, lora_dropout=0, max_length=64, bf16=False)  # no randomness
    examples = read_jsonl(_data(tmp_path), SFTExample)
    examples[1].messages[-1]["content"] += " It goes on for a while, so the batch needs padding."
    tokenizer = training_tokenizer(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    args = TRLSFTConfig(max_length=64, completion_only_loss=True, **trl_args(cfg, tmp_path / "work"))
    trainer = _head_on_labels(SFTTrainer)(model=model, args=args, processing_class=tokenizer,
                                          train_dataset=Dataset.from_list([to_prompt_completion(e) for e in examples]),
                                          peft_config=lora_config(cfg, "CAUSAL_LM"))
    batch = next(iter(trainer.get_train_dataloader()))
    assert (batch["labels"] == -100).any() and (batch["labels"] != -100).any()  # prompts and padding are masked
    params = [p for p in trainer.model.parameters() if p.requires_grad]

    def loss_and_grads(compute: Any) -> tuple[float, list[Any]]:
        trainer.model.zero_grad()
        loss = compute(trainer, trainer.model, dict(batch))
        loss.backward()
        return loss.item(), [p.grad.clone() for p in params]

    ours, our_grads = loss_and_grads(type(trainer).compute_loss)
    trl, trl_grads = loss_and_grads(SFTTrainer.compute_loss)
    assert ours == pytest.approx(trl, rel=1e-5)
    for a, b in zip(our_grads, trl_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
