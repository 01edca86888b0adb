"""The time window a monitor run judges: --since / --until / --window, in UTC."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from tuneforge.errors import TuneforgeError

UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


@dataclass(frozen=True)
class Window:
    since: datetime
    until: datetime

    @property
    def name(self) -> str:
        """The report folder's name: both ends, to the minute (no colons: valid on every file system)."""
        return f"{self.since:%Y-%m-%dT%H%MZ}_{self.until:%Y-%m-%dT%H%MZ}"


def parse_span(text: str) -> timedelta:
    m = re.fullmatch(r"\s*(\d+)\s*([mhdw])\s*", text)
    if not m or int(m[1]) == 0:
        raise TuneforgeError(
            f"{text!r} is not a window length",
            where="--window",
            fix="write a number and a unit: 30m, 6h, 1d, 1w",
        )
    return timedelta(**{UNITS[m[2]]: int(m[1])})


def parse_time(text: str, option: str) -> datetime:
    try:
        t = datetime.fromisoformat(text.strip())
    except ValueError:
        raise TuneforgeError(
            f"{text!r} is not a date or time",
            where=option,
            fix="write ISO 8601: 2026-12-06 or 2026-12-06T08:00",
        ) from None
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def resolve_window(
    since: str | None, until: str | None, span: str = "1d", now: datetime | None = None
) -> Window:
    """Both ends given: as they are; one end: the other is `span` away; neither: the `span` up to now."""
    length = parse_span(span)
    start = parse_time(since, "--since") if since else None
    end = parse_time(until, "--until") if until else None
    if start is None and end is None:
        end = (now or datetime.now(UTC)).replace(second=0, microsecond=0)
    if start is None:
        assert end is not None
        start = end - length
    if end is None:
        end = start + length
    if not start < end:
        raise TuneforgeError(
            f"the window ends ({end:%Y-%m-%d %H:%M}) before it starts ({start:%Y-%m-%d %H:%M})",
            where="--since/--until",
            fix="give --since an earlier time than --until",
        )
    return Window(start, end)
