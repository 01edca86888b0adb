"""The training progress line keeps steps, ETA and loss whole at any width, dropping lesser numbers first."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from tuneforge.train import progress
from tuneforge.train.progress import TrainProgress


def rendered(width: int, monkeypatch: pytest.MonkeyPatch) -> str:
    """The line at `width` columns at step 123 of 1000, 22 steps after step 101 took 44 s (2 s a step)."""
    monkeypatch.setattr(progress, "peak_memory_bytes", lambda: 2**29)
    console = Console(width=width, record=True, file=io.StringIO(), force_terminal=True)
    now = [998.0]
    bar = TrainProgress(1000, 100, enabled=True, console=console, clock=lambda: now[0])
    now[0] = 1000.0
    bar.update(101, loss=2.0, lr=1e-4, tps=10_000)
    now[0] = 1044.0
    bar.update(123, loss=1.2345, lr=2e-4, tps=12_345)
    console.print(bar.progress.get_renderable())
    return console.export_text().rstrip("\n")


@pytest.mark.parametrize("width", [200, 120, 80, 60])
def test_steps_eta_and_loss_are_whole_at_any_width(width: int, monkeypatch: pytest.MonkeyPatch) -> None:
    line = rendered(width, monkeypatch)
    assert len(line) <= width
    assert "123/1000 eta 0:29:14 loss 1.2345" in line  # 877 steps left at 2 s a step
    assert "…" not in line


def test_lesser_numbers_go_first_when_narrow(monkeypatch: pytest.MonkeyPatch) -> None:
    assert rendered(200, monkeypatch).endswith(
        "123/1000 eta 0:29:14 loss 1.2345 lr 2.00e-04 12,345 tok/s mem 0.50 GiB 0:00:46"
    )
    assert rendered(80, monkeypatch).endswith("123/1000 eta 0:29:14 loss 1.2345 lr 2.00e-04 12,345 tok/s")
    assert rendered(60, monkeypatch).endswith("123/1000 eta 0:29:14 loss 1.2345")
    assert "━" in rendered(60, monkeypatch) and "━" not in rendered(40, monkeypatch)
