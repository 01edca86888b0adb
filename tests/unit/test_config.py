from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tuneforge.config import RunConfig, config_keys, load_config
from tuneforge.errors import TuneforgeError

REQUIRED_KEYS = [
    "data.path",
    "data.format",
    "data.text_column",
    "data.label_column",
    "model.name",
    "model.task",
    "method.name",
    "train.output_dir",
    "train.epochs",
    "train.max_steps",
    "train.batch_size",
    "train.learning_rate",
    "train.eval_every",
    "train.save_every",
    "train.seed",
]


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "run.yaml"
    p.write_text(text, encoding="utf-8")
    return p


def test_required_keys_exist_with_these_spellings() -> None:
    keys = {row[0] for row in config_keys()}
    assert set(REQUIRED_KEYS) <= keys


def test_loads_sections_and_applies_overrides(tmp_path: Path) -> None:
    p = write(tmp_path, "data:\n  path: x.csv\ntrain:\n  batch_size: 4\n  learning_rate: 1.0e-3\n")
    cfg, _ = load_config(p, ["train.batch_size=16", "model.task=classification", "method.r=8"])
    assert cfg.data.path == "x.csv"
    assert cfg.train.batch_size == 16
    assert cfg.train.learning_rate == 1e-3
    assert cfg.model.task == "classification"
    assert cfg.method.options() == {"r": 8}


def test_unknown_key_names_key_and_line(tmp_path: Path) -> None:
    p = write(tmp_path, "data:\n  path: x.csv\ntrain:\n  batch_size: 4\n  learnin_rate: 0.1\n")
    with pytest.raises(TuneforgeError) as e:
        load_config(p)
    assert f"{p}:5 (train.learnin_rate): unknown key 'train.learnin_rate'" in str(e.value)


def test_wrong_type_names_key_line_and_value(tmp_path: Path) -> None:
    p = write(tmp_path, "train:\n  epochs: 1\n  batch_size: many\n")
    with pytest.raises(TuneforgeError) as e:
        load_config(p)
    msg = str(e.value)
    assert f"{p}:3 (train.batch_size)" in msg
    assert "'many'" in msg


def test_bad_override_is_reported_as_override(tmp_path: Path) -> None:
    p = write(tmp_path, "train:\n  epochs: 1\n")
    with pytest.raises(TuneforgeError) as e:
        load_config(p, ["train.batch_size=-3"])
    assert "command-line override train.batch_size" in str(e.value)
    with pytest.raises(TuneforgeError, match=r"not of the form key\.sub=value"):
        load_config(p, ["train.batch_size"])


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(TuneforgeError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    p = write(tmp_path, "train:\n  epochs: [1\n")
    with pytest.raises(TuneforgeError, match=rf"{p}:\d+: not valid YAML"):
        load_config(p)


def test_splits_must_sum_to_one(tmp_path: Path) -> None:
    p = write(tmp_path, "data:\n  splits: [0.5, 0.2, 0.2]\n")
    with pytest.raises(TuneforgeError, match="sum"):
        load_config(p)


def test_resolved_config_round_trips() -> None:
    cfg = RunConfig()
    again = RunConfig.model_validate(yaml.safe_load(cfg.to_yaml()))
    assert again == cfg
    assert again.fingerprint() == cfg.fingerprint()
