"""A model's chat template, held on the client side: how the ``openai`` backend scores over a plain completions
endpoint when the server will not continue an assistant prefix (llama-cpp-python's server, for one).

A template comes from a local file the config names (``extra.template`` of the backend):

* ``embedded``: the embedded model's GGUF (``charter.embedded.gguf_path()``);
* a ``.gguf`` file: its ``tokenizer.chat_template`` and BOS/EOS tokens;
* a Hugging Face model or tokenizer folder: its tokenizer's ``chat_template``;

or from the server itself when it exposes one (llama.cpp's ``llama-server`` answers ``GET /props`` with its
``chat_template``). It is rendered the way ``transformers`` renders it (its own Jinja renderer), with the
generation prompt opened, so the text matches what the transformers backend scores locally.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from charter.backends.base import Message
from charter.errors import BackendError
from charter.records import short_hash


@dataclass(frozen=True)
class ChatTemplate:
    """A Jinja chat template and the special tokens it refers to.

    Attributes:
        text: The Jinja source.
        bos_token: The BOS token's text (templates may print it).
        eos_token: The EOS token's text.
        source: Where it came from (a path, ``embedded`` or the server's URL), for messages.
        server_adds_bos: The tokenizer prepends BOS itself, so a BOS the template prints is dropped (else the
            prompt would start with two).
    """

    text: str
    bos_token: str = ""
    eos_token: str = ""
    source: str = ""
    server_adds_bos: bool = False

    @property
    def id(self) -> str:
        """A short hash of what decides the rendered text (part of the backend's cache identity)."""
        return short_hash(self.text, self.bos_token, self.eos_token, self.server_adds_bos, n=10)

    def render(self, messages: Sequence[Message]) -> str:
        """``messages`` rendered with the assistant turn opened (``add_generation_prompt``)."""
        from transformers.utils.chat_template_utils import render_jinja_template

        try:
            out: Any = render_jinja_template(  # (rendered texts, generation indices), whatever its annotation says
                conversations=[list(messages)], chat_template=self.text, add_generation_prompt=True,
                bos_token=self.bos_token, eos_token=self.eos_token)
        except Exception as e:  # jinja2 raises many kinds (TemplateError, TypeError from filters...)
            raise BackendError(f"the chat template from {self.source} cannot render this conversation: {e}",
                               "check extra.template names the served model's tokenizer") from None
        text = str(out[0][0])
        if self.server_adds_bos and self.bos_token and text.startswith(self.bos_token):
            text = text[len(self.bos_token):]
        return text


def template_from_gguf(path: Path) -> ChatTemplate:
    """The chat template and BOS/EOS tokens in a GGUF file's metadata."""
    import gguf

    try:
        reader = gguf.GGUFReader(str(path))
    except (OSError, ValueError) as e:
        raise BackendError(f"cannot read {path} as a GGUF file ({e})", "point extra.template at a .gguf file, "
                           "a tokenizer folder or 'embedded'") from None
    fields = reader.fields

    def value(key: str) -> object:
        f = fields.get(key)
        return None if f is None else f.contents()

    text = value("tokenizer.chat_template")
    if not isinstance(text, str) or not text:
        raise BackendError(f"{path} carries no chat template", "point extra.template at the model's tokenizer "
                                                               "folder instead")
    tokens = fields.get("tokenizer.ggml.tokens")
    vocab = tokens.contents() if tokens is not None else []

    def token(key: str) -> str:
        i = value(key)
        return str(vocab[i]) if isinstance(i, int) and 0 <= i < len(vocab) else ""

    return ChatTemplate(text, token("tokenizer.ggml.bos_token_id"), token("tokenizer.ggml.eos_token_id"),
                        str(path), bool(value("tokenizer.ggml.add_bos_token")))


def template_from_folder(folder: Path) -> ChatTemplate:
    """The chat template of the tokenizer in a Hugging Face folder."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError) as e:
        raise BackendError(f"cannot load a tokenizer from {folder}: {str(e).splitlines()[0]}",
                           "point extra.template at a tokenizer folder, a .gguf file or 'embedded'") from None
    text = getattr(tok, "chat_template", None)
    if not isinstance(text, str) or not text:
        raise BackendError(f"the tokenizer in {folder} has no chat template", "point extra.template at a chat model")
    return ChatTemplate(text, str(tok.bos_token or ""), str(tok.eos_token or ""), str(folder),
                        bool(getattr(tok, "add_bos_token", False)))


def load_template(spec: str) -> ChatTemplate:
    """The template named by ``extra.template``: ``embedded``, a ``.gguf`` file or a tokenizer folder."""
    if spec == "embedded":
        from charter.embedded import gguf_path

        return template_from_gguf(gguf_path())
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return template_from_gguf(path)
    if path.is_dir():
        return template_from_folder(path)
    raise BackendError(f"extra.template {spec!r} is neither 'embedded', a .gguf file nor a folder",
                       "name the served model's GGUF file or its Hugging Face tokenizer folder")
