"""Feedback with corrections, from the `openai` client to a served process, then export and prepare."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.conftest import run_cli
from tests.integration.test_serve import RUN_CONFIG, SERVE_CONFIG, Server
from tests.tiny import LABELS, sentiment_rows, write_csv
from tuneforge.artifacts import DatasetDir
from tuneforge.serve.store import read_table

PREPARE = """\
data:
  path: {path}
  format: {fmt}
  output_dir: {out}
  min_examples: 1
  dedup: none
  split_column: {split_column}
  clean:
    redact_pii: [email]
model:
  name: {model}
  task: {task}
  max_length: 128
"""


def _runs(root: Path, tiny_llama: Path) -> dict[str, Path]:
    """A classification head on the tiny Llama (3 steps); the Llama itself is served as is for chat."""
    from tuneforge.config import load_config
    from tuneforge.data import prepare_dataset
    from tuneforge.train import train

    write_csv(root / "data.csv", sentiment_rows(60))
    runs = {}
    for name, task, lr, seed in [("sentiment", "classification", 0.01, 3)]:
        path = root / f"{name}.yaml"
        text = RUN_CONFIG.format(
            root=root, model=tiny_llama, task=task, name=name, lr=lr, seed=seed, dtype="auto"
        )
        path.write_text(text.replace(f"{root}/ds", f"{root}/ds-{name}"))
        cfg, source = load_config(path)
        prepare_dataset(cfg.data, model=cfg.model)
        runs[name] = train(cfg, source).path
    return runs


def _client(server: Server, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0, timeout=60)


def _feedback(client: openai.OpenAI, **body: Any) -> Any:
    """What the README shows: the client's own `post` sends a body the SDK has no method for."""
    return client.post("/feedback", cast_to=object, body=body)


def test_corrections_from_the_openai_client_are_exported_and_prepared(
    tmp_path: Path, tiny_llama: Path
) -> None:
    from tuneforge.serve.keys import KeyFile

    root = tmp_path
    runs = _runs(root, tiny_llama)
    keys = KeyFile(root / "keys.json")
    alice, bob = keys.create("alice"), keys.create("bob")
    made = run_cli("keys", "create", "rita", "--reviewer", "--keys", str(keys.path), cwd=root)
    assert made.returncode == 0 and "'rita' (reviewer: may give feedback on any request)" in made.stderr
    rita = made.stdout.strip().splitlines()[-1]
    (root / "serve.yaml").write_text(SERVE_CONFIG.format(root=root))
    server = Server(
        root, str(runs["sentiment"]), str(tiny_llama), "--config", "serve.yaml", "--keys", str(keys.path)
    )
    try:
        as_alice, as_bob, as_rita = _client(server, alice), _client(server, bob), _client(server, rita)
        test_row = DatasetDir.open(root / "ds-sentiment").records("test")[0]
        fresh = "a brand new complaint about the late parcel"
        classified = as_alice.post(
            "/classify", cast_to=object, body={"model": "sentiment", "input": [test_row["text"], fresh]}
        )
        cls_id = classified["id"]
        answer = as_alice.chat.completions.create(
            model="tiny-llama", messages=[{"role": "user", "content": "where is my parcel?"}], max_tokens=4
        )

        with pytest.raises(openai.UnprocessableEntityError) as outside:
            _feedback(as_alice, request_id=cls_id, rating=-1, correction=["maybe", None])
        allowed = ", ".join(map(repr, LABELS))
        assert (
            outside.value.body["message"]
            == f"correction: 'maybe' is not one of the model's labels: {allowed}"
        )
        with pytest.raises(openai.PermissionDeniedError) as theirs:
            _feedback(as_bob, request_id=answer.id, rating=-1, correction="no")
        assert theirs.value.body["code"] == "not_your_request"
        with pytest.raises(openai.NotFoundError):
            _feedback(as_rita, request_id="chatcmpl-never-served", rating=1)

        # The reviewer labels alice's request: the test text with its own label, the fresh one as negative.
        reviewed = _feedback(
            as_rita, request_id=cls_id, rating=-1, correction=[test_row["label"], "negative"]
        )
        assert reviewed == {"status": "recorded"}
        _feedback(as_alice, request_id=answer.id, rating=-1, correction="It ships today.")
        _feedback(
            as_alice, request_id=answer.id, rating=-1, correction="It ships today; ask help@shop.example"
        )
    finally:
        assert server.stop() == 0  # the log is flushed on SIGTERM
    fb = read_table(f"sqlite:///{root / 'log.sqlite'}", "feedback")
    assert [(f["key_name"], f["request_id"]) for f in fb] == [
        ("rita", cls_id),
        ("alice", answer.id),
    ]  # replaced

    exported = run_cli("feedback", "export", "serve.yaml", "--out", "export", "--split", "train", cwd=root)
    assert exported.returncode == 0, exported.stderr
    assert "2 examples -> export/classify.jsonl" in exported.stdout
    assert "1 examples -> export/chat.jsonl" in exported.stdout
    rows = [json.loads(x) for x in (root / "export" / "classify.jsonl").read_text().splitlines()]
    assert rows == [
        {"text": test_row["text"], "label": test_row["label"], "split": "train"},
        {"text": fresh, "label": "negative", "split": "train"},
    ]
    manifest = json.loads((root / "export" / "export.json").read_text())
    assert manifest["files"] == {"chat.jsonl": 1, "classify.jsonl": 2} and manifest["feedback_rows"] == 2

    # Prepared beside the run's frozen test split: the correction that is a test example never reaches train.
    mixed = root / "retrain-data"
    mixed.mkdir()
    frozen = DatasetDir.open(root / "ds-sentiment").records("test")
    lines = [json.dumps({"text": r["text"], "label": r["label"], "split": "test"}) for r in frozen]
    (mixed / "frozen-test.jsonl").write_text("\n".join(lines) + "\n")
    (mixed / "feedback.jsonl").write_bytes((root / "export" / "classify.jsonl").read_bytes())
    cls_cfg = PREPARE.format(
        path=mixed, fmt="classification", out=root / "ds-retrain", split_column="split", model=tiny_llama,
        task="classification",
    )  # fmt: skip
    (root / "retrain.yaml").write_text(cls_cfg)
    prepared = run_cli("prepare", "retrain.yaml", cwd=root)
    assert prepared.returncode == 0, prepared.stderr
    ds = DatasetDir.open(root / "ds-retrain")
    assert ds.manifest["counts"]["leakage_dropped"] == 1
    assert [(r["text"], r["label"]) for r in ds.records("train")] == [(fresh, "negative")]
    assert len(ds.records("test")) == len(frozen)

    # The chat correction goes through the same cleaning: its e-mail address is redacted.
    chat_cfg = PREPARE.format(
        path=root / "export" / "chat.jsonl", fmt="chat", out=root / "ds-chat", split_column="split",
        model=tiny_llama, task="causal-lm",
    )  # fmt: skip
    (root / "chat.yaml").write_text(chat_cfg)
    prepared = run_cli("prepare", "chat.yaml", cwd=root)
    assert prepared.returncode == 0, prepared.stderr
    (record,) = DatasetDir.open(root / "ds-chat").records("train")
    assert record["messages"][-1] == {"role": "assistant", "content": "It ships today; ask <EMAIL>"}
