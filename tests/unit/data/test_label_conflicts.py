"""One text under two labels is a conflict of its own class; "exact" duplicates name their normalisation."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from tuneforge.config import DataConfig
from tuneforge.data import prepare_dataset
from tuneforge.errors import TuneforgeError


def make(tmp_path: Path) -> Path:
    rng = random.Random(5)
    rows: list[dict[str, Any]] = [
        {"text": " ".join(f"w{rng.randrange(10**6)}" for _ in range(10)), "label": "ab"[i % 2]}
        for i in range(20)
    ]
    rows += [
        {"text": "The plot was thin, but the acting saved it.", "label": "a"},  # line 21
        {"text": "the plot was thin but the acting saved it", "label": "b"},  # 22: same text, other label
        {"text": "THE PLOT WAS THIN -- BUT THE ACTING SAVED IT!", "label": "a"},  # 23: a third copy
        {"text": rows[0]["text"].upper(), "label": rows[0]["label"]},  # 24: plain exact duplicate of line 1
    ]
    src = tmp_path / "d.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return src


def written(ds: Path) -> list[dict[str, Any]]:
    return [
        json.loads(x)
        for s in ("train", "validation", "test")
        for x in (ds / f"{s}.jsonl").read_text().splitlines()
    ]


def test_conflicting_copies_are_all_dropped_by_default(tmp_path: Path) -> None:
    src = make(tmp_path)
    ds = prepare_dataset(DataConfig(path=str(src), output_dir=str(tmp_path / "ds"), dedup="exact"))
    m = ds.manifest
    assert m["label_conflicts"] == {"mode": "drop", "texts": 1, "rows": 3, "dropped": 3}
    assert m["counts"]["label_conflicts"] == 3 and m["counts"]["exact_duplicates"] == 1
    assert m["counts"]["written"] == 20 and m["counts"]["rejected"] == 3
    rejected = [json.loads(x) for x in (ds.path / "rejected.jsonl").read_text().splitlines()]
    assert [(r["where"], r["problem"]) for r in rejected] == [
        (f"{src}:21", "label_conflict"),
        (f"{src}:22", "label_conflict"),
        (f"{src}:23", "label_conflict"),
    ]
    assert rejected[1]["message"].startswith(
        "the same text (compared after NFKC normalisation, case folding, and punctuation and spacing "
        "reduced to one space) also has label 'a'; every copy is dropped"
    )
    assert not any("plot" in r["text"].lower() for r in written(ds.path))
    assert m["steps"][4]["dropped"] == {"exact_duplicate": 1, "near_duplicate": 0, "label_conflict": 3}
    assert m["steps"][4]["out"] == 20
    assert "1 texts appear under different labels (3 rows); every copy was dropped" in " ".join(m["warnings"])


def test_keep_leaves_one_copy_per_label_in_one_split(tmp_path: Path) -> None:
    src = make(tmp_path)
    ds = prepare_dataset(
        DataConfig(path=str(src), output_dir=str(tmp_path / "ds"), dedup="exact", label_conflicts="keep")
    )
    split_of = {}
    for s in ("train", "validation", "test"):
        for x in (ds.path / f"{s}.jsonl").read_text().splitlines():
            r = json.loads(x)
            if "plot" in r["text"].lower():
                split_of[r["label"]] = s
    assert sorted(split_of) == ["a", "b"] and len(set(split_of.values())) == 1
    assert ds.manifest["label_conflicts"] == {"mode": "keep", "texts": 1, "rows": 3, "dropped": 0}
    assert ds.manifest["counts"]["exact_duplicates"] == 2  # line 23 (a copy of 21's label) and line 24


def test_raise_lists_the_conflicts(tmp_path: Path) -> None:
    src = make(tmp_path)
    with pytest.raises(TuneforgeError) as err:
        prepare_dataset(DataConfig(path=str(src), output_dir=str(tmp_path / "ds"), label_conflicts="raise"))
    assert str(err.value) == (
        "data.label_conflicts: 1 texts appear under different labels (3 rows), e.g.:\n"
        f"  {src}:21: 'a'; {src}:22: 'b'; {src}:23: 'a'\n"
        "  fix: correct the labels, or set data.label_conflicts=drop (drop every copy) or keep"
    )
    assert not (tmp_path / "ds").exists()


def test_the_exact_match_normalisation_is_named(tmp_path: Path) -> None:
    ds = prepare_dataset(DataConfig(path=str(make(tmp_path)), output_dir=str(tmp_path / "ds")))
    expected = (
        "compared after NFKC normalisation, case folding, and punctuation and spacing reduced to one space"
    )
    assert ds.manifest["duplicates"]["exact_match"] == expected
    assert f"Exact duplicates are texts equal when {expected}." in (ds.path / "report.md").read_text()
