"""For whom the model works: Fairlearn MetricFrames over the per-example scores, by group, base and tuned.

Per group: each metric with its bootstrap interval (Fairlearn ≥ 0.15 draws them), the largest gap and ratio
between groups, and for classification the demographic-parity and equalized-odds differences (binary, or per
label one-vs-rest). Groups too small to say anything about are listed and flagged, never ranked. Examples
without a group value ('', blanks, NaN, None: `group_value`) are one "(missing)" group, reported apart and
left out of the gaps unless asked (eval.rank_missing_group): "no value" is not a group of people.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from tuneforge.data.records import MISSING_GROUP, group_value
from tuneforge.evaluation.metric_table import metric_of

if TYPE_CHECKING:
    from tuneforge.config import RunConfig
    from tuneforge.evaluation.model_eval import ModelEval

MIN_GROUP_SIZE = 10
CI_QUANTILES = [0.025, 0.975]


def _mean_of_pred(_y_true: Any, y_pred: Any) -> float:
    return float(np.mean(y_pred))


def _frame_dict(
    metrics: dict[str, Callable[..., float]],
    y_true: Sequence[Any],
    y_pred: Sequence[Any],
    groups: Sequence[str],
    n_boot: int,
    seed: int,
) -> dict[str, Any]:
    from fairlearn.metrics import MetricFrame

    frame = MetricFrame(
        metrics=metrics,
        y_true=np.asarray(y_true),
        y_pred=np.asarray(y_pred),
        sensitive_features=np.asarray(groups),
        n_boot=n_boot if n_boot > 0 else None,
        ci_quantiles=CI_QUANTILES if n_boot > 0 else None,
        random_state=seed,
    )
    by_group, diff, ratio = frame.by_group, frame.difference(), frame.ratio()
    ci = frame.by_group_ci if n_boot > 0 else None
    out: dict[str, Any] = {}
    for name in metrics:
        per_group = {}
        for g in by_group.index:
            entry: dict[str, Any] = {"value": float(by_group.loc[g, name])}
            if ci is not None:
                entry["lo"], entry["hi"] = float(ci[0].loc[g, name]), float(ci[1].loc[g, name])
            per_group[str(g)] = entry
        out[name] = {
            "overall": float(frame.overall[name]),
            "by_group": per_group,
            "gap": float(diff[name]),
            "ratio": float(ratio[name]),
        }
    return out


def _parity(
    y_true: Sequence[str], y_pred: Sequence[str], groups: Sequence[str], labels: list[str]
) -> dict[str, dict[str, float]]:
    """Demographic-parity and equalized-odds differences; one-vs-rest per label beyond two classes."""
    from fairlearn.metrics import demographic_parity_difference, equalized_odds_difference

    positives = labels[1:] if len(labels) == 2 else labels
    out = {}
    g = np.asarray(groups)
    for label in positives:
        t = np.asarray([y == label for y in y_true], dtype=int)
        p = np.asarray([y == label for y in y_pred], dtype=int)
        out[label] = {
            "demographic_parity_difference": float(demographic_parity_difference(t, p, sensitive_features=g)),
            "equalized_odds_difference": float(equalized_odds_difference(t, p, sensitive_features=g)),
        }
    return out


def group_report(
    groups: Sequence[str],
    scores: Mapping[str, Sequence[float]],
    *,
    y_true: Sequence[str] | None = None,
    y_pred: Sequence[str] | None = None,
    labels: list[str] | None = None,
    min_group_size: int = MIN_GROUP_SIZE,
    n_boot: int = 200,
    seed: int = 0,
    rank_missing: bool = False,
) -> dict[str, Any]:
    """Per-group values of per-example scores (and for classification F1 and parity) for one model.

    Groups with fewer than `min_group_size` examples are left out of the gaps and listed under `too_small`;
    examples without a group value are the "(missing)" group, reported under `missing` and left out of the
    gaps unless `rank_missing`.
    """
    groups = [group_value(g) for g in groups]
    counts = Counter(groups)
    apart = {MISSING_GROUP} if MISSING_GROUP in counts and not rank_missing else set()
    big = {g for g, c in counts.items() if c >= min_group_size} - apart
    keep = [i for i, g in enumerate(groups) if g in big]
    report: dict[str, Any] = {
        "counts": dict(counts),
        "min_group_size": min_group_size,
        "too_small": sorted(set(counts) - big - apart),
        "metrics": {},
    }
    if apart:
        gone = [i for i, g in enumerate(groups) if g == MISSING_GROUP]
        means = {name: float(np.mean([float(v[i]) for i in gone])) for name, v in scores.items()}
        report["missing"] = {"count": len(gone), "values": means}
        shown = ", ".join(f"{name} {value:.3g}" for name, value in means.items())
        report["warnings"] = [
            f"{len(gone)} of {len(groups)} examples have no group value ('', blank, NaN or None): reported "
            f"apart as {MISSING_GROUP} ({shown}) and left out of the gaps (eval.rank_missing_group: true "
            "ranks them as a group)"
        ]
    if len(big) < 2:
        report["note"] = f"fewer than two groups with at least {min_group_size} examples: nothing to compare"
        return report
    kept_groups = [groups[i] for i in keep]
    for name, values in scores.items():
        vals = [float(values[i]) for i in keep]
        report["metrics"].update(
            _frame_dict({name: _mean_of_pred}, vals, vals, kept_groups, n_boot=n_boot, seed=seed)
        )
    if y_true is not None and y_pred is not None and labels:
        from sklearn.metrics import f1_score

        def macro_f1(t: Any, p: Any) -> float:
            return float(f1_score(t, p, labels=labels, average="macro", zero_division=0))

        t = [str(y_true[i]) for i in keep]
        p = [str(y_pred[i]) for i in keep]
        report["metrics"].update(_frame_dict({"macro_f1": macro_f1}, t, p, kept_groups, n_boot, seed))
        report["parity"] = _parity(t, p, kept_groups, labels)
    return report


def widened_gaps(base: dict[str, Any], tuned: dict[str, Any], tolerance: float = 0.01) -> list[str]:
    """Warnings for every metric (and parity difference) whose gap between groups grew with tuning."""
    warnings = []
    for name, t in tuned.get("metrics", {}).items():
        b = base.get("metrics", {}).get(name)
        if b is not None and t["gap"] > b["gap"] + tolerance:
            warnings.append(
                f"tuning widened the {name} gap between groups from {b['gap']:.3g} to {t['gap']:.3g}"
            )
    for label, t_par in tuned.get("parity", {}).items():
        b_par = base.get("parity", {}).get(label, {})
        for key, value in t_par.items():
            if key in b_par and value > b_par[key] + tolerance:
                what = key.replace("_", " ")
                warnings.append(
                    f"tuning widened the {what} for '{label}' from {b_par[key]:.3g} to {value:.3g}"
                )
    return warnings


def fairness_section(
    cfg: RunConfig,
    labels: list[str],
    gold: list[str] | None,
    tuned: ModelEval,
    base: ModelEval | None,
    groups: dict[str, list[str]],
) -> dict[str, Any]:
    """Per grouping column, the group tables of tuned (and base) and the gaps tuning widened (the eval JSON's
    fairness section). `gold`: the labels of a classification's records, for the parity differences."""
    out: dict[str, Any] = {}
    for column, values in groups.items():

        def one(m: ModelEval, values: list[str] = values) -> dict[str, Any]:
            keep = [i for i in range(len(values)) if all(math.isfinite(v[i]) for v in m.per_example.values())]
            scores = {metric_of(k): [v[i] for i in keep] for k, v in m.per_example.items()}
            kwargs: dict[str, Any] = {}
            if gold is not None:
                preds = m.label_predictions
                kwargs = {
                    "y_true": [gold[i] for i in keep],
                    "y_pred": [str(preds[i]) for i in keep],
                    "labels": labels,
                }
            return group_report(
                [values[i] for i in keep],
                scores,
                min_group_size=cfg.eval.min_group_size,
                n_boot=min(cfg.eval.bootstrap, 200),
                seed=cfg.eval.seed,
                rank_missing=cfg.eval.rank_missing_group,
                **kwargs,
            )

        entry: dict[str, Any] = {"tuned": one(tuned)}
        entry["warnings"] = list(entry["tuned"].get("warnings", []))  # the "(missing)" group, said once
        if base is not None:
            entry["base"] = one(base)
            entry["warnings"] += widened_gaps(entry["base"], entry["tuned"])
        out[column] = entry
    return out
