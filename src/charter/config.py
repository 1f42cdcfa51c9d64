"""Run configuration: one flat pydantic model per stage, composed into :class:`RunConfig`, loaded from YAML with
``--set key.sub=value`` overrides, and saved beside the outputs of the run it produced (``RUN/config.yaml``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from charter.backends import BackendOptions
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


class PromptsConfig(BaseModel):
    """Which prompts the SL stage answers."""

    model_config = ConfigDict(extra="forbid")

    red_team: str | None = Field(default=None, description="Red-team prompt file (None = the bundled set).")
    helpful: str | None = Field(default=None, description="Helpful prompt file (None = the bundled set; '' = none).")
    format: str = Field(default="auto", description="'auto', 'jsonl', 'csv', 'txt' or 'hh'.")
    field: str = Field(default="prompt", description="Field or column holding the prompt (JSONL/CSV).")
    hh_mode: str = Field(default="first", description="HH dialogues: 'first' human turn or whole 'context'.")
    red_team_limit: int | None = Field(default=None, description="Use at most this many red-team prompts.")
    helpful_limit: int | None = Field(default=None, description="Use at most this many helpful prompts.")
    split: Literal["all", "train", "eval"] = Field(
        default="all", description="Part of each prompt file to use (charter.splits): 'train' keeps the prompts "
                                   "that evaluation on split='eval' never sees; 'all' = the whole file.")


def _stage_models() -> dict[str, type[BaseModel]]:
    from charter.evaluation.session import EvalConfig
    from charter.stages.critique import CritiqueConfig
    from charter.stages.label import LabelConfig
    from charter.stages.rlcd import RLCDConfig
    from charter.stages.sample import SampleConfig
    from charter.train.dpo import DPOConfig
    from charter.train.online import OnlineConfig
    from charter.train.reward import RewardConfig
    from charter.train.sft import SFTConfig

    return {"critique": CritiqueConfig, "sft": SFTConfig, "sample": SampleConfig, "label": LabelConfig,
            "rlcd": RLCDConfig, "dpo": DPOConfig, "rm": RewardConfig, "online": OnlineConfig, "eval": EvalConfig,
            "report": _NoConfig}


class _NoConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")


STAGES = ("critique", "sft", "sample", "label", "rlcd", "dpo", "rm", "online", "eval", "report")
"""Stages ``charter run`` knows, in pipeline order: SL-CAI (critique, sft), RL-CAI (sample, label or rlcd, then
dpo / rm / online), then evaluation and the HTML report."""


class RunConfig(BaseModel):
    """Everything one ``charter run`` needs. Every field has a default: an empty YAML file runs the quick-start."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(default="run", description="Run name (the default run folder is runs/NAME).")
    out: str | None = Field(default=None, description="Run folder; overrides runs/NAME.")
    seed: int = Field(default=0, description="Seed for principle sampling, sampling and training.")
    threads: int = Field(default=0, description="torch threads for every local model (0 = torch's default).")
    policy: ModelConfig = Field(default=ModelConfig(model="transformers/embedded"),
                                description="The model being aligned.")
    feedback: ModelConfig | None = Field(default=None,
                                         description="Critique/revision (and label) model; None = the policy.")
    constitution: str | None = Field(default=None, description="Constitution YAML (None = the bundled default).")
    prompts: PromptsConfig = Field(default_factory=PromptsConfig)
    stages: list[str] = Field(default_factory=lambda: ["critique", "sft"], description="Stages to run, in order.")
    critique: dict[str, Any] = Field(default_factory=dict, description="CritiqueConfig fields.")
    sft: dict[str, Any] = Field(default_factory=dict, description="SFTConfig fields.")
    sample: dict[str, Any] = Field(default_factory=dict, description="SampleConfig fields (pairs from the SL model).")
    label: dict[str, Any] = Field(default_factory=dict, description="LabelConfig fields (AI preference labels).")
    rlcd: dict[str, Any] = Field(default_factory=dict, description="RLCDConfig fields (contrastive pairs).")
    dpo: dict[str, Any] = Field(default_factory=dict, description="DPOConfig fields.")
    rm: dict[str, Any] = Field(default_factory=dict, description="RewardConfig fields (reward model).")
    online: dict[str, Any] = Field(default_factory=dict, description="OnlineConfig fields (GRPO).")
    eval: dict[str, Any] = Field(default_factory=dict, description="EvalConfig fields (base vs trained models).")
    report: dict[str, Any] = Field(default_factory=dict, description="(no fields) the HTML report.")
    audit: dict[str, Any] = Field(default_factory=dict, description="AuditConfig fields (charter.audit, issue 15); "
                                                             "enabled=true audits the prompt files first.")

    @model_validator(mode="after")
    def _check_stages(self) -> RunConfig:
        unknown = [s for s in self.stages if s not in STAGES]
        if unknown:
            raise ValueError(f"unknown stage(s) {unknown}; known: {list(STAGES)}")
        return self

    def feedback_model(self) -> ModelConfig:
        """The feedback role: its own config, or the policy's."""
        return self.feedback or self.policy

    def stage(self, name: str) -> Any:
        """The validated config of stage ``name`` (seed and threads filled from the run when not set)."""
        model = _stage_models()[name]
        data = {**getattr(self, name)}
        for key in ("seed", "threads"):
            if key in model.model_fields and key not in data:
                data[key] = getattr(self, key)
        try:
            return model.model_validate(data)
        except ValidationError as e:
            raise _config_error(e, f"{name}.") from None

    def run_dir(self) -> Path:
        """Where the run's outputs go."""
        return Path(self.out) if self.out else Path("runs") / self.name


def _config_error(e: ValidationError, prefix: str = "", where: str = "config") -> ConfigError:
    err = e.errors()[0]
    field = prefix + ".".join(str(x) for x in err["loc"])
    return ConfigError(f"{where}: {field}: {err['msg']}", "fix that field (see `charter run --help` for the fields)")


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"critique.rounds=1"`` → (["critique", "rounds"], 1); the value is parsed as a YAML scalar."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {text!r} is not KEY=VALUE", "write e.g. --set critique.rounds=1")
    return key.strip().split("."), yaml.safe_load(value) if value.strip() else ""


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Load a run config from YAML (None = all defaults) and apply ``KEY=VALUE`` overrides."""
    data: dict[str, Any] = {}
    where = "config"
    if path is not None:
        p = Path(path)
        where = str(p)
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
        data = loaded or {}
    for item in overrides:
        keys, value = parse_override(item)
        node = data
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {k} is not a mapping", "override a leaf field")
        node[keys[-1]] = value
    try:
        cfg = RunConfig.model_validate(data)
    except ValidationError as e:
        raise _config_error(e, where=where) from None
    for name in cfg.stages:
        cfg.stage(name)  # validate early: a typo fails before any model is loaded
    return cfg


def dump_config(cfg: RunConfig, path: Path) -> None:
    """Save the resolved config (what actually ran) as YAML."""
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
