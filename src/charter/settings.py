"""Config building blocks every command shares: YAML files, ``--set KEY=VALUE`` overrides (one syntax everywhere) and
the settings of a model role. :mod:`charter.config` composes them into the run config; tools with their own
config (the oversight lab, the audit) use them directly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from charter.backends.base import BackendOptions
from charter.errors import ConfigError


class ModelConfig(BaseModel):
    """A model role (policy, feedback, judge). In YAML either a string (``feedback: openai/qwen@http://...``) or a
    mapping with the backend options below."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="Backend spec, e.g. 'transformers/embedded' or 'openai/NAME@http://HOST:PORT/v1'.")
    dtype: str = Field(default="auto", description="'auto', 'float32' or 'bfloat16' (local backends).")
    threads: int = Field(default=0, description="torch threads for local backends (0 = torch's default).")
    batch_size: int = Field(default=32, description="Largest batch of requests sent at once.")
    api_key_env: str = Field(default="OPENAI_API_KEY", description="Env var with the API key (openai backend).")
    timeout: float = Field(default=120.0, description="Seconds per HTTP request before a retry.")
    max_retries: int = Field(default=5, description="HTTP retries with exponential backoff.")
    concurrency: int = Field(default=8, description="HTTP requests in flight at once.")
    extra: dict[str, Any] = Field(default_factory=dict, description="Provider-specific settings, passed through.")

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: Any) -> Any:
        return {"model": value} if isinstance(value, str) else value

    def options(self) -> BackendOptions:
        """The backend options this role asks for."""
        return BackendOptions(dtype=self.dtype, threads=self.threads, batch_size=self.batch_size,
                              api_key_env=self.api_key_env, timeout=self.timeout, max_retries=self.max_retries,
                              concurrency=self.concurrency, extra=dict(self.extra))


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"critique.rounds=1"`` → (["critique", "rounds"], 1); the value is parsed as a YAML scalar."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} is not KEY=VALUE", "write e.g. --set critique.rounds=1")
    return key.strip().split("."), yaml.safe_load(value) if value.strip() else ""


def apply_overrides(data: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Set each ``KEY.SUB=VALUE`` of ``overrides`` in the nested mapping ``data`` (in place; also returned). The one
    override syntax of every command: dotted paths into the config the command reads."""
    for item in overrides:
        keys, value = parse_override(item)
        node = data
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if isinstance(node, str) and k in ("policy", "feedback"):  # `feedback: NAME` given as a string
                node = data[k] = {"model": node}
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {k} is not a mapping", "override a leaf field")
        node[keys[-1]] = value
    return data


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML mapping from ``path``; errors name the file and line."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: config file not found", "check the path, or run `charter run` with no file")
    try:
        loaded = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise ConfigError(f"{p}{line}: invalid YAML ({getattr(e, 'problem', e)})", "fix the YAML syntax") from None
    if loaded is not None and not isinstance(loaded, dict):
        raise ConfigError(f"{p}: expected a mapping of fields at the top level", "see examples/quickstart.yaml")
    return loaded or {}
