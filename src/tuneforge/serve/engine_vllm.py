"""The vLLM engine (CUDA, `pip install 'tuneforge[vllm]'`): paged attention and vLLM's own LoRA serving.

LoRA runs of one base are served as vLLM LoRA adapters (`LoRARequest` per request); runs of methods vLLM
cannot apply as adapters (DoRA, IA3, prompt/prefix tuning, full fine-tunes) must be exported merged first
(`tuneforge export-model RUN --merge`) and served as a model folder. Classification heads stay on the
transformers engine.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from typing import Any

from tuneforge.config import ServeConfig
from tuneforge.errors import TuneforgeError
from tuneforge.models.generate import FinishReason, Generation, GenerationSettings, StepEvent
from tuneforge.serve.engine import ServedModel


def _vllm() -> Any:
    try:
        import vllm
    except ImportError:
        raise TuneforgeError(
            "serve.engine=vllm needs vLLM, which is not installed",
            where="serve.engine",
            fix="pip install 'tuneforge[vllm]' on a CUDA machine, or use serve.engine=transformers",
        ) from None
    import torch

    if not torch.cuda.is_available():
        raise TuneforgeError("the vllm engine needs a CUDA GPU", where="serve.engine", fix="use transformers")
    return vllm


class VllmEngine:
    """Engine protocol over `vllm.AsyncLLMEngine`."""

    def __init__(self, served: list[ServedModel], cfg: ServeConfig) -> None:
        vllm = _vllm()
        from vllm.lora.request import LoRARequest

        for s in served:
            if s.kind != "generate" or (s.run is not None and s.adapter is None):
                raise TuneforgeError(
                    f"{s.name}: the vllm engine serves causal-LM LoRA runs and model folders only",
                    where="serve.engine",
                    fix=f"export it merged (tuneforge export-model {s.name} --merge --out DIR) and serve "
                    "DIR, or use serve.engine=transformers",
                )
            if s.adapter is not None and s.method not in ("lora", "qlora"):
                raise TuneforgeError(
                    f"{s.name} uses {s.method}, which vLLM cannot apply as an adapter",
                    where="serve.engine",
                    fix=f"export it merged (tuneforge export-model {s.name} --merge --out DIR) and serve DIR",
                )
        bases = sorted({s.base_path for s in served})
        if len(bases) != 1:
            raise TuneforgeError(
                "the vllm engine serves one base model (and its LoRA runs) per server: " + ", ".join(bases),
                fix="start one server per base",
            )
        adapters = [s for s in served if s.adapter is not None]
        args = vllm.AsyncEngineArgs(
            model=bases[0],
            enable_lora=bool(adapters),
            max_loras=max(1, len(adapters)),
            max_lora_rank=max([_rank(s) for s in adapters] or [16]),
            tensor_parallel_size=cfg.tensor_parallel_size,
            max_num_seqs=cfg.max_batch_size,
        )
        self.llm = vllm.AsyncLLMEngine.from_engine_args(args)
        self.sampling = vllm.SamplingParams
        self.tokenizer = _tokenizer(bases[0])
        self.lora = {s.name: LoRARequest(s.name, i + 1, s.path) for i, s in enumerate(adapters)}
        self.models = {s.name: s for s in served}
        base_name = bases[0].rstrip("/").rsplit("/", 1)[-1]
        if adapters and base_name not in self.models:
            self.models[base_name] = ServedModel(base_name, "generate", path=bases[0], base_path=bases[0])
        self.ids = itertools.count()
        self.active = 0

    def encode_chat(self, model: str, messages: list[dict[str, str]]) -> list[int]:
        from tuneforge.models.encode import encode_prompt

        return encode_prompt(self.tokenizer, messages)

    def encode_text(self, model: str, text: str) -> list[int]:
        return list(self.tokenizer(text)["input_ids"])

    def context_length(self, model: str) -> int:
        return int(self.llm.engine.model_config.max_model_len) if hasattr(self.llm, "engine") else 0

    def queue_depth(self) -> int:
        return self.active

    async def generate(self, model: str, prompt: list[int], settings: GenerationSettings) -> Generation:
        async for event in self.stream(model, prompt, settings):
            if event.done is not None:
                return event.done
        raise RuntimeError("vLLM ended the request without a final output")

    async def stream(
        self, model: str, prompt: list[int], settings: GenerationSettings
    ) -> AsyncIterator[StepEvent]:
        params = self.sampling(
            max_tokens=settings.max_new_tokens,
            temperature=settings.temperature,
            top_p=settings.top_p,
            stop=settings.stop or None,
            seed=settings.seed,
        )
        rid = f"tf-{next(self.ids)}"
        sent = ""
        self.active += 1
        try:
            async for out in self.llm.generate(
                {"prompt_token_ids": prompt}, params, rid, lora_request=self.lora.get(model)
            ):
                c = out.outputs[0]
                delta, sent = c.text[len(sent) :], c.text
                done = None
                if out.finished:
                    reason: FinishReason = "length" if c.finish_reason == "length" else "stop"
                    done = Generation(list(c.token_ids), c.text, reason, len(prompt), len(c.token_ids))
                yield StepEvent(rid, delta, None, done)
        finally:
            self.active -= 1
            await self.llm.abort(rid)  # a client that went away stops its generation

    async def classify(self, model: str, texts: list[str]) -> list[dict[str, float]]:
        raise TuneforgeError("the vllm engine does not serve classification heads", where="serve.engine")

    def close(self) -> None:
        shutdown = getattr(self.llm, "shutdown", None)
        if callable(shutdown):
            shutdown()


def _rank(s: ServedModel) -> int:
    import json
    from pathlib import Path

    cfg = json.loads((Path(s.path) / "adapter_config.json").read_text(encoding="utf-8"))
    return int(cfg.get("r", 16))


def _tokenizer(path: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)
