"""Champion vs challenger on the frozen test split and on the live held-out data: the evaluation stage's
paired test, and the decision.

Both models go through `evaluate_model` with the same records and settings, and `intervals_and_tests`
pairs them exactly as `evaluate --compare-base` pairs tuned and base (the challenger in the tuned seat), so a
retrain's numbers, intervals and p-values mean what an evaluation's mean.

The rule: the frozen test split gates promotion (better by retrain.metric, by min_gain, at alpha), and the
live held-out part of the corrections can veto it (a challenger significantly worse there, p < alpha, is not
promoted). The frozen split decides because it is the one set both models were always judged on, generation
after generation; the live part is small and young, so it may only stop a challenger that overfits old data
while live traffic moved, never promote one on its own. Fewer than retrain.live_min_n held-out examples are
"not enough data" and neither block nor help.
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
    live: dict[str, Any] | None = None
    """The same test on the live held-out data (n, judged, verdict, blocks, ...); None: no live data."""

    def to_dict(self) -> dict[str, Any]:
        return clean(self.__dict__)  # type: ignore[no-any-return]


def _model_evals(
    run: RunDir, cfg: RunConfig, sets: list[list[dict[str, Any]]], fmt: str, labels: list[str]
) -> list[Any]:
    """One model, loaded once, evaluated on each record set (the seed reset before each, as evaluate does)."""
    from transformers import set_seed

    from tuneforge.evaluation.model_eval import evaluate_model
    from tuneforge.models.runs import load_tuned

    model, tok = load_tuned(run, cfg)
    out = []
    for records in sets:
        set_seed(cfg.train.seed)
        out.append(evaluate_model(model, tok, records, cfg, fmt, labels))
    del model
    return out


def not_enough(n: int, need: int) -> str:
    return f"not enough data (n = {n}, need ≥ {need})"


def _summary(
    cfg: RunConfig, fmt: str, labels: list[str], records: list[dict[str, Any]], chal: Any, champ: Any
) -> dict[str, Any]:
    summary = intervals_and_tests(cfg, fmt, labels, records, chal, champ)
    return {
        "n": len(records),
        "format": fmt,
        "labels": labels,
        "champion": champ.metrics,
        "challenger": chal.metrics,
        "ci": {
            "champion": summary["ci"].get("base", {}),
            "challenger": summary["ci"].get("tuned", {}),
        },
        "paired": summary["paired"],
        "bootstrap": summary["bootstrap"],
    }


def evaluate_pair(
    champion: RunDir,
    challenger: RunDir,
    test: DatasetDir,
    cfg: RunConfig,
    live: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Both models on `test`'s test split, and on `live` held-out records: metrics, intervals and paired
    tests (challenger − champion).

    Returns the frozen test's numbers with a `live` entry: the same numbers (judged: true), only n and why
    when there are fewer than retrain.live_min_n (judged: false), or None when there is no live data.
    Each model is loaded once, with its own run's config; the evaluation settings (batch size, bootstrap,
    seed) are this config's, the same for both.
    """
    from tuneforge.models.runs import run_config

    records = test.records("test")
    fmt, labels = test.format, test.labels
    need = cfg.retrain.live_min_n
    judged = live is not None and len(live) >= need
    sets = [records, live] if judged and live is not None else [records]
    evals = {}
    for side, run in (("champion", champion), ("challenger", challenger)):
        own = run_config(run).model_copy(update={"eval": cfg.eval})
        evals[side] = _model_evals(run, own, sets, fmt, labels)
    out = _summary(cfg, fmt, labels, records, evals["challenger"][0], evals["champion"][0])
    if live is None:
        out["live"] = None
    elif judged:
        live_out = _summary(cfg, fmt, labels, live, evals["challenger"][1], evals["champion"][1])
        out["live"] = {**live_out, "judged": True}
    else:
        out["live"] = {"n": len(live), "judged": False, "reason": not_enough(len(live), need)}
    return clean(out)  # type: ignore[no-any-return]


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
    gain = _gain(metric, test.get("diff"))
    p = test.get("p_value", 1.0)
    shown = f"{metric} {_shown(chal)} (challenger) vs {_shown(champ)} (champion)"
    live = _live(result.get("live"), metric, cfg)
    if gain is None:
        return Decision(
            False,
            f"no paired difference in {metric} could be computed",
            metric,
            champ,
            chal,
            gain,
            test,
            live,
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
        if live is not None and live["blocks"]:
            why = (
                f"the challenger is better on the frozen test split ({shown}) but significantly worse on "
                f"the live held-out data: {live['verdict']}"
            )
            return Decision(False, why, metric, champ, chal, gain, test, live)
        return Decision(True, why, metric, champ, chal, gain, test, live)
    return Decision(False, why, metric, champ, chal, gain, test, live)


def _gain(metric: str, diff: float | None) -> float | None:
    """challenger − champion turned so that positive means better (None when it is not a number)."""
    if diff is None or not math.isfinite(diff):
        return None
    return -diff if better(metric) == "lower" else diff


def _live(live: dict[str, Any] | None, metric: str, cfg: RunConfig) -> dict[str, Any] | None:
    """The live held-out check: its numbers, its verdict, and whether it blocks a promotion."""
    if live is None:
        return None
    if not live.get("judged"):
        return {"n": live["n"], "judged": False, "verdict": live["reason"], "blocks": False}
    test = live["paired"].get(metric)
    champ, chal = live["champion"].get(metric), live["challenger"].get(metric)
    if test is None:
        return {"n": live["n"], "judged": False, "verdict": f"no paired test of {metric}", "blocks": False}
    gain, p = _gain(metric, test.get("diff")), test.get("p_value", 1.0)
    return {
        "n": live["n"],
        "judged": True,
        "champion": champ,
        "challenger": chal,
        "gain": gain,
        "p_value": p,
        "verdict": verdict(metric, test, alpha=cfg.retrain.alpha, names=NAMES),
        "blocks": gain is not None and gain < 0 and p < cfg.retrain.alpha,
    }
