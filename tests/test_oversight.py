"""The oversight lab's pieces on hand-made numbers: losses, PGR and its bootstrap, tasks and splits, specs."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from charter.errors import ConfigError
from charter.oversight.heads import HeadConfig, auroc, train_head
from charter.oversight.losses import LossSpec, logconf_coef, loss_value
from charter.oversight.models import parse_spec
from charter.oversight.stats import cells, nested_bootstrap, pgr, summary
from charter.oversight.tasks import TaskConfig, arithmetic, load_task, sentiment, user_file


def _bce(p: float, t: float) -> float:
    return -(t * math.log(p) + (1 - t) * math.log(1 - p))


def _loss(name: str, p1: list[float], t: list[float], step_frac: float = 0.5, **kw: float) -> float:
    import torch

    z = torch.tensor([math.log(p / (1 - p)) for p in p1])
    return float(loss_value(LossSpec(name, **kw), z, torch.tensor(t), step_frac))  # type: ignore[arg-type]


# --- losses on hand-computed batches ------------------------------------------------------------------------------

def test_xent_is_cross_entropy_to_the_soft_weak_labels() -> None:
    # p = 0.5 vs t = 1; p = 0.75 vs t = 0.25
    expected = (math.log(2) + (0.25 * -math.log(0.75) + 0.75 * -math.log(0.25))) / 2
    assert _loss("xent", [0.5, 0.75], [1.0, 0.25]) == pytest.approx(expected, abs=1e-6)
    assert expected == pytest.approx(0.902394, abs=1e-6)


def test_product_targets_are_student_times_weak_renormalised() -> None:
    # item 1: 0.5·1 / (0.5·1 + 0.5·0) = 1; item 2: 0.75·0.25 / (0.75·0.25 + 0.25·0.75) = 0.5
    expected = (_bce(0.5, 1.0) + _bce(0.75, 0.5)) / 2
    assert _loss("product", [0.5, 0.75], [1.0, 0.25], alpha=1.0, beta=1.0) == pytest.approx(expected, abs=1e-6)
    assert expected == pytest.approx(0.765068, abs=1e-6)


def test_logconf_mixes_weak_labels_with_hardened_student_predictions() -> None:
    p1, t = [0.5, 0.75, 0.25, 0.9], [1.0, 0.25, 0.0, 0.75]
    # weak class-1 share 0.5; P(class 0) = [.5, .25, .75, .1], its median (linear) 0.375 → hardened class 1 where
    # P(class 0) < 0.375: items 2 and 4. At 10% of training with a 20% warm-up, c = 0.5 · 0.1/0.2 = 0.25.
    hard = [0.0, 1.0, 0.0, 1.0]
    targets = [ti * 0.75 + hi * 0.25 for ti, hi in zip(t, hard, strict=True)]
    expected = sum(_bce(p, y) for p, y in zip(p1, targets, strict=True)) / 4
    assert _loss("logconf", p1, t, step_frac=0.1, alpha=0.5, warmup=0.2) == pytest.approx(expected, abs=1e-6)
    # after warm-up, c = alpha = 0.5
    targets = [ti * 0.5 + hi * 0.5 for ti, hi in zip(t, hard, strict=True)]
    expected = sum(_bce(p, y) for p, y in zip(p1, targets, strict=True)) / 4
    assert _loss("logconf", p1, t, step_frac=0.9, alpha=0.5, warmup=0.2) == pytest.approx(expected, abs=1e-6)


def test_logconf_weight_ramps_linearly_instead_of_jumping() -> None:
    spec = LossSpec("logconf", alpha=0.5, warmup=0.2)
    assert [logconf_coef(spec, f) for f in (0.0, 0.05, 0.1, 0.2, 0.6)] == pytest.approx([0, 0.125, 0.25, 0.5, 0.5])
    # the anchor would be at 0.5 · 0.1 = 0.05 at 10% (then jump to 0.5): the ramp is continuous
    assert logconf_coef(spec, 0.199) == pytest.approx(0.4975)


# --- PGR and its bootstrap on hand-made accuracies ----------------------------------------------------------------

def test_pgr_is_the_share_of_the_gap_recovered() -> None:
    assert pgr(0.6, 0.8, 0.7) == pytest.approx(0.5)
    assert pgr(0.6, 0.8, 0.9) == pytest.approx(1.5)
    assert pgr(0.6, 0.8, 0.5) == pytest.approx(-0.5)
    assert pgr(0.7, 0.7, 0.9) is None and pgr(0.7, 0.6, 0.9) is None


def _bits(k: int, n: int, offset: int = 0) -> list[bool]:
    return [((i + offset) % n) < k for i in range(n)]


def test_bootstrap_is_exact_when_the_student_copies_ceiling_or_weak_item_by_item() -> None:
    weak = [_bits(60, 100), _bits(55, 100)]
    ceiling = [_bits(80, 100), _bits(85, 100)]
    assert nested_bootstrap(weak, ceiling, ceiling, rounds=300)["pgr_ci"] == pytest.approx([1.0, 1.0])
    assert nested_bootstrap(weak, ceiling, weak, rounds=300)["pgr_ci"] == pytest.approx([0.0, 0.0])


def test_bootstrap_interval_covers_the_point_and_narrows_with_more_items() -> None:
    import random

    def run(n: int) -> tuple[float, float]:
        rng = random.Random(n)
        weak, ceil, stud = ([[rng.random() < p for _ in range(n)] for _ in range(3)] for p in (0.6, 0.8, 0.7))
        ci = nested_bootstrap(weak, ceil, stud, rounds=1000)["pgr_ci"]
        assert ci is not None
        return ci[0], ci[1]

    small, large = run(60), run(1500)
    assert small[0] < 0.5 < small[1] and large[0] < 0.5 < large[1]
    assert (large[1] - large[0]) < (small[1] - small[0]) / 2


def test_bootstrap_outer_level_counts_seed_to_seed_variation() -> None:
    weak = [_bits(60, 200)] * 3
    ceil = [_bits(80, 200)] * 3
    steady = [_bits(70, 200)] * 3  # every seed recovers half the gap
    shaky = [_bits(62, 200), _bits(70, 200), _bits(78, 200)]  # same mean, different seeds
    w_steady = nested_bootstrap(weak, ceil, steady, rounds=1500)["pgr_ci"]
    w_shaky = nested_bootstrap(weak, ceil, shaky, rounds=1500)["pgr_ci"]
    assert w_steady and w_shaky
    assert (w_shaky[1] - w_shaky[0]) > (w_steady[1] - w_steady[0]) * 1.3


def _row(task: str, weak: str, loss: str, seed: int, w: int, c: int, s: int, n: int = 100) -> dict[str, object]:
    return {"task": task, "weak": weak, "strong": "big", "loss": loss, "seed": seed, "n_test": n,
            "weak_acc": w / n, "ceiling_acc": c / n, "student_acc": s / n, "misfit": 0.1,
            "weak_auroc": None, "ceiling_auroc": None, "student_auroc": None,
            "correct": {"weak": "".join("1" if b else "0" for b in _bits(w, n)),
                        "ceiling": "".join("1" if b else "0" for b in _bits(c, n)),
                        "student": "".join("1" if b else "0" for b in _bits(s, n))}}


def test_cells_warn_on_small_gaps_and_summaries_leave_out_gap_le_zero() -> None:
    rows = [_row("t", "good", "xent", k, 60, 80, 70) for k in range(3)]
    rows += [_row("t", "tiny", "xent", k, 70, 72, 71) for k in range(3)]
    rows += [_row("t", "none", "xent", k, 75, 74, 90) for k in range(3)]
    by = {c["weak"]: c for c in cells(rows, min_gap=0.05, rounds=300)}
    assert by["good"]["pgr"] == pytest.approx(0.5) and by["good"]["warnings"] == []
    assert by["tiny"]["pgr"] == pytest.approx(0.5) and any("below 5" in w for w in by["tiny"]["warnings"])
    assert by["none"]["pgr"] is None and not by["none"]["in_summary"]
    assert any("undefined" in w for w in by["none"]["warnings"])
    s = summary(list(by.values()), min_gap=0.05)["xent"]
    assert s["cells"] == 2 and s["median_pgr"] == pytest.approx(0.5)
    assert s["cells_large_gap"] == 1 and s["median_pgr_large_gap"] == pytest.approx(0.5)


def test_auroc_matches_hand_counts() -> None:
    # positives at scores .9 and .4, negatives at .5 and .1: of 4 pairs, 3 ranked right
    assert auroc([1, 0, 1, 0], [0.9, 0.5, 0.4, 0.1]) == pytest.approx(0.75)
    assert auroc([1, 0], [0.5, 0.5]) == pytest.approx(0.5)
    assert auroc([1, 1], [0.2, 0.3]) is None


# --- heads ---------------------------------------------------------------------------------------------------------

def test_head_checkpoint_is_chosen_on_the_validation_targets_it_is_given() -> None:
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 5)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.float32)
    xv = rng.normal(size=(80, 5)).astype(np.float32)
    head = train_head(x, y, xv, (xv[:, 0] > 0).astype(np.float32), LossSpec("xent"), HeadConfig(epochs=20), seed=0)
    assert ((head.logits(xv) > 0) == (xv[:, 0] > 0)).mean() > 0.9
    # the same training with validation targets that disagree with it: the least-trained epoch wins
    flipped = train_head(x, y, xv, (xv[:, 0] <= 0).astype(np.float32), LossSpec("xent"), HeadConfig(epochs=20),
                         seed=0)
    assert flipped.epoch == 1 and head.epoch > 1


def test_pair_head_is_antisymmetric() -> None:
    import numpy as np

    rng = np.random.default_rng(1)
    d = rng.normal(size=(100, 4)).astype(np.float32)
    y = (d[:, 0] > 0).astype(np.float32)
    head = train_head(d, y, d, y, LossSpec("xent"), HeadConfig(epochs=3), seed=0, bias=False)
    assert np.allclose(head.logits(d), -head.logits(-d), atol=1e-5)


# --- tasks and specs -----------------------------------------------------------------------------------------------

def test_synthetic_tasks_have_exact_labels() -> None:
    task = sentiment(300, negation=0.5)
    from charter.oversight.tasks import NEGATIVE, POSITIVE

    for it in task.items:
        word = it.text.rstrip(".").split()[-1] if not it.text.endswith("at all.") else it.text.split()[-3]
        negated = any(w in it.text for w in (" not ", " never ", "Nobody"))
        assert word in POSITIVE + NEGATIVE
        assert it.label == int((word in POSITIVE) != negated), it.text
    for it in arithmetic(200).items:
        lhs, c = it.text.split(" = ")
        a, b = map(int, lhs.split(" + "))
        assert it.label == int(a + b == int(c))
    assert task.info["synthetic"] and {it.part for it in task.items} == {"train", "test"}


def test_shared_data_tasks_use_charter_splits(shared_data: Path) -> None:
    from charter.prompts import load_prompts
    from charter.splits import assign

    xs = load_task(TaskConfig(kind="xstest"), shared_data)
    prompts = load_prompts(shared_data / "xstest_dev.csv").prompts
    parts = assign(prompts, shared_data / "xstest_dev.csv")
    by_text = {p.text: ("test" if parts[p.id] == "eval" else "train") for p in prompts}
    assert all(by_text[it.text] == it.part for it in xs.items)
    hh = load_task(TaskConfig(kind="hh", max_train=50, max_test=20), shared_data)
    assert hh.kind == "pair" and hh.info["train"] == 50 and hh.info["test"] == 20
    assert 0.3 < sum(it.label for it in hh.items) / len(hh.items) < 0.7  # chosen shown as A by a coin


def test_user_files_of_both_shapes(tmp_path: Path) -> None:
    texts = tmp_path / "t.csv"
    texts.write_text("text,label\n" + "".join(f"item number {i},{i % 2}\n" for i in range(40)))
    t = user_file(texts)
    assert t.kind == "text" and sorted({it.label for it in t.items}) == [0, 1]
    pairs = tmp_path / "p.jsonl"
    pairs.write_text("".join(f'{{"prompt": "q{i}", "chosen": "good {i}", "rejected": "bad {i}"}}\n'
                             for i in range(30)))
    p = user_file(pairs)
    for it in p.items:
        assert (it.a.startswith("good")) == bool(it.label)
    bad = tmp_path / "bad.csv"
    bad.write_text("text,label\nhello,maybe\n")
    with pytest.raises(ConfigError, match="0/1"):
        user_file(bad)


def test_model_specs_parse_and_reject_nonsense() -> None:
    s = parse_spec("mean(bow, vote(minilm, judge:mock/echo), probe:transformers/embedded)?")
    assert s.kind == "mean" and s.optional and [m.kind for m in s.members] == ["bow", "vote", "probe"]
    assert s.members[2].target == "embedded" and s.members[1].members[1].target == "mock/echo"
    assert not parse_spec("judge:mock/echo").trainable and parse_spec("vote(bow,judge:mock/echo)").trainable
    for bad in ("svm", "probe:", "mean(bow)"):
        with pytest.raises(ConfigError):
            parse_spec(bad)
