"""Pages of a JSONL file (a dataset split, rejected.jsonl) with a text search, fast at 100k+ rows.

The file is memory-mapped and indexed once by its line starts (numpy); the lines then form one Arrow string
array without a copy, so a search is one vectorised `match_substring` over the raw JSON text and a page parses
only the rows it shows. The index is cached per (path, size, mtime): a file rewritten by `prepare` is read
anew.
"""

from __future__ import annotations

import json
import mmap
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

_CACHE: OrderedDict[tuple[str, int, int], _LineIndex] = OrderedDict()
_CACHE_SIZE = 8


@dataclass
class Page:
    """Rows `start`..`start + len(rows)` of those matching (1-based line numbers kept for each row)."""

    rows: list[tuple[int, Any]]
    start: int
    matched: int  # rows matching the search (all rows without one)
    total: int  # rows in the file


class _LineIndex:
    def __init__(self, path: Path) -> None:
        size = path.stat().st_size
        self.map: mmap.mmap | None = None
        if size == 0:
            self.starts = np.zeros(1, dtype=np.int64)
            return
        with open(path, "rb") as f:
            self.map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        buf = np.frombuffer(self.map, dtype=np.uint8)
        ends = np.flatnonzero(buf == 0x0A) + 1  # one past each newline
        if ends.size == 0 or ends[-1] != size:
            ends = np.append(ends, size)  # a last line without its newline
        self.starts = np.concatenate(([0], ends)).astype(np.int64)
        self._lines: Any = None

    @property
    def count(self) -> int:
        return len(self.starts) - 1

    def line(self, i: int) -> bytes:
        assert self.map is not None
        return self.map[self.starts[i] : self.starts[i + 1]]

    def lines(self) -> Any:
        """All lines as one Arrow string array over the mapped file (no copy of the text)."""
        import pyarrow as pa

        if self._lines is None:
            assert self.map is not None
            self._lines = pa.LargeStringArray.from_buffers(
                self.count, pa.py_buffer(self.starts), pa.py_buffer(self.map)
            )
        return self._lines

    def search(self, query: str) -> np.ndarray:
        """Indices of lines whose JSON text holds `query` (case-insensitive), as JSON would escape it."""
        import pyarrow.compute as pc

        # Match the query as it is written inside a JSON string: a quote or backslash is escaped there, and
        # a writer with ensure_ascii (Python's default) wrote é as \u00e9.
        forms = dict.fromkeys(json.dumps(query, ensure_ascii=a)[1:-1] for a in (False, True))
        masks = [pc.match_substring(self.lines(), form, ignore_case=True) for form in forms]
        mask = masks[0] if len(masks) == 1 else pc.or_(masks[0], masks[1])
        return np.asarray(pc.indices_nonzero(mask))


def warm_up() -> None:
    """Arrow sets up its string search on first use (seconds); a server calls this at start instead."""
    import pyarrow as pa
    import pyarrow.compute as pc

    pc.match_substring(pa.array(["x"]), "x", ignore_case=True)


def _index(path: Path) -> _LineIndex:
    st = os.stat(path)
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    index = _LineIndex(path)
    _CACHE[key] = index
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return index


def jsonl_page(path: str | Path, *, query: str = "", start: int = 0, limit: int = 50) -> Page:
    """One page of a JSONL file's rows, optionally only those matching `query`; an unparseable line is
    given back as its text (so a damaged file still shows, with the damage visible)."""
    index = _index(Path(path))
    total = index.count
    if index.map is None:
        return Page([], 0, 0, 0)
    picked = index.search(query) if query else None
    matched = total if picked is None else len(picked)
    start = max(0, min(start, max(matched - 1, 0)))
    chosen = range(start, min(start + limit, matched))
    rows = []
    for k in chosen:
        i = int(picked[k]) if picked is not None else k
        raw = index.line(i)
        try:
            value: Any = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
            value = raw.decode("utf-8", "replace")
        rows.append((i + 1, value))
    return Page(rows, start, matched, total)
