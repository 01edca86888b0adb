"""What a run may resume with: the recorded config and data against this attempt, and the run directory."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from tuneforge.artifacts import RunDir, write_text_atomic
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
    "eval.",
    "serve.",
    "tune.",
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


def resume_diff(run: RunDir, cfg: RunConfig, data_fingerprint: str | None) -> list[tuple[str, Any, Any]]:
    """What differs between a run's recorded config and data and this attempt to resume it."""
    import yaml

    old = yaml.safe_load(run.config_path.read_text(encoding="utf-8"))
    diffs = [d for d in config_diff(old, cfg.to_dict()) if not d[0].startswith(RESUMABLE_CHANGES)]
    recorded = run.manifest.get("dataset", {}).get("fingerprint")
    if recorded is not None and recorded != data_fingerprint:
        diffs.append((DATA_FINGERPRINT, recorded, data_fingerprint))
    return diffs


def check_resume(run: RunDir, cfg: RunConfig, data_fingerprint: str | None, force: bool) -> None:
    if not run.config_path.is_file():
        raise TuneforgeError(
            f"there is no run to resume in {run.path}",
            where="train.output_dir",
            fix="start it without --resume, or point train.output_dir at the run to continue",
        )
    diffs = resume_diff(run, cfg, data_fingerprint)
    if diffs and not force:
        lines = "\n  ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in diffs)
        raise TuneforgeError(
            f"the config or data differ from what this run started with, so resuming would not continue the "
            f"same training:\n  {lines}",
            where=str(run.config_path),
            fix="resume with the original config and data, or pass --force to continue with the new ones",
        )


def open_run_dir(
    cfg: RunConfig, resume: bool, force: bool, overwrite: bool, data_fingerprint: str | None = None
) -> RunDir:
    path = Path(cfg.train.output_dir)
    run = RunDir(path)
    if overwrite and not resume and path.exists():
        if not run.config_path.is_file():
            raise TuneforgeError(
                f"{path} is not a tuneforge run directory; refusing to delete it",
                where="train.output_dir",
                fix="choose another train.output_dir",
            )
        shutil.rmtree(path)
    if resume:
        check_resume(run, cfg, data_fingerprint, force)
    elif path.exists() and any(path.iterdir()):
        raise TuneforgeError(
            f"{path} already holds a run",
            where="train.output_dir",
            fix="pass --resume to continue it, --overwrite to start over, or choose another train.output_dir",
        )
    path.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run.config_path, cfg.to_yaml())
    return run


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
