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
    cfg, source, plan, dataset = _planned_with_budget(tmp_path, tiny_bert, rows=60)
    fitted, fitted_plan = setup.apply_defaults(cfg, source, plan, dataset, resume=False)
    step_s = estimate_module.estimate(fitted, device=slow, manifest=dataset.manifest).step_s
    steps = math.floor(120 * 0.9 / step_s)
    assert 1 <= steps < 60  # 42 rows, batch 8: 6 steps an epoch, 10 epochs planned
    assert fitted.train.max_steps == fitted_plan.defaults["train.max_steps"] == steps
    assert "train.epochs" not in fitted_plan.defaults
    time_line = fitted_plan.defaults_line.splitlines()[-1]
    assert time_line.startswith("time: 60 steps would take about ") and f"; {steps} steps (" in time_line


def head_fit(**kw: Any) -> Any:
    from tuneforge.models.budget import fit_head_budget

    args: dict[str, Any] = {
        "budget_s": 600.0,
        "cuda": False,
        "given": set(),
        "embed_s": 3000.0,  # 2,500 texts at 1.2 s each
        "train_rows": 2256,
        "val_rows": 244,
        "width": 384,
        "grid": 6,
    }
    return fit_head_budget(**(args | kw))


def test_a_head_run_embeds_the_training_texts_that_fit_the_budget() -> None:
    from tuneforge.models.budget import head_fit_seconds

    got = head_fit()
    # 540 usable s - 244 validation texts x 1.2 s = 247.2 s; each training text 1.2 s + 6 x 0.9 / 2000 s
    assert got.settings == {"method.max_train_examples": 205}

    def cost(n: int) -> float:
        return (n + 244) * 1.2 + head_fit_seconds(n, 384, 6)

    assert cost(205) <= 540 < cost(206)
    assert got.line == (
        "time: embedding all 2,256 training texts would take about 50 min (estimated 1.2 s/text, head fits "
        "included); a seeded sample of 205 training texts fits 10 min (train.time_budget; set "
        "train.time_budget or method.max_train_examples to choose)"
    )
    assert head_fit_seconds(2000, 384, 1) == 0.9 and head_fit_seconds(4000, 768, 6) == 6 * 0.9 * 4


def test_a_head_run_that_fits_or_was_sized_by_the_user_is_left_alone() -> None:
    assert head_fit(embed_s=400.0) is None  # 400 s + 7 s of fits within 540 s
    assert head_fit(given={"method.max_train_examples"}) is None
    assert head_fit(embed_s=None) is None  # a model the estimate cannot size
    assert head_fit(budget_s=None, cuda=True) is None
    cpu = head_fit(budget_s=None, embed_s=3000.0 * 4)  # no budget on CPU: half an hour, 4.8 s a text
    assert cpu.settings == {"method.max_train_examples": 93}  # (1620 - 244 x 4.8) / 4.8027
    assert "(on CPU the defaults aim for it;" in cpu.line


def test_a_head_budget_too_small_for_a_useful_sample_embeds_everything_and_says_so() -> None:
    got = head_fit(budget_s=300.0)  # 270 s barely covers the validation texts
    assert got.settings == {}
    assert got.line.endswith(
        "fewer than 50 texts would fit 5 min (train.time_budget), so every text is embedded, past the "
        "budget; a smaller model (tuneforge recommend) fits it"
    )


def test_train_setup_caps_the_texts_a_head_run_embeds(
    tmp_path: Path, tiny_bert: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through train's setup: method head on a (pretend) slow CPU embeds the seeded sample that fits, and the
    estimate of the capped run fits the budget."""
    from tuneforge.models.budget import head_fit_seconds
    from tuneforge.train import setup
    from tuneforge.train.head import sample_train

    slow = Device("slow cpu", "cpu", 16 * GIB, flops=2e6)
    monkeypatch.setattr(estimate_module, "detect_device", lambda measure_flops=True: slow)
    cfg, source, plan, dataset = _planned_with_budget(tmp_path, tiny_bert, rows=200, method="head")
    train_rows = dataset.manifest["splits"]["train"]
    whole = estimate_module.estimate(cfg, device=slow, manifest=dataset.manifest).epoch_s
    fitted, fitted_plan = setup.apply_defaults(cfg, source, plan, dataset, resume=False)
    n = fitted.method.options()["max_train_examples"]
    assert fitted_plan.defaults["method.max_train_examples"] == n and 50 <= n < train_rows
    assert whole > 108 >= estimate_module.estimate(fitted, device=slow, manifest=dataset.manifest).epoch_s
    assert head_fit_seconds(n, 32, 6) < 1  # the tiny BERT's fits are negligible here
    assert fitted_plan.defaults_line.splitlines()[-1].startswith(
        f"time: embedding all {train_rows} training texts would take about "
    )
    rows = dataset.records("train")
    sample = sample_train(rows, n, seed=cfg.train.seed)
    assert len(sample) == n and sample == sample_train(rows, n, seed=cfg.train.seed)
    assert sample != rows[:n] and all(r in rows for r in sample)
    assert sample_train(rows, None, seed=0) is rows and sample_train(rows, 10**6, seed=0) is rows


def _planned_with_budget(tmp_path: Path, model: Path, rows: int, method: str | None = None) -> Any:
    """(config, source, plan, prepared dataset) of a classification run on `model` with a 2-minute budget, as
    `tuneforge train` has them before it fills in its defaults."""
    from tuneforge.train import setup

    data = write_csv(tmp_path / "data.csv", sentiment_rows(rows))
    raw: dict[str, Any] = {
        "data": {"path": str(data), "output_dir": str(tmp_path / "ds")},
        "model": {"name": str(model), "task": "classification"},
        "train": {"output_dir": str(tmp_path / "run"), "time_budget": "2m"},
    }
    if method:
        raw["method"] = {"name": method}
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(raw))
    cfg, source = load_config(config)
    plan = setup.plan(cfg, source)
    return cfg, source, plan, setup.load_dataset(cfg, source, plan.accelerator)
