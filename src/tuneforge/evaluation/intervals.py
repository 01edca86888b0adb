"""How sure an evaluation is: every metric's bootstrap interval and the paired base-vs-tuned tests.

A metric that is the mean of per-example scores gets the interval of that mean; one that is not (corpus BLEU,
macro-F1, ECE, loss per target token: the metric table's "statistic") is recomputed on each resample of whole
examples, so every interval is about the very number printed before it (stats.py draws the resamples).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from tuneforge.config import RunConfig
from tuneforge.evaluation.metric_table import METRICS, metric_of
from tuneforge.evaluation.metrics import perplexity as exp_loss
from tuneforge.evaluation.model_eval import ModelEval, prompt_and_reference
from tuneforge.evaluation.stats import (
    Statistic,
    bootstrap_ci,
    bootstrap_statistic_ci,
    compare,
    compare_statistic,
)


def _finite_pairs(a: list[float], b: list[float]) -> tuple[list[float], list[float]]:
    keep = [i for i in range(len(a)) if math.isfinite(a[i]) and math.isfinite(b[i])]
    return [a[i] for i in keep], [b[i] for i in keep]


def _finite(a: list[float]) -> list[float]:
    return [x for x in a if math.isfinite(x)]


def intervals_and_tests(
    cfg: RunConfig,
    fmt: str,
    labels: list[str],
    records: list[dict[str, Any]],
    tuned: ModelEval,
    base: ModelEval | None,
) -> dict[str, Any]:
    """The bootstrap, ci and paired (with verdicts) sections of the eval JSON."""
    n_boot, seed = cfg.eval.bootstrap, cfg.eval.seed
    out: dict[str, Any] = {"bootstrap": {"resamples": n_boot, "level": 0.95, "seed": seed}}
    ci: dict[str, dict[str, Any]] = {"tuned": {}}
    paired: dict[str, Any] = {}
    if n_boot > 0:
        statistics = {
            side: _statistics(cfg, fmt, labels, records, m)
            for side, m in (("tuned", tuned), ("base", base))
            if m is not None
        }
        for name, values in tuned.per_example.items():
            metric = metric_of(name)
            if name in statistics["tuned"] or metric in statistics["tuned"]:  # its own statistic below
                continue
            ci["tuned"][metric] = bootstrap_ci(_finite(values), n_boot=n_boot, seed=seed)
            if base is not None:
                t, b = _finite_pairs(values, base.per_example[name])
                c = compare(metric, t, b, n_boot=n_boot, seed=seed, correct=name == "correct")
                ci.setdefault("base", {})[metric] = c["base"]
                paired[metric] = {**c["paired"], "verdict": c["verdict"]}
        n = len(records)
        for metric, stat in statistics["tuned"].items():
            slow = METRICS[metric].max_resamples if metric in METRICS else None
            boot = min(n_boot, slow) if slow else n_boot
            base_stat = statistics.get("base", {}).get(metric)
            if base_stat is None:
                ci["tuned"][metric] = bootstrap_statistic_ci(n, stat, n_boot=boot, seed=seed)
                continue
            # One resampling gives both sides' intervals and the difference's, so they always agree.
            c = compare_statistic(metric, n, stat, base_stat, n_boot=boot, seed=seed)
            ci["tuned"][metric], ci.setdefault("base", {})[metric] = c["tuned"], c["base"]
            paired[metric] = {**c["paired"], "verdict": c["verdict"]}
    out["ci"], out["paired"] = ci, paired
    return out


def _statistics(
    cfg: RunConfig, fmt: str, labels: list[str], records: list[dict[str, Any]], m: ModelEval
) -> dict[str, Statistic]:
    """Metric → its value on any subset of the examples, for every headline that is not a plain mean."""
    out: dict[str, Statistic] = {}
    if m.target_tokens:
        out.update(_token_loss(m))
    if fmt in ("chat", "instruction") and m.predictions and isinstance(m.predictions[0], str):
        from tuneforge.evaluation.text_metrics import corpus_statistics

        refs = [prompt_and_reference(r, labels, cfg.data.prompt_template)[1] for r in records]
        out.update(corpus_statistics([str(p) for p in m.predictions], refs))
    if fmt == "classification" and m.label_predictions:
        out["macro_f1"] = _macro_f1(records, m, labels)
        if m.probs:
            out["ece"] = _ece(records, m, labels)
    return out


def _token_loss(m: ModelEval) -> dict[str, Statistic]:
    """The loss per target token (a ratio over resampled examples, like the headline loss) and exp of it."""
    tokens = np.asarray(m.target_tokens, dtype=float)
    per = np.nan_to_num(np.asarray(m.per_example["loss"], dtype=float)) * tokens  # summed loss per example

    def loss(idx: np.ndarray) -> float:
        return float(per[idx].sum() / max(tokens[idx].sum(), 1.0))

    def perplexity(idx: np.ndarray) -> float:
        return exp_loss(loss(idx))

    return {"loss": loss, "perplexity": perplexity}


def _macro_f1(records: list[dict[str, Any]], m: ModelEval, labels: list[str]) -> Statistic:
    """Macro-F1 over `labels` of a resample, as sklearn's f1_score(labels=labels, average="macro",
    zero_division=0) computes it (a test holds them equal). By hand from per-class counts because the
    bootstrap calls it a thousand times per side, and sklearn's input validation made that ~5 s of every
    classification evaluation, whatever its size."""
    code = {label: i for i, label in enumerate(labels)}
    gold = np.asarray([code.get(str(r["label"]), -1) for r in records], dtype=np.int64)
    pred = np.asarray([code.get(str(p), -1) for p in m.label_predictions], dtype=np.int64)
    k = len(labels)

    def stat(idx: np.ndarray) -> float:
        g, p = gold[idx], pred[idx]
        hit = np.bincount(g[(g == p) & (g >= 0)], minlength=k)
        both = np.bincount(g[g >= 0], minlength=k) + np.bincount(p[p >= 0], minlength=k)
        f1 = np.divide(2.0 * hit, both, out=np.zeros(k), where=both > 0)
        return float(f1.mean()) if k else 0.0

    return stat


def _ece(records: list[dict[str, Any]], m: ModelEval, labels: list[str]) -> Statistic:
    """ECE is not a mean of per-example terms (it bins first), so its interval resamples whole examples."""
    from tuneforge.evaluation.calibration import expected_calibration_error

    probs = np.asarray(m.probs, dtype=float)
    gold = np.asarray([labels.index(str(r["label"])) for r in records])

    def stat(idx: np.ndarray) -> float:
        return expected_calibration_error(probs[idx], gold[idx])

    return stat
