"""Human A/B sheets: safe to open in a spreadsheet, tied to their export, clustered by item when scored."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from tests.tiny import write_jsonl
from tuneforge.artifacts import RunDir
from tuneforge.errors import TuneforgeError
from tuneforge.evaluation.human import (
    export_sheets,
    from_spreadsheet,
    import_ratings,
    item_statistics,
    read_ratings,
    spreadsheet_safe,
)

HOSTILE = ['=HYPERLINK("http://x","y")', "+1+2", "-3", "@SUM(A1)", "\tx", "\rx", "'=quoted", "''", "'plain"]


def fake_run(root: Path, n: int = 6) -> Path:
    """A run directory holding only what human-eval reads: config.yaml and a split's answers."""
    run = root / "run"
    (run / "eval").mkdir(parents=True)
    (run / "config.yaml").write_text("{}\n")
    rows = [
        {"id": i, "input": HOSTILE[i % len(HOSTILE)], "tuned": f"-tuned {i}", "base": f"=base {i}"}
        for i in range(n)
    ]
    write_jsonl(run / "eval" / "test.predictions.jsonl", rows)
    return run


def read_csv(path: Path, encoding: str = "utf-8") -> list[dict[str, str]]:
    with open(path, encoding=encoding, newline="") as f:
        return list(csv.DictReader(f))


def test_spreadsheet_escaping_round_trips_exactly() -> None:
    for text in [*HOSTILE, "plain", "", "'", "a=b", "'x'"]:
        cell = spreadsheet_safe(text)
        assert not cell.startswith(("=", "+", "-", "@", "\t", "\r"))
        assert from_spreadsheet(cell) == text
    assert spreadsheet_safe("=1+2") == "'=1+2"
    assert spreadsheet_safe("'=1") == "''=1"
    assert spreadsheet_safe("'plain") == "''plain"


def test_exported_csv_holds_no_formula_and_import_gives_the_text_back(tmp_path: Path) -> None:
    run = fake_run(tmp_path)
    sheets = export_sheets(run) / "sheets"
    rows = read_csv(sheets / "rater-1.csv")
    for row in rows:
        for cell in row.values():
            assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")), cell
    assert rows[0]["prompt"] == "'" + HOSTILE[0]
    assert [from_spreadsheet(r["prompt"]) for r in rows] == HOSTILE[:6]  # "\r" inside a cell too
    assert {from_spreadsheet(r["answer_1"]) for r in rows} | {
        from_spreadsheet(r["answer_2"]) for r in rows
    } == {
        *(f"-tuned {i}" for i in range(6)),
        *(f"=base {i}" for i in range(6)),
    }
    jsonl = [json.loads(line) for line in (sheets / "rater-1.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in jsonl] == [HOSTILE[i] for i in range(6)]  # JSONL is not a spreadsheet
    # A row id that looks like a formula ('-3') is written escaped and read back as the id.
    filled = [dict(r, preference="1") for r in rows]
    path = tmp_path / "filled.csv"
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(filled)
    _, ratings = read_ratings(RunDir.open(run), [path])
    assert [r["id"] for r in ratings] == [str(i) for i in range(6)]


def test_excel_csv_utf8_with_bom_and_semicolons_is_read(tmp_path: Path) -> None:
    run = fake_run(tmp_path)
    sheets = export_sheets(run) / "sheets"
    rows = read_csv(sheets / "rater-1.csv")
    path = tmp_path / "excel.csv"
    with open(path, "w", encoding="utf-8-sig", newline="") as f:  # Excel's "CSV UTF-8": BOM, CRLF, ';'
        w = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter=";", lineterminator="\r\n")
        w.writeheader()
        w.writerows(dict(r, preference="tie") for r in rows)
        f.write(";;;;;;;\r\n")  # a row the spreadsheet left empty
    result = json.loads(import_ratings(run, [path]).read_text())
    assert result["overall"]["n"] == 6 and result["overall"]["tie"]["value"] == 1.0


def test_a_sheet_of_an_earlier_export_is_refused(tmp_path: Path) -> None:
    run = fake_run(tmp_path)
    old = write_jsonl(
        tmp_path / "old.jsonl",
        [
            dict(json.loads(line), preference="1")
            for line in (export_sheets(run) / "sheets" / "rater-1.jsonl").read_text().splitlines()
        ],
    )
    old_id = json.loads(old.read_text().splitlines()[0])["export_id"]
    key = export_sheets(run, force=True, seed=7) / "key.json"
    new_id = json.loads(key.read_text())["export_id"]
    assert new_id != old_id
    with pytest.raises(TuneforgeError) as err:
        import_ratings(run, [old])
    assert err.value.render().startswith(
        f"{old}:1: the sheet comes from export {old_id}, but the key is from export {new_id}"
    )
    rows = [json.loads(line) for line in old.read_text().splitlines()]
    no_id = write_jsonl(
        tmp_path / "no-id.jsonl", [{k: v for k, v in r.items() if k != "export_id"} for r in rows]
    )
    with pytest.raises(TuneforgeError, match="the sheet row has no export_id"):
        import_ratings(run, [no_id])
    assert not (run / "eval" / "human.json").exists()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda k: k["sheets"]["rater-1"]["0"].update(answer_1="Tuned"),
            "the key is damaged (sheets.rater-1.0",
        ),
        (lambda k: k["sheets"]["rater-1"]["0"].pop("answer_1"), "the key is damaged (sheets.rater-1.0"),
        (lambda k: k.pop("prompts"), "the key is damaged (prompts: Field required)"),
        (lambda k: k.update(sheets=[]), "the key is damaged (sheets: Input should be a valid dictionary)"),
        (lambda k: k["prompts"].pop("0"), "the key is damaged: row ids 0 have no prompt"),
        (
            lambda k: k["sheets"]["rater-1"]["0"].update(
                answer_1="base" if k["sheets"]["rater-1"]["0"]["answer_1"] == "tuned" else "tuned"
            ),
            "the key was changed after export",
        ),
    ],
)
def test_a_damaged_or_edited_key_is_refused_in_one_line(tmp_path: Path, edit, message: str) -> None:
    run = fake_run(tmp_path)
    out = export_sheets(run)
    key = json.loads((out / "key.json").read_text())
    edit(key)
    (out / "key.json").write_text(json.dumps(key))
    filled = write_jsonl(
        tmp_path / "f.jsonl",
        [
            dict(json.loads(x), preference="1")
            for x in (out / "sheets" / "rater-1.jsonl").read_text().splitlines()
        ],
    )
    with pytest.raises(TuneforgeError) as err:
        import_ratings(run, [filled])
    text = err.value.render()
    assert text.startswith(f"{out / 'key.json'}: {message}"), text
    assert len(text.splitlines()) == 2  # the line and its fix


def test_ratings_of_one_item_are_not_independent_trials() -> None:
    # 3 items, each rated a win by 40 raters: 120 ratings but three coin tosses. The sign test over ratings
    # said p ~ 1e-36; over items the smallest possible two-sided p is 2/8.
    ratings = [{"rater": f"r{j}", "id": str(i), "outcome": "win"} for i in range(3) for j in range(40)]
    o = item_statistics(ratings, n_boot=2000, seed=0)
    assert o["n"] == 120 and o["items"] == 3
    assert o["p_value"] == pytest.approx(0.25, abs=0.03)
    assert o["net"]["lo"] <= 0 <= o["net"]["hi"]  # agrees with p > 0.05


def test_item_bootstrap_interval_is_wider_than_per_rating_one() -> None:
    # Items are either won or lost by every one of 5 raters: the spread is between items.
    ratings = [
        {"rater": f"r{j}", "id": str(i), "outcome": "win" if i % 2 else "loss"}
        for i in range(20)
        for j in range(5)
    ]
    o = item_statistics(ratings, n_boot=2000, seed=0)
    assert o["win"]["value"] == 0.5
    # 20 independent items: the interval of a proportion over 20, not over 100 (half-width ~0.22 vs ~0.10).
    assert o["win"]["hi"] - o["win"]["lo"] > 0.35


@pytest.mark.parametrize("wins", range(0, 21, 2))
def test_net_preference_interval_and_p_value_agree(wins: int) -> None:
    ratings = [
        {"rater": f"r{j}", "id": str(i), "outcome": ("win" if i < wins else "loss") if j else "tie"}
        for i in range(20)
        for j in range(2)
    ]
    o = item_statistics(ratings, n_boot=1000, seed=3)
    excludes_zero = o["net"]["lo"] > 0 or o["net"]["hi"] < 0
    assert excludes_zero == (o["p_value"] <= 0.05), o
    assert o["net"]["lo"] <= o["net"]["value"] <= o["net"]["hi"]
