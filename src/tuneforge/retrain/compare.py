"""Champion vs challenger on the frozen test split: the evaluation stage's paired test, and the decision.

Both models go through `evaluate_model` with the same records and settings, and `intervals_and_tests`
pairs them exactly as `evaluate --compare-base` pairs tuned and base (the challenger in the tuned seat), so a
retrain's numbers, intervals and p-values mean what an evaluation's mean.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from tuneforge.artifacts import DatasetDir, RunDir
from tuneforge.config import RunConfig
from tuneforge.errors import TuneforgeError
from tuneforge.evaluation.evals import clean
from tuneforge.evaluation.intervals import intervals_and_tests
from tuneforge.evaluation.metric_table import better
from tuneforge.evaluation.report.evaluation import headline_metric
from tuneforge.evaluation.stats import sig, verdict

NAMES = ("challenger", "champion")


@dataclass
class Decision:
    """Whether the challenger replaces the champion, and why, with the numbers behind it."""

    promote: bool
    reason: str
    metric: str
    champion: float | None
    challenger: float | None
    gain: float | None
    """challenger − champion in the better direction (positive: the challenger is better)."""
    test: dict[str, Any]
    """The paired test of `metric` (diff, interval, p_value, n, test, verdict)."""

    def to_dict(self) -> dict[str, Any]:
        return clean(self.__dict__)  # type: ignore[no-any-return]


def _model_eval(
    run: RunDir, cfg: RunConfig, records: list[dict[str, Any]], fmt: str, labels: list[str]
) -> Any:
    from transformers import set_seed

    from tuneforge.evaluation.model_eval import evaluate_model
    from tuneforge.models.runs import load_tuned

    set_seed(cfg.train.seed)
    model, tok = load_tuned(run, cfg)
    out = evaluate_model(model, tok, records, cfg, fmt, labels)
    del model
    return out


def evaluate_pair(
    champion: RunDir,
    challenger: RunDir,
    test: DatasetDir,
    cfg: RunConfig,
) -> dict[str, Any]:
    """Both models on `test`'s test split: metrics, intervals and paired tests (challenger − champion).

    Each model is loaded with its own run's config; the evaluation settings (batch size, bootstrap, seed)
    are this config's, the same for both.
    """
    from tuneforge.models.runs import run_config

    records = test.records("test")
    fmt, labels = test.format, test.labels
    evals = {}
    for side, run in (("champion", champion), ("challenger", challenger)):
        own = run_config(run).model_copy(update={"eval": cfg.eval})
        evals[side] = _model_eval(run, own, records, fmt, labels)
    summary = intervals_and_tests(cfg, fmt, labels, records, evals["challenger"], evals["champion"])
    return clean(
        {
            "n": len(records),
            "format": fmt,
            "labels": labels,
            "champion": evals["champion"].metrics,
            "challenger": evals["challenger"].metrics,
            "ci": {
                "champion": summary["ci"].get("base", {}),
                "challenger": summary["ci"].get("tuned", {}),
            },
            "paired": summary["paired"],
            "bootstrap": summary["bootstrap"],
        }
    )


def _shown(x: float | None) -> str:
    return sig(x) if x is not None else "n/a"


def decide(result: dict[str, Any], cfg: RunConfig) -> Decision:
    """Promote only when the challenger is better by `metric`, by at least min_gain, at significance alpha."""
    r = cfg.retrain
    metric = r.metric or headline_metric({"tuned": result["challenger"]})
    if metric is None:
        raise TuneforgeError(
            "the evaluation has no headline metric to decide by", where="retrain.metric", fix="set one"
        )
    if better(metric) == "near 1":
        raise TuneforgeError(
            f"{metric} has no better direction: it cannot decide a promotion",
            where="retrain.metric",
            fix="choose a metric where higher or lower is better",
        )
    paired = result["paired"]
    if metric not in paired:
        known = ", ".join(sorted(paired)) or "none"
        raise TuneforgeError(
            f"the paired test has no metric {metric!r} for this evaluation (it has: {known})",
            where="retrain.metric",
            fix="name one of those",
        )
    test = dict(paired[metric])
    test["verdict"] = verdict(metric, test, alpha=r.alpha, names=NAMES)
    champ, chal = result["champion"].get(metric), result["challenger"].get(metric)
    diff = test.get("diff")
    lower = better(metric) == "lower"
    gain = None if diff is None or not math.isfinite(diff) else (-diff if lower else diff)
    p = test.get("p_value", 1.0)
    shown = f"{metric} {_shown(chal)} (challenger) vs {_shown(champ)} (champion)"
    if gain is None:
        return Decision(
            False, f"no paired difference in {metric} could be computed", metric, champ, chal, gain, test
        )
    if gain <= 0:
        why = f"the challenger is not better: {shown}"
    elif gain < r.min_gain:
        why = f"the gain in {metric}, {sig(gain)}, is below retrain.min_gain {sig(r.min_gain)} ({shown})"
    elif p >= r.alpha:
        why = f"the gain is not significant: {shown}, p = {p:.3g} ≥ retrain.alpha {r.alpha:g}"
    else:
        why = (
            f"the challenger is better: {shown}, gain {sig(gain)} ≥ retrain.min_gain {sig(r.min_gain)}, "
            f"p = {p:.3g} < retrain.alpha {r.alpha:g}"
        )
        return Decision(True, why, metric, champ, chal, gain, test)
    return Decision(False, why, metric, champ, chal, gain, test)
