"""The drift tests, each chosen by data type and sample size, each saying what it tested on how much data.

Computed with scipy and scikit-learn rather than Evidently or NannyML. Both would add a large dependency tree
(pandas, plotly, their own pinned numpy/scikit-learn/pandas ranges: Evidently 0.7.23 does not even import
with pandas 3), and neither knows the training data, the request log or the run: the monitor would still
have to build their input frames from both. Evidently's rules are followed where they are sound: on small
samples a significance test (Kolmogorov-Smirnov, chi-squared), on large ones an effect size with a threshold
(normed Wasserstein distance, Jensen-Shannon distance), since with thousands of rows every trivial difference
becomes significant. Embedding drift is a domain classifier (as in Evidently) whose cross-validated ROC AUC is
judged against a permutation null, with the kernel two-sample test (MMD, Gretton et al. 2012) as a second
opinion.

Measured by `bench/monitor.py` (2026-12-07, 2 shared x86_64 cores under a load average of ~9): on the same
frame drawn from 100,000 logged requests (1,000 reference and 2,000 sampled live prompts, 100,000 labels,
MiniLM embeddings), these five tests took 15.7 s and 447 MB peak; Evidently 0.7.23 computing the same tests
(ColumnDriftMetric with Wasserstein and Jensen-Shannon at 0.1, EmbeddingsDriftMetric with its model and MMD
methods) took 403 s and 402 MB, about 26x slower (its embedding methods bootstrap their thresholds by
refitting), with the same verdicts and the same statistics up to Evidently's natural-log Jensen-Shannon
(0.057 vs our base-2 0.068: a factor sqrt(ln 2)) and its own classifier/MMD estimates (AUC 0.603 vs 0.601,
MMD 0.0285 vs 0.0294). The whole `monitor()` run on that log took 286 s with an empty embeddings cache
(embedding 3,000 texts on the busy CPU dominates) and 24 s with a warm one (a daily run's case).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

LARGE = 1000
"""Above this many live values a test gives way to an effect size with a threshold (see the docstring)."""
DISTANCE_THRESHOLD = 0.1
"""Normed Wasserstein and Jensen-Shannon distances at or above this count as drift (Evidently's default)."""


@dataclass
class TestResult:
    """One drift test as the report prints it."""

    name: str
    test: str
    n_reference: int
    n_live: int
    statistic: float | None = None
    statistic_name: str = ""
    p_value: float | None = None
    threshold: str = ""
    drift: bool | None = None
    """True/False: judged; None: not enough data to judge."""
    need: int = 0

    @property
    def verdict(self) -> str:
        if self.drift is None:
            return f"not enough data (n = {min(self.n_live, self.n_reference)}, need ≥ {self.need})"
        return "drift" if self.drift else "no drift detected"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "verdict": self.verdict}


def too_few(name: str, test: str, n_ref: int, n_live: int, need: int) -> TestResult | None:
    """The result of a test that cannot be judged on this little data, or None when there is enough."""
    if min(n_ref, n_live) >= need:
        return None
    return TestResult(name, test, n_ref, n_live, need=need)


def numeric_drift(name: str, ref: list[float], live: list[float], *, need: int, alpha: float) -> TestResult:
    """Two-sample Kolmogorov-Smirnov test; above LARGE live values, Wasserstein distance / reference std."""
    from scipy import stats

    small = len(live) <= LARGE
    test = "two-sample Kolmogorov-Smirnov" if small else "Wasserstein distance / reference std"
    short = too_few(name, test, len(ref), len(live), need)
    if short is not None:
        return short
    if small:
        ks = stats.ks_2samp(ref, live)
        p = float(ks.pvalue)
        return TestResult(
            name, test, len(ref), len(live), float(ks.statistic), "D", p, f"p < {alpha}", p < alpha, need
        )
    spread = float(np.std(ref)) or 1.0  # a constant reference: distances in its own units
    d = float(stats.wasserstein_distance(ref, live)) / spread
    threshold = f"distance ≥ {DISTANCE_THRESHOLD}"
    return TestResult(
        name, test, len(ref), len(live), d, "distance", None, threshold, d >= DISTANCE_THRESHOLD, need
    )


def categorical_drift(
    name: str, ref: Counter[str], live: Counter[str], *, need: int, alpha: float
) -> TestResult:
    """Chi-squared test of the two mixes; above LARGE live values, their Jensen-Shannon distance."""
    from scipy import stats
    from scipy.spatial.distance import jensenshannon

    n_ref, n_live = sum(ref.values()), sum(live.values())
    small = n_live <= LARGE
    test = "chi-squared" if small else "Jensen-Shannon distance (base 2)"
    short = too_few(name, test, n_ref, n_live, need)
    if short is not None:
        return short
    cats = sorted(set(ref) | set(live))
    table = np.array([[ref[c] for c in cats], [live[c] for c in cats]], dtype=float)
    if small:
        if len(cats) < 2:  # one category on both sides: the mixes are the same
            return TestResult(name, test, n_ref, n_live, 0.0, "chi2", 1.0, f"p < {alpha}", False, need)
        chi = stats.chi2_contingency(table)
        p = float(chi.pvalue)
        return TestResult(
            name, test, n_ref, n_live, float(chi.statistic), "chi2", p, f"p < {alpha}", p < alpha, need
        )
    d = float(jensenshannon(table[0] / n_ref, table[1] / n_live, base=2))
    threshold = f"distance ≥ {DISTANCE_THRESHOLD}"
    return TestResult(
        name, test, n_ref, n_live, d, "distance", None, threshold, d >= DISTANCE_THRESHOLD, need
    )


def domain_classifier(
    ref: np.ndarray,
    live: np.ndarray,
    *,
    need: int,
    alpha: float,
    permutations: int,
    min_auc: float,
    seed: int = 0,
) -> TestResult:
    """Can a linear classifier tell live inputs from training inputs? 5-fold ROC AUC vs a permutation null.

    The classifier is ridge regression on the 0/1 domain label. Hand-written rather than sklearn's
    `permutation_test_score`, which refits per permutation (500 fits, about 30 s on 2 busy cores): a ridge
    fit is linear in the labels, so each fold is factorised once and every permutation is one matrix product.
    The folds are drawn independently of the labels and shared by the observed and the permuted labels, so
    under "no drift" (the labels are exchangeable) the permutation p-value is exact.
    """
    name, test = "prompt embeddings", "domain classifier, 5-fold ROC AUC vs permutation null"
    short = too_few(name, test, len(ref), len(live), need)
    if short is not None:
        return short
    from scipy.stats import rankdata
    from sklearn.model_selection import KFold

    x = np.vstack([ref, live]).astype(np.float64)  # (N, D)
    n = len(x)
    y = np.r_[np.zeros(len(ref)), np.ones(len(live))]
    rng = np.random.default_rng(seed)
    labels = np.column_stack([y] + [y[rng.permutation(n)] for _ in range(permutations)])  # (N, 1 + B)
    aucs = []
    for train, test_idx in KFold(5, shuffle=True, random_state=seed).split(x):
        xt, yt = x[train], labels[train]  # (n_tr, D), (n_tr, 1 + B)
        mean = xt.mean(0)
        xc = xt - mean
        gram = xc.T @ xc + np.eye(x.shape[1])  # ridge, alpha = 1
        w = np.linalg.solve(gram, xc.T @ (yt - yt.mean(0)))  # (D, 1 + B)
        scores = (x[test_idx] - mean) @ w  # (n_te, 1 + B)
        aucs.append(_auc(scores, labels[test_idx], rankdata))
    per_label = np.mean(aucs, axis=0)  # (1 + B,)
    auc = float(per_label[0])
    p = float((1 + np.sum(per_label[1:] >= auc)) / (permutations + 1))
    threshold = f"p < {alpha} and AUC ≥ {min_auc}"
    drift = p < alpha and auc >= min_auc
    return TestResult(name, test, len(ref), len(live), auc, "AUC", p, threshold, drift, need)


def _auc(scores: np.ndarray, labels: np.ndarray, rankdata: Any) -> np.ndarray:
    """ROC AUC of every column at once (Mann-Whitney U from ranks); 0.5 where a column lacks a class."""
    ranks = rankdata(scores, axis=0)  # (n, C), ties get their average rank
    pos = labels.sum(0)
    neg = len(labels) - pos
    u = (ranks * labels).sum(0) - pos * (pos + 1) / 2
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((pos > 0) & (neg > 0), u / (pos * neg), 0.5)


def mmd_test(
    ref: np.ndarray, live: np.ndarray, *, need: int, alpha: float, permutations: int, seed: int = 0
) -> TestResult:
    """Kernel two-sample test: squared MMD with a Gaussian kernel (median-distance bandwidth), permutation p.

    Hand-written because scipy and scikit-learn have no MMD test; the biased (V-statistic) estimate lets
    every permutation be one quadratic form, so all of them are a single matrix product.
    """
    from sklearn.metrics import pairwise_distances

    name, test = "prompt embeddings (second opinion)", "MMD, Gaussian kernel, permutation test"
    short = too_few(name, test, len(ref), len(live), need)
    if short is not None:
        return short
    x = np.vstack([ref, live]).astype(np.float64)  # (N, D)
    d2 = pairwise_distances(x, metric="sqeuclidean")  # (N, N)
    median = float(np.median(d2[np.triu_indices_from(d2, k=1)])) or 1.0
    k = np.exp(-d2 / median)
    n, m = len(x), len(ref)
    w = np.r_[np.full(m, 1.0 / m), np.full(n - m, -1.0 / (n - m))]  # (N,)
    rng = np.random.default_rng(seed)
    weights = np.column_stack([w] + [w[rng.permutation(n)] for _ in range(permutations)])  # (N, 1 + B)
    stats = np.einsum("nb,nb->b", weights, k @ weights)  # (1 + B,) w^T K w per column
    observed = float(stats[0])
    p = float((1 + np.sum(stats[1:] >= observed)) / (permutations + 1))
    return TestResult(name, test, m, n - m, observed, "MMD²", p, f"p < {alpha}", p < alpha, need)


def farthest_inputs(
    ref: np.ndarray, live: np.ndarray, ref_texts: list[str], live_texts: list[str], k: int = 5
) -> list[dict[str, Any]]:
    """The live inputs least like any training input, each beside its nearest one (cosine similarity)."""
    if not len(ref) or not len(live):
        return []
    sims = live @ ref.T  # (L, R): the embeddings are unit length
    best = sims.argmax(axis=1)
    order = np.argsort(sims[np.arange(len(live)), best], kind="stable")[:k]
    return [
        {
            "live": live_texts[i],
            "nearest_training": ref_texts[int(best[i])],
            "similarity": float(sims[i, best[i]]),
        }
        for i in order
    ]


def unseen_rate(known: set[Any], units: list[list[Any]]) -> float | None:
    """Share of units (characters or token ids) over all texts that never occur in the reference."""
    total = sum(len(u) for u in units)
    if not total:
        return None
    return sum(1 for text in units for unit in text if unit not in known) / total
