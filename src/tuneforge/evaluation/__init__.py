"""④ Evaluation: a run → metrics (and the untuned base model's beside them)."""

from tuneforge.evaluation.run import evaluate_run

__all__ = ["evaluate_run"]
