"""Compare 2–4 runs: their curves overlaid, the config keys that differ, and their evaluations side by side.

The curves are the train stage's own series (`loss_series`, metrics.jsonl), the diff is over each run's own
config.yaml, and the numbers are each run's eval JSON read by the evaluation stage.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from tuneforge.artifacts import RunDir
from tuneforge.errors import TuneforgeError
from tuneforge.train.watch import metrics_so_far, run_state
from tuneforge.ui.charts import Chart, line_chart

router = APIRouter()
MIN_RUNS, MAX_RUNS = 2, 4
MAX_METRIC_CHARTS = 4  # validation metrics drawn beyond the loss (a chart each)


@dataclass
class Compared:
    rel: str
    run: RunDir
    state: str
    detail: str
    config: dict[str, Any] | None  # None: config.yaml missing or unreadable
    evaluation: str  # the evaluation the table shows ("test"), "" when none
    n: int | None
    headline: str  # the deciding metric's name
    metrics: dict[str, str]  # metric → "value [lo, hi]"


def _config(run: RunDir) -> dict[str, Any] | None:
    import yaml

    try:
        raw = yaml.safe_load(run.config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    return raw if isinstance(raw, dict) else None


def _evaluation(run: RunDir) -> tuple[str, int | None, str, dict[str, str]]:
    """(name, n, headline metric, metric → value with CI) of the run's test evaluation (else its first)."""
    from tuneforge.evaluation.report import eval_results
    from tuneforge.evaluation.report.evaluation import SHOWN, headline_metric, intervals
    from tuneforge.evaluation.report.render import with_ci

    try:
        results = eval_results(run)
    except (TuneforgeError, OSError, ValueError, KeyError):  # half-written or foreign: shown as not evaluated
        return "", None, "", {}
    name = "test" if "test" in results else next(iter(results), None)
    if name is None:
        return "", None, "", {}
    r = results[name]
    tuned, ci = r.get("tuned") or {}, intervals(r, "tuned")
    shown = {
        m: with_ci(tuned[m], ci.get(m))
        for m in SHOWN
        if isinstance(tuned.get(m), int | float) and not isinstance(tuned.get(m), bool)
    }
    return name, r.get("n"), headline_metric(r) or "", shown


def compared_runs(ui: Any, rels: list[str]) -> list[Compared]:
    out = []
    for rel in rels:
        run = ui.run(rel)
        state = run_state(run)
        name, n, headline, metrics = _evaluation(run) if state.state != "unreadable" else ("", None, "", {})
        out.append(
            Compared(
                ui.rel(run.path), run, state.state, state.detail, _config(run), name, n, headline, metrics
            )
        )
    return out


def _leaves(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted key → value of every leaf (a list is one value, as in a `key=value` override)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out |= _leaves(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def differing_keys(configs: list[dict[str, Any] | None]) -> list[tuple[str, list[str]]]:
    """(dotted key, each run's value as YAML text) for every key whose value is not the same in all runs.

    Leaf by leaf over all runs rather than `train.resume.config_diff` (two configs): a section one run lacks
    shows as its keys, "(not set)" there, not as one whole-section row.
    """
    import yaml

    leaves = [_leaves(c) if c is not None else None for c in configs]
    present = [x for x in leaves if x is not None]
    keys = sorted({k for x in present for k in x})

    def differs(key: str) -> bool:
        return (
            len({json.dumps(x[key], sort_keys=True, default=str) if key in x else None for x in present}) > 1
        )

    def shown(x: dict[str, Any] | None, key: str) -> str:
        if x is None:
            return "(no config)"
        if key not in x:
            return "(not set)"
        text = yaml.safe_dump(x[key], default_flow_style=True, width=10**6).strip()
        return text.removesuffix("...").strip()

    return [(k, [shown(x, k) for x in leaves]) for k in keys if differs(k)]


def overlaid_charts(runs: list[Compared]) -> list[Chart]:
    """Train loss, validation loss and each validation metric, one curve per run (a run keeps its colour)."""
    from tuneforge.train.plot import loss_series

    metrics = {r.rel: metrics_so_far(r.run) for r in runs}
    series = {rel: loss_series(m) for rel, m in metrics.items()}
    charts = [
        line_chart("training loss", {rel: s[0] for rel, s in series.items()}),
        line_chart("validation loss", {rel: s[1] for rel, s in series.items()}),
    ]
    val = {rel: [m for m in ms if m.get("split") == "validation"] for rel, ms in metrics.items()}
    names = sorted(
        {
            str(k)
            for ms in val.values()
            for m in ms
            for k, v in m.items()
            if k not in ("step", "split", "loss") and isinstance(v, int | float) and not isinstance(v, bool)
        }
    )
    for name in names[:MAX_METRIC_CHARTS]:
        charts.append(
            line_chart(
                f"validation {name}",
                {
                    rel: [(m["step"], m[name]) for m in ms if name in m and "step" in m]
                    for rel, ms in val.items()
                },
            )
        )
    return [c for c in charts if c is not None]


@router.get("/compare", response_class=HTMLResponse)
def compare_page(request: Request) -> Response:
    ui = request.app.state.ui
    rels = list(dict.fromkeys(request.query_params.getlist("run")))  # a run ticked twice counts once
    if not MIN_RUNS <= len(rels) <= MAX_RUNS:
        raise TuneforgeError(
            f"compare needs {MIN_RUNS} to {MAX_RUNS} runs, {len(rels)} were picked",
            where="run",
            fix="tick 2 to 4 runs in the runs list, then Compare",
        )
    runs = compared_runs(ui, rels)
    metric_names = list(dict.fromkeys(m for r in runs for m in r.metrics))
    return ui.page(
        request,
        "compare.html",
        runs=runs,
        charts=overlaid_charts(runs),
        diff=differing_keys([r.config for r in runs]),
        metric_names=metric_names,
        headlines={r.headline for r in runs if r.headline},
    )
