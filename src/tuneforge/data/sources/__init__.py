"""Readers: every source kind yields `RawRow`s (a dict of fields plus where it came from).

Adding a source = one file with a `read(path, cfg)` generator + one line in `READERS`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

from tuneforge.config import DataConfig
from tuneforge.data.sources import csv, jsonl
from tuneforge.data.sources.base import RawRow
from tuneforge.errors import TuneforgeError

Reader = Callable[[Path, DataConfig], Iterator[RawRow]]

READERS: dict[str, Reader] = {
    "csv": csv.read,
    "jsonl": jsonl.read,
}

SUFFIXES: dict[str, str] = {
    ".csv": "csv",
    ".tsv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
}


def detect_source(path: Path, cfg: DataConfig) -> str:
    if cfg.source:
        if cfg.source not in READERS:
            raise TuneforgeError(
                f"unknown source {cfg.source!r}", where="data.source", fix="choose one of: " + ", ".join(READERS)
            )
        return cfg.source
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise TuneforgeError(
            f"cannot tell how to read {path} from its name",
            where="data.path",
            fix="set data.source to one of: " + ", ".join(READERS),
        )
    return kind


def read_rows(path: Path, cfg: DataConfig) -> Iterator[RawRow]:
    """Stream the source's rows, at most `cfg.max_rows` of them."""
    if not path.exists():
        raise TuneforgeError(f"{path} does not exist", where="data.path", fix="point data.path at your data")
    reader = READERS[detect_source(path, cfg)]
    for n, row in enumerate(reader(path, cfg)):
        if cfg.max_rows is not None and n >= cfg.max_rows:
            return
        yield row
