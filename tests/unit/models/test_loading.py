"""Loading base models: dropout reaches the model when it is built; broken model folders give one error."""

from __future__ import annotations

import importlib.util
import json
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.tiny import copy_tree
from tuneforge.config import ModelConfig
from tuneforge.errors import TuneforgeError
from tuneforge.models import load_model, load_tokenizer

LABELS = ["negative", "neutral", "positive"]


def _train_forward(model: Any, seed: int) -> torch.Tensor:
    model.train()
    torch.manual_seed(seed)
    ids = torch.arange(3, 19).reshape(2, 8)  # (B, T)
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits  # type: ignore[no-any-return]


def test_dropout_reaches_llama_attention(tiny_llama: Path) -> None:
    # Llama has no nn.Dropout modules: its attention reads config.attention_dropout when it is built.
    plain = load_model(ModelConfig(name=str(tiny_llama)))
    assert torch.equal(_train_forward(plain, 0), _train_forward(plain, 1))  # no dropout by default
    dropped = load_model(ModelConfig(name=str(tiny_llama), dropout=0.5))
    assert dropped.config.attention_dropout == 0.5
    assert not torch.allclose(_train_forward(dropped, 0), _train_forward(dropped, 1))
    dropped.eval()
    with torch.no_grad():
        ids = torch.arange(3, 19).reshape(2, 8)
        assert torch.equal(plain.eval()(input_ids=ids).logits, dropped(input_ids=ids).logits)


@pytest.mark.parametrize("p", [0.0, 0.4])
def test_dropout_reaches_bert(tiny_bert: Path, p: float) -> None:
    model = load_model(ModelConfig(name=str(tiny_bert), task="classification", dropout=p), labels=LABELS)
    assert model.config.hidden_dropout_prob == p
    assert model.config.attention_probs_dropout_prob == p
    same = torch.equal(_train_forward(model, 0), _train_forward(model, 1))
    assert same is (p == 0.0)  # BERT's own default (0.1) would make the two forwards differ


def _broken_copy(tiny_llama: Path, tmp_path: Path, name: str) -> Path:
    return copy_tree(tiny_llama, tmp_path / name)


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (struct.pack("<Q", 2**62) + b"{}", "header too large"),
        (struct.pack("<Q", 10) + b"not json!!", "invalid JSON in header: expected ident at line 1 column 2"),
    ],
    ids=["huge-length", "garbage-json"],
)
def test_a_malicious_safetensors_header_is_one_error(
    tiny_llama: Path, tmp_path: Path, header: bytes, reason: str
) -> None:
    folder = _broken_copy(tiny_llama, tmp_path, "bad-header")
    (folder / "model.safetensors").write_bytes(header)
    with pytest.raises(TuneforgeError) as e:
        load_model(ModelConfig(name=str(folder)))
    assert e.value.what == (
        "the weights of the model are damaged: "
        f"model.safetensors is not a readable safetensors file ({reason})"
    )
    assert e.value.where == str(folder / "model.safetensors")


def test_a_model_folder_without_tokenizer_is_one_error(tiny_llama: Path, tmp_path: Path) -> None:
    folder = _broken_copy(tiny_llama, tmp_path, "no-tokenizer")
    for file in folder.iterdir():
        if file.name not in ("config.json", "generation_config.json", "model.safetensors"):
            file.unlink()
    with pytest.raises(TuneforgeError) as e:
        load_tokenizer(ModelConfig(name=str(folder)))
    assert (
        e.value.what
        == f"{folder} has no tokenizer (none of tokenizer.json, tokenizer_config.json, tokenizer.model, ...)"
    )


def _edit_config(folder: Path, **changes: Any) -> None:
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **changes}))


def test_a_model_with_its_own_code_needs_trust_remote_code(tiny_llama: Path, tmp_path: Path) -> None:
    folder = _broken_copy(tiny_llama, tmp_path, "remote-code")
    _edit_config(folder, model_type="fancy", auto_map={"AutoModelForCausalLM": "modeling_fancy.Fancy"})
    for load in (load_tokenizer, load_model):
        with pytest.raises(TuneforgeError) as e:
            load(ModelConfig(name=str(folder)))
        assert e.value.what == (
            f"{folder} ships its own model code (auto_map in config.json), which would run on this machine"
        )
        assert e.value.fix == "set model.trust_remote_code=true only if you trust the code in that folder"


def test_an_unknown_model_type_is_one_error(tiny_llama: Path, tmp_path: Path) -> None:
    import transformers

    folder = _broken_copy(tiny_llama, tmp_path, "unknown-type")
    _edit_config(folder, model_type="fancy")
    with pytest.raises(TuneforgeError) as e:
        load_model(ModelConfig(name=str(folder)))
    assert e.value.what == (
        f"{folder}: model type 'fancy' is not one transformers {transformers.__version__} knows"
    )


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="DeepSpeed is not installed")
def test_loading_and_saving_a_model_does_not_import_deepspeed(tiny_llama: Path, tmp_path: Path) -> None:
    # In a fresh process: accelerate would import DeepSpeed (and DeepSpeed warn about the CPU) on save.
    script = (
        "import sys\n"
        "from tuneforge.config import ModelConfig\n"
        "from tuneforge.models import load_model\n"
        f"load_model(ModelConfig(name={str(tiny_llama)!r})).save_pretrained({str(tmp_path / 'saved')!r})\n"
        "print('deepspeed imported:', 'deepspeed' in sys.modules)\n"
    )
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "deepspeed imported: False"
    assert "Setting accelerator" not in r.stderr
    assert (tmp_path / "saved" / "model.safetensors").is_file()


@pytest.mark.slow
def test_the_builtin_tokenizer_converts_alone_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from tuneforge import builtin

    full = builtin.resolve("builtin:smollm2-135m-instruct")  # the shared cache, weights and all
    monkeypatch.setenv("TUNEFORGE_CACHE", str(tmp_path / "cache"))
    tok = load_tokenizer(ModelConfig())
    folder = tmp_path / "cache" / "models" / "smollm2-135m-instruct"
    assert sorted(p.name for p in folder.iterdir() if p.name != ".tuneforge") == [
        "chat_template.jinja",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    assert (folder / "tokenizer.json").read_bytes() == (full / "tokenizer.json").read_bytes()
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False).startswith(
        "<|im_start|>"
    )
    err = capsys.readouterr().err
    assert f"converting the SmolLM2-135M-Instruct tokenizer from GGUF into {folder} (once" in err
    assert "Setting accelerator" not in err
    load_tokenizer(ModelConfig())  # the second time from the cache, silently
    assert "converting" not in capsys.readouterr().err


def test_an_auto_map_beside_a_known_architecture_loads_without_its_code(
    tiny_llama: Path, tmp_path: Path
) -> None:
    # transformers uses its own Llama and ignores the folder's code unless trust_remote_code is set.
    folder = _broken_copy(tiny_llama, tmp_path, "known-with-auto-map")
    _edit_config(folder, auto_map={"AutoModelForCausalLM": "modeling_fancy.Fancy"})
    assert type(load_model(ModelConfig(name=str(folder)))).__name__ == "LlamaForCausalLM"


@pytest.mark.parametrize("task", ["causal-lm", "classification"])
def test_an_empty_model_has_the_loaded_models_structure_on_the_meta_device(
    tiny_llama: Path, tmp_path: Path, task: str
) -> None:
    """FSDP's other processes build the model without weights; it must not depend on which loading
    integrations a transformers release switches on (from 5.25, `device_map="meta"` in `from_pretrained` goes
    through hub kernels, which refuse the meta device)."""
    from unittest import mock

    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    cfg = ModelConfig(name=str(tiny_llama), task=task, dropout=0.25)
    labels = ["neg", "pos"] if task == "classification" else None
    loaded = load_model(cfg, labels=labels, pad_token_id=0)
    loader = AutoModelForCausalLM if task == "causal-lm" else AutoModelForSequenceClassification
    # The empty model reads no weights: from_pretrained of the model class is never called.
    with mock.patch.object(loader, "from_pretrained", side_effect=AssertionError("weights were loaded")):
        empty = load_model(cfg, labels=labels, pad_token_id=0, empty=True)
    assert {p.device.type for p in empty.parameters()} == {"meta"}
    shapes = {name: (p.shape, p.dtype) for name, p in loaded.named_parameters()}
    assert {name: (p.shape, p.dtype) for name, p in empty.named_parameters()} == shapes
    assert empty.config.attention_dropout == loaded.config.attention_dropout == 0.25
    assert empty.config.num_labels == loaded.config.num_labels
    assert empty.config.pad_token_id == loaded.config.pad_token_id
