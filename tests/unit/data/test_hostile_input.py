"""Input built to break a reader: runaway CSV quotes, JSON nested past any sane depth, endless files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tuneforge.config import DataConfig
from tuneforge.data import prepare_dataset
from tuneforge.data.sources import read_rows
from tuneforge.errors import TuneforgeError


def csv_rows(n: int, start: int = 0) -> str:
    return "".join(f"review number {i} was fine,{'ab'[i % 2]}\n" for i in range(start, start + n))


def rows(path: Path, **cfg: object) -> list[tuple[dict[str, object], str, tuple[str, str] | None]]:
    return [(r.fields, r.where, r.problem) for r in read_rows(str(path), DataConfig(**cfg))]


def test_an_unclosed_quote_stops_even_in_drop_mode(tmp_path: Path) -> None:
    src = tmp_path / "d.csv"
    src.write_text("text,label\n" + csv_rows(5) + '"this quote is never closed,a\n' + csv_rows(30, 5))
    with pytest.raises(TuneforgeError) as err:
        prepare_dataset(DataConfig(path=str(src), output_dir=str(tmp_path / "ds"), on_error="drop"))
    assert str(err.value) == (
        f"{src}:7: [runaway_quote] a quoted field that starts on line 7 runs to line 37 (it is still open at "
        "the end of the file): a quote is probably not closed, and dropping this row would drop lines 7-37 "
        'with it\n  fix: close or escape the quote (a quote inside a quoted field is written twice: ""), or '
        "set data.accept_runaway_quotes=true to drop all of those lines"
    )
    assert not (tmp_path / "ds").exists()


def test_accepting_runaway_quotes_drops_them_counted(tmp_path: Path) -> None:
    src = tmp_path / "d.csv"
    src.write_text("text,label\n" + csv_rows(12) + '"never closed,a\n' + csv_rows(3, 12))
    ds = prepare_dataset(
        DataConfig(
            path=str(src), output_dir=str(tmp_path / "ds"), on_error="drop", accept_runaway_quotes=True
        )
    )
    assert ds.manifest["problems"] == {"runaway_quote": 1}
    rejected = [json.loads(x) for x in (ds.path / "rejected.jsonl").read_text().splitlines()]
    assert [(r["where"], r["problem"]) for r in rejected] == [(f"{src}:14", "runaway_quote")]


def test_a_quote_closed_much_later_is_a_runaway_too(tmp_path: Path) -> None:
    src = tmp_path / "d.csv"
    # The stray quote on line 3 pairs with the one on line 6: lines 3-6 become one row of 3 fields.
    src.write_text('text,label\nok one,a\n"oops,b\nok two,a\nok three,b\nlast "quoted" one,a,b\nok four,a\n')
    with pytest.raises(
        TuneforgeError, match=r"d.csv:3: \[runaway_quote\] .* runs to line 6 \(its value holds"
    ):
        rows(src)


def test_a_real_multiline_field_is_still_one_row(tmp_path: Path) -> None:
    src = tmp_path / "d.csv"
    src.write_text('text,label\n"first line\nsecond line, with a comma",a\nnext,b\n')
    assert rows(src) == [
        ({"text": "first line\nsecond line, with a comma", "label": "a"}, f"{src}:2", None),
        ({"text": "next", "label": "b"}, f"{src}:4", None),
    ]
    # A multi-line row with the wrong field count whose lines are not rows is one bad row, as before.
    src.write_text('text,label\n"one\ntwo",a,extra\nnext,b\n')
    assert rows(src)[0] == ({}, f"{src}:2", ("wrong_columns", "expected 2 fields, found 3"))
