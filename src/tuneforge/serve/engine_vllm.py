"""The vLLM engine (CUDA, `pip install 'tuneforge[vllm]'`): paged attention and vLLM's own LoRA serving.

LoRA runs of one base are served as vLLM LoRA adapters (a `LoRARequest` per request); runs vLLM cannot apply
as adapters (DoRA, IA3, prompt/prefix tuning, full fine-tunes, adapters with trained embeddings) must be
exported merged first (`tuneforge export-model RUN --merge`) and served as a model folder. Classification
heads stay on the transformers engine. Written against vLLM's V1 `AsyncLLM` (`vllm.AsyncLLMEngine` is its
alias); everything that does not need vLLM itself (which runs it can serve, the engine and sampling arguments,
the answer's accounting) is a plain function, checked before anything heavy is loaded.
"""

from __future__ import annotations

import contextlib
import importlib.util
import itertools
import json
import os
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneforge.config import ModelConfig, ServeConfig
from tuneforge.errors import TuneforgeError
from tuneforge.models.generate import FinishReason, Generation, GenerationSettings, StepEvent
from tuneforge.serve.engine import ServedModel, base_model_name, finished
from tuneforge.serve.protocol import APIError

LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
"""The only max_lora_rank values vLLM accepts (vllm.config.lora.MaxLoRARanks)."""
LORA_METHODS = ("lora", "qlora")
# vLLM's peft_helper accepts these init_lora_weights strings: they only set the adapter's starting weights.
PLAIN_INITS = ("gaussian", "eva", "orthogonal", "mica", "lora_ga")


def require_vllm(cfg: ServeConfig) -> None:
    """serve.engine=vllm needs vLLM installed and enough CUDA GPUs: one clear error otherwise."""
    if importlib.util.find_spec("vllm") is None:
        raise TuneforgeError(
            "serve.engine=vllm needs vLLM, which is not installed",
            where="serve.engine",
            fix="pip install 'tuneforge[vllm]' on a CUDA machine, or use serve.engine=transformers",
        )
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus == 0:
        raise TuneforgeError(
            "serve.engine=vllm needs a CUDA GPU and this machine has none",
            where="serve.engine",
            fix="use serve.engine=transformers (CPU or GPU)",
        )
    if gpus < cfg.tensor_parallel_size:
        raise TuneforgeError(
            f"serve.tensor_parallel_size={cfg.tensor_parallel_size} but this machine has {gpus} CUDA GPU(s)",
            where="serve.tensor_parallel_size",
            fix=f"set it to at most {gpus}",
        )


@dataclass
class VllmPlan:
    """What the vLLM engine loads: one base and the LoRA adapters on it."""

    base: str
    adapters: list[ServedModel]
    max_lora_rank: int
    dtype: str


def plan_vllm(served: list[ServedModel]) -> VllmPlan:
    """The served models as vLLM serves them; refuses (saying what to export) what vLLM cannot apply."""
    for s in served:
        merge = (
            f"export it merged (tuneforge export-model {s.run.path if s.run else s.name} --merge --out DIR)"
        )
        if s.kind != "generate":
            raise TuneforgeError(
                f"{s.name} is a classification/regression run; the vllm engine serves generation only",
                where="serve.engine",
                fix="serve head runs with serve.engine=transformers",
            )
        if s.run is not None and s.adapter is None:
            raise TuneforgeError(
                f"{s.name} is a full fine-tune; the vllm engine serves LoRA runs and model folders",
                where="serve.engine",
                fix=f"{merge} and serve DIR, or use serve.engine=transformers",
            )
        if s.adapter is not None:
            problems = lora_problems(s.method, _adapter_config(s))
            if problems:
                raise TuneforgeError(
                    f"{s.name}: vLLM cannot apply this adapter ({'; '.join(problems)})",
                    where="serve.engine",
                    fix=f"{merge} and serve DIR, or use serve.engine=transformers",
                )
    bases = sorted({s.base_path for s in served})
    if len(bases) != 1:
        raise TuneforgeError(
            "the vllm engine serves one base model (and its LoRA runs) per server: " + ", ".join(bases),
            fix="start one server per base",
        )
    adapters = [s for s in served if s.adapter is not None]
    ranks = [adapter_rank(_adapter_config(s)) for s in adapters]
    with_config = [s for s in served if s.config is not None]
    dtype = with_config[0].config.model.dtype if with_config and with_config[0].config else "auto"
    return VllmPlan(bases[0], adapters, lora_rank_limit(ranks), dtype)


def lora_problems(method: str, adapter_config: dict[str, Any]) -> list[str]:
    """What in a PEFT adapter vLLM's LoRA loader refuses or would ignore (vllm/lora/peft_helper.py)."""
    if method not in LORA_METHODS or adapter_config.get("peft_type", "LORA") != "LORA":
        return [f"{method} is not LoRA"]
    problems = []
    if adapter_config.get("use_dora"):
        problems.append("DoRA")
    if adapter_config.get("modules_to_save"):
        problems.append(f"fully trained modules {adapter_config['modules_to_save']}")
    if adapter_config.get("trainable_token_indices"):
        problems.append("trained token embeddings")
    if adapter_config.get("bias", "none") != "none" or adapter_config.get("lora_bias"):
        problems.append("trained biases")
    init = adapter_config.get("init_lora_weights", True)
    if isinstance(init, str) and init.lower() not in PLAIN_INITS:
        problems.append(f"init_lora_weights={init} (it changes the base weights)")
    if adapter_config.get("layer_replication") or adapter_config.get("use_qalora"):
        problems.append("layer replication / QALoRA")
    return problems


def adapter_rank(adapter_config: dict[str, Any]) -> int:
    """The largest rank in an adapter (per-module `rank_pattern` overrides included)."""
    pattern = adapter_config.get("rank_pattern") or {}
    return max([int(adapter_config.get("r", 8)), *(int(r) for r in pattern.values())])


def lora_rank_limit(ranks: Sequence[int]) -> int:
    """vLLM's max_lora_rank for these adapters: the smallest value it accepts that fits them all."""
    need = max(ranks, default=1)
    fits = [v for v in LORA_RANKS if v >= need]
    if not fits:
        raise TuneforgeError(
            f"LoRA rank {need} is above vLLM's largest max_lora_rank ({LORA_RANKS[-1]})",
            where="serve.engine",
            fix="export the run merged (tuneforge export-model RUN --merge --out DIR) and serve DIR",
        )
    return fits[0]


def engine_kwargs(plan: VllmPlan, cfg: ServeConfig) -> dict[str, Any]:
    """vllm.AsyncEngineArgs keyword arguments for a plan."""
    kwargs: dict[str, Any] = {
        "model": plan.base,
        "tensor_parallel_size": cfg.tensor_parallel_size,
        "max_num_seqs": cfg.max_batch_size,
        "dtype": plan.dtype,  # the run's model.dtype; auto: bf16 for float32/bf16 weights, as training used
    }
    if plan.adapters:
        kwargs |= {
            "enable_lora": True,
            "max_loras": len(plan.adapters),  # every adapter can be in one batch
            "max_lora_rank": plan.max_lora_rank,
        }
    return kwargs


def sampling_kwargs(settings: GenerationSettings) -> dict[str, Any]:
    """vllm.SamplingParams keyword arguments for one answer (the app asks once per choice, each seeded)."""
    return {
        "n": 1,
        "max_tokens": settings.max_new_tokens,
        "temperature": settings.temperature,  # 0: greedy
        "top_p": settings.top_p,
        "stop": list(settings.stop) or None,
        "include_stop_str_in_output": False,  # the stop string is not part of the text, as with transformers
        "seed": settings.seed,
        "skip_special_tokens": True,
    }


def generation_of(
    prompt_tokens: int, token_ids: Sequence[int], text: str, finish_reason: str | None, stop_reason: Any
) -> Generation:
    """A finished vLLM CompletionOutput as the transformers engine reports it.

    vLLM keeps the EOS/stop token that ended the answer in `token_ids` (stop_reason None or that token's id);
    ours counts it in completion_tokens but leaves it out of the ids. A stop string's tokens stay (its text is
    trimmed), as ours.
    """
    if finish_reason not in ("stop", "length", "repetition"):
        raise RuntimeError(f"vLLM ended the request without an answer (finish_reason={finish_reason})")
    reason: FinishReason = "length" if finish_reason == "length" else "stop"
    ids = [int(t) for t in token_ids]
    if finish_reason == "stop" and not isinstance(stop_reason, str) and ids:
        ids = ids[:-1]
    return Generation(ids, text, reason, prompt_tokens, len(token_ids))


def _adapter_config(s: ServedModel) -> dict[str, Any]:
    path = Path(s.path) / "adapter_config.json"
    try:
        config: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise TuneforgeError(
            f"cannot read {path} ({err})", fix="retrain the run, or export it merged"
        ) from None
    return config


class VllmEngine:
    """Engine protocol over vLLM's `AsyncLLM`."""

    def __init__(self, served: list[ServedModel], cfg: ServeConfig) -> None:
        require_vllm(cfg)
        plan = plan_vllm(served)
        # vLLM logs to stdout by default; the server's stdout carries its own "serving ..." line.
        os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
        import vllm
        from vllm.lora.request import LoRARequest

        try:
            from vllm.exceptions import VLLMClientError

            self.client_error: type[Exception] = VLLMClientError
        except ImportError:  # vLLM before its own exception types: request errors were ValueErrors
            self.client_error = ValueError
        self.llm = vllm.AsyncLLMEngine.from_engine_args(vllm.AsyncEngineArgs(**engine_kwargs(plan, cfg)))
        self.sampling = vllm.SamplingParams
        self.lora = {s.name: LoRARequest(s.name, i + 1, s.path) for i, s in enumerate(plan.adapters)}
        self.models = {s.name: s for s in served}
        self.tokenizers = {s.name: _tokenizer(s) for s in served}  # each run's own (its chat template)
        if plan.adapters:
            first = plan.adapters[0]
            name = base_model_name(first)
            if name not in self.models:
                self.models[name] = ServedModel(name, "generate", path=plan.base, base_path=plan.base)
                assert first.config is not None
                self.tokenizers[name] = _tokenizer(self.models[name], first.config.model)
        self.ids = itertools.count()
        self.active = 0

    def encode_chat(self, model: str, messages: list[dict[str, str]]) -> list[int]:
        from tuneforge.models.encode import encode_prompt

        return encode_prompt(self.tokenizers[model], messages)

    def encode_text(self, model: str, text: str) -> list[int]:
        return list(self.tokenizers[model](text)["input_ids"])

    def context_length(self, model: str) -> int:
        config = getattr(self.llm, "model_config", None)  # V1's AsyncLLM; vLLM's older engine kept it below
        return int((config or self.llm.engine.model_config).max_model_len)

    def queue_depth(self) -> int:
        return self.active

    async def generate(self, model: str, prompt: list[int], settings: GenerationSettings) -> Generation:
        return await finished(
            self.stream(model, prompt, settings), "vLLM ended the request without a final output"
        )

    async def stream(
        self, model: str, prompt: list[int], settings: GenerationSettings
    ) -> AsyncIterator[StepEvent]:
        params = self.sampling(**sampling_kwargs(settings))
        rid = f"tf-{next(self.ids)}"
        sent = ""
        self.active += 1
        outputs = self.llm.generate(
            {"prompt_token_ids": prompt}, params, rid, lora_request=self.lora.get(model)
        )
        try:
            # Closing vLLM's generator (this one closed or cancelled: the client went away) makes vLLM abort
            # the request, so it stops generating.
            async with contextlib.aclosing(outputs):
                async for out in outputs:
                    c = out.outputs[0]
                    delta, sent = c.text[len(sent) :], c.text  # cumulative text: the new part
                    done = None
                    if out.finished:
                        done = generation_of(len(prompt), c.token_ids, c.text, c.finish_reason, c.stop_reason)
                    yield StepEvent(rid, delta, None, done)
        except self.client_error as err:  # a request vLLM refuses (e.g. too long for its max_model_len)
            raise APIError(400, str(err), code="invalid_request") from None
        finally:
            self.active -= 1

    async def classify(self, model: str, texts: list[str]) -> list[dict[str, float]]:
        raise TuneforgeError("the vllm engine does not serve classification heads", where="serve.engine")

    def close(self) -> None:
        self.llm.shutdown()


def _tokenizer(s: ServedModel, base_config: ModelConfig | None = None) -> Any:
    """The tokenizer the transformers engine would use for this model (a run's own carries its template)."""
    from tuneforge.models import load_tokenizer

    if s.config is not None and s.adapter is not None:
        return load_tokenizer(s.config.model, s.path)
    return load_tokenizer(base_config or ModelConfig(name=s.path), s.path)
