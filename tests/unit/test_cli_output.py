"""What commands print, read at the width of a small terminal (80 columns)."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from tuneforge import builtin, cli


@pytest.fixture
def screen(monkeypatch: pytest.MonkeyPatch) -> io.StringIO:
    out = io.StringIO()
    monkeypatch.setattr(cli, "console", Console(width=80, file=out, color_system=None))
    return out


def test_models_shows_whole_names_and_install_commands(screen: io.StringIO) -> None:
    cli.models()
    text = screen.getvalue()
    assert max(len(line) for line in text.splitlines()) <= 80
    for m in builtin.MODELS.values():
        assert f"│ builtin:{m.name} " in text  # on one line, not cut or folded
        assert f"install builtin:{m.name}: {m.pip}\n" in text
