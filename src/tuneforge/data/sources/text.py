"""Plain text: one example per blank-line-separated paragraph of a file (default), per line, or per file.

Inside a folder (and a folder of class folders) the default is one example per file, which is how text corpora
are usually stored; `data.text_unit` overrides both.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from tuneforge.config import DataConfig
from tuneforge.data.sources.base import RawRow, bad_bytes, read_lines, repair, resolve_encoding


def read(location: str, cfg: DataConfig, *, default_unit: str = "paragraph") -> Iterator[RawRow]:
    path = Path(location)
    unit = default_unit if cfg.text_unit == "auto" else cfg.text_unit
    if unit == "file":
        yield read_file(path, cfg)
    elif unit == "line":
        yield from _lines(path, cfg)
    else:
        yield from _paragraphs(path, cfg)


def read_file(path: Path, cfg: DataConfig) -> RawRow:
    """The whole file as one example: {"text": content}."""
    where = str(path)
    size = path.stat().st_size
    if size > cfg.max_row_bytes:
        return RawRow(
            {},
            where,
            ("row_too_large", f"the file has {size} bytes (data.max_row_bytes={cfg.max_row_bytes})"),
        )
    encoding = resolve_encoding(path, cfg)
    with open(path, encoding=encoding, errors="surrogateescape", newline="") as f:
        text = f.read().removeprefix("\ufeff")
    problem = bad_bytes(text, encoding)
    if problem:
        line = text.count("\n", 0, _first_bad(text)) + 1
        return RawRow({"text": repair(text)}, f"{path}:{line}", problem)
    return RawRow({"text": text}, where)


def _first_bad(text: str) -> int:
    return next(i for i, ch in enumerate(text) if "\udc80" <= ch <= "\udcff")


def _lines(path: Path, cfg: DataConfig) -> Iterator[RawRow]:
    for line in read_lines(path, resolve_encoding(path, cfg), cfg.max_row_bytes):
        where = f"{path}:{line.number}"
        if line.problem:
            yield RawRow({"text": repair(line.text)} if line.text is not None else {}, where, line.problem)
        elif line.text is not None and line.text.strip():
            yield RawRow({"text": line.text}, where)


def _paragraphs(path: Path, cfg: DataConfig) -> Iterator[RawRow]:
    lines: list[str] = []
    start, size = 0, 0
    problem: tuple[str, str] | None = None
    problem_line = 0
    for line in read_lines(path, resolve_encoding(path, cfg), cfg.max_row_bytes):
        if line.text is not None and not line.text.strip():
            if lines or problem:
                yield _paragraph(path, start, lines, problem, problem_line)
            lines, size, problem = [], 0, None
            continue
        if not lines and problem is None:
            start = line.number
        if problem is None and line.problem:
            problem, problem_line = line.problem, line.number
        if line.text is not None and problem is None:
            size += len(line.text) + 1
            if size > cfg.max_row_bytes:
                problem, problem_line = (
                    ("row_too_large", f"paragraph is longer than {cfg.max_row_bytes} characters"),
                    start,
                )
                lines = []
            else:
                lines.append(line.text)
    if lines or problem:
        yield _paragraph(path, start, lines, problem, problem_line)


def _paragraph(
    path: Path, start: int, lines: list[str], problem: tuple[str, str] | None, problem_line: int
) -> RawRow:
    if problem:
        return RawRow({"text": repair("\n".join(lines))} if lines else {}, f"{path}:{problem_line}", problem)
    return RawRow({"text": "\n".join(lines)}, f"{path}:{start}")
