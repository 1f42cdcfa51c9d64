"""The records of an audit (``audit.json``): a finding per check, with its count, line numbers and examples."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class AuditConfig(BaseModel):
    """What the audit looks for and how strict it is (``audit:`` in a run config; flags of ``charter audit``)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(default=False, description="`charter run`: audit the prompt files before the critique "
                                                     "stage, write RUN/audit.json and print warnings (never drops).")
    near_threshold: float = Field(default=0.7, ge=0.0, le=1.0,
                                  description="Exact Jaccard similarity of 3-token shingles at which two records "
                                              "are near-duplicates.")
    shingle: int = Field(default=3, ge=1, description="Tokens per shingle (a Han/kana/Thai character is a token).")
    boilerplate_share: float = Field(default=0.3, gt=0.0, le=1.0,
                                     description="A prefix/suffix is boilerplate when at least this share of the "
                                                 "distinct paragraphs carry it.")
    boilerplate_min_chars: int = Field(default=10, ge=2, description="Shortest prefix/suffix reported.")
    min_count: int = Field(default=3, ge=2, description="Fewest paragraphs (or records) a pattern must recur in.")
    ngram: int = Field(default=13, ge=3, description="Contamination: tokens per n-gram shared with a training "
                                                     "text (13, as in GPT-3's contamination study).")
    norm_z: float = Field(default=3.0, gt=0.0, description="Tokenizer: a token is under-trained when its embedding "
                                                           "row's under-training indicator lies this many robust SDs "
                                                           "beyond the median (charter.audit.tokenizer).")
    max_examples: int = Field(default=5, ge=1, description="Examples kept per finding.")
    max_tokens: int = Field(default=15, ge=1, description="Tokenizer: longest tokens listed per script.")


class Example(BaseModel):
    """One place a finding was seen."""

    model_config = ConfigDict(extra="forbid")

    file: str
    line: int = Field(description="The file's real line number (1-based).")
    text: str = Field(description="A one-line snippet of what was found.")
    detail: dict[str, Any] = Field(default_factory=dict, description="Check-specific facts (e.g. 'same_as').")


class Finding(BaseModel):
    """What one check found in one file (or between two files, for contamination)."""

    model_config = ConfigDict(extra="forbid")

    check: str = Field(description="exact_duplicates, near_duplicates, boilerplate, spam, encoding, "
                                   "mixed_script_words, script_mix, template_tokens, answer_leaks, contamination.")
    title: str = Field(description="One line a person reads.")
    count: int = Field(description="Records affected (0 = the check ran and found nothing).")
    lines: list[int] = Field(default_factory=list, description="Every affected line number.")
    examples: list[Example] = Field(default_factory=list)
    detail: dict[str, Any] = Field(default_factory=dict, description="Check-specific totals.")


class FileAudit(BaseModel):
    """The audit of one file."""

    model_config = ConfigDict(extra="forbid")

    path: str
    kind: str = Field(description="'prompt', 'sft' or 'preference'.")
    records: int
    skipped: list[tuple[int, str]] = Field(default_factory=list, description="(line, why) of lines with no record.")
    scripts: dict[str, int] = Field(default_factory=dict, description="Records by dominant script of their letters.")
    findings: list[Finding] = Field(default_factory=list)
