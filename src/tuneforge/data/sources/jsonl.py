"""JSON Lines: one JSON object per line; BOM, CRLF and a missing last newline are fine."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from tuneforge.config import DataConfig
from tuneforge.data.sources.base import RawRow, decode_line, strip_bom


def read(path: Path, cfg: DataConfig) -> Iterator[RawRow]:
    encoding = cfg.encoding or "utf-8"
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if lineno == 1:
                raw = strip_bom(raw)
            text, ok = decode_line(raw, encoding)
            where = f"{path}:{lineno}"
            if not text.strip():
                continue
            if not ok:
                yield RawRow({}, where, ("encoding", f"invalid {encoding} bytes"))
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as err:
                yield RawRow({}, where, ("invalid_json", f"not valid JSON: {err.msg} at column {err.colno}"))
                continue
            if not isinstance(obj, dict):
                yield RawRow({}, where, ("wrong_type", f"expected a JSON object, got {type(obj).__name__}"))
                continue
            yield RawRow(obj, where)
