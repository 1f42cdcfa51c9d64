"""The oversight sweep end to end on CPU in seconds: no ground-truth leak, judges, resume, CLI, and the report."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from charter.backends.base import ScoreRequest
from charter.oversight.finetune import FinetuneConfig
from charter.oversight.heads import HeadConfig
from charter.oversight.sweep import OversightConfig, partition, run_oversight
from charter.oversight.tasks import NEGATIVE, POSITIVE, Task, TaskConfig, load_task, sentiment
from charter.report.report import build_report
from charter.store import CachedBackend, CallCache


def _quiet(_: str) -> None:
    pass


def _cfg(tmp: Path, strong: list[str], **kw: Any) -> OversightConfig:
    base: dict[str, Any] = {"weak": ["bow"], "strong": strong, "losses": ["xent", "logconf"], "seeds": [0],
                            "head": HeadConfig(epochs=8), "bootstrap_rounds": 200,
                            "finetune": FinetuneConfig(max_train=16, batch_size=4, max_tokens=24, eval_every=2),
                            "feature_cache": str(tmp / "features")}
    base.update(kw)
    return OversightConfig(**base)


def _rows(out: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (out / "oversight" / "results.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def small_task() -> Task:
    return load_task(TaskConfig(kind="sentiment", n=160, difficulty=0.25))


def test_tiny_sweep_writes_every_run_and_the_report(tmp_path: Path, small_task: Task, tiny_model_dir: Path) -> None:
    strong = [f"probe:{tiny_model_dir}", f"finetune:{tiny_model_dir}"]
    cfg = _cfg(tmp_path, strong, weak=["bow", "vote(bow,bow)"])
    result = run_oversight(cfg, tmp_path / "run", log=_quiet, tasks=[small_task])
    rows = _rows(tmp_path / "run")
    assert result["runs"] == len(rows) == 2 * 2 * 2  # weak × strong × loss × 1 seed
    for r in rows:
        for k in ("weak", "ceiling", "student"):
            assert 0 <= r[f"{k}_acc"] <= 1 and len(r["correct"][k]) == r["n_test"]
            assert r[f"{k}_acc"] == pytest.approx(r["correct"][k].count("1") / r["n_test"])
        assert 0 <= r["misfit"] <= 1 and r["n_student"] + r["n_val"] + r["n_weak"] == small_task.info["train"]
    summary = json.loads((tmp_path / "run" / "oversight" / "summary.json").read_text())
    assert {c["loss"] for c in summary["cells"]} == {"xent", "logconf"}
    html = build_report(tmp_path / "run").read_text()
    assert 'id="oversight"' in html and "PGR" in html and "synthetic task" in html


def test_no_ground_truth_reaches_the_student(tmp_path: Path, small_task: Task, tiny_model_dir: Path) -> None:
    """Poison the ground truth of the student's and the validation part: weak labels and students are unchanged,
    the ceiling (which is meant to see it) changes."""
    strong = ["minilm?", f"probe:{tiny_model_dir}", f"finetune:{tiny_model_dir}"]
    cfg = _cfg(tmp_path, strong, losses=["xent", "logconf", "product"])
    parts = partition(small_task, 0, cfg.weak_fraction, cfg.val_fraction)
    flip = {small_task.items[i].id: 1 - small_task.items[i].label for i in parts["student"] + parts["val"]}
    poisoned = small_task.with_labels(flip)
    run_oversight(cfg, tmp_path / "clean", log=_quiet, tasks=[small_task])
    run_oversight(cfg, tmp_path / "poisoned", log=_quiet, tasks=[poisoned])
    clean, bad = _rows(tmp_path / "clean"), _rows(tmp_path / "poisoned")
    assert len(clean) == len(bad) >= 6
    for a, b in zip(clean, bad, strict=True):
        assert (a["weak"], a["strong"], a["loss"]) == (b["weak"], b["strong"], b["loss"])
        assert a["correct"]["weak"] == b["correct"]["weak"]
        assert a["correct"]["student"] == b["correct"]["student"], (a["strong"], a["loss"])
        assert a["misfit"] == b["misfit"]
    # the poison was real: the ceiling trains and chooses its checkpoint on that ground truth
    assert any(a["correct"]["ceiling"] != b["correct"]["ceiling"] for a, b in zip(clean, bad, strict=True))


def _words_judge(req: ScoreRequest) -> dict[str, float]:
    """A rule-based 'model': says positive when the review's adjective is positive — blind to negation."""
    text = req.messages[-1]["content"]
    body = text.split("Text: ", 1)[1].split("\n", 1)[0].lower()
    positive = any(w in body.split() or w + "." in body.split() for w in POSITIVE)
    negative = any(w in body.split() or w + "." in body.split() for w in NEGATIVE)
    yes_first = "(A) Yes" in text
    says_yes = 0.9 if positive and not negative else 0.1
    p_a = says_yes if yes_first else 1 - says_yes
    return {"A": p_a, "B": 1 - p_a}


def test_a_judge_is_a_weak_supervisor_through_the_call_cache(tmp_path: Path, tiny_model_dir: Path) -> None:
    from charter.backends.mock import MockBackend

    task = sentiment(160, negation=0.3)
    mock = MockBackend("mock/words", score_rule=_words_judge)
    cache = CallCache(tmp_path / "run" / "calls.sqlite")
    cfg = _cfg(tmp_path, [f"probe:{tiny_model_dir}"], weak=["judge:mock/words", "mean(bow,judge:mock/words)"])
    run_oversight(cfg, tmp_path / "run", backend=lambda spec: CachedBackend(mock, cache), log=_quiet, tasks=[task])
    rows = {(r["weak"], r["loss"]): r for r in _rows(tmp_path / "run")}
    judge = rows[("judge:mock/words", "xent")]
    # blind to negation: right on the plain reviews, wrong on the negated ones → about 70% on the test items
    negated = [any(w in it.text for w in (" not ", " never ", "Nobody")) for it in task.items if it.part == "test"]
    assert judge["weak_acc"] == pytest.approx(1 - sum(negated) / len(negated))
    calls = len(mock.calls)
    assert calls == 2 * len(task.items)  # both option orders, once
    summary = json.loads((tmp_path / "run" / "oversight" / "summary.json").read_text())
    assert summary["judges"]["sentiment/judge:mock/words"]["position_bias"] == pytest.approx(0.0, abs=1e-6)
    # a second sweep (new journal) asks the judge nothing: every verdict is in the run's call cache
    shutil.rmtree(tmp_path / "run" / "oversight")
    run_oversight(cfg, tmp_path / "run", backend=lambda spec: CachedBackend(mock, cache), log=_quiet, tasks=[task])
    assert len(mock.calls) == calls


def test_a_judge_with_position_bias_gives_no_signal_when_both_orders_are_read(tmp_path: Path,
                                                                              tiny_model_dir: Path) -> None:
    from charter.backends.mock import MockBackend

    mock = MockBackend.from_spec("mock/echo?bias=0.9")
    cache = CallCache(tmp_path / "calls.sqlite")
    cfg = _cfg(tmp_path, [f"probe:{tiny_model_dir}"], weak=["judge:mock/echo?bias=0.9"], losses=["xent"])
    run_oversight(cfg, tmp_path / "run", backend=lambda spec: CachedBackend(mock, cache), log=_quiet,
                  tasks=[sentiment(100)])
    summary = json.loads((tmp_path / "run" / "oversight" / "summary.json").read_text())
    stats = summary["judges"]["sentiment/judge:mock/echo?bias=0.9"]
    assert stats["position_bias"] == pytest.approx(0.4)
    # P(yes) = (0.9 + 0.1) / 2 = 0.5 for every item: an honest "don't know", so its hard verdict is 'no' (≤ 0.5)
    row = _rows(tmp_path / "run")[0]
    test_labels = [it.label for it in sentiment(100).items if it.part == "test"]
    assert row["weak_acc"] == pytest.approx(1 - sum(test_labels) / len(test_labels))


def test_a_killed_sweep_resumes_from_its_journal(tmp_path: Path, small_task: Task, tiny_model_dir: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from charter.oversight import models

    cfg = _cfg(tmp_path, [f"probe:{tiny_model_dir}"], seeds=[0, 1])
    real = models.Lab.fit_predict
    calls: list[int] = []

    def dying(self: Any, *a: Any, **k: Any) -> Any:
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(self, *a, **k)

    monkeypatch.setattr(models.Lab, "fit_predict", dying)
    with pytest.raises(KeyboardInterrupt):
        run_oversight(cfg, tmp_path / "run", log=_quiet, tasks=[small_task])
    assert not (tmp_path / "run" / "oversight" / "results.jsonl").exists()
    done = len((tmp_path / "run" / "oversight" / "journal.jsonl").read_text().splitlines())
    assert done == 3
    calls.clear()
    monkeypatch.setattr(models.Lab, "fit_predict", lambda self, *a, **k: (calls.append(1), real(self, *a, **k))[1])
    run_oversight(cfg, tmp_path / "run", log=_quiet, tasks=[small_task])
    # per seed: weak + ceiling + 2 students = 4 fits; 3 were done before the kill
    assert len(calls) == 2 * 4 - 3
    assert len(_rows(tmp_path / "run")) == 2 * 2


def test_cli_runs_a_config_and_reports_bad_fields(tmp_path: Path, tiny_model_dir: Path) -> None:
    from charter.cli import cli

    config = tmp_path / "o.yaml"
    config.write_text(f"""
tasks: [{{kind: sentiment, n: 120}}]
weak: [bow]
strong: ["probe:{tiny_model_dir}", "probe:/no/such/model?"]
losses: [xent]
seeds: [0]
bootstrap_rounds: 200
feature_cache: {tmp_path / 'features'}
""")
    res = CliRunner().invoke(cli, ["oversight", str(config), "--out", str(tmp_path / "run"), "--set", "head.epochs=3"])
    assert res.exit_code == 0, res.output
    assert "1 runs, 1 cells" in res.output and (tmp_path / "run" / "report.html").is_file()
    assert "skipping probe:/no/such/model" in res.output
    summary = json.loads((tmp_path / "run" / "oversight" / "summary.json").read_text())
    assert summary["skipped"][0]["model"] == "probe:/no/such/model"
    html = (tmp_path / "run" / "report.html").read_text()
    assert "Skipped <code>probe:/no/such/model</code>" in html
    for args, msg in ((["--set", "losses=[hinge]"], "losses"), (["--set", "weak=[svm]"], "unknown model"),
                      (["--set", "strong=[probe:/nope]"], "not found")):
        res = CliRunner().invoke(cli, ["oversight", str(config), "--out", str(tmp_path / "bad"), *args])
        assert res.exit_code == 2 and msg in res.output and "Traceback" not in res.output, res.output


def test_stage_function_runs_inside_a_session(tmp_path: Path, tiny_model_dir: Path) -> None:
    """What `charter run` calls once the lead registers the stage: the config from the run, the run's backends."""
    from charter.oversight.sweep import stage_oversight
    from charter.store import RunDir

    class _Cfg:
        threads = 1

        def stage(self, name: str) -> OversightConfig:
            assert name == "oversight"
            return _cfg(tmp_path, [f"probe:{tiny_model_dir}"], tasks=[TaskConfig(kind="sentiment", n=100)],
                        losses=["xent"])

    class _Session:
        cfg = _Cfg()
        run = RunDir(tmp_path / "run")

        def log(self, text: str) -> None:
            pass

        def backend(self, mc: Any) -> Any:
            raise AssertionError("no judge in this config")

    out = stage_oversight(_Session())
    assert out["runs"] == 1 and Path(out["results"]).is_file()


def test_report_draws_the_pgr_plots_in_chromium(tmp_path: Path, small_task: Task, tiny_model_dir: Path) -> None:
    import test_report as tr

    if not (shutil.which("chromium") or shutil.which("chromium-browser")):
        pytest.skip("chromium is not installed (apt-get install -y chromium; `make test` does it)")
    pytest.importorskip("websocket", reason="websocket-client is in the dev extra")
    cfg = _cfg(tmp_path, [f"probe:{tiny_model_dir}"], weak=["bow", "mean(bow,bow)"], seeds=[0, 1])
    run_oversight(cfg, tmp_path / "run", log=_quiet, tasks=[small_task])
    # two hand-made cells beside the real ones: one with a clear gap, one with none (shown, not plotted)
    rows = _rows(tmp_path / "run")
    n = rows[0]["n_test"]

    def bits(k: int) -> str:
        return "1" * k + "0" * (n - k)

    for seed in (0, 1):
        for weak, (w, c, s) in (("hand-gap", (n // 2, n - 2, 3 * n // 4)), ("hand-none", (n // 2, n // 2, n // 2))):
            for loss in ("xent", "logconf"):
                rows.append({**rows[0], "weak": weak, "loss": loss, "seed": seed, "weak_acc": w / n,
                             "ceiling_acc": c / n, "student_acc": s / n,
                             "correct": {"weak": bits(w), "ceiling": bits(c), "student": bits(s)}})
    (tmp_path / "run" / "oversight" / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = build_report(tmp_path / "run")
    b = tr.Chromium()
    try:
        for domain in ("Page", "Runtime", "Log"):
            b.send(f"{domain}.enable")
        b.send("Emulation.setDeviceMetricsOverride", width=1280, height=1000, deviceScaleFactor=1, mobile=False)
        b.send("Page.navigate", url=report.resolve().as_uri())
        b.wait("Page.loadEventFired")
        boxes = b.js("""Array.from(document.querySelectorAll('svg.chart')).map(e => {
            const r = e.getBoundingClientRect();
            return {name: e.dataset.chart, x: r.x + scrollX, y: r.y + scrollY, w: r.width, h: r.height,
                    marks: e.querySelectorAll('.mark').length}; })""")
        assert sorted(x["name"] for x in boxes) == ["pgr-logconf", "pgr-xent"]
        for box in boxes:
            assert box["w"] > 300 and box["h"] > 60 and box["marks"] >= 2, box
            w, h, pixels = tr.decode_png(b.screenshot(box["x"], box["y"], box["w"], box["h"], scale=0.5))
            assert sum(1 for p in pixels if min(p) < 235) / (w * h) > 0.01, box["name"]
            assert any(tr._near(p, (0x00, 0x72, 0xB2)) for p in pixels)  # the strong model's colour
        text = b.js("document.getElementById('oversight').innerText")
        assert "hand-none" in text and "undefined" in text and "gap ≤ 0: excluded" in text
        assert "hand-gap" in text
        assert b.problems() == []
        full = b.js("document.documentElement.scrollHeight")
        shot = Path(os.environ.get("CHARTER_SHOT_DIR", tmp_path)) / "oversight.png"
        shot.write_bytes(b.screenshot(0, 0, 1280, min(full, 5000), scale=0.5))
    finally:
        b.close()
