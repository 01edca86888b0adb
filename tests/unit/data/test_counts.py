"""Counts have one source (the rows actually written to rejected.jsonl), and errors say why rows were lost."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from tuneforge.config import DataConfig
from tuneforge.data import prepare_dataset
from tuneforge.data.records import PROBLEMS
from tuneforge.errors import TuneforgeError


def write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def good(i: int, words: int = 6) -> str:
    return json.dumps({"text": " ".join(f"r{i}w{k}" for k in range(words)), "label": "ab"[i % 2]})


def test_counts_agree_with_rejected_jsonl(tmp_path: Path) -> None:
    lines = [good(i) for i in range(14)]
    lines[3] = good(3, words=40)  # dropped for length
    lines[5] = good(5, words=40)
    lines[7] = "{broken"  # invalid
    lines[9] = json.dumps({"text": "", "label": "a"})  # missing value (filtered)
    src = write(tmp_path / "d.jsonl", lines)
    ds = prepare_dataset(
        DataConfig(
            path=str(src), output_dir=str(tmp_path / "ds"), on_error="drop", max_tokens=20, over_length="drop"
        )
    )
    m = ds.manifest
    rejected = [json.loads(x) for x in (ds.path / "rejected.jsonl").read_text().splitlines()]
    in_file = Counter(r["problem"] for r in rejected)
    assert in_file == {"too_many_tokens": 2, "invalid_json": 1, "missing_value": 1}
    assert m["counts"]["rejected"] == m["rejected"]["rows"] == len(rejected) == 4
    assert m["rejected"]["by_reason"] == dict(in_file)
    assert m["counts"]["invalid"] == 1 and m["counts"]["too_many_tokens"] == 2
    assert m["counts"]["written"] + m["counts"]["rejected"] == m["counts"]["read"]
    assert set(in_file) <= set(PROBLEMS)  # every class a row can be dropped for is documented


def test_when_every_row_is_bad_the_error_says_why(tmp_path: Path) -> None:
    src = write(tmp_path / "d.jsonl", ["{broken"] * 6 + ["[1, 2]"] * 3)
    with pytest.raises(TuneforgeError) as err:
        prepare_dataset(DataConfig(path=str(src), output_dir=str(tmp_path / "ds"), on_error="drop"))
    assert str(err.value) == (
        f"data.path: no rows could be read from {src}; 9 invalid rows (invalid_json: 6, wrong_type: 3):\n"
        + "".join(
            f"  {src}:{n}: [invalid_json] not valid JSON: Expecting property name enclosed in double quotes "
            "at column 2\n"
            for n in range(1, 6)
        )
        + "  ... and 4 more\n"
        "  fix: fix the rows above (all of them are in the error's classes)"
    )


def test_too_few_examples_names_what_was_left_out(tmp_path: Path) -> None:
    src = write(tmp_path / "d.jsonl", [json.dumps({"text": ""})] * 8 + [good(i) for i in range(3)])
    with pytest.raises(TuneforgeError) as err:
        prepare_dataset(DataConfig(path=str(src), output_dir=str(tmp_path / "ds")))
    assert str(err.value).startswith(
        "data.path: only 3 usable examples after cleaning and deduplication (need at least 10); "
        "of 11 rows read, left out: missing_value: 8"
    )
