"""Atomic writes publish files and folders with ordinary permissions (not the private ones of temp files)."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from tuneforge.artifacts import atomic_dir, write_json_atomic
from tuneforge.errors import TuneforgeError


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_atomic_outputs_follow_the_umask(tmp_path: Path) -> None:
    umask = os.umask(0)
    os.umask(umask)
    assert umask & 0o044 == 0, "the test needs a umask that lets the group and others read"
    write_json_atomic(tmp_path / "a.json", {"x": 1})
    with atomic_dir(tmp_path / "run", kind="tuneforge.run") as tmp:
        write_json_atomic(tmp / "manifest.json", {})
    assert mode(tmp_path / "a.json") == 0o666 & ~umask  # mkstemp alone would leave 0o600
    assert mode(tmp_path / "run") == 0o777 & ~umask  # mkdtemp alone would leave 0o700
    assert mode(tmp_path / "run" / "manifest.json") == 0o666 & ~umask


KIND = "tuneforge.test"


def publish(final: Path, files: dict[str, str], kind: str = KIND) -> None:
    with atomic_dir(final, kind=kind) as tmp:
        for name, text in files.items():
            (tmp / name).write_text(text)


def tree(path: Path) -> dict[str, str]:
    return {str(p.relative_to(path)): p.read_text() for p in sorted(path.rglob("*")) if p.is_file()}


def test_a_folder_tuneforge_made_is_replaced_whole(tmp_path: Path) -> None:
    publish(tmp_path / "out", {"a.txt": "1", "b.txt": "2"})
    publish(tmp_path / "out", {"c.txt": "3"})
    assert tree(tmp_path / "out") == {
        ".tuneforge": '{\n  "kind": "tuneforge.test",\n  "entries": [\n    "c.txt"\n  ]\n}\n',
        "c.txt": "3",
    }
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize(
    "setup",
    [
        pytest.param({"notes.txt": "mine"}, id="no-manifest"),
        pytest.param({"manifest.json": '{"kind": "something.else"}', "x.txt": "mine"}, id="other-kind"),
        pytest.param(
            {".tuneforge": '{"kind": "other", "entries": ["x.txt"]}', "x.txt": "m"}, id="other-marker"
        ),
        pytest.param({".tuneforge": "not json", "x.txt": "mine"}, id="broken-marker"),
    ],
)
def test_a_folder_tuneforge_did_not_make_is_refused_before_work(
    tmp_path: Path, setup: dict[str, str]
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    for name, text in setup.items():
        (out / name).write_text(text)
    started = False
    with pytest.raises(TuneforgeError) as err, atomic_dir(out, kind=KIND):
        started = True
    assert not started, "the refusal comes before the caller does any work"
    assert str(err.value) == (
        f"{out} exists and is not a {KIND} folder made by tuneforge; it is left as it is\n"
        "  fix: choose another output path, or remove the folder yourself if you no longer need it"
    )
    assert tree(out) == setup
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_files_added_to_a_folder_tuneforge_made_are_never_deleted(tmp_path: Path) -> None:
    publish(tmp_path / "out", {"a.txt": "1"})
    (tmp_path / "out" / "my-notes.md").write_text("precious")
    with pytest.raises(TuneforgeError, match=r"holds files tuneforge did not write \(my-notes.md\)"):
        publish(tmp_path / "out", {"a.txt": "2"})
    assert (tmp_path / "out" / "my-notes.md").read_text() == "precious"
    assert (tmp_path / "out" / "a.txt").read_text() == "1"


def test_a_file_or_link_in_the_way_is_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("mine")
    (tmp_path / "target").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "target")
    for name in ("file", "link"):
        with pytest.raises(TuneforgeError, match="exists and is not a folder tuneforge made"):
            publish(tmp_path / name, {"a": "1"})
    assert (tmp_path / "file").read_text() == "mine" and (tmp_path / "link").is_symlink()


def test_the_current_folder_and_its_parents_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    for final in (Path("."), Path(".."), tmp_path):
        with pytest.raises(TuneforgeError, match="is the current folder or one above it"):
            publish(final, {"x": "1"})
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "b"]


def test_a_legacy_dataset_without_marker_is_replaced(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    out.mkdir()
    (out / "manifest.json").write_text('{"kind": "tuneforge.dataset"}')
    (out / "train.jsonl").write_text("")
    publish(out, {"manifest.json": '{"kind": "tuneforge.dataset"}'}, kind="tuneforge.dataset")
    assert sorted(tree(out)) == [".tuneforge", "manifest.json"]


def test_disk_full_is_one_line_and_changes_nothing(tmp_path: Path) -> None:
    publish(tmp_path / "out", {"a.txt": "old"})
    with pytest.raises(TuneforgeError) as err, atomic_dir(tmp_path / "out", kind=KIND) as tmp:
        (tmp / "a.txt").write_text("new")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert str(err.value).startswith(
        f"no space left on the disk while writing {tmp_path / 'out'} (No space left on device); "
        "nothing was changed"
    )
    assert err.value.__cause__ is None and err.value.__suppress_context__
    assert tree(tmp_path / "out")["a.txt"] == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_legacy_checkpoint_without_marker_is_replaced(tmp_path: Path) -> None:
    step = tmp_path / "step-00000010"
    step.mkdir()
    for name in ("weights.safetensors", "optimizer.safetensors", "rng.safetensors", "state.json", "COMPLETE"):
        (step / name).write_text("old")
    publish(step, {"COMPLETE": "new"}, kind="tuneforge.checkpoint")
    assert tree(step)["COMPLETE"] == "new"
    (step / ".tuneforge").unlink()
    (step / "state.json").write_text("{}")
    (step / "notes.txt").write_text("mine")
    with pytest.raises(TuneforgeError, match=r"holds files tuneforge did not write \(notes.txt\)"):
        publish(step, {"COMPLETE": "newer"}, kind="tuneforge.checkpoint")


def test_an_empty_folder_made_for_the_output_is_used(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    publish(tmp_path / "out", {"a.txt": "1"})
    assert tree(tmp_path / "out")["a.txt"] == "1"


@pytest.mark.parametrize("jsonl", [False, True])
def test_deeply_nested_json_is_a_clear_error_naming_the_file(tmp_path: Path, jsonl: bool) -> None:
    from tuneforge.artifacts import read_json, read_jsonl

    p = tmp_path / ("rows.jsonl" if jsonl else "manifest.json")
    p.write_text('{"ok": 1}\n' * jsonl + "[" * 200_000 + "]" * 200_000 + "\n")
    with pytest.raises(TuneforgeError, match="nested too deeply") as err:
        (read_jsonl if jsonl else read_json)(p)
    assert err.value.where == (f"{p}:2" if jsonl else str(p))


def test_a_released_run_lock_leaves_no_file_and_still_excludes(tmp_path: Path) -> None:
    """Issue 21: a stale train.lock stayed in every finished run."""
    from tuneforge.artifacts import RunLock

    path = tmp_path / "run" / "train.lock"
    RunLock.take(path).release(remove=True)
    assert not path.exists()
    second = RunLock.take(path)
    with pytest.raises(TuneforgeError, match="is in use by another tuneforge process"):
        RunLock.take(path)
    second.release()
    assert path.read_text() == f"{os.getpid()}\n"  # a plain release keeps the file
