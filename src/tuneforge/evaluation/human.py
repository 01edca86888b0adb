"""Human A/B evaluation: blind sheets out; ratings in → win/tie/loss with CIs, agreement, preference data.

`export` writes one sheet per rater (CSV and JSONL, the same rows) with the two answers in random order per
row and per rater; which side is the tuned model is kept in key.json beside, never in a sheet.
`import_ratings` reads filled sheets back, checks every row against the key, and writes the results and a
preference dataset (prompt / chosen / rejected) through the data stage, ready to train on.
"""

from __future__ import annotations

import csv
import io
import json
import random
import re
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from tuneforge.artifacts import (
    RunDir,
    atomic_dir,
    read_json,
    read_jsonl,
    write_json_atomic,
    write_text_atomic,
)
from tuneforge.errors import TuneforgeError
from tuneforge.evaluation.evals import resolve

COLUMNS = ("sheet", "row_id", "prompt", "answer_1", "answer_2", "preference", "comment")
SCALE = ("1", "2", "tie")  # answer 1 better, answer 2 better, equally good
HUMAN_DIR = "human-eval"


def _predictions(run: RunDir, split: str) -> list[dict[str, Any]]:
    path = run.eval_dir / f"{split}.predictions.jsonl"
    if not path.is_file():
        raise TuneforgeError(
            f"{path} does not exist",
            fix=f"run `tuneforge evaluate {run.path} --split {split} --compare-base` first",
        )
    rows = read_jsonl(path)
    if not rows or not all(isinstance(r.get("tuned"), str) and isinstance(r.get("base"), str) for r in rows):
        raise TuneforgeError(
            f"{path} has no generated answers of both the base and the tuned model",
            fix="human A/B rating needs a chat or instruction run evaluated with --compare-base "
            "(or classification with eval.decision=generate)",
        )
    return rows


def export_sheets(
    run_dir: str | Path,
    *,
    split: str = "test",
    raters: int = 1,
    limit: int | None = None,
    seed: int = 0,
    force: bool = False,
) -> Path:
    """Write RUN/human-eval/{sheets/rater-K.csv|jsonl, key.json}; returns the human-eval directory."""
    run = RunDir.open(run_dir)
    split = resolve(run, split)  # the evaluation's name: `test`, or `test-first12` when only that exists
    _check_replaceable(run.path / HUMAN_DIR, force)
    rows = [r for r in _predictions(run, split) if r["tuned"].strip() != r["base"].strip()]
    rows = rows[:limit] if limit else rows
    if not rows:
        raise TuneforgeError(f"base and tuned answered every {split} example identically: nothing to rate")
    rng = random.Random(seed)
    out_dir = run.path / HUMAN_DIR
    key: dict[str, Any] = {"split": split, "scale": list(SCALE), "sheets": {}}
    sheets: dict[str, list[dict[str, Any]]] = {}
    for k in range(1, raters + 1):
        name = f"rater-{k}"
        sheet, sides = [], {}
        for r in rows:
            tuned_first = rng.random() < 0.5
            a, b = (r["tuned"], r["base"]) if tuned_first else (r["base"], r["tuned"])
            row_id = str(r["id"])
            sides[row_id] = {"answer_1": "tuned" if tuned_first else "base", "id": r["id"]}
            sheet.append(dict(zip(COLUMNS, (name, row_id, r["input"], a, b, "", ""), strict=True)))
        sheets[name], key["sheets"][name] = sheet, sides
    key["prompts"] = {
        str(r["id"]): {"prompt": r["input"], "tuned": r["tuned"], "base": r["base"]} for r in rows
    }
    with atomic_dir(out_dir / "sheets", kind="tuneforge.human-eval-sheets") as tmp:
        for name, sheet in sheets.items():
            buf = io.StringIO()
            w = csv.DictWriter(buf, fieldnames=list(COLUMNS), lineterminator="\n")
            w.writeheader()
            w.writerows(sheet)
            (tmp / f"{name}.csv").write_text(buf.getvalue(), encoding="utf-8")
            (tmp / f"{name}.jsonl").write_text(
                "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in sheet), encoding="utf-8"
            )
    write_json_atomic(out_dir / "key.json", key)
    return out_dir


def _check_replaceable(out_dir: Path, force: bool) -> None:
    """A new export changes the key: refuse without --force, and never remove files export did not write."""
    if not (out_dir / "key.json").exists():
        return
    if not force:
        raise TuneforgeError(
            f"{out_dir} already holds exported sheets and their key; a new export would randomise the sides "
            "again, and sheets being filled now would no longer match",
            fix="import the filled sheets first, or pass --force to export again",
        )
    sheets = out_dir / "sheets"
    ours = re.compile(r"rater-\d+\.(csv|jsonl)|\.tuneforge")  # .tuneforge: atomic_dir's marker
    foreign = (
        sorted(p.name for p in sheets.iterdir() if not ours.fullmatch(p.name)) if sheets.is_dir() else []
    )
    if foreign:
        raise TuneforgeError(
            f"{sheets} holds files export did not write: {', '.join(foreign)}",
            fix="move them elsewhere (filled sheets can live anywhere) and export again",
        )


def _read_sheet(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """(file:row, fields) of every filled or unfilled row of a CSV or JSONL sheet."""
    if not path.is_file():
        raise TuneforgeError(f"{path} does not exist")
    if path.suffix == ".jsonl":
        return [(f"{path}:{i}", row) for i, row in enumerate(read_jsonl(path), 1)]
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        missing = {"sheet", "row_id", "preference"} - set(reader.fieldnames or [])
        if missing:
            raise TuneforgeError(f"the sheet has no column {', '.join(sorted(missing))}", where=f"{path}:1")
        return [(f"{path}:{i}", row) for i, row in enumerate(reader, 2)]


def _outcome(preference: str, answer_1: str) -> str:
    """The rating from the tuned model's side: win, tie or loss."""
    if preference == "tie":
        return "tie"
    picked = answer_1 if preference == "1" else ("base" if answer_1 == "tuned" else "tuned")
    return "win" if picked == "tuned" else "loss"


def read_ratings(run: RunDir, sheets: list[Path]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The key and one entry per rated row: rater, example id, outcome; every row checked against the key."""
    key_path = run.path / HUMAN_DIR / "key.json"
    if not key_path.is_file():
        raise TuneforgeError(
            f"{key_path} does not exist", fix=f"run `tuneforge human-eval export {run.path}` first"
        )
    key = read_json(key_path)
    ratings, seen = [], set()
    for path in sheets:
        for where, row in _read_sheet(Path(path)):
            sheet, row_id = str(row.get("sheet", "")), str(row.get("row_id", ""))
            pref = str(row.get("preference") or "").strip().lower()
            if sheet not in key["sheets"]:
                raise TuneforgeError(
                    f"unknown sheet '{sheet}'", where=where, fix="rate the sheets that export wrote"
                )
            if row_id not in key["sheets"][sheet]:
                raise TuneforgeError(
                    f"unknown row id '{row_id}' in sheet {sheet}",
                    where=where,
                    fix="keep the row_id column as exported",
                )
            if not pref:
                continue
            if pref not in SCALE:
                raise TuneforgeError(
                    f"rating '{pref}' is outside the scale",
                    where=where,
                    fix="write 1 (answer 1 is better), 2 (answer 2 is better) or tie",
                )
            if (sheet, row_id) in seen:
                raise TuneforgeError(f"row {row_id} of {sheet} is rated twice", where=where)
            seen.add((sheet, row_id))
            side = key["sheets"][sheet][row_id]
            ratings.append({"rater": sheet, "id": row_id, "outcome": _outcome(pref, side["answer_1"])})
    if not ratings:
        raise TuneforgeError("the sheets hold no ratings", fix="fill the preference column: 1, 2 or tie")
    return key, ratings


def _rates(outcomes: list[str], n_boot: int, seed: int) -> dict[str, Any]:
    from scipy.stats import binomtest

    from tuneforge.evaluation.stats import bootstrap_ci

    out: dict[str, Any] = {"n": len(outcomes)}
    for what in ("win", "tie", "loss"):
        out[what] = bootstrap_ci([float(o == what) for o in outcomes], n_boot=n_boot, seed=seed)
    wins, losses = outcomes.count("win"), outcomes.count("loss")
    # Sign test over the decided ratings: is the tuned model preferred more often than chance?
    out["p_value"] = float(binomtest(wins, wins + losses, 0.5).pvalue) if wins + losses else 1.0
    return out


def import_ratings(run_dir: str | Path, sheets: list[Path], *, n_boot: int = 1000, seed: int = 0) -> Path:
    """Ratings → RUN/eval/human.json and a preference dataset in RUN/human-eval/preferences/."""
    from tuneforge.evaluation.agreement import agreement

    run = RunDir.open(run_dir)
    key, ratings = read_ratings(run, sheets)
    by_rater: dict[str, dict[str, str]] = defaultdict(dict)
    for r in ratings:
        by_rater[r["rater"]][r["id"]] = r["outcome"]
    result: dict[str, Any] = {
        "split": key["split"],
        "overall": _rates([r["outcome"] for r in ratings], n_boot, seed),
        "per_rater": {
            name: dict(Counter(v.values())) | {"n": len(v)} for name, v in sorted(by_rater.items())
        },
        "agreement": agreement(dict(by_rater)),
    }
    judge = _judge_agreement(run, key["split"], by_rater)
    if judge:
        result["judge_agreement"] = judge
    pairs = _preference_pairs(key, ratings)
    result["preference_pairs"] = len(pairs)
    if pairs:
        result["preference_dataset"] = str(_write_preferences(run, pairs).resolve())
    out = run.eval_dir / "human.json"
    write_json_atomic(out, result)
    return out


def _judge_agreement(run: RunDir, split: str, by_rater: dict[str, dict[str, str]]) -> dict[str, Any]:
    """Cohen's kappa between the LLM judge's pairwise outcome and each rater's, on the examples both rated."""
    from tuneforge.evaluation.agreement import cohen_kappa

    path = run.eval_dir / f"{split}.predictions.jsonl"
    if not path.is_file():
        return {}
    judged = {
        str(r["id"]): r["judge"]["pairwise"]["outcome"]
        for r in read_jsonl(path)
        if (r.get("judge") or {}).get("pairwise", {}).get("outcome")
    }
    out: dict[str, Any] = {}
    for rater, outcomes in sorted(by_rater.items()):
        shared = [i for i in outcomes if i in judged]
        if len(shared) >= 2:
            kappa = cohen_kappa([outcomes[i] for i in shared], [judged[i] for i in shared])
            out[rater] = {"n": len(shared), "cohen_kappa": kappa}
    return out


def _preference_pairs(key: dict[str, Any], ratings: list[dict[str, Any]]) -> list[dict[str, str]]:
    """prompt/chosen/rejected for every example the raters' majority decided (ties and splits left out)."""
    votes: dict[str, Counter[str]] = defaultdict(Counter)
    for r in ratings:
        votes[r["id"]][r["outcome"]] += 1
    pairs = []
    for row_id, v in sorted(votes.items(), key=lambda kv: int(kv[0]) if kv[0].isdigit() else kv[0]):
        if v["win"] == v["loss"]:
            continue
        p = key["prompts"][row_id]
        better, worse = ("tuned", "base") if v["win"] > v["loss"] else ("base", "tuned")
        pairs.append({"prompt": p["prompt"], "chosen": p[better], "rejected": p[worse]})
    return pairs


def _write_preferences(run: RunDir, pairs: list[dict[str, str]]) -> Path:
    """The pairs as a prepared dataset, through `prepare_dataset` so they are validated like any data."""
    from tuneforge.config import DataConfig
    from tuneforge.data import prepare_dataset

    root = run.path / HUMAN_DIR
    raw = root / "preferences.jsonl"
    write_text_atomic(raw, "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs))
    n = len(pairs)
    # Few pairs: everything trains (a held-out split of two pairs says nothing); many: the usual 80/10/10.
    splits = (1.0, 0.0, 0.0) if n < 20 else (0.8, 0.1, 0.1)
    cfg = DataConfig(
        path=str(raw),
        format="preference",
        output_dir=str(root / "preferences"),
        min_examples=1,
        splits=splits,
        dedup="exact",
        stratify=False,
    )
    return prepare_dataset(cfg, force=True).path
