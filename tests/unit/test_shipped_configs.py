"""Every shipped YAML run config loads, and the quickstart config file matches the quickstart command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tuneforge.config import config_from_dict, load_config
from tuneforge.quickstart import QUICKSTART

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
RUN_CONFIGS = sorted(p for p in CONFIGS.glob("*.yaml"))


def test_there_are_shipped_configs() -> None:
    assert len(RUN_CONFIGS) >= 2


@pytest.mark.parametrize("path", RUN_CONFIGS, ids=lambda p: p.name)
def test_shipped_config_loads(path: Path) -> None:
    cfg, _ = load_config(path)
    if cfg.method.name:
        from tuneforge.models import resolve_method

        resolve_method(cfg.method)


def test_quickstart_yaml_is_the_quickstart() -> None:
    from_file = config_from_dict(yaml.safe_load((CONFIGS / "quickstart.yaml").read_text()))
    assert from_file == config_from_dict(QUICKSTART)


def test_the_chat_example_data_is_what_its_script_writes() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "make_support_chat", CONFIGS / "data" / "make_support_chat.py"
    )
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    expected = "".join(json.dumps(r) + "\n" for r in script.conversations())
    assert (CONFIGS / "data" / "support-chat.jsonl").read_text(encoding="utf-8") == expected


def test_the_chat_example_prepares_every_conversation(tiny_llama: Path, tmp_path: Path) -> None:
    from tuneforge.data import prepare_dataset

    cfg, _ = load_config(
        CONFIGS / "chat-sft.yaml",
        [
            f"data.path={CONFIGS / 'data' / 'support-chat.jsonl'}",
            f"data.output_dir={tmp_path / 'ds'}",
            "model.max_length=1024",  # the tiny tokenizer cuts text into ~3x more tokens than SmolLM2's
        ],
    )
    assert (cfg.data.format, cfg.model.task, cfg.method.name) == ("chat", "causal-lm", "lora")
    ds = prepare_dataset(cfg.data, model=cfg.model.model_copy(update={"name": str(tiny_llama)}))
    assert ds.format == "chat"
    assert ds.manifest["counts"]["written"] == 80
    first = ds.records("train")[0]["messages"]
    assert [m["role"] for m in first][:3] == ["system", "user", "assistant"]
