"""The vLLM engine on a CUDA machine: same answers as the transformers engine for greedy LoRA requests."""

from __future__ import annotations

import asyncio
import importlib.util
from pathlib import Path

import pytest
import torch

from tests.integration.test_serve import HELLO, make_runs
from tuneforge.config import ServeConfig
from tuneforge.models.generate import GenerationSettings
from tuneforge.serve.engine import resolve_targets

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="needs vLLM (tuneforge[vllm])"),
]


def test_vllm_lora_answers_like_the_transformers_engine(tmp_path: Path, tiny_llama: Path) -> None:
    from tuneforge.serve.engine_transformers import TransformersEngine
    from tuneforge.serve.engine_vllm import VllmEngine

    runs = make_runs(tmp_path, tiny_llama)
    served = resolve_targets([str(runs["support"]), str(runs["sales"])])
    settings = GenerationSettings(max_new_tokens=8)

    def answers(engine) -> dict[str, str]:
        async def go() -> dict[str, str]:
            out = {}
            for name in ("support", "sales"):
                prompt = engine.encode_chat(name, HELLO)
                out[name] = (await engine.generate(name, prompt, settings)).text
            return out

        return asyncio.run(go())

    hf = TransformersEngine(served, ServeConfig())
    expected = answers(hf)
    hf.close()
    vllm_engine = VllmEngine(resolve_targets([str(runs["support"]), str(runs["sales"])]), ServeConfig())
    try:
        assert answers(vllm_engine) == expected
    finally:
        vllm_engine.close()
