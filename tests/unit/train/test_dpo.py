"""Training on a preference dataset is DPO: the margin rises, metrics are logged, resume is bit-exact."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.tiny import WORDS
from tests.unit.train.tiny_runs import (
    assert_same_tensors,
    final_weights,
    interrupted_at,
    make_config,
    records,
)
from tuneforge.artifacts import RunDir
from tuneforge.config import RunConfig
from tuneforge.errors import TuneforgeError
from tuneforge.train import train


def preference_rows(n: int = 40, seed: int = 0) -> list[dict[str, str]]:
    """Pairs whose chosen answer is always positive and the rejected one negative."""
    rng = random.Random(seed)
    return [
        {
            "prompt": f"{' '.join(rng.sample(WORDS['neutral'], 2))} number {i}: how was it?",
            "chosen": " ".join(rng.sample(WORDS["positive"], 2)),
            "rejected": " ".join(rng.sample(WORDS["negative"], 2)),
        }
        for i in range(n)
    ]


def dpo_config(tmp_path: Path, model: Path, overrides: dict[str, Any] | None = None, **kw: Any) -> RunConfig:
    data = tmp_path / "pairs.jsonl"
    if not data.exists():
        data.write_text("".join(json.dumps(r) + "\n" for r in preference_rows()), encoding="utf-8")
    section = {"path": str(data), "output_dir": str(tmp_path / "dataset"), "min_examples": 5}
    return make_config(
        tmp_path, model, {"data": section, "train.learning_rate": 2e-2} | (overrides or {}), **kw
    )


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path) -> RunDir:
    """An uninterrupted DPO run (LoRA with dropout, 14 steps, validation every 4), saving only at the end."""
    return train(dpo_config(tmp_path_factory.mktemp("dpo"), tiny_llama, {"train.save_every": 0}))


def margins(model: Any, tok: Any, pairs: list[dict[str, Any]]) -> torch.Tensor:
    """logp(chosen) - logp(rejected) per pair, summed over each answer's tokens."""
    from tuneforge.models.lm_loss import example_logprobs
    from tuneforge.models.preference import pair_batch

    with torch.no_grad():
        logp = example_logprobs(model.eval(), pair_batch(pairs, tok.pad_token_id, packed=False))
    return logp[: len(pairs)] - logp[len(pairs) :]


def test_dpo_raises_the_margin_of_chosen_over_rejected_on_the_training_pairs(
    reference: RunDir, tiny_llama: Path
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tuneforge.config import ModelConfig
    from tuneforge.models import load_tokenizer
    from tuneforge.models.encode import encode_preference

    assert reference.manifest["objective"] == "dpo"
    tok = load_tokenizer(ModelConfig(name=str(tiny_llama)))
    train_records = [json.loads(line) for line in (reference.path.parent / "dataset" / "train.jsonl").open()]
    pairs = [
        encode_preference(tok, r["prompt"], r["chosen"], r["rejected"], max_length=64) for r in train_records
    ]
    base = AutoModelForCausalLM.from_pretrained(tiny_llama)
    before = margins(base, tok, pairs)
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama), reference.final)
    after = margins(tuned, tok, pairs)
    # The implicit reward margin beta * (after - before), averaged: what DPO pushes up.
    gain = after - before
    assert float(gain.mean()) > 1.0 and float((gain > 0).float().mean()) > 0.9

    rows = [r for r in reference.metrics() if "split" not in r]
    assert rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)  # LoRA starts as the reference: no margin
    assert rows[0]["reward_margin"] == 0.0 and rows[0]["reward_accuracy"] == 0.0
    for r in rows:
        assert r["reward_margin"] == pytest.approx(r["reward_chosen"] - r["reward_rejected"])
    validation = [r for r in reference.metrics() if r.get("split") == "validation"]
    assert [r["step"] for r in validation] == [4, 8, 12, 14]
    assert set(validation[-1]) == {
        "step", "split", "loss", "reward_chosen", "reward_rejected", "reward_accuracy", "reward_margin"
    }  # fmt: skip
    assert validation[-1]["loss"] < validation[0]["loss"] < math.log(2)
    assert validation[-1]["reward_margin"] > 0.15 and validation[-1]["reward_accuracy"] == 1.0


def test_dpo_stop_and_resume_is_bit_identical(
    tmp_path: Path, tiny_llama: Path, reference: RunDir, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = dpo_config(tmp_path, tiny_llama)
    interrupted_at(cfg, monkeypatch, 5)
    run = train(cfg, resume=True)
    assert run.manifest["resumed_from_step"] == 5
    assert_same_tensors(final_weights(run), final_weights(reference))
    assert records(run) == records(reference)


FULL = {"method": {"name": "full"}, "model.dropout": 0.1, "train.learning_rate": 1e-3}


@pytest.fixture(scope="module")
def reference_full(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path) -> RunDir:
    return train(dpo_config(tmp_path_factory.mktemp("dpo-full"), tiny_llama, FULL | {"train.save_every": 0}))


def test_full_fine_tuning_scores_its_reference_once_and_resumes_exactly(
    tmp_path: Path, tiny_llama: Path, reference_full: RunDir, monkeypatch: pytest.MonkeyPatch
) -> None:
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from tuneforge.config import ModelConfig
    from tuneforge.models import load_tokenizer
    from tuneforge.models.encode import encode_preference
    from tuneforge.models.lm_loss import example_logprobs
    from tuneforge.models.preference import pair_batch

    # The reference is the base model's log-probs of every pair, taken before step 1, in data order.
    table = load_file(reference_full.path / "reference_logprobs.safetensors")
    assert table["train"].shape == (28, 2) and table["validation"].shape == (6, 2)
    tok = load_tokenizer(ModelConfig(name=str(tiny_llama)))
    dataset = reference_full.path.parent / "dataset"
    first = [json.loads(line) for line in (dataset / "train.jsonl").open()][:3]
    pairs = [encode_preference(tok, r["prompt"], r["chosen"], r["rejected"], max_length=64) for r in first]
    with torch.no_grad():
        logp = example_logprobs(
            AutoModelForCausalLM.from_pretrained(tiny_llama).eval(), pair_batch(pairs, 0, False)
        )
    torch.testing.assert_close(
        table["train"][:3], torch.stack([logp[:3], logp[3:]], dim=1), rtol=1e-5, atol=1e-4
    )

    rows = reference_full.metrics()
    # The model is its own reference at first; only dropout (in the policy's forward alone) moves step 1.
    assert rows[0]["loss"] != math.log(2) and rows[0]["loss"] == pytest.approx(math.log(2), abs=0.01)
    validation = [r for r in rows if r.get("split") == "validation"]
    assert validation[-1]["reward_margin"] > validation[0]["reward_margin"] > 0

    cfg = dpo_config(tmp_path, tiny_llama, FULL)
    table_file = interrupted_at(cfg, monkeypatch, 5).path / "reference_logprobs.safetensors"
    written = table_file.stat().st_ino
    run = train(cfg, resume=True)
    assert table_file.stat().st_ino == written  # read back, not scored again
    assert_same_tensors(final_weights(run), final_weights(reference_full))
    assert records(run) == records(reference_full)


def test_dpo_validation_names_its_own_metrics(tmp_path: Path, tiny_llama: Path) -> None:
    with pytest.raises(TuneforgeError) as err:
        train(dpo_config(tmp_path, tiny_llama, {"train.metric_for_best": "perplexity"}))
    assert str(err.value) == (
        "config key train.metric_for_best: validation of a DPO run (a preference dataset) has no metric "
        "'perplexity'\n"
        "  fix: choose one of: loss, reward_margin, reward_accuracy, reward_chosen, reward_rejected"
    )
    assert not (tmp_path / "run").exists()  # refused before any run directory


@pytest.mark.parametrize("key", ["method.name=dpo", "model.task=preference"])
def test_other_tools_spellings_say_what_to_write(tmp_path: Path, key: str) -> None:
    from tuneforge.config import load_config

    with pytest.raises(TuneforgeError) as err:
        load_config(None, [key])
    name = key.split("=")[0]
    assert str(err.value) == (
        f"invalid config:\n  command-line override {name}: DPO is chosen by the data: a causal-lm model "
        "trained on a preference dataset (prompt/chosen/rejected) learns with the DPO loss; write "
        "model.task: causal-lm, a method (e.g. method.name: lora), data.format: preference, and "
        "train.dpo_beta for beta "
        f"(got '{key.split('=')[1]}')\n  fix: see `tuneforge config-keys` for every key, its type and default"
    )


def test_the_shipped_dpo_example_data_is_what_its_script_writes() -> None:
    import importlib.util

    from tests.conftest import ROOT

    script_path = ROOT / "configs" / "data" / "make_support_preferences.py"
    spec = importlib.util.spec_from_file_location("make_support_preferences", script_path)
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    rows = script.pairs()
    assert len(rows) == 80 and all(r["chosen"] != r["rejected"] for r in rows)
    expected = "".join(json.dumps(r) + "\n" for r in rows)
    assert (ROOT / "configs" / "data" / "support-preferences.jsonl").read_text(encoding="utf-8") == expected
