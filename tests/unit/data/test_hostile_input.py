"""Input built to break a reader: runaway CSV quotes, JSON nested past any sane depth, endless files."""

from __future__ import annotations

import json
import os
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


def test_an_unclosed_quote_in_the_header_is_named(tmp_path: Path) -> None:
    src = tmp_path / "d.csv"
    src.write_text('"text,label\n' + csv_rows(3))
    with pytest.raises(
        TuneforgeError, match=r"d.csv:1: \[runaway_quote\] a quote in the header is never closed"
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


DEPTH = 100_000


def nested(depth: int = DEPTH) -> str:
    return "[" * depth + "]" * depth


def test_deep_json_lines_are_a_row_problem_of_their_own(tmp_path: Path) -> None:
    src = tmp_path / "d.jsonl"
    good = [json.dumps({"text": f"row {i} is fine and long enough", "label": "ab"[i % 2]}) for i in range(12)]
    src.write_text("\n".join([good[0], '{"text": ' + nested() + ', "label": "a"}', *good[1:]]) + "\n")
    ds = prepare_dataset(DataConfig(path=str(src), output_dir=str(tmp_path / "ds"), on_error="drop"))
    assert ds.manifest["problems"] == {"too_deep": 1}
    rejected = [json.loads(x) for x in (ds.path / "rejected.jsonl").read_text().splitlines()]
    assert [(r["where"], r["problem"]) for r in rejected] == [(f"{src}:2", "too_deep")]
    # Deep but within the recursion limit: still refused, as later steps walk values recursively.
    src.write_text('{"text": "x", "meta": ' + nested(150) + "}\n")
    assert rows(src) == [({}, f"{src}:1", ("too_deep", "the row is nested more than 100 levels deep"))]


@pytest.mark.parametrize(
    ("document", "where"),
    [
        ('[{"text": "fine"}, {"text": ' + nested() + "}, " + '{"text": "also fine"}]', "$[1]"),
        ('{"data": [{"text": "fine"}, {"x": {"y": ' + nested() + '}}, {"text": "also fine"}]}', "$.data[1]"),
    ],
)
def test_deep_json_documents_give_too_deep_rows(tmp_path: Path, document: str, where: str) -> None:
    src = tmp_path / "d.json"
    src.write_text(document)
    got = rows(src)
    assert [g[2] for g in got] == [None, ("too_deep", "the row is nested more than 100 levels deep"), None]
    assert got[1][1] == f"{src} {where}"
    assert got[0][0] == {"text": "fine"} and got[2][0] == {"text": "also fine"}


def test_deep_json_columns_and_single_documents(tmp_path: Path) -> None:
    src = tmp_path / "d.json"
    src.write_text('{"text": ["a", ' + nested() + ', "c"], "label": ["x", "y", "z"]}')
    assert [(f, p) for f, _, p in rows(src)] == [
        ({"text": "a", "label": "x"}, None),
        ({}, ("too_deep", "the row is nested more than 100 levels deep")),
        ({"text": "c", "label": "z"}, None),
    ]
    src.write_text('{"text": "one", "meta": {"deep": ' + nested() + "}}")
    assert rows(src) == [({}, f"{src} $", ("too_deep", "the row is nested more than 100 levels deep"))]


def depth_of(value: object) -> int:
    if isinstance(value, dict):
        return 1 + max((depth_of(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((depth_of(v) for v in value), default=0)
    return 0


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 1 << 20])
def test_the_depth_scan_ignores_brackets_in_strings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int
) -> None:
    from tuneforge.data.sources import json as json_source

    monkeypatch.setattr(json_source, "_CHUNK", chunk)  # state carried across block boundaries
    doc = [{"text": '[[[[ " [[[ \\', "b": [[1, {"c": "]]]\\\\"}]]}, {"t": '\\\\\\"[['}]
    src = tmp_path / "d.json"
    src.write_text(json.dumps(doc))
    assert json_source._max_depth(src) == depth_of(doc) == 5


def test_a_fifo_as_data_path_is_refused_without_opening_it(tmp_path: Path) -> None:
    fifo = tmp_path / "stream.jsonl"
    os.mkfifo(fifo)  # opening it for reading would block this test forever
    with pytest.raises(TuneforgeError) as err:
        prepare_dataset(DataConfig(path=str(fifo), output_dir=str(tmp_path / "ds")))
    assert str(err.value) == (
        f"data.path: {fifo} is a named pipe (FIFO), not a regular file: reading it could wait forever\n"
        "  fix: point data.path at a regular file or a folder (copy the stream into a file first)"
    )


def test_special_files_in_folders_are_reported_not_opened(tmp_path: Path) -> None:
    data = tmp_path / "parts"
    data.mkdir()
    (data / "a.jsonl").write_text('{"text": "one"}\n')
    os.mkfifo(data / "b.jsonl")
    assert rows(data) == [
        ({"text": "one"}, f"{data / 'a.jsonl'}:1", None),
        (
            {},
            str(data / "b.jsonl"),
            ("not_a_file", "b.jsonl is a named pipe (FIFO), not a regular file; it is not read"),
        ),
    ]
    classes = tmp_path / "classes"
    for label in ("pos", "neg"):
        (classes / label).mkdir(parents=True)
        (classes / label / "1.txt").write_text(f"a {label} text")
    os.mkfifo(classes / "neg" / "2.txt")
    assert rows(classes)[1] == (
        {},
        str(classes / "neg" / "2.txt"),
        ("not_a_file", "2.txt is a named pipe (FIFO), not a regular file; it is not read"),
    )
