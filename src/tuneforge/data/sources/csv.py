"""CSV/TSV: the first row is the header; delimiter and encoding are sniffed (data.delimiter/encoding win).

Quoted fields may span lines; a row's location is the line it starts on. Invalid bytes, rows with the wrong
number of fields and oversized fields are reported per row instead of stopping the whole file.

A quote that is opened and never closed (or closed far too late) makes one "row" of many lines: dropping it
would silently drop every row it swallowed, so such a runaway field stops the run with its line unless
data.accept_runaway_quotes says to drop it (problem class `runaway_quote`).
"""

from __future__ import annotations

import csv as _csv
from collections.abc import Iterable, Iterator
from pathlib import Path

from tuneforge.config import DataConfig
from tuneforge.data.sources.base import HEAD_BYTES, RawRow, bad_bytes, repair, resolve_encoding
from tuneforge.errors import TuneforgeError

DELIMITERS = ",\t;|"
_NAMED = {"tab": "\t", "\\t": "\t", "comma": ",", "semicolon": ";", "pipe": "|"}
# Fed to the parser after the last line: if it turns up inside a field, a quote was still open at the end of
# the file. Unicode noncharacters are not meant for interchanged text, so a real file practically never
# holds this.
_END = "\ufdd0tuneforge:end-of-file\ufdd0"


def _then_end(lines: Iterable[str]) -> Iterator[str]:
    yield from lines
    yield _END + "\n"


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
        reader = _csv.reader(_then_end(f), delimiter=delimiter)
        try:
            header = next(reader)
        except StopIteration:
            raise TuneforgeError(f"{path} is empty", where="data.path") from None
        except _csv.Error as err:
            raise TuneforgeError(f"cannot read the CSV header: {err}", where=f"{path}:1") from None
        if header == [_END]:
            raise TuneforgeError(f"{path} is empty", where="data.path")
        if any(_END in h for h in header):
            raise TuneforgeError(
                "[runaway_quote] a quote in the header is never closed: the whole file reads as one header",
                where=f"{path}:1",
                fix="close or remove the quote in the header line",
            )
        header = [h.strip() for h in header]
        if len(set(header)) != len(header):
            raise TuneforgeError(f"duplicate column names in the header: {header}", where=f"{path}:1")
        line = reader.line_num
        while True:
            start = line + 1
            where = f"{path}:{start}"
            try:
                values = next(reader)
            except StopIteration:
                return
            except _csv.Error as err:
                line = reader.line_num
                broken = _csv_problem(err, cfg.max_row_bytes)
                if broken[0] == "row_too_large" and line > start:
                    broken = _runaway(cfg, path, start, line, "it grows past data.max_row_bytes")
                yield RawRow({}, where, broken)
                continue
            line = reader.line_num
            if values == [_END]:
                return
            if any(_END in v for v in values):
                line -= 1  # the end marker is not a line of the file
                yield RawRow(
                    {}, where, _runaway(cfg, path, start, line, "it is still open at the end of the file")
                )
                return
            if not values:
                continue
            if len(values) != len(header):
                swallowed = _row_shaped_lines(values, delimiter, len(header)) if line > start else 0
                if swallowed:
                    reason = f"its value holds {swallowed} lines shaped like whole rows"
                    yield RawRow({}, where, _runaway(cfg, path, start, line, reason))
                    continue
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


def _row_shaped_lines(values: list[str], delimiter: str, width: int) -> int:
    """How many lines inside the values would, on their own, be a complete row of `width` fields."""
    if width < 2:
        return 0
    inner = [ln for v in values if "\n" in v or "\r" in v for ln in v.splitlines()[1:]]
    return sum(len(row) == width for row in _csv.reader(inner, delimiter=delimiter))


def _runaway(cfg: DataConfig, path: Path, start: int, end: int, why: str) -> tuple[str, str]:
    """A quoted field that swallowed lines `start`..`end`: stop, unless the user accepted dropping them."""
    message = (
        f"a quoted field that starts on line {start} runs to line {end} ({why}): a quote is probably not "
        f"closed, and dropping this row would drop lines {start}-{end} with it"
    )
    if not cfg.accept_runaway_quotes:
        raise TuneforgeError(
            f"[runaway_quote] {message}",
            where=f"{path}:{start}",
            fix='close or escape the quote (a quote inside a quoted field is written twice: ""), or set '
            "data.accept_runaway_quotes=true to drop all of those lines",
        )
    return "runaway_quote", message


def _csv_problem(err: Exception, limit: int) -> tuple[str, str]:
    if "field limit" in str(err):
        return "row_too_large", f"a field is longer than {limit} characters (or a quote is never closed)"
    return "invalid_csv", f"not valid CSV: {err}"
