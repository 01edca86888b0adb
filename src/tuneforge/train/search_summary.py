"""The results of a hyperparameter search as rows: one per trial, for summary.md and the CLI's table."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class TrialRow:
    """One trial as the summary shows it."""

    number: int
    state: str
    value: float | None
    params: dict[str, Any]
    intermediate: dict[int, float]
    run_dir: str
    error: str | None = None
    duration_s: float | None = None
    worker: str | None = None
    """host:pid of the `tuneforge tune` process that ran it."""


@dataclass
class StudySummary:
    """What `tune` found: every trial, the best one, and where the results were written."""

    path: Path
    metric: str
    direction: str
    params: list[str]
    trials: list[TrialRow] = field(default_factory=list)
    best: TrialRow | None = None
    best_config: Path | None = None

    def count(self, state: str) -> int:
        return sum(t.state == state for t in self.trials)


def format_value(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def summary_rows(summary: StudySummary) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the trials table (shared by summary.md and the CLI's rich table)."""
    header = ["trial", "state", summary.metric, *summary.params, "steps"]
    rows = []
    for t in summary.trials:
        last_step = max(t.intermediate) if t.intermediate else None
        mark = " *" if summary.best is not None and t.number == summary.best.number else ""
        rows.append(
            [
                f"{t.number}{mark}",
                t.state,
                format_value(t.value) if t.value is not None else "-",
                *(format_value(t.params[p]) if p in t.params else "-" for p in summary.params),
                str(last_step) if last_step is not None else "-",
            ]
        )
    return header, rows


def summary_markdown(summary: StudySummary) -> str:
    header, rows = summary_rows(summary)
    lines = [
        f"# Hyperparameter search: {summary.metric} ({summary.direction})",
        "",
        f"{len(summary.trials)} trials: {summary.count('complete')} complete, "
        f"{summary.count('pruned')} pruned, {summary.count('fail')} failed.",
    ]
    if summary.best is not None:
        lines.append(
            f"Best: trial {summary.best.number} ({summary.metric}={format_value(summary.best.value)}), "
            f"run {summary.best.run_dir}; its config: {summary.best_config}."
        )
    lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    lines.append("")
    lines.append("`steps`: the last optimizer step at which the trial was validated; `*`: the best trial.")
    return "\n".join(lines) + "\n"
