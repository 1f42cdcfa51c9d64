"""Prompt templates are data: Jinja files under ``charter/data/templates``, rendered with named fields."""

from __future__ import annotations

from functools import cache
from importlib import resources

import jinja2

from charter.records import short_hash


@cache
def template_source(name: str) -> str:
    """The text of a bundled template file."""
    return resources.files("charter").joinpath("data", "templates", name).read_text(encoding="utf-8")


@cache
def _compiled(name: str) -> jinja2.Template:
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=False, autoescape=False)
    return env.from_string(template_source(name))


def render(name: str, **fields: object) -> str:
    """Render a bundled template; a missing field is an error, not an empty string."""
    return _compiled(name).render(**fields).strip()


def template_hash(*names: str, extra: object = None) -> str:
    """Hash of the named templates' text (and anything else that shapes the prompt, e.g. few-shot examples)."""
    return short_hash([template_source(n) for n in names], extra)
