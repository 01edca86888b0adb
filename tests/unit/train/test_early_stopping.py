"""Early stopping on a validation metric (patience, min-delta); the best checkpoint is restored at the end."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from tests.unit.train.tiny_runs import checkpoint_steps, final_weights, make_config, records
from tuneforge.config import TrainConfig
from tuneforge.train import train
from tuneforge.train.checkpoint import TrainState
from tuneforge.train.loop import _validate

# Padded batches: the scenarios below (which step is best, when the run stops) were found with them, and a
# packed row draws other LoRA dropout masks.
EVERY_STEP = {"train.eval_every": 1, "train.pack_examples": False}


def adapter_names(checkpoint_weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Checkpoint parameter names as PEFT writes them into adapter_model.safetensors (no adapter name)."""
    return {k.replace(".default.", "."): v for k, v in checkpoint_weights.items()}


def expected_stop(losses: list[float], patience: int, min_delta: float) -> tuple[int, int]:
    """(best step, stop step) for validation losses at steps 1, 2, ..., by the documented rule."""
    best, best_step, bad = math.inf, 0, 0
    for step, loss in enumerate(losses, 1):
        if best - loss > min_delta:
            best, best_step, bad = loss, step, 0
        else:
            bad += 1
        if bad >= patience:
            return best_step, step
    return best_step, len(losses)


def test_stops_after_patience_and_restores_the_best_weights(tmp_path: Path, tiny_llama: Path) -> None:
    # A learning rate high enough that validation loss bottoms out early and then gets worse.
    cfg = make_config(
        tmp_path, tiny_llama, {**EVERY_STEP, "train.learning_rate": 0.05, "train.early_stopping_patience": 3}
    )
    run = train(cfg)

    losses = [r["loss"] for r in records(run) if r.get("split") == "validation"]
    best_step, stop_step = expected_stop(losses, patience=3, min_delta=0.0)
    assert (best_step, stop_step) == (4, 7)  # the scenario this test is about: later steps were worse
    m = run.manifest
    assert m["stopped_early"] is True
    assert m["step"] == stop_step
    assert m["best"] == {"metric": "loss", "value": losses[best_step - 1], "step": best_step}
    assert [r["step"] for r in records(run) if "split" not in r] == list(range(1, stop_step + 1))

    best = adapter_names(load_file(str(run.checkpoints / f"step-{best_step:08d}" / "weights.safetensors")))
    last = adapter_names(load_file(str(run.checkpoints / f"step-{stop_step:08d}" / "weights.safetensors")))
    final = final_weights(run)
    assert sorted(final) == sorted(best)
    assert all(torch.equal(final[k], best[k]) for k in best)
    assert not all(torch.equal(final[k], last[k]) for k in last)  # so the restore did something
    # The best survives rotation beside the latest two (3 and 6 by save_every, 7 at the stop).
    assert checkpoint_steps(run) == [4, 6, 7]


def test_min_delta_ignores_small_improvements(tmp_path: Path, tiny_llama: Path) -> None:
    overrides = {**EVERY_STEP, "train.learning_rate": 0.2, "train.early_stopping_patience": 3}
    run = train(make_config(tmp_path, tiny_llama, {**overrides, "train.early_stopping_min_delta": 0.03}))

    losses = [r["loss"] for r in records(run) if r.get("split") == "validation"]
    assert expected_stop(losses, patience=3, min_delta=0.03) == (2, 5)
    assert run.manifest["step"] == 5 and run.manifest["best"]["step"] == 2
    # Step 5 improved on the best, by less than the min-delta: without it the run would have gone on.
    assert 0 < losses[1] - losses[4] < 0.03


def test_resuming_an_early_stopped_run_does_not_train_on(tmp_path: Path, tiny_llama: Path) -> None:
    overrides = {**EVERY_STEP, "train.learning_rate": 0.05, "train.early_stopping_patience": 3}
    run = train(make_config(tmp_path, tiny_llama, overrides))
    before = records(run)
    train(make_config(tmp_path, tiny_llama, overrides), resume=True)
    assert records(run) == before
    assert run.manifest["step"] == 7 and run.manifest["stopped_early"] is True


def test_early_stopping_without_validation_data_is_refused(tmp_path: Path, tiny_llama: Path) -> None:
    from tuneforge.errors import TuneforgeError

    cfg = make_config(
        tmp_path, tiny_llama, {"data.splits": [0.85, 0.0, 0.15], "train.early_stopping_patience": 2}
    )
    with pytest.raises(
        TuneforgeError, match="early stopping needs validation examples, and the dataset has none"
    ):
        train(cfg)


class ScriptedLoop:
    """Stands in for Loop in `_validate`: returns the next scripted metrics."""

    def __init__(self, values: list[dict[str, float]]) -> None:
        self.values = iter(values)

    def validate(self, examples: Any, batch_size: int) -> dict[str, float]:
        return next(self.values)


def run_validations(values: list[dict[str, float]], **settings: Any) -> tuple[TrainState, list[int]]:
    cfg = TrainConfig(**settings)
    state, saved = TrainState(), []
    loop = ScriptedLoop(values)
    for step in range(1, len(values) + 1):
        state.step = step
        _validate(loop, state, cfg, [{}], lambda r: None, lambda s: saved.append(s.step), None)  # type: ignore[arg-type]
        if state.stopped_early:
            break
    return state, saved


def test_higher_is_better_for_accuracy() -> None:
    values = [{"accuracy": a, "loss": 1.0} for a in (0.5, 0.7, 0.69, 0.71, 0.6)]
    state, saved = run_validations(values, metric_for_best="accuracy", early_stopping_patience=2)
    assert (state.best_step, state.best_value, saved) == (4, 0.71, [1, 2, 4])


def test_an_improvement_of_exactly_min_delta_does_not_count_and_nan_never_improves() -> None:
    values = [{"loss": v} for v in (1.0, 0.5, 0.25, float("nan"), 0.2)]
    state, saved = run_validations(values, early_stopping_patience=2, early_stopping_min_delta=0.25)
    assert saved == [1, 2]  # 0.5 -> 0.25 is a gain of exactly min_delta
    assert state.stopped_early and state.step == 4 and state.best_value == 0.5


def test_an_unknown_metric_for_best_is_refused_before_anything_is_written(
    tmp_path: Path, tiny_llama: Path
) -> None:
    from tuneforge.errors import TuneforgeError

    cfg = make_config(tmp_path, tiny_llama, {"train.metric_for_best": "accuracy"})
    with pytest.raises(TuneforgeError) as refused:
        train(cfg)
    assert str(refused.value) == (
        "config key train.metric_for_best: validation of a causal-lm model has no metric 'accuracy'\n"
        "  fix: choose one of: loss, perplexity"
    )
    assert not Path(cfg.train.output_dir).exists()
