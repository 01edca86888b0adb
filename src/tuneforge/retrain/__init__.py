"""⑦ Retrain: the registry's champion + new data → a challenger, promoted only when it is better."""

from __future__ import annotations

from typing import Any

__all__ = ["plan_retrain", "retrain"]


def __getattr__(name: str) -> Any:
    # Lazy: the evaluation stage this imports pulls in numpy/scipy, which `tuneforge --help` need not load.
    if name in __all__:
        from tuneforge.retrain import run

        return getattr(run, name)
    raise AttributeError(name)
