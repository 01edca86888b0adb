"""The row type every reader yields, and text decoding shared by the file readers."""

from __future__ import annotations

import codecs
from dataclasses import dataclass
from typing import Any


@dataclass
class RawRow:
    """One source row: its fields, where it came from (file:line), and problems found while reading it."""

    fields: dict[str, Any]
    where: str
    problem: tuple[str, str] | None = None  # (problem class, message) found by the reader itself


def decode_line(raw: bytes, encoding: str) -> tuple[str, bool]:
    """Decode one line; invalid bytes become U+FFFD and are reported (returned flag) instead of crashing."""
    try:
        return raw.decode(encoding), True
    except UnicodeDecodeError:
        return raw.decode(encoding, errors="replace"), False


def strip_bom(data: bytes) -> bytes:
    return data[len(codecs.BOM_UTF8) :] if data.startswith(codecs.BOM_UTF8) else data
