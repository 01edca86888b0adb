"""JSON documents: an array of records, an object holding arrays of records, or an object of columns.

    [{"text": ..., "label": ...}, ...]                 rows at $[0], $[1], ...
    {"version": 2, "data": [{"text": ...}, ...]}       rows at $.data[0], ... (each array of objects in turn)
    {"text": ["a", "b"], "label": ["x", "y"]}          columns zipped into rows at $.text[0], ...
    {"text": "one record"}                             a single row at $

Parsed as a stream with ijson, so memory holds one record (columns: one value per column) at a time. Telling
the object shapes apart needs one extra pass over the events of the file. Keys containing a dot cannot be
addressed by ijson prefixes and are not supported as top-level keys.
"""

from __future__ import annotations

import codecs
import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from tuneforge.config import DataConfig
from tuneforge.data.sources.base import RawRow, json_type
from tuneforge.errors import TuneforgeError

LOCATE_LIMIT = 64 * 2**20  # files up to this size are re-read to point a syntax error at its line and column


@dataclass
class Shape:
    """Where the records are: arrays of objects under `record_keys` ("" = the top level), or `columns`."""

    record_keys: list[str] = field(default_factory=list)
    columns: dict[str, int] = field(default_factory=dict)  # column -> number of values
    single: bool = False


def read(location: str, cfg: DataConfig) -> Iterator[RawRow]:
    import ijson

    path = Path(location)
    shape = _guarded(path, lambda: _shape(path))
    if shape.single:
        with _open(path) as f:
            obj = _guarded(path, lambda: next(ijson.items(f, "", use_float=True)))
        yield RawRow(obj, f"{path} $")
        return
    for key in shape.record_keys:
        with _open(path) as f:
            items = ijson.items(f, f"{key}.item" if key else "item", use_float=True)
            base = f"$.{key}" if key else "$"
            for i, obj in enumerate(_guarded_iter(path, items)):
                where = f"{path} {base}[{i}]"
                if isinstance(obj, dict):
                    yield RawRow(obj, where)
                else:
                    yield RawRow({}, where, ("wrong_type", f"expected a JSON object, got {json_type(obj)}"))
    if shape.columns:
        yield from _zip_columns(path, shape.columns)


def _zip_columns(path: Path, columns: dict[str, int]) -> Iterator[RawRow]:
    import ijson

    lengths = set(columns.values())
    if len(lengths) > 1:
        raise TuneforgeError(
            "[wrong_type] the columns have different lengths: "
            + ", ".join(f"{k}: {n}" for k, n in columns.items()),
            where=str(path),
            fix="every column array must hold one value per row",
        )
    names = list(columns)
    with contextlib.ExitStack() as stack:
        # One stream per column keeps memory at one value per column, whatever the file size.
        streams = [ijson.items(stack.enter_context(_open(path)), f"{c}.item", use_float=True) for c in names]
        for i, values in enumerate(_guarded_iter(path, zip(*streams, strict=True))):
            yield RawRow(dict(zip(names, values, strict=True)), f"{path} $.{names[0]}[{i}]")


def _shape(path: Path) -> Shape:
    import ijson

    shape = Shape()
    with _open(path) as f:
        events = ijson.parse(f, use_float=True)
        first = next(events, None)
        if first is None:
            raise TuneforgeError("[invalid_json] the file is empty", where=str(path))
        if first[1] == "start_array":
            shape.record_keys.append("")
            return shape
        if first[1] != "start_map":
            raise TuneforgeError(
                f"[wrong_type] expected a JSON array or object at the top level, got {first[1]}",
                where=str(path),
            )
        key: str | None = None
        for prefix, event, value in events:
            if prefix == "" and event == "map_key":
                key = value
            elif key is not None and prefix == key and event == "start_array":
                kind, count = _array_kind(events, key)
                if kind == "records":
                    shape.record_keys.append(key)
                elif kind == "column":
                    shape.columns[key] = count
    if not shape.record_keys and not shape.columns:
        shape.single = True
    elif shape.record_keys:
        shape.columns = {}  # scalar arrays beside arrays of records are metadata, not columns
    return shape


def _array_kind(events: Iterator[tuple[str, str, Any]], key: str) -> tuple[str, int]:
    """Consume a top-level array's events: records (first item an object) or a column, and its length."""
    kind, count, item = "column", 0, f"{key}.item"
    for prefix, event, _ in events:
        if prefix == key and event == "end_array":
            break
        if prefix == item and event not in ("map_key", "end_map", "end_array"):
            if count == 0 and event == "start_map":
                kind = "records"
            count += 1
    return kind, count


@contextlib.contextmanager
def _open(path: Path) -> Iterator[IO[bytes]]:
    with open(path, "rb") as f:
        if f.read(len(codecs.BOM_UTF8)) != codecs.BOM_UTF8:
            f.seek(0)
        yield f


def _guarded(path: Path, fn: Any) -> Any:
    import ijson

    try:
        return fn()
    except ijson.JSONError as err:
        raise _syntax_error(path, err) from None


def _guarded_iter(path: Path, items: Iterator[Any]) -> Iterator[Any]:
    import ijson

    try:
        yield from items
    except ijson.JSONError as err:
        raise _syntax_error(path, err) from None


def _syntax_error(path: Path, err: Exception) -> TuneforgeError:
    """Point a syntax or encoding error at its line: ijson only says what is wrong, so re-read small files."""
    fix = "fix the file (a JSON document that does not parse cannot be read past the error)"
    if path.stat().st_size <= LOCATE_LIMIT:
        data = path.read_bytes().removeprefix(codecs.BOM_UTF8)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as bad:
            line = data.count(b"\n", 0, bad.start) + 1
            column = bad.start - (data.rfind(b"\n", 0, bad.start) + 1) + 1
            return TuneforgeError(
                f"[encoding] invalid utf-8 byte 0x{data[bad.start]:02X} at column {column}",
                where=f"{path}:{line}",
                fix="save the file as UTF-8",
            )
        try:
            json.loads(text)
        except json.JSONDecodeError as bad_json:
            return TuneforgeError(
                f"[invalid_json] not valid JSON: {bad_json.msg} at column {bad_json.colno}",
                where=f"{path}:{bad_json.lineno}",
                fix=fix,
            )
    reason = str(err.args[0] if err.args else err).splitlines()[0]
    return TuneforgeError(f"[invalid_json] not valid JSON: {reason}", where=str(path), fix=fix)
