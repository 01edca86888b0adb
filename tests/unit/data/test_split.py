"""Splitting: stratified, seeded, byte-identical; duplicates kept whole; user splits; leakage check."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tuneforge.config import DataConfig
from tuneforge.data import prepare_dataset
from tuneforge.data.leakage import find_leakage
from tuneforge.data.split import split_indices, split_name
from tuneforge.errors import TuneforgeError


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def read(ds: Path, split: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (ds / f"{split}.jsonl").read_text().splitlines()]


def words(rng: random.Random, n: int = 30) -> list[str]:
    return [f"w{rng.randrange(10**6)}" for _ in range(n)]


def test_split_indices_stratifies_every_label() -> None:
    strata = ["a"] * 100 + ["b"] * 40 + ["c"] * 7  # largest remainders: ties go to validation first
    out = split_indices(strata, (0.7, 0.15, 0.15), seed=1)
    per = {name: Counter(strata[i] for i in idx) for name, idx in out.items()}
    assert per == {
        "train": Counter(a=70, b=28, c=5),
        "validation": Counter(a=15, b=6, c=1),
        "test": Counter(a=15, b=6, c=1),
    }
    assert sorted(i for idx in out.values() for i in idx) == list(range(147))


def test_split_indices_is_seeded() -> None:
    strata = [i % 3 for i in range(60)]
    assert split_indices(strata, (0.7, 0.15, 0.15), seed=5) == split_indices(
        strata, (0.7, 0.15, 0.15), seed=5
    )
    assert split_indices(strata, (0.7, 0.15, 0.15), seed=5) != split_indices(
        strata, (0.7, 0.15, 0.15), seed=6
    )


def test_split_indices_keeps_groups_whole() -> None:
    groups = [i // 4 for i in range(80)]  # 20 groups of 4
    out = split_indices([0] * 80, (0.7, 0.15, 0.15), seed=0, groups=groups)
    where = {i: name for name, idx in out.items() for i in idx}
    for g in range(20):
        assert len({where[i] for i in range(g * 4, g * 4 + 4)}) == 1
    assert {name: len(idx) for name, idx in out.items()} == {"train": 56, "validation": 12, "test": 12}


def test_split_names_accept_common_spellings() -> None:
    assert [split_name(v) for v in ("Train", " val ", "dev", "valid", "TEST", "holdout", None)] == [
        "train",
        "validation",
        "validation",
        "validation",
        "test",
        None,
        None,
    ]


def test_prepared_splits_are_stratified(tmp_path: Path) -> None:
    rng = random.Random(0)
    rows = [
        {"text": " ".join(words(rng)), "label": lab}
        for lab, n in (("x", 60), ("y", 30), ("z", 10))
        for _ in range(n)
    ]
    rng.shuffle(rows)
    ds = prepare_dataset(
        DataConfig(path=str(write_jsonl(tmp_path / "d.jsonl", rows)), output_dir=str(tmp_path / "ds"))
    )
    m = ds.manifest
    assert m["label_distribution"] == {
        "train": {"x": 42, "y": 21, "z": 7},
        "validation": {"x": 9, "y": 5, "z": 2},
        "test": {"x": 9, "y": 4, "z": 1},
    }
    for split, dist in m["label_distribution"].items():
        assert Counter(r["label"] for r in read(ds.path, split)) == Counter(dist)


def test_same_input_and_config_give_byte_identical_output(tmp_path: Path) -> None:
    rng = random.Random(2)
    rows = [{"text": " ".join(words(rng)), "label": rng.choice("abc")} for _ in range(200)]
    rows += [{"text": rows[i]["text"] + " extra", "label": rows[i]["label"]} for i in range(0, 40, 2)]
    src = write_jsonl(tmp_path / "d.jsonl", rows)
    cfg = DataConfig(path=str(src), output_dir=str(tmp_path / "ds"), dedup="exact")
    prepare_dataset(cfg)
    first = {p.name: p.read_bytes() for p in sorted((tmp_path / "ds").iterdir())}
    prepare_dataset(cfg, force=True)
    second = {p.name: p.read_bytes() for p in sorted((tmp_path / "ds").iterdir())}
    assert list(first) == [
        ".tuneforge",  # the marker that lets a later prepare replace this folder
        "manifest.json",
        "report.html",
        "report.md",
        "test.jsonl",
        "train.jsonl",
        "validation.jsonl",
    ]
    assert first == second
    prepare_dataset(cfg.model_copy(update={"seed": 7}), force=True)
    assert (tmp_path / "ds" / "train.jsonl").read_bytes() != first["train.jsonl"]


def test_near_duplicates_kept_by_exact_mode_stay_in_one_split(tmp_path: Path) -> None:
    rng = random.Random(3)
    rows = []
    for i in range(60):
        w = words(rng, 60)
        rows.append({"text": " ".join(w), "label": "ab"[i % 2]})
        w[30] = "edited"
        rows.append({"text": " ".join(w), "label": "ab"[i % 2]})
    src = write_jsonl(tmp_path / "d.jsonl", rows)
    ds = prepare_dataset(DataConfig(path=str(src), output_dir=str(tmp_path / "ds"), dedup="exact"))
    split_of = {r["text"]: s for s in ("train", "validation", "test") for r in read(ds.path, s)}
    assert len(split_of) == 120
    for i in range(0, 120, 2):
        assert split_of[rows[i]["text"]] == split_of[rows[i + 1]["text"]]
    m = ds.manifest
    assert m["duplicates"]["clusters"] == 60 and m["counts"]["near_duplicates"] == 0
    # 30 pairs per label, allotted as pairs: 21 / 5 / 4 (the odd half pair goes to validation).
    assert m["splits"] == {"train": 84, "validation": 20, "test": 16}
    assert m["leakage"] == {"exact": 0, "near": 0, "dropped": 0, "examples": []}


def test_user_split_column_is_respected(tmp_path: Path) -> None:
    rng = random.Random(4)
    names = ["train"] * 14 + ["val"] * 3 + ["Test"] * 3
    rows = [{"text": " ".join(words(rng)), "label": "ab"[i % 2], "part": names[i]} for i in range(20)]
    src = write_jsonl(tmp_path / "d.jsonl", rows)
    ds = prepare_dataset(DataConfig(path=str(src), output_dir=str(tmp_path / "ds"), split_column="part"))
    want = {"train": "train", "val": "validation", "Test": "test"}
    for split in ("train", "validation", "test"):
        got = sorted(r["text"] for r in read(ds.path, split))
        assert got == sorted(r["text"] for r in rows if want[r["part"]] == split)
        assert all(set(r) == {"text", "label"} for r in read(ds.path, split))


def test_an_unknown_split_value_is_an_invalid_row(tmp_path: Path) -> None:
    rows = [{"text": f"row number {i}", "label": "a", "part": "train"} for i in range(12)]
    rows[4]["part"] = "holdout"
    src = write_jsonl(tmp_path / "d.jsonl", rows)
    with pytest.raises(TuneforgeError) as err:
        prepare_dataset(DataConfig(path=str(src), output_dir=str(tmp_path / "ds"), split_column="part"))
    assert (
        f"{src}:5: [unknown_split] split 'holdout' is not train, validation (val, valid, dev) or test"
        in str(err.value)
    )
    assert not (tmp_path / "ds").exists()


def test_leakage_into_train_from_user_splits_is_dropped(tmp_path: Path) -> None:
    rng = random.Random(5)
    rows = [{"text": " ".join(words(rng, 60)), "label": "ab"[i % 2], "part": "train"} for i in range(30)]
    for i in range(24, 30):
        rows[i]["part"] = "test" if i % 2 else "validation"
    exact = {**rows[25], "text": rows[25]["text"].upper() + "!", "part": "train"}  # copy of a test row
    near_words = rows[26]["text"].split()
    near_words[10] = "changed"
    near = {**rows[26], "text": " ".join(near_words), "part": "train"}  # near copy of a validation row
    src = write_jsonl(tmp_path / "d.jsonl", [*rows, exact, near])
    for dedup in ("none", "exact"):
        ds = prepare_dataset(
            DataConfig(path=str(src), output_dir=str(tmp_path / dedup), split_column="part", dedup=dedup)
        )
        m = ds.manifest
        train = {r["text"] for r in read(ds.path, "train")}
        assert near["text"] not in train and exact["text"] not in train
        assert m["splits"] == {"train": 24, "validation": 3, "test": 3}
        # With dedup=exact the train copy is removed as a duplicate (the test copy is the one kept).
        assert (m["leakage"]["exact"], m["leakage"]["near"]) == ((1, 1) if dedup == "none" else (0, 1))
        assert m["counts"]["exact_duplicates"] == (0 if dedup == "none" else 1)
        assert any("training rows duplicated a validation/test row" in w for w in m["warnings"])
    ds = prepare_dataset(DataConfig(path=str(src), output_dir=str(tmp_path / "near"), split_column="part"))
    assert ds.manifest["counts"]["near_duplicates"] == 1 and ds.manifest["leakage"]["dropped"] == 0
    assert rows[26]["text"] in {r["text"] for r in read(ds.path, "validation")}


def test_a_near_duplicate_chain_through_a_training_row_never_costs_a_fixed_test_row(tmp_path: Path) -> None:
    """Test rows A and B are not near duplicates of each other, but a new training row C is near both: the
    cluster A-C-B once kept one row of it, and a retrain's frozen test split lost B."""
    rng = random.Random(9)
    base = words(rng, 200)

    def changed(ws: list[str], at: range) -> list[str]:
        return [f"other{i}" if i in at else w for i, w in enumerate(ws)]

    c_words = changed(base, range(20, 200, 40))  # 5 single-word changes: 15 of 198 shingles
    b_words = changed(c_words, range(40, 200, 40))  # 5 more
    rows = [{"text": " ".join(words(rng, 60)), "label": "ab"[i % 2], "part": "train"} for i in range(24)]
    a = {"text": " ".join(base), "label": "a", "part": "test"}
    b = {"text": " ".join(b_words), "label": "a", "part": "test"}
    c = {"text": " ".join(c_words), "label": "a", "part": "train"}
    src = write_jsonl(tmp_path / "d.jsonl", [*rows, a, b, c])
    ds = prepare_dataset(DataConfig(path=str(src), output_dir=str(tmp_path / "ds"), split_column="part"))
    assert sorted(r["text"] for r in read(ds.path, "test")) == sorted([a["text"], b["text"]])
    assert c["text"] not in {r["text"] for r in read(ds.path, "train")}
    assert ds.manifest["counts"]["near_duplicates"] == 1  # C, and only C


def test_find_leakage_on_families_and_near_pairs() -> None:
    split = np.array([0, 2, 0, 0, 1, -1, 0])
    family = np.array([0, 0, 2, 3, 4, 5, 3])  # rows 0 and 1 share a text; rows 3 and 6 share another
    near = np.array([[2, 5], [3, 4]])  # row 5 was not kept; family 3 is near the validation row 4
    leak = find_leakage(split, family, near)
    assert leak.drop.tolist() == [True, False, False, True, False, False, True]
    assert (leak.exact, leak.near) == (1, 2)
    assert leak.examples == [(3, 4), (0, 1)]
