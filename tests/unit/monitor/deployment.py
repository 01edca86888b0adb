"""A small deployment for monitor tests: a prepared dataset, a run that trained on it, and a request log
written by serve/store.py's own writer (no model is trained or served: the monitor only reads files)."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import yaml

from tests.tiny import TOKENIZER
from tuneforge.artifacts import sha256_file, write_jsonl
from tuneforge.serve.store import RequestLog, database_url

START = datetime(2026, 12, 1, tzinfo=UTC)
SUPPORT = ["order", "refund", "ticket", "phone", "broken", "late", "cold", "happy", "quick", "great"]
SPORTS = ["goal", "match", "striker", "league", "keeper", "penalty", "season", "coach", "stadium", "derby"]


def support_text(rng: random.Random) -> str:
    """A customer-support message: what the run was trained on."""
    return "my " + " ".join(rng.choices(SUPPORT, k=rng.randint(3, 8))) + " please"


def sports_text(rng: random.Random) -> str:
    """Another topic: football talk."""
    return "the " + " ".join(rng.choices(SPORTS, k=rng.randint(3, 8))) + " tonight"


def make_run(
    root: Path, encoder: Path, *, n_train: int = 300, seed: int = 0, monitor: dict | None = None
) -> Path:
    """A classification dataset of support messages (labels a/b/c, equally mixed) and a run trained on it."""
    rng = random.Random(seed)
    data = root / "dataset"
    data.mkdir(parents=True)
    splits = {
        "train": [{"text": support_text(rng), "label": "abc"[i % 3]} for i in range(n_train)],
        "validation": [{"text": support_text(rng), "label": "abc"[i % 3]} for i in range(60)],
    }
    for name, rows in splits.items():
        write_jsonl(data / f"{name}.jsonl", rows)
    files = {f"{s}.jsonl": sha256_file(data / f"{s}.jsonl") for s in splits}
    manifest = {
        "kind": "tuneforge.dataset",
        "format": "classification",
        "labels": ["a", "b", "c"],
        "files": files,
    }
    (data / "manifest.json").write_text(json.dumps(manifest))
    run = root / "run"
    run.mkdir()
    cfg = {
        "data": {"path": str(data)},
        "model": {"name": str(TOKENIZER), "task": "classification"},
        "monitor": {"embedding_model": str(encoder), "permutations": 49, **(monitor or {})},
    }
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    run_manifest = {
        "kind": "tuneforge.run",
        "status": "completed",
        "task": "classification",
        "labels": ["a", "b", "c"],
        "base_model": str(TOKENIZER),
        "base_model_path": str(TOKENIZER),
        "dataset": {"path": str(data), "format": "classification", "files": files},
    }
    (run / "manifest.json").write_text(json.dumps(run_manifest))
    return run


def write_log(
    path: Path,
    texts: list[str],
    labels: list[str],
    *,
    status: int = 200,
    start: datetime = START,
    prefix: str = "cls",
    feedback: int = 0,
) -> str:
    """Log one classify request per text (a minute apart) through the server's own writer; returns the URL."""
    url = database_url(str(path))
    log = RequestLog(url)
    for i, (text, label) in enumerate(zip(texts, labels, strict=True)):
        probs = {c: (0.8 if c == label else 0.1) for c in "abc"}
        log.log_request(
            id=f"{prefix}-{i}",
            time=start + timedelta(minutes=i),
            key_name="alice",
            model="run",
            endpoint="classify",
            status=status,
            latency_ms=10.0 + i % 7,
            prompt=json.dumps([text]),
            response=json.dumps([{"index": 0, "label": label, "probabilities": probs}])
            if status == 200
            else None,
            error=None if status == 200 else "engine failed",
        )
    for i in range(feedback):
        log.log_feedback(
            request_id=f"{prefix}-{i}", key_name="alice", rating=1 + i % 5, time=start + timedelta(minutes=i)
        )
    log.close()
    return url
