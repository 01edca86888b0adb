"""The exported model card's metadata: dumped as YAML (no injection), base_model only as a Hub id."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tuneforge.artifacts import RunDir
from tuneforge.export.model import export_card


def card_meta(tmp_path: Path, base: str, adapter_base: str | None = None) -> tuple[dict, str]:
    run = tmp_path / "run"
    (run / "final").mkdir(parents=True)
    (run / "config.yaml").write_text("{}\n")
    (run / "manifest.json").write_text(json.dumps({"kind": "tuneforge.run", "base_model": base}))
    if adapter_base is not None:
        (run / "final" / "adapter_config.json").write_text(
            json.dumps({"base_model_name_or_path": adapter_base})
        )
    manifest = {"run": str(run), "method": "lora", "merged": True, "probe_max_abs_logit_diff": 0.0}
    text = export_card(RunDir.open(run), manifest)
    assert text.startswith("---\n")
    front, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(front), body


@pytest.mark.parametrize(
    "base", ["/models/base: v2", "/models/base\nlicense: mit\npipeline_tag: evil", "models/x\n---\n# owned"]
)
def test_a_local_base_path_never_reaches_the_metadata(tmp_path: Path, base: str) -> None:
    meta, body = card_meta(tmp_path, base, adapter_base=base)
    assert meta == {"library_name": "transformers", "tags": ["tuneforge", "lora"]}
    assert "# Exported tuneforge run" in body


def test_a_hub_base_is_named_by_its_id(tmp_path: Path) -> None:
    meta, _ = card_meta(
        tmp_path, "builtin:smollm2-135m-instruct", adapter_base="HuggingFaceTB/SmolLM2-135M-Instruct"
    )
    assert meta["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    meta, _ = card_meta(
        tmp_path / "full", "builtin:smollm2-135m-instruct"
    )  # full fine-tune: no adapter config
    assert meta["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    # a whole-string match: `$` alone would let an id with a trailing newline into the card's YAML header
    meta, _ = card_meta(tmp_path / "nl", "builtin:smollm2-135m-instruct", adapter_base="org/name\n")
    assert meta.get("base_model") is None


def test_a_run_path_with_newlines_stays_one_line_of_text(tmp_path: Path) -> None:
    run = tmp_path / "r\n---\nlicense: mit"
    (run / "final").mkdir(parents=True)
    (run / "config.yaml").write_text("{}\n")
    (run / "manifest.json").write_text(json.dumps({"kind": "tuneforge.run", "base_model": "/x"}))
    manifest = {"run": str(run), "method": "full", "merged": False, "probe_max_abs_logit_diff": 0.0}
    text = export_card(RunDir.open(run), manifest)
    assert text.count("\n---\n") == 1 and "license" not in yaml.safe_load(text[4:].split("\n---\n")[0])
