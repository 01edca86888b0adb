"""NaN/inf steps: skipped and counted; too many in a row stop the run with its last good checkpoint kept.

NaN is injected where it would really arise, inside the loss of chosen optimizer steps (a NaN loss), or in the
backward pass through a gradient hook on the logits (finite loss, NaN gradients).
"""

from __future__ import annotations

import math
import os
from collections.abc import Collection
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from tests.unit.train.tiny_runs import checkpoint_steps, make_config, read_state
from tuneforge.artifacts import RunDir
from tuneforge.errors import TuneforgeError
from tuneforge.train import loop as loop_module
from tuneforge.train import train


def poison(
    monkeypatch: pytest.MonkeyPatch, *, loss_at: Collection[int] = (), grad_at: Collection[int] = ()
) -> dict[int, dict[str, torch.Tensor]]:
    """Make the loss (or gradient) of the given steps NaN; returns the weights each step started from."""
    seen: dict[int, dict[str, torch.Tensor]] = {}
    current = {"step": 0}
    real_step, real_loss = loop_module.Loop.step, loop_module.batch_loss

    def step(self: loop_module.Loop, state: Any) -> Any:
        current["step"] = state.step + 1
        seen[current["step"]] = {
            n: p.detach().clone() for n, p in self.model.named_parameters() if p.requires_grad
        }
        return real_step(self, state)

    def batch_loss(model: Any, batch: Any, task: str, class_weights: Any = None) -> Any:
        loss, logits = real_loss(model, batch, task, class_weights)
        if torch.is_grad_enabled() and current["step"] in loss_at:
            loss = loss * float("nan")
        if torch.is_grad_enabled() and current["step"] in grad_at:
            # A finite loss whose gradient is NaN (causal LMs return no logits: only target positions are
            # projected).
            loss.register_hook(lambda g: g * float("nan"))
        return loss, logits

    monkeypatch.setattr(loop_module.Loop, "step", step)
    monkeypatch.setattr(loop_module, "batch_loss", batch_loss)
    return seen


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def expected_lr(step: int, base: float = 5e-3, warmup: int = 2, total: int = 14) -> float:
    """transformers' cosine schedule with linear warmup, as a function of the step number alone."""
    if step < warmup:
        return base * step / warmup
    return base * 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))


def test_bad_steps_are_skipped_counted_and_do_not_move_the_weights(
    tmp_path: Path, tiny_llama: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = poison(monkeypatch, loss_at={3, 4}, grad_at={9})
    run = train(make_config(tmp_path, tiny_llama))

    rows = [r for r in run.metrics() if "split" not in r]
    assert [r["step"] for r in rows if r["skipped"]] == [3, 4, 9]
    assert math.isnan(rows[2]["loss"]) and math.isnan(rows[3]["loss"])
    assert math.isfinite(rows[8]["loss"]) and math.isnan(rows[8]["grad_norm"])  # a NaN gradient alone
    assert run.manifest["skipped_steps"] == 3
    assert run.manifest["status"] == "completed"
    # No update at 3, 4 and 9: the weights going into 5 are those going into 3, and 10 sees what 9 saw.
    assert same(seen[3], seen[4]) and same(seen[4], seen[5])
    assert same(seen[9], seen[10])
    assert not same(seen[2], seen[3]) and not same(seen[5], seen[6])
    # The schedule follows the step count through the skips (decision documented in loop.py).
    assert [r["lr"] for r in rows] == pytest.approx([expected_lr(s) for s in range(1, 15)], rel=1e-9)
    # Nothing is validated or saved right after a skipped update: 4 would have validated, 3 and 9 saved.
    assert [r["step"] for r in run.metrics() if r.get("split") == "validation"] == [8, 12, 14]
    assert read_state(run.checkpoints / "step-00000014")["skipped_steps"] == 3


def test_a_good_step_resets_the_count(
    tmp_path: Path, tiny_llama: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    poison(monkeypatch, loss_at={3, 4, 6, 7})
    run = train(make_config(tmp_path, tiny_llama, {"train.max_bad_steps": 3}))
    assert run.manifest["status"] == "completed"
    assert run.manifest["skipped_steps"] == 4


def test_too_many_bad_steps_stop_the_run_and_keep_the_last_good_checkpoint(
    tmp_path: Path, tiny_llama: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = poison(monkeypatch, loss_at=set(range(5, 15)))
    cfg = make_config(tmp_path, tiny_llama, {"train.max_bad_steps": 3})
    with pytest.raises(TuneforgeError) as stopped:
        train(cfg)

    assert str(stopped.value) == (
        "config key train.max_bad_steps: 3 optimizer steps in a row had a NaN/inf loss or gradient "
        "(steps 5-7); the run stops here and its newest checkpoint is the last good one\n"
        "  fix: lower train.learning_rate, set train.max_grad_norm, or check the data of these steps"
    )
    run = RunDir(Path(cfg.train.output_dir))
    assert run.manifest["status"] == "failed"
    assert [r["step"] for r in run.metrics() if "split" not in r] == [1, 2, 3, 4, 5, 6, 7]
    # 3 (save_every) and 4 (best) were saved; 6 would have been, but was a bad step.
    assert checkpoint_steps(run) == [3, 4]
    last_good = run.checkpoints / "step-00000004"
    assert read_state(last_good)["step"] == 4
    saved = load_file(str(last_good / "weights.safetensors"))
    assert same(saved, seen[5]) and same(saved, seen[7])  # the weights the bad steps started from

    monkeypatch.undo()
    train(cfg, resume=True)  # the kept checkpoint resumes
    assert run.manifest["status"] == "completed"
    assert run.manifest["resumed_from_step"] == 4


@pytest.fixture
def own_process_group() -> Any:
    """A DeepSpeed run in this process makes a one-process group; take it down after the test."""
    yield
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def test_under_deepspeed_bad_steps_are_skipped_and_counted_too(
    tmp_path: Path, tiny_llama: Path, monkeypatch: pytest.MonkeyPatch, own_process_group: None
) -> None:
    """DeepSpeed steps inside its engine; its overflow check skips the update and the loop counts it."""
    pytest.importorskip("deepspeed")
    seen = poison(monkeypatch, loss_at={3}, grad_at={5})
    run = train(make_config(tmp_path, tiny_llama, {"train.deepspeed": "zero2"}))
    assert (
        "LOCAL_RANK" not in os.environ
    )  # set for DeepSpeed's start only: later subprocesses must not see it

    rows = [r for r in run.metrics() if "split" not in r]
    assert [r["step"] for r in rows if r["skipped"]] == [3, 5]
    assert math.isnan(rows[2]["loss"])
    assert math.isfinite(rows[4]["loss"]) and not math.isfinite(rows[4]["grad_norm"])
    assert all(math.isfinite(r["grad_norm"]) for r in rows if not r["skipped"])
    assert run.manifest["skipped_steps"] == 2 and run.manifest["status"] == "completed"
    assert run.manifest["deepspeed"]["zero_optimization"]["stage"] == 2
    assert same(seen[3], seen[4]) and same(seen[5], seen[6])
    assert not same(seen[2], seen[3]) and not same(seen[4], seen[5])
    assert [r["lr"] for r in rows] == pytest.approx([expected_lr(s) for s in range(1, 15)], rel=1e-9)
