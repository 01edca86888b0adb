"""Where each evaluation of a run lives: a name per split and sample; a short one never replaces a full one.

`tuneforge evaluate` on the whole split writes eval/<split>.json (and .predictions.jsonl); one limited to the
first N examples (eval.max_examples) writes eval/<split>-first<N>.json beside it. The report, the model card
and `human-eval` read an evaluation by that name and say which one they read.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from tuneforge.artifacts import RunDir, read_json

#: Files under eval/ that are not evaluations of a split.
NOT_EVALUATIONS = frozenset({"human"})


def evaluation_name(split: str, limit: int | None, available: int) -> str:
    """`test` for the whole split, `test-first12` for its first 12 examples."""
    if limit is None or limit >= available:
        return split
    return f"{split}-first{limit}"


def evaluation_path(run: RunDir, name: str) -> Path:
    return run.eval_dir / f"{name}.json"


def predictions_path(run: RunDir, name: str) -> Path:
    return run.eval_dir / f"{name}.predictions.jsonl"


def evaluations(run: RunDir) -> dict[str, dict[str, Any]]:
    """Every evaluation of a run by name, whole splits first (test before test-first12)."""
    if not run.eval_dir.is_dir():
        return {}
    found = []
    for p in sorted(run.eval_dir.glob("*.json")):
        if p.stem in NOT_EVALUATIONS:
            continue
        data = read_json(p)
        if isinstance(data, dict) and "tuned" in data and "split" in data:
            data.setdefault("evaluation", p.stem)
            found.append(data)
    found.sort(key=lambda r: (r["evaluation"] != r["split"], str(r["split"]), str(r["evaluation"])))
    return {str(r["evaluation"]): r for r in found}


def describe(r: dict[str, Any]) -> str:
    """One phrase naming an evaluation and what it covers: 'eval/test.json (all 74 examples of test)'."""
    name, split, n = r.get("evaluation", r["split"]), r["split"], r["n"]
    what = f"all {n} examples of {split}" if name == split else f"the first {n} examples of {split}"
    return f"eval/{name}.json ({what})"


def resolve(run: RunDir, name: str) -> str:
    """The evaluation a command reads when asked for `name`: that one if it exists, else, for a split
    evaluated only in part, its largest partial evaluation (test-first50 before test-first12)."""
    if predictions_path(run, name).is_file() or not run.eval_dir.is_dir():
        return name
    partial = [
        r
        for r in evaluations(run).values()
        if r["split"] == name and predictions_path(run, r["evaluation"]).is_file()
    ]
    if not partial:
        return name
    return str(max(partial, key=lambda r: (r["n"], r["evaluation"]))["evaluation"])


def clean(obj: Any) -> Any:
    """NaN/inf → None, numpy scalars → Python: the eval JSON stays strict JSON."""
    if isinstance(obj, dict):
        return {k: clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [clean(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
