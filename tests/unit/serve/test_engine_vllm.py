"""The vLLM engine without vLLM: LoRA limits, which adapters it can apply, its arguments, its answers."""

from __future__ import annotations

import pytest

from tuneforge.config import ServeConfig
from tuneforge.errors import TuneforgeError
from tuneforge.models.generate import Generation, GenerationSettings
from tuneforge.serve.engine_vllm import (
    VllmPlan,
    adapter_rank,
    engine_kwargs,
    generation_of,
    lora_problems,
    lora_rank_limit,
    sampling_kwargs,
)

PLAIN = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "bias": "none", "use_dora": False, "rank_pattern": {}}


@pytest.mark.parametrize(
    ("ranks", "limit"), [([4], 8), ([1], 1), ([8, 16], 16), ([17, 2], 32), ([300], 320), ([512], 512)]
)
def test_max_lora_rank_is_the_smallest_value_vllm_accepts_that_fits(ranks: list[int], limit: int) -> None:
    assert lora_rank_limit(ranks) == limit


def test_a_rank_above_vllms_largest_is_refused_with_the_way_out() -> None:
    with pytest.raises(TuneforgeError) as err:
        lora_rank_limit([8, 600])
    assert err.value.what == "LoRA rank 600 is above vLLM's largest max_lora_rank (512)"
    assert "--merge" in str(err.value.fix)


def test_the_rank_counts_per_module_overrides() -> None:
    assert adapter_rank(PLAIN) == 4
    assert adapter_rank({**PLAIN, "rank_pattern": {"q_proj": 64, "v_proj": 2}}) == 64


@pytest.mark.parametrize(
    ("method", "changes", "problems"),
    [
        ("lora", {}, []),
        ("qlora", {}, []),
        ("lora", {"init_lora_weights": "gaussian"}, []),  # only the starting weights: still plain LoRA
        ("dora", {"use_dora": True}, ["dora is not LoRA"]),
        ("lora", {"use_dora": True}, ["DoRA"]),
        ("ia3", {"peft_type": "IA3"}, ["ia3 is not LoRA"]),
        ("lora", {"modules_to_save": ["embed_tokens"]}, ["fully trained modules ['embed_tokens']"]),
        ("lora", {"trainable_token_indices": [5, 6]}, ["trained token embeddings"]),
        ("lora", {"bias": "lora_only", "use_dora": True}, ["DoRA", "trained biases"]),
        ("lora", {"init_lora_weights": "pissa"}, ["init_lora_weights=pissa (it changes the base weights)"]),
    ],
)
def test_which_adapters_vllm_can_apply(method: str, changes: dict[str, object], problems: list[str]) -> None:
    assert lora_problems(method, {**PLAIN, **changes}) == problems


def test_sampling_arguments_follow_the_request() -> None:
    settings = GenerationSettings(max_new_tokens=7, temperature=0.7, top_p=0.9, stop=["\n", "END"], seed=5)
    assert sampling_kwargs(settings) == {
        "n": 1,
        "max_tokens": 7,
        "temperature": 0.7,
        "top_p": 0.9,
        "stop": ["\n", "END"],
        "include_stop_str_in_output": False,
        "seed": 5,
        "skip_special_tokens": True,
    }
    greedy = sampling_kwargs(GenerationSettings(max_new_tokens=3))
    assert (greedy["temperature"], greedy["stop"], greedy["seed"]) == (0.0, None, None)


def test_engine_arguments_enable_lora_only_for_adapters() -> None:
    cfg = ServeConfig(tensor_parallel_size=2, max_batch_size=32)
    plain = engine_kwargs(VllmPlan("/models/base", [], 8, "auto"), cfg)
    assert plain == {"model": "/models/base", "tensor_parallel_size": 2, "max_num_seqs": 32, "dtype": "auto"}
    from tuneforge.serve.engine import ServedModel

    two = [ServedModel("a", "generate", adapter="a"), ServedModel("b", "generate", adapter="b")]
    with_lora = engine_kwargs(VllmPlan("/models/base", two, 16, "float32"), cfg)
    assert with_lora == plain | {"dtype": "float32", "enable_lora": True, "max_loras": 2, "max_lora_rank": 16}


@pytest.mark.parametrize(
    ("finish", "stop_reason", "expected"),
    [
        ("stop", None, Generation([5, 6], "ab", "stop", 4, 3)),  # EOS: counted, not part of the ids
        ("stop", 7, Generation([5, 6], "ab", "stop", 4, 3)),  # a stop token id (generation_config's EOS list)
        ("stop", "\n", Generation([5, 6, 2], "ab", "stop", 4, 3)),  # a stop string: its tokens stay
        ("length", None, Generation([5, 6, 2], "ab", "length", 4, 3)),
    ],
)
def test_a_finished_vllm_output_reads_as_the_transformers_engine_reports_it(
    finish: str, stop_reason: object, expected: Generation
) -> None:
    assert generation_of(4, (5, 6, 2), "ab", finish, stop_reason) == expected


def test_an_aborted_vllm_output_is_not_an_answer() -> None:
    with pytest.raises(RuntimeError, match="finish_reason=abort"):
        generation_of(4, [5], "a", "abort", None)
