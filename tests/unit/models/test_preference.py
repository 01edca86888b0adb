"""DPO pieces: the loss on hand-computed numbers, pair encoding and truncation, per-example log-probs."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from tests.tiny import TOKENIZER
from tuneforge.config import ModelConfig
from tuneforge.models import load_tokenizer
from tuneforge.models.encode import IGNORE, encode_chat, encode_preference, example_length, has_targets
from tuneforge.models.lm_loss import example_logprobs
from tuneforge.models.preference import dpo_loss, pair_batch, preference_metrics, reference_logprobs

LONG_PROMPT = "alpha " + "words in the middle " * 12 + "omega"


@pytest.fixture(scope="module")
def tok():  # type: ignore[no-untyped-def]
    return load_tokenizer(ModelConfig(name=str(TOKENIZER)))


def test_dpo_loss_and_rewards_on_hand_computed_numbers() -> None:
    beta = 0.1
    # (policy chosen, policy rejected, ref chosen, ref rejected) summed log-probs of two pairs
    rows = [(-5.0, -7.0, -6.0, -6.5), (-9.0, -4.0, -8.0, -5.0)]
    pc, pr, rc, rr = (
        torch.tensor(col, requires_grad=i == 0) for i, col in enumerate(zip(*rows, strict=True))
    )
    losses, chosen, rejected = dpo_loss(pc, pr, rc, rr, beta)
    for i, (a, b, c, d) in enumerate(rows):
        z = beta * ((a - c) - (b - d))  # pair 1: 0.1 * (1 - (-0.5)) = 0.15; pair 2: 0.1 * (-1 - 1) = -0.2
        assert losses[i].item() == pytest.approx(math.log(1 + math.exp(-z)), rel=1e-6)
        assert chosen[i].item() == pytest.approx(beta * (a - c))
        assert rejected[i].item() == pytest.approx(beta * (b - d))
    assert losses[0].item() == pytest.approx(0.6210, abs=1e-4) and losses[1].item() == pytest.approx(
        0.7981, abs=1e-4
    )
    # d loss / d policy_chosen = -beta * sigmoid(-z): the chosen answer is pushed up, less so once it wins
    losses.sum().backward()
    assert pc.grad is not None
    expected = [-beta / (1 + math.exp(z)) for z in (0.15, -0.2)]
    assert pc.grad.tolist() == pytest.approx(expected, rel=1e-6)
    stats = [float(chosen.sum()), float(rejected.sum()), float((chosen > rejected).sum())]
    metrics = preference_metrics(float(losses.sum().detach()), stats, 2)
    assert metrics == pytest.approx(
        {
            "loss": (0.6210 + 0.7981) / 2,
            "reward_chosen": 0.0,
            "reward_rejected": 0.025,
            "reward_accuracy": 0.5,
        }
        | {"reward_margin": -0.025},
        abs=1e-4,
    )


def test_a_pair_is_two_chat_examples_with_the_loss_on_the_answers_only(tok) -> None:  # type: ignore[no-untyped-def]
    pair = encode_preference(tok, "how are you?", "fine thanks", "go away", max_length=128)
    assert set(pair) == {"chosen", "rejected"}  # nothing was cut
    for side, answer in (("chosen", "fine thanks"), ("rejected", "go away")):
        conversation = [{"role": "user", "content": "how are you?"}, {"role": "assistant", "content": answer}]
        assert pair[side] == encode_chat(tok, conversation, 128)
        taught = [
            i
            for i, label in zip(pair[side]["input_ids"], pair[side]["labels"], strict=True)
            if label != IGNORE
        ]
        assert tok.decode(taught) == f"{answer}<|im_end|>\n"
    prompt_len = pair["chosen"]["labels"].index(next(x for x in pair["chosen"]["labels"] if x != IGNORE))
    assert pair["chosen"]["input_ids"][:prompt_len] == pair["rejected"]["input_ids"][:prompt_len]
    assert has_targets(pair)
    assert example_length(pair) == max(len(pair["chosen"]["input_ids"]), len(pair["rejected"]["input_ids"]))


@pytest.mark.parametrize(
    ("truncation", "kept", "lost"), [("head", "alpha", "omega"), ("tail", "omega", "alpha")]
)
def test_the_prompt_is_cut_before_an_answer_the_same_for_both(
    tok, truncation: str, kept: str, lost: str
) -> None:  # type: ignore[no-untyped-def]
    whole = encode_preference(tok, LONG_PROMPT, "fine", "no thanks, go away", max_length=1000)
    limit = example_length(whole) - 20
    pair = encode_preference(
        tok, LONG_PROMPT, "fine", "no thanks, go away", max_length=limit, truncation=truncation
    )
    assert pair["truncated"] == "prompt"
    assert example_length(pair) <= limit
    for side in ("chosen", "rejected"):
        taught = [x for x in pair[side]["labels"] if x != IGNORE]
        assert taught == [x for x in whole[side]["labels"] if x != IGNORE]  # each answer whole
    prompts = [
        tok.decode(
            pair[s]["input_ids"][: pair[s]["labels"].index(next(x for x in pair[s]["labels"] if x != IGNORE))]
        )
        for s in ("chosen", "rejected")
    ]
    assert prompts[0] == prompts[1]  # one cut, shared
    assert kept in prompts[0] and lost not in prompts[0]


def test_an_answer_is_cut_only_when_no_prompt_leaves_room(tok) -> None:  # type: ignore[no-untyped-def]
    pair = encode_preference(tok, LONG_PROMPT, "fine", "no thanks, go away " * 6, max_length=24)
    assert pair["truncated"] == "answer"
    assert len(pair["rejected"]["input_ids"]) == 24
    assert "alpha" not in tok.decode(pair["rejected"]["input_ids"])  # the prompt went first
    assert tok.decode([x for x in pair["chosen"]["labels"] if x != IGNORE]) == "fine<|im_end|>\n"


@pytest.fixture(scope="module")
def pairs(tok):  # type: ignore[no-untyped-def]
    return [
        encode_preference(tok, "how are you?", "fine thanks", "go away", max_length=128),
        encode_preference(tok, "hello", "good day to you", "no", max_length=128),
    ]


def _independent_logprobs(model: torch.nn.Module, example: dict) -> float:
    """Summed log-probabilities of the taught tokens of one example, from the model's full logits."""
    ids = torch.tensor([example["input_ids"]])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)  # (T, V)
    return sum(float(logp[t - 1, y]) for t, y in enumerate(example["labels"]) if y != IGNORE)


def test_example_logprobs_padded_packed_and_by_hand_agree(tiny_llama: Path, tok, pairs) -> None:  # type: ignore[no-untyped-def]
    from transformers import AutoModelForCausalLM

    from tuneforge.models.packing import enable_packed_attention

    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    rows = [p["chosen"] for p in pairs] + [p["rejected"] for p in pairs]
    expected = torch.tensor([_independent_logprobs(model, e) for e in rows])
    padded = pair_batch(pairs, tok.pad_token_id, packed=False)
    assert padded["pairs"] == 2 and padded["input_ids"].shape[0] == 4  # chosen rows first, then rejected
    torch.testing.assert_close(example_logprobs(model, padded).detach(), expected, rtol=1e-5, atol=1e-4)
    enable_packed_attention(model)
    packed = pair_batch(pairs, tok.pad_token_id, packed=True)
    assert packed["input_ids"].shape[0] == 1
    torch.testing.assert_close(example_logprobs(model, packed).detach(), expected, rtol=1e-5, atol=1e-4)


def test_the_reference_is_the_base_model_with_the_adapter_off(tiny_llama: Path, tok, pairs) -> None:  # type: ignore[no-untyped-def]
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_llama)
    rows = [p["chosen"] for p in pairs] + [p["rejected"] for p in pairs]
    expected = torch.tensor([_independent_logprobs(base, e) for e in rows])
    peft = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_llama),
        LoraConfig(r=4, lora_dropout=0.5, target_modules="all-linear"),
    )
    torch.manual_seed(0)
    for name, p in peft.named_parameters():
        if "lora_B" in name:  # a trained adapter, so that adapter on and off differ
            p.data.normal_(0, 0.5)
    peft.train()
    batch = pair_batch(pairs, tok.pad_token_id, packed=False)
    ref = reference_logprobs(peft, batch)
    assert peft.training and not ref.requires_grad
    torch.testing.assert_close(ref, expected, rtol=1e-5, atol=1e-4)
    peft.eval()
    policy = example_logprobs(peft, batch).detach()
    assert (policy - ref).abs().min() > 1e-3


def test_evaluate_scores_pairs_by_mean_log_prob_per_answer_token(tiny_llama: Path, tok) -> None:  # type: ignore[no-untyped-def]
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tuneforge.config import RunConfig
    from tuneforge.evaluation.model_eval import evaluate_model

    records = [
        {"prompt": "how are you?", "chosen": "fine thanks", "rejected": "go away"},
        {"prompt": "hello", "chosen": "good day to you", "rejected": "no"},
        {"prompt": "is it broken?", "chosen": "no, it works", "rejected": "yes"},
    ]
    cfg = RunConfig.model_validate({"model": {"max_length": 128}, "eval": {"batch_size": 2}})
    base = AutoModelForCausalLM.from_pretrained(tiny_llama)
    pairs = [encode_preference(tok, r["prompt"], r["chosen"], r["rejected"], max_length=128) for r in records]

    def per_token(e: dict) -> float:
        return _independent_logprobs(base, e) / sum(y != IGNORE for y in e["labels"])

    expected = [per_token(p["chosen"]) - per_token(p["rejected"]) for p in pairs]
    plain = evaluate_model(base, tok, records, cfg, "preference", [])
    assert plain.per_example["logp_margin"] == pytest.approx(expected, rel=1e-4)
    assert plain.per_example["correct"] == [float(m > 0) for m in expected]
    assert (
        plain.metrics["accuracy"] == sum(m > 0 for m in expected) / 3 and "reward_margin" not in plain.metrics
    )

    peft = get_peft_model(base, LoraConfig(r=4, target_modules="all-linear"))
    for name, p in peft.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.5)
    tuned = evaluate_model(peft, tok, records, cfg, "preference", [])
    policy = example_logprobs(peft.eval(), pair_batch(pairs, tok.pad_token_id, packed=False)).detach()
    with peft.disable_adapter():
        ref = example_logprobs(peft, pair_batch(pairs, tok.pad_token_id, packed=False)).detach()
    rewards = 0.1 * (policy - ref)  # train.dpo_beta's default
    assert tuned.metrics["reward_margin"] == pytest.approx(
        float((rewards[:3] - rewards[3:]).mean()), rel=1e-4
    )
    assert tuned.metrics["reward_accuracy"] == pytest.approx(
        float((rewards[:3] > rewards[3:]).float().mean())
    )
