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

# --- RL stage (issue 3) --------------------------------------------------------------------------------------------

# --- evaluation and report (issue 4) -------------------------------------------------------------------------------

# --- serving and scale (issue 5) -----------------------------------------------------------------------------------


def main() -> None:
    """Entry point of the ``charter`` script."""
    cli()


if __name__ == "__main__":
    main()
