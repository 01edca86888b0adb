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


def billion_laughs(levels: int = 9, key: str = "tune:\n  start_with:") -> str:
    """The classic YAML bomb: each level is nine aliases of the one before, 9**9 strings from ~700 bytes."""
    items = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels):
        items.append(f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]")
    return f"{key} [{{{', '.join(items)}}}]\n"


def test_billion_laughs_is_refused_fast_in_bounded_memory(tmp_path: Path) -> None:
    import time
    import tracemalloc

    text = billion_laughs()
    assert len(text.encode()) < 1024
    p = write(tmp_path, text)
    tracemalloc.start()
    started = time.perf_counter()
    with pytest.raises(TuneforgeError) as e:
        load_config(p)
    elapsed = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert e.value.what == "the YAML expands to more than 100,000 values (through its aliases)"
    assert e.value.where == str(p)
    assert peak < 5 * 2**20, peak
    assert elapsed < 5, elapsed


def test_an_alias_that_contains_itself_is_refused(tmp_path: Path) -> None:
    p = write(tmp_path, "tune:\n  start_with: &loop [*loop]\n")
    with pytest.raises(TuneforgeError, match="refers to a value that contains it"):
        load_config(p)


def test_small_aliases_still_work(tmp_path: Path) -> None:
    p = write(tmp_path, "data:\n  labels: &l [a, b]\ntune:\n  start_with: [{data.labels: *l}]\n")
    cfg, _ = load_config(p)
    assert cfg.tune.start_with == [{"data.labels": ["a", "b"]}]


def test_a_config_file_over_one_mib_is_refused(tmp_path: Path) -> None:
    p = write(tmp_path, "# " + "x" * 2**20 + "\n")
    with pytest.raises(
        TuneforgeError, match=r"the config is 1,048,579 bytes; a run config is at most 1,048,576"
    ):
        load_config(p)


def test_deep_nesting_is_one_error_not_a_recursion_traceback(tmp_path: Path) -> None:
    p = write(tmp_path, "train:\n  seed: " + "[" * 20000 + "]" * 20000 + "\n")
    with pytest.raises(TuneforgeError, match="the YAML is nested too deeply"):
        load_config(p)


def test_a_huge_bad_value_is_shown_shortened(tmp_path: Path) -> None:
    # 80,000 values expanded by aliases: under the bound, but its repr would be hundreds of kilobytes.
    p = write(tmp_path, billion_laughs(5, key="train:\n  seed:"))
    with pytest.raises(TuneforgeError) as e:
        load_config(p)
    message = str(e.value)
    assert "(train.seed): Input should be a valid integer (got [{'a0': ['lol', 'lol'," in message
    assert len(message) < 600, len(message)


def test_a_huge_bad_method_option_is_shown_shortened(tmp_path: Path) -> None:
    from tuneforge.models import resolve_method

    p = write(tmp_path, "method:\n  name: lora\n  r: [" + ", ".join(["12345"] * 20000) + "]\n")
    cfg, source = load_config(p)
    with pytest.raises(TuneforgeError) as e:
        resolve_method(cfg.method, source)
    assert "(method.r): Input should be a valid integer (got [12345, 12345," in str(e.value)
    assert len(str(e.value)) < 600


def test_num_threads_takes_auto_a_count_or_null(tmp_path: Path) -> None:
    assert RunConfig().train.num_threads == "auto"
    for text, value in (("4", 4), ("0", 0), ("null", None), ("auto", "auto")):
        cfg, _ = load_config(None, [f"train.num_threads={text}"])
        assert cfg.train.num_threads == value
    with pytest.raises(TuneforgeError, match=r"train\.num_threads"):
        load_config(None, ["train.num_threads=-1"])


def test_a_yaml_bomb_in_an_override_is_refused_too() -> None:
    bomb = billion_laughs(key="").strip()
    with pytest.raises(TuneforgeError) as e:
        load_config(None, [f"tune.start_with={bomb}"])
    assert e.value.what == "the YAML expands to more than 100,000 values (through its aliases)"
    assert e.value.where == "command-line override tune.start_with"
    cfg, _ = load_config(None, ["data.prompt_template=Text: {text", "data.labels=[a, b]"])
    assert (cfg.data.prompt_template, cfg.data.labels) == ("Text: {text", ["a", "b"])
