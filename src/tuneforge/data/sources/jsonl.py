"""JSON Lines: one JSON object per line; a BOM, CRLF, blank lines and a missing last newline are fine."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from tuneforge.config import DataConfig
from tuneforge.data.sources.base import TOO_DEEP, RawRow, json_type, read_lines, resolve_encoding, too_deep


def read(location: str, cfg: DataConfig) -> Iterator[RawRow]:
    path = Path(location)
    # JSON is UTF-8 by definition (RFC 8259), so no legacy codec is guessed: bad bytes are reported instead.
    encoding = resolve_encoding(path, cfg, sniff=False)
    for line in read_lines(path, encoding, cfg.max_row_bytes):
        where = f"{path}:{line.number}"
        if line.problem:
            yield RawRow({}, where, line.problem)
            continue
        assert line.text is not None
        if not line.text.strip():
            continue
        try:
            obj = json.loads(line.text)
        except json.JSONDecodeError as err:
            yield RawRow({}, where, ("invalid_json", f"not valid JSON: {err.msg} at column {err.colno}"))
            continue
        except RecursionError:
            yield RawRow({}, where, TOO_DEEP)
            continue
        if too_deep(obj):  # later steps (cleaning, saving) walk values recursively
            yield RawRow({}, where, TOO_DEEP)
            continue
        if not isinstance(obj, dict):
            yield RawRow({}, where, ("wrong_type", f"expected a JSON object, got {json_type(obj)}"))
            continue
        yield RawRow(obj, where)
