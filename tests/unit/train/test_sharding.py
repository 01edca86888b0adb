"""What FSDP (`train.fsdp`) refuses, and which modules it shards one at a time.

Sharded training itself runs in tests/integration/test_distributed.py (2 processes over gloo).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.train.tiny_runs import make_config
from tuneforge.errors import TuneforgeError
from tuneforge.train.sharding import block_classes, check_fsdp


def where(key: str) -> str:
    return f"cfg.yaml ({key})"


def test_a_sharded_lora_run_on_two_processes_is_accepted(tmp_path: Path, tiny_llama: Path) -> None:
    check_fsdp(make_config(tmp_path, tiny_llama, {"train.fsdp": True}), 2, where)
    check_fsdp(make_config(tmp_path, tiny_llama), 1, where)  # off: nothing to check


@pytest.mark.parametrize(
    ("overrides", "processes", "key", "message"),
    [
        (
            {"train.fsdp": True},
            1,
            "train.fsdp",
            "shards the model over several processes, and this run has one",
        ),
        ({"train.fsdp": True, "method": {"name": "qlora"}}, 2, "train.fsdp", "method qlora cannot train"),
        ({"train.fsdp": True, "method": {"name": "prompt-tuning"}}, 2, "train.fsdp", "prompt-tuning cannot"),
        ({"train.fsdp": True, "method": {"name": "prefix-tuning"}}, 2, "train.fsdp", "prefix-tuning cannot"),
        ({"train.fsdp": True, "train.mixed_precision": "fp16"}, 2, "train.mixed_precision", "fp16 with"),
        ({"train.fsdp_cpu_offload": True}, 2, "train.fsdp_cpu_offload", "train.fsdp is off"),
    ],
)
def test_what_fsdp_cannot_do_is_refused_up_front(
    tmp_path: Path, tiny_llama: Path, overrides: dict, processes: int, key: str, message: str
) -> None:
    cfg = make_config(tmp_path, tiny_llama, overrides)
    with pytest.raises(TuneforgeError, match=message) as err:
        check_fsdp(cfg, processes, where)
    assert err.value.where == where(key)
    assert err.value.fix


def test_the_units_are_the_transformer_blocks_under_an_adapter(tiny_llama: Path) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, BertConfig, BertForSequenceClassification

    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    assert block_classes(model) == {"LlamaDecoderLayer"}
    assert block_classes(get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"]))) == {
        "LlamaDecoderLayer"
    }
    bert = BertForSequenceClassification(
        BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2)
    )
    assert "BertLayer" in block_classes(bert)


def test_every_method_declares_whether_it_can_be_sharded() -> None:
    """The method file decides (one file per method); train/ keeps no list of method names."""
    from tuneforge.models.methods import METHODS

    for name, module in METHODS.items():
        for attr in ("NOT_SHARDABLE", "NOT_DEEPSPEED"):
            assert hasattr(module, attr), f"{name} does not declare {attr}"
    refused = {n for n, m in METHODS.items() if m.NOT_SHARDABLE is not None}
    assert refused == {"qlora", "prompt-tuning", "prefix-tuning", "head"}  # head: no training loop to shard
    assert {n for n, m in METHODS.items() if m.NOT_DEEPSPEED is not None} == {"qlora", "head"}
