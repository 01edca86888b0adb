"""How much raters agree: Cohen's kappa (scikit-learn) for two, Krippendorff's alpha for more or missing."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np


def cohen_kappa(a: Sequence[Any], b: Sequence[Any]) -> float:
    """Chance-corrected agreement of two raters over the same items (nominal categories)."""
    from sklearn.metrics import cohen_kappa_score

    return float(cohen_kappa_score(list(a), list(b)))


def krippendorff_alpha(
    ratings: Sequence[Sequence[Any]],
    level: Literal["nominal", "ordinal", "interval", "ratio"] = "nominal",
) -> float:
    """Agreement of any number of raters; rows are raters, columns items, None where a rater skipped an item.

    Categories are mapped to integers first (the package wants numbers; for nominal data codes are arbitrary,
    for ordinal/interval data pass numbers already).
    """
    import krippendorff

    flat = [x for row in ratings for x in row if x is not None]
    numeric = all(isinstance(x, int | float) and not isinstance(x, bool) for x in flat)
    codes = {v: i for i, v in enumerate(sorted(set(map(str, flat))))}
    data = np.array(
        [
            [np.nan if x is None else (float(x) if numeric else float(codes[str(x)])) for x in row]
            for row in ratings
        ]
    )
    return float(krippendorff.alpha(reliability_data=data, level_of_measurement=level))


def agreement(ratings_by_rater: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Kappa for two raters, alpha for more, over the items each rated: {rater: {item_id: rating}}."""
    raters = sorted(ratings_by_rater)
    items = sorted({i for r in raters for i in ratings_by_rater[r]})
    out: dict[str, Any] = {"raters": len(raters), "items": len(items)}
    if len(raters) < 2:
        return out
    if len(raters) == 2:
        a, b = ratings_by_rater[raters[0]], ratings_by_rater[raters[1]]
        shared = [i for i in items if i in a and i in b]
        out["cohen_kappa"] = cohen_kappa([a[i] for i in shared], [b[i] for i in shared]) if shared else None
    rows = [[ratings_by_rater[r].get(i) for i in items] for r in raters]
    out["krippendorff_alpha"] = krippendorff_alpha(rows)
    return out
