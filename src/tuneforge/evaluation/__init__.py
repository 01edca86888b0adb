"""④ Evaluation: a run → metrics beside the untuned base model's, the report, human and judge ratings."""

from __future__ import annotations

from typing import Any

__all__ = ["evaluate_run"]


def __getattr__(name: str) -> Any:
    # Lazy: `tuneforge report` and `human-eval` import this package without needing torch.
    if name == "evaluate_run":
        from tuneforge.evaluation.run import evaluate_run

        return evaluate_run
    raise AttributeError(name)
