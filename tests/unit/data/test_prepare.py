"""The pipeline end to end: counts at every step and why, token lengths, reuse, errors that write nothing."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import pytest

from tests.tiny import TOKENIZER
from tuneforge.config import DataConfig, ModelConfig
from tuneforge.data import prepare_dataset
from tuneforge.errors import TuneforgeError


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text(
        "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8"
    )
    return path


def sentence(rng: random.Random, n: int = 12) -> str:
    return " ".join(f"w{rng.randrange(10**6)}" for _ in range(n))


def read(ds: Path, name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (ds / name).read_text().splitlines()]


def messy(tmp_path: Path) -> tuple[Path, list[Any]]:
    """20 good rows and one row for each way a row is dropped."""
    rng = random.Random(0)
    good = [{"text": sentence(rng), "label": "ab"[i % 2]} for i in range(20)]
    near = good[1]["text"].split()
    near[-1] = "changed"
    rows: list[Any] = [
        *good,
        '{"text": "broken json", ',  # line 21: invalid
        {"text": None, "label": "a"},  # 22: missing text
        {"text": "<b></b>", "label": "a"},  # 23: nothing left after HTML stripping
        {"text": "hi", "label": "a"},  # 24: shorter than min_chars
        {"text": "x" * 500, "label": "b"},  # 25: longer than max_chars
        {"text": sentence(rng, 40), "label": "b"},  # 26: more than max_tokens
        {"text": good[0]["text"].upper(), "label": "a"},  # 27: exact duplicate of line 1
        {
            "text": " ".join(near) + " " + " ".join(near[:12]),
            "label": "b",
        },  # 28: not similar enough to line 2
        {"text": good[2]["text"] + " extra", "label": "a"},  # 29: near duplicate of line 3
    ]
    return write_jsonl(tmp_path / "messy.jsonl", rows), rows


MESSY = {
    "on_error": "drop",
    "max_tokens": 30,
    "over_length": "drop",  # dropping long rows is an explicit choice (the default keeps and truncates)
    "clean": {"strip_html": True, "min_chars": 5, "max_chars": 400},
}


def test_counts_at_every_step_and_why(tmp_path: Path) -> None:
    src, rows = messy(tmp_path)
    ds = prepare_dataset(DataConfig(path=str(src), output_dir=str(tmp_path / "ds"), **MESSY))
    m = ds.manifest
    assert m["counts"] == {
        "read": 29,
        "invalid": 1,
        "missing_value": 1,
        "empty_after_cleaning": 1,
        "too_short": 1,
        "too_long": 1,
        "too_many_tokens": 1,
        "truncated": 0,
        "exact_duplicates": 1,
        "near_duplicates": 1,
        "leakage_dropped": 0,
        "rejected": 6,
        "written": 21,
    }
    assert [(s["step"], s.get("in"), s["out"]) for s in m["steps"]] == [
        ("read", None, 29),
        ("validate", 29, 28),
        ("clean", 28, 24),
        ("token_length", 24, 23),
        ("deduplicate", 23, 21),
        ("leakage_check", 21, 21),
        ("split", 21, {"train": 15, "validation": 4, "test": 2}),
    ]
    assert m["steps"][2]["changed"] == {"strip_html": 1}
    assert m["problems"] == {"invalid_json": 1}
    rejected = read(ds.path, "rejected.jsonl")
    assert [(r["where"], r["problem"]) for r in rejected] == [
        (f"{src}:21", "invalid_json"),
        (f"{src}:22", "missing_value"),
        (f"{src}:23", "empty_after_cleaning"),
        (f"{src}:24", "too_short"),
        (f"{src}:25", "too_long"),
        (f"{src}:26", "too_many_tokens"),
    ]
    assert rejected[5]["message"] == "40 tokens, more than data.max_tokens=30"
    assert rejected[1]["row"] == {"text": None, "label": "a"}
    kept = {r["text"] for split in ("train", "validation", "test") for r in read(ds.path, f"{split}.jsonl")}
    assert rows[27]["text"] in kept and rows[26]["text"] not in kept and rows[28]["text"] not in kept
    assert m["format"] == "classification" and m["labels"] == ["a", "b"]
    assert m["token_lengths"]["tokenizer"] == "whitespace"
    assert m["token_lengths"]["all"] == {
        "count": 21,
        "total": 264,
        "min": 12,
        "mean": 12.57,
        "p50": 12,
        "p90": 12,
        "p95": 12,
        "p99": 12,
        "max": 24,
    }


def test_invalid_rows_stop_the_run_and_nothing_is_written(tmp_path: Path) -> None:
    src, _ = messy(tmp_path)
    with pytest.raises(TuneforgeError) as err:
        prepare_dataset(DataConfig(path=str(src), output_dir=str(tmp_path / "ds")))
    assert str(err.value).startswith(
        f"1 invalid rows (invalid_json: 1):\n  {src}:21: [invalid_json] not valid JSON"
    )
    assert not (tmp_path / "ds").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["messy.jsonl"]


def test_over_length_raise_lists_the_rows(tmp_path: Path) -> None:
    rng = random.Random(1)
    rows = [{"text": sentence(rng, 5 if i != 3 else 9)} for i in range(12)]
    src = write_jsonl(tmp_path / "t.jsonl", rows)
    with pytest.raises(TuneforgeError) as err:
        prepare_dataset(
            DataConfig(path=str(src), output_dir=str(tmp_path / "ds"), max_tokens=8, over_length="raise")
        )
    assert str(err.value) == (
        f"data.over_length: 1 invalid rows (too_many_tokens: 1):\n  {src}:4: [too_many_tokens] 9 tokens, "
        "more than data.max_tokens=8\n  fix: raise data.max_tokens (or model.max_length), or set "
        "data.over_length=drop or truncate"
    )
    assert not (tmp_path / "ds").exists()


def test_long_texts_are_kept_whole_by_default_and_counted_as_cut_when_encoded(tmp_path: Path) -> None:
    rows = [{"text": f"row {i} " + " ".join(f"t{k}" for k in range(20 if i == 0 else 3))} for i in range(12)]
    src = write_jsonl(tmp_path / "t.jsonl", rows)
    ds = prepare_dataset(DataConfig(path=str(src), output_dir=str(tmp_path / "ds"), max_tokens=6))
    texts = {r["text"] for s in ("train", "validation", "test") for r in read(ds.path, f"{s}.jsonl")}
    assert rows[0]["text"] in texts and len(texts) == 12  # whole: training cuts it as data.truncation says
    tl = ds.manifest["token_lengths"]
    assert ds.manifest["counts"]["truncated"] == 1 and tl["all"]["max"] == 22
    assert tl["cut_when_encoded"]["all"] == 1 and tl["over_length"] == "truncate"
    assert "1 of 12 rows (8%) are longer than max_tokens=6" in (ds.path / "report.md").read_text()


def test_model_tokenizer_measures_lengths(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(TOKENIZER)
    rows = [{"text": f"hello world number {i}, this is a test", "label": "ab"[i % 2]} for i in range(12)]
    src = write_jsonl(tmp_path / "t.jsonl", rows)
    model = ModelConfig(
        name=str(TOKENIZER), max_length=22, task="classification"
    )  # the text, as a head sees it
    ds = prepare_dataset(
        DataConfig(path=str(src), output_dir=str(tmp_path / "ds"), over_length="drop"), model=model
    )
    lengths = [len(tok(r["text"], add_special_tokens=False)["input_ids"]) for r in rows]
    tl = ds.manifest["token_lengths"]
    assert lengths == [22] * 10 + [23] * 2  # "10" and "11" take one token more
    assert tl["tokenizer"] == str(TOKENIZER) and tl["max_tokens"] == 22
    assert ds.manifest["counts"]["too_many_tokens"] == 2
    assert tl["all"] == {
        "count": 10,
        "total": 220,
        "min": 22,
        "mean": 22.0,
        "p50": 22,
        "p90": 22,
        "p95": 22,
        "p99": 22,
        "max": 22,
    }


def test_chat_whose_first_answer_does_not_fit_is_dropped_with_the_reason(tmp_path: Path) -> None:
    def chat(user: str, answer: str) -> dict[str, Any]:
        return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]}

    rows = [chat(f"question {i}", f"answer {i}") for i in range(11)]
    rows.append(chat(" ".join(["long"] * 10), "short answer"))  # the prompt alone fills the limit
    rows.append(chat("q", " ".join(["long"] * 10)))  # the answer would be cut in the middle
    src = write_jsonl(tmp_path / "c.jsonl", rows)
    ds = prepare_dataset(DataConfig(path=str(src), output_dir=str(tmp_path / "ds"), max_tokens=8))
    rejected = read(ds.path, "rejected.jsonl")
    assert [(r["where"], r["problem"], r["message"]) for r in rejected] == [
        (f"{src}:{n}", "answer_too_long", f"{k} tokens up to the end of the first assistant answer, more "
         "than data.max_tokens=8: no complete answer fits")
        for n, k in ((12, 12), (13, 11))
    ]  # fmt: skip
    assert ds.manifest["counts"]["answer_too_long"] == 2 and ds.manifest["counts"]["written"] == 11


def test_missing_values_can_be_filled(tmp_path: Path) -> None:
    rows = [{"text": f"text {i}", "label": "a"} for i in range(11)] + [{"text": None, "label": "b"}]
    src = write_jsonl(tmp_path / "m.jsonl", rows)
    ds = prepare_dataset(
        DataConfig(
            path=str(src), output_dir=str(tmp_path / "ds"), clean={"missing": "fill", "fill_value": "n/a"}
        )
    )
    texts = {r["text"] for s in ("train", "validation", "test") for r in read(ds.path, f"{s}.jsonl")}
    assert "n/a" in texts and ds.manifest["cleaning"]["filled_missing"] == 1


def test_too_few_examples_is_an_error(tmp_path: Path) -> None:
    src = write_jsonl(
        tmp_path / "f.jsonl", [{"text": "same text"}] * 5 + [{"text": f"other {i}"} for i in range(6)]
    )
    with pytest.raises(
        TuneforgeError, match=r"only 7 usable examples after cleaning and deduplication \(need at "
    ):
        prepare_dataset(DataConfig(path=str(src), output_dir=str(tmp_path / "ds")))
    assert not (tmp_path / "ds").exists()


def test_a_huge_row_is_a_clear_error(tmp_path: Path) -> None:
    rows = [{"text": f"row {i}"} for i in range(12)]
    rows[5] = {"text": "x" * 5000}
    src = write_jsonl(tmp_path / "h.jsonl", rows)
    with pytest.raises(TuneforgeError) as err:
        prepare_dataset(DataConfig(path=str(src), output_dir=str(tmp_path / "ds"), max_row_bytes=2048))
    assert f"{src}:6: [row_too_large]" in str(err.value)
    assert not (tmp_path / "ds").exists()


def test_group_distribution_and_records_carry_the_group(tmp_path: Path) -> None:
    rng = random.Random(2)
    rows = [
        {"text": sentence(rng), "label": "ab"[i % 2], "region": "north" if i < 36 else "south"}
        for i in range(40)
    ]
    src = write_jsonl(tmp_path / "g.jsonl", rows)
    ds = prepare_dataset(DataConfig(path=str(src), output_dir=str(tmp_path / "ds"), group_column="region"))
    m = ds.manifest
    dist = m["group_distribution"]
    assert {s: sum(d.values()) for s, d in dist.items()} == m["splits"]
    assert sum(d["south"] for d in dist.values()) == 4
    assert all(r["group"] in ("north", "south") for r in read(ds.path, "train.jsonl"))
    assert "group (region) 'south' has only " in " ".join(m["warnings"])
    with pytest.raises(TuneforgeError, match="column 'area' is not in the data"):
        prepare_dataset(DataConfig(path=str(src), output_dir=str(tmp_path / "ds2"), group_column="area"))


def test_reuse_on_same_content_and_an_edited_input_is_noticed(tmp_path: Path) -> None:
    rows = [{"text": f"text number {i}", "label": "ab"[i % 2]} for i in range(12)]
    src = write_jsonl(tmp_path / "r.jsonl", rows)
    cfg = DataConfig(path=str(src), output_dir=str(tmp_path / "ds"))
    first = prepare_dataset(cfg)
    manifest = first.path / "manifest.json"
    stamp = manifest.stat().st_mtime_ns
    os.utime(src, ns=(stamp + 10**9, stamp + 10**9))  # a newer file time alone is no change
    assert prepare_dataset(cfg).path == first.path and manifest.stat().st_mtime_ns == stamp
    old_fingerprint = first.manifest["fingerprint"]
    rows[3]["text"] = "text number 9"  # same size, same name, new content (and now a duplicate)
    write_jsonl(src, rows)
    again = prepare_dataset(cfg)
    assert again.manifest["fingerprint"] != old_fingerprint
    assert again.manifest["counts"]["exact_duplicates"] == 1
    changed = prepare_dataset(cfg.model_copy(update={"seed": 1}))
    assert changed.manifest["config"]["seed"] == 1


def test_progress_is_silent_when_not_a_terminal(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    src = write_jsonl(tmp_path / "p.jsonl", [{"text": f"text {i}"} for i in range(12)])
    prepare_dataset(DataConfig(path=str(src), output_dir=str(tmp_path / "ds")))
    assert capfd.readouterr() == ("", "")


def test_a_classification_set_of_one_label_is_refused_and_max_rows_on_a_sorted_file_is_named(
    tmp_path: Path,
) -> None:
    """data.max_rows keeps a file's first rows; on a file sorted by label (as the demo tweets are) that was a
    one-label dataset, written without a word. It is refused, and nothing is written."""
    rng = random.Random(1)
    rows = [{"text": sentence(rng), "label": label} for label in ("neg", "pos") for _ in range(30)]
    src = write_jsonl(tmp_path / "sorted.jsonl", rows)
    out = tmp_path / "ds"
    cfg = DataConfig(path=str(src), format="classification", output_dir=str(out), max_rows=25)
    with pytest.raises(TuneforgeError) as err:
        prepare_dataset(cfg)
    assert err.value.where == "data.max_rows"
    assert "all 25 usable examples are labelled 'neg': a classifier needs two labels" in str(err.value)
    assert "kept only the file's first 25 rows" in str(err.value) and not out.exists()

    one = write_jsonl(tmp_path / "one.jsonl", rows[:30])
    with pytest.raises(TuneforgeError) as err:
        prepare_dataset(DataConfig(path=str(one), format="classification", output_dir=str(out)))
    assert err.value.where == "data.label_column" and "max_rows" not in str(err.value) and not out.exists()

    done = prepare_dataset(cfg.model_copy(update={"max_rows": 40}))  # 30 neg, 10 pos: two labels
    assert done.manifest["labels"] == ["neg", "pos"]
