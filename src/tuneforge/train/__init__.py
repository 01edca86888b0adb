"""③ Train: a dataset directory + a model + a method → a run directory."""

from tuneforge.train.run import EXIT_INTERRUPTED, reload_config, train

__all__ = ["EXIT_INTERRUPTED", "reload_config", "train"]
