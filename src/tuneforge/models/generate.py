"""One generation engine for evaluation, the server and the playground: batched, KV-cached, per-row stops.

`DecodeBatch` is the step-wise core (continuous batching): requests join and leave a running batch between
steps, one forward per step serves every active row, and each step reports the new text of each row (for
streaming). `generate` is a thin loop over it for a fixed list of prompts.

Why not `model.generate`: it runs a fixed batch to the end (a finished row keeps occupying its slot, a new
request waits for the whole batch), it cannot report per-row text deltas for several streams at once, and
its stop strings are not trimmed from the text. The model forward, the KV cache and the attention masks are
still transformers' own; only the scheduling around them is written here.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from tuneforge.models.detokenize import Detokenizer

if TYPE_CHECKING:
    import torch

FinishReason = Literal["stop", "length"]


@dataclass
class GenerationSettings:
    """How to decode; the same settings give the same tokens for base and tuned models."""

    max_new_tokens: int = 128
    """Most tokens generated per answer."""
    temperature: float = 0.0
    """0 decodes greedily (deterministic); above 0 samples from the softened distribution."""
    top_p: float = 1.0
    """Nucleus sampling: sample only among the most likely tokens whose probabilities add up to top_p."""
    stop: list[str] = field(default_factory=list)
    """Strings that end an answer; the stop string itself is not part of the text."""
    seed: int | None = None
    """Seed of this request's own random generator (sampling is then reproducible whatever the batch)."""


@dataclass
class Generation:
    """One finished answer."""

    token_ids: list[int]
    """Generated tokens (the EOS token that ended it, if any, is left out)."""
    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    """Tokens the model produced, counting the EOS that ended the answer."""


@dataclass
class StepEvent:
    """What one step produced for one request: new text (maybe empty) and, at the end, the Generation."""

    request_id: Hashable
    delta: str
    token_id: int | None
    done: Generation | None = None
    error: Exception | None = None
    """Set when this request failed on its own (it left the batch; the other rows go on)."""


@dataclass
class _Row:
    request_id: Hashable
    prompt: list[int]
    settings: GenerationSettings
    generator: torch.Generator | None
    generated: list[int] = field(default_factory=list)
    emitted: int = 0  # characters of text already reported
    next_token: int = -1  # sampled, not yet fed to the model


def eos_token_ids(model: Any, tokenizer: Any) -> set[int]:
    """Every token id that ends an answer (generation_config may list several, e.g. <|im_end|> and EOS)."""
    ids: set[int] = set()
    gen_cfg = getattr(model, "generation_config", None)
    for source in (getattr(gen_cfg, "eos_token_id", None), getattr(tokenizer, "eos_token_id", None)):
        if isinstance(source, int):
            ids.add(source)
        elif isinstance(source, Iterable):
            ids.update(int(i) for i in source)
    return ids


class DecodeBatch:
    """A running batch of generation requests over one model (one adapter): add, step, cancel.

    Rows are left-padded inside one KV cache; each row carries its own attention mask and position ids, so a
    row's tokens do not depend on which other rows share the batch (up to float rounding of padded matmuls).
    """

    def __init__(self, model: Any, tokenizer: Any, *, max_batch_size: int = 16) -> None:
        if is_prompt_learning(model):
            raise NotImplementedError(
                "prompt/prefix-tuned models add virtual tokens on every forward; use generate() for them"
            )
        self.model = model
        self.tokenizer = tokenizer
        self.detokenizer = Detokenizer(tokenizer)
        self.max_batch_size = max_batch_size
        self.eos = eos_token_ids(model, tokenizer)
        self.pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
        self.max_positions = int(getattr(_config(model), "max_position_embeddings", 0) or 0)
        # The prefill needs only the last position's logits: (B, V) instead of (B, T, V) through the LM head.
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        takes = "logits_to_keep" in inspect.signature(base.forward).parameters
        self.last_logits_only: dict[str, Any] = {"logits_to_keep": 1} if takes else {}
        self.pending: list[_Row] = []
        self.rows: list[_Row] = []
        self.cache: Any = None
        self.mask: torch.Tensor | None = None  # (B, T) 1 for real tokens, 0 for left padding

    def __len__(self) -> int:
        return len(self.pending) + len(self.rows)

    def add(self, request_id: Hashable, prompt: list[int], settings: GenerationSettings) -> None:
        """Queue a request; it joins the batch (prefill) at the next step with a free slot."""
        import torch

        if not prompt:
            raise ValueError("a prompt needs at least one token")
        gen = None
        if settings.temperature > 0:
            gen = torch.Generator()
            if settings.seed is None:
                gen.seed()
            else:
                gen.manual_seed(settings.seed)
        self.pending.append(_Row(request_id, list(prompt), settings, gen))

    def cancel(self, request_id: Hashable) -> None:
        """Drop a request (its client went away); its slot is free from the next step on."""
        self.pending = [r for r in self.pending if r.request_id != request_id]
        keep = [i for i, r in enumerate(self.rows) if r.request_id != request_id]
        if len(keep) != len(self.rows):
            self._select(keep)

    def reset(self) -> list[Hashable]:
        """Drop every request, running or waiting (after a failed shared forward); returns their ids."""
        ids = [r.request_id for r in [*self.rows, *self.pending]]
        self.rows, self.pending, self.cache, self.mask = [], [], None, None
        return ids

    def step(self) -> list[StepEvent]:
        """One decode forward for the running rows, then prefill of waiting requests that fit."""
        import torch

        events: list[StepEvent] = []
        with torch.inference_mode():
            if self.rows:
                events += self._decode()
            room = self.max_batch_size - len(self.rows)
            if room > 0 and self.pending:
                joining, self.pending = self.pending[:room], self.pending[room:]
                events += self._prefill_isolated(joining)
        return events

    def _prefill_isolated(self, joining: list[_Row]) -> list[StepEvent]:
        """Prefill the joining rows together; if that fails, one by one, so a row that raises fails alone.

        A failed prefill changes nothing (its rows join the batch only at the end), so retrying is safe.
        """
        try:
            return self._prefill(joining)
        except Exception as err:
            if len(joining) == 1:
                return [StepEvent(joining[0].request_id, "", None, error=err)]
        events: list[StepEvent] = []
        for r in joining:
            events += self._prefill_isolated([r])
        return events

    # -- forwards -------------------------------------------------------------------------------------------

    def _decode(self) -> list[StepEvent]:
        import torch

        assert self.mask is not None
        device = self.mask.device
        tokens = torch.tensor([[r.next_token] for r in self.rows], device=device)  # (B, 1)
        self.mask = torch.cat([self.mask, self.mask.new_ones(len(self.rows), 1)], dim=1)
        positions = self.mask.sum(dim=1, keepdim=True) - 1  # (B, 1)
        out = self.model(
            input_ids=tokens,
            attention_mask=self.mask,
            position_ids=positions,
            past_key_values=self.cache,
            use_cache=True,
        )
        self.cache = out.past_key_values
        return self._advance(self.rows, out.logits[:, -1, :])

    def _prefill(self, joining: list[_Row]) -> list[StepEvent]:
        import torch

        device = _device(self.model)
        width = max(len(r.prompt) for r in joining)
        ids = torch.full((len(joining), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(joining), width), dtype=torch.long)
        for i, r in enumerate(joining):
            ids[i, width - len(r.prompt) :] = torch.tensor(r.prompt)
            mask[i, width - len(r.prompt) :] = 1
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)  # (b, T); padding positions are masked anyway
        out = self.model(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            position_ids=positions.to(device),
            use_cache=True,
            **self.last_logits_only,
        )
        self._merge(joining, out.past_key_values, mask.to(device))
        return self._advance(joining, out.logits[:, -1, :])

    def _advance(self, rows: list[_Row], logits: torch.Tensor) -> list[StepEvent]:
        """Sample one token per row, report its text, retire finished rows.

        Per row: a row whose own sampling or text raises is retired with its error; the others go on.
        """
        greedy = logits.argmax(dim=-1).tolist()  # (B,)
        events, retired = [], set()
        for i, r in enumerate(rows):
            try:
                event = self._take(r, self._sample(r, logits[i], int(greedy[i])))
            except Exception as err:
                event = StepEvent(r.request_id, "", None, error=err)
            events.append(event)
            if event.done is not None or event.error is not None:
                retired.add(id(r))
        if retired:
            self._select([i for i, r in enumerate(self.rows) if id(r) not in retired])
        return events

    def _sample(self, r: _Row, logits: torch.Tensor, greedy: int) -> int:
        import torch

        s = r.settings
        if s.temperature <= 0:
            return greedy
        probs = torch.softmax(logits.float().cpu() / s.temperature, dim=-1)  # (V,)
        if not bool(torch.isfinite(probs).all()):
            # A temperature so close to 0 that the scaled logits overflow: its limit, greedy decoding.
            return greedy
        if s.top_p < 1.0:
            sorted_p, order = probs.sort(descending=True)
            # Keep the smallest head of the distribution whose mass reaches top_p (always the top token).
            drop = sorted_p.cumsum(0) - sorted_p >= s.top_p
            sorted_p[drop] = 0.0
            probs = torch.zeros_like(probs).scatter_(0, order, sorted_p)
        return int(torch.multinomial(probs, 1, generator=r.generator).item())

    def _take(self, r: _Row, token: int) -> StepEvent:
        """Record one sampled token of a row; decide whether the row is done."""
        s = r.settings
        stops = [x for x in s.stop if x]  # an empty stop string would match everywhere: it stops nothing
        if token in self.eos:
            text = self.detokenizer.settled(r.generated, self._text(r))
            return self._finish(r, text, "stop", counted=len(r.generated) + 1, token=token)
        r.generated.append(token)
        r.next_token = token
        text = self._text(r)
        if stops:
            longest = max(len(x) for x in stops)
            start = max(0, r.emitted - longest)
            hits = [i for i in (text.find(x, start) for x in stops) if i >= 0]
            if hits:
                return self._finish(r, text[: min(hits)], "stop", counted=len(r.generated), token=token)
        too_long = 0 < self.max_positions <= len(r.prompt) + len(r.generated)
        if len(r.generated) >= s.max_new_tokens or too_long:
            text = self.detokenizer.settled(r.generated, text)
            return self._finish(r, text, "length", counted=len(r.generated), token=token)
        # Hold back what could still become a stop string, and a character whose last bytes are still to come.
        settled = len(self.detokenizer.settled(r.generated, text))
        safe = min(len(text) - (max((len(x) for x in stops), default=1) - 1), settled)
        delta = text[r.emitted : safe] if safe > r.emitted else ""
        r.emitted += len(delta)
        return StepEvent(r.request_id, delta, token)

    def _finish(self, r: _Row, text: str, reason: FinishReason, *, counted: int, token: int) -> StepEvent:
        delta = text[r.emitted :] if len(text) > r.emitted else ""
        done = Generation(list(r.generated), text, reason, len(r.prompt), counted)
        return StepEvent(r.request_id, delta, token, done)

    def _text(self, r: _Row) -> str:
        return self.detokenizer.decode(r.generated)

    # -- batch bookkeeping ----------------------------------------------------------------------------------

    def _merge(self, joining: list[_Row], cache: Any, mask: torch.Tensor) -> None:
        """Append freshly prefilled rows to the running batch, left-padding whichever cache is shorter."""
        import torch
        from transformers import DynamicCache

        if not self.rows:
            self.rows, self.cache, self.mask = list(joining), cache, mask
            return
        assert self.mask is not None
        old_t, new_t = self.mask.shape[1], mask.shape[1]
        width = max(old_t, new_t)
        layers = []
        for old, new in zip(_layers(self.cache), _layers(cache), strict=True):
            k = torch.cat([_pad_left(old[0], width), _pad_left(new[0], width)], dim=0)
            v = torch.cat([_pad_left(old[1], width), _pad_left(new[1], width)], dim=0)
            layers.append((k, v))
        self.cache = DynamicCache(ddp_cache_data=layers)
        self.mask = torch.cat([_pad_left(self.mask, width, dim=1), _pad_left(mask, width, dim=1)], dim=0)
        self.rows += joining

    def _select(self, keep: list[int]) -> None:
        """Keep only these rows; drop cache columns that became padding for every remaining row."""
        import torch

        self.rows = [self.rows[i] for i in keep]
        if not self.rows:
            self.cache, self.mask = None, None
            return
        assert self.mask is not None
        index = torch.tensor(keep, device=self.mask.device)
        self.mask = self.mask[index]
        first = int(self.mask.any(dim=0).nonzero()[0].item())
        layers = [(k[index, :, first:], v[index, :, first:]) for k, v in _layers(self.cache)]
        self.mask = self.mask[:, first:]
        from transformers import DynamicCache

        self.cache = DynamicCache(ddp_cache_data=layers)


def _layers(cache: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    from transformers.cache_utils import DynamicLayer

    out: list[tuple[torch.Tensor, torch.Tensor]] = []
    for layer in cache.layers:
        if type(layer) is not DynamicLayer:
            raise NotImplementedError(
                f"continuous batching supports full-attention KV caches only, not {type(layer).__name__}"
            )
        out.append((layer.keys, layer.values))  # type: ignore[arg-type]
    return out


def _pad_left(t: torch.Tensor, width: int, dim: int = -2) -> torch.Tensor:
    """Zero-pad a cache (B, H, T, D) or mask (B, T) on the left of its time dimension up to `width`."""
    import torch

    missing = width - t.shape[dim]
    if missing <= 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([t.new_zeros(shape), t], dim=dim)


def _config(model: Any) -> Any:
    config = getattr(model, "config", None)
    get_text = getattr(config, "get_text_config", None)
    return get_text() if callable(get_text) else config


def _device(model: Any) -> torch.device:
    return next(model.parameters()).device  # type: ignore[no-any-return]


def generate(
    model: Any,
    tokenizer: Any,
    prompts: list[list[int]],
    settings: GenerationSettings,
    *,
    batch_size: int = 16,
    on_progress: Callable[[int, int], None] | None = None,
) -> list[Generation]:
    """Answers for a list of token prompts, in order; `on_progress(done, total)` after each finished answer.

    Prompts are admitted longest first so rows of a batch have similar lengths (less padding); a slot freed
    by a short answer is refilled at once (continuous batching).
    """
    model.eval()
    if is_prompt_learning(model):
        return _generate_prompt_learning(model, tokenizer, prompts, settings, batch_size, on_progress)
    batch = DecodeBatch(model, tokenizer, max_batch_size=batch_size)
    for i in sorted(range(len(prompts)), key=lambda j: -len(prompts[j])):
        batch.add(i, prompts[i], settings)
    results: dict[Hashable, Generation] = {}
    while len(batch):
        for event in batch.step():
            if event.error is not None:
                raise event.error
            if event.done is not None:
                results[event.request_id] = event.done
                if on_progress is not None:
                    on_progress(len(results), len(prompts))
    return [results[i] for i in range(len(prompts))]


def is_prompt_learning(model: Any) -> bool:
    """Whether the active PEFT adapter is prompt/prefix tuning (virtual tokens, not weight deltas)."""
    config = getattr(model, "active_peft_config", None)
    return bool(getattr(config, "is_prompt_learning", False))


def _generate_prompt_learning(
    model: Any,
    tokenizer: Any,
    prompts: list[list[int]],
    settings: GenerationSettings,
    batch_size: int,
    on_progress: Callable[[int, int], None] | None,
) -> list[Generation]:
    """Prompt/prefix tuning through PEFT's own `generate` (it injects the virtual tokens at each step).

    Fixed batches, stop strings applied afterwards; slower than the cached engine but exact for these methods.
    """
    import torch

    eos = eos_token_ids(model, tokenizer)
    detokenizer = Detokenizer(tokenizer)
    pad = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
    device = _device(model)
    out: list[Generation] = []
    for lo in range(0, len(prompts), batch_size):
        chunk = prompts[lo : lo + batch_size]
        width = max(len(p) for p in chunk)
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in chunk], device=device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk], device=device)
        if settings.temperature > 0 and settings.seed is not None:
            torch.manual_seed(settings.seed)  # PEFT's generate takes no per-request generator
        with torch.inference_mode():
            gen = model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=settings.max_new_tokens,
                do_sample=settings.temperature > 0,
                temperature=settings.temperature if settings.temperature > 0 else None,
                top_p=settings.top_p if settings.temperature > 0 else None,
                pad_token_id=pad,
            )
        for p, row in zip(chunk, gen[:, width:].tolist(), strict=True):
            cut = next((i for i, t in enumerate(row) if t in eos), None)
            tokens = row if cut is None else row[:cut]
            text = detokenizer.decode(tokens)
            hits = [i for i in (text.find(x) for x in settings.stop if x) if i >= 0]
            reason: FinishReason = "stop" if cut is not None or hits else "length"
            text = text[: min(hits)] if hits else detokenizer.settled(tokens, text)
            counted = len(tokens) + (cut is not None)
            out.append(Generation(tokens, text, reason, len(p), counted))
            if on_progress is not None:
                on_progress(len(out), len(prompts))
    return out
