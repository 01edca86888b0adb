"""The vLLM engine on a CUDA machine: the server's own integration tests, run against `serve.engine: vllm`.

The tests imported below are the CPU suite's, collected here a second time against this module's `world`:
a server on vLLM serving two LoRA runs of one base (vLLM's LoRA path). The base is a tiny Llama with head
size 32 (vLLM's attention kernels refuse smaller heads), trained and served in float32 so greedy answers can
equal the transformers engine's. TUNEFORGE_TEST_ENGINE=transformers runs this module on CPU, checking that
the tests' expectations hold for this model whatever the engine.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import torch

from tests.integration import test_serve as cpu
from tests.integration.test_serve import (  # noqa: F401  (collected again, here)
    test_chat_answers_like_the_adapter_loaded_directly,
    test_feedback_must_name_a_logged_request_even_one_still_streaming,
    test_keys_missing_invalid_and_revoked_are_401_health_is_open,
    test_limits_answer_with_clear_4xx,
    test_malformed_bodies_are_422_never_500,
    test_n_choices_with_a_seed_are_reproducible,
    test_stop_string_is_honoured_and_trimmed,
    test_streamed_chunks_reassemble_the_answer,
    test_two_adapters_on_one_base_answer_differently,
    test_unknown_model_is_an_openai_404,
)
from tests.tiny import make_llama

ENGINE = os.environ.get("TUNEFORGE_TEST_ENGINE", "vllm")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(ENGINE == "vllm" and not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.skipif(
        ENGINE == "vllm" and importlib.util.find_spec("vllm") is None, reason="needs vLLM (tuneforge[vllm])"
    ),
]


def make_llama_h32(out: Path) -> Path:
    """tests.tiny.make_llama's model with head size 32 (hidden 128, 4 heads, 2 KV heads): vLLM's Triton
    attention refuses heads under 32."""
    return make_llama(out, hidden=128)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    from tuneforge.serve.keys import KeyFile

    root = tmp_path_factory.mktemp("serve-vllm")
    base = make_llama_h32(root / "tiny-llama")  # the CPU suite's base name: its tests call it by name
    runs = cpu.make_runs(root, base, dtype="float32")
    keys = KeyFile(root / "keys.json")
    key = keys.create("alice")
    (root / "serve.yaml").write_text(cpu.SERVE_CONFIG.format(root=root) + f"  engine: {ENGINE}\n")
    server = cpu.Server(
        root, str(runs["support"]), str(runs["sales"]), "--config", "serve.yaml", "--keys", str(keys.path)
    )
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0, timeout=120)
    yield {"root": root, "runs": runs, "server": server, "client": client, "key": key, "keys": keys}
    assert server.stop() == 0


def test_the_vllm_server_serves_the_lora_runs_and_their_base(world) -> None:
    assert {m.id for m in world["client"].models.list().data} == {"tiny-llama", "support", "sales"}
    if ENGINE == "vllm":
        assert "vllm" in world["server"].log.read_text().lower()  # vLLM's own log: it is vLLM answering
