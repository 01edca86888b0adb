"""A folder whose sub-folders are class names holding text files: label = folder name, text = file content.

    reviews/positive/001.txt, reviews/negative/002.txt, ...            → {"text", "label"}
    reviews/train/positive/001.txt, reviews/test/negative/9.txt, ...   → {"text", "label", "split"}

The shape is recognised automatically (see `shape`); README/LICENSE files beside the class folders are
ignored. Each file is one example unless data.text_unit says paragraph or line.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from tuneforge.config import DataConfig
from tuneforge.data.sources import text
from tuneforge.data.sources.base import TEXT_SUFFIXES, RawRow, not_a_file_problem, special_file, visible

SPLIT_NAMES = ("train", "validation", "valid", "dev", "test")
_NOTES = ("readme", "license", "licence")


def _entries(path: Path) -> tuple[list[Path], list[Path]]:
    children = [p for p in sorted(path.iterdir()) if visible(p.name)]
    dirs = [p for p in children if p.is_dir()]
    files = [
        p for p in children if (p.is_file() or special_file(p)) and not p.name.lower().startswith(_NOTES)
    ]
    return dirs, files


def _is_class_dir(path: Path) -> bool:
    dirs, files = _entries(path)
    return not dirs and bool(files) and all(f.suffix.lower() in (*TEXT_SUFFIXES, "") for f in files)


def _is_classes(path: Path) -> bool:
    dirs, files = _entries(path)
    return len(dirs) >= 2 and not files and all(_is_class_dir(d) for d in dirs)


def shape(path: Path) -> str | None:
    """ "classes" (label folders), "splits" (split folders holding label folders), or None."""
    if not path.is_dir():
        return None
    dirs, files = _entries(path)
    if files or not dirs:
        return None
    if all(d.name.lower() in SPLIT_NAMES for d in dirs) and all(_is_classes(d) for d in dirs):
        return "splits"
    return "classes" if _is_classes(path) else None


def read(location: str, cfg: DataConfig) -> Iterator[RawRow]:
    path = Path(location)
    if shape(path) == "splits":
        for split_dir in _entries(path)[0]:
            for row in _read_classes(split_dir, cfg):
                if row.fields:
                    row.fields["split"] = split_dir.name
                yield row
    else:
        yield from _read_classes(path, cfg)


def _read_classes(path: Path, cfg: DataConfig) -> Iterator[RawRow]:
    for label_dir in _entries(path)[0]:
        for file in _entries(label_dir)[1]:
            special = special_file(file)
            if special:
                yield RawRow({}, str(file), not_a_file_problem(file, special))
                continue
            for row in text.read(str(file), cfg, default_unit="file"):
                if row.fields:
                    row.fields["label"] = label_dir.name
                yield row
