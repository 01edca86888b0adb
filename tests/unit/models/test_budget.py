"""Defaults sized to the user's time: steps cut to the budget (or half an hour on CPU), LoRA when full
fine-tuning would not see an epoch, the user's own length always kept."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.tiny import sentiment_rows, write_csv
from tuneforge.config import load_config
from tuneforge.models import estimate as estimate_module
from tuneforge.models.budget import fit_budget
from tuneforge.models.estimate import GIB, Device


def fit(**kw: Any) -> Any:
    args: dict[str, Any] = {
        "budget_s": None,
        "cuda": False,
        "given": set(),
        "planned_steps": 910,
        "steps_per_epoch": 182,
        "eval_every": 182,
        "method": "full",
        "step_s": lambda method: 17.9,
        "can_switch_to_lora": False,
    }
    return fit_budget(**(args | kw))


def test_a_cpu_run_without_a_budget_is_cut_to_half_an_hour_and_says_so() -> None:
    got = fit()
    assert got.settings == {"train.max_steps": 90, "train.eval_every": 22}  # 0.9 * 1800 / 17.9 = 90.5
    assert got.line == (
        "time: 910 steps would take about 4 h 31 min (estimated 17.9 s/step); 90 steps (0.49 epochs) fit "
        "30 min (on CPU the defaults aim for it; set train.time_budget, train.max_steps or train.epochs to "
        "choose)"
    )


def test_a_budget_applies_on_a_gpu_too_and_nothing_changes_there_without_one() -> None:
    assert fit(cuda=True) is None
    got = fit(cuda=True, budget_s=600.0, step_s=lambda m: 2.0)
    assert got.settings["train.max_steps"] == 270 and "(train.time_budget;" in got.line


def test_the_users_own_length_and_a_run_that_fits_are_left_alone() -> None:
    assert fit(given={"train.epochs"}) is None
    assert fit(given={"train.max_steps"}, budget_s=60.0) is None
    assert fit(step_s=lambda m: 1.0) is None  # 910 s fits 1,620 s
    assert fit(step_s=lambda m: None) is None  # a model the estimate cannot size


def test_full_fine_tuning_short_of_an_epoch_switches_to_lora_unless_the_method_was_chosen() -> None:
    speeds = {"full": 17.9, "lora": 6.0}
    got = fit(can_switch_to_lora=True, step_s=speeds.get)
    assert got.settings == {"method.name": "lora", "train.max_steps": 270, "train.eval_every": 67}
    assert "LoRA at 6 s/step gets further in that time than full fine-tuning" in got.line
    kept = fit(can_switch_to_lora=True, step_s=speeds.get, given={"method.name"})
    assert "method.name" not in kept.settings and kept.settings["train.max_steps"] == 90
    assert "method.name" not in fit(step_s=speeds.get).settings  # causal LMs keep their method


def test_train_defaults_fit_this_machines_estimate(
    tmp_path: Path, tiny_bert: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through train's setup: a slow (pretend) CPU gets the recipe's 10 epochs cut to what fits 2 minutes,
    computed from the same estimate `tuneforge estimate` prints, and the printed defaults say why."""
    from tuneforge.train import setup

    slow = Device("slow cpu", "cpu", 16 * GIB, flops=1e7)  # about 5.6 s a step here
    monkeypatch.setattr(estimate_module, "detect_device", lambda measure_flops=True: slow)
    data = write_csv(tmp_path / "data.csv", sentiment_rows(60))
    config = tmp_path / "run.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "data": {"path": str(data), "output_dir": str(tmp_path / "ds")},
                "model": {"name": str(tiny_bert), "task": "classification"},
                "train": {"output_dir": str(tmp_path / "run"), "time_budget": "2m"},
            }
        )
    )
    cfg, source = load_config(config)
    plan = setup.plan(cfg, source)
    dataset = setup.load_dataset(cfg, source, plan.accelerator)
    fitted, fitted_plan = setup.apply_defaults(cfg, source, plan, dataset, resume=False)
    step_s = estimate_module.estimate(fitted, device=slow, manifest=dataset.manifest).step_s
    steps = math.floor(120 * 0.9 / step_s)
    assert 1 <= steps < 60  # 42 rows, batch 8: 6 steps an epoch, 10 epochs planned
    assert fitted.train.max_steps == fitted_plan.defaults["train.max_steps"] == steps
    assert "train.epochs" not in fitted_plan.defaults
    time_line = fitted_plan.defaults_line.splitlines()[-1]
    assert time_line.startswith("time: 60 steps would take about ") and f"; {steps} steps (" in time_line
