"""Bootstrap intervals, paired tests and verdicts on synthetic data whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from tuneforge.evaluation.stats import (
    bootstrap_ci,
    bootstrap_statistic_ci,
    compare,
    mcnemar,
    paired_bootstrap,
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
    assert test["p_value"] == pytest.approx(1 / 2001)
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
    assert c["paired"]["test"] == "mcnemar-exact"
    assert c["verdict"].startswith("tuned is better in accuracy by 0.6 [")
    assert c["verdict"].endswith(f"p = {2 * 0.5**60:.3g}")
    worse = compare("ter", [50.0 + i % 3 for i in range(100)], [40.0 + i % 3 for i in range(100)])
    assert worse["verdict"].startswith("base is better in ter by 10")
    assert compare("bleu", base, base)["verdict"].startswith("no evidence of a difference in bleu")
