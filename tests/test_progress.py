"""Long phases show progress with an ETA on stderr (tqdm): a line per update in a log, cached items not in the rate."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from charter.backends.base import GenParams, GenRequest
from charter.backends.mock import MockBackend
from charter.progress import ProgressPrinter
from charter.store import CachedBackend, CallCache

LINE = re.compile(r"^\[sample\] answers: (\d+)/12 \((\d+)%\) \[(\d\d:\d\d)<(\d\d:\d\d|\?), .*\]$")


def test_a_slow_phase_prints_progress_with_an_eta(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    reqs = [GenRequest.of([{"role": "user", "content": f"question {i}"}], GenParams(seed=i)) for i in range(12)]
    cache = CallCache(tmp_path / "calls.sqlite")
    CachedBackend(MockBackend(), cache).generate(reqs[:4])  # 4 already answered
    slow = CachedBackend(MockBackend(delay=0.25), cache, batch_size=2)
    slow.generate(reqs, progress=ProgressPrinter("sample", "answers", every=0))
    lines = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    parsed = [LINE.match(x) for x in lines]
    assert all(parsed), lines  # one readable line per update, no carriage returns
    done = [int(m.group(1)) for m in parsed if m]
    assert done[0] == 4 and done[-1] == 12 and done == sorted(done) and len(done) >= 4
    assert "4 cached" in lines[0]
    midway = [m for m in parsed if m and int(m.group(1)) < 12 and m.group(4) != "?"]
    assert midway and any(m.group(4) != "00:00" for m in midway)  # a real ETA while the phase runs


def test_quiet_prints_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    p = ProgressPrinter("x", "y", quiet=True)
    p(0, 3)
    p(3, 3)
    assert capsys.readouterr().err == ""
