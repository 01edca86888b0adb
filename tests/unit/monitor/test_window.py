"""--since / --until / --window → a UTC window and its folder name; bad input is one clear message."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tuneforge.errors import TuneforgeError
from tuneforge.monitor.window import resolve_window


def test_windows_from_either_end_or_from_now() -> None:
    assert resolve_window("2026-12-06", None, "1d").name == "2026-12-06T0000Z_2026-12-07T0000Z"
    assert resolve_window(None, "2026-12-06T08:00", "6h").name == "2026-12-06T0200Z_2026-12-06T0800Z"
    assert resolve_window("2026-12-06T10:00+02:00", "2026-12-06T12:00Z").name == (
        "2026-12-06T0800Z_2026-12-06T1200Z"
    )
    now = datetime(2026, 12, 7, 6, 30, 42, tzinfo=UTC)
    w = resolve_window(None, None, "1w", now=now)
    assert (w.since, w.until) == (
        datetime(2026, 11, 30, 6, 30, tzinfo=UTC),
        datetime(2026, 12, 7, 6, 30, tzinfo=UTC),
    )


@pytest.mark.parametrize(
    ("since", "until", "span", "message"),
    [
        (None, None, "1y", "--window: '1y' is not a window length"),
        (None, None, "0d", "--window: '0d' is not a window length"),
        ("yesterday", None, "1d", "--since: 'yesterday' is not a date or time"),
        (
            "2026-12-06",
            "2026-12-05",
            "1d",
            "--since/--until: the window ends (2026-12-05 00:00) before it starts",
        ),
    ],
)
def test_bad_windows_are_refused(since: str | None, until: str | None, span: str, message: str) -> None:
    with pytest.raises(TuneforgeError) as err:
        resolve_window(since, until, span)
    assert err.value.render().startswith(message)
