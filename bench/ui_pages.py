"""`tuneforge ui` page times: the runs list of a 1,000-run workspace and a dataset page of 100k rows.

Baseline, measured in the same run: reading the same files the plain way (every run's manifest and eval JSON
with json.load; every row of the split with json.loads), which is what a page must beat to feel instant.
Prints seconds of each (first visit and second, cached visit) and the ratio against the baseline.

    python bench/ui_pages.py [--runs 1000] [--rows 100000]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def make_workspace(root: Path, runs: int, rows: int) -> None:
    evaluation = {
        "split": "test",
        "n": 500,
        "tuned": {"accuracy": 0.9, "macro_f1": 0.88, "per_class": {str(i): {"f1": 0.9} for i in range(20)}},
        "base": {"accuracy": 0.5},
        "ci": {"tuned": {"accuracy": {"value": 0.9, "lo": 0.87, "hi": 0.93}}},
        "paired": {"accuracy": {"diff": 0.4, "verdict": "tuned is better in accuracy"}},
    }
    for i in range(runs):
        run = root / "runs" / f"group-{i % 20}" / f"run-{i:04d}"
        (run / "eval").mkdir(parents=True)
        (run / "config.yaml").write_text("model: {name: x}\n")
        manifest = {
            "kind": "tuneforge.run",
            "status": "completed",
            "task": "classification",
            "method": "lora",
            "base_model": "bert",
            "train_time_s": float(i),
            "environment": {"pad": "x" * 2000},
        }
        (run / "manifest.json").write_text(json.dumps(manifest))
        (run / "metrics.jsonl").write_text(
            "".join(json.dumps({"step": s, "loss": 1.0, "time_s": s}) + "\n" for s in range(200))
        )
        (run / "eval" / "test.json").write_text(json.dumps(evaluation))
    ds = root / "data" / "big"
    ds.mkdir(parents=True)
    (ds / "manifest.json").write_text(
        json.dumps({"kind": "tuneforge.dataset", "format": "classification", "splits": {"train": rows}})
    )
    (ds / "train.jsonl").write_text(
        "".join(
            json.dumps({"text": f"row {i} " + "words " * 40, "label": str(i % 5)}) + "\n" for i in range(rows)
        )
    )


def timed(fn) -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args()
    from fastapi.testclient import TestClient

    from tuneforge.ui.app import create_app

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_workspace(root, args.runs, args.rows)
        client = TestClient(create_app(root))

        def plain_runs() -> None:
            for m in root.rglob("manifest.json"):
                json.loads(m.read_text())
                ev = m.parent / "eval" / "test.json"
                if ev.is_file():
                    json.loads(ev.read_text())

        def plain_rows() -> None:
            with open(root / "data" / "big" / "train.jsonl") as f:
                [json.loads(line) for line in f]

        base_runs, base_rows = timed(plain_runs), timed(plain_rows)
        first = timed(lambda: client.get("/?sort=metric&desc=1").raise_for_status())
        again = timed(lambda: client.get("/?sort=metric&desc=1").raise_for_status())
        page = lambda q="": client.get(  # noqa: E731
            "/dataset", params={"path": "data/big", "start": 50_000, "q": q}
        ).raise_for_status()
        rows_first, rows_again, search = timed(page), timed(page), timed(lambda: page("row 99"))
        print(
            f"runs list, {args.runs} runs: first {first:.3f} s, again {again:.3f} s; "
            f"baseline (json.load of every manifest + eval) {base_runs:.3f} s; ratio {again / base_runs:.2f}"
        )
        print(
            f"dataset page at row 50,000 of {args.rows:,}: first {rows_first:.3f} s, "
            f"again {rows_again:.3f} s, "
            f"search {search:.3f} s; baseline (json.loads of every row) {base_rows:.3f} s; "
            f"ratio {rows_again / base_rows:.3f}"
        )


if __name__ == "__main__":
    main()
