"""CSV/TSV: the first row is the header; delimiter and encoding are sniffed (data.delimiter/encoding win).

Quoted fields may span lines; a row's location is the line it starts on. Invalid bytes, rows with the wrong
number of fields and oversized fields are reported per row instead of stopping the whole file.
"""

from __future__ import annotations

import csv as _csv
from collections.abc import Iterator
from pathlib import Path

from tuneforge.config import DataConfig
from tuneforge.data.sources.base import HEAD_BYTES, RawRow, bad_bytes, repair, resolve_encoding
from tuneforge.errors import TuneforgeError

DELIMITERS = ",\t;|"
_NAMED = {"tab": "\t", "\\t": "\t", "comma": ",", "semicolon": ";", "pipe": "|"}


def _delimiter(cfg: DataConfig, path: Path, encoding: str) -> str:
    if cfg.delimiter:
        delimiter = _NAMED.get(cfg.delimiter.lower(), cfg.delimiter)
        if len(delimiter) != 1:
            raise TuneforgeError(
                f"the CSV delimiter must be one character, got {cfg.delimiter!r}",
                where="data.delimiter",
                fix="use e.g. ',', ';', '|' or tab",
            )
        return delimiter
    if path.suffix.lower() in (".tsv", ".tab"):
        return "\t"
    with open(path, encoding=encoding, errors="replace", newline="") as f:
        sample = f.read(HEAD_BYTES)
    if len(sample) == HEAD_BYTES and "\n" in sample:
        sample = sample[: sample.rindex("\n")]  # a cut-off last row would confuse the sniffer
    try:
        return _csv.Sniffer().sniff(sample, delimiters=DELIMITERS).delimiter
    except _csv.Error:
        return ","


def read(location: str, cfg: DataConfig) -> Iterator[RawRow]:
    path = Path(location)
    encoding = resolve_encoding(path, cfg)
    delimiter = _delimiter(cfg, path, encoding)
    # The limit is process-wide in the csv module; raising it to the row cap is what every caller wants here.
    _csv.field_size_limit(cfg.max_row_bytes)
    # `surrogateescape` keeps invalid bytes visible per row instead of failing the whole file.
    with open(path, encoding=encoding, errors="surrogateescape", newline="") as f:
        reader = _csv.reader(f, delimiter=delimiter)
        try:
            header = next(reader)
        except StopIteration:
            raise TuneforgeError(f"{path} is empty", where="data.path") from None
        except _csv.Error as err:
            raise TuneforgeError(f"cannot read the CSV header: {err}", where=f"{path}:1") from None
        header = [h.strip() for h in header]
        if len(set(header)) != len(header):
            raise TuneforgeError(f"duplicate column names in the header: {header}", where=f"{path}:1")
        line = reader.line_num
        while True:
            where = f"{path}:{line + 1}"
            try:
                values = next(reader)
            except StopIteration:
                return
            except _csv.Error as err:
                line = reader.line_num
                yield RawRow({}, where, _csv_problem(err, cfg.max_row_bytes))
                continue
            line = reader.line_num
            if not values:
                continue
            if len(values) != len(header):
                yield RawRow(
                    {}, where, ("wrong_columns", f"expected {len(header)} fields, found {len(values)}")
                )
                continue
            fields = dict(zip(header, values, strict=True))
            problem = next((p for h, v in fields.items() if (p := bad_bytes(v, encoding, h))), None)
            if problem:
                yield RawRow({h: repair(v) for h, v in fields.items()}, where, problem)
                continue
            yield RawRow(fields, where)


def _csv_problem(err: Exception, limit: int) -> tuple[str, str]:
    if "field limit" in str(err):
        return "row_too_large", f"a field is longer than {limit} characters (or a quote is never closed)"
    return "invalid_csv", f"not valid CSV: {err}"
