"""Bootstrap intervals, paired tests and verdicts on synthetic data whose answer is known."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from tuneforge.evaluation.stats import (
    bootstrap_ci,
    bootstrap_statistic_ci,
    compare,
    compare_statistic,
    mcnemar,
    paired_bootstrap,
    percentile_interval,
    sig,
)


def test_bootstrap_ci_of_a_bernoulli_mean_matches_the_normal_approximation() -> None:
    x = np.random.default_rng(1).random(2000) < 0.3
    ci = bootstrap_ci(x.astype(float), n_boot=2000, seed=0)
    half = 1.96 * np.sqrt(x.mean() * (1 - x.mean()) / len(x))
    assert ci["value"] == pytest.approx(x.mean())
    assert ci["lo"] == pytest.approx(x.mean() - half, abs=0.004)
    assert ci["hi"] == pytest.approx(x.mean() + half, abs=0.004)
    assert bootstrap_ci([2.0] * 10) == {"value": 2.0, "lo": 2.0, "hi": 2.0, "n": 10}


def test_bootstrap_is_seeded() -> None:
    x = np.random.default_rng(0).random(50)
    assert bootstrap_ci(x, seed=3) == bootstrap_ci(x, seed=3)
    assert bootstrap_ci(x, seed=3) != bootstrap_ci(x, seed=4)


def test_statistic_ci_of_the_mean_equals_the_mean_ci() -> None:
    x = np.random.default_rng(2).random(40)
    direct = bootstrap_ci(x, n_boot=300, seed=5)
    generic = bootstrap_statistic_ci(len(x), lambda idx: float(x[idx].mean()), n_boot=300, seed=5)
    assert generic == pytest.approx(direct)


def test_paired_bootstrap_finds_a_real_difference_and_none_where_there_is_none() -> None:
    rng = np.random.default_rng(0)
    base = rng.normal(0, 1, 300)
    tuned = base + 0.5 + rng.normal(0, 0.5, 300)
    test = paired_bootstrap(tuned, base, n_boot=2000)
    assert test["lo"] < 0.5 < test["hi"]
    assert test["p_value"] == pytest.approx(1 / 2000)  # no resample crosses zero: the bootstrap's floor
    same = paired_bootstrap(base, base)
    assert same["diff"] == 0.0 and same["p_value"] == 1.0
    noise = paired_bootstrap(base + rng.normal(0, 1, 300), base + rng.normal(0, 1, 300), n_boot=2000)
    assert noise["p_value"] > 0.05


def test_mcnemar_exact_by_hand() -> None:
    # 10 examples only the tuned model gets right, 0 the other way: p = 2 · 0.5^10
    tuned = [True] * 10 + [True] * 5 + [False] * 5
    base = [False] * 10 + [True] * 5 + [False] * 5
    mc = mcnemar(tuned, base)
    assert mc["only_tuned_correct"] == 10 and mc["only_base_correct"] == 0
    assert mc["p_value"] == pytest.approx(2 * 0.5**10)
    # 6 vs 2 discordant: p = 2 · P(X ≤ 2 | n=8) = 2 · (1 + 8 + 28) / 256
    assert mcnemar([True] * 6 + [False] * 2, [False] * 6 + [True] * 2)["p_value"] == pytest.approx(74 / 256)


def test_verdicts() -> None:
    base = [0.0] * 60 + [1.0] * 40
    tuned = [1.0] * 100
    c = compare("accuracy", tuned, base, correct=True)
    assert c["paired"]["test"] == "paired-bootstrap"
    assert c["paired"]["mcnemar_p_value"] == pytest.approx(2 * 0.5**60)  # kept beside, for reference
    assert c["verdict"].startswith("tuned is better in accuracy by 0.6 [")
    assert c["verdict"].endswith("p = 0.001")
    worse = compare("ter", [50.0 + i % 3 for i in range(100)], [40.0 + i % 3 for i in range(100)])
    assert worse["verdict"].startswith("base is better in ter by 10")
    assert compare("bleu", base, base)["verdict"].startswith("no evidence of a difference in bleu")


def test_the_p_value_and_the_interval_agree_on_every_edge() -> None:
    """The case of issue 21: an interval excluding zero beside p = 0.062. Sweep differences from clearly none
    to clearly some, in small samples of 0/1 and continuous scores and odd resample counts, at the edge."""
    rng = np.random.default_rng(7)
    checked = 0
    for n_boot in (1000, 999, 250, 41):
        for shift in np.linspace(0, 0.6, 13):
            for n in (8, 20, 60):
                base = rng.random(n)
                tuned = base + shift * rng.random(n) - 0.1
                for t, b in ((tuned, base), ((tuned > 0.5) * 1.0, (base > 0.5) * 1.0)):
                    p = paired_bootstrap(t, b, n_boot=n_boot, seed=int(n * shift * 100))
                    excludes = p["lo"] > 0 or p["hi"] < 0
                    assert (p["p_value"] < 0.05) == excludes, (n_boot, shift, n, p)
                    checked += 1
    assert checked == 4 * 13 * 3 * 2


def test_percentile_interval_is_the_inverted_p_value() -> None:
    boots = np.array([-1.0] * 24 + [1.0] * 976)  # 2.4% below zero: p = 0.048, lo the 25th smallest > 0
    assert percentile_interval(boots) == (1.0, 1.0)
    boots = np.array([-1.0] * 25 + [1.0] * 975)  # 2.5%: p = 0.05, not below; the interval touches -1
    assert percentile_interval(boots) == (-1.0, 1.0)


def test_a_corpus_statistic_is_compared_on_the_same_resamples() -> None:
    x = np.random.default_rng(3).random(30)
    y = x + 0.2

    def ratio(v: np.ndarray) -> Callable[[np.ndarray], float]:
        return lambda idx: float(v[idx].sum() / len(idx))

    c = compare_statistic("chrf", 30, ratio(y), ratio(x), n_boot=400, seed=1)
    assert c["tuned"] == pytest.approx(bootstrap_statistic_ci(30, ratio(y), n_boot=400, seed=1))
    assert c["paired"]["diff"] == pytest.approx(0.2)
    assert c["paired"]["lo"] == pytest.approx(0.2) and c["paired"]["hi"] == pytest.approx(0.2)
    assert c["verdict"] == "tuned is better in chrf by 0.2 [0.2, 0.2], p = 0.0025"


def test_three_significant_digits() -> None:
    assert [sig(0.05358), sig(0.1142), sig(146.3), sig(16.25), sig(1234.5)] == [
        "0.0536",
        "0.114",
        "146",
        "16.2",
        "1234",
    ]
    assert sig(0.43, signed=True) == "+0.43"


def test_the_bootstrap_macro_f1_is_sklearns_on_every_resample() -> None:
    """The resampled macro-F1 is computed by hand for speed; it must be sklearn's f1_score (labels given,
    macro, zero_division 0), unparsed answers and labels absent from a resample included."""
    from types import SimpleNamespace

    from sklearn.metrics import f1_score

    from tuneforge.evaluation.intervals import _macro_f1

    rng = np.random.default_rng(0)
    labels = ["neg", "neu", "pos", "never"]  # "never" is in no gold label and no prediction
    gold = rng.choice(labels[:3], size=60, p=[0.6, 0.3, 0.1]).tolist()
    pred = rng.choice([*labels[:3], "None", "other"], size=60).tolist()  # None: an answer naming no label
    stat = _macro_f1([{"label": g} for g in gold], SimpleNamespace(label_predictions=pred), labels)
    g, p = np.asarray(gold), np.asarray(pred)
    for _ in range(200):
        idx = rng.integers(0, 60, size=int(rng.integers(1, 61)))
        expected = f1_score(g[idx], p[idx], labels=labels, average="macro", zero_division=0)
        assert stat(idx) == pytest.approx(expected, abs=1e-12)
