"""prepare never deletes what it did not write: foreign folders, the input's own folder, `.`, a full disk."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

from tuneforge.config import DataConfig
from tuneforge.data import prepare_dataset
from tuneforge.errors import TuneforgeError


def rows(path: Path, n: int = 12, tag: str = "") -> Path:
    path.write_text(
        "".join(
            json.dumps({"text": f"sentence number {i} about topic {i * 7} {tag}"}) + "\n" for i in range(n)
        )
    )
    return path


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_an_existing_folder_of_the_users_is_refused_and_kept(tmp_path: Path) -> None:
    src = rows(tmp_path / "data.jsonl")
    mine = tmp_path / "thesis"
    mine.mkdir()
    (mine / "chapter1.tex").write_text("years of work")
    (mine / "manifest.json").write_text('{"kind": "my.own"}')
    before = snapshot(tmp_path)
    with pytest.raises(TuneforgeError) as err:
        prepare_dataset(DataConfig(path=str(src), output_dir=str(mine)))
    assert str(err.value).startswith(f"{mine} exists and is not a tuneforge.dataset folder made by tuneforge")
    assert snapshot(tmp_path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.jsonl", "thesis"]


def test_the_folder_holding_the_input_is_refused(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    src = rows(raw / "data.jsonl")
    before = snapshot(tmp_path)
    for out in (raw, tmp_path):
        with pytest.raises(TuneforgeError) as err:
            prepare_dataset(DataConfig(path=str(src), output_dir=str(out)))
        assert str(err.value).startswith(
            f"data.output_dir: the output folder {out} holds the input {src}; "
            "replacing it would delete the input"
        )
    assert snapshot(tmp_path) == before


def test_an_output_inside_a_folder_input_is_refused(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    rows(raw / "a.jsonl")
    with pytest.raises(TuneforgeError, match="is inside the input folder"):
        prepare_dataset(DataConfig(path=str(raw), output_dir=str(raw / "ds")))
    assert sorted(p.name for p in raw.iterdir()) == ["a.jsonl"]


def test_output_dir_dot_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    work = tmp_path / "project"
    work.mkdir()
    src = rows(tmp_path / "data.jsonl")
    (work / "notes.txt").write_text("keep")
    monkeypatch.chdir(work)
    with pytest.raises(TuneforgeError) as err:
        prepare_dataset(DataConfig(path=str(src), output_dir="."))
    assert "is the current folder or one above it" in str(err.value)
    assert (work / "notes.txt").read_text() == "keep"


def test_a_prepared_dataset_is_replaced_and_user_files_in_it_are_not(tmp_path: Path) -> None:
    src = rows(tmp_path / "data.jsonl")
    out = tmp_path / "ds"
    prepare_dataset(DataConfig(path=str(src), output_dir=str(out)))
    rows(src, tag="edited")
    prepare_dataset(DataConfig(path=str(src), output_dir=str(out)))  # ours: replaced
    assert "edited" in (out / "train.jsonl").read_text()
    (out / "my-analysis.ipynb").write_text("{}")
    rows(src, tag="again")
    with pytest.raises(TuneforgeError, match=r"holds files tuneforge did not write \(my-analysis.ipynb\)"):
        prepare_dataset(DataConfig(path=str(src), output_dir=str(out)))
    assert "edited" in (out / "train.jsonl").read_text()


def test_disk_full_is_one_line_the_old_dataset_stays(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = rows(tmp_path / "data.jsonl")
    out = tmp_path / "ds"
    prepare_dataset(DataConfig(path=str(src), output_dir=str(out)))
    before = snapshot(out)
    rows(src, tag="edited")

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("tuneforge.data.prepare.write_reports", full)
    with pytest.raises(TuneforgeError) as err:
        prepare_dataset(DataConfig(path=str(src), output_dir=str(out)))
    assert str(err.value).splitlines()[0] == (
        f"no space left on the disk while writing {out} (No space left on device); nothing was changed"
    )
    assert snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.jsonl", "ds"]
