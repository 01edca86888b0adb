"""On-disk contracts between stages: a dataset directory and a run directory, each with a manifest.json.

Every write here is atomic (temporary sibling, fsync, rename), so a failed command never leaves a half-written
file or directory behind.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from tuneforge.errors import DiskFull, TuneforgeError

MANIFEST = "manifest.json"
LOCK = "train.lock"
SPLITS = ("train", "validation", "test")


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp/mkdtemp create private (0600/0700) files; what we publish by renaming them gets the permissions an
# ordinary open() would have given, so a team sharing a machine can read each other's runs and datasets.
_UMASK = _umask()
FILE_MODE, DIR_MODE = 0o666 & ~_UMASK, 0o777 & ~_UMASK


@contextlib.contextmanager
def atomic_file(path: Path, mode: str = "wb") -> Iterator[IO[Any]]:
    """Stream into a temporary sibling that replaces `path` only once everything was written (and synced)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, FILE_MODE)
        binary = "b" in mode
        with os.fdopen(fd, mode, encoding=None if binary else "utf-8", newline=None if binary else "\n") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    with atomic_file(path) as f:
        f.write(data)


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False) + "\n")


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TuneforgeError(f"{path} does not exist") from None
    except json.JSONDecodeError as err:
        raise TuneforgeError(f"not valid JSON: {err.msg}", where=f"{path}:{err.lineno}") from None
    except RecursionError:
        raise TuneforgeError("JSON nested too deeply to read", where=str(path), fix=_DEEP_FIX) from None


# json.loads recurses once per nesting level; a hand-edited or hostile file nested thousands deep would
# otherwise end the command with a RecursionError traceback instead of naming the file.
_DEEP_FIX = (
    "no tuneforge file nests more than a few levels: restore the file from the run or dataset that wrote it"
)


def fsync_tree(root: Path) -> None:
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            with open(os.path.join(dirpath, name), "rb") as f:
                os.fsync(f.fileno())
        _fsync_dir(Path(dirpath))


# Every folder atomic_dir publishes carries this marker: its kind and the entries tuneforge wrote. Only a
# folder whose marker names the same kind, and that holds nothing else, may be replaced, so pointing an output
# at a folder of one's own (or at the folder holding the input) is refused instead of deleting it.
MARKER = ".tuneforge"
# Folders written before the marker existed: a dataset is recognised by its manifest kind and file names, a
# checkpoint by its file names (its state.json and COMPLETE file are what the train stage itself trusts).
_LEGACY_CHECKPOINT = {
    "weights.safetensors",
    "optimizer.safetensors",
    "rng.safetensors",
    "state.json",
    "COMPLETE",
}
_LEGACY_ENTRIES = {
    "tuneforge.dataset": {
        MANIFEST,
        "train.jsonl",
        "validation.jsonl",
        "test.jsonl",
        "rejected.jsonl",
        "report.md",
        "report.html",
    },
}


def _owned_entries(path: Path, kind: str) -> set[str] | None:
    """The entries tuneforge wrote into `path` as a folder of `kind`, or None if it is not provably one."""
    try:
        marker = json.loads((path / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        marker = None
    if isinstance(marker, dict):
        entries = marker.get("entries")
        if marker.get("kind") == kind and isinstance(entries, list):
            return {str(e) for e in entries} | {MARKER}
        return None
    if kind == "tuneforge.checkpoint":
        return (
            _LEGACY_CHECKPOINT if (path / "COMPLETE").is_file() and (path / "state.json").is_file() else None
        )
    if kind in _LEGACY_ENTRIES:
        try:
            legacy_kind = json.loads((path / MANIFEST).read_text(encoding="utf-8")).get("kind")
        except (OSError, ValueError, AttributeError):
            return None
        return _LEGACY_ENTRIES[kind] if legacy_kind == kind else None
    return None


def check_replaceable(final: Path, kind: str) -> None:
    """Refuse to replace `final` unless it is absent, or a `kind` folder tuneforge made with nothing added."""
    final = Path(os.path.abspath(final))
    cwd = Path(os.path.abspath(Path.cwd()))
    if final == cwd or final in cwd.parents:
        raise TuneforgeError(
            f"{final} is the current folder or one above it; it cannot be an output folder",
            fix="choose an output path of its own, e.g. a new sub-folder",
        )
    if not final.exists() and not final.is_symlink():
        return
    fix = "choose another output path, or remove the folder yourself if you no longer need it"
    if final.is_symlink() or not final.is_dir():
        raise TuneforgeError(
            f"{final} exists and is not a folder tuneforge made; it is left as it is", fix=fix
        )
    if not any(final.iterdir()):
        return  # an empty folder (made to receive the output) holds nothing to lose
    owned = _owned_entries(final, kind)
    if owned is None:
        raise TuneforgeError(
            f"{final} exists and is not a {kind} folder made by tuneforge; it is left as it is", fix=fix
        )
    foreign = sorted(p.name for p in final.iterdir() if p.name not in owned)
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise TuneforgeError(
            f"{final} holds files tuneforge did not write ({shown}); it is left as it is", fix=fix
        )


def _write_marker(tmp: Path, kind: str) -> None:
    entries = sorted(p.name for p in tmp.iterdir() if p.name != MARKER)
    write_json_atomic(tmp / MARKER, {"kind": kind, "entries": entries})


def _disk_full(err: OSError) -> bool:
    return err.errno in (errno.ENOSPC, errno.EDQUOT)


@contextlib.contextmanager
def atomic_dir(final: Path, *, kind: str, replace: bool = True) -> Iterator[Path]:
    """Yield a temporary sibling directory; it becomes `final` by one rename on success, vanishes on error.

    `kind` names what the folder is ("tuneforge.dataset", ...): an existing `final` is only replaced when its
    marker says it is that kind and it holds only what tuneforge wrote (`check_replaceable`); this is checked
    before any work starts and again just before the rename.
    """
    final = Path(os.path.abspath(final))
    if replace:
        check_replaceable(final, kind)
    elif final.exists():
        raise TuneforgeError(f"{final} already exists", fix="remove it or choose another output path")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        tmp.chmod(DIR_MODE)
        try:
            yield tmp
            _write_marker(tmp, kind)
            fsync_tree(tmp)
        except OSError as err:
            if not _disk_full(err):
                raise
            raise DiskFull(
                f"no space left on the disk while writing {final} ({err.strerror}); nothing was changed",
                filename=str(err.filename or final),
                fix="free some disk space, or choose an output path on another disk",
            ) from None
        if final.exists():
            if not replace:
                raise TuneforgeError(f"{final} already exists", fix="remove it or choose another output path")
            check_replaceable(final, kind)
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync_dir(final.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_text_into(folder: Path, name: str, text: str) -> None:
    """Add a file to a folder atomic_dir published (a model card into final/), naming it in the marker first.

    A file written later without that would count as foreign, so the next replace of the folder (a resumed
    training writing final/ again) would refuse. The marker is updated before the file: a crash in between
    leaves a name without its file, which blocks nothing.
    """
    marker = folder / MARKER
    try:
        data = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        data = None  # a folder from before the marker existed: it was never replaceable, nothing to record
    if isinstance(data, dict) and isinstance(data.get("entries"), list) and name not in data["entries"]:
        write_json_atomic(marker, {**data, "entries": sorted([*map(str, data["entries"]), name])})
    write_text_atomic(folder / name, text)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> int:
    """Write rows as JSON lines (sorted keys are not forced: record field order is part of the format)."""
    n = 0
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise TuneforgeError(f"not valid JSON: {err.msg}", where=f"{path}:{lineno}") from None
            except RecursionError:
                raise TuneforgeError(
                    "JSON nested too deeply to read", where=f"{path}:{lineno}", fix=_DEEP_FIX
                ) from None
    return rows


@dataclass(frozen=True)
class DatasetDir:
    """A prepared dataset: train/validation/test JSONL files of canonical records and a manifest."""

    path: Path

    KIND = "tuneforge.dataset"

    @staticmethod
    def is_dataset(path: Path) -> bool:
        m = Path(path) / MANIFEST
        if not m.is_file():
            return False
        try:
            return json.loads(m.read_text(encoding="utf-8")).get("kind") == DatasetDir.KIND
        except (json.JSONDecodeError, OSError):
            return False

    @classmethod
    def open(cls, path: str | Path) -> DatasetDir:
        p = Path(path)
        if not cls.is_dataset(p):
            raise TuneforgeError(
                f"{p} is not a prepared dataset directory (no tuneforge manifest.json)",
                fix="run `tuneforge prepare CONFIG` first, or point data.path at a raw file to prepare",
            )
        return cls(p)

    @property
    def manifest(self) -> dict[str, Any]:
        return dict(read_json(self.path / MANIFEST))

    def split_path(self, split: str) -> Path:
        return self.path / f"{split}.jsonl"

    def records(self, split: str) -> list[dict[str, Any]]:
        p = self.split_path(split)
        if not p.is_file():
            raise TuneforgeError(
                f"dataset {self.path} has no {split} split", fix="re-run `tuneforge prepare`"
            )
        return read_jsonl(p)

    def split_hashes(self) -> dict[str, str]:
        """sha256 of each split file on disk now, keyed like the manifest's `files` (`train.jsonl`, ...)."""
        return {p.name: sha256_file(p) for p in (self.split_path(s) for s in SPLITS) if p.is_file()}

    def verified_split_hashes(self) -> dict[str, str]:
        """The split files' hashes, refused when they differ from what `prepare` wrote (a file was edited)."""
        now = self.split_hashes()
        written = {
            k: v for k, v in (self.manifest.get("files") or {}).items() if k.removesuffix(".jsonl") in SPLITS
        }
        changed = [
            f"{name}: {sha[:12]} -> {now.get(name, 'missing')[:12]}"
            for name, sha in sorted(written.items())
            if now.get(name) != sha
        ]
        if changed:
            raise TuneforgeError(
                "split files of the dataset were changed after `tuneforge prepare` wrote them:\n  "
                + "\n  ".join(changed),
                where=str(self.path),
                fix="prepare the dataset again (tuneforge prepare CONFIG) instead of editing its files",
            )
        return now

    @property
    def format(self) -> str:
        return str(self.manifest["format"])

    @property
    def labels(self) -> list[str]:
        return list(self.manifest.get("labels") or [])


@dataclass(frozen=True)
class RunDir:
    """A training run: config.yaml, metrics.jsonl, checkpoints/, final/, eval/, manifest.json, train.lock."""

    path: Path

    KIND = "tuneforge.run"

    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def final(self) -> Path:
        """The trained result: a PEFT adapter folder or a full safetensors model folder."""
        return self.path / "final"

    @property
    def eval_dir(self) -> Path:
        return self.path / "eval"

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST

    @property
    def lock_path(self) -> Path:
        return self.path / LOCK

    @staticmethod
    def is_run(path: Path) -> bool:
        """Whether `path` holds a manifest that says tuneforge made it as a run (not merely a config.yaml)."""
        m = Path(path) / MANIFEST
        if not m.is_file():
            return False
        try:
            return json.loads(m.read_text(encoding="utf-8")).get("kind") == RunDir.KIND
        except (json.JSONDecodeError, OSError, AttributeError):
            return False

    @classmethod
    def open(cls, path: str | Path) -> RunDir:
        p = Path(path)
        if not (p / "config.yaml").is_file():
            raise TuneforgeError(
                f"{p} is not a tuneforge run directory (no config.yaml)",
                fix="pass the train.output_dir of a run made by `tuneforge train`",
            )
        return cls(p)

    def lock(self) -> RunLock:
        """Take the run's exclusive lock (held until released or the process ends), or name its holder."""
        return RunLock.take(self.lock_path)

    def dataset_location(self, dataset: DatasetDir) -> dict[str, str]:
        """How the manifest records the run's dataset: its absolute path, and its path relative to the run."""
        where = dataset.path.resolve()
        return {"path": str(where), "relative_path": os.path.relpath(where, self.path.resolve())}

    def dataset_path(self) -> str | None:
        """Where the run's prepared dataset is now: the recorded path, or (when nothing is there) the place
        its recorded path relative to the run points to, so a workspace moved or copied whole to another
        machine keeps its runs' datasets; the recorded path again when neither is a dataset (for the error).
        Whatever is found is still checked against the recorded split hashes (check_split_files)."""
        recorded = self.manifest.get("dataset") or {}
        path, relative = recorded.get("path"), recorded.get("relative_path")
        if path and DatasetDir.is_dataset(Path(path)):
            return str(path)
        if relative and DatasetDir.is_dataset(self.path / relative):
            return os.path.normpath(self.path.resolve() / relative)
        return str(path) if path else None

    def dataset_missing(self) -> str | None:
        """Why the run's prepared dataset is not found (None: it is), naming the folder it recorded: the one
        text evaluate, monitor, retrain and the run report give, so a stale path reads the same in each."""
        recorded = self.manifest.get("dataset") or {}
        path, relative = recorded.get("path"), recorded.get("relative_path")
        if not path:
            return f"run {self.path} records no dataset folder in its manifest.json"
        if DatasetDir.is_dataset(Path(self.dataset_path() or path)):
            return None
        if relative:  # a dataset moved apart from its run: neither place holds it
            beside = os.path.normpath(self.path.resolve() / relative)
            return f"the dataset folder that run {self.path} trained on is gone from {path} and from {beside}"
        # A run trained before runs recorded the path relative to the run knows only the absolute one, which a
        # run or project folder moved (or copied to another machine) leaves pointing at nothing.
        return (
            f"the dataset folder that run {self.path} trained on, {path}, is gone: the run or its project "
            "folder may have moved (this run recorded only the dataset's absolute path)"
        )

    def open_dataset(self, given: str | None = None, *, point: str | None) -> DatasetDir:
        """The prepared dataset the run trained on: `given` when the user points at it (data.path=DIR), else
        where dataset_path() finds it, or one error saying why not and how to point at it (`point`: the
        command's way, None where it has none). Callers still check it with check_split_files."""
        if given:
            return DatasetDir.open(given)
        missing = self.dataset_missing()
        if missing is not None:
            path = (self.manifest.get("dataset") or {}).get("path")
            back = f"move it back to {path}" if path else "train the run again"
            fix = f"point at the prepared dataset where it is now: {point}, or {back}" if point else back
            raise TuneforgeError(missing, where=f"{self.manifest_path} (dataset.path)", fix=fix)
        return DatasetDir(Path(str(self.dataset_path())))

    def check_split_files(self, dataset: DatasetDir) -> None:
        """Refuse when a split file differs from the one this run trained on (edited, or prepared again)."""
        recorded = (self.manifest.get("dataset") or {}).get("files")
        if not recorded:
            return  # a run recorded before split files were fingerprinted
        now = dataset.split_hashes()
        changed = [
            f"{name}: {old[:12]} -> {now[name][:12] if name in now else 'missing'}"
            for name, old in sorted(recorded.items())
            if now.get(name) != old
        ]
        if changed:
            raise TuneforgeError(
                f"the dataset's split files changed since run {self.path} trained on them (edited, or "
                "prepared again at the same path):\n  " + "\n  ".join(changed),
                where=str(dataset.path),
                fix="restore the dataset the run was trained on, or train a new run on this one",
            )

    @property
    def manifest(self) -> dict[str, Any]:
        if not self.manifest_path.is_file():
            return {}
        return dict(read_json(self.manifest_path))

    def update_manifest(self, **fields: Any) -> None:
        m = self.manifest
        m.setdefault("kind", self.KIND)
        m.update(fields)
        write_json_atomic(self.manifest_path, m)

    def metrics(self) -> list[dict[str, Any]]:
        """metrics.jsonl's records, NaN/inf values given back as floats (the file holds null + a flag)."""
        rows = read_jsonl(self.metrics_path) if self.metrics_path.is_file() else []
        return [from_json_numbers(r) for r in rows]


NONFINITE = "_nonfinite"


def to_json_numbers(record: dict[str, Any]) -> dict[str, Any]:
    """A record that strict JSON can hold: a NaN/inf value becomes null plus `<key>_nonfinite: nan|inf|-inf`.

    Python's json writes bare NaN/Infinity, which is not JSON and which other readers (jq, JavaScript, pandas
    with a strict parser) refuse.
    """
    out: dict[str, Any] = {}
    for key, value in record.items():
        if isinstance(value, float) and value != value:
            out[key], out[key + NONFINITE] = None, "nan"
        elif isinstance(value, float) and value in (float("inf"), float("-inf")):
            out[key], out[key + NONFINITE] = None, "inf" if value > 0 else "-inf"
        else:
            out[key] = value
    return out


def from_json_numbers(record: dict[str, Any]) -> dict[str, Any]:
    """The inverse of `to_json_numbers`."""
    out = {k: v for k, v in record.items() if not k.endswith(NONFINITE)}
    for key, value in record.items():
        if key.endswith(NONFINITE) and isinstance(value, str):
            out[key.removesuffix(NONFINITE)] = float(value)
    return out


class RunLock:
    """An exclusive `flock` on a run's lock file: one `train` process writes a run directory at a time.

    The kernel drops the lock when the process ends however it ends, so a crash never leaves a stale lock (the
    file may stay; it locks nothing). The file keeps the holder's PID so that a refusal can name it, and a run
    that `train` finished or stopped has it removed.
    """

    def __init__(self, fd: int, path: Path | None = None) -> None:
        self.fd: int | None = fd
        self.path = path

    @classmethod
    def take(cls, path: Path) -> RunLock:
        path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, FILE_MODE)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "unknown"
                os.close(fd)
                if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                raise TuneforgeError(
                    f"run directory {path.parent} is in use by another tuneforge process (PID {holder})",
                    where="train.output_dir",
                    fix="wait for it to finish (or stop it), or choose another train.output_dir",
                ) from None
            # A finished holder removes the file before it lets go (`release(remove=True)`): a lock taken on
            # a file that is no longer at `path` guards nothing, so open the one there now and lock that.
            try:
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return cls(fd, path)

    def release(self, remove: bool = False) -> None:
        """Let go of the lock; `remove`: also delete the file (a finished run keeps no stale train.lock)."""
        if self.fd is not None:
            if remove and self.path is not None:
                self.path.unlink(missing_ok=True)  # while still held, so no one locks the file being removed
            os.close(self.fd)  # closing the descriptor releases the flock
            self.fd = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
