"""The quickstart's time estimate: training steps plus forward-only evaluation, from seconds per step."""

from __future__ import annotations

from tuneforge.quickstart import expected_seconds, quickstart_config


def test_evaluation_counts_the_validations_and_both_models_on_the_test_examples() -> None:
    cfg = quickstart_config(
        False,
        ["train.max_steps=80", "train.eval_every=20", "train.eval_max_examples=48", "eval.few_shot=auto"],
    )
    train_s, eval_s = expected_seconds(cfg, step_s=3.0)
    assert train_s == 240.0
    # 80 // 20 validations + the final one, 48 examples each; tuned, base and few-shot base on 200 test
    # examples; batch 8.
    assert eval_s == 3.0 / 8 / 3 * (5 * 48 + 3 * 200)
    no_shots = quickstart_config(
        False, ["train.max_steps=80", "train.eval_every=20", "train.eval_max_examples=48"]
    )  # the quickstart's own default: no few-shot pass
    assert expected_seconds(no_shots, step_s=3.0)[1] == 3.0 / 8 / 3 * (5 * 48 + 2 * 200)


def test_no_mid_run_validation_leaves_the_final_one() -> None:
    cfg = quickstart_config(False, ["train.max_steps=10", "train.eval_every=0", "train.eval_max_examples=8"])
    assert expected_seconds(cfg, step_s=1.0) == (10.0, 1.0 / 8 / 3 * (8 + 2 * 200))
