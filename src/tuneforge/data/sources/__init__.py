"""Readers: every source kind yields `RawRow`s (a dict of fields plus where it came from), lazily.

Adding a source = one file with a `read(location, cfg)` generator + one line in `READERS` (+ its suffixes in
`SUFFIXES`, or a rule in `detect_source` for shapes a suffix cannot tell).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tuneforge.config import DataConfig
from tuneforge.data.sources import class_folders, csv, folder, hf_disk, html, json, jsonl, parquet, sql, text
from tuneforge.data.sources.base import TOO_DEEP, RawRow, approx_size, special_file, too_deep
from tuneforge.data.sources.sql_readonly import check_read_only, dialect_of
from tuneforge.errors import TuneforgeError

Reader = Callable[[str, DataConfig], Iterator[RawRow]]

READERS: dict[str, Reader] = {
    "jsonl": jsonl.read,
    "json": json.read,
    "csv": csv.read,
    "parquet": parquet.read,
    "text": text.read,
    "html": html.read,
    "folder": folder.read,
    "class-folders": class_folders.read,
    "sql": sql.read,
    "hf-disk": hf_disk.read,
}

SUFFIXES: dict[str, str] = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".jsonlines": "jsonl",
    ".json": "json",
    ".csv": "csv",
    ".tsv": "csv",
    ".tab": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".txt": "text",
    ".text": "text",
    ".md": "text",
    ".html": "html",
    ".htm": "html",
    ".xhtml": "html",
    ".urls": "html",
    ".db": "sql",
    ".sqlite": "sql",
    ".sqlite3": "sql",
}

# Readers of one file; a folder given with one of these as data.source is read file by file with it.
FILE_READERS = ("jsonl", "json", "csv", "parquet", "text", "html")


@dataclass(frozen=True)
class Source:
    """What `data.path` names: its reader, the files holding its content, and whether it lives elsewhere."""

    kind: str
    display: str  # as shown in messages and the manifest (database passwords hidden)
    files: list[Path]  # hashed into the input fingerprint
    remote: bool  # content not (fully) in `files` (a database server, fetched pages): never reuse a result


def detect_source(location: str | Path, cfg: DataConfig) -> str:
    """The reader for `location`: data.source, else from the URL scheme, the folder's shape or the suffix."""
    location = str(location)
    if cfg.source:
        if cfg.source not in READERS:
            raise TuneforgeError(
                f"unknown source {cfg.source!r}",
                where="data.source",
                fix="choose one of: " + ", ".join(READERS),
            )
        return cfg.source
    if sql.is_database_url(location):
        return "sql"
    path = Path(location)
    if path.is_dir():
        if hf_disk.is_saved_dataset(path):
            return "hf-disk"
        return "class-folders" if class_folders.shape(path) else "folder"
    kind = file_kind(path)
    if kind is None:
        raise TuneforgeError(
            f"cannot tell how to read {path} from its name",
            where="data.path",
            fix="set data.source to one of: " + ", ".join(READERS),
        )
    return kind


def file_kind(path: Path) -> str | None:
    """The reader for one file from its suffix, refined by a look inside where a suffix is ambiguous."""
    kind = SUFFIXES.get(path.suffix.lower())
    if kind == "text" and html.is_url_list(path):
        return "html"
    if kind == "json" and _is_json_lines(path):
        return "jsonl"
    return kind


def _is_json_lines(path: Path) -> bool:
    """Many `.json` files are JSON Lines: a first line that is a whole object followed by more content."""
    import json as _json

    with open(path, "rb") as f:
        first = f.readline(1 << 20)
        rest = f.read(64).strip()
    try:
        return isinstance(_json.loads(first.decode("utf-8-sig")), dict) and rest.startswith(b"{")
    except (ValueError, UnicodeDecodeError):
        return False
    except RecursionError:  # a deeply nested first line: its reader reports it; the shape decides here
        return first.lstrip(b"\xef\xbb\xbf \t").startswith(b"{") and rest.startswith(b"{")


def describe_source(location: str | Path, cfg: DataConfig) -> Source:
    """Check that the source exists and say how it is read and which files hold its content."""
    location = str(location)
    display = sql.display_url(location)
    path = sql.sqlite_file(location) or (None if sql.is_database_url(location) else Path(location))
    if path is not None and not path.exists():
        raise TuneforgeError(f"{path} does not exist", where="data.path", fix="point data.path at your data")
    special = special_file(path) if path is not None else None
    if path is not None and special:
        raise TuneforgeError(
            f"{path} is {special}, not a regular file: reading it could wait forever",
            where="data.path",
            fix="point data.path at a regular file or a folder (copy the stream into a file first)",
        )
    kind = detect_source(location, cfg)
    if kind == "sql" and cfg.query is not None:  # before anything is opened (the reader checks it again)
        scheme = "sqlite" if sql.sqlite_file(location) or path is not None else location.split(":", 1)[0]
        check_read_only(cfg.query, dialect_of(scheme))
    if path is None:
        return Source(kind, display, [], remote=True)
    files = folder.data_files(path) if path.is_dir() else [path]
    remote = any(
        f.suffix.lower() not in html.HTML_SUFFIXES and (kind == "html" or file_kind(f) == "html")
        for f in files
    )
    return Source(kind, display, files, remote)


def read_rows(location: str | Path, cfg: DataConfig) -> Iterator[RawRow]:
    """Stream the source's rows, at most `cfg.max_rows` of them; rows over data.max_row_bytes are reported."""
    location = str(location)
    source = describe_source(location, cfg)
    kind = source.kind
    if kind in FILE_READERS and Path(location).is_dir():
        rows = folder.read(location, cfg, kind=kind)
    else:
        rows = READERS[kind](location, cfg)
    for n, row in enumerate(rows):
        if cfg.max_rows is not None and n >= cfg.max_rows:
            return
        if row.problem is None and kind not in ("jsonl", "csv", "text") and too_deep(row.fields):
            row = RawRow({}, row.where, TOO_DEEP)
        elif (
            row.problem is None
            and kind not in ("jsonl", "csv", "text")
            and approx_size(row.fields) > cfg.max_row_bytes
        ):
            row = RawRow(
                {}, row.where, ("row_too_large", f"the row is larger than {cfg.max_row_bytes} characters")
            )
        yield row
