"""The catalog: its numbers against real configs, parameter counts from config alone, the filters, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tuneforge import builtin
from tuneforge.config import MethodConfig, ModelConfig
from tuneforge.models.catalog import catalog, find, parse_count, select, to_config
from tuneforge.models.shape import build_meta

ARCH_KEYS = {
    "layers": "num_hidden_layers",
    "hidden": "hidden_size",
    "intermediate": "intermediate_size",
    "heads": "num_attention_heads",
    "vocab": "vocab_size",
    "context": "max_position_embeddings",
}


def _meta_count(config, encoder: bool) -> int:
    import torch
    from transformers import AutoModel, AutoModelForCausalLM

    with torch.device("meta"):
        model = (AutoModel if encoder else AutoModelForCausalLM).from_config(config)
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    ("entry", "name"), [("smollm2-135m", "smollm2-135m-instruct"), ("minilm-l6", "minilm-l6")]
)
def test_builtin_entries_match_their_config_json(entry: str, name: str) -> None:
    from transformers import AutoConfig

    folder = builtin.resolve(builtin.PREFIX + name)
    real = json.loads((Path(folder) / "config.json").read_text())
    m = find(entry)
    assert m is not None and find(builtin.PREFIX + name) is m
    for ours, theirs in ARCH_KEYS.items():
        assert getattr(m, ours) == real[theirs], ours
    assert m.kv_heads == real.get("num_key_value_heads", real["num_attention_heads"])
    # The catalog's count, the count of the model built from the real config.json, and the count of the model
    # rebuilt from the catalog's numbers are the same number.
    encoder = m.kind == "encoder"
    assert _meta_count(AutoConfig.from_pretrained(folder), encoder) == m.params
    assert _meta_count(to_config(m), encoder) == m.params


def test_minilm_count_from_config_equals_the_loaded_model() -> None:
    from transformers import AutoModel

    folder = builtin.resolve("builtin:minilm-l6")
    loaded = AutoModel.from_pretrained(folder)
    assert sum(p.numel() for p in loaded.parameters()) == find("minilm-l6").params == 22_713_216


@pytest.mark.parametrize("method", ["full", "lora"])
def test_sizing_from_config_equals_the_instantiated_tiny_models(
    tiny_llama: Path, tiny_bert: Path, method: str
) -> None:
    from tuneforge.models import load_model
    from tuneforge.models.methods import apply_method, count_parameters

    for path, task in ((tiny_llama, "causal-lm"), (tiny_bert, "classification")):
        cfg = ModelConfig(name=str(path), task=task)
        shape = build_meta(cfg, MethodConfig(name=method), labels=3)
        real = apply_method(load_model(cfg, labels=["a", "b", "c"]), MethodConfig(name=method), task)
        assert (shape.trainable, shape.total) == count_parameters(real), (path.name, method)


def test_every_catalog_entry_rebuilds_its_parameter_count() -> None:
    """Architecture numbers and parameter counts are typed separately: a typo in either shows here."""
    wrong = {}
    for m in catalog():
        n = _meta_count(to_config(m), m.kind == "encoder")
        if abs(n - m.params) > 1e-3 * m.params:
            wrong[m.name] = (m.params, n)
    assert not wrong


def test_filters() -> None:
    small = select(max_params=parse_count("1B"))
    assert {m.name for m in small} >= {"smollm2-135m", "qwen2.5-0.5b", "minilm-l6"}
    assert all(m.params <= 1e9 for m in small) and "llama-3.1-8b" not in {m.name for m in small}
    commercial = {m.name for m in select(commercial=True)}
    assert "qwen2.5-3b" not in commercial and "qwen2.5-7b" in commercial
    assert all(m.kind == "decoder" for m in select(task="causal-lm"))
    assert {m.license for m in select(license="MIT")} == {"mit"}
    assert parse_count("500M") == 5e8 and parse_count("1.5e9") == 1.5e9


def test_models_all_cli_lists_the_filtered_catalog(cli) -> None:
    done = cli("models", "--all", "--max-params", "400M", "--task", "classification", "--commercial")
    assert done.returncode == 0, done.stderr
    assert "all-MiniLM-L12-v2" in done.stdout and "ModernBERT-large" in done.stdout
    assert "Llama-3.1-8B" not in done.stdout and "SmolLM2-1.7B" not in done.stdout
    bad = cli("models", "--all", "--task", "summarise")
    assert bad.returncode != 0 and "unknown task 'summarise'" in bad.stderr
