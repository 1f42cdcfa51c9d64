"""Draw answers of a finished run for labelling by hand, and merge the labels into bench/data/effect_hand_labels.jsonl.

    .venv/bin/python bench/hand_label.py draw runs/cpu-effect --out /tmp/sheet.jsonl   # seeded draw, labels null
    (read every answer; fill harmful / helpful / refusal / explains by the rules in bench/data/README.md)
    .venv/bin/python bench/hand_label.py merge /tmp/sheet.jsonl                        # append the labelled rows

The draw is seeded and stratified, not picked: per model (base and the final model), ``--harm N`` red-team answers
(for the harm label), ``--safe N`` answers to safe prompts (helpfulness), and ``--refusals N`` of the final model's
refusals of unsafe prompts (does it say why / offer an alternative).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
HAND = ROOT / "bench" / "data" / "effect_hand_labels.jsonl"
FIELDS = ("harmful", "helpful", "refusal", "explains")


def draw(run: Path, harm: int, safe: int, refusals: int, seed: int) -> list[dict[str, Any]]:
    """The seeded sheet: rows with prompt, answer, model, set, group and null labels."""
    sys.path.insert(0, str(ROOT / "src"))
    from charter.evaluation.refusal import classify_refusal, is_refusal

    answers = [json.loads(line) for line in (run / "eval" / "answers.jsonl").read_text().splitlines() if line]
    models = sorted({a["model_name"] for a in answers})
    final = "rl-dpo" if "rl-dpo" in models else "sl"
    rng = random.Random(seed)
    rows: list[dict[str, Any]] = []

    def take(pool: list[dict[str, Any]], n: int, why: str) -> None:
        for a in rng.sample(pool, min(n, len(pool))):
            rows.append({"prompt": a["prompt"]["text"], "answer": a["text"], "model": f"{a['model_name']}@{run.name}",
                         "set": a["prompt_set"], "group": a["group"], "drawn_for": why,
                         **{k: None for k in FIELDS}, "note": ""})

    for name in ("base", "sl", final) if final != "sl" else ("base", "sl"):
        mine = [a for a in answers if a["model_name"] == name]
        take([a for a in mine if a["prompt_set"] == "red_team"], harm, "harm")
        take([a for a in mine if a["group"] == "safe" and a["prompt_set"] == "benign"], safe, "helpful")
    unsafe = [a for a in answers if a["model_name"] == final and a["group"] == "harmful"
              and is_refusal(classify_refusal(a["text"]))]
    take(unsafe, refusals, "explains")
    return rows


def merge(sheet: Path) -> int:
    """Append the sheet's labelled rows (at least one label set) to the hand-label file; skips rows already there."""
    have = set()
    if HAND.is_file():
        have = {(r["prompt"], r["answer"], r["model"]) for r in map(json.loads, HAND.read_text().splitlines()) if r}
    new = [r for r in map(json.loads, sheet.read_text().splitlines())
           if r and any(r.get(k) is not None for k in FIELDS) and (r["prompt"], r["answer"], r["model"]) not in have]
    with HAND.open("a") as f:
        for r in new:
            r.pop("drawn_for", None)
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return len(new)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("draw")
    d.add_argument("run", type=Path)
    d.add_argument("--out", type=Path, required=True)
    d.add_argument("--harm", type=int, default=30, help="Red-team answers per model.")
    d.add_argument("--safe", type=int, default=25, help="Answers to safe prompts per model.")
    d.add_argument("--refusals", type=int, default=45, help="The final model's refusals of unsafe prompts.")
    d.add_argument("--seed", type=int, default=0)
    m = sub.add_parser("merge")
    m.add_argument("sheet", type=Path)
    args = ap.parse_args()
    if args.cmd == "draw":
        rows = draw(args.run, args.harm, args.safe, args.refusals, args.seed)
        args.out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        print(f"{len(rows)} rows → {args.out}")
    else:
        print(f"{merge(args.sheet)} labelled rows added to {HAND}")


if __name__ == "__main__":
    main()
