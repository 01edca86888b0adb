"""A folder of data files, read file by file (sorted by path) with the reader each file's suffix names.

Hidden files and README/LICENSE notes are skipped; a file no reader knows, and a FIFO, socket or device
(which could block forever when opened), are reported, not silently ignored.
Plain text files here are one example each unless data.text_unit says otherwise.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from tuneforge.config import DataConfig
from tuneforge.data.sources import text
from tuneforge.data.sources.base import RawRow, not_a_file_problem, special_file, visible

_NOTES = ("readme", "license", "licence")


def _listing(path: Path) -> list[Path]:
    """Every entry under `path` that could hold data (regular or special files), in a stable order."""
    found = []
    for p in path.rglob("*"):
        rel = p.relative_to(path)
        if p.is_dir() or not all(visible(part) for part in rel.parts) or p.name.lower().startswith(_NOTES):
            continue
        if p.is_file() or special_file(p):
            found.append(p)
    return sorted(found)


def data_files(path: Path) -> list[Path]:
    """The regular files under `path` that hold data, in a stable order."""
    return [p for p in _listing(path) if p.is_file()]


def read(location: str, cfg: DataConfig, *, kind: str | None = None) -> Iterator[RawRow]:
    from tuneforge.data.sources import READERS, file_kind

    for file in _listing(Path(location)):
        special = special_file(file)
        if special:  # checked before anything opens it: opening a FIFO waits for a writer
            yield RawRow({}, str(file), not_a_file_problem(file, special))
            continue
        file_reader = kind or file_kind(file)
        if file_reader is None:
            suffix = f"{file.suffix!r} files" if file.suffix else "files without a suffix"
            yield RawRow(
                {}, str(file), ("unsupported_file", f"no reader for {suffix}; remove it or convert it")
            )
        elif file_reader == "text":
            yield from text.read(str(file), cfg, default_unit="file")
        else:
            yield from READERS[file_reader](str(file), cfg)
