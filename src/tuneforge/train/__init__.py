"""③ Train: a dataset directory + a model + a method → a run directory."""

from __future__ import annotations

from typing import Any

__all__ = ["EXIT_INTERRUPTED", "reload_config", "train"]


def __getattr__(name: str) -> Any:
    # Lazy: the run report draws its loss curve with train/plot.py and must not load torch to do so.
    if name in __all__:
        from tuneforge.train import run

        return getattr(run, name)
    raise AttributeError(name)
