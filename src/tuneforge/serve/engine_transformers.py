"""The transformers engine: every model call on one scheduler thread, continuous batching per adapter.

Adapters of several runs on one base live in one PEFT model (loaded once). Each adapter (and the base) has its
own `DecodeBatch`; the scheduler steps the non-empty ones in turn, switching with `set_adapter` (or
`disable_adapter` for the base), so concurrent requests for one model share one forward per decoding step.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import queue
import threading
import traceback
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from tuneforge.config import ModelConfig, ServeConfig
from tuneforge.errors import TuneforgeError
from tuneforge.models.encode import encode_prompt
from tuneforge.models.generate import (
    DecodeBatch,
    Generation,
    GenerationSettings,
    StepEvent,
    generate,
    is_prompt_learning,
)
from tuneforge.models.runs import PROMPT_LEARNING
from tuneforge.serve.engine import ServedModel, base_model_name, finished


@dataclass
class _Slot:
    """A served name bound to a loaded model (shared between the adapters of one base)."""

    served: ServedModel
    model: Any
    tokenizer: Any
    batch: DecodeBatch | WholeAnswers | None


@dataclass
class _Waiting:
    request_id: Any
    prompt: list[int]
    settings: GenerationSettings


class WholeAnswers:
    """DecodeBatch's interface for prompt/prefix-tuned models, answered through PEFT's generate.

    PEFT re-injects the virtual tokens at every step, which the cached engine cannot do; such requests are
    batched per step (same settings together) and each answer arrives as one event (one streamed chunk).
    """

    def __init__(self, model: Any, tokenizer: Any, *, max_batch_size: int) -> None:
        self.model, self.tokenizer, self.max_batch_size = model, tokenizer, max_batch_size
        self.pending: list[_Waiting] = []
        self.rows: list[_Waiting] = []

    def __len__(self) -> int:
        return len(self.pending)

    def add(self, request_id: Any, prompt: list[int], settings: GenerationSettings) -> None:
        self.pending.append(_Waiting(request_id, prompt, settings))

    def cancel(self, request_id: Any) -> None:
        self.pending = [w for w in self.pending if w.request_id != request_id]

    def reset(self) -> list[Any]:
        ids = [w.request_id for w in self.pending]
        self.pending = []
        return ids

    def step(self) -> list[StepEvent]:
        same = [w for w in self.pending if w.settings == self.pending[0].settings][: self.max_batch_size]
        self.pending = [w for w in self.pending if w not in same]
        return self._answer(same)

    def _answer(self, same: list[_Waiting]) -> list[StepEvent]:
        """Answers of one group; if the group fails, each request alone, so one that raises fails alone."""
        try:
            gens = generate(self.model, self.tokenizer, [w.prompt for w in same], same[0].settings)
        except Exception as err:
            if len(same) == 1:
                return [StepEvent(same[0].request_id, "", None, error=err)]
            return [event for w in same for event in self._answer([w])]
        return [StepEvent(w.request_id, g.text, None, g) for w, g in zip(same, gens, strict=True)]


class _Waiter:
    """Hands a request's events from the scheduler thread to its asyncio task."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[Any] = asyncio.Queue()

    def put(self, item: Any) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, item)


class TransformersEngine:
    """Engine protocol over transformers + PEFT models."""

    def __init__(self, served: list[ServedModel], cfg: ServeConfig) -> None:
        self.cfg = cfg
        self.slots: dict[str, _Slot] = {}
        self._load(served)
        self.models = {name: slot.served for name, slot in self.slots.items()}
        self.inbox: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self.waiters: dict[int, _Waiter] = {}
        self.ids = itertools.count()
        self.stopping = False
        self.thread = threading.Thread(target=self._run, name="engine", daemon=True)
        self.thread.start()

    # -- loading --------------------------------------------------------------------------------------------

    def _load(self, served: list[ServedModel]) -> None:
        from tuneforge.models import load_model, load_tokenizer

        # Prompt/prefix tuning cannot share a PEFT model with weight adapters: those runs load on their own.
        adapters = [
            s
            for s in served
            if s.kind == "generate" and s.adapter is not None and s.method not in PROMPT_LEARNING
        ]
        bases = sorted({s.base_path for s in adapters})
        if len(bases) > 1:
            raise TuneforgeError(
                "the adapter runs are trained on different base models: " + ", ".join(bases),
                fix="serve runs of one base per server (start one server per base)",
            )
        if adapters:
            from peft import PeftModel

            first = adapters[0]
            assert first.config is not None and first.run is not None
            base = load_model(first.config.model, path=first.base_path, method=first.config.method)
            model: Any = PeftModel.from_pretrained(base, first.path, adapter_name=str(first.adapter))
            for s in adapters[1:]:
                model.load_adapter(s.path, adapter_name=s.adapter)
            model.eval()
            base_name = base_model_name(first)
            base_tok = load_tokenizer(first.config.model, first.base_path)
            if base_name not in {s.name for s in served}:
                self._add(ServedModel(base_name, "generate", path=first.base_path), model, base_tok)
            for s in adapters:
                assert s.config is not None
                self._add(s, model, load_tokenizer(s.config.model, s.path))
        for s in served:
            if s in adapters:
                continue
            if s.run is not None and s.config is not None:
                from tuneforge.models.runs import load_tuned

                m, tok = load_tuned(s.run, s.config)  # a full fine-tune, or a head run
            else:
                mcfg = ModelConfig(name=s.path)
                tok = load_tokenizer(mcfg, s.path)
                m = load_model(mcfg, path=s.path)
            self._add(s, m.eval(), tok)

    def _add(self, served: ServedModel, model: Any, tok: Any) -> None:
        batch: Any = None
        if served.kind == "generate" and is_prompt_learning(model):
            batch = WholeAnswers(model, tok, max_batch_size=self.cfg.max_batch_size)
        elif served.kind == "generate":
            batch = DecodeBatch(model, tok, max_batch_size=self.cfg.max_batch_size)
        self.slots[served.name] = _Slot(served, model, tok, batch)

    # -- Engine protocol ------------------------------------------------------------------------------------

    def encode_chat(self, model: str, messages: list[dict[str, str]]) -> list[int]:
        return encode_prompt(self.slots[model].tokenizer, messages)

    def encode_text(self, model: str, text: str) -> list[int]:
        return list(self.slots[model].tokenizer(text)["input_ids"])

    def context_length(self, model: str) -> int:
        cfg = self.slots[model].model.config
        return int(getattr(cfg, "max_position_embeddings", 0) or 0)

    def queue_depth(self) -> int:
        return sum(len(b) for b in self._batches())

    async def generate(self, model: str, prompt: list[int], settings: GenerationSettings) -> Generation:
        return await finished(
            self.stream(model, prompt, settings), "the engine stopped before the answer was finished"
        )

    async def stream(
        self, model: str, prompt: list[int], settings: GenerationSettings
    ) -> AsyncIterator[StepEvent]:
        slot = self.slots[model]
        assert slot.batch is not None
        batch = slot.batch
        rid = next(self.ids)
        waiter = _Waiter(asyncio.get_running_loop())
        self.waiters[rid] = waiter

        def add() -> None:
            try:
                batch.add(rid, prompt, settings)
            except Exception as err:  # a request the batch refuses fails alone
                waiter.put(err)

        self.inbox.put(add)
        try:
            while True:
                item = await waiter.queue.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.done is not None:
                    return
        finally:
            # Normal end, client gone, or timeout: in the last two the row stops generating at the next step.
            self.waiters.pop(rid, None)
            self.inbox.put(lambda: batch.cancel(rid))

    async def classify(self, model: str, texts: list[str]) -> list[dict[str, float]]:
        slot = self.slots[model]
        future: asyncio.Future[list[dict[str, float]]] = asyncio.get_running_loop().create_future()
        loop = future.get_loop()

        def job() -> None:
            try:
                result = self._classify(slot, texts)
                loop.call_soon_threadsafe(future.set_result, result)
            except Exception as err:  # handed to the request, which reports it as a 500 with its message
                loop.call_soon_threadsafe(future.set_exception, err)

        self.inbox.put(job)
        return await future

    def close(self) -> None:
        self.stopping = True
        self.inbox.put(None)
        self.thread.join(timeout=10)

    # -- the scheduler thread -------------------------------------------------------------------------------

    def _batches(self) -> list[DecodeBatch | WholeAnswers]:
        seen: dict[int, DecodeBatch | WholeAnswers] = {}
        for s in self.slots.values():
            if s.batch is not None:
                seen[id(s.batch)] = s.batch
        return list(seen.values())

    def _run(self) -> None:
        while True:
            busy = any(len(b) for b in self._batches())
            try:
                job = self.inbox.get(block=not busy)
                if job is None:
                    return
                job()
                continue  # take every queued command before the next forward
            except queue.Empty:
                pass
            except Exception:  # a bug in one command must not stop the thread every request depends on
                traceback.print_exc()
                continue
            for slot in self.slots.values():
                if slot.batch is not None and len(slot.batch):
                    try:
                        self._step(slot)
                    except Exception:  # nor a bug in a step: the requests it concerned get no answer
                        traceback.print_exc()

    def _step(self, slot: _Slot) -> None:
        assert slot.batch is not None
        try:
            with self._adapter(slot):
                events = slot.batch.step()
        except Exception as err:
            # The batch isolates what one row does (its sampling, its text, its prefill); a failure of the
            # forward they share cannot be pinned on one row: those requests fail, the batch starts clean.
            for rid in slot.batch.reset():
                waiter = self.waiters.get(rid)  # type: ignore[arg-type]
                if waiter is not None:
                    waiter.put(err)
            return
        for event in events:
            waiter = self.waiters.get(event.request_id)  # type: ignore[call-overload]
            if waiter is not None:
                waiter.put(event.error if event.error is not None else event)

    def _adapter(self, slot: _Slot) -> contextlib.AbstractContextManager[Any]:
        """Switch the shared PEFT model to this slot's adapter (or off, for the base)."""
        model, adapter = slot.model, slot.served.adapter
        adapters = getattr(model, "peft_config", {})
        if adapter is not None and adapter in adapters:
            model.set_adapter(adapter)
        elif adapter is None and adapters:
            return model.disable_adapter()  # type: ignore[no-any-return]
        return contextlib.nullcontext()  # a model of its own: nothing to switch

    def _classify(self, slot: _Slot, texts: list[str]) -> list[dict[str, float]]:
        import torch

        s, tok = slot.served, slot.tokenizer
        if hasattr(slot.model, "text_logits"):  # a head run reads whole texts, in its training windows
            logits = torch.tensor(slot.model.text_logits(texts, self.cfg.max_batch_size))  # (N, C)
        else:
            max_len = s.config.model.max_length if s.config is not None else 512
            enc = tok(texts, truncation=True, max_length=max_len, padding=True, return_tensors="pt")
            device = next(slot.model.parameters()).device
            with torch.inference_mode():
                logits = (
                    slot.model(**{k: v.to(device) for k, v in enc.items()}).logits.float().cpu()
                )  # (N, C)
        if not s.labels:  # regression: one value per text
            return [{"value": float(v)} for v in logits[:, 0]]
        probs = torch.softmax(logits, dim=-1)
        return [{label: float(p[i]) for i, label in enumerate(s.labels)} for p in probs]
