"""Strict validation: a fixture per bad-input class, named by file:line and class; nothing is written."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tuneforge.config import DataConfig
from tuneforge.data import prepare_dataset
from tuneforge.errors import TuneforgeError

ASSETS = Path(__file__).parents[2] / "assets" / "data"
BAD = ASSETS / "bad"
GOOD = ASSETS / "good"

CASES = [
    ("invalid_json.jsonl", {}, 3, "invalid_json", "not valid JSON: Expecting ',' delimiter at column 28"),
    ("wrong_type.jsonl", {}, 2, "wrong_type", "expected a JSON object, got array"),
    ("missing_key.jsonl", {}, 3, "missing_key", "missing 'output'"),
    ("unknown_key.jsonl", {}, 2, "unknown_key", "messages[1] has unknown key 'mood'"),
    (
        "unknown_role.jsonl",
        {},
        3,
        "unknown_role",
        "messages[1].role 'bot' is not one of ['system', 'user', 'assistant']",
    ),
    ("empty_content.jsonl", {}, 1, "empty_content", "messages[1].content is empty"),
    ("no_assistant.jsonl", {}, 2, "no_assistant", "the conversation has no assistant message to learn from"),
    (
        "system_not_first.jsonl",
        {},
        1,
        "system_not_first",
        "messages[1] is a system message but not the first",
    ),
    (
        "unknown_label.csv",
        {"labels": ["positive", "negative"]},
        4,
        "unknown_label",
        "label 'maybe' is not in data.labels ['positive', 'negative']",
    ),
    ("not_a_number.csv", {"format": "regression"}, 3, "not_a_number", "label 'high' is not a number"),
    ("invalid_utf8.jsonl", {}, 2, "encoding", "invalid utf-8 byte 0xFF at column 15"),
    ("invalid_utf8.csv", {}, 3, "encoding", "invalid utf-8 byte 0xEF in field 'text'"),
    ("wrong_columns.csv", {}, 3, "wrong_columns", "expected 2 fields, found 3"),
    (
        "invalid_json.json",
        {},
        4,
        "invalid_json",
        "not valid JSON: Expecting property name enclosed in double quotes at column 51",
    ),
]


def lines(err: TuneforgeError) -> list[str]:
    """The message's lines without indentation (problem lists are indented under their summary)."""
    return [line.strip() for line in err.render().splitlines()]


def prepare(path: Path, out: Path, **cfg: Any) -> Any:
    return prepare_dataset(DataConfig(path=str(path), output_dir=str(out), min_examples=1, **cfg))


@pytest.mark.parametrize(("name", "cfg", "line", "kind", "message"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_names_file_line_and_class(
    tmp_path: Path, name: str, cfg: dict[str, Any], line: int, kind: str, message: str
) -> None:
    out = tmp_path / "out"
    with pytest.raises(TuneforgeError) as err:
        prepare(BAD / name, out, **cfg)
    assert f"{BAD / name}:{line}: [{kind}] {message}" in lines(err.value)[:3]
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # no temporary directory left behind either


def test_bom_crlf_blank_line_and_no_final_newline_are_fine(tmp_path: Path) -> None:
    ds = prepare(GOOD / "bom_crlf.jsonl", tmp_path / "out", splits=(1.0, 0.0, 0.0))
    assert sorted(r["text"] for r in ds.records("train")) == [
        "first row",
        "second row",
        "third row",
    ]
    assert ds.manifest["counts"]["read"] == 3


def test_legacy_encoded_csv_is_sniffed_not_rejected(tmp_path: Path) -> None:
    ds = prepare(GOOD / "cp1252.csv", tmp_path / "out", splits=(1.0, 0.0, 0.0))
    assert sorted(r["text"] for r in ds.records("train")) == ["déjà vu", "naïve café"]


def test_sharegpt_fixture_becomes_openai_messages(tmp_path: Path) -> None:
    ds = prepare(GOOD / "sharegpt.jsonl", tmp_path / "out", splits=(1.0, 0.0, 0.0))
    assert ds.records("train") == [
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello!"},
            ]
        }
    ]


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".txt", ".json"])
def test_a_huge_row_is_reported_not_loaded(tmp_path: Path, suffix: str) -> None:
    p = tmp_path / f"data{suffix}"
    big = "word " * 1000  # 5000 characters over a 1024-byte cap
    rows = [{"text": "small one"}, {"text": big}, {"text": "small two"}]
    if suffix == ".jsonl":
        p.write_text("".join(json.dumps(r) + "\n" for r in rows))
        expected = f"{p}:2: [row_too_large] line is longer than 1024 characters"
    elif suffix == ".csv":
        p.write_text("text\n" + "".join(r["text"] + "\n" for r in rows))
        expected = (
            f"{p}:3: [row_too_large] a field is longer than 1024 characters (or a quote is never closed)"
        )
    elif suffix == ".txt":
        p.write_text("\n\n".join(r["text"] for r in rows))
        expected = f"{p}:3: [row_too_large] line is longer than 1024 characters"
    else:
        p.write_text(json.dumps(rows))
        expected = f"{p} $[1]: [row_too_large] the row is larger than 1024 characters"
    with pytest.raises(TuneforgeError) as err:
        prepare(p, tmp_path / "out", max_row_bytes=1024)
    assert expected in lines(err.value)
    assert not (tmp_path / "out").exists()


def test_problems_are_counted_per_class_and_listed_up_to_a_cap(tmp_path: Path) -> None:
    p = tmp_path / "d.jsonl"
    content = [json.dumps({"text": f"ok {i}", "label": "a"}) for i in range(5)]
    content += ["not json"] * 25 + ['["array"]'] * 3
    p.write_text("\n".join(content) + "\n")
    with pytest.raises(TuneforgeError) as err:
        prepare(p, tmp_path / "out")
    text = err.value.render().splitlines()
    assert text[0] == "28 invalid rows (invalid_json: 25, wrong_type: 3):"
    assert text[1] == f"  {p}:6: [invalid_json] not valid JSON: Expecting value at column 1"
    assert f"  {p}:31: [wrong_type] expected a JSON object, got array" not in text  # past the cap
    assert "  ... and 8 more" in text


def test_drop_mode_keeps_good_rows_and_writes_reasons(tmp_path: Path) -> None:
    ds = prepare(BAD / "unknown_role.jsonl", tmp_path / "out", on_error="drop", dedup="none")
    rejected = [json.loads(line) for line in (ds.path / "rejected.jsonl").read_text().splitlines()]
    assert [(r["where"], r["problem"]) for r in rejected] == [
        (f"{BAD / 'unknown_role.jsonl'}:3", "unknown_role")
    ]
    assert ds.manifest["counts"]["read"] == 3
