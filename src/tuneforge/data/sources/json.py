"""JSON documents: an array of records, an object holding arrays of records, or an object of columns.

    [{"text": ..., "label": ...}, ...]                 rows at $[0], $[1], ...
    {"version": 2, "data": [{"text": ...}, ...]}       rows at $.data[0], ... (each array of objects in turn)
    {"text": ["a", "b"], "label": ["x", "y"]}          columns zipped into rows at $.text[0], ...
    {"text": "one record"}                             a single row at $

Parsed as a stream with ijson, so memory holds one record (columns: one value per column) at a time. Telling
the object shapes apart needs one extra pass over the events of the file. Keys containing a dot cannot be
addressed by ijson prefixes and are not supported as top-level keys.

ijson's prefixed events cost time and memory in proportion to the nesting depth for every event, so a file
nested thousands of levels deep would never finish. A fast byte scan measures the depth first; a file deeper
than a record can be is read from ijson's unprefixed events instead, and each record nested too deep becomes
a `too_deep` row without ever being built.
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
from tuneforge.data.sources.base import MAX_DEPTH, TOO_DEEP, RawRow, json_type
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
    if _max_depth(path) > MAX_DEPTH + 2:  # + the document's own array or object, and a key's array
        yield from _read_deep(path)
        return
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


# --- files nested deeper than any record: ijson's basic events, depth counted, deep records never built

_STARTS = ("start_map", "start_array")
_ENDS = ("end_map", "end_array")
_DEEP = object()  # stands for a value nested too deep, which is skipped rather than built
_CHUNK = 16 * 2**20


def _max_depth(path: Path) -> int:
    """The deepest nesting of [ and { outside strings, by a vectorized scan of the bytes (UTF-8 keeps ASCII
    bytes out of multi-byte characters, so quotes, backslashes and brackets are found byte-wise)."""
    import numpy as np

    table = np.zeros(256, dtype=bool)
    table[list(b'"\\[]{}')] = True
    depth, deepest, in_string, carried = 0, 0, 0, 0
    with _open(path) as f:
        while block := f.read(_CHUNK):
            data = np.frombuffer(block, dtype=np.uint8)
            # Only the structural bytes matter; a backslash run left open by the last block is put in front.
            pos = np.concatenate([np.arange(-carried, 0), np.flatnonzero(table[data])])
            ch = np.concatenate([np.full(carried, ord("\\"), dtype=np.uint8), data[pos[carried:]]])
            bs = ch == ord("\\")
            follows = np.r_[False, (bs[:-1]) & (np.diff(pos) == 1)]  # directly after a backslash
            run = np.cumsum(bs & ~(follows & bs))  # backslash runs numbered from 1
            lengths = np.bincount(run[bs], minlength=int(run[-1]) + 1 if len(run) else 1)
            # A quote is escaped when an odd run of backslashes ends right before it.
            escaped = follows & ~bs & (lengths[np.r_[0, run[:-1]]] % 2 == 1)
            quote = (ch == ord('"')) & ~escaped
            inside = (np.cumsum(quote) + in_string) % 2 == 1
            step = np.zeros(len(ch), dtype=np.int64)
            outside = ~inside & ~quote
            step[outside & ((ch == ord("[")) | (ch == ord("{")))] = 1
            step[outside & ((ch == ord("]")) | (ch == ord("}")))] = -1
            if len(ch):
                levels = depth + np.cumsum(step)
                deepest, depth = max(deepest, int(levels.max())), int(levels[-1])
                in_string = (int(np.count_nonzero(quote)) + in_string) % 2
            ends_in_run = len(ch) and bs[-1] and pos[-1] == len(data) - 1
            carried = int(lengths[run[-1]]) if ends_in_run else 0
    return deepest


def _read_deep(path: Path) -> Iterator[RawRow]:
    """`read` for a deeply nested file: the same shapes and locations, from unprefixed events."""
    shape = _guarded(path, lambda: _shape(path))
    if shape.single:
        values = list(_guarded_iter(path, _values(path, None)))
        yield RawRow({}, f"{path} $", TOO_DEEP) if values[0] is _DEEP else RawRow(values[0], f"{path} $")
        return
    for key in shape.record_keys:
        base = f"$.{key}" if key else "$"
        for i, obj in enumerate(_guarded_iter(path, _values(path, key))):
            where = f"{path} {base}[{i}]"
            if obj is _DEEP:
                yield RawRow({}, where, TOO_DEEP)
            elif isinstance(obj, dict):
                yield RawRow(obj, where)
            else:
                yield RawRow({}, where, ("wrong_type", f"expected a JSON object, got {json_type(obj)}"))
    if shape.columns:
        lengths = set(shape.columns.values())
        if len(lengths) > 1:
            yield from _zip_columns(path, shape.columns)  # raises the length error
        names = list(shape.columns)
        streams = [_values(path, c) for c in names]
        for i, values in enumerate(_guarded_iter(path, zip(*streams, strict=True))):
            where = f"{path} $.{names[0]}[{i}]"
            if any(v is _DEEP for v in values):
                yield RawRow({}, where, TOO_DEEP)
            else:
                yield RawRow(dict(zip(names, values, strict=True)), where)


def _skip(events: Iterator[tuple[str, Any]]) -> None:
    """Consume the rest of a container whose start event was just read."""
    depth = 1
    for event, _ in events:
        depth += (event in _STARTS) - (event in _ENDS)
        if depth == 0:
            return


def _build(event: str, value: Any, events: Iterator[tuple[str, Any]]) -> Any:
    """The value that starts with `event`, or _DEEP (consumed, not built) when it nests past MAX_DEPTH."""
    from ijson.common import ObjectBuilder

    if event not in _STARTS:
        return value
    builder = ObjectBuilder()
    builder.event(event, value)
    depth = 1
    for ev, val in events:
        depth += (ev in _STARTS) - (ev in _ENDS)
        if depth > MAX_DEPTH:
            _skip_to(events, depth)
            return _DEEP
        builder.event(ev, val)
        if depth == 0:
            break
    return builder.value


def _skip_to(events: Iterator[tuple[str, Any]], depth: int) -> None:
    for event, _ in events:
        depth += (event in _STARTS) - (event in _ENDS)
        if depth == 0:
            return


def _values(path: Path, key: str | None) -> Iterator[Any]:
    """The items of the array at top-level `key` ("" = the document is the array; None = the document)."""
    import ijson

    with _open(path) as f:
        events = ijson.basic_parse(f, use_float=True)
        event, value = next(events)
        if key is None:
            yield _build(event, value, events)
            return
        if key:
            while True:  # find the key in the top-level object
                event, value = next(events)
                if event == "end_map":
                    return
                name = value
                event, value = next(events)
                if name == key and event == "start_array":
                    break
                if event in _STARTS:
                    _skip(events)
        for event, value in events:
            if event == "end_array":
                return
            yield _build(event, value, events)


def _shape(path: Path) -> Shape:
    """Where the records are, from ijson's unprefixed events: their cost does not grow with the nesting depth,
    so the one scan serves shallow and deep files alike."""
    import ijson

    shape = Shape()
    with _open(path) as f:
        events = ijson.basic_parse(f, use_float=True)
        first = next(events, None)
        if first is None:
            raise TuneforgeError("[invalid_json] the file is empty", where=str(path))
        if first[0] == "start_array":
            shape.record_keys.append("")
            return shape
        if first[0] != "start_map":
            raise TuneforgeError(
                f"[wrong_type] expected a JSON array or object at the top level, got {first[0]}",
                where=str(path),
            )
        for event, value in events:
            if event == "end_map":
                break
            key = value
            event, value = next(events)
            if event == "start_map":
                _skip(events)
            elif event == "start_array":
                kind, count = "column", 0
                for ev, _ in events:
                    if ev == "end_array":
                        break
                    if count == 0 and ev == "start_map":
                        kind = "records"
                    if ev in _STARTS:
                        _skip(events)
                    count += 1
                if kind == "records":
                    shape.record_keys.append(key)
                else:
                    shape.columns[key] = count
    if not shape.record_keys and not shape.columns:
        shape.single = True
    elif shape.record_keys:
        shape.columns = {}
    return shape
