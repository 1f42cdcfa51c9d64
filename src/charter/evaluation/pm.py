"""The preference-model judge: score answers with a trained reward model, as the paper's PM scores.

A reward model folder (``AutoModelForSequenceClassification`` with one output, as TRL's ``RewardTrainer``
saves it) scores the whole conversation — the prompt turns and the assistant's answer, rendered with the
tokenizer's chat template as the trainer did — and the score is the output logit. Scores are cached in the
run's call cache, so a resumed evaluation does not recompute them. Its accuracy on held-back human pairs
(``score(chosen) > score(rejected)``) tells the user whether to trust it more than the prompted judges.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from charter.backends.base import Message
from charter.errors import BackendError
from charter.records import short_hash
from charter.store import CallCache, Progress


class PreferenceModel:
    """A reward model loaded from a folder; :meth:`score` returns one float per conversation."""

    def __init__(self, folder: str | Path, batch_size: int = 8, max_length: int = 1024, threads: int = 0,
                 cache: CallCache | None = None) -> None:
        self.folder = Path(folder).expanduser()
        if not (self.folder / "config.json").is_file():
            hint = (" (it is a LoRA adapter: merge it or point at the trainer's merged folder)"
                    if (self.folder / "adapter_config.json").is_file() else "")
            raise BackendError(f"reward model folder {self.folder} has no config.json{hint}",
                               "pass the folder `charter rm` saved (a sequence-classification model)")
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from charter.backends.transformers import folder_fingerprint

        if threads:
            torch.set_num_threads(threads)
        self.spec = f"pm:{self.folder}"
        self.model_id = f"pm:{self.folder}:{folder_fingerprint(self.folder)}"
        self.tokenizer = AutoTokenizer.from_pretrained(self.folder)
        self.tokenizer.truncation_side = "left"  # keep the answer when a long conversation must be cut
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForSequenceClassification.from_pretrained(self.folder, dtype=torch.float32)
        self.model.eval()
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        if int(getattr(self.model.config, "num_labels", 1)) != 1:
            raise BackendError(f"{self.folder}: a reward model has one output, this one has "
                               f"{self.model.config.num_labels}", "pass a folder saved by `charter rm`")
        self.batch_size = max(1, batch_size)
        self.max_length = max_length
        self.cache = cache

    def render(self, conversation: Sequence[Message]) -> str:
        """The text the reward model reads: the chat template over the conversation (answer included)."""
        if getattr(self.tokenizer, "chat_template", None):
            return str(self.tokenizer.apply_chat_template(list(conversation), tokenize=False))
        return "".join(f"\n\n{'Human' if m['role'] == 'user' else 'Assistant'}: {m['content']}"
                       for m in conversation)

    def score(self, conversations: Sequence[Sequence[Message]], progress: Progress | None = None) -> list[float]:
        """The reward of each conversation (its last turn is the assistant answer being scored);
        ``progress(done, total)`` after each batch."""
        texts = [self.render(c) for c in conversations]
        keys = [short_hash("pm", self.model_id, t, self.max_length, n=32) for t in texts]
        found: dict[str, str] = self.cache.get_many(keys) if self.cache else {}
        todo = sorted({k: t for k, t in zip(keys, texts, strict=True) if k not in found}.items(),
                      key=lambda kv: len(kv[1]))
        if progress:
            progress(len(keys) - len(todo), len(keys))
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start:start + self.batch_size]
            values = self._forward([t for _, t in chunk])
            rows = [(k, "pm", self.model_id, json.dumps({"text": t}), json.dumps(v))
                    for (k, t), v in zip(chunk, values, strict=True)]
            if self.cache:
                self.cache.put_many(rows)
            found.update({k: json.dumps(v) for (k, _), v in zip(chunk, values, strict=True)})
            if progress:
                progress(len(keys) - len(todo) + start + len(chunk), len(keys))
        return [float(json.loads(found[k])) for k in keys]

    def _forward(self, texts: list[str]) -> list[float]:
        import torch

        enc: Any = self.tokenizer(texts, return_tensors="pt", padding=True, truncation=True,
                                  max_length=self.max_length, add_special_tokens=False)
        with torch.inference_mode():
            logits = self.model(**enc).logits
        return [float(x) for x in logits[:, 0]]
