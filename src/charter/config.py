"""Run configuration: one flat pydantic model per stage, composed into :class:`RunConfig`, loaded from YAML with
``--set key.sub=value`` overrides, and saved beside the outputs of the run it produced (``RUN/config.yaml``).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from charter.audit.findings import AuditConfig
from charter.errors import ConfigError
from charter.evaluation.session import EvalConfig
from charter.oversight.sweep import OversightConfig
from charter.settings import ModelConfig, apply_overrides, parse_override, read_yaml
from charter.stages.critique import CritiqueConfig
from charter.stages.label import LabelConfig
from charter.stages.rlcd import RLCDConfig
from charter.stages.sample import SampleConfig
from charter.train.dpo import DPOConfig
from charter.train.online import OnlineConfig
from charter.train.reward import RewardConfig
from charter.train.sft import SFTConfig

__all__ = ["INHERITED", "QUICKSTART", "STAGES", "ModelConfig", "PromptsConfig", "RunConfig", "apply_overrides",
           "dump_config", "load_config", "parse_override", "read_yaml"]


class PromptFile(BaseModel):
    """One prompt file of a run, with what to take from it. In YAML a bare path is shorthand for ``{path: PATH}``."""

    model_config = ConfigDict(extra="forbid")

    path: str = Field(description="The file ('bundled' = charter's own set of that kind).")
    limit: int | None = Field(default=None, ge=1, description="Take at most this many prompts from this file.")
    triage: float | None = Field(default=None, gt=0, lt=1,
                                 description="Red-team files: keep only prompts the feedback model judges to ask "
                                             "for real help with harm with at least this probability (for files "
                                             "that mix harmful and harmless requests, like HH-RLHF red-team turns).")
    split: Literal["all", "train", "eval"] | None = Field(
        default=None, description="Part of this file to use (None = the run's prompts.split).")

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: Any) -> Any:
        return {"path": value} if isinstance(value, str) else value


class PromptsConfig(BaseModel):
    """Which prompts the SL stage answers."""

    model_config = ConfigDict(extra="forbid")

    red_team: PromptFile | list[PromptFile] | None = Field(
        default=None, description="Red-team prompt file, or a list of files read in order ('bundled' = charter's "
                                  "own set; None = the bundled set).")
    helpful: PromptFile | list[PromptFile] | None = Field(
        default=None, description="Helpful prompt file or list of files ('bundled' = charter's own set; None = the "
                                  "bundled set; '' = none).")
    format: str = Field(default="auto", description="'auto', 'jsonl', 'csv', 'txt' or 'hh'.")
    field: str = Field(default="prompt", description="Field or column holding the prompt (JSONL/CSV).")
    hh_mode: str = Field(default="first", description="HH dialogues: 'first' human turn or whole 'context'.")
    red_team_limit: int | None = Field(default=None, description="Use at most this many red-team prompts (the first "
                                                                 "ones, files in order).")
    helpful_limit: int | None = Field(default=None, description="Use at most this many helpful prompts.")
    split: Literal["all", "train", "eval"] = Field(
        default="all", description="Part of each prompt file to use (charter.splits): 'train' keeps the prompts "
                                   "that evaluation on split='eval' never sees; 'all' = the whole file.")

    def files(self, kind: str) -> list[PromptFile]:
        """The files of ``kind`` ('red_team' or 'helpful') in order; [] for none."""
        value = getattr(self, kind)
        if value is None:
            return [PromptFile(path="bundled")]
        items = value if isinstance(value, list) else [value]
        return [f for f in items if f.path != ""]


class ReportConfig(BaseModel):
    """The HTML report stage has no settings."""

    model_config = ConfigDict(extra="forbid")


STAGES = ("critique", "sft", "sample", "label", "rlcd", "dpo", "rm", "online", "eval", "oversight", "report")
"""Stages ``charter run`` knows, in pipeline order: SL-CAI (critique, sft), RL-CAI (sample, label or rlcd, then
dpo / rm / online), then evaluation and the HTML report."""

_STAGE_MODELS: dict[str, type[BaseModel]] = {
    "critique": CritiqueConfig, "sft": SFTConfig, "sample": SampleConfig, "label": LabelConfig, "rlcd": RLCDConfig,
    "dpo": DPOConfig, "rm": RewardConfig, "online": OnlineConfig, "eval": EvalConfig, "oversight": OversightConfig,
    "report": ReportConfig}
INHERITED = ("seed", "threads")
"""Run-level fields that every stage section takes unless it sets its own; overriding one on the command line
(``--set seed=3``) sets it in every stage section too."""


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
    critique: CritiqueConfig = Field(default_factory=CritiqueConfig, description="SL-CAI critique/revision.")
    sft: SFTConfig = Field(default_factory=SFTConfig, description="Supervised fine-tuning on the revisions.")
    sample: SampleConfig = Field(default_factory=SampleConfig, description="Answer pairs from the SL model.")
    label: LabelConfig = Field(default_factory=LabelConfig, description="AI preference labels.")
    rlcd: RLCDConfig = Field(default_factory=RLCDConfig, description="Contrastive pairs (RLCD).")
    dpo: DPOConfig = Field(default_factory=DPOConfig, description="DPO on the preferences.")
    rm: RewardConfig = Field(default_factory=RewardConfig, description="Reward model on the preferences.")
    online: OnlineConfig = Field(default_factory=OnlineConfig, description="Online RL (GRPO).")
    eval: EvalConfig = Field(default_factory=EvalConfig, description="Base vs trained models.")
    oversight: OversightConfig = Field(default_factory=OversightConfig,
                                       description="Weak-to-strong sweep (scalable oversight lab).")
    report: ReportConfig = Field(default_factory=ReportConfig, description="The HTML report.")
    audit: AuditConfig = Field(default_factory=AuditConfig, description="Data audit of the prompt files (issue 15): "
                                                                       "enabled=true → RUN/audit.json + warnings.")

    @model_validator(mode="before")
    @classmethod
    def _inherit(cls, data: Any) -> Any:
        """Stage sections take the run's seed and threads unless they set their own."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for name in STAGES:
            section = data.get(name)
            if section is None:
                section = {}
            if not isinstance(section, dict):
                continue  # pydantic reports the type error
            section = dict(section)
            fields = _STAGE_MODELS[name].model_fields
            for key in ("seed", "threads"):
                if key in fields and key not in section and key in data:
                    section[key] = data[key]
            data[name] = section
        if "judges" not in data["eval"]:  # the run's judge defaults to its feedback model (the report warns)
            fb = data.get("feedback") or data.get("policy") or "transformers/embedded"
            data["eval"]["judges"] = [fb if isinstance(fb, str) else fb.get("model", "transformers/embedded")]
        return data

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
        """The config of stage ``name``."""
        return getattr(self, name)

    def run_dir(self) -> Path:
        """Where the run's outputs go."""
        return Path(self.out) if self.out else Path("runs") / self.name


def _config_error(e: ValidationError, prefix: str = "", where: str = "config") -> ConfigError:
    err = e.errors()[0]
    field = prefix + ".".join(str(x) for x in err["loc"])
    return ConfigError(f"{where}: {field}: {err['msg']}", "fix that field (see `charter run --help` for the fields)")


QUICKSTART = Path(str(resources.files("charter").joinpath("data", "quickstart.yaml")))
"""The bundled quick-start config: what ``charter run`` runs without a config (``examples/quickstart.yaml``)."""


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Load a run config from YAML (None = the bundled quick-start) and apply ``KEY=VALUE`` overrides.

    A run-level ``seed`` or ``threads`` override is also set in every stage section (see :data:`INHERITED`), so that
    ``--set seed=3`` on a run folder's saved config changes every seed; a stage-level override after it wins.
    """
    where = str(path) if path is not None else "the quick-start config"
    data = read_yaml(path if path is not None else QUICKSTART)
    inherited = [o for o in overrides if o.partition("=")[0].strip() in INHERITED]
    for item in inherited:
        key = item.partition("=")[0].strip()
        for name in STAGES:
            if key in _STAGE_MODELS[name].model_fields and isinstance(data.get(name, {}), dict):
                data.setdefault(name, {}).pop(key, None)
    if any(o.partition("=")[0].strip() in ("feedback", "feedback.model", "policy", "policy.model") for o in overrides):
        before = RunConfig.model_validate(data) if data else None
        if before is not None and data.get("eval", {}).get("judges") == [before.feedback_model().model]:
            data["eval"].pop("judges")  # it was inherited: inherit from the new feedback model
    apply_overrides(data, list(overrides))
    try:
        return RunConfig.model_validate(data)
    except ValidationError as e:
        raise _config_error(e, where=where) from None


def dump_config(cfg: RunConfig, path: Path) -> None:
    """Save the resolved config (what actually ran, every field with its value) as YAML."""
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
