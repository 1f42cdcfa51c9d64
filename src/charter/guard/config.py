"""The guard's one config: upstream, scorer, actions per principle, thresholds, streaming and failure policy."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from charter.errors import ConfigError

Action = Literal["allow", "block", "revise"]
"""``allow``: score and log only; ``block``: answer with the short refusal; ``revise``: critique → revise the
answer with the principle's own requests (on the input side: revise whatever the upstream answers)."""


class GuardConfig(BaseModel):
    """Settings of ``charter guard serve`` (YAML file + ``--set key=value`` overrides)."""

    model_config = ConfigDict(extra="forbid")

    upstream: str = Field(description="The model behind the guard: 'openai/NAME@http://HOST:PORT/v1' (vLLM, "
                                      "Ollama, llama.cpp, charter serve) or any charter backend run in-process.")
    upstream_api_key_env: str = Field(default="OPENAI_API_KEY",
                                      description="Env var with the upstream's API key (sent as a bearer token).")
    upstream_timeout: float = Field(default=60.0, gt=0, description="Seconds before an upstream call is abandoned.")
    upstream_retries: int = Field(default=2, ge=0, description="Retries of an upstream call on 5xx, timeouts and "
                                                               "dropped connections (before any text arrived).")
    constitution: str | None = Field(default=None, description="Constitution YAML (None = charter's default).")
    principles: list[str] | None = Field(default=None, description="Principle ids to check (None = every "
                                                                    "principle outside the over_refusal area).")
    scorer: Literal["feedback", "classifier"] = Field(
        default="feedback", description="'feedback': the feedback model's P(Yes) to 'does this break the "
                                        "principle?' (yes/no log-probs); 'classifier': the distilled classifier.")
    feedback: str = Field(default="transformers/embedded",
                          description="Feedback model: scores (scorer=feedback), critiques and revisions.")
    classifier: str | None = Field(default=None, description="Folder of a classifier from `charter guard distill`.")
    threads: int = Field(default=0, ge=0, description="torch threads for local models (0 = torch's default).")
    dtype: str = Field(default="auto", description="Local models: 'auto' (bf16 generation where the CPU has it, "
                                                   "fp32 scoring), 'float32' or 'bfloat16' (one copy of the weights).")
    batch_size: int = Field(default=32, ge=1, description="Most scoring calls of concurrent requests in one batch.")
    check_input: bool = Field(default=True, description="Check the conversation before calling the upstream.")
    check_output: bool = Field(default=True, description="Check the answer (with the whole conversation).")
    default_action: Action = Field(default="block", description="Action for principles not in `actions`.")
    actions: dict[str, Action] = Field(default_factory=dict, description="Action per principle id.")
    threshold: float = Field(default=0.5, gt=0, lt=1,
                             description="P(violates) at or above which a principle is flagged, where no "
                                         "calibrated threshold exists.")
    thresholds: str | None = Field(default=None, description="Calibration JSON from `charter guard calibrate`: "
                                                             "its thresholds for this scorer replace `threshold`.")
    refusal: str = Field(default="I can't help with that.", description="The answer given when blocking.")
    stream_mode: Literal["hold", "window"] = Field(
        default="hold", description="'hold': nothing is sent before the whole answer passed; 'window': each "
                                    "window is sent once it passes and the stream stops at the first that fails "
                                    "(what was sent stays sent).")
    window_chars: int = Field(default=200, ge=20, description="Window mode: characters checked per window.")
    on_error: Literal["open", "closed"] = Field(
        default="closed", description="When a check fails (scorer error, latency budget spent): 'open' lets the "
                                      "answer through unchecked, 'closed' blocks it. Both are logged.")
    latency_budget: float | None = Field(default=30.0, gt=0,
                                         description="Seconds all checks of one request may take (None = no limit).")
    few_shot: int = Field(default=2, ge=0, description="Revision: worked examples from the constitution in front.")
    critique_tokens: int = Field(default=128, ge=1, description="Revision: max_new_tokens of the critique.")
    revision_tokens: int = Field(default=256, ge=1, description="Revision: max_new_tokens of the revision.")
    verify_revision: bool = Field(default=True, description="Re-score a revision and compare it with the original "
                                                            "(comparison question, both orders); block if it fails.")
    min_option_mass: float = Field(default=1e-3, ge=0, lt=1,
                                   description="scorer=feedback: a reading whose Yes/No get less probability is "
                                               "unusable (the model would not answer Yes or No).")
    max_context_chars: int = Field(default=4000, ge=200, description="Conversation characters a check reads "
                                                                     "(oldest turns dropped first).")
    log: str = Field(default="guard.sqlite", description="SQLite file of every decision.")
    host: str = Field(default="127.0.0.1", description="Address to bind.")
    port: int = Field(default=8100, ge=0, description="Port (0 picks a free one).")
    token_env: str = Field(default="CHARTER_GUARD_TOKEN",
                           description="Env var with the bearer token clients must send (none when unset).")
    name: str = Field(default="charter-guard", description="Model name reported by /v1/models.")

    def action(self, principle_id: str) -> Action:
        """The action for one principle."""
        return self.actions.get(principle_id, self.default_action)


def load_guard_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = (),
                      **fields: Any) -> GuardConfig:
    """A :class:`GuardConfig` from YAML (optional), ``KEY=VALUE`` overrides and keyword fields (CLI flags)."""
    from charter.settings import apply_overrides, read_yaml

    where = str(path) if path is not None else "guard config"
    if path is not None and not Path(path).is_file():
        raise ConfigError(f"{path}: guard config not found", "check the path (see examples/guard.yaml)")
    data: dict[str, Any] = read_yaml(path) if path is not None else {}
    apply_overrides(data, list(overrides))
    data.update({k: v for k, v in fields.items() if v is not None})
    if "upstream" not in data:
        raise ConfigError(f"{where}: no upstream", "pass --upstream openai/NAME@http://HOST:PORT/v1 or set "
                                                   "upstream: in the YAML")
    try:
        return GuardConfig.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        field = ".".join(str(x) for x in err["loc"])
        raise ConfigError(f"{where}: {field}: {err['msg']}",
                          "fix that field (see charter.guard.config.GuardConfig)") from None
