"""The report's per-group results: Fairlearn tables for base and tuned, parity gaps, threshold optimizer."""

from __future__ import annotations

from typing import Any

from tuneforge.evaluation.report.render import Block, num, with_ci


def group_blocks(fairness: dict[str, Any]) -> list[Block]:
    blocks: list[Block] = []
    for column, entry in fairness.items():
        tuned, base = entry["tuned"], entry.get("base")
        if tuned.get("note"):
            blocks.append(("p", f"{column}: {tuned['note']}."))
        rows = []
        for metric, t in tuned.get("metrics", {}).items():
            b = (base or {}).get("metrics", {}).get(metric)
            for g, v in t["by_group"].items():
                bv = b["by_group"].get(g) if b else None
                rows.append(
                    [
                        metric,
                        g,
                        tuned["counts"].get(g, ""),
                        *([with_ci(bv["value"], bv) if bv else ""] if base else []),
                        with_ci(v["value"], v),
                    ]
                )
            rows.append(
                [metric, "largest gap", "", *([num(b["gap"]) if b else ""] if base else []), num(t["gap"])]
            )
        if rows:
            blocks.append(("p", f"Per {column} (95% bootstrap intervals in brackets):"))
            header = ["metric", column, "n", *(["base"] if base else []), "tuned"]
            blocks.append(("table", (header, rows)))
        if tuned.get("too_small"):
            blocks.append(
                (
                    "p",
                    f"Too few examples to rank (under {tuned['min_group_size']}): "
                    + ", ".join(f"{g} ({tuned['counts'][g]})" for g in tuned["too_small"])
                    + ".",
                )
            )
        parity = tuned.get("parity", {})
        if parity:
            base_parity = (base or {}).get("parity", {})
            rows = [
                [
                    label,
                    *([num(base_parity.get(label, {}).get(k)) for k in PARITY] if base else []),
                    *[num(par[k]) for k in PARITY],
                ]
                for label, par in parity.items()
            ]
            sides = ["base", "tuned"] if base else ["tuned"]
            header = ["label (one vs rest)", *[f"{PARITY[k]} {side}" for side in sides for k in PARITY]]
            blocks.append(
                (
                    "p",
                    f"Parity gaps across {column}: DP is the demographic parity difference, EO the "
                    "equalized odds difference (0 = equal treatment; higher is a wider gap):",
                )
            )
            blocks.append(("table", (header, rows)))
        if entry.get("warnings"):
            blocks.append(("list", [f"WARNING: {w}" for w in entry["warnings"]]))
    return blocks


PARITY = {"demographic_parity_difference": "DP", "equalized_odds_difference": "EO"}


def threshold_blocks(t: dict[str, Any]) -> list[Block]:
    """The plain 0.5 threshold beside Fairlearn's per-group thresholds (fitted on validation)."""
    before, after = t["before"]["groups"], t["after"]["groups"]
    rows = [["accuracy (all)", num(t["before"]["accuracy"]), num(t["after"]["accuracy"])]]
    for g, v in before.get("metrics", {}).get("accuracy", {}).get("by_group", {}).items():
        a = after["metrics"]["accuracy"]["by_group"].get(g, {})
        rows.append([f"accuracy ({g})", num(v["value"]), num(a.get("value"))])
    for label, par in before.get("parity", {}).items():
        for key, value in par.items():
            rows.append([f"{key.replace('_', ' ')} ({label})", num(value), num(after["parity"][label][key])])
    return [
        (
            "p",
            f"ThresholdOptimizer ({t['constraint']}, per {t['group_column']}, fitted on the {t['fitted_on']} "
            "split) beside the plain decision:",
        ),
        ("table", (["tuned", "plain threshold", "per-group thresholds"], rows)),
    ]
