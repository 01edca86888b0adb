"""Rows left out of a dataset: counted by reason, written with it to rejected.jsonl, summarized for errors."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import IO, Any

MAX_LISTED_PROBLEMS = 20
KEPT_EXAMPLES = 20  # dropped rows kept in memory for the error message and the report
FIX_ON_ERROR = "fix the rows above, or set data.on_error=drop to drop them into rejected.jsonl"


@dataclass
class Dropped:
    """Rows left out, by reason; a few are kept as examples, all are written to rejected.jsonl."""

    file: IO[str]
    invalid: Counter[str] = field(default_factory=Counter)
    filtered: Counter[str] = field(default_factory=Counter)
    examples: list[dict[str, Any]] = field(default_factory=list)
    invalid_examples: list[dict[str, Any]] = field(default_factory=list)

    @property
    def total(self) -> int:
        """Rows written to rejected.jsonl: the one count every report and manifest number is taken from."""
        return sum(self.invalid.values()) + sum(self.filtered.values())

    def add(self, where: str, kind: str, message: str, row: dict[str, Any], *, invalid: bool) -> None:
        (self.invalid if invalid else self.filtered)[kind] += 1
        entry = {"where": where, "problem": kind, "message": message, "row": row}
        self.file.write(json.dumps(entry, ensure_ascii=False, default=str) + "\n")
        if len(self.examples) < KEPT_EXAMPLES:
            self.examples.append(entry)
        if invalid and len(self.invalid_examples) < MAX_LISTED_PROBLEMS:
            self.invalid_examples.append(entry)


def problem_summary(
    rows: list[dict[str, Any]],
    problems: Counter[str],
    limit: int = MAX_LISTED_PROBLEMS,
    what: str = "invalid",
) -> str:
    total = sum(problems.values())
    lines = [f"{total} {what} rows ({', '.join(f'{k}: {v}' for k, v in problems.most_common())}):"]
    shown = rows[:limit]
    for r in shown:
        lines.append(f"  {r['where']}: [{r['problem']}] {r['message']}")
    if total > len(shown):
        lines.append(f"  ... and {total - len(shown)} more")
    return "\n".join(lines)
