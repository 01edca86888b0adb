"""The generation engine against transformers' own `model.generate`, token for token."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tuneforge.models.generate import DecodeBatch, Generation, GenerationSettings, generate

PROMPTS = ["great road today", "awful", "the phone is broken and the order is cold", "love it"]


@pytest.fixture(scope="module")
def lm(tiny_llama: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()
    return model, tok


def _ids(tok, text: str) -> list[int]:
    return list(tok(text)["input_ids"])


def _hf_greedy(model, tok, prompt: list[int], n: int) -> list[int]:
    """transformers' greedy decoding of one prompt, cut at the first EOS (which is left out, as we do)."""
    out = model.generate(
        torch.tensor([prompt]),
        attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
        max_new_tokens=n,
        do_sample=False,
        pad_token_id=tok.pad_token_id,
    )[0, len(prompt) :].tolist()
    eos = model.generation_config.eos_token_id
    eos = {eos} if isinstance(eos, int) else set(eos or [])
    cut = next((i for i, t in enumerate(out) if t in eos), len(out))
    return out[:cut]


def test_greedy_equals_model_generate_token_for_token(lm) -> None:
    model, tok = lm
    prompts = [_ids(tok, p) for p in PROMPTS]
    ours = generate(model, tok, prompts, GenerationSettings(max_new_tokens=12), batch_size=3)
    for p, g in zip(prompts, ours, strict=True):
        ref = _hf_greedy(model, tok, p, 12)
        assert g.token_ids == ref
        assert g.text == tok.decode(ref, skip_special_tokens=True)
        assert g.finish_reason == "length" and g.completion_tokens == 12 and g.prompt_tokens == len(p)


def test_batched_equals_one_by_one(lm) -> None:
    model, tok = lm
    prompts = [_ids(tok, p) for p in PROMPTS]
    settings = GenerationSettings(max_new_tokens=10)
    together = generate(model, tok, prompts, settings, batch_size=4)
    alone = [generate(model, tok, [p], settings)[0] for p in prompts]
    assert [g.token_ids for g in together] == [g.token_ids for g in alone]


def test_each_row_stops_at_its_own_eos(lm) -> None:
    model, tok = lm
    prompts = [_ids(tok, p) for p in PROMPTS]
    free = generate(model, tok, prompts, GenerationSettings(max_new_tokens=10))
    eos = free[0].token_ids[3]  # make row 0's 4th token the end of the answer
    old = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = eos
    try:
        stopped = generate(model, tok, prompts, GenerationSettings(max_new_tokens=10))
        refs = [_hf_greedy(model, tok, p, 10) for p in prompts]
    finally:
        model.generation_config.eos_token_id = old
    assert stopped[0].token_ids == free[0].token_ids[:3]
    assert stopped[0].finish_reason == "stop" and stopped[0].completion_tokens == 4
    for g, ref, f in zip(stopped, refs, free, strict=True):
        assert g.token_ids == ref
        if eos not in f.token_ids:
            assert g.token_ids == f.token_ids and g.finish_reason == "length"


def test_stop_string_ends_and_is_trimmed(lm) -> None:
    model, tok = lm
    prompt = _ids(tok, PROMPTS[0])
    full = generate(model, tok, [prompt], GenerationSettings(max_new_tokens=16))[0].text
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    expected = full[: full.find(stop)]
    got = generate(model, tok, [prompt], GenerationSettings(max_new_tokens=16, stop=["zzzz", stop]))[0]
    assert got.text == expected
    assert got.finish_reason == "stop"
    assert got.completion_tokens < 16


def test_streamed_deltas_add_up_to_the_text_and_never_show_the_stop(lm) -> None:
    model, tok = lm
    prompt = _ids(tok, PROMPTS[2])
    full = generate(model, tok, [prompt], GenerationSettings(max_new_tokens=16))[0].text
    stop = full[-4:-1]
    batch = DecodeBatch(model, tok)
    batch.add("a", prompt, GenerationSettings(max_new_tokens=16, stop=[stop]))
    deltas, done = [], None
    while len(batch):
        for e in batch.step():
            deltas.append(e.delta)
            done = e.done or done
    assert done is not None and "".join(deltas) == done.text == full[: full.find(stop)]
    assert all(stop not in "".join(deltas[: i + 1]) for i in range(len(deltas)))


def test_seeded_sampling_is_reproducible_and_independent_of_the_batch(lm) -> None:
    model, tok = lm
    prompts = [_ids(tok, p) for p in PROMPTS]
    s7 = GenerationSettings(max_new_tokens=12, temperature=1.0, top_p=0.9, seed=7)
    alone = generate(model, tok, [prompts[1]], s7)[0].token_ids
    again = generate(model, tok, [prompts[1]], s7)[0].token_ids
    in_batch = generate(model, tok, prompts, s7, batch_size=4)[1].token_ids
    other = generate(model, tok, [prompts[1]], GenerationSettings(12, 1.0, 0.9, seed=8))[0].token_ids
    greedy = generate(model, tok, [prompts[1]], GenerationSettings(max_new_tokens=12))[0].token_ids
    assert alone == again == in_batch
    assert other != alone and greedy != alone


def test_a_request_joining_a_running_batch_gets_its_own_answer(lm) -> None:
    model, tok = lm
    prompts = [_ids(tok, p) for p in PROMPTS]
    settings = GenerationSettings(max_new_tokens=8)
    alone = [generate(model, tok, [p], settings)[0].token_ids for p in prompts]
    batch = DecodeBatch(model, tok, max_batch_size=4)
    batch.add(0, prompts[0], settings)
    batch.add(1, prompts[1], settings)
    done: dict[int, list[int]] = {}
    steps = 0
    while len(batch):
        if steps == 3:  # two rows are mid-answer: a longer and a shorter prompt join, one row is cancelled
            batch.add(2, prompts[2], settings)
            batch.add(3, prompts[3], settings)
            batch.cancel(1)
        for e in batch.step():
            if e.done is not None:
                done[int(e.request_id)] = e.done.token_ids  # type: ignore[call-overload]
        steps += 1
    assert done == {0: alone[0], 2: alone[2], 3: alone[3]}


def test_progress_is_reported_per_answer(lm) -> None:
    model, tok = lm
    seen: list[tuple[int, int]] = []
    prompts = [_ids(tok, p) for p in PROMPTS[:3]]
    generate(
        model,
        tok,
        prompts,
        GenerationSettings(max_new_tokens=2),
        on_progress=lambda d, t: seen.append((d, t)),
    )
    assert seen == [(1, 3), (2, 3), (3, 3)]


@pytest.mark.slow
def test_smollm2_chat_greedy_equals_model_generate() -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tuneforge import builtin
    from tuneforge.models.encode import encode_prompt

    path = builtin.resolve("builtin:smollm2-135m-instruct")
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    questions = ["What is the capital of France?", "Name a colour.", "Say hi in two words to a friend."]
    prompts = [encode_prompt(tok, [{"role": "user", "content": q}]) for q in questions]
    ours = generate(model, tok, prompts, GenerationSettings(max_new_tokens=24))
    for p, g in zip(prompts, ours, strict=True):
        assert g.token_ids == _hf_greedy(model, tok, p, 24)


def test_prompt_tuning_goes_through_peft_generate(lm, tiny_llama: Path) -> None:
    from peft import PromptTuningConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    _, tok = lm
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()
    torch.manual_seed(0)
    peft_model = get_peft_model(model, PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3))
    prompt = _ids(tok, PROMPTS[0])
    ours = generate(peft_model, tok, [prompt], GenerationSettings(max_new_tokens=6))[0]
    ref = peft_model.generate(
        input_ids=torch.tensor([prompt]),
        attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
        max_new_tokens=6,
        do_sample=False,
        pad_token_id=tok.pad_token_id,
    )[0, len(prompt) :].tolist()
    assert ours.token_ids == ref[: len(ours.token_ids)] and len(ref) == 6
    with pytest.raises(NotImplementedError, match="virtual tokens"):
        DecodeBatch(peft_model, tok)


def test_a_row_that_fails_leaves_the_batch_alone_and_the_others_unchanged(lm) -> None:
    """One request's own fault (its stop strings, its sampling) ends that request only; the rows beside it
    answer exactly as they would alone."""
    model, tok = lm
    prompts = [_ids(tok, p) for p in PROMPTS]
    settings = GenerationSettings(max_new_tokens=8)
    alone = [generate(model, tok, [p], settings)[0].token_ids for p in prompts]
    batch = DecodeBatch(model, tok, max_batch_size=8)
    batch.add("broken", prompts[0], GenerationSettings(max_new_tokens=8, stop=[3]))  # type: ignore[list-item]
    batch.add("empty-stop", prompts[1], GenerationSettings(max_new_tokens=8, stop=[""]))
    batch.add(
        "tiny-temperature", prompts[2], GenerationSettings(max_new_tokens=8, temperature=1e-300, seed=1)
    )
    for i, p in enumerate(prompts):
        batch.add(i, p, settings)
    done: dict[object, list[int]] = {}
    errors: dict[object, str] = {}
    while len(batch):
        for e in batch.step():
            if e.error is not None:
                errors[e.request_id] = type(e.error).__name__
            elif e.done is not None:
                done[e.request_id] = e.done.token_ids
    assert errors == {"broken": "TypeError"}
    assert done == {
        0: alone[0],
        1: alone[1],
        2: alone[2],
        3: alone[3],
        "empty-stop": alone[1],  # an empty stop string stops nothing
        "tiny-temperature": alone[2],  # a temperature whose logits overflow is its limit: greedy
    }


def _scripted_answer(
    tok, script: list[int], max_new_tokens: int, *, prompt_learning: bool
) -> tuple[list[str], Generation]:
    """The streamed deltas (none through PEFT's generate, which answers whole) and the answer of a script."""
    from tests.scripted import ScriptedLM

    model = ScriptedLM(script, len(tok), prompt_learning=prompt_learning)
    settings = GenerationSettings(max_new_tokens=max_new_tokens)
    if prompt_learning:
        return [], generate(model, tok, [_ids(tok, "hi")], settings)[0]
    batch = DecodeBatch(model, tok)
    batch.add("a", _ids(tok, "hi"), settings)
    deltas, done = [], None
    while len(batch):
        for e in batch.step():
            deltas.append(e.delta)
            done = e.done or done
    assert done is not None
    return deltas, done


@pytest.mark.parametrize("prompt_learning", [False, True], ids=["cached", "peft-generate"])
@pytest.mark.parametrize(
    ("answer", "kept", "then_eos", "max_new", "text", "reason"),
    [
        ("ok 🙂", 5, False, 5, "ok ", "length"),  # cut after 2 of the emoji's 4 bytes
        ("ok 🙂", 6, False, 6, "ok ", "length"),  # after 3
        ("ok 🙂", 5, True, 16, "ok ", "stop"),  # the model ended it after 2
        ("ok 🙂", 7, False, 7, "ok 🙂", "length"),
        ("a\ufffdb", 5, True, 16, "a\ufffdb", "stop"),  # a whole U+FFFD the model wrote (3 bytes) stays
        ("a\ufffd", 4, False, 4, "a\ufffd", "length"),  # even at the end
    ],
)
def test_a_character_whose_last_bytes_never_came_is_left_out(
    lm, prompt_learning: bool, answer: str, kept: int, then_eos: bool, max_new: int, text: str, reason: str
) -> None:
    """The tiny tokenizer is byte-level: an emoji is four tokens (one per byte), and an answer can stop
    between them; decoded as is, it would end in U+FFFD."""
    _, tok = lm
    answered = _ids(tok, answer)[:kept]
    script = answered + [tok.eos_token_id] * then_eos
    deltas, done = _scripted_answer(tok, script, max_new, prompt_learning=prompt_learning)
    assert (done.text, done.finish_reason, done.token_ids) == (text, reason, answered)
    if not prompt_learning:
        assert "".join(deltas) == text  # so no delta showed a U+FFFD the text does not hold
