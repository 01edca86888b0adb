"""`tuneforge train` fills the keys a user left unset with the recipe, says so, records it, resumes so."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.tiny import sentiment_rows, write_csv
from tuneforge.config import ConfigSource, load_config
from tuneforge.models import recommend


def test_train_fills_unset_keys_prints_records_and_resumes_with_them(
    tmp_path: Path, tiny_bert: Path, cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = write_csv(tmp_path / "data.csv", sentiment_rows(60))
    config = tmp_path / "run.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "data": {"path": str(data), "output_dir": str(tmp_path / "ds")},
                "model": {"name": str(tiny_bert), "task": "classification"},
                "train": {"output_dir": str(tmp_path / "run"), "progress": False, "learning_rate": 1e-3},
            }
        )
    )
    done = cli("train", str(config), "train.epochs=2")
    assert done.returncode == 0, done.stderr
    rows = json.loads((tmp_path / "ds" / "manifest.json").read_text())["splits"]["train"]
    assert rows == 42
    # The YAML's learning rate and the override's epochs stay; the rest of the recipe fills in.
    expected = {
        "method.name": "full",
        "train.warmup_ratio": 0.06,
        "train.weight_decay": 0.01,
        "train.eval_every": 10,  # 42 rows / batch 8: once an epoch (6 steps), every 10 steps at the least
        "train.early_stopping_patience": 3,
        "train.metric_for_best": "accuracy",
        "model.max_length": 64,
    }
    line = next(x for x in done.stderr.splitlines() if x.startswith("defaults for"))
    assert line == (
        "defaults for encoder classification, 42 examples: method.name=full, train.warmup_ratio=0.06, "
        "train.weight_decay=0.01, train.eval_every=10, train.early_stopping_patience=3, "
        "train.metric_for_best=accuracy, model.max_length=64 (set any of these keys to override)"
    )
    run = tmp_path / "run"
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["defaults"] == expected and manifest["method"] == "full"
    assert manifest["best"]["metric"] == "accuracy" and manifest["step"] == manifest["total_steps"] == 10
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["train"]["learning_rate"] == 1e-3 and saved["train"]["epochs"] == 2
    assert saved["method"] == {"name": "full"} and saved["model"]["max_length"] == 64
    assert (run / "final" / "model.safetensors").is_file()  # full fine-tuning: every weight

    # `tuneforge estimate` sizes the run train would do, the recipe included: the same config, naming the raw
    # file, is sized from the dataset train prepared of it.
    sized = cli("estimate", str(config), "train.epochs=2", "--device", "cpu")
    assert sized.returncode == 0, sized.stderr
    assert line in sized.stdout.splitlines()
    assert f"{tiny_bert} + full:" in sized.stdout

    # --resume applies what the run recorded, not what the rules say now (here: something else entirely).
    from tuneforge.train import train

    monkeypatch.setattr(recommend, "recipe", lambda **_: {"train.warmup_ratio": 0.5})
    cfg, source = load_config(config, ["train.epochs=2"])
    resumed = train(cfg, source, resume=True)
    assert resumed.manifest["defaults"] == expected and resumed.manifest["status"] == "completed"
    # Derived anew, they would differ (and --resume would have refused the changed config).
    ds = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    assert recommend.defaults_for(cfg, ds, source.given)["train.warmup_ratio"] == 0.5


def test_a_run_from_before_recorded_defaults_resumes_without_any(tmp_path: Path, tiny_bert: Path) -> None:
    """A manifest with no "defaults" key (an older release's run) started with none: none are added on
    --resume (deriving them anew would change the config and have the resume refused)."""
    from tuneforge.artifacts import RunDir
    from tuneforge.train import setup

    data = write_csv(tmp_path / "data.csv", sentiment_rows(60))
    config = tmp_path / "run.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "data": {"path": str(data), "output_dir": str(tmp_path / "ds")},
                "model": {"name": str(tiny_bert), "task": "classification"},
                "train": {"output_dir": str(tmp_path / "run")},
            }
        )
    )
    cfg, source = load_config(config)
    plan = setup.plan(cfg, source)
    dataset = setup.load_dataset(cfg, source, plan.accelerator)
    fresh, fresh_plan = setup.apply_defaults(cfg, source, plan, dataset, resume=False)
    assert fresh is not cfg and fresh_plan.defaults["method.name"] == "full"  # a new run gets the recipe
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    (run.manifest_path).write_text(json.dumps({"kind": "run", "step": 3}))
    resumed, resumed_plan = setup.apply_defaults(cfg, source, plan, dataset, resume=True)
    assert resumed is cfg and resumed_plan.defaults == {} and resumed_plan.defaults_line == ""


def test_a_config_built_in_code_is_taken_as_it_is() -> None:
    """ConfigSource(None) (quickstart, tests, an API caller): every key counts as set, nothing is filled."""
    from tuneforge.train import setup

    source = ConfigSource(None)
    assert source.given is None and source.with_given({"train.epochs"}).given is None
    cfg = object()
    plan = object()
    assert setup.apply_defaults(cfg, source, plan, None, resume=False) == (cfg, plan)  # type: ignore[arg-type]
    known = ConfigSource(None, given={"data.path"}).with_given({"train.learning_rate"})
    assert known.given == {"data.path", "train.learning_rate"}
