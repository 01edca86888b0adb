"""How sure we are: bootstrap confidence intervals, paired base-vs-tuned tests and the verdict sentence.

The percentile bootstrap over examples is written here with numpy (a few vectorised lines) rather than through
scipy.stats.bootstrap so that the unpaired interval and the paired test draw the very same resamples from one
seed; McNemar's exact test is scipy's binomial test on the discordant pairs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

#: Metrics where lower is better (everything else: higher is better).
LOWER_IS_BETTER = frozenset(
    {
        "ter",
        "loss",
        "loss_per_example",
        "perplexity",
        "squared_error",
        "abs_error",
        "mse",
        "rmse",
        "mae",
        "brier",
        "ece",
    }
)

#: Metrics where neither direction is better (an answer's length relative to the reference).
NEITHER = frozenset({"length_ratio"})

Statistic = Callable[[np.ndarray], float]  # indices of a resample → the metric on those examples


def _resamples(n: int, n_boot: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))  # (B, n)


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    *,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, float]:
    """Mean of per-example values with its percentile bootstrap interval."""
    x = np.asarray(values, dtype=float)
    if len(x) == 0:
        return {"value": float("nan"), "lo": float("nan"), "hi": float("nan"), "n": 0}
    means = x[_resamples(len(x), n_boot, seed)].mean(axis=1)  # (B,)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return {"value": float(x.mean()), "lo": float(lo), "hi": float(hi), "n": len(x)}


def bootstrap_statistic_ci(
    n: int, statistic: Statistic, *, n_boot: int = 1000, level: float = 0.95, seed: int = 0
) -> dict[str, float]:
    """The interval of a metric that is not a mean of per-example values (macro-F1, corpus BLEU)."""
    if n == 0:
        return {"value": float("nan"), "lo": float("nan"), "hi": float("nan"), "n": 0}
    stats = np.array([statistic(idx) for idx in _resamples(n, n_boot, seed)])
    lo, hi = np.quantile(stats, [(1 - level) / 2, (1 + level) / 2])
    return {"value": float(statistic(np.arange(n))), "lo": float(lo), "hi": float(hi), "n": n}


def paired_bootstrap(
    tuned: Sequence[float] | np.ndarray,
    base: Sequence[float] | np.ndarray,
    *,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, float]:
    """Mean difference tuned − base over the same examples, its interval, and a two-sided p-value.

    The p-value is the bootstrap's shifted-null estimate (Efron & Tibshirani §16.4): how often a resampled
    difference, centred on zero, is at least as far from zero as the observed one, with a +1 correction so
    that it is never exactly zero.
    """
    t, b = np.asarray(tuned, dtype=float), np.asarray(base, dtype=float)
    if t.shape != b.shape:
        raise ValueError("paired scores need the same examples")
    d = t - b
    if len(d) == 0:
        return {"diff": float("nan"), "lo": float("nan"), "hi": float("nan"), "p_value": 1.0, "n": 0}
    observed = float(d.mean())
    boots = d[_resamples(len(d), n_boot, seed)].mean(axis=1)  # (B,)
    lo, hi = np.quantile(boots, [(1 - level) / 2, (1 + level) / 2])
    extreme = np.sum(np.abs(boots - observed) >= abs(observed) - 1e-12)
    p = (extreme + 1) / (n_boot + 1)
    return {"diff": observed, "lo": float(lo), "hi": float(hi), "p_value": float(min(p, 1.0)), "n": len(d)}


def mcnemar(tuned_correct: Sequence[bool], base_correct: Sequence[bool]) -> dict[str, float]:
    """McNemar's exact test for paired accuracy: a binomial test on the examples only one model got right."""
    from scipy.stats import binomtest

    t, b = np.asarray(tuned_correct, dtype=bool), np.asarray(base_correct, dtype=bool)
    only_tuned, only_base = int(np.sum(t & ~b)), int(np.sum(~t & b))
    discordant = only_tuned + only_base
    p = 1.0 if discordant == 0 else float(binomtest(only_tuned, discordant, 0.5).pvalue)
    return {"only_tuned_correct": only_tuned, "only_base_correct": only_base, "p_value": p}


def verdict(
    metric: str, test: dict[str, Any], alpha: float = 0.05, names: tuple[str, str] = ("tuned", "base")
) -> str:
    """The sentence a report shows: which model is better by how much, or that the data cannot tell."""
    diff, lo, hi, p = test["diff"], test["lo"], test["hi"], test["p_value"]
    if not np.isfinite(diff) or p >= alpha or (lo <= 0 <= hi):
        return (
            f"no evidence of a difference in {metric} (diff {diff:+.4g} [{lo:+.4g}, {hi:+.4g}], p = {p:.3g})"
        )
    if metric in NEITHER:
        return (
            f"{names[0]} and {names[1]} differ in {metric} by {diff:+.4g} [{lo:+.4g}, {hi:+.4g}], p = {p:.3g}"
        )
    better_is_lower = metric in LOWER_IS_BETTER
    tuned_better = (diff < 0) if better_is_lower else (diff > 0)
    who = names[0] if tuned_better else names[1]
    # The interval of the winner's advantage (positive), whichever side and direction that is.
    sign = 1.0 if (diff > 0) else -1.0
    a_lo, a_hi = sorted((sign * lo, sign * hi))
    return f"{who} is better in {metric} by {abs(diff):.4g} [{a_lo:.4g}, {a_hi:.4g}], p = {p:.3g}"


def compare(
    metric: str,
    tuned: Sequence[float],
    base: Sequence[float],
    *,
    n_boot: int = 1000,
    seed: int = 0,
    correct: bool = False,
    names: tuple[str, str] = ("tuned", "base"),
) -> dict[str, Any]:
    """Everything the report needs about one per-example metric: both intervals, the paired test, a verdict.

    `correct`: the values are 0/1 correctness, so McNemar's exact test gives the p-value (the bootstrap still
    gives the interval of the difference).
    """
    test: dict[str, Any] = paired_bootstrap(tuned, base, n_boot=n_boot, seed=seed)
    if correct:
        mc = mcnemar([bool(x) for x in tuned], [bool(x) for x in base])
        test.update(mc, test="mcnemar-exact")
    else:
        test["test"] = "paired-bootstrap"
    return {
        "tuned": bootstrap_ci(tuned, n_boot=n_boot, seed=seed),
        "base": bootstrap_ci(base, n_boot=n_boot, seed=seed),
        "paired": test,
        "verdict": verdict(metric, test, names=names),
    }
