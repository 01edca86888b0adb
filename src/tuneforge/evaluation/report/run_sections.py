"""The report's sections on what went into the run: data, model and method, training curves, environment."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tuneforge.artifacts import DatasetDir, RunDir
from tuneforge.evaluation.report.render import Block, num, plot_png

# What the training loss is, by task (train/loop.py's batch_loss): the unit the curve's axis names.
LOSS_UNIT = {
    "causal-lm": "loss (nats per target token)",
    "classification": "loss (cross-entropy per example)",
    "regression": "loss (squared error per example)",
}


def data_section(run: RunDir, results: dict[str, dict[str, Any]] | None = None) -> list[Block]:
    """The prepared dataset the run trained on; when its recorded folder is gone, the one an evaluation was
    pointed at (`tuneforge evaluate RUN data.path=DIR`, split hashes checked), said as such."""
    missing = run.dataset_missing()
    path: Any = run.dataset_path()
    moved = ""
    if missing is not None:
        pointed = [
            r["dataset"]
            for r in (results or {}).values()
            if DatasetDir.is_dataset(Path(r.get("dataset") or ""))
        ]
        if not pointed:
            return [("p", f"{missing[0].upper()}{missing[1:]}; nothing to say about the data.")]
        path = pointed[0]
        moved = f" ({missing}; this is the folder the evaluation was pointed at, its split hashes the run's)"
    m = DatasetDir(Path(str(path))).manifest
    blocks: list[Block] = [
        (
            "p",
            f"Prepared dataset {path}{moved}: format {m.get('format')}, fingerprint "
            f"{str(m.get('fingerprint', ''))[:16]}.",
        )
    ]
    files = m.get("source_files") or []
    if files:
        blocks.append(
            ("table", (["source file", "sha256"], [[f["path"], f.get("sha256", "")] for f in files]))
        )
    steps = m.get("steps") or []
    if steps:
        rows = []
        for s in steps:
            dropped = s.get("dropped") or {}
            out = s.get("out")
            rows.append(
                [
                    s.get("step"),
                    num(s.get("in", "")),
                    ", ".join(f"{k} {v}" for k, v in out.items()) if isinstance(out, dict) else num(out),
                    ", ".join(f"{k} {v}" for k, v in dropped.items() if v) or "-",
                ]
            )
        blocks.append(("table", (["cleaning step", "rows in", "rows out", "dropped"], rows)))
    for key, what in (("label_distribution", "label"), ("group_distribution", "group")):
        dist = m.get(key) or {}
        if dist:
            names = sorted({k for split in dist.values() for k in split})
            rows = [[split, *[num(dist[split].get(n, 0)) for n in names]] for split in dist]
            blocks.append(("table", ([f"split \\ {what}", *names], rows)))
    return blocks


def model_section(run: RunDir) -> list[Block]:
    m = run.manifest
    params = m.get("parameters") or {}
    trainable, total = params.get("trainable"), params.get("total")
    share = f" ({100 * trainable / total:.2f}%)" if trainable and total else ""
    time_s = m.get("train_time_s")
    rows: list[tuple[str, Any]] = [
        ("base model", m.get("base_model")),
        ("task", m.get("task")),
        ("method", m.get("method")),
        ("parameters trainable / total", f"{trainable:,} / {total:,}{share}" if trainable and total else ""),
        ("optimizer steps", m.get("step")),
        ("training tokens", f"{m['tokens']:,}" if isinstance(m.get("tokens"), int) else m.get("tokens")),
        ("training time", f"{time_s:.1f} s" if isinstance(time_s, int | float) else ""),
        ("cost", cost_line(m) or "not recorded"),
        ("best checkpoint", _best(m.get("best"))),
        ("result", _result(m)),
    ]
    return [("table", (None, [[k, num(v)] for k, v in rows]))]


def cost_line(manifest: dict[str, Any]) -> str:
    """What the training cost: wall time on which hardware, tokens, peak memory ("" when not recorded)."""
    from tuneforge.models.estimate import fmt_duration

    time_s, tokens, peak = (manifest.get(k) for k in ("train_time_s", "tokens", "peak_memory_bytes"))
    parts = []
    if isinstance(time_s, int | float):
        hw = (manifest.get("environment") or {}).get("hardware") or {}
        gpus = hw.get("gpus") or []
        where = f"{len(gpus)} GPU{'s' if len(gpus) > 1 else ''} ({gpus[0]})" if gpus else ""
        if not where and hw.get("cpu_count"):
            where = f"{hw['cpu_count']} CPU cores"
        parts.append(f"{fmt_duration(time_s)} of training" + (f" on {where}" if where else ""))
    if isinstance(tokens, int):
        parts.append(f"{tokens:,} tokens")
    if isinstance(peak, int) and peak > 0:
        parts.append(f"peak memory {peak / 2**30:.2f} GiB")
    return ", ".join(parts)


def _result(m: dict[str, Any]) -> str:
    head = m.get("head")
    if isinstance(head, dict):  # method head: no checkpoints, one regularisation value chosen on validation
        chosen = ", ".join(f"{k}={v:g}" for k, v in (head.get("regularization") or {}).items())
        return (
            f"linear head ({head.get('estimator')}, {chosen}, chosen by {head.get('chosen_by')}) on the "
            "frozen base model"
        )
    return "PEFT adapter" if m.get("saves_adapter", True) else "full weights"


def _best(best: Any) -> str:
    if not isinstance(best, dict) or best.get("step") is None:
        return "the last step (no validation metric was tracked)"
    return f"step {best['step']}: {best.get('metric')} {num(best.get('value'))}"


def training_section(run: RunDir) -> list[Block]:
    from tuneforge.train.plot import draw_loss_curves, loss_series

    head = run.manifest.get("head")
    if isinstance(head, dict):  # method head: the regularisation values tried instead of a loss curve
        grid = head.get("grid") or []
        if not grid:
            return [("p", f"The head was fitted once ({head.get('chosen_by')}); no curve to show.")]
        names = [k for k in grid[0] if k != "value"]
        knob = next(iter(head.get("regularization") or {"value": 0}))
        rows = [[num(g["value"]), *[num(g.get(n)) for n in names]] for g in grid]
        return [
            ("p", f"Values of {knob} tried, each fitted on the training split and scored on validation:"),
            ("table", ([knob, *[f"validation {n}" for n in names]], rows)),
        ]
    train, val = loss_series(run.metrics())
    if not train:
        return [("p", "No training metrics were logged (metrics.jsonl is empty or missing).")]
    text = f"{len(train)} logged steps; train loss {num(train[0][1])} → {num(train[-1][1])}"
    if len(val) > 1:
        text += f"; validation loss {num(val[0][1])} → {num(val[-1][1])} over {len(val)} evaluations."
    elif val:
        text += f"; validation loss {num(val[0][1])} (evaluated once, at step {val[0][0]})."
    else:
        text += "; no validation loss was logged (train.eval_every is 0 or there is no validation split)."
    ylabel = LOSS_UNIT.get(str(run.manifest.get("task")), "loss")
    png = plot_png(lambda ax: draw_loss_curves(ax, train, val, ylabel))
    return [("p", text), ("img", ("training and validation loss against optimizer steps", png))]


def environment_section(run: RunDir) -> list[Block]:
    env = run.manifest.get("environment") or {}
    if not env:
        return [("p", "The run did not record its environment.")]
    return [("table", (None, [[k, _env_value(k, v)] for k, v in env.items()]))]


def _env_value(key: str, v: Any) -> str:
    if key == "hardware" and isinstance(v, dict):
        gpus = v.get("gpus") or []
        cpus = f"{v.get('cpu_count')} CPU cores ({v.get('cpu') or v.get('machine')})"
        return cpus + "; " + (", ".join(str(g) for g in gpus) if gpus else "no GPU")
    if key == "git":
        if not isinstance(v, dict) or not v.get("commit"):
            return "not recorded (the run was not started inside a git checkout)"
        return str(v["commit"]) + (" with uncommitted changes" if v.get("dirty") else "")
    if isinstance(v, dict):
        return ", ".join(f"{k}: {x}" for k, x in v.items())
    if isinstance(v, list):
        return ", ".join(str(x) for x in v)
    return num(v)
