"""What a run may resume with: the recorded config and data against this attempt, and the run directory."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from tuneforge.artifacts import RunDir, RunLock, write_text_atomic
from tuneforge.config import RunConfig
from tuneforge.errors import TuneforgeError

# Keys that may differ on --resume without --force: they change where a run lives, how visibly it goes on and
# how often it saves, never what it computes (checkpoints do not touch the random streams). Anything else,
# train.max_steps/epochs (they stretch the learning-rate schedule) and eval_every (it moves the best
# checkpoint and early stopping) included, would make the resumed run differ from an uninterrupted one: it
# needs --force.
RESUMABLE_CHANGES = (
    "train.output_dir",
    "train.progress",
    "train.log_to",
    "train.save_every",
    "train.keep_checkpoints",
    "train.max_bad_steps",
    "train.time_budget",  # where a run stops, like a signal; each step computes the same
    "eval.",
    "serve.",
    "tune.",
    "monitor",  # also the whole section, absent from the config.yaml of runs made before it existed
    "retrain",
)
DATA_FINGERPRINT = "dataset fingerprint"


def config_diff(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[tuple[str, Any, Any]]:
    diffs: list[tuple[str, Any, Any]] = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += config_diff(a, b, f"{prefix}{key}.")
        elif a != b:
            diffs.append((f"{prefix}{key}", a, b))
    return diffs


def resume_diff(
    run: RunDir, cfg: RunConfig, data_fingerprint: str | None, split_files: dict[str, str] | None = None
) -> list[tuple[str, Any, Any]]:
    """What differs between a run's recorded config and data and this attempt to resume it.

    The split files themselves are compared too (sha256): an edited file, or a dataset prepared again at the
    same path with another split, would otherwise resume on different data unnoticed.
    """
    import yaml

    old = yaml.safe_load(run.config_path.read_text(encoding="utf-8"))
    diffs = [d for d in config_diff(old, cfg.to_dict()) if not d[0].startswith(RESUMABLE_CHANGES)]
    recorded_data = run.manifest.get("dataset") or {}
    recorded = recorded_data.get("fingerprint")
    if recorded is not None and recorded != data_fingerprint:
        diffs.append((DATA_FINGERPRINT, recorded, data_fingerprint))
    files = recorded_data.get("files") or {}
    if split_files is not None:
        for name in sorted(set(files) | set(split_files)):
            if name in files and files.get(name) != split_files.get(name):
                now = split_files.get(name)
                diffs.append((f"dataset file {name} (sha256)", files[name][:12], now[:12] if now else None))
    return diffs


def check_resume(
    run: RunDir,
    cfg: RunConfig,
    data_fingerprint: str | None,
    force: bool,
    split_files: dict[str, str] | None = None,
) -> None:
    if not run.config_path.is_file() or not RunDir.is_run(run.path):
        raise TuneforgeError(
            f"there is no run to resume in {run.path}",
            where="train.output_dir",
            fix="start it without --resume, or point train.output_dir at the run to continue",
        )
    diffs = resume_diff(run, cfg, data_fingerprint, split_files)
    if diffs and not force:
        lines = "\n  ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in diffs)
        raise TuneforgeError(
            f"the config or data differ from what this run started with, so resuming would not continue the "
            f"same training:\n  {lines}",
            where=str(run.config_path),
            fix="resume with the original config and data, or pass --force to continue with the new ones",
        )


def open_run_dir(
    cfg: RunConfig,
    resume: bool,
    force: bool,
    overwrite: bool,
    data_fingerprint: str | None = None,
    split_files: dict[str, str] | None = None,
) -> tuple[RunDir, RunLock]:
    """Create (or reopen) the run directory and take its lock; it holds a manifest from the first moment.

    `--overwrite` only ever empties a folder whose manifest says tuneforge made it as a run.
    """
    path = Path(cfg.train.output_dir)
    run = RunDir(path)
    if overwrite and not resume and path.exists():
        check_output_dir(cfg, resume, overwrite)
        lock = run.lock()  # never empty a run another process is writing
        for child in path.iterdir():
            if child.name == run.lock_path.name:
                continue  # the lock file stays: another process may be waiting on this very file
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
    elif resume:
        check_resume(run, cfg, data_fingerprint, force, split_files)
        lock = run.lock()
    else:
        _refuse_a_used_folder(run)
        lock = run.lock()
        try:
            _refuse_a_used_folder(run)  # again: another process may have finished a run there meanwhile
        except TuneforgeError:
            lock.release()
            raise
    try:
        if not resume:
            # Written first, so that a run stopped at any later point is still recognised as ours.
            run.update_manifest(kind=RunDir.KIND, status="starting")
        write_text_atomic(run.config_path, cfg.to_yaml())
    except BaseException:
        lock.release()
        raise
    return run, lock


def check_output_dir(cfg: RunConfig, resume: bool, overwrite: bool) -> None:
    """Refuse a train.output_dir a fresh run may not use, before anything is loaded (see `open_run_dir`)."""
    path = Path(cfg.train.output_dir)
    if resume or not path.exists():
        return
    if not overwrite:
        _refuse_a_used_folder(RunDir(path))
    elif not RunDir.is_run(path) and (not path.is_dir() or any(path.iterdir())):
        raise TuneforgeError(
            f"{path} is not a tuneforge run directory (its manifest.json does not say kind "
            f"{RunDir.KIND}); refusing to delete it",
            where="train.output_dir",
            fix="choose another train.output_dir, or remove the folder yourself",
        )


def _refuse_a_used_folder(run: RunDir) -> None:
    if run.path.exists() and any(p.name != run.lock_path.name for p in run.path.iterdir()):
        raise TuneforgeError(
            f"{run.path} already holds a run",
            where="train.output_dir",
            fix="pass --resume to continue it, --overwrite to start over, or choose another train.output_dir",
        )


def check_same_position(state: Any, loop: Any, force: bool) -> None:
    """The data position is derived from the step; it only means the same thing with the same batches."""
    now = {"steps_per_epoch": loop.steps_per_epoch, "processes": loop.acc.num_processes}
    saved = {k: state.extra.get(k, v) for k, v in now.items()}
    if saved != now and not force:
        lines = "\n  ".join(f"{k}: {saved[k]!r} -> {now[k]!r}" for k in now if saved[k] != now[k])
        raise TuneforgeError(
            f"the checkpoint at step {state.step} was made with a different batching:\n  {lines}",
            where="train.output_dir",
            fix="resume with the same number of processes, or pass --force to continue in the new data order",
        )
    state.extra.update(now)
