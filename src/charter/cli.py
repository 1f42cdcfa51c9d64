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

# --- evaluation and report (issue 4) -------------------------------------------------------------------------------

# --- serving and scale (issue 5) -----------------------------------------------------------------------------------


@cli.command()
@click.argument("model")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (keep 127.0.0.1 unless you "
              "set a token).")
@click.option("--port", default=8000, show_default=True, type=int, help="Port to listen on (0 picks a free one).")
@click.option("--token-env", default="CHARTER_SERVE_TOKEN", show_default=True,
              help="Environment variable holding the bearer token clients must send (no token when unset).")
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
    run_server(model, host=host, port=port, token_env=token_env, require_token=explicit, batch_size=batch_size,
               name=name, verbose=verbose)


def main() -> None:
    """Entry point of the ``charter`` script."""
    cli()


if __name__ == "__main__":
    main()
