"""Fine-tuning approaches: registry, option checks, defaults, unsupported combinations, parameter counts."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from tuneforge.config import MethodConfig, ModelConfig, config_from_dict, load_config
from tuneforge.errors import TuneforgeError
from tuneforge.models import load_model
from tuneforge.models.methods import (
    METHODS,
    count_parameters,
    describe_parameters,
    load_kwargs,
    resolve_method,
)

LABELS = ["negative", "neutral", "positive"]


def _apply(model_dir: Path, method: dict[str, Any], task: str) -> Any:
    cfg = config_from_dict({"model": {"name": str(model_dir), "task": task}, "method": method})
    model = load_model(cfg.model, labels=LABELS if task == "classification" else None)
    module, options = resolve_method(cfg.method, task=task)
    return module.apply(model, options, task)


def test_every_approach_is_registered() -> None:
    assert list(METHODS) == ["full", "lora", "qlora", "dora", "prompt-tuning", "prefix-tuning", "ia3", "head"]
    for module in METHODS.values():
        assert callable(module.apply)
        assert isinstance(module.SAVES_ADAPTER, bool)
    assert not METHODS["full"].SAVES_ADAPTER


def test_defaults() -> None:
    _, lora = resolve_method(MethodConfig(name="lora"))
    assert lora.model_dump() == {
        "r": 16,
        "alpha": 32,
        "dropout": 0.05,
        "target_modules": "all-linear",
        "use_rslora": False,
    }
    _, qlora = resolve_method(MethodConfig(name="qlora"))
    assert qlora.model_dump() == {**lora.model_dump(), "compute_dtype": "auto", "double_quant": True}
    _, dora = resolve_method(MethodConfig(name="dora"))
    assert dora.model_dump() == lora.model_dump()
    _, prompt = resolve_method(MethodConfig(name="prompt-tuning"))
    assert prompt.model_dump() == {"num_virtual_tokens": 20, "init": "random", "init_text": None}
    _, prefix = resolve_method(MethodConfig(name="prefix-tuning"))
    assert prefix.model_dump() == {
        "num_virtual_tokens": 20,
        "projection": False,
        "projection_hidden_size": None,
    }
    _, ia3 = resolve_method(MethodConfig(name="ia3"))
    assert ia3.model_dump() == {"target_modules": None, "feedforward_modules": None}


def test_bad_options_name_the_key_and_the_config_line(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  task: causal-lm\nmethod:\n  name: lora\n  r: 0\n  rank: 8\n  dropout: 1.5\n")
    cfg, source = load_config(path)
    with pytest.raises(TuneforgeError) as err:
        resolve_method(cfg.method, source)
    assert str(err.value) == (
        "invalid method options:\n"
        f"  {path}:5 (method.r): Input should be greater than or equal to 1 (got 0)\n"
        f"  {path}:7 (method.dropout): Input should be less than 1 (got 1.5)\n"
        f"  {path}:6 (method.rank): unknown option for lora\n"
        "  fix: options of lora: r, alpha, dropout, target_modules, use_rslora"
    )


def test_unknown_method_lists_the_known_ones(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("method:\n  name: lorra\n")
    cfg, source = load_config(path)
    with pytest.raises(TuneforgeError) as err:
        resolve_method(cfg.method, source)
    assert str(err.value) == (
        f"{path}:2 (method.name): unknown method 'lorra'\n"
        "  fix: choose one of: full, lora, qlora, dora, prompt-tuning, prefix-tuning, ia3, head"
    )


@pytest.mark.parametrize(
    ("method", "message"),
    [
        ({"name": "full", "r": 8}, "config key method.r: unknown option for full"),
        ({"name": "dora", "use_dora": True}, "config key method.use_dora: unknown option for dora"),
        (
            {"name": "prompt-tuning", "init": "text"},
            "config key method: init_text is required with init: text, and only used with it",
        ),
        (
            {"name": "prompt-tuning", "init_text": "Classify:"},
            "config key method: init_text is required with init: text, and only used with it",
        ),
        (
            {"name": "prompt-tuning", "init": "words"},
            "config key method.init: Input should be 'random', 'text' or 'vocab' (got 'words')",
        ),
        (
            {"name": "prefix-tuning", "projection_hidden_size": 64},
            "config key method: projection_hidden_size is only used with projection: true",
        ),
        (
            {"name": "prefix-tuning", "num_virtual_tokens": 0},
            "config key method.num_virtual_tokens: Input should be greater than or equal to 1 (got 0)",
        ),
        (
            {"name": "ia3", "target_modules": ["k_proj", "v_proj"]},
            "config key method: set target_modules and feedforward_modules together "
            "(or neither, for the defaults)",
        ),
        (
            {"name": "ia3", "target_modules": ["k_proj"], "feedforward_modules": ["down_proj"]},
            "config key method: feedforward_modules ['down_proj'] are not in target_modules",
        ),
        (
            {"name": "qlora", "compute_dtype": "int8"},
            "config key method.compute_dtype: "
            "Input should be 'auto', 'bfloat16', 'float16' or 'float32' (got 'int8')",
        ),
    ],
    ids=lambda v: v["name"] if isinstance(v, dict) else None,
)
def test_each_approach_validates_its_options(method: dict[str, Any], message: str) -> None:
    with pytest.raises(TuneforgeError) as err:
        resolve_method(config_from_dict({"method": method}).method)
    assert str(err.value).splitlines()[1] == f"  {message}"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_qlora_without_a_gpu_says_what_to_use_instead(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  task: classification\nmethod:\n  name: qlora\n  r: 8\n")
    cfg, source = load_config(path)
    resolve_method(cfg.method, source)  # the options alone are fine (shipped configs are checked this way)
    expected = (
        "qlora needs a CUDA GPU (its 4-bit base runs on bitsandbytes' CUDA kernels) and none is visible\n"
        "  fix: here use method.name=lora (the same adapters on a full-precision base), or run on a GPU"
    )
    with pytest.raises(TuneforgeError) as err:
        resolve_method(cfg.method, source, task="classification")
    assert str(err.value) == f"{path}:4 (method.name): {expected}"
    with pytest.raises(TuneforgeError) as err:
        load_kwargs(cfg.method)
    assert str(err.value) == f"method.name: {expected}"


def test_qlora_without_bitsandbytes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # makes `import bitsandbytes` fail
    with pytest.raises(TuneforgeError) as err:
        resolve_method(MethodConfig(name="qlora"), task="causal-lm")
    assert str(err.value) == (
        "config key method.name: qlora needs the bitsandbytes package, which is not installed\n"
        "  fix: pip install 'tuneforge[gpu]', or use method.name=lora"
    )


def test_other_methods_load_the_base_unchanged() -> None:
    for name in METHODS:
        if name != "qlora":
            assert load_kwargs(MethodConfig(name=name)) == {}


def test_lora_adapts_every_linear_layer_but_the_lm_head(tiny_llama: Path) -> None:
    model = _apply(tiny_llama, {"name": "lora"}, "causal-lm")
    adapted = sorted(
        name.removeprefix("base_model.model.model.")
        for name, m in model.named_modules()
        if hasattr(m, "lora_A")
    )
    assert adapted == [
        f"layers.{i}.{part}"
        for i in (0, 1)
        for part in (
            "mlp.down_proj",
            "mlp.gate_proj",
            "mlp.up_proj",
            "self_attn.k_proj",
            "self_attn.o_proj",
            "self_attn.q_proj",
            "self_attn.v_proj",
        )
    ]
    peft_config = model.peft_config["default"]
    assert (peft_config.r, peft_config.lora_alpha, peft_config.lora_dropout) == (16, 32, 0.05)


def _lora_params(shapes: list[tuple[int, int]], r: int) -> int:
    return sum(r * (fan_in + fan_out) for fan_in, fan_out in shapes)


# The tiny Llama (tests/tiny.py): hidden 32, MLP 64, 2 layers, 4 heads of 8, 2 KV heads, vocabulary 388.
LLAMA_TOTAL = 43_168
LLAMA_LINEARS = [(32, 32), (32, 16), (32, 16), (32, 32), (32, 64), (32, 64), (64, 32)]  # q k v o gate up down


@pytest.mark.parametrize(
    ("method", "trainable", "total"),
    [
        ("full", LLAMA_TOTAL, LLAMA_TOTAL),
        ("lora", 2 * _lora_params(LLAMA_LINEARS, 16), LLAMA_TOTAL + 2 * _lora_params(LLAMA_LINEARS, 16)),
        # DoRA adds a magnitude vector per output feature of each adapted layer.
        (
            "dora",
            2 * (_lora_params(LLAMA_LINEARS, 16) + 256),
            LLAMA_TOTAL + 2 * (_lora_params(LLAMA_LINEARS, 16) + 256),
        ),
        # IA³ scales k (16), v (16) outputs and the down projection's input (64), per layer.
        ("ia3", 2 * (16 + 16 + 64), LLAMA_TOTAL + 2 * (16 + 16 + 64)),
        ("prompt-tuning", 20 * 32, LLAMA_TOTAL + 20 * 32),
        # 20 positions x 2 layers x (key + value) x 2 KV heads x 8.
        ("prefix-tuning", 20 * 2 * 2 * 16, LLAMA_TOTAL + 20 * 2 * 2 * 16),
    ],
)
def test_trainable_and_total_parameters(tiny_llama: Path, method: str, trainable: int, total: int) -> None:
    assert count_parameters(_apply(tiny_llama, {"name": method}, "causal-lm")) == (trainable, total)


def test_describe_parameters() -> None:
    assert describe_parameters(16_384, 59_552) == "trainable parameters: 16,384 of 59,552 (27.51%)"


@pytest.mark.parametrize("method", ["lora", "dora", "ia3", "prompt-tuning"])
def test_the_encoder_head_trains_with_the_adapter(tiny_bert: Path, method: str) -> None:
    model = _apply(tiny_bert, {"name": method}, "classification")
    head = sorted(n for n, p in model.named_parameters() if p.requires_grad and "classifier" in n)
    assert [n.split("classifier.")[1] for n in head] == [
        "modules_to_save.default.bias",
        "modules_to_save.default.weight",
    ]


@pytest.mark.parametrize("method", ["lora", "dora", "ia3"])
def test_the_decoder_head_trains_with_the_adapter(tiny_llama: Path, method: str) -> None:
    model = _apply(tiny_llama, {"name": method}, "regression")
    head = [n for n, p in model.named_parameters() if p.requires_grad and ".score." in n]
    assert head == ["base_model.model.score.modules_to_save.default.weight"]
    assert model.base_model.model.score.modules_to_save["default"].out_features == 1


def test_prompt_tuning_refuses_decoder_heads(tiny_llama: Path) -> None:
    with pytest.raises(TuneforgeError) as err:
        _apply(tiny_llama, {"name": "prompt-tuning"}, "classification")
    assert str(err.value) == (
        "method.name: prompt-tuning cannot train a classification head on the decoder "
        "LlamaForSequenceClassification: the head would read padding instead of each text's last token\n"
        "  fix: use lora, dora or ia3 for decoder heads "
        "(prompt-tuning works for causal-lm and for encoder heads)"
    )


@pytest.mark.parametrize(("model", "task"), [("tiny_llama", "classification"), ("tiny_bert", "regression")])
def test_prefix_tuning_refuses_heads_that_take_no_prefix(
    model: str, task: str, request: pytest.FixtureRequest
) -> None:
    import peft
    import transformers

    with pytest.raises(TuneforgeError) as err:
        _apply(request.getfixturevalue(model), {"name": "prefix-tuning"}, task)
    arch = "LlamaForSequenceClassification" if model == "tiny_llama" else "BertForSequenceClassification"
    assert str(err.value).startswith(
        f"method.name: prefix-tuning cannot train a {task} head on {arch} with transformers "
        f"{transformers.__version__} and peft {peft.__version__}: the model takes no `past_key_values`"
    )


def test_an_encoder_cannot_be_a_causal_lm(tiny_bert: Path) -> None:
    with pytest.raises(TuneforgeError) as err:
        load_model(ModelConfig(name=str(tiny_bert), task="causal-lm"))
    assert str(err.value) == (
        f"model.task: {tiny_bert} is an encoder (bert); it cannot be fine-tuned as a causal language model\n"
        "  fix: use model.task=classification or regression with this model, or a decoder model "
        "(e.g. builtin:smollm2-135m-instruct) for causal-lm"
    )


def test_unknown_target_modules_are_a_user_error(tiny_llama: Path) -> None:
    with pytest.raises(TuneforgeError) as err:
        _apply(tiny_llama, {"name": "lora", "target_modules": ["query"]}, "causal-lm")
    assert str(err.value).startswith("method.target_modules: lora cannot be applied to LlamaForCausalLM: ")
