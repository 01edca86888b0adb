"""train.time_budget ends a run like early stopping; the progress says how long the rest will take."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from tests.unit.train.tiny_runs import make_config, records
from tuneforge.train import train
from tuneforge.train.progress import TrainProgress, remaining_line


class TenSecondSteps:
    """A clock for the loop in which every optimizer step takes exactly 10 s."""

    def __init__(self) -> None:
        self.now = 1000.0

    def perf_counter(self) -> float:
        return self.now

    def __getattr__(self, name: str) -> Any:  # the rest of the time module, unchanged
        import time

        return getattr(time, name)


def test_a_run_stops_on_its_time_budget_validated_saved_and_finished(
    tmp_path: Path, tiny_llama: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tuneforge.train import loop as loop_module

    clock = TenSecondSteps()
    monkeypatch.setattr(loop_module, "time", clock)
    real_step = loop_module.Loop.step

    def slow_step(self: Any, state: Any) -> Any:
        clock.now += 10.0
        return real_step(self, state)

    monkeypatch.setattr(loop_module.Loop, "step", slow_step)
    run = train(make_config(tmp_path, tiny_llama, {"train.time_budget": "25s"}))

    rows = records(run)
    # 10, 20 s: under the budget; after step 3 (30 s) it is spent. Step 3 is no validation step (every 4), so
    # the stop validates it, as the end of a run would.
    assert [r["step"] for r in rows if "split" not in r] == [1, 2, 3]
    assert [r["step"] for r in rows if r.get("split") == "validation"] == [3]
    m = run.manifest
    assert (m["status"], m["step"], m["stopped_early"], m["stop_reason"]) == (
        "completed",
        3,
        True,
        "time-budget",
    )
    assert m["train_time_s"] == 30.0
    assert (run.path / "final" / "adapter_model.safetensors").is_file()
    assert (run.checkpoints / "step-00000003").is_dir()


def test_a_run_within_its_budget_is_not_marked(tmp_path: Path, tiny_llama: Path) -> None:
    run = train(make_config(tmp_path, tiny_llama, {"train.time_budget": "1h", "train.epochs": 1}))
    assert (run.manifest["step"], run.manifest["stop_reason"], run.manifest["stopped_early"]) == (
        7,
        None,
        False,
    )


def progress_lines(
    total: int, step_s: float, steps: int, budget_s: float | None = None, capsys: Any = None
) -> list[str]:
    now = [0.0]
    console = Console(file=io.StringIO(), force_terminal=False)
    with TrainProgress(
        total, 0, enabled=True, console=console, clock=lambda: now[0], budget_s=budget_s
    ) as bar:
        for step in range(1, steps + 1):
            now[0] += step_s
            bar.update(step, loss=1.5, lr=1e-4, tps=100.0)
    return capsys.readouterr().err.splitlines()


def test_without_a_terminal_progress_is_a_plain_line_a_minute_and_one_time_estimate(capsys: Any) -> None:
    lines = progress_lines(910, 17.9, 12, capsys=capsys)
    # The estimate comes once the first steps after the first are measured (17.9 s each, 906 steps left).
    assert lines[0] == (
        "measured 17.9 s/step: about 4 h 30 min for the 906 steps left; "
        "train.time_budget=30m to fit half an hour (the best checkpoint is kept)"
    )
    # Then a plain line whenever a minute has passed since the last: at 71.6 s (step 4), 143.2 s (step 8)...
    steps = [line.split()[1] for line in lines[1:]]
    assert steps == ["4/910", "8/910", "12/910"]
    assert lines[1] == "step 4/910 loss 1.5000 lr 1.00e-04 100 tok/s eta 4 h 30 min"


def test_the_estimate_says_where_a_budget_will_stop_the_run() -> None:
    assert remaining_line(10.0, 500, 1800.0) == (
        "measured 10 s/step: about 1 h 23 min for the 500 steps left; "
        "train.time_budget stops it after about 180 of them"
    )
    assert remaining_line(2.0, 100, None) == "measured 2 s/step: about 3 min for the 100 steps left"
