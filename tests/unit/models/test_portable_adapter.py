"""Loading a finished run: its adapter loads on another machine (adapter_config.json names the built-in's hub
id, not this machine's cache path, and tuneforge resolves a built-in base where it is installed); a damaged
adapter is one clear error at evaluate; evaluate takes eval.* overrides; train ends with the validation."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from tests.unit.train.tiny_runs import make_config
from tuneforge import builtin
from tuneforge.artifacts import RunDir
from tuneforge.errors import TuneforgeError
from tuneforge.evaluation import evaluate_run
from tuneforge.models.runs import load_tuned
from tuneforge.train import reload_config, train

FAKE = builtin.BuiltinModel(
    name="tiny-llama", package="tests", pip="-", description="-", kind="causal-lm", hub_id="tests/tiny-llama"
)
IDS = torch.arange(3, 19).reshape(2, 8)  # (B, T)


def _as_builtin(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    """builtin:tiny-llama is the tiny Llama, converted into `folder` (this machine's cache)."""
    monkeypatch.setitem(builtin.MODELS, FAKE.name, FAKE)
    monkeypatch.setattr(builtin, "resolve", lambda name, weights=True: folder)


@pytest.fixture(scope="module")
def trained(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[RunDir, Path, torch.Tensor]:
    """A LoRA run on builtin:tiny-llama, the cache folder it was trained from, the tuned model's logits."""
    tmp = tmp_path_factory.mktemp("portable")
    cache = shutil.copytree(tiny_llama, tmp / "cache-a" / "tiny-llama")
    with pytest.MonkeyPatch.context() as mp:
        _as_builtin(mp, cache)
        overrides = {"model.name": "builtin:tiny-llama", "train.max_steps": 2, "train.eval_every": 0}
        run = train(make_config(tmp, tiny_llama, {**overrides, "train.save_every": 0, "train.epochs": 1}))
        model, _ = load_tuned(run, reload_config(run))
        with torch.no_grad():
            logits = model(input_ids=IDS).logits
    return run, cache, logits


def test_adapter_config_names_the_hub_id_and_the_manifest_the_builtin(
    trained: tuple[RunDir, Path, torch.Tensor],
) -> None:
    run, cache, _ = trained
    config = json.loads((run.final / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "tests/tiny-llama"
    card = (run.final / "README.md").read_text()
    assert "base_model: tests/tiny-llama\n" in card and str(cache) not in card
    assert run.manifest["base_model"] == "builtin:tiny-llama"
    assert run.manifest["base_model_path"] == str(cache)
    assert run.manifest["environment"]["torch_threads"] == torch.get_num_threads()  # train.num_threads: auto


def test_the_adapter_loads_after_the_cache_moved(
    trained: tuple[RunDir, Path, torch.Tensor], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    run, cache, expected = trained
    # Another machine: the same built-in, installed in another cache; the trainer's cache path is gone.
    moved = shutil.copytree(run.path, tmp_path / "copied-run")
    elsewhere = tmp_path / "cache-b" / "tiny-llama"
    cache.rename(tmp_path / "gone")
    try:
        shutil.copytree(tmp_path / "gone", elsewhere)
        _as_builtin(monkeypatch, elsewhere)
        copy = RunDir(moved)
        model, _ = load_tuned(copy, reload_config(copy))
        base = AutoModelForCausalLM.from_pretrained(builtin.resolve("builtin:tiny-llama"))
        peft_model = PeftModel.from_pretrained(base, str(copy.final))
        with torch.no_grad():
            assert torch.equal(model(input_ids=IDS).logits, expected)
            assert torch.equal(peft_model(input_ids=IDS).logits, expected)
    finally:
        (tmp_path / "gone").rename(cache)


def test_evaluate_says_a_cut_short_adapter_is_damaged(
    trained: tuple[RunDir, Path, torch.Tensor], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run, cache, _ = trained
    _as_builtin(monkeypatch, cache)
    copy = RunDir(shutil.copytree(run.path, tmp_path / "damaged-run"))
    adapter = copy.final / "adapter_model.safetensors"
    adapter.write_bytes(adapter.read_bytes()[:-100])
    with pytest.raises(TuneforgeError) as e:
        evaluate_run(copy.path)
    assert e.value.what == (
        f"the weights of the run's adapter ({copy.final}) are damaged: adapter_model.safetensors is not a "
        "readable safetensors file (incomplete metadata, file not fully covered)"
    )
    assert e.value.where == str(adapter)
    assert not (copy.path / "eval").exists()


def test_evaluate_takes_eval_overrides_on_top_of_the_run(
    trained: tuple[RunDir, Path, torch.Tensor], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run, cache, _ = trained
    _as_builtin(monkeypatch, cache)
    copy = RunDir(shutil.copytree(run.path, tmp_path / "run"))
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = evaluate_run(
            copy.path, overrides=["eval.max_examples=2", "eval.split=validation", "eval.num_threads=2"]
        )
        assert torch.get_num_threads() == 2  # eval.num_threads applied
    finally:
        torch.set_num_threads(before)
    result = json.loads(out.read_text())
    assert (out.name, result["split"], result["n"]) == ("validation-first2.json", "validation", 2)
    with pytest.raises(TuneforgeError) as e:
        evaluate_run(copy.path, overrides=["train.learning_rate=1"])
    assert e.value.what == "evaluate takes overrides of eval.* only; train.learning_rate is fixed by the run"
    with pytest.raises(TuneforgeError, match=r"command-line override eval\.batch_size"):
        evaluate_run(copy.path, overrides=["eval.batch_size=0"])


def test_train_ends_with_the_validation_numbers_of_the_saved_model(
    trained: tuple[RunDir, Path, torch.Tensor],
) -> None:
    from tuneforge.cli import final_validation

    run = trained[0]
    last = [r for r in run.metrics() if r.get("split") == "validation"][-1]
    assert last["step"] == run.manifest["step"] == 2
    assert final_validation(run) == (
        "validation at step 2 (the saved model): "
        f"loss {last['loss']:.4g}  perplexity {last['perplexity']:.4g}"
    )
