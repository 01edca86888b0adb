"""`tuneforge tune` end to end on the tiny Llama: 3 trials, pruning, best.yaml, and continuing the study."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import yaml
from optuna.trial import TrialState

from tests.tiny import sentiment_rows, write_csv
from tuneforge.config import load_config


def validation_losses(run_dir: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if r.get("split") == "validation"}


def load_study(out: Path) -> optuna.Study:
    return optuna.load_study(study_name="tuneforge", storage=f"sqlite:///{out / 'study.db'}")


def test_tune_three_trials_then_continue(tmp_path: Path, tiny_llama: Path, cli) -> None:
    write_csv(tmp_path / "data.csv", sentiment_rows(60))
    out = tmp_path / "study"
    config = {
        "data": {"path": "data.csv", "format": "classification", "output_dir": "ds"},
        "model": {"name": str(tiny_llama), "task": "causal-lm", "max_length": 128},
        "method": {"name": "lora", "r": 4, "alpha": 8, "dropout": 0.0},
        "train": {
            "output_dir": "study",
            "max_steps": 3,
            "batch_size": 4,
            "warmup_ratio": 0.0,
            "eval_every": 1,
            "eval_max_examples": 8,
            "save_every": 0,
            "progress": False,
        },
        "tune": {
            "prune_startup_trials": 1,
            # A learning rate that learns within a step first, then one that barely moves: the second is worse
            # than the first at its first validation, so the median rule prunes it right there.
            "start_with": [{"train.learning_rate": 0.05}, {"train.learning_rate": 1.0e-6}],
            "space": {
                "train.learning_rate": {"type": "float", "low": 1.0e-6, "high": 1.0, "log": True},
                "method.r": {"type": "categorical", "choices": [2, 4, 8]},
            },
        },
    }
    (tmp_path / "tune.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")

    result = cli("tune", "tune.yaml", "--trials", "3")
    assert result.returncode == 0, result.stderr

    study = load_study(out)
    trials = study.trials
    assert [t.number for t in trials] == [0, 1, 2]
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    assert [t.params["train.learning_rate"] for t in trials[:2]] == [0.05, 1.0e-6]
    first, second = trials[0], trials[1]
    assert first.state == TrialState.COMPLETE
    assert second.state == TrialState.PRUNED
    assert list(second.intermediate_values) == [1]
    assert second.intermediate_values[1] > first.intermediate_values[1]
    for t in trials:
        run_dir = out / f"trial-{t.number:03d}"
        # What the pruner saw is exactly what the run logged.
        assert t.intermediate_values == validation_losses(run_dir)
        manifest = json.loads((run_dir / "manifest.json").read_text())
        assert manifest["status"] == ("completed" if t.state == TrialState.COMPLETE else "pruned")
        run_cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
        assert run_cfg["train"]["learning_rate"] == t.params["train.learning_rate"]
        assert run_cfg["method"]["r"] == t.params["method.r"]
        if t.state == TrialState.COMPLETE:
            assert t.value == min(t.intermediate_values.values())
            assert sorted(t.intermediate_values) == [1, 2, 3]
            assert (run_dir / "final" / "adapter_model.safetensors").is_file()
        else:
            # The median rule: its last value is worse than the median of the earlier trials at that step.
            step, value = max(t.intermediate_values.items())
            earlier = sorted(
                o.intermediate_values[step]
                for o in trials[: t.number]
                if o.state == TrialState.COMPLETE and step in o.intermediate_values
            )
            assert earlier and value > earlier[(len(earlier) - 1) // 2]

    best = study.best_trial
    best_cfg, _ = load_config(out / "best.yaml")
    assert best_cfg.train.learning_rate == best.params["train.learning_rate"]
    assert best_cfg.method.options()["r"] == best.params["method.r"]
    assert best_cfg.train.output_dir == str(Path("study") / "best")
    assert best_cfg.train.batch_size == 4
    assert (
        (out / "best.yaml")
        .read_text()
        .startswith(f"# Best trial of the search in study: trial {best.number}, ")
    )

    saved = json.loads((out / "trials.json").read_text())
    assert saved["best_trial"] == best.number
    assert [(t["number"], t["state"]) for t in saved["trials"]] == [
        (t.number, t.state.name.lower()) for t in trials
    ]
    n_complete = sum(t.state == TrialState.COMPLETE for t in trials)
    assert (
        f"3 trials: {n_complete} complete, {3 - n_complete} pruned, 0 failed."
        in (out / "summary.md").read_text()
    )
    assert "best config: study/best.yaml" in result.stdout

    # Running again with more trials continues the study: the finished trials stay as they are.
    before = (out / "trial-000" / "metrics.jsonl").read_bytes()
    again = cli("tune", "tune.yaml", "--trials", "4")
    assert again.returncode == 0, again.stderr
    trials_after = load_study(out).trials
    assert [t.number for t in trials_after] == [0, 1, 2, 3]
    assert [(t.state, t.params, t.value) for t in trials_after[:3]] == [
        (t.state, t.params, t.value) for t in trials
    ]
    assert trials_after[3].state in (TrialState.COMPLETE, TrialState.PRUNED)
    assert trials_after[3].params != trials[2].params  # the continued sampler does not replay its first draw
    assert (out / "trial-000" / "metrics.jsonl").read_bytes() == before
    assert (out / "trial-003" / "config.yaml").is_file()

    # Continuing with a changed config is refused with the differences.
    changed = cli("tune", "tune.yaml", "--trials", "5", "train.batch_size=8")
    assert changed.returncode == 2
    assert "the config differs from the one this search started with" in changed.stderr
    assert "train.batch_size: 4 -> 8" in changed.stderr
    assert len(load_study(out).trials) == 4
