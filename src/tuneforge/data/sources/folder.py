"""A folder of data files, read file by file (sorted by path) with the reader each file's suffix names.

Hidden files and README/LICENSE notes are skipped; a file no reader knows is reported, not silently ignored.
Plain text files here are one example each unless data.text_unit says otherwise.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from tuneforge.config import DataConfig
from tuneforge.data.sources import text
from tuneforge.data.sources.base import RawRow, visible

_NOTES = ("readme", "license", "licence")


def data_files(path: Path) -> list[Path]:
    """The files under `path` that hold data, in a stable order."""
    files = []
    for p in path.rglob("*"):
        rel = p.relative_to(path)
        if p.is_file() and all(visible(part) for part in rel.parts) and not p.name.lower().startswith(_NOTES):
            files.append(p)
    return sorted(files)


def read(location: str, cfg: DataConfig, *, kind: str | None = None) -> Iterator[RawRow]:
    from tuneforge.data.sources import READERS, file_kind

    for file in data_files(Path(location)):
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
