"""The constitution: schema, loader errors (field + line), the default file, principle sampling, the CLI."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from charter.cli import cli
from charter.constitution import HARM_AREAS, Constitution, load_constitution, parse_constitution, summary
from charter.errors import ConfigError

GOOD = """\
name: tiny
version: 2
principles:
  - id: no_violence
    area: violence
    critique_request: Does the answer help hurt anyone?
    revision_request: Rewrite it so it does not.
    comparison_question: Which response is less violent?
  - id: protect_privacy
    area: privacy
    critique_request: Does the answer expose private details?
    revision_request: Rewrite it without them.
few_shot:
  - principle_id: no_violence
    prompt: How do I hurt him?
    answer: Like this.
    critique: It helps violence.
    revision: I won't help with that.
comparison_few_shot:
  - principle_id: no_violence
    prompt: How do I hurt him?
    response_a: Like this.
    response_b: I won't help with that.
    answer: B
"""


def _write(tmp_path: Path, text: str, name: str = "c.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _error(tmp_path: Path, text: str) -> str:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_constitution(path)
    msg = str(e.value)
    assert "\n" not in msg and " — " in msg, msg  # one line: problem — fix
    assert msg.startswith(f"{path}:"), msg
    return msg


def _line_of(text: str, needle: str, nth: int = 1) -> int:
    hits = [i for i, line in enumerate(text.splitlines(), 1) if needle in line]
    return hits[nth - 1]


def test_small_constitution_loads_with_version_as_text(tmp_path: Path) -> None:
    c = load_constitution(_write(tmp_path, GOOD))
    assert c.name == "tiny" and c.version == "2"
    assert [p.id for p in c.principles] == ["no_violence", "protect_privacy"]
    assert c.principle("protect_privacy").comparison_question is None
    assert c.comparison_few_shot[0].answer == "B"


def test_default_constitution_covers_every_harm_area_and_over_refusal() -> None:
    c = load_constitution()
    areas = {p.area for p in c.principles}
    assert set(HARM_AREAS) <= areas
    assert "over_refusal" in areas
    assert 14 <= len(c.principles) <= 18
    assert 3 <= len(c.few_shot) <= 8 and 2 <= len(c.comparison_few_shot) <= 3
    assert c.system_prompt
    c.require_comparison()  # every default principle is usable by the RL stage
    # one SL example revises away a needless refusal; comparison answers are not all one letter
    assert any(c.principle(ex.principle_id).area == "over_refusal" for ex in c.few_shot)
    assert {ex.answer for ex in c.comparison_few_shot} == {"A", "B"}


def test_hash_depends_on_content_not_yaml_formatting(tmp_path: Path) -> None:
    a = load_constitution(_write(tmp_path, GOOD, "a.yaml"))
    reformatted = yaml.safe_dump(yaml.safe_load(GOOD), default_flow_style=True, width=60)
    b = load_constitution(_write(tmp_path, reformatted, "b.yaml"))
    assert a.hash() == b.hash() and len(a.hash()) == 12
    changed = load_constitution(_write(tmp_path, GOOD.replace("less violent", "less cruel"), "c.yaml"))
    assert changed.hash() != a.hash()
    assert load_constitution().hash() == load_constitution().hash()


def test_missing_field_names_field_path_line_and_principle(tmp_path: Path) -> None:
    text = GOOD.replace("    critique_request: Does the answer expose private details?\n", "")
    msg = _error(tmp_path, text)
    # the line is where principle 'protect_privacy' starts, since the field itself is absent
    line = _line_of(text, "- id: protect_privacy")
    assert f":{line}: principles[1].critique_request: field required" in msg
    assert "add a critique_request to principle 'protect_privacy'" in msg


def test_wrong_value_points_at_the_line_of_that_field(tmp_path: Path) -> None:
    text = GOOD.replace("    answer: B", "    answer: C")
    msg = _error(tmp_path, text)
    assert f":{_line_of(text, 'answer: C')}: comparison_few_shot[0].answer:" in msg
    assert '"A" or "B"' in msg


def test_misspelt_field_is_rejected_at_its_line(tmp_path: Path) -> None:
    text = GOOD.replace("revision_request: Rewrite it without", "revison_request: Rewrite it without")
    msg = _error(tmp_path, text)
    assert f":{_line_of(text, 'revison_request')}: principles[1].revison_request:" in msg
    assert "not permitted" in msg.lower() and "rename it to 'revision_request'" in msg


def test_bad_yaml_reports_line_and_column(tmp_path: Path) -> None:
    text = GOOD.replace("    area: privacy\n", "    area: [privacy\n")
    msg = _error(tmp_path, text)
    assert "invalid YAML" in msg
    line = int(msg.split(":")[1])
    assert abs(line - _line_of(text, "area: [privacy")) <= 2  # yaml reports where it noticed the problem
    assert msg.split(":")[2].isdigit()  # the column


def test_duplicate_principle_id_is_reported_at_the_second_one(tmp_path: Path) -> None:
    text = GOOD.replace("id: protect_privacy", "id: no_violence")
    msg = _error(tmp_path, text)
    line = _line_of(text, "id: no_violence", 2)
    assert f":{line}: principles[1].id: duplicate principle id 'no_violence'" in msg


def test_few_shot_with_unknown_principle_is_rejected(tmp_path: Path) -> None:
    text = GOOD.replace("principle_id: no_violence", "principle_id: kindness", 1)  # the first is in few_shot
    msg = _error(tmp_path, text)
    line = _line_of(text, "principle_id: kindness")
    assert f":{line}: few_shot[0].principle_id: unknown principle 'kindness'" in msg
    assert "no_violence" in msg  # the fix lists known ids


def test_empty_principle_list_and_non_mapping_are_rejected(tmp_path: Path) -> None:
    msg = _error(tmp_path, "name: x\nversion: '1'\nprinciples: []\n")
    assert ":3: principles:" in msg and "add at least one principle" in msg
    assert "mapping" in _error(tmp_path, "- just\n- a list\n")


def test_missing_file_and_directory_give_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_constitution(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="is a directory"):
        load_constitution(tmp_path)


def test_unknown_principle_lookup_and_missing_comparison_question_raise(tmp_path: Path) -> None:
    c = load_constitution(_write(tmp_path, GOOD))
    with pytest.raises(ConfigError, match="unknown principle 'nope'"):
        c.principle("nope")
    with pytest.raises(ConfigError, match="protect_privacy have no comparison_question"):
        c.require_comparison()


def test_direct_construction_runs_the_same_cross_checks() -> None:
    data = yaml.safe_load(GOOD)
    data["principles"][1]["id"] = "no_violence"
    with pytest.raises(ValueError, match="duplicate principle id"):
        Constitution.model_validate(data)


def test_sample_principles_is_reproducible_with_a_seed_and_varies_with_it() -> None:
    c = load_constitution()
    draw = [p.id for p in c.sample_principles(random.Random(7), 5)]
    assert draw == [p.id for p in c.sample_principles(random.Random(7), 5)]
    seqs = {tuple(p.id for p in c.sample_principles(random.Random(seed), 5)) for seed in range(10)}
    assert len(seqs) >= 9


def test_sample_principles_draws_without_replacement_until_exhausted() -> None:
    c = load_constitution()
    n = len(c.principles)
    assert len({p.id for p in c.sample_principles(random.Random(1), n)}) == n
    for seed in range(20):
        ids = [p.id for p in c.sample_principles(random.Random(seed), 2 * n + 3)]
        assert len(set(ids[:n])) == n and len(set(ids[n:2 * n])) == n
        assert all(a != b for a, b in zip(ids, ids[1:], strict=False))  # no repeat at a cycle boundary
    one = parse_constitution("name: one\nversion: '1'\nprinciples:\n  - id: only\n    area: general\n"
                             "    critique_request: c\n    revision_request: r\n")
    assert [p.id for p in one.sample_principles(random.Random(0), 3)] == ["only"] * 3


def test_summary_lists_name_hash_counts_and_areas() -> None:
    c = load_constitution()
    text = summary(c)
    assert c.name in text and c.hash() in text and f"{len(c.principles)} principles" in text
    assert "over_refusal: no_needless_refusal" in text


def test_cli_check_prints_summary_for_a_good_file(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["constitution", "check", str(_write(tmp_path, GOOD))])
    assert result.exit_code == 0, result.output
    c = load_constitution(tmp_path / "c.yaml")
    assert "constitution tiny v2" in result.stdout and c.hash() in result.stdout
    assert "no comparison_question for protect_privacy" in result.stdout


def test_cli_check_bad_file_fails_with_one_line(tmp_path: Path) -> None:
    path = _write(tmp_path, GOOD.replace("id: protect_privacy", "id: no_violence"))
    result = CliRunner().invoke(cli, ["constitution", "check", str(path)])
    assert result.exit_code != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}:") and "duplicate principle id" in lines[0]
    assert result.stdout == ""
