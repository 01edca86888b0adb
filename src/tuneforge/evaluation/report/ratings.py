"""The report's ratings: the LLM judge's verdicts and the blind human A/B ratings, with their agreement."""

from __future__ import annotations

from typing import Any

from tuneforge.evaluation.report.render import Block, num, with_ci


def judge_blocks(j: dict[str, Any]) -> list[Block]:
    blocks: list[Block] = [
        (
            "p",
            f"LLM judge {j['model']} ({j['rubric']} rubric) on {j['examples']} examples; "
            f"{j['errors']} failed requests or answers without a verdict "
            f"({j['examples_with_errors']} examples).",
        )
    ]
    rows = [
        [f"rating 1-10, {side}", with_ci(j[f"single_{side}"]["value"], j[f"single_{side}"])]
        for side in ("base", "tuned")
        if f"single_{side}" in j
    ]
    if "pairwise" in j:
        rows += [
            [f"pairwise {w} (tuned)", with_ci(j["pairwise"][w]["value"], j["pairwise"][w])]
            for w in ("win", "tie", "loss")
        ]
        rows.append(["verdicts that survive swapping the order", num(j["pairwise"]["order_consistent_rate"])])
    if rows:
        blocks.append(("table", (["judge", "value [95% CI]"], rows)))
    if "single_paired" in j:
        blocks.append(("p", j["single_paired"]["verdict"]))
    if j.get("first_error"):
        blocks.append(("p", f"First judge error: {j['first_error']}"))
    return blocks


def human_blocks(h: dict[str, Any]) -> list[Block]:
    o = h["overall"]
    rows = [[what, with_ci(o[what]["value"], o[what])] for what in ("win", "tie", "loss")]
    if "net" in o:  # results imported before intervals were clustered by item have no net preference
        rows.append(["net preference (win − loss)", with_ci(o["net"]["value"], o["net"])])
    items = f" of {o['items']} items" if "items" in o else ""
    test = o.get("test", "sign test over decided ratings")
    blocks: list[Block] = [
        (
            "p",
            f"Blind A/B ratings of the {h['split']} answers, from the tuned model's side ({o['n']} ratings"
            f"{items}; {test}: p = {num(o['p_value'])}). An item's ratings by several raters are not "
            "independent: the intervals resample items, and the net preference's interval is the one its "
            "test does not reject, so the two agree.",
        ),
        ("table", (["tuned vs base", "rate [95% CI]"], rows)),
    ]
    per = [
        [name, r.get("n"), r.get("win", 0), r.get("tie", 0), r.get("loss", 0)]
        for name, r in h["per_rater"].items()
    ]
    blocks.append(("table", (["rater", "ratings", "win", "tie", "loss"], per)))
    agree = h.get("agreement", {})
    stats = [
        f"{name} {num(agree[k])}"
        for k, name in (("cohen_kappa", "Cohen's kappa"), ("krippendorff_alpha", "Krippendorff's alpha"))
        if agree.get(k) is not None
    ]
    if stats:
        blocks.append(("p", "Agreement between raters: " + ", ".join(stats) + "."))
    for rater, j in (h.get("judge_agreement") or {}).items():
        blocks.append(
            ("p", f"LLM judge vs {rater}: Cohen's kappa {num(j['cohen_kappa'])} over {j['n']} examples.")
        )
    if h.get("preference_dataset"):
        blocks.append(
            ("p", f"{h['preference_pairs']} preference pairs written to {h['preference_dataset']}.")
        )
    return blocks
