"""The command line: light to start, --help everywhere, one-line errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click
from click.testing import CliRunner

from charter.cli import cli


def test_help_does_not_import_heavy_libraries() -> None:
    code = ("import sys; from click.testing import CliRunner; from charter.cli import cli; "
            "r = CliRunner().invoke(cli, ['--help']); assert r.exit_code == 0, r.output; "
            "heavy = [m for m in ('torch', 'transformers', 'trl', 'ray', 'datasets') if m in sys.modules]; "
            "print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""


def _commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = []
    for name, cmd in group.commands.items():
        found.append((*prefix, name))
        if isinstance(cmd, click.Group):
            found += _commands(cmd, (*prefix, name))
    return found


def test_every_command_has_help() -> None:
    commands = _commands(cli)
    assert {("run",), ("critique",), ("sft",), ("constitution", "check")} <= set(commands)
    for path in commands:
        result = CliRunner().invoke(cli, [*path, "--help"])
        assert result.exit_code == 0, (path, result.output)
        assert "Usage:" in result.output


def test_errors_are_one_line_and_traceback_only_with_debug(tmp_path) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "bad.yaml"
    bad.write_text("stages: [critique\n")
    result = CliRunner().invoke(cli, ["run", str(bad)])
    assert result.exit_code == 2
    assert result.output.strip().count("\n") == 0 and "invalid YAML" in result.output
    debug = CliRunner().invoke(cli, ["--debug", "run", str(bad)])
    assert debug.exit_code != 0 and debug.exception is not None


def test_charter_run_without_a_config_is_the_quick_start() -> None:
    from charter.config import load_config

    example = Path(__file__).resolve().parents[1] / "examples" / "quickstart.yaml"
    cfg = load_config(None)
    assert cfg.model_dump() == load_config(example).model_dump()
    assert cfg.name == "quickstart" and cfg.stages[-2:] == ["eval", "report"]
