"""CSV/TSV: delimiter sniffed (overridable), UTF-8 with BOM handling; invalid bytes are reported per line."""

from __future__ import annotations

import csv as _csv
from collections.abc import Iterator
from pathlib import Path

from tuneforge.config import DataConfig
from tuneforge.data.sources.base import RawRow, strip_bom
from tuneforge.errors import TuneforgeError


def _sniff_delimiter(sample: str, path: Path) -> str:
    if path.suffix.lower() == ".tsv":
        return "\t"
    try:
        return _csv.Sniffer().sniff(sample, delimiters=",\t;|").delimiter
    except _csv.Error:
        return ","


def read(path: Path, cfg: DataConfig) -> Iterator[RawRow]:
    encoding = cfg.encoding or "utf-8"
    with open(path, "rb") as fb:
        head = strip_bom(fb.read(64 * 1024)).decode(encoding, errors="replace")
    delimiter = cfg.delimiter or _sniff_delimiter(head, path)
    # Decode with `surrogateescape` so an invalid byte marks its own row instead of failing the whole file.
    with open(path, encoding=encoding, errors="surrogateescape", newline="") as f:
        if f.read(1) != "\ufeff":
            f.seek(0)
        reader = _csv.reader(f, delimiter=delimiter)
        try:
            header = next(reader)
        except StopIteration:
            raise TuneforgeError(f"{path} is empty", where="data.path") from None
        header = [h.strip() for h in header]
        if len(set(header)) != len(header):
            raise TuneforgeError(f"duplicate column names in the header: {header}", where=f"{path}:1")
        line = reader.line_num
        for values in reader:
            where = f"{path}:{line + 1}"
            line = reader.line_num
            if not values:
                continue
            if len(values) != len(header):
                yield RawRow(
                    {}, where, ("wrong_columns", f"expected {len(header)} columns, found {len(values)}")
                )
                continue
            if any(_has_bad_bytes(v) for v in values):
                fields = {h: _repair(v) for h, v in zip(header, values, strict=True)}
                yield RawRow(fields, where, ("encoding", f"invalid {encoding} bytes (shown as U+FFFD)"))
                continue
            yield RawRow(dict(zip(header, values, strict=True)), where)


def _has_bad_bytes(value: str) -> bool:
    return any("\udc80" <= ch <= "\udcff" for ch in value)


def _repair(value: str) -> str:
    return value.encode("utf-8", errors="surrogateescape").decode("utf-8", errors="replace")

