"""Where a prepared dataset goes, and where not: never over its own input, never inside a folder input."""

from __future__ import annotations

from pathlib import Path

from tuneforge.config import DataConfig
from tuneforge.errors import TuneforgeError


def default_output_dir(cfg: DataConfig) -> Path:
    assert cfg.path is not None
    return Path(cfg.output_dir) if cfg.output_dir else Path("datasets") / Path(cfg.path.rstrip("/")).stem


def check_output(out: Path, location: Path, files: list[Path]) -> None:
    """The output never holds the input it would replace, nor sits in an input folder that would read it."""
    target = out.resolve()
    folder = [location] if location.is_dir() else []
    for f in [*folder, *files]:
        f = f.resolve()
        if f == target or target in f.parents:
            raise TuneforgeError(
                f"the output folder {out} holds the input {f}; replacing it would delete the input",
                where="data.output_dir",
                fix="choose an output folder outside the input, e.g. datasets/<name>",
            )
    if folder and location.resolve() in target.parents:
        raise TuneforgeError(
            f"the output folder {out} is inside the input folder {location}: the next prepare would read the "
            "prepared files as data",
            where="data.output_dir",
            fix="choose an output folder outside the input folder",
        )
