"""The real built-ins (slow): they load offline, and the quickstart chain runs on them end to end."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_builtin_models_load_offline() -> None:
    from tuneforge.config import ModelConfig
    from tuneforge.models import load_model, load_tokenizer

    cfg = ModelConfig(name="builtin:smollm2-135m-instruct")
    tok = load_tokenizer(cfg)
    model = load_model(cfg)
    assert model.config.model_type == "llama"
    assert not hasattr(model.config, "quantization_config")
    assert 130e6 < sum(p.numel() for p in model.parameters()) < 140e6
    assert "<|im_start|>assistant" in tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    enc = ModelConfig(name="builtin:minilm-l6", task="classification")
    head = load_model(enc, labels=["a", "b"])
    assert head.config.model_type == "bert" and head.config.num_labels == 2


def test_quickstart_fast(cli, tmp_path: Path) -> None:
    r = cli("quickstart", "--fast", timeout=900)
    assert r.returncode == 0, r.stderr
    assert "base" in r.stdout and "tuned" in r.stdout
    # One line per stage, in order, after the plan and before the closing time per stage.
    stages = [s for s in r.stderr.splitlines() if re.match(r"quickstart|\[\d/4\] |estimated time on ", s)]
    assert [s.split(" ")[0] for s in stages] == [
        "quickstart:",
        "[1/4]",
        "[2/4]",
        "estimated",
        "[3/4]",
        "[4/4]",
        "quickstart",
    ], r.stderr
    assert stages[0] == (
        "quickstart: builtin:demo-tweets -> builtin:smollm2-135m-instruct + lora for 3 steps -> base vs "
        "tuned on 12 test examples"
    )
    assert re.fullmatch(r"quickstart took .*: model .* · data .* · train .* · evaluate .*", stages[-1])
    run = tmp_path / "runs" / "quickstart"
    # the first 12 of the demo's test split: an evaluation named for that, never mistaken for the whole split
    result = json.loads((run / "eval" / "test-first12.json").read_text())
    assert result["n"] == 12 and result["evaluation"] == "test-first12" and set(result) >= {"tuned", "base"}
    assert result["labels"] == ["negative", "neutral", "positive"]
    assert (run / "loss.png").stat().st_size > 1000
    assert (run / "final" / "adapter_model.safetensors").is_file()
    # Even three steps teach the answer format: validation loss falls (CPU, seed 42).
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    validation = [r["loss"] for r in rows if r.get("split") == "validation"]
    assert len(validation) >= 2 and validation[-1] < validation[0]
    data = json.loads((tmp_path / "datasets" / "demo-tweets" / "manifest.json").read_text())
    assert data["counts"]["read"] == 38158
    assert sum(data["splits"].values()) == data["counts"]["written"]
