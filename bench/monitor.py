"""`tuneforge monitor` over a 100,000-request log vs Evidently computing the same drift tests on the same
data.

One run, three child processes (each one's time and peak RSS measured on its own):

1. tuneforge, end to end: `monitor()` on a SQLite log of N classify requests written by a bulk insert into
   serve/store.py's own tables (20% of the traffic is another topic, the label mix shifted), against a run
   trained on 1,000 support messages, with the built-in MiniLM; once with an empty embeddings cache (cold)
   and once again (warm: what a daily run pays for traffic already embedded). It then writes the frame the
   drift tests saw: per-request prompt lengths and scripts (the reservoir sample of `monitor.max_live`), the
   predicted labels of all N requests, and the embeddings of the sampled inputs.
2. tuneforge, tests only: the same five tests (`monitor/drift.py`) on that frame.
3. Evidently (its legacy Report API, in a separate venv: it pins its own pandas/numpy) on that frame:
   ColumnDriftMetric with Wasserstein (numbers) and Jensen-Shannon (categories) at 0.1 — the tests tuneforge
   picks above 1,000 live values — and EmbeddingsDriftMetric with its domain-classifier and MMD methods.

    python -m venv /tmp/ev && /tmp/ev/bin/pip install evidently "pandas<3"  # not the project venv
    OMP_NUM_THREADS=2 nice python bench/monitor.py [--n 100000] [--evidently-python /tmp/ev/bin/python]

(Evidently 0.7.23 does not import with pandas 3.) Prints a table and writes bench/monitor.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SEED = 0


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_log(path: Path, n: int) -> None:
    """N classify requests over one day through serve.store's tables (a bulk insert: the writer's queue is
    sized for live traffic, not for 100,000 rows at once)."""
    import random
    from datetime import timedelta

    import sqlalchemy as sa
    from tests.unit.monitor.deployment import START, sports_text, support_text

    from tuneforge.serve.store import create_tables, requests_table

    rng = random.Random(SEED)
    engine = sa.create_engine(f"sqlite:///{path}")
    create_tables(engine)
    rows = []
    for i in range(n):
        other = rng.random() < 0.2
        text = sports_text(rng) if other else support_text(rng)
        label = rng.choice("aab" if other else "abc")
        probs = {c: (0.8 if c == label else 0.1) for c in "abc"}
        rows.append(
            {
                "id": f"r{i}",
                "time": START + timedelta(seconds=i * 86_000 / n),
                "key_name": "bench",
                "model": "run",
                "endpoint": "classify",
                "status": 200,
                "latency_ms": 5.0 + i % 11,
                "prompt": json.dumps([text]),
                "response": json.dumps([{"index": 0, "label": label, "probabilities": probs}]),
            }
        )
    with engine.begin() as conn:
        for start in range(0, n, 10_000):
            conn.execute(requests_table.insert(), rows[start : start + 10_000])
    engine.dispose()


def phase_tuneforge(work: Path, n: int) -> dict[str, object]:
    """End to end, cold then warm embeddings cache; then save the frame the tests saw."""
    import numpy as np
    from tests.unit.monitor.deployment import make_run

    from tuneforge.config import load_config
    from tuneforge.monitor import monitor, resolve_window
    from tuneforge.monitor.embed import Embedder
    from tuneforge.monitor.log import read_traffic
    from tuneforge.monitor.reference import load_reference
    from tuneforge.monitor.run import _token_ids, _tokenizer
    from tuneforge.monitor.text import script_of

    t0 = time.perf_counter()
    run = make_run(work, Path("unused"), n_train=1000, monitor={"embedding_model": "builtin:minilm-l6"})
    write_log(work / "log.sqlite", n)
    log_s = time.perf_counter() - t0
    cfg = load_config(run / "config.yaml")[0].monitor
    day = resolve_window("2026-12-01", None, "1d")
    times = []
    for _ in ("cold", "warm"):
        t0 = time.perf_counter()
        result, alerts, _ = monitor(run, str(work / "log.sqlite"), day, cfg)
        times.append(time.perf_counter() - t0)
    peak = peak_mb()
    # The frame: the same samples the monitor drew (fixed seeds), the vectors from its warm cache.
    from tuneforge.artifacts import RunDir

    rd = RunDir.open(run)
    ref = load_reference(rd, cfg.max_reference)
    traffic = read_traffic(str(work / "log.sqlite"), day.since, day.until, max_live=cfg.max_live)
    tok = _tokenizer(rd)
    live = list(traffic.inputs.items)
    emb = Embedder(cfg.embedding_model, run / "monitor" / "embeddings.sqlite")
    np.savez(
        work / "frame.npz",
        ref_len=[len(i) for i in _token_ids(tok, ref.inputs)],
        live_len=[len(i) for i in _token_ids(tok, live)],
        ref_script=[script_of(t) for t in ref.inputs],
        live_script=[script_of(t) for t in live],
        ref_label=[c for c, k in sorted(ref.label_counts.items()) for _ in range(k)],
        live_label=[c for c, k in sorted(traffic.labels.items()) for _ in range(k)],
        ref_emb=emb.embed(ref.inputs),
        live_emb=emb.embed(live),
    )
    verdicts = {k: (t["statistic"], t["drift"]) for k, t in result["tests"].items()}
    return {
        "write_log_s": log_s,
        "cold_s": times[0],
        "warm_s": times[1],
        "peak_mb": peak,
        "alerts": [a.metric for a in alerts],
        "tests": verdicts,
        "n_live_sampled": len(live),
        "n_reference": len(ref.inputs),
    }


def phase_tests(work: Path) -> dict[str, object]:
    """tuneforge's five tests on the frame (what Evidently is compared with)."""
    from collections import Counter

    import numpy as np

    from tuneforge.monitor.drift import categorical_drift, domain_classifier, mmd_test, numeric_drift

    f = np.load(work / "frame.npz")
    t0 = time.perf_counter()
    kw = {"need": 100, "alpha": 0.05}
    out = {
        "prompt_length": numeric_drift("len", list(f["ref_len"]), list(f["live_len"]), **kw),
        "script_mix": categorical_drift(
            "script", Counter(f["ref_script"].tolist()), Counter(f["live_script"].tolist()), **kw
        ),
        "label_mix": categorical_drift(
            "label", Counter(f["ref_label"].tolist()), Counter(f["live_label"].tolist()), **kw
        ),
        "embedding_classifier": domain_classifier(
            f["ref_emb"], f["live_emb"], permutations=99, min_auc=0.55, **kw
        ),
        "embedding_mmd": mmd_test(f["ref_emb"], f["live_emb"], permutations=99, **kw),
    }
    seconds = time.perf_counter() - t0
    return {
        "seconds": seconds,
        "peak_mb": peak_mb(),
        "tests": {k: (t.statistic, t.drift) for k, t in out.items()},
    }


def phase_evidently(work: Path) -> dict[str, object]:
    """The same tests with Evidently (run by the Evidently venv's python: imports nothing of tuneforge)."""
    import evidently
    import numpy as np
    import pandas as pd
    from evidently.legacy.metrics import ColumnDriftMetric, EmbeddingsDriftMetric
    from evidently.legacy.metrics.data_drift.embedding_drift_methods import mmd, model
    from evidently.legacy.pipeline.column_mapping import ColumnMapping
    from evidently.legacy.report import Report

    f = np.load(work / "frame.npz")
    t0 = time.perf_counter()
    results: dict[str, object] = {}

    def run(ref: pd.DataFrame, cur: pd.DataFrame, metrics: list, mapping: ColumnMapping, names: list) -> None:
        report = Report(metrics=metrics)
        report.run(reference_data=ref, current_data=cur, column_mapping=mapping)
        for name, m in zip(names, report.as_dict()["metrics"], strict=True):
            r = m["result"]
            results[name] = (r["drift_score"], r["drift_detected"])

    text_ref = pd.DataFrame({"prompt_tokens": f["ref_len"], "script": f["ref_script"]})
    text_cur = pd.DataFrame({"prompt_tokens": f["live_len"], "script": f["live_script"]})
    mapping = ColumnMapping(numerical_features=["prompt_tokens"], categorical_features=["script"])
    run(
        text_ref,
        text_cur,
        [
            ColumnDriftMetric("prompt_tokens", stattest="wasserstein", stattest_threshold=0.1),
            ColumnDriftMetric("script", stattest="jensenshannon", stattest_threshold=0.1),
        ],
        mapping,
        ["prompt_length", "script_mix"],
    )
    run(
        pd.DataFrame({"label": f["ref_label"]}),
        pd.DataFrame({"label": f["live_label"]}),
        [ColumnDriftMetric("label", stattest="jensenshannon", stattest_threshold=0.1)],
        ColumnMapping(categorical_features=["label"]),
        ["label_mix"],
    )
    cols = [f"e{i}" for i in range(f["ref_emb"].shape[1])]
    emb_ref, emb_cur = pd.DataFrame(f["ref_emb"], columns=cols), pd.DataFrame(f["live_emb"], columns=cols)
    emb_map = ColumnMapping(embeddings={"prompt": cols})
    run(
        emb_ref,
        emb_cur,
        [
            EmbeddingsDriftMetric("prompt", drift_method=model(threshold=0.55)),
            EmbeddingsDriftMetric("prompt", drift_method=mmd()),
        ],
        emb_map,
        ["embedding_classifier", "embedding_mmd"],
    )
    return {
        "seconds": time.perf_counter() - t0,
        "peak_mb": peak_mb(),
        "tests": results,
        "version": evidently.__version__,
    }


def child(python: str, phase: str, work: Path, n: int) -> dict[str, object]:
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}:{ROOT}"}
    cmd = [python, str(Path(__file__).resolve()), "--phase", phase, "--work", str(work), "--n", str(n)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"{phase} failed:\n{done.stderr[-3000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--evidently-python", default="/tmp/ev/bin/python")
    ap.add_argument("--out", default=str(ROOT / "bench" / "monitor.json"))
    ap.add_argument("--phase", choices=["tuneforge", "tests", "evidently"])
    ap.add_argument("--work")
    ap.add_argument("--keep-frame", help="keep the frame the tests saw (an .npz path)")
    args = ap.parse_args()
    if args.phase:
        work = Path(args.work)
        run = {"tuneforge": lambda: phase_tuneforge(work, args.n), "tests": lambda: phase_tests(work)}
        run["evidently"] = lambda: phase_evidently(work)
        print(json.dumps(run[args.phase](), default=str))
        return
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        full = child(sys.executable, "tuneforge", work, args.n)
        tests = child(sys.executable, "tests", work, args.n)
        ev = child(args.evidently_python, "evidently", work, args.n)
        if args.keep_frame:
            (work / "frame.npz").replace(args.keep_frame)
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "n_requests": args.n,
        "tuneforge_end_to_end": full,
        "tuneforge_tests": tests,
        "evidently": ev,
    }
    Path(args.out).write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"{args.n} logged requests, {result['machine']}, {result['date']}")
    print(f"{'':44} {'seconds':>8} {'peak MB':>8}")
    print(f"{'tuneforge monitor, end to end, cold cache':44} {full['cold_s']:8.1f} {full['peak_mb']:8.0f}")
    print(f"{'tuneforge monitor, end to end, warm cache':44} {full['warm_s']:8.1f} {'':>8}")
    print(f"{'tuneforge, the five tests on the frame':44} {tests['seconds']:8.2f} {tests['peak_mb']:8.0f}")
    name = f"Evidently {ev['version']}, same tests, same frame"
    print(f"{name:44} {ev['seconds']:8.2f} {ev['peak_mb']:8.0f}")
    print(f"{'test':22} {'tuneforge (statistic, drift)':32} Evidently (score, drift)")
    for k, (s, d) in tests["tests"].items():
        es, ed = ev["tests"][k]
        print(f"{k:22} {s:10.4g} {d!s:21} {es:10.4g} {ed}")


if __name__ == "__main__":
    main()
