"""A workspace is any folder: the runs and datasets under it are found by their manifests, wherever they sit.

Used by `tuneforge ui`; the walk reads each manifest once and never descends into what it found except a run's
own sub-folders that may hold datasets (human-eval/preferences), so checkpoints and weights are never listed.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneforge.artifacts import MANIFEST, DatasetDir, RunDir
from tuneforge.errors import TuneforgeError

# A run's folders that hold weights or evaluation files, never datasets: not worth a walk.
_RUN_LEAVES = {"checkpoints", "final", "eval", "sheets"}
MAX_DEPTH = 8


@dataclass(frozen=True)
class Found:
    """A run or dataset folder: its path relative to the workspace, its manifest (None when unreadable)."""

    kind: str  # "run" or "dataset"
    rel: str
    path: Path
    manifest: dict[str, Any] | None
    problem: str | None = None  # why the manifest could not be read


# Manifests by path, with the (size, mtime) they were read at: a revisit costs a stat, not a parse.
_MANIFESTS: dict[str, tuple[tuple[int, int], tuple[dict[str, Any] | None, str | None]]] = {}


def _cached_manifest(entry: os.DirEntry[str]) -> tuple[dict[str, Any] | None, str | None]:
    try:
        st = entry.stat()
    except OSError:
        return None, f"{MANIFEST} cannot be read"
    stamp = (st.st_size, st.st_mtime_ns)
    cached = _MANIFESTS.get(entry.path)
    if cached is None or cached[0] != stamp:
        cached = _MANIFESTS[entry.path] = (stamp, _read_manifest(Path(entry.path).parent))
    manifest, problem = cached[1]
    return (dict(manifest) if manifest is not None else None), problem


def _read_manifest(folder: Path) -> tuple[dict[str, Any] | None, str | None]:
    try:
        data = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, RecursionError) as err:
        return None, f"{MANIFEST} cannot be read ({type(err).__name__})"
    except json.JSONDecodeError as err:
        return None, f"{MANIFEST} is not valid JSON ({err.msg}, line {err.lineno})"
    if not isinstance(data, dict):
        return None, f"{MANIFEST} does not hold a JSON object"
    return data, None


def find_artifacts(root: str | Path, *, max_depth: int = MAX_DEPTH) -> list[Found]:
    """Every run and dataset under `root`, in path order; hidden folders (temporary writes) are skipped.

    A folder whose manifest is unreadable still counts as a run when it holds the run's config.yaml, so a
    damaged run is shown as damaged instead of vanishing.
    """
    base = Path(root).resolve()
    if not base.is_dir():
        raise TuneforgeError(f"workspace {root} is not a folder", where="--workspace")
    found: list[Found] = []
    top = str(base)

    # Plain strings and one scandir per folder (no pathlib, no extra stat): a 1,000-run workspace is walked in
    # a few tens of milliseconds.
    def walk(folder: str, depth: int, inside_run: bool) -> None:
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            return
        names = {e.name: e for e in entries}
        if MANIFEST in names:
            path = Path(folder)
            manifest, problem = _cached_manifest(names[MANIFEST])
            kind = (manifest or {}).get("kind")
            rel = folder[len(top) + 1 :] or "."
            if kind == RunDir.KIND or (manifest is None and "config.yaml" in names):
                found.append(Found("run", rel, path, manifest, problem))
                inside_run = True
            elif kind == DatasetDir.KIND:
                found.append(Found("dataset", rel, path, manifest))
                return
        if depth >= max_depth:
            return
        for entry in entries:
            if entry.name.startswith(".") or (inside_run and entry.name in _RUN_LEAVES):
                continue
            # Symlinked folders are not followed: a link must not lead the UI outside the workspace.
            if entry.is_dir(follow_symlinks=False):
                walk(entry.path, depth + 1, inside_run)

    walk(top, 0, False)
    return found


def resolve_inside(root: str | Path, rel: str) -> Path:
    """`root/rel` when it stays inside `root` (no absolute path, no `..`, no symlink out), else an error."""
    base = Path(root).resolve()
    if not rel or "\x00" in rel or rel.startswith(("/", "\\")) or ".." in Path(rel).parts:
        raise TuneforgeError(f"{rel!r} is not a path inside the workspace", where="path")
    target = (base / rel).resolve()
    if target != base and base not in target.parents:
        raise TuneforgeError(f"{rel!r} leads outside the workspace", where="path")
    return target
