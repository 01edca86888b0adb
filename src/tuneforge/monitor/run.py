"""`tuneforge monitor`: one window of live traffic against the run's training data → report and alerts."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tuneforge.artifacts import RunDir
from tuneforge.config import MonitorConfig
from tuneforge.errors import TuneforgeError
from tuneforge.monitor.drift import (
    TestResult,
    categorical_drift,
    domain_classifier,
    farthest_inputs,
    mmd_test,
    numeric_drift,
    unseen_rate,
)
from tuneforge.monitor.log import Traffic, is_error, log_label, read_traffic
from tuneforge.monitor.reference import Reference, load_reference
from tuneforge.monitor.text import answered_labels, is_refusal, language_mix, script_mix
from tuneforge.monitor.window import Window

DRIFT_ALERTS = (
    "embedding_drift",
    "prompt_length_drift",
    "script_mix_drift",
    "language_mix_drift",
    "label_drift",
    "answer_length_drift",
)
ABOVE = ("unseen_token_rate", "error_rate", "p95_latency_ms")
NAMES = {
    "prompt_length_drift": "prompt length (tokens)",
    "script_mix_drift": "prompt script mix",
    "language_mix_drift": "prompt language mix",
    "embedding_drift": "prompt embeddings",
    "embedding_mmd": "prompt embeddings (second opinion)",
    "label_drift": "predicted label mix",
    "answer_length_drift": "answer length (tokens)",
    "unseen_token_rate": "unseen token rate",
    "error_rate": "error rate (5xx and 429)",
    "p95_latency_ms": "p95 latency (ms)",
    "mean_rating": "mean rating",
}
"""What each key of report.json's tests, monitor.alerts and `--check` judges, in the words the report's tables
and the alert lines use (drift.py names the two embedding tests the same)."""
PREDICTED_VALUE = "predicted value"
"""A regression run's label_drift test: the values it predicts, not a label mix."""
TEST_KEYS = {name: key for key, name in NAMES.items()} | {PREDICTED_VALUE: "label_drift"}


def default_alerts(cfg: MonitorConfig) -> dict[str, float]:
    return {
        "embedding_drift": cfg.alpha,
        "label_drift": cfg.alpha,
        "answer_length_drift": cfg.alpha,
        "error_rate": 0.05,
    }


@dataclass
class Alert:
    metric: str
    threshold: float
    value: float
    message: str
    title: str
    """What fired, in words ("predicted label mix drifted"); the metric is its key."""


def alert_heading(alert: dict[str, Any]) -> str:
    """An alert's words first, its key in brackets for whoever greps for it or sets it in monitor.alerts.

    An alert of a report written before alerts had a title keeps its old heading (its message names the test).
    """
    if not alert.get("title"):
        return f"ALERT {alert['metric']}"
    return f"ALERT {alert['title']} [{alert['metric']}]"


def alert_line(alert: dict[str, Any]) -> str:
    """One alert as `--check` prints it and the report lists it."""
    return f"{alert_heading(alert)}: {alert['message']}"


def _tokenizer(run: RunDir) -> Any:
    from tuneforge.config import load_config
    from tuneforge.models.loading import load_tokenizer, run_base_path

    cfg, _ = load_config(run.config_path)  # not train.reload_config: importing train costs seconds
    has_own = (run.final / "tokenizer_config.json").is_file()
    return load_tokenizer(cfg.model, str(run.final) if has_own else run_base_path(run.manifest))


def _token_ids(tok: Any, texts: list[str]) -> list[list[int]]:
    if not texts:
        return []
    return [list(ids) for ids in tok(texts, add_special_tokens=False)["input_ids"]]


def summary(values: list[float]) -> dict[str, float | int | None]:
    if not values:
        return {"n": 0, "mean": None, "p50": None, "p95": None}
    a = np.asarray(values, dtype=float)
    return {
        "n": len(a),
        "mean": float(a.mean()),
        "p50": float(np.percentile(a, 50)),
        "p95": float(np.percentile(a, 95)),
    }


def input_section(
    ref: Reference, traffic: Traffic, tok: Any, cfg: MonitorConfig, alpha: dict[str, float], embedder: Any
) -> tuple[dict[str, Any], list[TestResult]]:
    live = list(traffic.inputs.items)
    ref_ids, live_ids = _token_ids(tok, ref.inputs), _token_ids(tok, live)
    held_ids = _token_ids(tok, ref.held_out)
    ref_len, live_len = [float(len(i)) for i in ref_ids], [float(len(i)) for i in live_ids]
    need = cfg.min_samples
    tests = [
        numeric_drift(
            NAMES["prompt_length_drift"], ref_len, live_len, need=need, alpha=alpha["prompt_length_drift"]
        )
    ]
    ref_scripts, live_scripts = script_mix(ref.inputs), script_mix(live)
    tests.append(
        categorical_drift(
            NAMES["script_mix_drift"], ref_scripts, live_scripts, need=need, alpha=alpha["script_mix_drift"]
        )
    )
    # Detected only in a window big enough to judge: loading the detector's model costs ~0.75 s of CPU, and a
    # "not enough data" window needs no mix (the test says why without it).
    judged = min(len(ref.inputs), len(live)) >= need
    ref_langs = language_mix(ref.inputs) if judged else Counter({"not detected": len(ref.inputs)})
    live_langs = language_mix(live) if judged else Counter({"not detected": len(live)})
    tests.append(
        categorical_drift(
            NAMES["language_mix_drift"], ref_langs, live_langs, need=need, alpha=alpha["language_mix_drift"]
        )
    )
    chars = set("".join(ref.inputs))
    tokens = {t for ids in ref_ids for t in ids}
    out: dict[str, Any] = {
        "prompt_tokens": {"reference": summary(ref_len), "live": summary(live_len)},
        "scripts": {"reference": dict(ref_scripts), "live": dict(live_scripts)},
        "unseen_characters": {
            "live": unseen_rate(chars, [list(t) for t in live]),
            "held_out": unseen_rate(chars, [list(t) for t in ref.held_out]),
        },
        "unseen_tokens": {"live": unseen_rate(tokens, live_ids), "held_out": unseen_rate(tokens, held_ids)},
        "farthest": [],
    }
    if judged:
        out["languages"] = {"reference": dict(ref_langs), "live": dict(live_langs)}
    emb_test = TestResult(
        NAMES["embedding_drift"],
        "domain classifier, 5-fold ROC AUC vs permutation null",
        len(ref.inputs),
        len(live),
        need=need,
    )
    mmd = TestResult(
        NAMES["embedding_mmd"],
        "MMD, Gaussian kernel, permutation test",
        len(ref.inputs),
        len(live),
        need=need,
    )
    if min(len(ref.inputs), len(live)) >= need:
        ref_v, live_v = embedder.embed(ref.inputs), embedder.embed(live)
        a = alpha["embedding_drift"]
        emb_test = domain_classifier(
            ref_v, live_v, need=need, alpha=a, permutations=cfg.permutations, min_auc=cfg.min_auc
        )
        mmd = mmd_test(ref_v, live_v, need=need, alpha=a, permutations=cfg.permutations)
        out["farthest"] = farthest_inputs(ref_v, live_v, ref.inputs, live)
    return out, [*tests, emb_test, mmd]


def output_section(
    ref: Reference, traffic: Traffic, tok: Any, cfg: MonitorConfig, alpha: dict[str, float]
) -> tuple[dict[str, Any], list[TestResult]]:
    need = cfg.min_samples
    out: dict[str, Any] = {}
    tests: list[TestResult] = []
    if ref.format == "classification":
        live_labels = traffic.labels
        if ref.task == "causal-lm":  # a language model taught classification answers (chat) with a label
            live_labels = answered_labels(traffic.answers.items, ref.labels)
        tests.append(
            categorical_drift(
                NAMES["label_drift"], ref.label_counts, live_labels, need=need, alpha=alpha["label_drift"]
            )
        )
        out["labels"] = {"reference": dict(ref.label_counts), "live": dict(live_labels)}
        if ref.task == "causal-lm":
            out["labels"]["read_from_answers"] = len(traffic.answers.items)
        out["mean_confidence"] = float(np.mean(traffic.confidences)) if traffic.confidences else None
    elif ref.format == "regression":
        tests.append(
            numeric_drift(PREDICTED_VALUE, ref.values, traffic.values, need=need, alpha=alpha["label_drift"])
        )
    if ref.answers or traffic.answer_count:
        ref_len = [float(len(i)) for i in _token_ids(tok, ref.answers)]
        live_len = [float(len(i)) for i in _token_ids(tok, list(traffic.answers.items))]
        tests.append(
            numeric_drift(
                NAMES["answer_length_drift"],
                ref_len,
                live_len,
                need=need,
                alpha=alpha["answer_length_drift"],
            )
        )
        out["answer_tokens"] = {"reference": summary(ref_len), "live": summary(live_len)}
        n = traffic.answer_count
        out["empty_rate"] = traffic.empty_answers / n if n else None
        out["refusal_rate"] = {
            "live": traffic.refusals / n if n else None,
            "reference": sum(map(is_refusal, ref.answers)) / len(ref.answers) if ref.answers else None,
        }
        out["finish_reasons"] = dict(traffic.finish_reasons)
    return out, tests


def service_section(traffic: Traffic) -> dict[str, Any]:
    errors = sum(n for s, n in traffic.statuses.items() if is_error(s))
    days = []
    for day in sorted(traffic.per_day):
        c = traffic.per_day[day]
        ratings = traffic.ratings.get(day, [])
        days.append(
            {
                "day": day,
                "requests": c["requests"],
                "answered": c["answered"],
                "errors": c["errors"],
                "feedback": c["feedback"],
                "feedback_rate": c["feedback"] / c["answered"] if c["answered"] else None,
                "mean_rating": float(np.mean(ratings)) if ratings else None,
            }
        )
    all_ratings = [r for rs in traffic.ratings.values() for r in rs]
    return {
        "requests": traffic.requests,
        "error_rate": errors / traffic.requests if traffic.requests else None,
        "statuses": {str(k): v for k, v in sorted(traffic.statuses.items())},
        "latency_ms": {e: summary(v) for e, v in sorted(traffic.latency_ms.items())},
        "ttft_ms": summary(traffic.ttft_ms),
        "p95_latency_ms": summary([x for v in traffic.latency_ms.values() for x in v])["p95"],
        "feedback": traffic.feedback,
        "mean_rating": float(np.mean(all_ratings)) if all_ratings else None,
        "rated_labels": traffic.rated_labels,
        "corrected_labels": traffic.corrected_labels,
        # Rated classify answers that needed no correction: the live accuracy the raters saw.
        "accuracy_on_corrected_labels": 1 - traffic.corrected_labels / traffic.rated_labels
        if traffic.rated_labels
        else None,
        "per_day": days,
    }


def shadow_section(traffic: Traffic) -> list[dict[str, Any]]:
    """serve.shadow: how often the shadow model answered as the champion did, on the same requests."""
    out = []
    for name, p in sorted(traffic.shadow.items()):
        out.append(
            {
                "shadow": name,
                "n": p.rows,
                "failed": p.failed,
                "labels": p.labels,
                "label_agreement": p.agreed / p.labels if p.labels else None,
                "answers": p.answers,
                "exact_match": p.exact / p.answers if p.answers else None,
                "champion_mean_chars": float(np.mean(p.champion_chars)) if p.answers else None,
                "shadow_mean_chars": float(np.mean(p.shadow_chars)) if p.answers else None,
            }
        )
    return out


def check_alerts(result: dict[str, Any], alerts: dict[str, float]) -> list[Alert]:
    """The alerts that fire: a judged drift test at the alert's level, or a rate past its threshold."""
    fired = []
    tests = result["tests"]
    for metric, threshold in alerts.items():
        if metric in DRIFT_ALERTS:
            t = tests.get(metric)
            if t and t["drift"]:
                shown = f"p = {t['p_value']:.4g}, " if t["p_value"] is not None else ""
                msg = (
                    f"{t['test']}: {t['statistic_name']} {t['statistic']:.4g}, {shown}"
                    f"{t['threshold']} (n = {t['n_reference']} reference, {t['n_live']} live)"
                )
                fired.append(Alert(metric, threshold, float(t["statistic"]), msg, f"{t['name']} drifted"))
            continue
        value = _value(result, metric)
        if value is None or not result["enough_data"]:
            continue
        above = metric in ABOVE
        if (value > threshold) if above else (value < threshold):
            sign, too = (">", "high") if above else ("<", "low")
            msg = f"{value:.4g} {sign} {threshold:g}"
            fired.append(Alert(metric, threshold, value, msg, f"{NAMES[metric]} too {too}"))
    return fired


def _value(result: dict[str, Any], metric: str) -> float | None:
    if metric == "unseen_token_rate":
        v = result["input"]["unseen_tokens"]["live"]
    else:
        v = result["service"].get(metric)
    return None if v is None else float(v)


def monitor(
    run_dir: Path,
    log: str,
    window: Window,
    cfg: MonitorConfig,
    *,
    model: str | None = None,
    embedder: Any = None,
    data_path: str | None = None,
) -> tuple[dict[str, Any], list[Alert], Path]:
    """Judge one window of the log; write RUN/monitor/<window>/report.{html,md,json}.

    `data_path` points at the run's prepared dataset where it is now (`--set data.path=DIR`)."""
    from tuneforge.monitor.embed import Embedder
    from tuneforge.monitor.report import write_report

    run = RunDir.open(run_dir)
    if not RunDir.is_run(run.path):
        raise TuneforgeError(
            f"{run.path} has no run manifest.json", fix="monitor a run made by `tuneforge train`"
        )
    alerts = {str(k): v for k, v in cfg.alerts.items()} if cfg.alerts is not None else default_alerts(cfg)
    alpha = {m: alerts.get(m, cfg.alpha) for m in DRIFT_ALERTS}
    ref = load_reference(run, cfg.max_reference, data_path)
    traffic = read_traffic(log, window.since, window.until, model=model, max_live=cfg.max_live)
    tok = _tokenizer(run)
    embedder = embedder or Embedder(cfg.embedding_model, run.path / "monitor" / "embeddings.sqlite")
    inputs, in_tests = input_section(ref, traffic, tok, cfg, alpha, embedder)
    outputs, out_tests = output_section(ref, traffic, tok, cfg, alpha)
    # Judged on the inputs when the log keeps texts; on the requests when serve.log_text is off.
    n = traffic.input_count or traffic.requests
    result: dict[str, Any] = {
        "kind": "tuneforge.monitor",
        "run": str(run.path.resolve()),
        "log": log_label(log),
        "model": model,
        "window": {"since": window.since.isoformat(), "until": window.until.isoformat(), "name": window.name},
        "need": cfg.min_samples,
        "n": n,
        "enough_data": n >= cfg.min_samples,
        "traffic": {
            "requests": traffic.requests,
            "inputs": traffic.input_count,
            "inputs_sampled": len(traffic.inputs.items),
            "models": dict(traffic.models),
            "endpoints": dict(traffic.endpoints),
        },
        "reference": {
            "dataset": str(ref.dataset),
            "format": ref.format,
            "task": ref.task,
            "train_size": ref.train_size,
            "inputs_sampled": len(ref.inputs),
            "labels": dict(ref.label_counts),
        },
        "tests": {TEST_KEYS[t.name]: t.to_dict() for t in [*in_tests, *out_tests]},
        "input": inputs,
        "output": outputs,
        "service": service_section(traffic),
        "shadow": shadow_section(traffic),
        "alert_thresholds": alerts,
    }
    fired = check_alerts(result, alerts)
    result["alerts"] = [a.__dict__ for a in fired]
    out = write_report(run, result)
    return result, fired, out
