"""Human A/B evaluation: blind sheets out; ratings in → win/tie/loss with CIs, agreement, preference data.

`export` writes one sheet per rater (CSV and JSONL, the same rows) with the two answers in random order per
row and per rater; which side is the tuned model is kept in key.json beside, never in a sheet.
`import_ratings` reads filled sheets back, checks every row against the key, and writes the results and a
preference dataset (prompt / chosen / rejected) through the data stage, ready to train on.

Every sheet row carries its export's id, a digest of the key: a sheet is scored only against the key that
made it, and a key edited after export no longer matches its own id. Ratings of one item by several raters
are not independent trials: the intervals resample items (all of an item's ratings together), and the test
flips the sign of whole items.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import random
import re
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

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

COLUMNS = ("sheet", "row_id", "prompt", "answer_1", "answer_2", "preference", "comment", "export_id")
SCALE = ("1", "2", "tie")  # answer 1 better, answer 2 better, equally good
HUMAN_DIR = "human-eval"

# OWASP's CSV-injection rule: a cell starting with one of these is a formula (or smuggles one) in Excel and
# LibreOffice, so it is written behind a leading apostrophe. A cell that already starts with an apostrophe
# gets one more, so that taking one off on import gives back exactly the text that was exported.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(text: str) -> str:
    """`text` as a CSV cell a spreadsheet shows as text, never evaluates (undone by `from_spreadsheet`)."""
    return "'" + text if text.startswith((*FORMULA_STARTS, "'")) else text


def from_spreadsheet(cell: str) -> str:
    """The text `spreadsheet_safe` was given."""
    return cell[1:] if cell.startswith("'") and cell[1:].startswith((*FORMULA_STARTS, "'")) else cell


class _Side(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    answer_1: Literal["tuned", "base"]
    id: int | str


class _Prompt(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    prompt: str
    tuned: str
    base: str


class _Key(BaseModel):
    """key.json as export writes it; anything else is a damaged or edited key."""

    model_config = ConfigDict(extra="forbid", strict=True)
    split: str
    scale: list[str]
    sheets: dict[str, dict[str, _Side]]
    prompts: dict[str, _Prompt]
    export_id: str | None = None  # keys exported before sheets carried their id have none


def export_id(key: dict[str, Any]) -> str:
    """A digest of everything the key says (sides, prompts, answers): the id every sheet row carries."""
    body = {k: v for k, v in key.items() if k != "export_id"}
    canonical = json.dumps(body, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


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
            sheet.append(dict(zip(COLUMNS[:-1], (name, row_id, r["input"], a, b, "", ""), strict=True)))
        sheets[name], key["sheets"][name] = sheet, sides
    key["prompts"] = {
        str(r["id"]): {"prompt": r["input"], "tuned": r["tuned"], "base": r["base"]} for r in rows
    }
    key["export_id"] = export_id(key)
    with atomic_dir(out_dir / "sheets", kind="tuneforge.human-eval-sheets") as tmp:
        for name, sheet in sheets.items():
            sheet = [row | {"export_id": key["export_id"]} for row in sheet]
            buf = io.StringIO()
            # RFC 4180's CRLF, as spreadsheets write it; with "\n" alone the csv module left a lone "\r" in
            # an answer unquoted, and reading the sheet back split the row there.
            w = csv.DictWriter(buf, fieldnames=list(COLUMNS), lineterminator="\r\n")
            w.writeheader()
            w.writerows({k: spreadsheet_safe(str(v)) for k, v in row.items()} for row in sheet)
            (tmp / f"{name}.csv").write_bytes(buf.getvalue().encode("utf-8"))
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
    # utf-8-sig: Excel's "CSV UTF-8" starts the file with a byte-order mark, which would otherwise be part of
    # the first column's name. Excel in many locales separates with semicolons: sniffed from the header.
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            text = f.read()
    except UnicodeDecodeError as err:
        raise TuneforgeError(
            f"the sheet is not UTF-8 text ({err.reason} at byte {err.start})",
            where=str(path),
            fix='save it as "CSV UTF-8" (Excel) or "Text CSV" with UTF-8 (LibreOffice)',
        ) from None
    header = text.split("\n", 1)[0]
    delimiter = max(",;\t", key=header.count) if header else ","
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    missing = {"sheet", "row_id", "preference"} - set(reader.fieldnames or [])
    if missing:
        raise TuneforgeError(f"the sheet has no column {', '.join(sorted(missing))}", where=f"{path}:1")
    return [
        (f"{path}:{i}", {k: from_spreadsheet(v) if isinstance(v, str) else v for k, v in row.items()})
        for i, row in enumerate(reader, 2)
        if any((v or "").strip() for v in row.values() if isinstance(v, str))  # rows a spreadsheet left empty
    ]


def read_key(path: Path) -> dict[str, Any]:
    """key.json, refused in one line when it is damaged or was edited after export."""
    key = read_json(path)
    fix = "export again (`tuneforge human-eval export RUN --force`) and have the new sheets rated"
    try:
        _Key.model_validate(key)
    except ValidationError as err:
        first = err.errors()[0]
        at = ".".join(str(p) for p in first["loc"]) or "top level"
        raise TuneforgeError(
            f"the key is damaged ({at}: {first['msg']}); it cannot say which answer was the tuned model's",
            where=str(path),
            fix=fix,
        ) from None
    unknown = sorted({r for sides in key["sheets"].values() for r in sides} - set(key["prompts"]))
    if unknown:
        raise TuneforgeError(
            f"the key is damaged: row ids {', '.join(unknown[:5])} have no prompt", where=str(path), fix=fix
        )
    if key.get("export_id") is not None and key["export_id"] != export_id(key):
        raise TuneforgeError(
            "the key was changed after export (it no longer matches its export id); scoring against it "
            "would count ratings for the wrong answers",
            where=str(path),
            fix=fix,
        )
    return key


def _check_export_id(row: dict[str, Any], key: dict[str, Any], where: str) -> None:
    """A sheet row is scored only against the export that made it: its export_id must be the key's."""
    expected, got = key.get("export_id"), str(row.get("export_id") or "").strip()
    if got == (expected or ""):
        return
    if not got:
        what = "the sheet row has no export_id: it cannot be matched to the current export's key"
    elif expected is None:
        what = f"the sheet comes from export {got}, but the key predates export ids"
    else:
        what = f"the sheet comes from export {got}, but the key is from export {expected}"
    raise TuneforgeError(
        what + "; its sides were randomised differently, so its ratings would be scored wrongly",
        where=where,
        fix="import sheets of the latest export only (keep the export_id column as exported); "
        "sheets of an earlier export cannot be scored once it was replaced",
    )


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
    key = read_key(key_path)
    ratings, seen = [], set()
    for path in sheets:
        for where, row in _read_sheet(Path(path)):
            sheet, row_id = str(row.get("sheet", "")), str(row.get("row_id", ""))
            pref = str(row.get("preference") or "").strip().lower()
            _check_export_id(row, key, where)
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


def item_statistics(
    ratings: list[dict[str, Any]], n_boot: int, seed: int, level: float = 0.95
) -> dict[str, Any]:
    """Win/tie/loss rates and the net preference (win − loss) of the tuned model, clustered by item.

    The ratings of one item (by every rater) are one unit: the rates' intervals resample items with all
    their ratings (a cluster bootstrap), and the test is a sign-flip test over items: with no preference,
    which side won is a coin toss per item, so each item's net score (its wins − its losses) is as likely
    negated. That is the sign test with items as trials, valid with a handful of items, where a bootstrap
    p-value is not. Its interval for the net preference is the set of shifts the same flips do not reject
    (test inversion), so interval and p-value cannot disagree. Written by hand: scipy's permutation_test
    has the flips but cannot invert them into an interval.
    """
    per_item: dict[str, Counter[str]] = defaultdict(Counter)
    for r in ratings:
        per_item[r["id"]][r["outcome"]] += 1
    items = sorted(per_item)
    counts = {w: np.array([per_item[i][w] for i in items], dtype=float) for w in ("win", "tie", "loss")}
    n_i = counts["win"] + counts["tie"] + counts["loss"]  # (K,) ratings per item
    total, k = float(n_i.sum()), len(items)
    rng = np.random.default_rng(seed)
    alpha = 1 - level
    out: dict[str, Any] = {"n": int(total), "items": k}
    draws = rng.integers(0, k, size=(n_boot, k))  # (B, K) items drawn with replacement
    drawn_n = n_i[draws].sum(axis=1)  # (B,)
    for what, c in counts.items():
        rates = c[draws].sum(axis=1) / drawn_n
        lo, hi = np.quantile(rates, [alpha / 2, 1 - alpha / 2])
        out[what] = {"value": float(c.sum() / total), "lo": float(lo), "hi": float(hi), "n": int(total)}
    net_i = counts["win"] - counts["loss"]  # (K,)
    signs = rng.choice(np.array([-1.0, 1.0]), size=(n_boot, k))  # (B, K)
    flipped_net, flipped_n = signs @ net_i, signs @ n_i  # (B,), (B,)
    shifts = np.linspace(-1.0, 1.0, 2001)  # (G,) candidate net preferences, 0.001 apart (0 among them)
    observed = np.abs(net_i.sum() - shifts * total)  # (G,)
    extreme = np.abs(flipped_net[None, :] - shifts[:, None] * flipped_n[None, :]) >= observed[:, None] - 1e-9
    p = (1 + extreme.sum(axis=1)) / (n_boot + 1)  # (G,) p-value of "the net preference is this shift"
    kept = shifts[p > alpha]
    p0 = float(p[len(shifts) // 2])
    out["net"] = {
        "value": float(net_i.sum() / total),
        "lo": float(kept.min()) if kept.size else float("nan"),
        "hi": float(kept.max()) if kept.size else float("nan"),
        "n": int(total),
    }
    out["p_value"] = p0
    out["test"] = f"sign-flip test over {k} items (all of an item's ratings together), {n_boot} flips"
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
        "overall": item_statistics(ratings, n_boot, seed),
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
