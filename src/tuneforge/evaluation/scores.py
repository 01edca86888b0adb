"""What a model says about given examples before anything is decided: target log-probabilities (per
sequence, or k answers sharing one prompt), label log-likelihoods, head logits and per-example losses.

Target log-probabilities never build full-vocabulary logits. `model_eval.py` decides (argmax); this module
keeps the numbers behind each decision, which calibration, bootstrap intervals and paired tests need.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch

from tuneforge.evaluation.metrics import loss_metrics
from tuneforge.models.collate import collate
from tuneforge.models.encode import IGNORE, encode_classification_prompt, encode_text
from tuneforge.models.lm_loss import target_logprobs


@torch.no_grad()
def _sequence_logprobs(
    model: Any, examples: list[dict[str, Any]], pad_id: int, batch_size: int
) -> list[float]:
    """Sum of log-probabilities of each example's target tokens (labels != IGNORE)."""
    model.eval()
    scores = [0.0] * len(examples)
    order = _by_length([len(e["input_ids"]) for e in examples])
    for start in range(0, len(examples), batch_size):
        idx = order[start : start + batch_size]
        batch = collate([examples[i] for i in idx], pad_id)
        # Only positions with a target (a few answer tokens) go through the output layer and the softmax.
        out = target_logprobs(model, {k: v.to(model.device) for k, v in batch.items()}).tolist()
        for i, v in zip(idx, out, strict=True):
            scores[i] = v
    return scores


def _by_length(lengths: list[int]) -> list[int]:
    """Indices in order of length, so that a batch pads to about its own rows' length.

    Each row's score does not depend on its neighbours (attention masks padding out), so the order only
    changes how much padding the model runs: on tweets of 10-60 tokens batched in input order, about half.
    """
    return sorted(range(len(lengths)), key=lambda i: (lengths[i], i))


def _can_share_prompt(model: Any) -> bool:
    """Whether the model takes a KV cache we may extend: not prompt/prefix tuning, which own the cache."""
    peft_config = getattr(model, "active_peft_config", None)
    if peft_config is not None and getattr(peft_config, "is_prompt_learning", False):
        return False
    return _cache_kwarg(model) is not None


def _cache_kwarg(model: Any) -> str | None:
    """The forward argument that takes a KV cache: `cache` in newer transformers, `past_key_values` before."""
    return next((name for name in ("cache", "past_key_values") if _takes(model, name)), None)


def _takes(model: Any, argument: str) -> bool:
    """Whether the (base) model's forward has this argument."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return argument in inspect.signature(base.forward).parameters


#: The fewest tokens all prompts share before they are run once for all (the few-shot examples, a long
#: system prompt): below it the copy per batch costs about what it saves.
MIN_SHARED_PREFIX = 32


def _common_prefix(prompts: list[list[int]]) -> int:
    """How many leading tokens every prompt shares, leaving each at least its last token to run."""
    if not prompts:
        return 0
    first, shortest = prompts[0], min(len(p) for p in prompts)
    n = 0
    while n < shortest - 1 and all(p[n] == first[n] for p in prompts):
        n += 1
    return n


def _prefix_cache(model: Any, prompts: list[list[int]], keep: dict[str, int]) -> tuple[int, Any]:
    """(length, KV cache) of the tokens every prompt starts with, run once; (0, None) when too few are shared.

    The few-shot baseline puts the same k examples before every question: run alone per prompt they made its
    evaluation ~4 times the zero-shot one (measured on the quickstart's tweets), run once they cost one
    prompt's worth.
    """
    shared = _common_prefix(prompts)
    if shared < MIN_SHARED_PREFIX:
        return 0, None
    ids = torch.tensor([prompts[0][:shared]], device=model.device)  # (1, P)
    out = model(input_ids=ids, use_cache=True, **keep)
    return shared, out.cache if hasattr(out, "cache") else out.past_key_values


@torch.no_grad()
def _shared_prompt_logprobs(
    model: Any, examples: list[dict[str, Any]], k: int, pad_id: int, batch_size: int
) -> list[float]:
    """`_sequence_logprobs` for k answers per prompt, running each prompt through the model once.

    examples[i*k + j] is prompt i with answer j. The prompts are left-padded and encoded with a KV cache;
    each answer then costs only its own few tokens. This is what makes label scoring ~k times cheaper than
    scoring k full sequences; the result equals the full-sequence score up to float rounding (a test checks).
    Hand-written because transformers' generate() scores what it samples, not a given set of continuations.
    """
    model.eval()
    cache_kwarg = _cache_kwarg(model) or "past_key_values"
    device = model.device
    prompts, answers = [], []
    for e in examples:
        start = next((t for t, x in enumerate(e["labels"]) if x != IGNORE), len(e["labels"]))
        prompts.append(e["input_ids"][:start])
        answers.append(e["input_ids"][start:])
    scores = [0.0] * len(examples)
    n = len(examples) // k
    # Only the last prompt position predicts anything here: project just that one (not (B, T, V)).
    keep = {"logits_to_keep": 1} if _takes(model, "logits_to_keep") else {}
    shared, prefix_cache = _prefix_cache(model, [prompts[i * k] for i in range(n)], keep)
    # batch_size prompts per forward (of similar length): the answers after them are a few tokens each.
    order = _by_length([len(prompts[i * k]) for i in range(n)])
    for first in range(0, n, batch_size):
        rows = order[first : first + batch_size]
        group = [prompts[i * k] for i in rows]
        same_prompts = all(prompts[i * k + j] == group[r] for r, i in enumerate(rows) for j in range(k))
        if not same_prompts or not all(group):
            # Truncation cut some prompts differently: score this group the plain way.
            idx = [i * k + j for i in rows for j in range(k)]
            plain = _sequence_logprobs(model, [examples[x] for x in idx], pad_id, batch_size)
            for x, v in zip(idx, plain, strict=True):
                scores[x] = v
            continue
        rest = [p[shared:] for p in group]
        width = max(len(p) for p in rest)
        ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in rest], device=device)
        mask = torch.tensor(
            [[1] * shared + [0] * (width - len(p)) + [1] * len(p) for p in rest], device=device
        )
        pos = shared + (mask[:, shared:].cumsum(-1) - 1).clamp(min=0)  # (B, width): after the prefix
        prefix = {}
        if prefix_cache is not None:
            batch_cache = copy.deepcopy(prefix_cache)  # the answers below extend it: one copy per group
            batch_cache.batch_repeat_interleave(len(rows))
            prefix = {cache_kwarg: batch_cache}
        out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, **keep, **prefix)
        cache = out.cache if hasattr(out, "cache") else out.past_key_values
        first_logp = torch.log_softmax(out.logits[:, -1].float(), dim=-1)  # (B, V)
        for j in range(k):
            conts = [answers[i * k + j] for i in rows]
            total = torch.zeros(len(rows), device=device)
            has = torch.tensor([bool(c) for c in conts], device=device)
            heads = torch.tensor([c[0] if c else 0 for c in conts], device=device)
            total += first_logp.gather(-1, heads.unsqueeze(-1)).squeeze(-1) * has
            longest = max(len(c) for c in conts)
            if longest > 1:
                body = torch.tensor([c + [pad_id] * (longest - len(c)) for c in conts], device=device)
                seen = torch.tensor([[1] * len(c) + [0] * (longest - len(c)) for c in conts], device=device)
                step_pos = pos[:, -1:] + torch.arange(1, longest, device=device)
                out2 = model(
                    input_ids=body[:, :-1],
                    attention_mask=torch.cat([mask, torch.ones_like(body[:, :-1])], dim=1),
                    position_ids=step_pos,
                    use_cache=True,
                    **{cache_kwarg: cache},
                )
                logp = torch.log_softmax(out2.logits.float(), dim=-1)  # (B, L-1, V), L = a few tokens
                picked = logp.gather(-1, body[:, 1:].unsqueeze(-1)).squeeze(-1) * seen[:, 1:]
                total += picked.sum(-1)
                cache.crop(-(longest - 1))  # drop the answer: the prompt alone again for the next one
            for r, i in enumerate(rows):
                scores[i * k + j] = float(total[r])
    return scores


def label_logprobs(
    model: Any,
    tok: Any,
    texts: list[str],
    labels: list[str],
    template: str,
    max_length: int,
    batch_size: int,
    truncation: str = "head",
    shots: Sequence[dict[str, str]] = (),
) -> list[list[float]]:
    """(N, K) log-likelihood of each label's whole answer after each prompt (the label-scoring rule).

    An over-long text is cut the way training cut it (data.truncation), never the label being scored.
    `shots`: example exchanges before each prompt (the few-shot baseline); they share the prompt's KV cache.
    """
    examples = [
        encode_classification_prompt(
            tok,
            t,
            label,
            labels=labels,
            template=template,
            max_length=max_length,
            truncation=truncation,
            shots=shots,
        )
        for t in texts
        for label in labels
    ]
    k = len(labels)
    if _can_share_prompt(model):
        flat = _shared_prompt_logprobs(model, examples, k, int(tok.pad_token_id), batch_size)
    else:
        flat = _sequence_logprobs(model, examples, int(tok.pad_token_id), batch_size)
    return [flat[i * k : (i + 1) * k] for i in range(len(texts))]


@torch.no_grad()
def head_logits(
    model: Any, tok: Any, texts: list[str], max_length: int, batch_size: int, truncation: str = "head"
) -> list[list[float]]:
    """(N, C) logits of a sequence-classification or regression head (C = 1 for regression).

    A head run's model (method head) reads whole texts itself, in the windows it was trained on.
    """
    if hasattr(model, "text_logits"):
        return model.text_logits(texts, batch_size)  # type: ignore[no-any-return]
    model.eval()
    out: list[list[float]] = []
    for start in range(0, len(texts), batch_size):
        enc = [
            {"input_ids": encode_text(tok, t, max_length, truncation)[0], "label": 0}
            for t in texts[start : start + batch_size]
        ]
        batch = collate(enc, int(tok.pad_token_id))
        logits = model(
            input_ids=batch["input_ids"].to(model.device),
            attention_mask=batch["attention_mask"].to(model.device),
        ).logits  # (B, C)
        out.extend(logits.float().tolist())
    return out


def example_losses(
    model: Any, examples: list[dict[str, Any]], pad_id: int, batch_size: int
) -> tuple[list[float], list[int]]:
    """Each example's summed target-token loss and its number of target tokens (for per-example CIs)."""
    logp = _sequence_logprobs(model, examples, pad_id, batch_size)
    counts = [sum(1 for x in e["labels"][1:] if x != IGNORE) for e in examples]
    return [-v for v in logp], counts


def lm_loss(model: Any, examples: list[dict[str, Any]], pad_id: int, batch_size: int) -> dict[str, Any]:
    """Mean loss per target token and perplexity over supervised examples."""
    return loss_metrics(*example_losses(model, examples, pad_id, batch_size))
