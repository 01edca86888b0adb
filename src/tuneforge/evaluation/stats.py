"""How sure we are: bootstrap confidence intervals, paired base-vs-tuned tests and the verdict sentence.

The percentile bootstrap over examples is written here with numpy (a few vectorised lines) rather than through
scipy.stats.bootstrap so that the interval and the paired test draw the very same resamples from one seed, and
so that a paired test's p-value and its interval come from the same resampled differences: the interval is the
pair of order statistics that the p-value inverts, so "p < 0.05" holds exactly when the 95% interval excludes
zero and a verdict can never disagree with the interval printed beside it. A statistic that is not a mean
(corpus BLEU, macro-F1, loss per token) is recomputed on each resample of whole examples, so every interval is
about the very number printed before it. McNemar's exact p is kept beside accuracy's bootstrap, for reference.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from tuneforge.evaluation.metric_table import better

Statistic = Callable[[np.ndarray], float]  # indices of a resample → the metric on those examples


def _resamples(n: int, n_boot: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))  # (B, n)


def percentile_interval(boots: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The percentile interval as the order statistics that `bootstrap_p_value` inverts.

    lo is the k-th smallest resampled value and hi the k-th largest, k = ceil(B·(1-level)/2): then lo > 0
    exactly when fewer than B·(1-level)/2 resamples are <= 0, which is the p-value's own condition.
    """
    b = np.sort(np.asarray(boots, dtype=float))
    # (1 - 0.95) / 2 · 1000 is 25.000000000000004 in floating point: without the tolerance k would be 26.
    k = max(math.ceil(len(b) * (1 - level) / 2 - 1e-9), 1)
    return float(b[k - 1]), float(b[len(b) - k])


def bootstrap_p_value(boots: np.ndarray) -> float:
    """Two-sided p-value of "the difference is zero" from the resampled differences themselves.

    Twice the share of resamples on the far side of zero (ties counted on both sides), at least 1/B: the
    smallest level at which the percentile interval still contains zero (Efron & Tibshirani §15.4).
    """
    b = np.asarray(boots, dtype=float)
    far = min(int(np.sum(b <= 0)), int(np.sum(b >= 0)))
    return float(min(1.0, max(2 * far / len(b), 1 / len(b))))


def _nan_interval(n: int = 0) -> dict[str, float]:
    return {"value": float("nan"), "lo": float("nan"), "hi": float("nan"), "n": n}


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
        return _nan_interval()
    means = x[_resamples(len(x), n_boot, seed)].mean(axis=1)  # (B,)
    lo, hi = percentile_interval(means, level)
    return {"value": float(x.mean()), "lo": lo, "hi": hi, "n": len(x)}


def bootstrap_statistic_ci(
    n: int, statistic: Statistic, *, n_boot: int = 1000, level: float = 0.95, seed: int = 0
) -> dict[str, float]:
    """The interval of a metric that is not a mean of per-example values (macro-F1, corpus BLEU)."""
    if n == 0:
        return _nan_interval()
    stats = np.array([statistic(idx) for idx in _resamples(n, n_boot, seed)])
    lo, hi = percentile_interval(stats, level)
    return {"value": float(statistic(np.arange(n))), "lo": lo, "hi": hi, "n": n}


def paired_statistic(
    n: int,
    tuned: Statistic,
    base: Statistic,
    *,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """tuned − base of any statistic over the same resampled examples: the difference, interval and p-value.

    Also the interval of each side from the very same resamples, so a report can print all three together.
    """
    if n == 0:
        nan = float("nan")
        return {"diff": nan, "lo": nan, "hi": nan, "p_value": 1.0, "n": 0}
    idx = _resamples(n, n_boot, seed)
    t = np.array([tuned(i) for i in idx])  # (B,)
    b = np.array([base(i) for i in idx])  # (B,)
    everything = np.arange(n)
    t0, b0 = float(tuned(everything)), float(base(everything))
    lo, hi = percentile_interval(t - b, level)
    t_lo, t_hi = percentile_interval(t, level)
    b_lo, b_hi = percentile_interval(b, level)
    return {
        "diff": t0 - b0,
        "lo": lo,
        "hi": hi,
        "p_value": bootstrap_p_value(t - b),
        "n": n,
        "test": "paired-bootstrap",
        "sides": {
            "tuned": {"value": t0, "lo": t_lo, "hi": t_hi, "n": n},
            "base": {"value": b0, "lo": b_lo, "hi": b_hi, "n": n},
        },
    }


def paired_bootstrap(
    tuned: Sequence[float] | np.ndarray,
    base: Sequence[float] | np.ndarray,
    *,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, float]:
    """Mean difference tuned − base over the same examples, its interval, and the p-value of that interval."""
    t, b = np.asarray(tuned, dtype=float), np.asarray(base, dtype=float)
    if t.shape != b.shape:
        raise ValueError("paired scores need the same examples")
    d = t - b
    if len(d) == 0:
        return {"diff": float("nan"), "lo": float("nan"), "hi": float("nan"), "p_value": 1.0, "n": 0}
    boots = d[_resamples(len(d), n_boot, seed)].mean(axis=1)  # (B,)
    lo, hi = percentile_interval(boots, level)
    return {"diff": float(d.mean()), "lo": lo, "hi": hi, "p_value": bootstrap_p_value(boots), "n": len(d)}


def mcnemar(tuned_correct: Sequence[bool], base_correct: Sequence[bool]) -> dict[str, float]:
    """McNemar's exact test for paired accuracy: a binomial test on the examples only one model got right."""
    from scipy.stats import binomtest

    t, b = np.asarray(tuned_correct, dtype=bool), np.asarray(base_correct, dtype=bool)
    only_tuned, only_base = int(np.sum(t & ~b)), int(np.sum(~t & b))
    discordant = only_tuned + only_base
    p = 1.0 if discordant == 0 else float(binomtest(only_tuned, discordant, 0.5).pvalue)
    return {"only_tuned_correct": only_tuned, "only_base_correct": only_base, "p_value": p}


def sig(x: float, signed: bool = False) -> str:
    """A number at 3 significant digits, as every report prints it (no exponent below 1,000,000)."""
    if not math.isfinite(x):
        return str(x)
    if abs(x) >= 1000:
        return f"{x:+.0f}" if signed else f"{x:.0f}"
    return f"{x:+.3g}" if signed else f"{x:.3g}"


def verdict(
    metric: str, test: dict[str, Any], alpha: float = 0.05, names: tuple[str, str] = ("tuned", "base")
) -> str:
    """The sentence a report shows: which model is better by how much, or that the data cannot tell.

    The side is the interval's (it excludes zero exactly when p < alpha, see `percentile_interval`).
    """
    diff, lo, hi, p = test["diff"], test["lo"], test["hi"], test["p_value"]
    shown = f"{sig(diff, True)} [{sig(lo, True)}, {sig(hi, True)}]"
    if not np.isfinite(diff) or p >= alpha or (lo <= 0 <= hi):
        return f"no evidence of a difference in {metric} (diff {shown}, p = {p:.3g})"
    if better(metric) == "near 1":
        return f"{names[0]} and {names[1]} differ in {metric} by {shown}, p = {p:.3g}"
    higher = lo > 0
    tuned_better = higher != (better(metric) == "lower")
    who = names[0] if tuned_better else names[1]
    # The interval of the winner's advantage (positive), whichever side and direction that is.
    sign = 1.0 if higher else -1.0
    a_lo, a_hi = sorted((sign * lo, sign * hi))
    return f"{who} is better in {metric} by {sig(abs(diff))} [{sig(a_lo)}, {sig(a_hi)}], p = {p:.3g}"


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

    `correct`: the values are 0/1 correctness; McNemar's exact p-value is recorded beside the bootstrap's
    (`mcnemar_p_value`), while the verdict uses the bootstrap's, the one its interval agrees with.
    """
    test: dict[str, Any] = paired_bootstrap(tuned, base, n_boot=n_boot, seed=seed)
    test["test"] = "paired-bootstrap"
    if correct:
        mc = mcnemar([bool(x) for x in tuned], [bool(x) for x in base])
        test.update(
            only_tuned_correct=mc["only_tuned_correct"],
            only_base_correct=mc["only_base_correct"],
            mcnemar_p_value=mc["p_value"],
        )
    return {
        "tuned": bootstrap_ci(tuned, n_boot=n_boot, seed=seed),
        "base": bootstrap_ci(base, n_boot=n_boot, seed=seed),
        "paired": test,
        "verdict": verdict(metric, test, names=names),
    }


def compare_statistic(
    metric: str,
    n: int,
    tuned: Statistic,
    base: Statistic,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    names: tuple[str, str] = ("tuned", "base"),
) -> dict[str, Any]:
    """`compare` for a statistic recomputed on each resample (corpus BLEU, loss per token, length ratio)."""
    test = paired_statistic(n, tuned, base, n_boot=n_boot, seed=seed)
    sides = test.pop("sides", {"tuned": _nan_interval(), "base": _nan_interval()})
    return {**sides, "paired": test, "verdict": verdict(metric, test, names=names)}
