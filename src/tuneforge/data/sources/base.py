"""What readers share: the row type, encoding resolution, and a line reader that never loads a huge line."""

from __future__ import annotations

import codecs
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneforge.config import DataConfig

BATCH_ROWS = 1024  # rows per batch for columnar sources: bounded memory, few Python round trips
HEAD_BYTES = 64 * 1024  # what encoding and delimiter sniffing look at
TEXT_SUFFIXES = (".txt", ".text", ".md")

_BAD_BYTE = re.compile("[\udc80-\udcff]")  # bytes that did not decode, kept by the `surrogateescape` handler


@dataclass
class RawRow:
    """One source row: its fields, where it came from (file:line), and problems found while reading it."""

    fields: dict[str, Any]
    where: str
    problem: tuple[str, str] | None = None  # (problem class, message) found by the reader itself


@dataclass
class Line:
    """One line of a text file; `text` is None when the line was too large to load."""

    number: int
    text: str | None
    problem: tuple[str, str] | None = None


def bom_encoding(head: bytes) -> str | None:
    """The encoding a byte-order mark announces (UTF-32 first: its LE mark starts like UTF-16's)."""
    if head.startswith((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)):
        return "utf-32"
    if head.startswith(codecs.BOM_UTF8):
        return "utf-8-sig"
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    return None


def resolve_encoding(path: Path, cfg: DataConfig, *, sniff: bool = True) -> str:
    """The codec for `path`: data.encoding, else a BOM's, else UTF-8, else (sniff) a detected legacy codec.

    A legacy codec is only used when the first 64 KiB hold invalid UTF-8 and not one valid multi-byte UTF-8
    character: a UTF-8 file with a few corrupt bytes stays UTF-8, so those bytes are reported rather than
    silently read as something else.
    """
    if cfg.encoding:
        return "utf-8-sig" if codecs.lookup(cfg.encoding).name == "utf-8" else cfg.encoding
    with open(path, "rb") as f:
        head = f.read(HEAD_BYTES)
    announced = bom_encoding(head)
    if announced:
        return announced
    text = codecs.getincrementaldecoder("utf-8")(errors="surrogateescape").decode(head, final=False)
    if (
        not sniff
        or not _BAD_BYTE.search(text)
        or any(ord(ch) > 0x7F and not _BAD_BYTE.match(ch) for ch in text)
    ):
        return "utf-8-sig"
    from charset_normalizer import from_bytes

    matches = list(from_bytes(head))
    if not matches:
        return "utf-8-sig"
    # Short samples often fit several codecs equally well (chaos 0); Windows-1252 breaks the tie, being by far
    # the most common non-UTF-8 encoding of data files.
    tied = {m.encoding for m in matches if m.chaos <= matches[0].chaos}
    return "cp1252" if "cp1252" in tied else str(matches[0].encoding)


def bad_bytes(text: str, encoding: str, field: str | None = None) -> tuple[str, str] | None:
    """The `encoding` problem of text decoded with `surrogateescape`: first bad byte, its column or field."""
    if text.isascii():
        return None
    m = _BAD_BYTE.search(text)
    if m is None:
        return None
    byte = ord(m.group()) - 0xDC00
    name = codecs.lookup(encoding).name.removesuffix("-sig")
    at = f"in field {field!r}" if field is not None else f"at column {m.start() + 1}"
    return "encoding", f"invalid {name} byte 0x{byte:02X} {at}"


def repair(text: str) -> str:
    """Undecodable bytes (kept as lone surrogates) become U+FFFD, so the row can be shown and saved."""
    return _BAD_BYTE.sub("\ufffd", text)


def read_lines(path: Path, encoding: str, max_chars: int) -> Iterator[Line]:
    """Lines numbered from 1 with endings removed; a BOM, CRLF and a missing last newline are fine.

    Reads through a bounded `readline`, so a line longer than `max_chars` is skipped and reported
    (`row_too_large`) without ever being held in memory whole.
    """
    with open(path, encoding=encoding, errors="surrogateescape", newline="") as f:
        number = 0
        while line := f.readline(max_chars + 1):
            number += 1
            if len(line) > max_chars and not line.endswith(("\n", "\r")):
                while (rest := f.readline(1 << 20)) and not rest.endswith(("\n", "\r")):
                    pass
                yield Line(number, None, ("row_too_large", f"line is longer than {max_chars} characters"))
                continue
            if number == 1 and line.startswith("\ufeff"):
                line = line[1:]
            text = line.rstrip("\r\n")
            yield Line(number, text, bad_bytes(text, encoding))


MAX_DEPTH = 100  # nesting levels a row may have; records need 5, deeper input is hostile or broken
TOO_DEEP = ("too_deep", f"the row is nested more than {MAX_DEPTH} levels deep")


def too_deep(value: Any, limit: int = MAX_DEPTH) -> bool:
    """Whether lists/dicts nest more than `limit` levels, found without recursion (deep input breaks it)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = (
            item.values() if isinstance(item, dict) else item if isinstance(item, list | tuple) else None
        )
        if children is None:
            continue
        if depth > limit:
            return True
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list | tuple))
    return False


def approx_size(value: Any) -> int:
    """Rough size in characters of a decoded row, to refuse giant rows from sources read a row at a time."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, dict):
        return sum(len(str(k)) + approx_size(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return sum(approx_size(v) for v in value)
    return 8


def json_type(value: object) -> str:
    """The JSON name of a decoded value's type (array, string, ...), as the user sees it in the file."""
    names = {list: "array", dict: "object", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def special_file(path: Path) -> str | None:
    """What `path` is when it is neither a regular file nor a folder (a FIFO, socket or device), else None.

    Opening a FIFO or a terminal device blocks until someone writes to it, so such paths are never read.
    """
    try:
        mode = path.stat().st_mode
    except OSError:
        return None
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def not_a_file_problem(path: Path, what: str) -> tuple[str, str]:
    return "not_a_file", f"{path.name} is {what}, not a regular file; it is not read"


def visible(name: str) -> bool:
    """Hidden files and folders (.git, .DS_Store, editor swap files) are never data."""
    return not name.startswith(".") and name != "__MACOSX"
