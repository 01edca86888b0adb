"""What preference tuning did to answers: a DPO run's reference vs the DPO model on a chat split, paired.

Held-out preference pairs only say whether the model ranks chosen above rejected; they cannot show a model
that learned the raters' length bias or fell into repeat loops. So `evaluate` on a DPO run also answers the
prompts of a chat/instruction split (the SFT parent run's split by default, named in the run's lineage, or
`eval.answers_from`) with both models, and reports the generation metrics, the answer length and a
repetition rate for each, with intervals and paired tests. The reference model is the one DPO measured
itself against: the parent SFT model, or the base for a run without a parent.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tuneforge.artifacts import DatasetDir, RunDir
from tuneforge.config import RunConfig
from tuneforge.evaluation.metric_table import metric_of
from tuneforge.evaluation.model_eval import ModelEval, evaluate_model, prompt_and_reference
from tuneforge.evaluation.stats import compare, verdict

#: An answer is in a repeat loop when one piece of it (at most UNIT characters, with a letter or digit in it)
#: comes LOOP times or more in a row, over at least SPAN characters: "I love it I love it I love it", and
#: also a loop inside a word ("otototototot"), which counting word n-grams would miss.
UNIT, LOOP, SPAN = 50, 3, 12
_LOOP = re.compile(rf"(.{{1,{UNIT}}}?)\1{{{LOOP - 1},}}", re.DOTALL)
SIDES = ("dpo", "reference")


def repeats(answer: str) -> bool:
    """Whether the answer falls into a repeat loop (see UNIT, LOOP, SPAN).

    A regular expression rather than a library's rep-n score: the question is whether an answer degenerated,
    not what share of its n-grams recur (a long, good answer repeats common n-grams too).
    """
    text = answer + " "  # the last copy of a word loop then ends in a space like the others
    return any(len(m.group(0)) >= SPAN and any(c.isalnum() for c in m.group(1)) for m in _LOOP.finditer(text))


def chat_split(run: RunDir, cfg: RunConfig, split: str) -> tuple[DatasetDir | None, str]:
    """The chat/instruction dataset whose `split` the answers come from, or None and why there is none."""
    source = cfg.eval.answers_from
    parent = run.manifest.get("parent") or {}
    if source is None:
        source = (parent.get("dataset") or {}).get("path")
        if not source:
            return None, (
                "no chat split: the run has no parent SFT run; set eval.answers_from to a prepared "
                "chat or instruction dataset"
            )
    dataset = DatasetDir.open(source)
    if dataset.format not in ("chat", "instruction"):
        return None, f"{dataset.path} holds {dataset.format} records, not chat or instruction ones"
    if cfg.eval.answers_from is None and parent.get("run") and RunDir.is_run(Path(parent["run"])):
        RunDir(Path(parent["run"])).check_split_files(dataset)  # the split the SFT run was tested on
    return dataset, ""


def with_answer_scores(m: ModelEval) -> ModelEval:
    """Add each answer's length in words and whether it repeats (per example), and their means."""
    answers = [str(a) for a in m.predictions]
    m.per_example["answer_words"] = [float(len(a.split())) for a in answers]
    m.per_example["repetition"] = [float(repeats(a)) for a in answers]
    n = max(len(answers), 1)
    m.metrics["answer_words"] = sum(m.per_example["answer_words"]) / n
    m.metrics["repetition_rate"] = sum(m.per_example["repetition"]) / n
    return m


def _verdict(metric: str, test: dict[str, Any]) -> str:
    names = ("dpo", "reference")
    differs = math.isfinite(test["diff"]) and test["p_value"] < 0.05 and not (test["lo"] <= 0 <= test["hi"])
    if not differs:
        return verdict(metric, test, names=names)
    if metric == "answer_words":  # neither longer nor shorter is better in itself
        longer = "longer" if test["diff"] > 0 else "shorter"
        return (
            f"dpo answers are {longer} by {abs(test['diff']):.3g} words "
            f"[{test['lo']:+.3g}, {test['hi']:+.3g}], p = {test['p_value']:.3g}"
        )
    return verdict(metric, test, names=names)


def compare_answers(cfg: RunConfig, dpo: ModelEval, reference: ModelEval) -> dict[str, Any]:
    """Both sides' intervals and the paired test (dpo - reference) of every per-example score."""
    n_boot, seed = cfg.eval.bootstrap, cfg.eval.seed
    ci: dict[str, dict[str, Any]] = {side: {} for side in SIDES}
    paired: dict[str, Any] = {}
    if n_boot <= 0:
        return {"ci": ci, "paired": paired}
    for name, values in dpo.per_example.items():
        metric = metric_of(name)
        keep = [
            i for i, (a, b) in enumerate(zip(values, reference.per_example[name], strict=True))
            if math.isfinite(a) and math.isfinite(b)
        ]  # fmt: skip
        t, b = [values[i] for i in keep], [reference.per_example[name][i] for i in keep]
        if not keep:
            continue
        c = compare(metric, t, b, n_boot=n_boot, seed=seed, names=SIDES)
        ci["dpo"][metric], ci["reference"][metric] = c["tuned"], c["base"]
        paired[metric] = {**c["paired"], "verdict": _verdict(metric, c["paired"])}
    return {"ci": ci, "paired": paired}


@contextlib.contextmanager
def _as_reference(model: Any) -> Iterator[None]:
    from tuneforge.models.lineage import reference_model

    with reference_model(model):
        yield


def evaluate_answers(
    run: RunDir,
    cfg: RunConfig,
    split: str,
    limit: int | None,
    model: Any,
    tok: Any,
    load_reference: Callable[[], tuple[Any, Any]],
    progress: Callable[[str], Any],
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The `answers` section of a DPO run's eval JSON, and its rows (prompt, reference answer, both answers).

    `model` is the DPO model; with an adapter its reference is the same model switched to the reference
    (models/lineage.py), so nothing else loads; a whole-model run loads `load_reference()` instead.
    """
    dataset, why = chat_split(run, cfg, split)
    if dataset is None:
        return {"skipped": why}, []
    if not cfg.eval.generate:
        return {"skipped": "eval.generate is off, so no answers were generated"}, []
    records = dataset.records(split)[:limit]
    if not records:
        return {"skipped": f"the {split} split of {dataset.path} is empty"}, []
    fmt, labels = dataset.format, dataset.labels
    dpo = with_answer_scores(evaluate_model(model, tok, records, cfg, fmt, labels, progress("dpo")))
    if hasattr(model, "disable_adapter"):
        with _as_reference(model):
            ref = evaluate_model(model, tok, records, cfg, fmt, labels, progress("reference"))
    else:
        ref_model, ref_tok = load_reference()
        ref = evaluate_model(ref_model, ref_tok, records, cfg, fmt, labels, progress("reference"))
        del ref_model
    ref = with_answer_scores(ref)
    parent = (run.manifest.get("parent") or {}).get("run")
    section: dict[str, Any] = {
        "dataset": str(dataset.path),
        "format": fmt,
        "split": split,
        "n": len(records),
        "reference_model": f"the SFT run {parent}" if parent else "the base model",
        "repetition": {"unit_max_chars": UNIT, "times": LOOP, "min_chars": SPAN},
        "dpo": dpo.metrics,
        "reference": ref.metrics,
        **compare_answers(cfg, dpo, ref),
    }
    rows = []
    for i, r in enumerate(records):
        prompt, answer = prompt_and_reference(r, labels, cfg.data.prompt_template)
        rows.append(
            {
                "id": i,
                "input": prompt[-1]["content"] if prompt else "",
                "reference_answer": answer,
                "dpo": dpo.predictions[i],
                "reference": ref.predictions[i],
                "scores": {
                    side: {k: v[i] for k, v in m.per_example.items()}
                    for side, m in zip(SIDES, (dpo, ref), strict=True)
                },
            }
        )
    return section, rows
