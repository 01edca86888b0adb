"""DPO on top of an SFT run: the run directory is the starting point and the SFT model is the reference."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from tests.tiny import WORDS
from tests.unit.train.test_dpo import dpo_config, preference_rows
from tests.unit.train.tiny_runs import (
    assert_same_tensors,
    final_weights,
    interrupted_at,
    make_config,
    records,
)
from tuneforge.artifacts import RunDir
from tuneforge.errors import TuneforgeError
from tuneforge.train import train

# No dropout: the continued adapter then computes exactly what its frozen reference copy does at step 0.
SFT_METHOD = {"name": "lora", "r": 4, "alpha": 8, "dropout": 0.0}
QUICK = {"train.eval_every": 0, "train.save_every": 0}


def instruction_rows(n: int = 40, seed: int = 1) -> list[dict[str, str]]:
    rng = random.Random(seed)
    return [
        {
            "instruction": f"{' '.join(rng.sample(WORDS['neutral'], 2))} number {i}: how was it?",
            "input": "",
            "output": " ".join(rng.sample(WORDS["positive"], 2)),
        }
        for i in range(n)
    ]


def sft_config(tmp_path: Path, model: Path) -> Any:
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in instruction_rows()), encoding="utf-8")
    section = {"path": str(data), "output_dir": str(tmp_path / "chat-dataset"), "min_examples": 5}
    return make_config(
        tmp_path,
        model,
        {"data": section, "method": SFT_METHOD, "train.max_steps": 4, "train.learning_rate": 5e-2} | QUICK,
        name="sft",
    )


@pytest.fixture(scope="module")
def sft(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path) -> RunDir:
    return train(sft_config(tmp_path_factory.mktemp("sft"), tiny_llama))


@pytest.fixture(scope="module")
def dpo(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path, sft: RunDir) -> RunDir:
    tmp = tmp_path_factory.mktemp("dpo-from-sft")
    cfg = dpo_config(tmp, tiny_llama, {"model.name": str(sft.path), "train.max_steps": 4} | QUICK, name="dpo")
    return train(cfg)


def _logprobs(model: Any, tok: Any, rows: list[dict[str, str]]) -> torch.Tensor:
    from tuneforge.models.encode import encode_preference
    from tuneforge.models.lm_loss import example_logprobs
    from tuneforge.models.preference import pair_batch

    pairs = [encode_preference(tok, r["prompt"], r["chosen"], r["rejected"], max_length=64) for r in rows]
    with torch.no_grad():
        return example_logprobs(model.eval(), pair_batch(pairs, tok.pad_token_id, packed=False))


def test_dpo_from_an_sft_run_starts_at_the_sft_model_and_measures_itself_against_it(
    dpo: RunDir, sft: RunDir, tiny_llama: Path
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tuneforge.config import ModelConfig
    from tuneforge.models import load_tokenizer

    rows = [r for r in dpo.metrics() if "split" not in r]
    # Policy == reference == the SFT model before the first update: DPO's loss is log 2 and no margin.
    assert rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert rows[0]["reward_margin"] == 0.0 and rows[0]["reward_chosen"] == 0.0
    # ... which holds only because the reference is the SFT model: the bare base scores the pairs differently.
    tok = load_tokenizer(ModelConfig(name=str(tiny_llama)))
    pairs = preference_rows()[:4]
    base = _logprobs(AutoModelForCausalLM.from_pretrained(tiny_llama), tok, pairs)
    sft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama), sft.final)
    sft_logp = _logprobs(sft_model, tok, pairs)
    assert float((sft_logp - base).abs().min()) > 0.05
    # The result is one adapter on the original base (no frozen copy saved), moved away from the SFT adapter.
    assert sorted(p.name for p in dpo.final.iterdir() if p.is_dir()) == []
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama), dpo.final)
    assert float((_logprobs(tuned, tok, pairs) - sft_logp).abs().max()) > 1e-3


def test_the_manifest_and_config_record_the_lineage(dpo: RunDir, sft: RunDir, tiny_llama: Path) -> None:
    parent = dpo.manifest["parent"]
    sft_dataset = sft.manifest["dataset"]
    assert parent == {
        "run": str(sft.path.resolve()),
        "final": str(sft.final.resolve()),
        "base_model": str(tiny_llama),
        "method": "lora",
        "objective": "supervised",
        "saves_adapter": True,
        "step": 4,
        "config_fingerprint": sft.manifest["config_fingerprint"],
        "dataset": {
            "path": sft_dataset["path"],
            "fingerprint": sft_dataset["fingerprint"],
            "format": "instruction",
        },
    }
    assert dpo.manifest["objective"] == "dpo"
    assert dpo.manifest["base_model_path"] == str(tiny_llama.resolve())
    config = yaml.safe_load(dpo.config_path.read_text())
    # The recorded config names the base and the run it started from, and the adapter it continued.
    assert config["model"]["name"] == str(tiny_llama.resolve())
    assert config["train"]["init_from"] == str(sft.path)
    assert config["method"] == {"name": "lora", **yaml.safe_load(sft.config_path.read_text())["method"]}
    adapter = json.loads((dpo.final / "adapter_config.json").read_text())
    assert (adapter["r"], adapter["lora_alpha"]) == (4, 8)


def test_a_dpo_run_from_an_sft_run_resumes_bit_identically(
    tmp_path: Path, tiny_llama: Path, sft: RunDir, dpo: RunDir, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = dpo_config(
        tmp_path, tiny_llama, {"model.name": str(sft.path), "train.max_steps": 4} | QUICK, name="dpo"
    )
    interrupted_at(cfg, monkeypatch, 2)
    run = train(cfg, resume=True)
    assert run.manifest["resumed_from_step"] == 2 and run.manifest["parent"] == dpo.manifest["parent"]
    assert_same_tensors(final_weights(run), final_weights(dpo))
    assert records(run) == records(dpo)


def test_full_fine_tuning_from_an_adapter_run_merges_it_and_takes_the_sft_model_as_reference(
    tmp_path: Path, tiny_llama: Path, sft: RunDir
) -> None:
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from tuneforge.config import ModelConfig
    from tuneforge.models import load_tokenizer

    overrides = {
        "train.init_from": str(sft.path),
        "method": {"name": "full"},
        "train.max_steps": 1,
        "train.learning_rate": 1e-3,
        "train.eval_every": 0,
    }
    run = train(dpo_config(tmp_path, tiny_llama, overrides, name="dpo-full"))
    assert run.manifest["parent"]["run"] == str(sft.path.resolve())
    assert run.manifest["saves_adapter"] is False
    table = load_file(run.path / "reference_logprobs.safetensors")["train"]
    tok = load_tokenizer(ModelConfig(name=str(tiny_llama)))
    train_rows = [json.loads(line) for line in (tmp_path / "dataset" / "train.jsonl").open()][:3]
    merged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama), sft.final)
    logp = _logprobs(merged.merge_and_unload(), tok, train_rows)
    torch.testing.assert_close(table[:3], torch.stack([logp[:3], logp[3:]], dim=1), rtol=1e-5, atol=1e-4)


def test_a_folder_that_is_neither_a_model_nor_a_run_is_one_error(tmp_path: Path, tiny_llama: Path) -> None:
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "readme.txt").write_text("hello")
    with pytest.raises(TuneforgeError) as err:
        train(dpo_config(tmp_path, tiny_llama, {"model.name": str(folder)}))
    assert str(err.value) == (
        f"config key model.name: {folder} is neither a model folder (no config.json) nor a tuneforge run (no "
        "manifest.json of a run)\n"
        "  fix: pass a Hugging Face model folder (config.json, safetensors weights, tokenizer), a built-in "
        "(builtin:...), a hub id, or the output_dir of a finished `tuneforge train` run"
    )
    assert not (tmp_path / "run").exists()


def test_a_runs_final_folder_names_the_run_to_use(tmp_path: Path, tiny_llama: Path, sft: RunDir) -> None:
    with pytest.raises(TuneforgeError) as err:
        train(dpo_config(tmp_path, tiny_llama, {"model.name": str(sft.final)}))
    assert str(err.value) == (
        f"config key model.name: {sft.final} is a folder inside run {sft.path}, not a model folder\n"
        "  fix: name the run itself to start from what it trained: "
        f"model.name: {sft.path} (or train.init_from)"
    )


def test_an_unfinished_run_or_another_adapter_method_is_refused(
    tmp_path: Path, tiny_llama: Path, sft: RunDir
) -> None:
    from tuneforge.config import ConfigSource, load_config

    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "config.yaml").write_text(sft.config_path.read_text())
    manifest = {**sft.manifest, "status": "interrupted"}
    (unfinished / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(TuneforgeError) as err:
        train(dpo_config(tmp_path, tiny_llama, {"train.init_from": str(unfinished)}))
    assert str(err.value) == (
        f"config key train.init_from: run {unfinished} has not finished training (status: interrupted), so "
        "it cannot be a starting point\n"
        f"  fix: finish it first: tuneforge train {unfinished / 'config.yaml'} --resume"
    )

    cfg_file = tmp_path / "dpo.yaml"
    cfg_file.write_text(yaml.safe_dump(dpo_config(tmp_path, tiny_llama).to_dict()))
    cfg, source = load_config(cfg_file, [f"model.name={sft.path}", "method.name=dora"])
    assert isinstance(source, ConfigSource)
    with pytest.raises(TuneforgeError) as err:
        train(cfg, source)
    assert str(err.value) == (
        f"command-line override method.name: run {sft.path} trained a lora adapter, which this run "
        "continues; method.name dora cannot continue it\n"
        "  fix: leave method out (or write method.name: lora); method.name: full merges the adapter into "
        "the base and trains every weight"
    )


EVAL = ["eval.max_new_tokens=12", "eval.bootstrap=200"]


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_evaluating_the_dpo_run_answers_the_sft_runs_test_prompts_with_both_models(
    dpo: RunDir, sft: RunDir
) -> None:
    from tuneforge.evaluation import evaluate_run
    from tuneforge.evaluation.answers import repeats
    from tuneforge.evaluation.report.answers import answer_lines

    evaluate_run(sft.path, overrides=EVAL, report=False)
    result = json.loads(evaluate_run(dpo.path, overrides=EVAL).read_text())
    answers = result["answers"]
    sft_data = Path(sft.manifest["dataset"]["path"])
    prompts = _jsonl(sft_data / "test.jsonl")
    assert (answers["dataset"], answers["split"], answers["n"]) == (str(sft_data), "test", len(prompts))
    assert len(prompts) == 6 and answers["reference_model"] == f"the SFT run {sft.path.resolve()}"
    rows = _jsonl(dpo.eval_dir / "test.answers.jsonl")
    # The reference is the SFT model: its answers are the SFT run's own evaluation answers, word for word.
    assert [row["reference"] for row in rows] == [
        row["tuned"] for row in _jsonl(sft.eval_dir / "test.predictions.jsonl")
    ]
    assert [row["reference_answer"] for row in rows] == [p["output"] for p in prompts]
    sft_result = json.loads((sft.eval_dir / "test.json").read_text())
    assert answers["reference"]["token_f1"] == sft_result["tuned"]["token_f1"]
    assert answers["reference"]["loss"] == pytest.approx(sft_result["tuned"]["loss"], rel=1e-6)
    for side in ("reference", "dpo"):
        texts = [row[side] for row in rows]
        assert answers[side]["answer_words"] == pytest.approx(sum(len(t.split()) for t in texts) / 6)
        assert answers[side]["repetition_rate"] == pytest.approx(sum(map(repeats, texts)) / 6)
        assert [row["scores"][side]["repetition"] for row in rows] == [float(repeats(t)) for t in texts]
        assert answers[side]["token_f1"] == pytest.approx(
            sum(r["scores"][side]["token_f1"] for r in rows) / 6
        )
    paired = answers["paired"]
    diff = sum(len(r["dpo"].split()) - len(r["reference"].split()) for r in rows) / 6
    assert paired["answer_words"]["diff"] == pytest.approx(diff)
    rep_diff = sum(float(repeats(r["dpo"])) - float(repeats(r["reference"])) for r in rows) / 6
    assert paired["repetition_rate"]["diff"] == pytest.approx(rep_diff)
    assert {"answer_words", "repetition_rate", "token_f1", "loss_per_example", "chrf"} <= set(paired)
    # Next to the reward margin, which is measured against the SFT model as well (its adapter, frozen).
    margin = result["tuned"]["reward_margin"]
    lines = answer_lines(answers, margin)
    assert lines[0] == (
        f"answers on 6 prompts of {sft_data} (test), reference = the SFT run {sft.path.resolve()}:"
    )
    assert lines[1].endswith(f", reward margin {margin:.3g}")  # 3 significant digits, as every number
    md = (dpo.path / "report.md").read_text()
    assert "What DPO did to answers: 6 prompts of the test split of" in md


def test_repeats_marks_an_answer_that_falls_into_a_loop() -> None:
    from tuneforge.evaluation.answers import repeats

    assert repeats("I love it I love it I love it")
    assert not repeats("I love it I love it and more")  # twice is not a loop
    assert repeats("good good good good")
    assert repeats("otototototot")  # a loop inside one "word": what a word n-gram count misses
    assert not repeats("hahaha")  # shorter than 12 characters
    assert not repeats("---------------")  # no letter or digit: a rule, not a degenerate answer
    assert not repeats("")
